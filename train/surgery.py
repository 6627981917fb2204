"""Changing a trained model: read a run's newest checkpoint, write a new run from a state.

MatFormer extraction, EMoE conversion and post-training compression start from
`trainer.load_run`; those that make a model the ordinary configs run end with `write`, so what
they produce is an ordinary run directory: `substrax-eval` scores it, `substrax-train` resumes
it.
"""
import os

from substrax.train import checkpointing, validation, workdir as workdir_lib


def write(config, state, workdir: str, step: int):
  """A new run directory holding `state` as its checkpoint at `step` and `config` as its
  config.json. `workdir` must not hold a run already."""
  validation.require(not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG)), "--out",
                     f"{workdir} already holds a run; choose a new directory")
  checkpoint_dir = checkpointing.directory(config, workdir)
  workdir_lib.check_for_training(workdir, checkpoint_dir)
  manager = checkpointing.make_manager(checkpoint_dir, config.checkpoint.keep)
  try:
    checkpointing.save(manager, step, state)
    checkpointing.wait(manager)
  finally:
    manager.close()
  workdir_lib.write_config(workdir, config)
