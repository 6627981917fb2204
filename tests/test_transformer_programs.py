"""Transformer Programs: the decompiled program computes exactly what the discrete model
computes, and the check that says so can fail.

The exact tests use randomly initialised models (random selection logits, predicates, tables and
classifier), so every head, predicate and table is exercised rather than the few a trained model
uses, on random inputs of each task's shape, causal and bidirectional.
"""
import ast
import json
import os

import jax
import numpy as np
import pytest

from conftest import cli, experiment_config
from substrax.models import transformer_programs as tp
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.tasks import programs

INPUTS = 1500


def _setup(task, attention="auto", seed=0):
  """(ProgramConfig with the cpu preset's sizes, random params, random inputs with BOS).
  num_scale is 1: scaled up, random numerical weights would decide every label alone (the
  scaled classifier is checked exactly by the end-to-end run)."""
  config = experiment_config("transformer_programs", "cpu", **{
      "data.task": task, "model.attention": attention, "model.num_scale": 1.0})
  cfg = programs.program_config(config)
  rng = np.random.default_rng(seed)
  tokens = np.concatenate([np.full((INPUTS, 1), cfg.vocab),
                           rng.integers(0, cfg.vocab, (INPUTS, cfg.length - 1))], 1)
  params = tp.TransformerProgram(cfg).init(jax.random.key(seed), tokens[:1])["params"]
  return cfg, params, tokens.astype(np.int32)


def _agreement(source, tokens, labels):
  program = tp.load_program(source)
  return np.mean(np.array([program(row[1:].tolist()) for row in tokens]) == labels)


@pytest.mark.parametrize("task, attention, causal", [
    ("sort", "auto", False), ("reverse", "causal", True), ("histogram", "auto", False),
    ("dyck1", "auto", True), ("dyck1", "bidirectional", False)])
def test_the_program_agrees_with_a_random_discrete_model_everywhere(task, attention, causal):
  cfg, params, tokens = _setup(task, attention, seed=len(task))
  assert cfg.causal == causal
  labels = tp.discrete_predict(params, tokens, cfg)
  assert len(np.unique(labels)) > 1   # not a constant model
  assert _agreement(tp.decompile(params, cfg), tokens, labels) == 1.0


def test_a_perturbed_program_disagrees():
  cfg, params, tokens = _setup("histogram")
  labels = tp.discrete_predict(params, tokens, cfg)
  lines = tp.decompile(params, cfg).splitlines()
  # One entry of the classifier table: the weight of value 1 of `position` (only position 1
  # has it) for a class the discrete model does not pick there on the first input.
  at = lines.index("  'position': [") + 2   # the rows of values 0, 1, ... follow
  row = ast.literal_eval(lines[at].strip().rstrip(","))
  row[(labels[0, 1] + 1) % cfg.classes] = 1e9
  lines[at] = f"    {row!r},"
  agreement = _agreement("\n".join(lines), tokens, labels)
  assert 1 - 1 / cfg.length <= agreement < 1


@pytest.mark.parametrize("task", ["histogram", "dyck1"])
def test_at_a_low_temperature_the_soft_forward_is_the_hard_one(task):
  cfg, params, tokens = _setup(task, seed=3)
  model = tp.TransformerProgram(cfg)
  # Random logits can have top-two gaps of ~1e-5 somewhere, so the temperature is far lower.
  soft = model.apply({"params": params}, tokens[:200], 1e-6)
  hard = model.apply({"params": params}, tokens[:200], hard=True)
  np.testing.assert_allclose(soft, hard, atol=1e-4)
  warm = model.apply({"params": params}, tokens[:200], 1.0)   # a real relaxation otherwise
  assert np.max(np.abs(warm - hard)) > 1e-2


def test_temperature_anneals_geometrically():
  tau = experiment_config("transformer_programs", "cpu").tau
  assert float(programs.temperature(tau, 0, 101)) == pytest.approx(3.0)
  assert float(programs.temperature(tau, 50, 101)) == pytest.approx((3.0 * 0.01) ** 0.5)
  assert float(programs.temperature(tau, 100, 101)) == pytest.approx(0.01)


def test_examples_are_bos_then_the_prompt_with_the_tasks_answers():
  d = experiment_config("transformer_programs", "tiny", **{"data.task": "sort"}).data
  tokens, labels = programs.examples(d, np.random.default_rng(0), 50)
  assert tokens.shape == labels.shape == (50, 9) and (tokens[:, 0] == 8).all()
  assert (labels[:, 1:] == np.sort(tokens[:, 1:], 1)).all()
  d.task = "dyck1"
  tokens, labels = programs.examples(d, np.random.default_rng(0), 50)
  assert set(np.unique(tokens[:, 1:])) <= {0, 1} and set(np.unique(labels[:, 1:])) <= {4, 5, 6}


def test_cli_trains_discretises_and_decompiles(tmp_path):
  workdir = str(tmp_path / "run")
  run = cli("substrax-train", "--config=configs/transformer_programs.py:tiny",
            f"--workdir={workdir}", "--config.data.task=histogram", "--config.progress_bar=False")
  assert run.returncode == 0, run.stderr
  report = json.load(open(os.path.join(workdir, "eval", "programs.json")))
  assert report["agreement"] == 1.0 and report["num_sequences"] == 500
  source = open(os.path.join(workdir, "eval", "program.py")).read()
  assert report["program_lines"] == len(source.splitlines())
  labels = tp.load_program(source)([0, 1, 2, 3, 4, 5, 6, 7])
  assert len(labels) == 9 and all(0 <= y < 9 for y in labels)
  assert "program agreement 1.0000" in run.stdout


def test_a_bad_config_key_is_one_line_and_exit_2(tmp_path):
  run = cli("substrax-train", "--config=configs/transformer_programs.py:tiny",
            f"--workdir={tmp_path / 'run'}", "--config.model.cat_hedas=3")
  assert run.returncode == 2, run.stderr
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and "model.cat_hedas" in lines[0], run.stderr
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("override, key", [({"data.task": "dyck2"}, "data.task"),
                                           ({"model.attention": "local"}, "model.attention"),
                                           ({"tau.end": 5.0}, "tau"),
                                           ({"model.layers": 0}, "model.layers")])
def test_bad_values_are_config_errors_naming_the_key(override, key):
  with pytest.raises(ConfigError, match=f"^{key}: ") as err:
    trainer.validate(experiment_config("transformer_programs", "tiny", **override))
  assert "\n" not in str(err.value)
