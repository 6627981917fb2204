"""The three console scripts, their outputs, and one-line exit-2 errors for bad inputs."""
import json
import os

import pytest

from conftest import ICL_CONFIG, cli, icl_config
from substrax.train import trainer, validation
from substrax.train.analysis import reporting
from substrax.train.metrics import read_jsonl


def test_train_writes_config_metrics_tensorboard_and_eval(tiny_run):
  workdir, run = tiny_run
  assert json.load(open(os.path.join(workdir, "config.json")))["task"] == "icl"
  train = read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")
  assert [r["step"] for r in train] == list(range(1, 21))
  for key in ("loss", "learning_rate", "grad_norm", "steps_per_sec", "examples_per_sec"):
    assert key in train[-1], key
  assert [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"), "eval")] == [10, 20]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))
  report = json.load(open(os.path.join(workdir, "eval", "icl_linear.json")))
  assert report["function_class"] == "linear" and report["n_dims"] == 5
  assert report["k"] == list(range(11))
  assert {"transformer", "least_squares", "ridge", "gd_optimal_step", "3nn", "averaging",
          "lasso", "zero"} <= set(report["models"])
  curve = report["models"]["transformer"]
  assert len(curve["mean"]) == 11 and all(lo <= m <= hi for m, (lo, hi)
                                          in zip(curve["mean"], curve["ci95"]))
  assert os.path.getsize(os.path.join(workdir, "eval", "icl_linear.png")) > 10_000
  assert "transformer" in run.stdout and "least_squares" in run.stdout


def test_eval_reloads_the_newest_checkpoint(tiny_run):
  workdir, _ = tiny_run
  before = json.load(open(os.path.join(workdir, "eval", "icl_linear.json")))
  figure = os.path.join(workdir, "eval", "icl_linear.png")
  drawn = os.path.getmtime(figure)
  # Without figures: the JSON is rewritten, the training run's figure is left as it was.
  run = cli("substrax-eval", f"--config={ICL_CONFIG}:tiny", "--config.plots=False",
            f"--workdir={workdir}")
  assert run.returncode == 0, run.stderr
  assert os.path.getmtime(figure) == drawn
  after = json.load(open(os.path.join(workdir, "eval", "icl_linear.json")))
  assert after["step"] == 20
  assert after["models"]["transformer"]["mean"] == pytest.approx(
      before["models"]["transformer"]["mean"], rel=1e-5)


def test_plots_off_skips_the_figures_drawn_inside_the_block_only(tmp_path):
  curves = {"a": {"mean": [1.0, 2.0], "ci95": [[0.5, 1.5], [1.5, 2.5]]}}
  draw = lambda name: reporting.plot_curves(str(tmp_path / name), [1, 2], curves, xlabel="k",
                                            ylabel="error", title=name)
  with reporting.plots(False):
    draw("off.png")
    with reporting.plots(True):
      draw("on_inside.png")
  draw("on.png")
  assert sorted(os.listdir(tmp_path)) == ["on.png", "on_inside.png"]


def test_inspect_counts_parameters_and_flops():
  run = cli("substrax-inspect", f"--config={ICL_CONFIG}:cpu", "--json")
  assert run.returncode == 0, run.stderr
  report = json.loads(run.stdout)
  # Garg et al.'s tiny model without GPT-2's unused token embedding has 151,937 parameters;
  # ours feeds 21 of its 22 positions (the last y token predicts nothing): 64 fewer.
  assert report["total_params"] == 151_937 - 64
  assert report["param_bytes"] == 4 * report["total_params"]
  assert report["train_state_bytes"] > 3 * report["param_bytes"]  # params + Adam moments
  assert 1e9 < report["flops_per_step"] < 2e9
  table = cli("substrax-inspect", f"--config={ICL_CONFIG}:cpu")
  assert "backbone/block_0/attn" in table.stdout and "total" in table.stdout


@pytest.mark.mesh
def test_inspect_reports_compile_seconds_and_compiled_memory_per_device():
  report = trainer.inspect(icl_config("tiny"))   # 8 devices, data parallel
  assert report["setup_s"] > 0 and report["lower_s"] > 0 and report["compile_s"] > 0
  mem = report["memory_per_device"]
  assert mem["total"] == mem["argument"] + mem["output"] + mem["temp"] - mem["alias"] > 0
  # The step's arguments are the train state, donated (aliased to the outputs), and the data.
  state = report["param_bytes_per_device"] + report["optimizer_bytes_per_device"]
  assert mem["argument"] >= state + report["data_bytes_per_device"] and mem["alias"] >= state
  table = trainer.format_inspect(report)
  assert f"compiled memory per device (XLA estimate): {mem['total']:,} bytes" in table
  assert "compile" in table and "on 8 cpu devices" in table
  # Backends without XLA's memory analysis give None, which the table says in words.
  assert "compiled memory per device: unavailable on cpu" in trainer.format_inspect(
      report | {"memory_per_device": None})


BAD_CONFIGS = [
    ({"model.num_heads": 3}, "model.num_heads"),
    ({"data.function_class": "cubic"}, "data.function_class"),
    ({"optim.learning_rate": 0.0}, "optim.learning_rate"),
    ({"mesh_shape": (3, 1, 1)}, "mesh_shape"),
    ({"mesh_shape": (-1, -1, 1)}, "mesh_shape"),
    pytest.param({"batch_size": 12}, "batch_size", marks=pytest.mark.mesh),
    pytest.param({"mesh_shape": (1, 1, 8)}, "attn.*dimension 2 does not divide",
                 marks=pytest.mark.mesh),   # 2 heads over 8 devices
    ({"task": "nope"}, "task"),
    ({"model.attention.kind": "nope"}, "model.attention.kind"),
    ({"model.attention.kind": "performer", "model.attention.impl": "cudnn"},
     "model.attention.impl"),
    ({"model.attention.window": 0}, "model.attention.window"),
    ({"data.sparsity": 9}, "data.sparsity"),
    ({"optim.warmup_steps": 20}, "optim.warmup_steps"),
]


@pytest.mark.parametrize("overrides,key", BAD_CONFIGS)
def test_bad_configs_name_the_key_before_compiling(overrides, key):
  with pytest.raises(validation.ConfigError, match=key) as e:
    trainer.setup(icl_config("tiny", **overrides))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("args,key", [
    (["--config.model.num_heads=3"], "model.num_heads"),
    (["--config.model.depht=3"], "depht"),
    (["--config.batch_size=abc"], "batch_size"),
    (["--config.mesh_shape=(2,1,1)"], "mesh_shape"),
    (["--workdir=/proc/forbidden"], "--workdir"),
])
def test_cli_bad_input_exits_2_with_one_line(args, key, tmp_path):
  run = cli("substrax-train", f"--config={ICL_CONFIG}:tiny", f"--workdir={tmp_path}", *args)
  assert run.returncode == 2, run.stderr
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and key in lines[0], run.stderr
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_unknown_preset_and_a_directory_without_a_run_exit_2(tmp_path):
  run = cli("substrax-train", f"--config={ICL_CONFIG}:huge", f"--workdir={tmp_path}")
  assert run.returncode == 2 and "huge" in run.stderr.strip().splitlines()[-1]
  run = cli("substrax-eval", f"--config={ICL_CONFIG}:tiny", f"--workdir={tmp_path}")
  assert run.returncode == 2 and "has no config.json" in run.stderr
