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
from substrax.configs import lm_hmm, lm_text, lm_tokenized
from substrax.models import attention
from substrax.models.lm import LanguageModel
from substrax.models.transformer import BlockConfig
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.metrics import read_jsonl
from substrax.train.tasks import lm


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
                  "--config.plots=False", f"--workdir={out}")
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
  # The reports only: the HMM run (hmm_run) draws the figure.
  run = cli("substrax-train", "--config=lm_markov:tiny", f"--workdir={tmp_path / 'markov'}",
            "--config.model.norm=rmsnorm", "--config.model.zero_mean=True", "--config.plots=False")
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
            f"--config.data.path={corpus}", "--config.model.norm=crmsnorm", "--config.plots=False")
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
  params = jax.jit(model.init)(jax.random.key(1), tokens)
  apply = jax.jit(model.apply)
  logits = apply(params, tokens)
  changed = apply(params, tokens.at[:, 8:].set((tokens[:, 8:] + 1) % 16))
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(changed[:, :8], logits[:, :8], atol=1e-5)
  assert float(jnp.abs(changed[:, 8:] - logits[:, 8:]).max()) > 1e-4


# ------------------------------------------------------------------------------- tokenized

def test_tokenized_markov_trains_and_reports_per_character(tmp_path):
  config = lm_tokenized.get_config("tiny")
  state = trainer.train_and_evaluate(config, str(tmp_path))
  report = json.load(open(tmp_path / "eval" / "lm.json"))
  assert report["unit"] == "character" and report["tokenizer"] == "bpe"
  assert report["dictionary"] == 16 and report["vocab_size"] == 17
  assert int(state.step) == config.num_steps and report["curve"]["step"] == [10, 20]
  row = report["lengths"][0]
  # Blocks of 16 characters of the order-4 chain (p = q = 0.8): the first 4 have no context
  # (1 bit each, the uniform marginal), the other 12 the entropy rate; the EOS is certain.
  h = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)
  assert row["floor_nats"] == pytest.approx((4 * math.log(2) + 12 * h(0.8)) / 16, rel=1e-9)
  assert report["char_unigram_nats"] == pytest.approx(math.log(2), rel=1e-9)
  # The row's unigram is the token unigram of this BPE dictionary, EOS included.
  assert row["unigram_nats"] > row["floor_nats"] and "loss_bits_per_token" not in row
  assert row["loss_bits_per_char"] == pytest.approx(row["loss_nats"] / math.log(2))
  assert 0.1 < row["tokens_per_char"] < 1   # BPE merges characters
  assert row["loss_nats"] > row["floor_nats"]


@pytest.mark.parametrize("kind", ["char", "lzw"])
def test_tokenized_loss_is_every_token_and_the_eos_per_character(kind):
  config = lm_tokenized.get_config("tiny")
  config.data.tokenizer = kind
  task = lm.build(config)
  data = task.train_data
  eos = task.model.vocab_size - 1
  ids = data["tokens"][:, 1:]
  lengths = data["mask"].sum(1).astype(int) - 1   # tokens before the closing EOS
  assert (data["tokens"][:, 0] == eos).all() and (data["chars"] == 16).all()
  assert (ids[np.arange(len(ids)), lengths] == eos).all()
  if kind == "char":
    assert (lengths == 16).all()
  else:
    assert lengths.mean() < 16
  # A head of zeros predicts uniformly over the dictionary and EOS: each block costs
  # (its tokens + 1) log V nats.
  zeros = jax.jit(lambda *args: jax.tree.map(jnp.zeros_like, task.model.init(*args)["params"]))
  params = zeros(jax.random.key(0), *task.init_inputs)
  batch = {k: v[:32] for k, v in data.items()}
  loss, _ = jax.jit(task.loss_fn)(params, {}, batch, 0)
  expected = (lengths[:32] + 1).sum() * math.log(eos + 1) / batch["chars"].sum()
  assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("changes, key", [
    ({"data.tokenizer": "wordpiece"}, "data.tokenizer"),
    ({"data.source": "hmm"}, "data.source"),
    ({"data.dictionary": 1}, "data.dictionary"),
    ({"model.max_len": 16}, "model.max_len"),               # a block of 16 and its EOS
    ({"eval.lengths": (32,)}, "eval.lengths"),               # must include data.length
])
def test_tokenized_config_errors_name_the_key(changes, key):
  config = lm_tokenized.get_config("tiny")
  config.update_from_flattened_dict(changes)
  with pytest.raises(ConfigError, match=f"^{key}: "):
    trainer.validate(config)
