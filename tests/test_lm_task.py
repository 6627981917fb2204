"""The language-modelling task (train/tasks/lm.py): runs on each source, its report, its
config checks."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cli
from substrax.configs import lm_hmm, lm_text
from substrax.models import attention
from substrax.models.lm import LanguageModel
from substrax.models.transformer import BlockConfig
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.metrics import read_jsonl


@pytest.fixture(scope="module")
def hmm_run(tmp_path_factory):
  """A tiny MatFormer (nested MLP widths d_ff/4, d_ff/2, d_ff) with RoPE."""
  workdir = str(tmp_path_factory.mktemp("lm") / "run")
  run = cli("substrax-train", "--config=lm_hmm:tiny", f"--workdir={workdir}",
            "--config.eval.lengths=(16,32)", "--config.model.positions=rope",
            "--config.model.mlp.granularities=(4,2,1)")
  assert run.returncode == 0, run.stderr
  return workdir, run


def test_hmm_report_puts_the_bayes_loss_beside_the_model(hmm_run):
  workdir, run = hmm_run
  report = json.load(open(os.path.join(workdir, "eval", "lm.json")))
  assert report["source"] == "hmm" and report["positions"] == "rope"
  assert [r["length"] for r in report["lengths"]] == [16, 32]
  for row in report["lengths"]:
    # The Bayes loss is below the unigram loss, and no model beats it.
    assert 0 < row["floor_nats"] < row["unigram_nats"] <= row["loss_nats"] * 1.2
    assert row["loss_nats"] > row["floor_nats"]
    assert row["loss_bits_per_char"] == pytest.approx(row["loss_nats"] / 0.6931471805599453)
  # The floor falls with length: the first tokens are predicted from less context.
  assert report["lengths"][1]["floor_nats"] < report["lengths"][0]["floor_nats"]
  logged = read_jsonl(os.path.join(workdir, "metrics.jsonl"), "eval")
  assert report["curve"] == {"step": [10, 20], "loss": [r["loss"] for r in logged]}
  assert os.path.getsize(os.path.join(workdir, "eval", "lm.png")) > 10_000
  assert "hmm language model" in run.stdout and "L=32" in run.stdout


def test_a_matformer_sums_its_granularities_and_its_submodels_extract(hmm_run, tmp_path):
  workdir, run = hmm_run
  train = read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")[-1]
  assert train["loss"] == pytest.approx(train["loss_g4"] + train["loss_g2"] + train["loss_g1"])
  row = json.load(open(os.path.join(workdir, "eval", "lm.json")))["lengths"][0]
  assert row["granularities"]["1"] == row["loss_nats"]
  assert "MatFormer granularities at L=16" in run.stdout
  args = ["--config=lm_hmm:tiny", "--config.model.positions=rope",
          "--config.model.mlp.granularities=(4,2,1)", f"--workdir={workdir}"]
  out = str(tmp_path / "sub")
  extracted = cli("substrax-extract", *args, "--granularity=4", f"--out={out}")
  assert extracted.returncode == 0, extracted.stderr
  assert "model.mlp.hidden=(32,)" in extracted.stdout
  # The ordinary config runs it: a dense model of 32 units, whose loss is the granularity's.
  evaluated = cli("substrax-eval", "--config=lm_hmm:tiny", "--config.eval.lengths=(16,32)",
                  "--config.model.positions=rope", "--config.model.mlp.hidden=(32,)",
                  f"--workdir={out}")
  assert evaluated.returncode == 0, evaluated.stderr
  sub = json.load(open(os.path.join(out, "eval", "lm.json")))["lengths"][0]
  assert sub["loss_nats"] == pytest.approx(row["granularities"]["4"], abs=1e-5)
  for bad, message in (("--granularity=3", "--granularity: needs one factor per layer"),
                       ("--granularity=x", "--granularity: needs integers")):
    again = cli("substrax-extract", *args, bad, f"--out={tmp_path / 'other'}")
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        next(line for line in again.stderr.splitlines() if message in line)], again.stderr
  taken = cli("substrax-extract", *args, "--granularity=2", f"--out={out}")
  assert taken.returncode == 2 and "already holds a run" in taken.stderr


def test_markov_and_text_sources_train(tmp_path):
  run = cli("substrax-train", "--config=lm_markov:tiny", f"--workdir={tmp_path / 'markov'}",
            "--config.model.norm=rmsnorm", "--config.model.zero_mean=True")
  assert run.returncode == 0, run.stderr
  row = json.load(open(tmp_path / "markov" / "eval" / "lm.json"))["lengths"][0]
  # order 3, p = 0.1, q = 0.2: pi1 = 1/3; targets 1 and 2 are i.i.d., the other 14 have the
  # entropy rate 2/3 H(0.1) + 1/3 H(0.2).
  h = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)
  rate, unigram = 2 / 3 * h(0.1) + 1 / 3 * h(0.2), h(1 / 3)
  assert row["unigram_nats"] == pytest.approx(unigram, rel=1e-9)
  assert row["floor_nats"] == pytest.approx((2 * unigram + 14 * rate) / 16, rel=1e-9)

  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(12):
    (corpus / f"{i:02d}.txt").write_text(f"Document {i}: déjà vu, the quick brown fox. " * 8)
  run = cli("substrax-train", "--config=lm_text:tiny", f"--workdir={tmp_path / 'text'}",
            f"--config.data.path={corpus}", "--config.model.norm=crmsnorm")
  assert run.returncode == 0, run.stderr
  report = json.load(open(tmp_path / "text" / "eval" / "lm.json"))
  row = report["lengths"][0]
  assert row["floor_nats"] is None and "excess_over_floor" not in row
  # Two bytes of 'é' and 'à' are one character each: fewer characters than bytes.
  assert report["chars_per_token"] < 1
  assert row["loss_bits_per_char"] > row["loss_bits_per_token"]


def test_missing_text_is_one_line(tmp_path):
  run = cli("substrax-train", "--config=lm_text:tiny", f"--workdir={tmp_path / 'run'}",
            f"--config.data.path={tmp_path / 'nowhere'}")
  assert run.returncode == 2, run.stderr
  assert len(run.stderr.strip().splitlines()) == 1 and "nowhere" in run.stderr


@pytest.mark.parametrize("changes, key", [
    ({"data.source": "wiki"}, "data.source"),
    ({"eval.lengths": (16, 64)}, "eval.lengths"),          # learned positions cover 16
    ({"model.positions": "alibi", "model.attention.kind": "linear"}, "model.positions"),
    ({"model.positions": "rpe", "model.attention.impl": "pallas"}, "model.attention.impl"),
    ({"model.norm": "crmsnorm", "model.zero_mean": True}, "model.zero_mean"),
    ({"model.max_len": 8}, "model.max_len"),
])
def test_config_errors_name_the_key(changes, key):
  config = lm_hmm.get_config("tiny")
  config.update_from_flattened_dict(changes)
  with pytest.raises(ConfigError, match=f"^{key}: "):
    trainer.validate(config)


def test_relative_positions_evaluate_beyond_the_training_length():
  config = lm_hmm.get_config("tiny")
  config.model.positions = "alibi"
  config.eval.lengths = (16, 64)
  trainer.validate(config)
  config = lm_text.get_config("tiny")
  config.data.path = None
  with pytest.raises(ConfigError, match="^data.path: "):
    trainer.validate(config)


@pytest.mark.parametrize("kind", attention.KINDS)
def test_every_causal_kind_is_a_language_model(kind):
  """Position t's logits do not depend on later tokens, for every attention kind."""
  model = LanguageModel(16, 32, 1, 12, BlockConfig(num_heads=2, attention={
      "kind": kind, "impl": "auto", "window": 4, "num_features": 16, "low_rank": 4}))
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 16)
  params = model.init(jax.random.key(1), tokens)
  logits = model.apply(params, tokens)
  changed = model.apply(params, tokens.at[:, 8:].set((tokens[:, 8:] + 1) % 16))
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(changed[:, :8], logits[:, :8], atol=1e-5)
  assert float(jnp.abs(changed[:, 8:] - logits[:, 8:]).max()) > 1e-4
