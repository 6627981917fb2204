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
# # In-context linear regression: quickstart
#
# Loads a run of `configs/icl_linear.py` (training it first if the run directory holds no
# checkpoint), plots its training curve, then recomputes the evaluation curves from the newest
# checkpoint and draws them against the baselines, as in Garg et al. (2022), Fig. 2.
#
# `make demo` produces the default run, `runs/demo`. Set `SUBSTRAX_WORKDIR` and `SUBSTRAX_PRESET`
# to look at another one (CI runs this notebook on the `tiny` preset).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from substrax.configs import icl_linear
from substrax.train import trainer
from substrax.train.metrics import read_jsonl

PRESET = os.environ.get("SUBSTRAX_PRESET", "cpu")
WORKDIR = os.environ.get("SUBSTRAX_WORKDIR", "../runs/demo")
config = icl_linear.get_config(PRESET)
if not os.path.isdir(os.path.join(WORKDIR, "checkpoints")):
  trainer.train_and_evaluate(config, WORKDIR)

# %% [markdown]
# ## Training curve

# %%
records = read_jsonl(os.path.join(WORKDIR, "metrics.jsonl"))
train = [r for r in records if r["split"] == "train"]
evals = [r for r in records if r["split"] == "eval"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="held-out loss")
ax.set(xlabel="step", ylabel="squared error (all prefixes)", yscale="log")
ax.legend()
plt.show()

# %% [markdown]
# ## Error against the number of in-context examples
#
# Recomputed from the newest checkpoint on the held-out prompts (mean and 95% bootstrap interval).

# %%
report = trainer.evaluate_checkpoint(config, WORKDIR)
k = np.array(report["k"])
fig, ax = plt.subplots(figsize=(6.4, 4.2))
for name, curve in report["models"].items():
  mean, ci = np.array(curve["mean"]), np.array(curve["ci95"])
  line, = ax.plot(k, mean, lw=2.5 if name == "transformer" else 1.2,
                  ls="-" if name == "transformer" else "--", label=name)
  ax.fill_between(k, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.2)
ax.set(xlabel="in-context examples k", ylabel=report["metric"], ylim=(0, 1.25))
ax.legend(ncol=2, fontsize=8)
plt.show()

d = report["n_dims"]
at = min(2 * d, len(k) - 1)
print(f"transformer error at k={at}: {report['models']['transformer']['mean'][at]:.4f}")
