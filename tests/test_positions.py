"""Positional schemes against the argument of Luo et al. 2022 (URPE), and the positions task.

Impossibility: softmax attention rows are probability vectors, so on a constant input (every
value row equal) each layer returns the same vector at every position, whatever the scores;
relative schemes inside the softmax (RPE, RoPE, ALiBi), the causal mask and no positions at
all keep the rows stochastic, so the whole model's output is the same at every position. URPE's
Toeplitz multiplier (a random one; its all-ones init is plain RPE) and absolute positions break
this. The relative schemes are not idle: on random tokens the same parameters are not
permutation-equivariant.

The model tests run in float64 (restored for the rest of the suite): in float32 the spread of
the final hidden states is ~1e-6 from rounding alone (the final LayerNorm scales the residual
stream of 0.02-std embeddings up about fifty-fold), against a bound of 1e-6 here and 1e-2 for
the schemes that do see position. The parameters are perturbed off their init (norm affines,
larger Q/K/V so that attention is peaked, random RPE biases and Toeplitz weights) so that no
scheme passes by leaving its terms at zero; the constant inputs are c, ..., c for every token c.
"""
import functools
import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cli, experiment_config
from substrax.models.lm import LanguageModel
from substrax.models.transformer import BlockConfig
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.tasks import positions as task

VOCAB, WIDTH, DEPTH, HEADS, LENGTH = 8, 16, 3, 2, 8
EXACT, APART = 1e-6, 1e-2   # the same output at every position / positions told apart
BLIND = ("none", "rope", "alibi", "rpe")


pytestmark = pytest.mark.usefixtures("float64")   # conftest: x64 for this module


def _model(positions, causal):
  return LanguageModel(VOCAB, WIDTH, DEPTH, LENGTH,
                       BlockConfig(HEADS, positions=positions, dtype=jnp.float64), causal=causal)


def _params(model, seed, toeplitz="random"):
  """The model's random init in float64, perturbed with numpy noise: norm scales 1 + 0.3 N(0, 1),
  biases 0.1 N(0, 1), Q/K/V weights of std 0.5 (scores of order one and more, so attention is
  peaked), RPE biases N(0, 1), and URPE's Toeplitz weights uniform in [0, 2]
  (toeplitz='random') or its all-ones init ('ones')."""
  params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, LENGTH), jnp.int32)))
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(params["params"])
  for path, value in sorted(flat.items()):
    value = np.asarray(value, np.float64)
    noise = rng.standard_normal(value.shape)
    name = path[-1]
    if name == "urpe_toeplitz":
      value = rng.uniform(0.0, 2.0, value.shape) if toeplitz == "random" else value
    elif name == "rpe_bias":
      value = noise
    elif name == "qkv_kernel":
      value = 0.5 * noise
    elif name == "scale":
      value = value + 0.3 * noise
    elif "bias" in name:
      value = value + 0.1 * noise
    flat[path] = jnp.asarray(value)
  return flax.traverse_util.unflatten_dict(flat)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, constant, tokens, perm):
  """One batched pass: (constant-input spreads {hidden, logits}, max |f(pi X) - pi f(X)| of the
  logits on the random tokens X)."""
  n = len(constant)
  h, logits = task.hidden_and_logits(model, params,
                                     jnp.concatenate([constant, tokens, tokens[:, perm]]))
  spreads = {"hidden": task.spread(h[:n]), "logits": task.spread(logits[:n])}
  plain, permuted = jnp.split(logits[n:], 2)
  return spreads, jnp.max(jnp.abs(permuted - plain[:, perm]))


