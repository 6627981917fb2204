"""Changing a trained model: read a run's newest checkpoint, write a new run from a state.

MatFormer extraction (train/matformer.py) and the compression study start from
`trainer.load_run`; extraction ends with `write`, so what it produces is an ordinary run
directory: `substrax-eval` scores it, `substrax-train` resumes it.
"""
import os

import jax

from substrax.train import checkpointing, validation, workdir as workdir_lib


def check_new(workdir: str):
  """`workdir` holds no run: no config.json and no checkpoint (a crashed write leaves one)."""
  validation.require(bool(workdir), "--out", "is required")
  taken = (os.path.exists(os.path.join(workdir, workdir_lib.CONFIG))
           or checkpointing.complete_steps(os.path.join(workdir, "checkpoints")))
  validation.require(not taken, "--out", f"{workdir} already holds a run; choose a new "
                     "directory")


def write(config, state, workdir: str, step: int):
  """A new run directory holding `state` as its checkpoint at `step` and `config` as its
  config.json (written last, so a directory with one is complete). Every process saves its
  shards; process 0 writes config.json."""
  check_new(workdir)
  checkpoint_dir = checkpointing.directory(config, workdir)
  workdir_lib.check_for_training(workdir, checkpoint_dir)
  manager = checkpointing.make_manager(checkpoint_dir, config.checkpoint.keep)
  try:
    checkpointing.save(manager, step, state)
    checkpointing.wait(manager)
  finally:
    manager.close()
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
