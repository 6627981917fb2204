"""Orbax checkpoints of the train state: async saves, the newest K kept, sharded restores.

A save that never finished (the process was killed mid-write) leaves a `<step>.orbax-checkpoint-
tmp` directory that Orbax never lists as a step; the trainer's manager reports and removes it.
A listed checkpoint that fails to read (truncated or corrupted files) is renamed
`<step>.unreadable` by the trainer, which then tries the next older one; `substrax-eval` opens
the directory read-only and only skips it. A checkpoint whose shapes differ from the config's
model is not unreadable: it belongs to another experiment, and that is a config error.
"""
import os
import re
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy

from substrax.models import transformer
from substrax.train.errors import ConfigError, StorageError, reason

TMP_SUFFIX = ".orbax-checkpoint-tmp"
UNREADABLE = ".unreadable"


def status(message: str):
  """One `substrax: ...` line on stderr from process 0 (library logs are silenced)."""
  if jax.process_index() == 0:
    print(f"substrax: {message}", file=sys.stderr, flush=True)


def directory(config, workdir: str) -> str:
  """config.checkpoint.directory (any path Orbax can write: local, gs://...) or
  WORKDIR/checkpoints; local paths made absolute."""
  path = config.checkpoint.directory or os.path.join(workdir, "checkpoints")
  return path if "://" in path else os.path.abspath(path)


def make_manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """The trainer's manager, or with `read_only` one that never writes, renames or deletes."""
  # The trainer decides when to save (after checking the step's metrics), so every save is
  # forced; the manager only keeps the newest `keep` and writes asynchronously.
  path = epath.Path(directory)
  if not read_only and path.is_dir():
    for entry in sorted(path.iterdir()):
      if TMP_SUFFIX in entry.name:
        status(f"warning: ignoring the incomplete checkpoint {entry} "
               "(its save never finished); it is removed")
  return ocp.CheckpointManager(
      path,
      options=ocp.CheckpointManagerOptions(
          preservation_policy=preservation_policy.LatestN(keep),
          enable_async_checkpointing=True, read_only=read_only, create=not read_only,
          cleanup_tmp_directories=not read_only),
      item_handlers={"state": ocp.StandardCheckpointHandler()})


def complete_steps(directory) -> list[int]:
  """Steps whose save finished, read from the directory itself (Orbax renames a checkpoint to
  its bare step number only once every file of it is written)."""
  path = epath.Path(directory)
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def _save_failed(manager, e: Exception) -> StorageError:
  return StorageError(
      f"saving a checkpoint in {manager.directory} failed ({reason(e)}); the checkpoints there "
      f"at steps {complete_steps(manager.directory) or 'none'} are intact")


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts an async save. An earlier async save that failed raises here, as StorageError."""
  try:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  except Exception as e:  # noqa: BLE001 - Orbax reports I/O failures as many exception types
    raise _save_failed(manager, e) from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the last async save; its failure raises as StorageError."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise _save_failed(manager, e) from e


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores onto the shardings carried by `abstract_state` (any mesh, any device count)."""
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


def _path_key(path) -> str:
  return "/".join(str(next((getattr(k, a) for a in ("key", "idx", "name") if hasattr(k, a)), k))
                  for k in path)


def _shapes(tree) -> dict:
  return {_path_key(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# How a backbone stores its layers (models/transformer.py): model.scan stacks them in one
# 'blocks' tree with a leading layer axis; otherwise each is its own block_<i>.
LAYOUTS = {"stacked": "stacks the layers in one scanned 'blocks' tree",
           "unrolled": "stores the layers unrolled as block_0, block_1, ..."}


def layer_layout(paths) -> str | None:
  """'stacked', 'unrolled' or None (no transformer layers) for a state's parameter paths."""
  names = {name for path in paths for name in path.split("/")}
  if names & set(transformer.STACKS):
    return "stacked"
  if any(re.fullmatch(r"(temporal_)?block_\d+", name) for name in names):
    return "unrolled"
  return None


def mismatch(metadata, abstract_state) -> str:
  """How a checkpoint's arrays differ from the state the config builds ('' if they fit)."""
  saved, wanted = _shapes(metadata), _shapes(abstract_state)
  there, here = layer_layout(saved), layer_layout(wanted)
  if there and here and there != here:   # every layer's path differs: say why, once
    return (f"it {LAYOUTS[there]}; this config's model {LAYOUTS[here]} (its scan setting "
            "differs from the run's)")
  diffs = [f"{k} is {saved[k]} there and {wanted[k]} here" for k in wanted
           if k in saved and saved[k] != wanted[k]]
  diffs += [f"{k} is missing there" for k in wanted if k not in saved]
  diffs += [f"{k} is not in this model" for k in saved if k not in wanted]
  more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
  return "; ".join(diffs[:3]) + more


def restore_newest(manager: ocp.CheckpointManager, abstract_state, set_aside: bool):
  """(state, step) from the newest readable checkpoint, or (None, None) if there is none.

  An unreadable checkpoint is skipped with a warning (and renamed `<step>.unreadable` if
  `set_aside`), never deleted. Raises ConfigError if a checkpoint has other shapes than the
  config's model, or if checkpoints exist but none can be read: a run is never silently
  restarted from step 0.
  """
  path = epath.Path(manager.directory)
  skipped = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      metadata = manager.item_metadata(step)["state"]
      if metadata is None:
        raise ValueError("no metadata")
    except Exception as e:  # noqa: BLE001 - any failure to read means: not usable
      failure = e
    else:
      problem = mismatch(metadata, abstract_state)
      if problem:
        raise ConfigError(f"checkpoint.directory: the checkpoint at step {step} in {path} was "
                          f"written by another model: {problem}")
      try:
        return restore(manager, step, abstract_state), step
      except Exception as e:  # noqa: BLE001
        failure = e
    if not _unreadable(manager, path / str(step), failure, set_aside):
      skipped.append(str(step))
  aside = sorted(p.name for p in path.iterdir() if UNREADABLE in p.name) if path.is_dir() else []
  if skipped or aside:
    raise ConfigError(f"checkpoint.directory: no readable checkpoint in {path} (unreadable: "
                      f"{', '.join(skipped + aside)}); to start over, use another --workdir")
  return None, None


# Failures of the machine or the storage, not of a checkpoint's contents: the checkpoint is
# left as it is and the run stops (exit 74) instead of setting a good checkpoint aside.
NOT_THE_CHECKPOINT = ("RESOURCE_EXHAUSTED", "Out of memory", "PERMISSION_DENIED", "UNAVAILABLE",
                      "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "Permission denied")


def _unreadable(manager, path: epath.Path, e: Exception, set_aside: bool) -> bool:
  """Warns, and renames the checkpoint if `set_aside`; returns whether it was renamed."""
  if isinstance(e, PermissionError) or any(s in str(e) for s in NOT_THE_CHECKPOINT):
    raise StorageError(f"reading the checkpoint {path} failed ({reason(e)}); it is left as it "
                       "is") from e
  if not set_aside:
    status(f"warning: the checkpoint {path} is unreadable ({reason(e)}); an older one is tried")
    return False
  target, n = path.with_name(path.name + UNREADABLE), 1
  while target.exists():
    target, n = path.with_name(f"{path.name}{UNREADABLE}{n}"), n + 1
  status(f"warning: the checkpoint {path} is unreadable ({reason(e)}); it is renamed "
         f"{target.name} and an older one is tried")
  if jax.process_index() == 0:
    path.rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"substrax: set aside checkpoint {path.name}")
  manager.reload()
  return True


def abstract_with_shardings(shapes, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
