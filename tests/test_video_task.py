"""The video task end to end: each world model trains and evaluates, paper counts, config errors."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import experiment_config
from substrax.train import trainer
from substrax.train.metrics import read_jsonl
from substrax.train.tasks import video
from substrax.train.errors import ConfigError

TRIVIAL = ("zero", "copy_last", "context_mean")
PAPER_COUNTS = {"fluid": 800_975, "transformer": 800_067, "convlstm": 801_995}


def train(config, workdir):
  state = trainer.train_and_evaluate(config, workdir)
  name = f"video_{config.data.name}"
  for suffix in (".png", "_frames.png", "_per_sequence.npz"):
    assert os.path.exists(os.path.join(workdir, "eval", name + suffix))
  with open(os.path.join(workdir, "eval", name + ".json")) as f:
    result = json.load(f)
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert records and all(np.isfinite(r["loss"]) for r in records)
  return state, result


# Each model once, to stay fast (compiling dominates): the ConvLSTM covers the Gray-Scott data
# path, and only FluidWorld runs both feedbacks and the held-out eval_step during training.
@pytest.mark.parametrize("model, experiment, feedback", [
    ("fluid", "fluid_mmnist", ("latent", "reencode")),
    ("transformer", "fluid_mmnist", ("latent",)),
    ("convlstm", "fluid_grayscott", ("reencode",))])
def test_tiny_trains_and_reports_trivial_predictors(model, experiment, feedback, workdir,
                                                    tmp_path, capsys):
  config = experiment_config(experiment, "tiny", **{
      "model.name": model, "data.cache_dir": str(tmp_path / "cache"),
      "eval.feedback": feedback, "eval_every_steps": 2 if model == "fluid" else 100})
  state, result = train(config, workdir)
  report = result["rollout"]
  assert report["n_sequences"] == config.eval.num_sequences
  assert set(report["predictors"]) == {*(f"{model}_{f}" for f in feedback), *TRIVIAL}
  assert all(report["predictors"][t]["trivial"] for t in TRIVIAL)
  mse = report["predictors"][f"{model}_{feedback[0]}"]["per_step"]["mse_px"]["mean"]
  assert len(mse) == config.eval.horizon and np.all(np.isfinite(mse))
  assert result["latent"]["channels"] == config.model.dim
  assert "coherence horizon" in capsys.readouterr().out
  if model == "fluid":   # training updates the bio collection (model_state)
    health = np.asarray(state.model_state["bio"]["fatigue_gate"]["health"])
    assert not np.allclose(health, 1.0)
    assert len(result["latent"]["steps_used_per_layer"]) == config.model.fluid.num_layers
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"), "eval")
    assert records and all(np.isfinite(r["pred"]) and "energy" in r for r in records)
    # substrax-eval on the run rewrites the same outputs from its last checkpoint.
    shutil.rmtree(os.path.join(workdir, "eval"))
    again = trainer.evaluate_checkpoint(config, workdir)
    assert again["step"] == config.num_steps
    np.testing.assert_allclose(
        again["rollout"]["predictors"]["fluid_latent"]["per_step"]["mse_px"]["mean"], mse,
        rtol=1e-5)
    with np.load(os.path.join(workdir, "eval", "video_moving_mnist_per_sequence.npz")) as z:
      assert z["mse_px/fluid_latent"].shape == (config.eval.num_sequences, config.eval.horizon)
      np.testing.assert_allclose(z["mse_px/fluid_latent"].mean(0), mse, rtol=1e-5)
      assert z["frames/copy_last"].shape == z["target"].shape
  else:
    assert state.model_state == {}


@pytest.mark.parametrize("model", video.MODELS)
def test_paper_config_reproduces_the_published_counts(model, monkeypatch):
  # Counting needs no compile; inspect's compile would compile the paper-size train step.
  monkeypatch.setattr(trainer, "compile_train_step", lambda exp: {
      "lower_s": 0.0, "compile_s": 0.0, "flops": float("nan"), "memory": None})
  config = experiment_config("fluid_paper", "cpu", **{"model.name": model})
  assert trainer.inspect(config)["total_params"] == PAPER_COUNTS[model]


@pytest.mark.parametrize("key, value", [
    ("data.name", "ucf101"),
    ("data.size", 24),                  # does not divide the 64 px canvas
    ("data.window", 20),
    ("model.name", "rnn"),
    ("model.patch", 3),
    ("model.decoder_mid", 24),
    ("model.state_grad", "tbptt"),
    ("model.fluid.boundary", "mirror"),
    ("model.fluid.dilations", ()),
    ("loss.recon", "l1"),
    ("loss.alive_weight", -1.0),
    ("eval.context", 15),               # 15 + 10 > 20 frames
    ("eval.feedback", ("pixels",)),
])
def test_bad_config_names_the_key(key, value):
  config = experiment_config("fluid_mmnist", "tiny", **{key: value})
  with pytest.raises(ConfigError, match=f"^{key}:"):
    trainer.setup(config)


@pytest.mark.parametrize("model, key, value", [
    ("transformer", "model.transformer.num_heads", 3),
    ("transformer", "model.attention.kind", "fourier"),
    ("convlstm", "model.convlstm.enc_groups", 3),
])
def test_bad_model_block_names_the_key(model, key, value):
  config = experiment_config("fluid_mmnist", "tiny", **{"model.name": model, key: value})
  with pytest.raises(ConfigError, match=f"^{key}:"):
    trainer.setup(config)
