"""Softmax regression against one GD step (train/analysis/softmax_regression.py): the gradient,
the best step, the Lipschitz estimates against bounds derived by hand, and the tiny preset of
benchmarks/softmax_regression.py end to end."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from substrax.train.analysis import softmax_regression as sr

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import softmax_regression as benchmark  # noqa: E402

# One compiled program instead of an eager op (and its compilation) per array op.
sample_prompts = jax.jit(sr.sample_prompts, static_argnums=(1, 2, 3))


def _softmax_jacobian(z):
  f = np.exp(z - z.max())
  f /= f.sum()
  return np.diag(f) - np.outer(f, f)


def test_gradient_formula_matches_autodiff():
  prompts = sample_prompts(jax.random.key(0), 16, 8, 4, 1.0)
  x = jax.jit(lambda key: 0.5 * jax.random.normal(key, (16, 4)))(jax.random.key(1))
  auto = jax.jit(jax.vmap(jax.grad(sr.loss, argnums=2)))(prompts["A"], prompts["b"], x)
  closed = jax.jit(sr.grad)(prompts["A"], prompts["b"], x)
  np.testing.assert_allclose(closed, auto, rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(auto).max()) > 1e-3   # a real gradient, not two zeros


def test_the_best_step_lowers_the_loss_below_the_start():
  tune = sample_prompts(jax.random.key(0), 512, 8, 4, 1.0)
  held_out = sample_prompts(jax.random.key(1), 512, 8, 4, 1.0)
  eta, losses = sr.best_step(tune)   # raises if eta* is at an end of the grid
  assert losses.min() < 0.5 * losses[0]   # the grid's smallest step barely moves from 0

  @jax.jit
  def step_and_start_losses(A, b, eta):
    x1 = sr.gd_step(A, b, eta)
    return sr.loss(A, b, x1).mean(), sr.loss(A, b, jnp.zeros_like(x1)).mean()
  after, before = step_and_start_losses(held_out["A"], held_out["b"], eta)
  assert float(after) < 0.5 * float(before)


def test_jacobian_norms_have_their_closed_forms():
  # Weight map: J = S A; data map: ||J|| = ||S|| ||x||, S the softmax Jacobian at A x.
  A, x = sr.random_points(jax.random.key(0), 8, 6, 3, 1.5)
  weight, data = sr.jacobian_norms("weight", A, x), sr.jacobian_norms("data", A, x)
  for i in range(8):
    s = _softmax_jacobian(A[i] @ x[i])
    np.testing.assert_allclose(weight[i], np.linalg.norm(s @ A[i], 2), rtol=1e-4)
    np.testing.assert_allclose(data[i], np.linalg.norm(s, 2) * np.linalg.norm(x[i]), rtol=1e-4)


@pytest.mark.parametrize("radius", [0.5, 2.0])
def test_weight_map_estimate_lies_between_derived_bounds(radius):
  n, d = 8, 4
  found = sr.lipschitz_estimate("weight", jax.random.key(0), n, d, radius, points=64, starts=4,
                                steps=20)
  estimate = found["refined"]
  # Upper: ||S A|| <= ||S|| ||A|| <= R / 2. Lower: the norm at two feasible points, x = 0
  # (S = (I - 11^T / n) / n and A = R u e1^T with u _|_ 1 give R / n) and A = R u e1^T,
  # x = R e1 with u = (e1 - e2) / sqrt(2) (J = R (S u) e1^T at logits R^2 u).
  u = np.zeros(n)
  u[:2] = np.array([1.0, -1.0]) / np.sqrt(2)
  lower = max(radius / n, radius * np.linalg.norm(_softmax_jacobian(radius ** 2 * u) @ u))
  assert lower - 1e-5 <= estimate <= radius / 2 + 1e-5
  # The ascent adds to the random points' best at the larger radius.
  if radius == 2.0:
    assert estimate > found["random"]


def test_tiny_preset_writes_its_report_and_training_aligns_attention_with_gd(tmp_path):
  report = benchmark.measure("tiny", str(tmp_path))
  on_disk = benchmark.reporting.read_json(os.path.join(tmp_path, "softmax_regression.json"))
  assert os.path.exists(os.path.join(tmp_path, "softmax_regression.png"))
  assert set(on_disk) >= {"preset", "config", "machine", "settings", "lipschitz", "wall_s"}
  (setting,) = on_disk["settings"]
  assert set(setting) >= {"n", "d", "eta_star", "trained", "untrained", "gd"}
  for name in ("trained", "untrained"):
    assert set(setting[name]) >= {"x_cosine", "prediction_cosine_fresh",
                                  "prediction_cosine_prompt", "error_model", "loss_model"}
  assert set(setting["gd"]) >= {"error_gd", "loss_gd", "loss_zero"}
  for row in on_disk["lipschitz"]:
    assert row["weight"]["refined"] <= row["half_R"] + 1e-5
    assert row["data"]["refined"] <= row["half_R"] + 1e-5
    assert row["M"] > row["data"]["refined"]
  trained, untrained = setting["trained"]["x_cosine"], setting["untrained"]["x_cosine"]
  assert trained["ci95"][0] > untrained["ci95"][1] and trained["mean"] > 0.5
  assert setting["trained"]["loss_model"]["mean"] < setting["gd"]["loss_zero"]["mean"]
  assert report["settings"][0]["eta_star"] == setting["eta_star"]
