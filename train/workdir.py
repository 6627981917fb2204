"""The run directory as a contract: one experiment per directory, one trainer at a time.

WORKDIR/config.json records the experiment. A rerun, or `substrax-eval`, whose config differs
from it in anything but RESUMABLE exits 2 and names every differing key; WORKDIR/lock names the
trainer that holds the directory. Everything here runs before anything is compiled.
"""
import datetime
import errno
import fcntl
import json
import os
import socket

from etils import epath

from substrax.train.errors import ConfigError, StorageError, reason

CONFIG = "config.json"
LOCK = "lock"

# What a rerun may change: how long it trains (num_steps, upward only), how often it logs,
# evaluates and saves, what evaluation measures and whether it draws figures, where its checkpoints and data live (a new
# checkpoint.directory must hold the moved checkpoints), on how many devices it runs, and what
# the backward pass recomputes (remat: the same parameters and function).
# Anything else (task, data, model, loss, optimizer, seed) is another experiment.
RESUMABLE = ("num_steps", "log_every_steps", "eval_every_steps", "progress_bar", "plots", "eval",
             "checkpoint.every_steps", "checkpoint.keep", "checkpoint.directory",
             "data.cache_dir", "data.data_dir",
             "parallelism", "mesh_shape", "logical_axis_rules", "distributed",
             "model.remat", "model.transformer.remat")


def _probe_write(path: epath.Path, what: str):
  """Creates `path` if needed and writes a file there, or raises ConfigError naming it."""
  try:
    if path.exists() and not path.is_dir():
      raise ConfigError(f"{what}: {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"{what}: {path} is not writable ({reason(e)})") from None


def check_for_training(workdir: str, checkpoint_dir: str):
  """The workdir and checkpoint directory exist (created if needed) and are writable."""
  if not workdir:
    raise ConfigError("--workdir: is required")
  _probe_write(epath.Path(workdir), "--workdir")
  _probe_write(epath.Path(checkpoint_dir), "checkpoint.directory")


def check_for_eval(workdir: str, checkpoint_dir: str):
  """An existing run directory: eval reads its checkpoints and writes only WORKDIR/eval/."""
  if not workdir:
    raise ConfigError("--workdir: is required")
  path = epath.Path(workdir)
  if not path.exists():
    raise ConfigError(f"--workdir: {workdir} does not exist")
  if not path.is_dir():
    raise ConfigError(f"--workdir: {workdir} is a file, not a run directory")
  if not (path / CONFIG).exists():
    raise ConfigError(f"--workdir: {workdir} has no {CONFIG}; it is not a substrax run")
  if not epath.Path(checkpoint_dir).is_dir():
    raise ConfigError(f"--workdir: no checkpoint directory {checkpoint_dir}")
  _probe_write(path / "eval", "--workdir")


# ---------------------------------------------------------------------------------------------
# config.json


def as_json(config) -> dict:
  """The config as config.json stores it (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    key = f"{prefix}.{k}" if prefix else k
    if isinstance(v, dict) and v:
      out.update(_flatten(v, key))
    else:
      out[key] = v
  return out


_ABSENT = object()

# Fields added after runs were recorded, with the value that computes what such a run did: a run
# whose config.json lacks one is the same experiment as a config holding that value.
ADDED = {"model.mlp.granularities": [], "model.mlp.hidden": [], "model.mlp.experts": 0,
         "model.mlp.top_k": 0, "model.scan": False, "model.remat": "none",
         "model.transformer.scan": False, "model.transformer.remat": "none"}

# Keys whose change also changes how the checkpoints store the parameters, said with the line.
LAYOUT = {"model.scan": "the checkpoints store one stacked 'blocks' tree under scan and "
                        "block_0, block_1, ... without",
          "model.transformer.scan": "the checkpoints store stacked 'blocks' and "
                                    "'temporal_blocks' under scan and block_i without"}


def _resumable(key: str) -> bool:
  return any(key == r or key.startswith(r + ".") for r in RESUMABLE)


def differences(recorded: dict, config: dict, training: bool) -> list[str]:
  """'key: <run> in the run, <now> now' for each field that makes another experiment; when
  `training`, num_steps may not shrink either (evaluation ignores it)."""
  old, new = _flatten(recorded), _flatten(config)
  old = {**{k: v for k, v in ADDED.items() if k in new}, **old}
  out = []
  shown = lambda tree, key: json.dumps(tree[key]) if key in tree else "(absent)"
  for key in sorted(set(old) | set(new)):
    if old.get(key, _ABSENT) != new.get(key, _ABSENT) and not _resumable(key):
      out.append(f"{key}: {shown(old, key)} in the run, {shown(new, key)} now" +
                 (f" ({LAYOUT[key]})" if key in LAYOUT else ""))
  if training and isinstance(old.get("num_steps"), int) and new["num_steps"] < old["num_steps"]:
    out.append(f"num_steps: {old['num_steps']} in the run, {new['num_steps']} now "
               "(it may only grow)")
  return out


def read_config(workdir: str) -> dict | None:
  """WORKDIR/config.json, or None if the directory holds no run yet."""
  path = os.path.join(workdir, CONFIG)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ConfigError(f"--workdir: {path} is unreadable ({reason(e)}); restore it or use "
                      "another --workdir") from None


def check_config(workdir: str, config, training: bool) -> dict | None:
  """Raises ConfigError if `config` is another experiment than the run in `workdir`; returns
  the recorded config (None for a new run)."""
  recorded = read_config(workdir)
  if recorded is not None:
    diff = differences(recorded, as_json(config), training)
    if diff:
      raise ConfigError(
          f"--config: differs from the run in {workdir} ({CONFIG}) in {'; '.join(diff)}. "
          "Use another --workdir for another experiment")
  return recorded


def write_config(workdir: str, config):
  """Writes config.json atomically (a crash leaves the old file or the new one, whole)."""
  path = os.path.join(workdir, CONFIG)
  try:
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(path + ".tmp", path)
  except OSError as e:
    raise StorageError(f"cannot write {path} ({reason(e)})") from None


# ---------------------------------------------------------------------------------------------
# The lock


class Lock:
  """WORKDIR/lock, held by the one trainer writing the directory.

  An flock on the file does the locking, so the kernel releases it when its holder dies however
  it dies; the file's text (host, PID, start time) is only for the messages. A lock file whose
  flock is free was left by a dead trainer and is taken over with a warning.
  """

  def __init__(self, workdir: str, warn):
    self.path = os.path.join(workdir, LOCK)
    self.warn = warn
    self.fd = None

  def __enter__(self):
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
          raise ConfigError(f"--workdir: cannot lock {self.path} ({reason(e)})") from None
        raise ConfigError(f"--workdir: {os.path.dirname(self.path)} is in use by {holder}; "
                          "wait for that run or stop it") from None
      # The holder may have removed the file between our open and flock: lock the new one.
      try:
        if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)
    stale = os.read(fd, 4096).decode(errors="replace").strip()
    if stale:
      self.warn(f"warning: taking over the lock {self.path} of {stale}, which is no longer "
                "running")
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since {now}\n".encode(), 0)
    self.fd = fd
    return self

  def __exit__(self, *exc):
    try:
      if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:   # ours, not a successor's
        os.unlink(self.path)
    except OSError:
      pass
    os.close(self.fd)   # releases the flock
