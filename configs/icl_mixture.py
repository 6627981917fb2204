"""Model selection from a pretraining mixture (Yadlowsky et al. 2023).

  substrax-train --config=configs/icl_mixture.py:cpu --workdir=runs/icl_mixture
  substrax-train --config=configs/icl_linear.py:cpu --workdir=runs/icl_sparse \
      --config.data.curriculum.dims_start=3 \
      --config.data.function_class=sparse_linear        # a single-family model to compare

Each prompt draws its family (dense linear, sparse linear, 2-layer ReLU net) uniformly; the
model never sees the family id. eval/selection.json scores the model on each family alone
against the true-family reference (OLS for dense, the Lasso for sparse, the best baseline per
k for ReLU nets): error per k and the regret.
"""
import ml_collections

from substrax.configs import icl_linear


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  c = icl_linear.get_config(preset)
  c.data.update(function_class="mixture", mixture=("linear", "sparse_linear", "relu_2nn"))
  c.eval.update(claims=("selection",), claim_prompts=1024)
  if preset == "tiny":
    c.eval.claim_prompts = 128
  elif preset == "cpu":   # the recipe its results were measured with
    icl_linear.pre_curriculum_cpu(c)
  return c
