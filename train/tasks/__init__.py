"""Tasks: what the generic trainer trains. A config's `task` field selects one.

A task module provides `validate(config)` (raises ConfigError) and `build(config) -> Task`.
"""
import dataclasses
import importlib
from typing import Any, Callable

import flax.linen as nn

from substrax.train.validation import ConfigError

REGISTRY = {"icl": "substrax.train.tasks.icl", "lra": "substrax.train.tasks.lra",
            "video": "substrax.train.tasks.video", "mesa": "substrax.train.tasks.mesa"}


@dataclasses.dataclass(frozen=True)
class Task:
  model: nn.Module
  init_inputs: tuple           # example inputs for model.init (shapes matter, values do not)
  sample_batch: Callable       # (key, step) -> global batch, jittable
  batch_axes: Any              # logical axis names per batch leaf, e.g. ("batch", None, None)
  # model_state: the model's non-param collections ({} for most models), kept in TrainState.
  loss_fn: Callable            # (params, model_state, batch, step) -> (loss, (aux, model_state))
  eval_step: Callable          # (params, model_state, step) -> metrics on a fixed held-out batch
  evaluate: Callable           # (params, model_state, workdir, step) -> summary; writes
                               # eval/*.json and *.png


def get(name: str):
  if name not in REGISTRY:
    raise ConfigError(f"task: unknown task {name!r}; known tasks are {sorted(REGISTRY)}")
  return importlib.import_module(REGISTRY[name])
