# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which algorithm does an in-context learner run?
#
# Three checks from `train/analysis/icl_claims.py`, each the evaluation of an ordinary run:
#
# 1. **LSA = GD.** A trained linear self-attention layer against one gradient-descent step
#    with the optimal step size (von Oswald et al. 2023), read off its sensitivities and its
#    weights; then the same construction by hand.
# 2. **Probes.** Linear and MLP probes of the transformer's residual stream for w, Xᵀy, XᵀX,
#    ŵ_OLS and ŵ_GD, each next to an untrained-model control and a shuffled-target control.
# 3. **Out of distribution.** Garg et al.'s OOD prompts for the transformer and the baselines.
#
# The runs are trained here when their directories hold no checkpoint. Set `SUBSTRAX_PRESET`
# (`cpu` by default: a few minutes; CI uses `tiny`) and `SUBSTRAX_RUNS` to change them.

# %%
import json
import os

import jax
import numpy as np
from IPython.display import Image, display

from substrax.configs import icl_linear, icl_lsa
from substrax.models.icl import LSA, gd_weights
from substrax.data import icl as icl_data
from substrax.train import trainer
from substrax.train.analysis import ood, probes

PRESET = os.environ.get("SUBSTRAX_PRESET", "cpu")
RUNS = os.environ.get("SUBSTRAX_RUNS", "../runs")


def run(config, name):
  """Trains (or resumes) the run, evaluates it, and returns its directory."""
  workdir = os.path.join(RUNS, f"{name}_{PRESET}")
  if PRESET == "tiny":
    config.eval.claim_prompts = 64
  trainer.train_and_evaluate(config, workdir)
  return workdir


# %% [markdown]
# ## 1. A trained LSA layer runs one step of gradient descent

# %%
lsa_dir = run(icl_lsa.get_config(PRESET), "lsa_gd")
with open(os.path.join(lsa_dir, "eval", "gd_alignment.json")) as f:
  gd = json.load(f)
print(f"sensitivity cosine {gd['sensitivity_cosine']['mean']:.5f}, "
      f"mean |y - y_GD*| {gd['mean_abs_prediction_difference']:.4f}, "
      f"learned step {gd['learned_step']:.4f} vs eta* {gd['optimal_step']:.4f}")
display(Image(os.path.join(lsa_dir, "eval", "gd_alignment.png")))

# %% [markdown]
# The construction behind it: with W_KQ = [[ηI, 0], [0, 0]] and W_PV = [[0, 0], [0, −1]] one
# LSA layer *is* one GD step from w = 0; three layers are three steps.

# %%
spec = icl_data.Spec("linear", 4, 9)
prompts = icl_data.sample(spec, jax.random.key(0), 8)
eta = 0.5
lsa = LSA(4, num_layers=1).apply({"params": gd_weights(4, eta)}, prompts["xs"], prompts["ys"])
xs, ys = np.asarray(prompts["xs"]), np.asarray(prompts["ys"])
k = np.arange(1, 9)
gd_step = np.stack([np.einsum("bd,bd->b", xs[:, j], eta / j * np.einsum("bn,bnd->bd",
                                                                         ys[:, :j], xs[:, :j]))
                    for j in k], 1)
print("max |LSA - one GD step| over prompts and prefixes:",
      float(np.abs(np.asarray(lsa)[:, 1:] - gd_step).max()))

# %% [markdown]
# ## 2. Probes of the transformer, against their controls

# %%
config = icl_linear.get_config(PRESET)
config.eval.claims = ("probes", "ood")
icl_dir = run(config, "icl_probes")
with open(os.path.join(icl_dir, "eval", "probes.json")) as f:
  probe_report = json.load(f)
print(probes.format_probe_table(probe_report))
display(Image(os.path.join(icl_dir, "eval", "probes.png")))

# %% [markdown]
# ## 3. Out-of-distribution prompts

# %%
with open(os.path.join(icl_dir, "eval", "ood.json")) as f:
  ood_report = json.load(f)
print(ood.format_ood_table(ood_report))
display(Image(os.path.join(icl_dir, "eval", "ood.png")))
