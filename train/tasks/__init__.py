"""Tasks: what the generic trainer trains. A config's `task` field selects one.

A task module provides `validate(config)` (raises ConfigError) and `build(config) -> Task`.
"""
import dataclasses
import importlib
from typing import Any, Callable

import flax.linen as nn

from substrax.train.errors import ConfigError

REGISTRY = {"icl": "substrax.train.tasks.icl", "lra": "substrax.train.tasks.lra",
            "lm": "substrax.train.tasks.lm", "positions": "substrax.train.tasks.positions",
            "video": "substrax.train.tasks.video", "mesa": "substrax.train.tasks.mesa",
            "programs": "substrax.train.tasks.programs",
            "bandit": "substrax.train.tasks.bandit"}


@dataclasses.dataclass(frozen=True)
class Task:
  """What a task gives the trainer. Data enters the jitted functions only as arguments:
  `train_data` and `eval_data` are pytrees of arrays (numpy or jax, {} when the data is drawn
  procedurally) that the trainer places on the mesh once and passes to every call, so the
  compiled step never embeds a dataset as a constant."""
  model: nn.Module
  init_inputs: tuple           # example inputs for model.init (shapes matter, values do not)
  train_data: Any              # arrays sample_batch draws from
  sample_batch: Callable       # (train_data, key, step) -> global batch, jittable
  batch_axes: Any              # logical axis names per batch leaf, e.g. ("batch", None, None)
  # model_state: the model's non-param collections ({} for most models), kept in TrainState.
  loss_fn: Callable            # (params, model_state, batch, step) -> (loss, (aux, model_state))
  eval_data: Any               # the fixed held-out arrays eval_step scores
  eval_step: Callable          # (params, model_state, eval_data, step) -> held-out metrics
  evaluate: Callable           # (params, model_state, workdir, step) -> summary; writes
                               # eval/*.json and *.png


def get(name: str):
  if name not in REGISTRY:
    raise ConfigError(f"task: unknown task {name!r}; known tasks are {sorted(REGISTRY)}")
  return importlib.import_module(REGISTRY[name])
