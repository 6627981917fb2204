"""Scale-out and faults: two localhost processes (gloo), parallelism layouts, checkpoint faults.

The multi-process cases run real `substrax-train` processes, 2 CPU devices each, joined by
jax.distributed on a free localhost port: the same code path as a TPU pod slice or SLURM job.
The SIGTERM case trains the mesa task, the trainer's cheapest complete run (tests/test_integrity.py).
"""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ICL_CONFIG, REPO, cli, cli_env, icl_config
from substrax.data import DataError
from substrax.data import tfds as tfds_data
from substrax.train import trainer
from test_trainer import losses_in_process, train_losses

EXE = os.path.join(os.path.dirname(sys.executable), "substrax-train")
MESA = ["--config=icl_mesa:tiny", "--config.log_every_steps=1", "--config.plots=False"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, *args, processes=2, devices=2):
  """Starts `processes` substrax-train processes of one distributed run; args start with the
  config."""
  port = free_port()
  env = cli_env(devices, {"JAX_PLATFORMS": "cpu"})
  return [subprocess.Popen(
      [EXE, *args, f"--workdir={workdir}",
       "--config.distributed.enabled=True",
       f"--config.distributed.coordinator_address=127.0.0.1:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]


def finish(procs, timeout=240):
  outs = [p.communicate(timeout=timeout) for p in procs]
  return [p.returncode for p in procs], [err for _, err in outs]


def test_two_processes_equal_one_and_restore_on_one_device(tmp_path, tiny_run):
  # Checkpoints go to a separate directory, as to gs://bucket/... on a pod.
  workdir, bucket = str(tmp_path / "run"), str(tmp_path / "bucket" / "ckpt")
  codes, errs = finish(launch(workdir, f"--config={ICL_CONFIG}:tiny",
                              f"--config.checkpoint.directory={bucket}"))
  assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
  losses = np.array([loss for _, loss in train_losses(workdir)])
  assert len(losses) == 20   # process 0 alone wrote the metrics
  # tiny_run: the same run by one process on one device (conftest.py).
  np.testing.assert_allclose(losses, [loss for _, loss in train_losses(tiny_run[0])],
                             rtol=1e-5)
  assert os.path.exists(os.path.join(workdir, "eval", "icl_linear.png"))
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  shards = os.listdir(os.path.join(bucket, "20", "state"))
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(shards)   # both processes saved

  run = cli("substrax-train", f"--config={ICL_CONFIG}:tiny", f"--workdir={workdir}",
            f"--config.checkpoint.directory={bucket}", "--config.num_steps=30", devices=1)
  assert run.returncode == 0, run.stderr
  assert "resuming from the checkpoint at step 20" in run.stderr
  assert [s for s, _ in train_losses(workdir)] == list(range(1, 31))


def test_sigterm_to_one_process_saves_on_both_and_the_rerun_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  # Mesa steps take milliseconds: 1000 of them leave the signal, sent at step 30 and handled
  # some 20-90 steps later on two busy cores, far from the end of the run.
  steps = [*MESA, "--config.num_steps=1000", "--config.checkpoint.every_steps=1000"]
  procs = launch(workdir, *steps)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 180
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 30:
      procs[1].send_signal(signal.SIGTERM)   # one process only, as a preempted host would
      break
    time.sleep(0.05)
  codes, errs = finish(procs)
  assert codes == [143, 143], errs[0][-3000:] + errs[1][-3000:]
  stopped = int(errs[0].split("saved a checkpoint at step ")[1].split(";")[0])
  assert 30 <= stopped < 1000
  assert f"saved a checkpoint at step {stopped}" in errs[1]
  state_dir = os.path.join(workdir, "checkpoints", str(stopped), "state")
  assert os.path.exists(os.path.join(state_dir, "commit_success.txt"))

  run = cli("substrax-train", *steps, f"--workdir={workdir}", devices=4)
  assert run.returncode == 0, run.stderr
  assert f"resuming from the checkpoint at step {stopped}" in run.stderr
  assert [s for s, _ in train_losses(workdir)][-1] == 1000


# Runs substrax-train with CheckpointManager.save patched to SIGKILL the process right after
# the save of step KILL_AT starts: its files are still being written in the background.
KILLER = """
import os, signal, sys
import orbax.checkpoint as ocp
from substrax.train import main
save = ocp.CheckpointManager.save
def killing_save(self, step, *args, **kwargs):
  out = save(self, step, *args, **kwargs)
  if step == int(os.environ["KILL_AT"]):
    os.kill(os.getpid(), signal.SIGKILL)
  return out
ocp.CheckpointManager.save = killing_save
sys.argv[0] = "substrax-train"
main.run_train()
"""


def test_killed_save_and_truncated_checkpoint_fall_back_to_complete_ones(tmp_path):
  workdir, ckpt = str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints")
  # The ICL task: on the mesa task the kill once landed before the step's temporary directory
  # existed (a clean-clone make test), so the case this test is for never happened.
  args = [f"--config={ICL_CONFIG}:tiny", f"--workdir={workdir}", "--config.num_steps=30"]
  env = cli_env(1, {"KILL_AT": "20"})
  killed = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=240)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert "20.orbax-checkpoint-tmp" in os.listdir(ckpt) and "20" not in os.listdir(ckpt)

  resumed = cli("substrax-train", *args)
  assert resumed.returncode == 0, resumed.stderr
  assert "ignoring the incomplete checkpoint" in resumed.stderr
  assert "resuming from the checkpoint at step 10" in resumed.stderr
  reference = losses_in_process(icl_config("tiny", num_steps=30), 30)
  after = [(s, loss) for s, loss in train_losses(workdir) if s > 10]
  assert [s for s, _ in after] == list(range(11, 31))   # the log was rewound to step 10
  np.testing.assert_allclose([loss for _, loss in after], reference[10:], rtol=1e-5)

  # Truncate every file of the newest checkpoint (30): the restart sets it aside, uses 20.
  for root, _, files in os.walk(os.path.join(ckpt, "30")):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  again = cli("substrax-train", *args[:2], "--config.num_steps=40")
  assert again.returncode == 0, again.stderr
  assert "checkpoints/30 is unreadable" in again.stderr and "warning" in again.stderr
  assert "resuming from the checkpoint at step 20" in again.stderr
  assert "30.unreadable" in os.listdir(ckpt)


@pytest.mark.mesh
def test_inspect_shows_fsdp_sharding_the_state_about_8_ways():
  # Equal losses under every layout: tests/test_trainer.py::test_one_device_equals_eight_devices.
  data = trainer.inspect(icl_config("tiny", parallelism="data"))
  fsdp = trainer.inspect(icl_config("tiny", parallelism="fsdp"))
  assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "model": 1}
  assert data["param_bytes_per_device"] == data["param_bytes"]
  ratio = data["param_bytes_per_device"] / fsdp["param_bytes_per_device"]
  assert 6.5 < ratio <= 8, ratio   # all but the small unsharded vectors split 8 ways
  assert (data["optimizer_bytes_per_device"] / fsdp["optimizer_bytes_per_device"]
          == pytest.approx(ratio, rel=0.01))


@pytest.mark.mesh
def test_tensor_parallel_matches_data_parallel():
  # 8 heads so that heads (and the MLP) split over the 8-way model axis.
  data, tensor = (losses_in_process(icl_config("tiny", parallelism=p, **{"model.num_heads": 8}), 10)
                  for p in ("data", "tensor"))
  np.testing.assert_allclose(tensor, data, rtol=1e-5)


@pytest.mark.parametrize("overrides, key", [
    ({"parallelism": "pipeline"}, "parallelism"),
    ({"parallelism": "fsdp", "mesh_shape": (2, 4, 1)}, "mesh_shape"),
    pytest.param({"parallelism": "tensor"}, "does not divide",   # 2 heads do not split 8 ways
                 marks=pytest.mark.mesh),
])
def test_bad_layouts_name_the_key(overrides, key):
  with pytest.raises(trainer.validation.ConfigError, match=key):
    trainer.setup(icl_config("tiny", **overrides))


def test_data_source_errors_are_one_line_naming_the_path(tmp_path, monkeypatch):
  missing = str(tmp_path / "no_tfds_here")
  run = cli("substrax-train", "--config=configs/lra_image.py:tiny", f"--workdir={tmp_path}/r",
            "--config.data.name=cifar10", f"--config.data.data_dir={missing}")
  assert run.returncode == 2
  assert run.stderr.strip().count("\n") == 0 and missing in run.stderr, run.stderr
  assert run.stderr.startswith("data error: TFDS dataset 'cifar10'")

  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds_data, "open_source",
                      lambda *a, **k: [{"img": np.zeros((32, 32, 3), np.uint8), "label": 1}])
  with pytest.raises(DataError) as err:
    tfds_data.load("cifar10", "test", missing)
  message = str(err.value)
  assert missing in message and "schema" in message and "'image'" in message
  assert "\n" not in message
