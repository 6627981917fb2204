"""Emergent mixture of experts (Qiu et al. 2023): a trained dense MLP's hidden units grouped into
experts, with no new parameters.

A unit's key is its column of W1 [width, hidden] (a row of W1 in the paper's [hidden, width]
layout). The keys, each scaled to unit length, are clustered into N groups of equal size
(balanced k-means); expert e is the units of group e, and its gate vector is the mean of its
units' raw (unscaled) keys, so a token x goes to the top_k experts by gate . x. models/
transformer.MLP computes the result in its dense form, the other units masked, which at
top_k = N is the dense MLP exactly.

Balanced k-means: Lloyd's iterations whose assignment step gives every cluster exactly
hidden / N units, solved exactly as a linear assignment of units to hidden / N copies of each
centre (scipy's linear_sum_assignment), the problem the paper's KMeansConstrained solves by
minimum-cost flow.
"""
import flax
import numpy as np
from scipy.optimize import linear_sum_assignment

from substrax.models.transformer import mean_keys


def balanced_kmeans(points: np.ndarray, groups: int, seed: int = 0, iters: int = 100):
  """[n] cluster of each of the n points: `groups` clusters of n / groups points each, a local
  minimum of the summed squared distances to the cluster means."""
  n = len(points)
  if n % groups:
    raise ValueError(f"{groups} groups do not divide {n} points")
  size = n // groups
  points = np.asarray(points, np.float64)
  centres = points[np.random.default_rng(seed).choice(n, groups, replace=False)]
  assign = None
  for _ in range(iters):
    cost = ((points[:, None, :] - centres[None]) ** 2).sum(-1)       # [n, groups]
    _, slot = linear_sum_assignment(np.repeat(cost, size, axis=1))
    new = slot // size
    if assign is not None and np.array_equal(new, assign):
      break
    assign = new
    centres = np.stack([points[assign == g].mean(0) for g in range(groups)])
  return assign


def expert_groups(kernel, experts: int, seed: int = 0) -> np.ndarray:
  """[hidden] expert of each unit of an MLP whose first kernel is `kernel` [width, hidden]."""
  keys = np.asarray(kernel, np.float64).T
  keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
  return balanced_kmeans(keys, experts, seed)


def convert(params, emoe_state, seed: int = 0):
  """The 'emoe' collection of a model (models/transformer.MLP with experts > 0) with every
  MLP's experts clustered from its trained first kernel in `params`."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(emoe_state))
  weights = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  out = dict(flat)
  for key in flat:
    if key[-1] != "group":
      continue
    mlp = key[:-1]
    kernel = np.asarray(weights[mlp + ("fc", "kernel")])
    experts = flat[mlp + ("gate",)].shape[0]
    group = expert_groups(kernel, experts, seed)
    out[mlp + ("group",)] = group.astype(np.asarray(flat[key]).dtype)
    out[mlp + ("gate",)] = np.asarray(mean_keys(kernel, group, experts))
  return flax.traverse_util.unflatten_dict(out)


def top_k_mass(activations, group, experts: int, k: int) -> float:
  """Co-activation modularity of a grouping: the mean over tokens of the fraction of a token's
  activation mass |h| [tokens, hidden] that lies in its k experts of largest mass."""
  mass = np.abs(np.asarray(activations, np.float64)) @ np.eye(experts)[group]   # [tokens, N]
  top = -np.sort(-mass, axis=1)[:, :k].sum(1)
  return float(np.mean(top / np.maximum(mass.sum(1), 1e-30)))
