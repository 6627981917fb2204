"""Run integrity, tried the way users break runs. Every case is a real substrax-* process: the
test checks its exit status, that stderr holds exactly the lines it should (one, unless a
recoverable event adds a warning), and that the checkpoints and metrics are what they were
(file lists and losses compared before and after). docs/reliability.md tabulates the cases.

Storage faults use real mounts (a tiny tmpfs for a full disk, a read-only remount), so those
tests need root, as CI has; elsewhere they skip.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import cli
from substrax.train.metrics import read_jsonl

# The mesa task trains and evaluates in seconds: the cheapest complete run of the trainer.
# Without figures (about 1 s of each process), which only two tests here draw.
MESA = ["--config=icl_mesa:tiny", "--config.num_steps=20", "--config.checkpoint.every_steps=10",
        "--config.log_every_steps=1", "--config.eval_every_steps=10", "--config.plots=False"]
LONG = ["--config=icl_mesa:tiny", "--config.num_steps=1000000",
        "--config.checkpoint.every_steps=1000000", "--config.log_every_steps=1",
        "--config.plots=False"]


def lines(run) -> list[str]:
  return lines_of(run.stderr)


def lines_of(stderr: str) -> list[str]:
  return stderr.strip().splitlines()


def one_line(run, status: int, *fragments: str) -> str:
  assert run.returncode == status, run.stderr
  out = lines(run)
  assert len(out) == 1, run.stderr
  for fragment in fragments:
    assert fragment in out[0], run.stderr
  return out[0]


def snapshot(workdir: str) -> tuple:
  """Every checkpoint file with its size and mtime, config.json, and the training losses."""
  files = []
  for root, _, names in os.walk(os.path.join(workdir, "checkpoints")):
    for name in names:
      path = os.path.join(root, name)
      files.append((os.path.relpath(path, workdir), os.path.getsize(path),
                    os.path.getmtime(path)))
  losses = [(r["step"], r["loss"]) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"),
                                                       "train")]
  config = os.path.join(workdir, "config.json")
  return sorted(files), losses, open(config).read() if os.path.exists(config) else None


def steps(workdir: str, split: str = "train") -> list[int]:
  return [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"), split)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 20-step run with checkpoints at 10 and 20; tests work on copies."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  run = cli("substrax-train", *MESA, f"--workdir={workdir}")
  assert run.returncode == 0, run.stderr
  return workdir


@pytest.fixture
def run_dir(trained, tmp_path):
  path = str(tmp_path / "run")
  shutil.copytree(trained, path)
  return path


def wait_for(predicate, proc, timeout=120.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    assert proc.poll() is None, proc.communicate()[1]
    time.sleep(0.05)
  proc.kill()
  raise AssertionError("timed out")


def training_started(workdir, at_least=1):
  path = os.path.join(workdir, "metrics.jsonl")
  return lambda: os.path.exists(path) and len(steps(workdir)) >= at_least


@contextlib.contextmanager
def tmpfs(path: str, kilobytes: int):
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", path],
                           capture_output=True)
  if mounted.returncode != 0:
    pytest.skip("mounting a tmpfs needs root")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", path], check=True)


def remount_read_only(path: str, proc=None):
  """Remounts read-only; while a writer holds a file open the kernel says busy, so retry."""
  deadline = time.time() + 60
  while True:
    run = subprocess.run(["mount", "-o", "remount,ro", path], capture_output=True, text=True)
    if run.returncode == 0:
      return
    busy = "busy" in run.stderr and time.time() < deadline
    assert busy and (proc is None or proc.poll() is None), run.stderr
    time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# The run directory is a contract


def test_eval_with_another_config_refuses_and_touches_nothing(run_dir):
  before = snapshot(run_dir)
  for override, key in (("--config.data.init_scale=2.0", "data.init_scale: 1.0 in the run, 2.0"),
                        ("--config.data.n_dims=4", "data.n_dims: 3 in the run, 4 now")):
    one_line(cli("substrax-eval", *MESA, override, f"--workdir={run_dir}"), 2, key)
  assert snapshot(run_dir) == before
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["10", "20"]


def test_rerun_with_another_experiment_exits_2_naming_every_key(run_dir):
  before = snapshot(run_dir)
  # Another shape (every checkpoint would be set aside before), then the same shapes.
  one_line(cli("substrax-train", *MESA, "--config.data.n_dims=4", f"--workdir={run_dir}"), 2,
           "data.n_dims: 3 in the run, 4 now")
  line = one_line(cli("substrax-train", *MESA, "--config.optim.learning_rate=0.02",
                      "--config.seed=1", f"--workdir={run_dir}"), 2,
                  "optim.learning_rate: 0.01 in the run, 0.02 now", "seed: 0 in the run, 1 now")
  assert line.startswith("config error: --config: differs from the run in")
  assert snapshot(run_dir) == before


def test_num_steps_only_grows_and_eval_reports_the_checkpoint_step(run_dir):
  before = snapshot(run_dir)
  one_line(cli("substrax-train", *MESA, "--config.num_steps=15", f"--workdir={run_dir}"), 2,
           "num_steps: 20 in the run, 15 now (it may only grow)")
  assert snapshot(run_dir) == before
  # Evaluation ignores num_steps: the JSON names the step of the model it scored.
  run = cli("substrax-eval", *MESA, "--config.num_steps=15", f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  assert json.load(open(os.path.join(run_dir, "eval", "mesa.json")))["step"] == 20
  assert snapshot(run_dir) == before


def test_resume_may_change_length_cadence_and_layout(run_dir):
  assert os.listdir(os.path.join(run_dir, "eval")) == ["mesa.json"]   # trained without plots
  run = cli("substrax-train", *MESA, "--config.num_steps=30", "--config.log_every_steps=5",
            "--config.checkpoint.keep=5", "--config.parallelism=fsdp", "--config.plots=True",
            f"--workdir={run_dir}", devices=2)
  assert run.returncode == 0, run.stderr
  assert sorted(os.listdir(os.path.join(run_dir, "eval"))) == ["mesa.json", "mesa.png"]
  assert lines(run) == [f"substrax: resuming from the checkpoint at step 20 in "
                        f"{run_dir}/checkpoints"]
  assert steps(run_dir) == list(range(1, 21)) + [25, 30]
  assert json.load(open(os.path.join(run_dir, "config.json")))["num_steps"] == 30


def test_checkpoint_directory_moves_only_with_its_checkpoints(run_dir, tmp_path):
  before = snapshot(run_dir)
  empty = str(tmp_path / "empty")
  one_line(cli("substrax-train", *MESA, "--config.num_steps=25",
               f"--config.checkpoint.directory={empty}", f"--workdir={run_dir}"), 2,
           f"checkpoint.directory: {empty} holds no checkpoint, and the run's are in "
           f"{run_dir}/checkpoints")
  assert snapshot(run_dir) == before
  moved = str(tmp_path / "moved")
  shutil.move(os.path.join(run_dir, "checkpoints"), moved)
  run = cli("substrax-train", *MESA, "--config.num_steps=25",
            f"--config.checkpoint.directory={moved}", f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  assert lines(run) == [f"substrax: resuming from the checkpoint at step 20 in {moved}"]
  assert steps(run_dir) == list(range(1, 26))


def test_checkpoint_of_another_model_is_a_config_error_not_set_aside(run_dir):
  os.remove(os.path.join(run_dir, "config.json"))   # nothing left to compare the config with
  before = snapshot(run_dir)
  one_line(cli("substrax-train", *MESA, "--config.data.n_dims=4", f"--workdir={run_dir}"), 2,
           "checkpoint at step 20", "written by another model", "params/w_kq is (6, 6) there "
           "and (8, 8) here")
  assert snapshot(run_dir) == before


def truncate_all(directory: str):
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_no_readable_checkpoint_never_restarts_the_run(run_dir):
  checkpoints = os.path.join(run_dir, "checkpoints")
  truncate_all(checkpoints)
  metrics = steps(run_dir)
  # Eval skips them and changes nothing.
  run = cli("substrax-eval", *MESA, f"--workdir={run_dir}")
  assert run.returncode == 2 and len(lines(run)) == 3, run.stderr
  assert all("is unreadable" in line for line in lines(run)[:2])
  assert "no readable checkpoint" in lines(run)[2]
  assert sorted(os.listdir(checkpoints)) == ["10", "20"]
  # The trainer sets them aside, one warning each, then refuses to start over.
  run = cli("substrax-train", *MESA, f"--workdir={run_dir}")
  assert run.returncode == 2 and len(lines(run)) == 3, run.stderr
  assert "renamed 20.unreadable" in lines(run)[0] and "renamed 10.unreadable" in lines(run)[1]
  assert "no readable checkpoint" in lines(run)[2]
  again = cli("substrax-train", *MESA, f"--workdir={run_dir}")
  one_line(again, 2, "no readable checkpoint", "10.unreadable, 20.unreadable")
  assert steps(run_dir) == metrics


def test_empty_ocdbt_manifest_is_one_warning(run_dir):
  open(os.path.join(run_dir, "checkpoints", "20", "state", "manifest.ocdbt"), "w").close()
  run = cli("substrax-train", *MESA, "--config.num_steps=25", f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  warning, resuming, dropped = lines(run)
  assert "checkpoints/20 is unreadable" in warning and "renamed 20.unreadable" in warning
  assert "resuming from the checkpoint at step 10" in resuming
  assert "dropped 11 record(s)" in dropped   # train 11-20 and eval 20
  assert steps(run_dir) == list(range(1, 26))


def test_unreadable_or_missing_config_json(run_dir):
  path = os.path.join(run_dir, "config.json")
  recorded = open(path).read()
  with open(path, "w") as f:
    f.write("{")
  before = snapshot(run_dir)
  one_line(cli("substrax-train", *MESA, f"--workdir={run_dir}"), 2, "config.json is unreadable")
  assert snapshot(run_dir) == before
  os.remove(path)
  run = cli("substrax-train", *MESA, "--config.num_steps=25", f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  assert "config.json was missing; it is written from this config" in lines(run)[1]
  assert json.load(open(path))["num_steps"] == 25
  assert json.loads(recorded)["num_steps"] == 20


def test_eval_never_creates_a_workdir(tmp_path):
  missing = str(tmp_path / "missing")
  one_line(cli("substrax-eval", *MESA, f"--workdir={missing}"), 2, "does not exist")
  assert not os.path.exists(missing)
  a_file = tmp_path / "file"
  a_file.write_text("")
  one_line(cli("substrax-eval", *MESA, f"--workdir={a_file}"), 2, "is a file")


def test_eval_without_a_checkpoint_is_one_line(run_dir):
  shutil.rmtree(os.path.join(run_dir, "checkpoints"))
  os.makedirs(os.path.join(run_dir, "checkpoints"))
  one_line(cli("substrax-eval", *MESA, f"--workdir={run_dir}"), 2, "no checkpoint in")


# ---------------------------------------------------------------------------------------------
# One writer per workdir


def test_second_trainer_exits_2_naming_the_holder(tmp_path, spawn):
  workdir = str(tmp_path / "run")
  first = spawn("substrax-train", *LONG, f"--workdir={workdir}")
  wait_for(training_started(workdir, 5), first)
  second = cli("substrax-train", *LONG, f"--workdir={workdir}")
  one_line(second, 2, "is in use by host", f"pid {first.pid}")
  first.send_signal(signal.SIGTERM)
  _, err = first.communicate(timeout=120)
  assert first.returncode == 143, err
  recorded = steps(workdir)
  assert recorded == list(range(1, len(recorded) + 1))   # every step once: no second writer
  assert not os.path.exists(os.path.join(workdir, "lock"))


def test_stale_lock_is_taken_over_with_a_warning(run_dir):
  with open(os.path.join(run_dir, "lock"), "w") as f:
    f.write("host elsewhere pid 999999 since 2026-01-01T00:00:00+00:00\n")
  run = cli("substrax-train", *MESA, "--config.num_steps=25", f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  assert "taking over the lock" in lines(run)[0] and "pid 999999" in lines(run)[0]
  assert not os.path.exists(os.path.join(run_dir, "lock"))


# ---------------------------------------------------------------------------------------------
# Signals


def test_sigint_saves_and_exits_130_and_a_second_sigint_stops_at_once(tmp_path, spawn):
  workdir = str(tmp_path / "run")
  proc = spawn("substrax-train", *LONG, f"--workdir={workdir}")
  wait_for(training_started(workdir, 5), proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  heard, stopped = err.strip().splitlines()
  assert heard == ("substrax: SIGINT: saving this step, then stopping (SIGINT again stops at "
                   "once, without saving)")
  assert stopped.startswith("SIGINT: saved a checkpoint at step ")
  saved = int(stopped.split("at step ")[1].split(";")[0])
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(saved)]
  assert steps(workdir)[-1] == saved

  # Steps of about a second: once the first SIGINT is heard, the second comes while the
  # trainer waits for the step it would save.
  workdir = str(tmp_path / "slow")
  proc = spawn("substrax-train", *LONG, "--config.batch_size=131072", f"--workdir={workdir}")
  wait_for(training_started(workdir, 2), proc)
  proc.send_signal(signal.SIGINT)
  assert proc.stderr.readline().startswith("substrax: SIGINT: saving this step")
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert err.strip() == ("SIGINT: stopped at once, without saving; a rerun resumes from the "
                         "newest checkpoint")
  assert os.listdir(os.path.join(workdir, "checkpoints")) == []


def test_signals_before_the_first_step_are_one_line(tmp_path, spawn):
  workdir = str(tmp_path / "run")
  proc = spawn("substrax-train", *LONG, f"--workdir={workdir}")
  # The lock is taken (its file names the holder) before the task is built and compiled.
  lock = os.path.join(workdir, "lock")
  wait_for(lambda: os.path.exists(lock) and os.path.getsize(lock) > 0, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  # A signal that Python dropped (raised in a GC callback) is delivered again; if training has
  # begun by then, the loop saves the step first, with its notice line.
  out = lines_of(err)
  assert out == ["SIGTERM: stopped outside a training step; nothing unsaved was lost, "
                 "rerun the same command to continue"] or (
      len(out) == 2 and out[0].startswith("substrax: SIGTERM: saving this step")
      and out[1].startswith("SIGTERM: saved a checkpoint at step")), err
  assert not os.path.exists(lock)


# ---------------------------------------------------------------------------------------------
# Storage


def test_unwritable_checkpoint_directory_is_found_before_compiling(tmp_path):
  with tmpfs(str(tmp_path / "ro"), 1024) as mount:
    remount_read_only(mount)
    start = time.time()
    run = cli("substrax-train", *MESA, f"--workdir={tmp_path / 'run'}",
              f"--config.checkpoint.directory={mount}/ck", timeout=60)
    one_line(run, 2, "checkpoint.directory", "not writable (Read-only file system)")
    assert time.time() - start < 30
    run = cli("substrax-train", *MESA, f"--workdir={mount}/run", timeout=60)
    one_line(run, 2, "--workdir", "not writable (Read-only file system)")


def test_full_disk_during_a_save_stops_with_74_and_keeps_earlier_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  # One checkpoint of the tiny mesa model takes about 40 KB; the second does not fit.
  with tmpfs(str(tmp_path / "small"), 76) as mount:
    args = [*MESA, f"--workdir={workdir}", f"--config.checkpoint.directory={mount}/ck"]
    run = cli(*["substrax-train", *args], timeout=120)
    line = one_line(run, 74, "storage error", "No space left on device", "at steps [10]")
    assert "saving a checkpoint" in line
    assert [s for s in os.listdir(f"{mount}/ck") if s.isdigit()] == ["10"]
    evaluated = cli("substrax-eval", *args)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.load(open(os.path.join(workdir, "eval", "mesa.json")))["step"] == 10


def test_directory_made_read_only_mid_run_stops_with_74(tmp_path, spawn):
  workdir = str(tmp_path / "run")
  with tmpfs(str(tmp_path / "ck"), 4096) as mount:
    proc = spawn("substrax-train", *LONG, "--config.checkpoint.every_steps=20",
                 f"--workdir={workdir}", f"--config.checkpoint.directory={mount}")
    wait_for(lambda: os.path.isdir(f"{mount}/20"), proc)
    remount_read_only(mount, proc)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 74, err
    assert err.strip().splitlines() == [err.strip()] and "Read-only file system" in err
    assert "20" in os.listdir(mount)


def test_full_disk_during_the_evaluation_plot_is_one_line(tmp_path):
  workdir = tmp_path / "run"
  # The JSON fits, the PNG does not.
  with tmpfs(str(workdir / "eval"), 8):
    run = cli("substrax-train", *MESA, "--config.plots=True", f"--workdir={workdir}")
    one_line(run, 74, "writing the evaluation of step 20 failed", "No space left on device")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]


# ---------------------------------------------------------------------------------------------
# Non-finite values


def test_non_finite_hyperparameters_are_rejected(tmp_path):
  one_line(cli("substrax-train", *MESA, "--config.optim.learning_rate=inf",
               f"--workdir={tmp_path}"), 2, "optim.learning_rate: must be finite, got inf")


def test_a_checkpoint_called_good_is_finite(tmp_path):
  workdir = str(tmp_path / "run")
  # The learning rate warms up towards 1e30: the parameters overflow within a few steps,
  # while the loss of the step that overflowed them is still finite.
  run = cli("substrax-train", *MESA, "--config.optim.learning_rate=1e30",
            "--config.checkpoint.every_steps=1", f"--workdir={workdir}")
  line = one_line(run, 1, "param_norm is inf", "The last good checkpoint is step")
  good = int(line.split("checkpoint is step ")[1].rstrip("."))
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))[-1] == good
  evaluated = cli("substrax-eval", *MESA, "--config.optim.learning_rate=1e30",
                  "--config.checkpoint.every_steps=1", f"--workdir={workdir}")
  assert evaluated.returncode == 0, evaluated.stderr
  report = json.load(open(os.path.join(workdir, "eval", "mesa.json")))
  assert report["step"] == good and all(
      v == v for v in report["weights_cosine_with_gd_construction"].values())


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def test_partial_last_metrics_line_is_dropped_on_resume(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 21, "split": "tra')
  run = cli("substrax-train", *MESA, "--config.num_steps=25", f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  assert "dropped 1 unreadable line" in run.stderr and len(lines(run)) == 2
  assert steps(run_dir) == list(range(1, 26))


def test_records_past_the_checkpoint_are_removed_on_resume(run_dir):
  shutil.rmtree(os.path.join(run_dir, "checkpoints", "20"))   # as if killed before that save
  run = cli("substrax-train", *MESA, f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  assert "record(s)" in run.stderr and "after step 10" in run.stderr
  assert steps(run_dir) == list(range(1, 21))
  assert steps(run_dir, "eval") == [10, 20]


def test_missing_metrics_file_is_recreated_and_the_gap_reported(run_dir):
  os.remove(os.path.join(run_dir, "metrics.jsonl"))
  run = cli("substrax-train", *MESA, "--config.num_steps=25", f"--workdir={run_dir}")
  assert run.returncode == 0, run.stderr
  assert "records of steps 1-20 are lost" in run.stderr
  assert steps(run_dir) == list(range(21, 26))


def test_metrics_file_deleted_mid_run_is_recreated(tmp_path, spawn):
  workdir = str(tmp_path / "run")
  proc = spawn("substrax-train", *LONG, f"--workdir={workdir}")
  wait_for(training_started(workdir, 5), proc)
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  wait_for(training_started(workdir, 2), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  deleted, heard, stopped = err.strip().splitlines()
  assert "deleted or replaced during the run" in deleted
  assert heard.startswith("substrax: SIGTERM: saving this step")
  assert stopped.startswith("SIGTERM: saved a checkpoint")
  recorded = steps(workdir)
  assert recorded == list(range(recorded[0], recorded[0] + len(recorded)))


# ---------------------------------------------------------------------------------------------
# One line for every bad input


BAD_INPUTS = [
    (["substrax-train", "--config=missing.py"], "no file 'missing.py'"),
    (["substrax-eval", "--config=missing.py"], "no file 'missing.py'"),
    (["substrax-inspect", "--config=missing.py"], "no file 'missing.py'"),
    (["substrax-train", "--config="], "--config: is empty"),
    (["substrax-train", "--config=icl_linear:tiny", "--config.model.widht=3"],
     "unknown key model.widht (did you mean model.width?)"),
    (["substrax-train", "--config=icl_linear:tiny", "--config.mesh_shape=abc"], "mesh_shape"),
    (["substrax-train", "--config=fluid_mmnist:tiny", "--config.model.fluid.dt_clip=(0.1,)"],
     "model.fluid.dt_clip"),
    (["substrax-train", "--config=lra_pathfinder:tiny", "--config.data.image_size=4"],
     "data.image_size"),
    (["substrax-train", "--config=lra_listops:tiny", "--config.data.max_length=2"],
     "data.max_length"),
    (["substrax-train", "--config=icl_linear:tiny", "--bogus=1"], "Unknown command line flag"),
    (["substrax-train"], "--config: is required"),
]


@pytest.mark.parametrize("args,fragment", BAD_INPUTS, ids=lambda x: " ".join(x)
                         if isinstance(x, list) else None)
def test_bad_input_is_one_line_and_exit_2(args, fragment, tmp_path):
  name, *rest = args
  one_line(cli(name, *rest, f"--workdir={tmp_path / 'run'}"), 2, fragment)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_verbose_adds_the_traceback(tmp_path):
  run = cli("substrax-train", *MESA, "--config.optim.learning_rate=inf", "--verbose",
            f"--workdir={tmp_path}")
  assert run.returncode == 2 and "Traceback (most recent call last)" in run.stderr, run.stderr
  assert lines(run)[-1] == "config error: optim.learning_rate: must be finite, got inf"


def test_paths_that_are_files_are_one_line(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("")
  one_line(cli("substrax-train", *MESA, f"--workdir={tmp_path / 'run'}",
               f"--config.checkpoint.directory={a_file}"), 2, "checkpoint.directory", "is a file")
  one_line(cli("substrax-train", *MESA, f"--workdir={a_file}"), 2, "--workdir", "is a file")
  one_line(cli("substrax-inspect", "--config=lra_listops:tiny",
               f"--config.data.cache_dir={a_file}"), 2, "data.cache_dir")


def test_truncated_cache_is_rebuilt_with_one_warning(tmp_path):
  cache = str(tmp_path / "cache")
  args = ["--config=lra_listops:tiny", f"--config.data.cache_dir={cache}", "--json"]
  first = cli("substrax-inspect", *args)
  assert first.returncode == 0, first.stderr
  [train] = [f for f in os.listdir(cache) if f.endswith("_train.npz")]
  with open(os.path.join(cache, train), "r+b") as f:
    f.truncate(100)
  again = cli("substrax-inspect", *args)
  assert again.returncode == 0, again.stderr
  warning, generated = lines(again)
  assert warning == (f"substrax: warning: the cache file {cache}/{train} is unreadable "
                     "(BadZipFile: File is not a zip file); it is rebuilt")
  assert generated.startswith("listops: generated 384 examples")
  untimed = lambda run: {k: v for k, v in json.loads(run.stdout).items()
                         if k not in ("setup_s", "lower_s", "compile_s")}   # wall seconds
  assert untimed(again) == untimed(first)


def test_half_built_tfds_directory_is_one_line(tfds_dir, tmp_path):
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(tfds_dir, data_dir)
  version = os.path.join(data_dir, "cifar10", "3.0.2")
  os.remove(next(os.path.join(version, f) for f in os.listdir(version)
                 if f.startswith("cifar10-train.array_record")))
  one_line(cli("substrax-inspect", "--config=lra_image:tiny", "--config.data.name=cifar10",
               f"--config.data.data_dir={data_dir}"), 2,
           "data error: TFDS dataset 'cifar10'", data_dir, "its files cannot be read")


def test_a_stop_dropped_in_a_gc_callback_is_delivered_again():
  """Python drops an exception raised while a __del__ or GC callback runs (JAX has one); the
  stop must still arrive, at whichever handler is installed by then."""
  script = """
import os, signal, sys, time
from substrax.train import errors
dropped = []
sys.unraisablehook = lambda a: dropped.append(type(a.exc_value).__name__)
signal.signal(signal.SIGTERM, lambda s, f: errors.stop(s, "first"))

class Collected:
  def __del__(self):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):   # the handler runs here, inside __del__
      pass

Collected()
signal.signal(signal.SIGTERM, lambda s, f: errors.stop(s, "second handler"))
try:
  time.sleep(5)
  print("lost")
except errors.Stopped as e:
  errors.caught()
  print(dropped, e)
"""
  run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
  assert run.stdout.strip() == "['Stopped'] second handler", run.stdout + run.stderr
