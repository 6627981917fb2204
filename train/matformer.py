"""MatFormer (Devvrit et al. 2023) on any backbone task: the nested objective, the granularity
choices, and extraction of a submodel as a plain dense run.

`model.mlp.granularities`, e.g. (8, 4, 2, 1), names the factors whose hidden widths d_ff/8 ...
d_ff every MLP nests (models/transformer.MLP runs a prefix of its units). Training sums the
task's loss at every granularity, every layer at the same factor, and takes one optimizer step
on the sum (the official code's loop over factors, its gradients accumulated). Any per-layer
choice of factors (Mix'n'Match) runs the same parameters without retraining, and `extract`
writes one as a dense model that the ordinary config runs with `model.mlp.hidden` set.
"""
import itertools

import jax
import ml_collections
import numpy as np

from substrax.models.transformer import block_config, granularity_units, residual_width
from substrax.train import surgery, trainer, validation


def factors(m) -> tuple[int, ...]:
  """The factors training sums over: model.mlp.granularities, or (1,) for a dense model."""
  mlp = m.get("mlp")
  return tuple(mlp.granularities) if mlp is not None and mlp.granularities else (1,)


def units(m, choice) -> tuple[int, ...] | None:
  """Each layer's MLP units under a per-layer choice of factors; None for the full model."""
  if all(f == 1 for f in choice):
    return None
  return granularity_units(block_config(m), m.width, m.depth, choice)


def uniform(m, factor: int) -> tuple[int, ...]:
  return (factor,) * m.depth


def uniform_units(m) -> dict:
  """{factor: each layer's units with every layer at that factor} for the trained factors;
  {1: None} for a dense model."""
  return {f: units(m, uniform(m, f)) for f in factors(m)}


def mix_and_match(m) -> list[tuple[int, ...]]:
  """Every per-layer choice of the trained factors: len(factors) ** depth of them."""
  return list(itertools.product(factors(m), repeat=m.depth))


def summed_loss(loss_at, by_factor: dict):
  """The trainer's loss_fn from `loss_at(params, model_state, batch, step, units) -> (loss,
  (aux, model_state))`: the sum over `by_factor` ({factor: units}, `uniform_units`), each
  granularity's loss logged as loss_g<factor>."""
  if list(by_factor) == [1]:
    return lambda params, model_state, batch, step: loss_at(params, model_state, batch, step,
                                                            by_factor[1])

  def loss_fn(params, model_state, batch, step):
    total, logged = 0.0, {}
    for f, us in by_factor.items():
      loss, (aux, model_state) = loss_at(params, model_state, batch, step, us)
      total, logged[f"loss_g{f}"] = total + loss, loss
      logged.update({f"{k}_g{f}": v for k, v in aux.items()})
    return total, (logged, model_state)
  return loss_fn


def ffn_params(m, choice) -> int:
  """MLP parameters of a per-layer choice (both matrices and both biases)."""
  width = residual_width(m.width, m.norm)
  return sum(2 * width * u + u + width
             for u in granularity_units(block_config(m), m.width, m.depth, choice))


def submodel_config(config, choice) -> ml_collections.ConfigDict:
  """The ordinary dense config of the submodel `choice` picks: model.mlp.hidden set per layer,
  no granularities."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.mlp.hidden = granularity_units(block_config(config.model), config.model.width,
                                         config.model.depth, choice)
  c.model.mlp.granularities = ()
  c.checkpoint.directory = None   # the submodel's own WORKDIR/checkpoints, never the source's
  return c


def slice_state(state, abstract):
  """`state` cut to the shapes of `abstract` (the submodel's TrainState): the nested units are
  the first ones, so every parameter, Adam moment and EMoE group keeps its prefix."""
  def cut(x, target):
    if np.shape(x) == target.shape:
      return x
    return x[tuple(slice(0, n) for n in target.shape)]
  return jax.tree.map(cut, state, abstract)


def extract(config, workdir: str, choice, out: str) -> ml_collections.ConfigDict:
  """Writes the submodel `choice` (per-layer factors) of the run in `workdir` as a dense run in
  `out`, at the same step, with its Adam moments; returns its config."""
  validation.require(config.model.get("mlp") is not None, "--config",
                     f"task {config.task!r} has no model.mlp block; MatFormer needs the lm or "
                     "icl task")
  fs = factors(config.model)
  validation.require(len(choice) == config.model.depth and all(f in fs for f in choice),
                     "--granularity", f"needs one factor per layer ({config.model.depth}) from "
                     f"model.mlp.granularities={fs}, got {tuple(choice)}")
  surgery.check_new(out)
  exp, state, step = trainer.load_run(config, workdir)
  sub = submodel_config(config, choice)
  sub_exp = trainer.setup(sub)
  with sub_exp.activate():
    state = jax.device_put(slice_state(state, sub_exp.abstract_state),
                           jax.tree.map(lambda a: a.sharding, sub_exp.abstract_state))
  surgery.write(sub, state, out, step)
  return sub
