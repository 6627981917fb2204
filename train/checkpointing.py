"""Orbax checkpoints of the train state: async saves, the newest K kept, sharded restores.

A save that never finished (the process was killed mid-write) leaves a `<step>.orbax-checkpoint-
tmp` directory that Orbax never lists as a step; `make_manager` reports and removes it. A listed
checkpoint that fails to restore (truncated or corrupted files) is renamed `<step>.unreadable`
by `restore_newest`, which then tries the next older one.
"""
import os
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy

TMP_SUFFIX = ".orbax-checkpoint-tmp"


def status(message: str):
  """One `substrax: ...` line on stderr from process 0 (library logs stay at WARNING)."""
  if jax.process_index() == 0:
    print(f"substrax: {message}", file=sys.stderr, flush=True)


def directory(config, workdir: str) -> str:
  """config.checkpoint.directory (any path Orbax can write: local, gs://...) or WORKDIR/checkpoints."""
  return config.checkpoint.directory or os.path.abspath(os.path.join(workdir, "checkpoints"))


def make_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  # The trainer decides when to save (after checking the step's metrics), so every save is
  # forced; the manager only keeps the newest `keep` and writes asynchronously.
  path = epath.Path(directory)
  if path.is_dir():
    for entry in sorted(path.iterdir()):
      if TMP_SUFFIX in entry.name:
        status(f"warning: ignoring the incomplete checkpoint {entry} "
               "(its save never finished); it is removed")
  return ocp.CheckpointManager(
      path,
      options=ocp.CheckpointManagerOptions(
          preservation_policy=preservation_policy.LatestN(keep),
          enable_async_checkpointing=True,
          cleanup_tmp_directories=True),
      item_names=("state",))


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores onto the shardings carried by `abstract_state` (any mesh, any device count)."""
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"]


def restore_newest(manager: ocp.CheckpointManager, abstract_state):
  """(state, step) from the newest readable checkpoint, or (None, None) if there is none.

  An unreadable one is set aside with a warning, never deleted, and the next older one is tried.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, step, abstract_state), step
    except Exception as e:  # noqa: BLE001 - any failure to read means: not usable
      path = manager.directory / str(step)
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      target, n = path.with_name(f"{step}.unreadable"), 1
      while target.exists():
        target, n = path.with_name(f"{step}.unreadable{n}"), n + 1
      status(f"warning: the checkpoint {path} is unreadable ({type(e).__name__}: {reason}); "
             f"it is renamed {target.name} and an older one is tried")
      if jax.process_index() == 0:
        path.rename(target)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"substrax: set aside checkpoint {step}")
      manager.reload()
  return None, None


def abstract_with_shardings(shapes, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
