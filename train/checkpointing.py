"""Orbax checkpoints of the train state: async saves, the newest K kept, sharded restores."""
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  # The trainer decides when to save (after checking the step's metrics), so every save is
  # forced; the manager only keeps the newest `keep` and writes asynchronously.
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
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


def abstract_with_shardings(shapes, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