def _measure(positions, causal, toeplitz="random"):
  """(spreads on the constant sequences c, ..., c of every token c, the permutation gap for
  random tokens and a random permutation)."""
  model = _model(positions, causal)
  rng = np.random.default_rng(7)
  constant = np.repeat(np.arange(VOCAB)[:, None], LENGTH, 1)
  tokens = rng.integers(0, VOCAB, (4, LENGTH))
  return _forward(model, _params(model, 0, toeplitz), constant, tokens,
                  rng.permutation(LENGTH))


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("positions", BLIND)
def test_relative_schemes_cannot_tell_positions_of_a_constant_input(positions, causal):
  spreads, gap = _measure(positions, causal)
  assert spreads["hidden"].dtype == jnp.float64
  assert float(spreads["hidden"]) <= EXACT and float(spreads["logits"]) <= EXACT, spreads
  if positions != "none" or causal:
    # The scheme (or the mask) is at work: on random tokens, order changes the output.
    assert float(gap) >= 1e-3, gap


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("positions", ["urpe", "learned"])
def test_urpe_and_absolute_positions_tell_positions_of_a_constant_input(positions, causal):
  spreads, _ = _measure(positions, causal)
  assert float(spreads["hidden"]) >= APART and float(spreads["logits"]) >= APART, spreads


def test_urpe_at_its_all_ones_init_is_rpe_and_blind():
  spreads, _ = _measure("urpe", False, "ones")
  assert float(spreads["hidden"]) <= EXACT, spreads


def test_no_positions_is_permutation_equivariant_and_learned_positions_are_not():
  _, gap = _measure("none", False)
  assert float(gap) <= EXACT, gap
  _, gap = _measure("learned", False)
  assert float(gap) >= 1e-3, gap


def test_targets_of_both_tasks():
  tokens = jnp.arange(2 * LENGTH).reshape(2, LENGTH) % VOCAB + 1   # no token is 0
  targets = jax.jit(task.targets, static_argnums=0)
  assert targets("pi", tokens).tolist() == [list(range(LENGTH))] * 2
  etp = targets("etp", tokens)
  assert etp[0].tolist() == [2, 4, 6, 8, 0, 0, 0, 0]   # x_1, x_3, x_5, x_7, then the constant
  assert etp[1].tolist() == [2, 4, 6, 8, 0, 0, 0, 0]
  assert task.position_blind_accuracy("pi", 32, 64) == 1 / 32
  assert task.position_blind_accuracy("etp", 32, 64) == pytest.approx((16 + 16 / 64) / 32)


def test_cli_trains_and_writes_the_report(tmp_path):
  workdir = str(tmp_path / "run")
  run = cli("substrax-train", "--config=configs/positions.py:tiny", f"--workdir={workdir}",
            "--config.data.task=etp", "--config.model.positions=urpe")
  assert run.returncode == 0, run.stderr
  report = json.load(open(os.path.join(workdir, "eval", "positions.json")))
  assert {"step", "task", "positions", "length", "vocab", "accuracy", "loss",
          "accuracy_per_position", "position_blind_accuracy", "constant_input_spread",
          "accuracy_token_targets"} <= set(report)
  assert (report["step"], report["task"], report["positions"]) == (20, "etp", "urpe")
  assert len(report["accuracy_per_position"]) == report["length"] == 8
  assert 0 <= report["accuracy"] <= 1
  assert report["accuracy"] == pytest.approx(sum(report["accuracy_per_position"]) / 8)
  assert set(report["constant_input_spread"]) == {"hidden", "logits"}
  assert os.path.getsize(os.path.join(workdir, "eval", "positions.png")) > 5_000
  assert "ETP" in run.stdout


def test_a_relative_scheme_without_its_attention_kind_is_one_config_error(tmp_path):
  run = cli("substrax-train", "--config=configs/positions.py:tiny",
            f"--workdir={tmp_path / 'run'}", "--config.model.positions=alibi",
            "--config.model.attention.kind=linear")
  assert run.returncode == 2, run.stderr
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and "model.positions" in lines[0], run.stderr
  assert "'alibi'" in lines[0] and "'linear'" in lines[0], run.stderr
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("override, key", [({"data.task": "xyz"}, "data.task"),
                                           ({"data.vocab": 1}, "data.vocab"),
                                           ({"model.max_len": 4}, "model.max_len")])
def test_bad_values_are_config_errors_naming_the_key(override, key):
  with pytest.raises(ConfigError, match=f"^{key}: ") as err:
    trainer.validate(experiment_config("positions", **override))
  assert "\n" not in str(err.value)
