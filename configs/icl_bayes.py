"""Is in-context regression Bayesian? Uncertainty and the martingale property.

  substrax-train --config=configs/icl_bayes.py:cpu --workdir=runs/icl_bayes
  substrax-train --config=configs/icl_bayes.py:cpu --workdir=runs/icl_bayes_nopos \
      --config.model.positions=none

Noisy linear regression (d = 5, noise std 0.5, w ~ N(0, I)) with a mean-and-variance head
(Liu et al. 2024): the mean trained by squared error, the variance by the Gaussian NLL. eval/uncertainty.json: the NLL per k against the
exact Bayes posterior predictive, their gap with a bootstrap interval, and interval coverage.
eval/martingale.json: how far the predictive mean moves, in expectation, after a pseudo-pair
drawn from the model's own predictive (zero for a Bayesian predictor), and its spread over
orderings of the context, with learned position embeddings or none ("LLMs are Bayesian, in
expectation, not in realization").
"""
import ml_collections

from substrax.configs import icl_linear


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  c = icl_linear.get_config(preset)
  c.data.update(function_class="noisy_linear", noise_std=0.5)
  c.model.head = "gaussian"
  c.eval.update(claims=("uncertainty", "martingale"), claim_prompts=2048)
  if preset == "tiny":
    c.eval.claim_prompts = 128
  elif preset == "cpu":   # the recipe its results were measured with
    icl_linear.pre_curriculum_cpu(c)
  return c
