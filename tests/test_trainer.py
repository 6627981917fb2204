"""The trainer end to end: resume exactness, mesh invariance, resharded restores, NaN stop."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ICL_CONFIG, REPO, cli, cli_env, experiment_config, icl_config
from substrax.train import checkpointing, trainer
from substrax.train.metrics import read_jsonl


def train_losses(workdir):
  records = read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")
  return [(r["step"], r["loss"]) for r in records]


def restore_latest(config, workdir):
  exp = trainer.setup(config)
  with exp.activate():
    manager = checkpointing.make_manager(checkpointing.directory(config, workdir), keep=3)
    step = manager.latest_step()
    return step, checkpointing.restore(manager, step, exp.abstract_state)


def losses_in_process(config, steps):
  exp = trainer.setup(config)
  out = []
  with exp.activate():
    state = exp.init()
    for _ in range(steps):
      state, m = exp.train_step(state, exp.train_data)
      out.append(float(m["loss"]))
  return np.array(out)


@pytest.mark.mesh
def test_one_device_equals_eight_devices_on_every_mesh(tiny_run):
  # tiny_run: substrax-train on one device (conftest.py).
  reference = np.array([loss for _, loss in train_losses(tiny_run[0])])
  assert len(reference) == 20
  # The named layouts (data parallel, FSDP, FSDP x 2-way tensor) and an explicit 3-axis mesh.
  for layout in [{"parallelism": "data"}, {"parallelism": "fsdp"},
                 {"parallelism": "fsdp_tensor"}, {"mesh_shape": (2, 2, 2)}]:
    got = losses_in_process(icl_config("tiny", **layout), 20)
    np.testing.assert_allclose(got, reference, rtol=1e-5, err_msg=str(layout))


def test_sigterm_then_resume_is_exact(tmp_path):
  # The mesa task: the trainer's cheapest complete run (tests/test_integrity.py), whose steps
  # take milliseconds; 400 of them leave the signal far from the end of the run.
  args = ["--config=icl_mesa:tiny", "--config.num_steps=400", "--config.log_every_steps=1",
          "--config.checkpoint.every_steps=50", "--config.plots=False"]
  full, interrupted = str(tmp_path / "full"), str(tmp_path / "interrupted")
  env = cli_env(1)
  exe = os.path.join(os.path.dirname(sys.executable), "substrax-train")
  proc = subprocess.Popen([exe, *args, f"--workdir={interrupted}"], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(interrupted, "metrics.jsonl")
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 40:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  stopped_at = train_losses(interrupted)[-1][0]
  assert 30 <= stopped_at < 400
  assert f"saved a checkpoint at step {stopped_at}" in err

  resumed = cli("substrax-train", *args, f"--workdir={interrupted}")
  assert resumed.returncode == 0, resumed.stderr
  assert f"resuming from the checkpoint at step {stopped_at}" in resumed.stderr
  assert cli("substrax-train", *args, f"--workdir={full}").returncode == 0

  assert train_losses(interrupted) == train_losses(full)
  config = experiment_config("icl_mesa", num_steps=400)
  (s1, a), (s2, b) = restore_latest(config, interrupted), restore_latest(config, full)
  assert s1 == s2 == 400
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.mesh
def test_fsdp_checkpoint_restores_on_another_mesh_and_on_one_device(workdir):
  config = icl_config("tiny", parallelism="fsdp", num_steps=10)
  state = trainer.train_and_evaluate(config, workdir)
  kernel = state.params["backbone"]["block_0"]["mlp"]["fc"]["kernel"]
  assert kernel.sharding.spec[0] == "fsdp"

  step, restored = restore_latest(icl_config("tiny", mesh_shape=(2, 4, 1), num_steps=10), workdir)
  assert step == 10
  moved = restored.params["backbone"]["block_0"]["mlp"]["fc"]["kernel"]
  assert dict(moved.sharding.mesh.shape) == {"data": 2, "fsdp": 4, "model": 1}
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  run = cli("substrax-train", f"--config={ICL_CONFIG}:tiny", f"--workdir={workdir}",
            "--config.num_steps=20", devices=1)
  assert run.returncode == 0, run.stderr
  assert "resuming from the checkpoint at step 10" in run.stderr
  assert [s for s, _ in train_losses(workdir)] == list(range(1, 21))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(workdir):
  # The learning rate warms up towards 1e30, so the loss overflows after a few steps.
  run = cli("substrax-train", f"--config={ICL_CONFIG}:tiny", f"--workdir={workdir}",
            "--config.optim.learning_rate=1e30", "--config.optim.warmup_steps=10",
            "--config.checkpoint.every_steps=1")
  assert run.returncode == 1
  message = run.stderr.strip().splitlines()[-1]
  assert "at step" in message and "last good checkpoint" in message
  bad_step = int(message.split("at step ")[1].split(";")[0])
  step, state = restore_latest(icl_config("tiny"), workdir)
  assert step == bad_step - 1
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))
  assert all(np.isfinite(r["loss"]) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")))
