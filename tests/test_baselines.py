"""Baselines against their closed forms (Monte Carlo, x, w ~ N(0, I), noiseless)."""
import jax
import numpy as np
import pytest

from substrax.data import icl
from substrax.models import baselines

D, N, PROMPTS = 5, 16, 20000


@pytest.fixture(scope="module")
def prompts():
  b = jax.jit(icl.sample, static_argnums=(0, 2))(icl.Spec("linear", D, N), jax.random.key(0),
                                                  PROMPTS)
  return b["xs"], b["ys"]


def normalised_error(preds, ys):
  err = np.asarray((preds - ys) ** 2 / D)
  return err.mean(0), err.std(0) / np.sqrt(err.shape[0])


def test_least_squares_is_exact_once_k_reaches_d(prompts):
  xs, ys = prompts
  mean, _ = normalised_error(jax.jit(baselines.least_squares)(xs, ys), ys)
  np.testing.assert_allclose(mean[D:], 0.0, atol=1e-5)  # float32 pinv
  # Below d points the minimum-norm solution recovers the projection: error (d - k) / d.
  np.testing.assert_allclose(mean[:D], (D - np.arange(D)) / D, rtol=0.05)


def test_averaging_error_is_d_plus_1_over_k(prompts):
  xs, ys = prompts
  mean, sem = normalised_error(jax.jit(baselines.averaging)(xs, ys), ys)
  k = np.arange(4, N)  # small k has heavy tails; the closed form holds in expectation
  expected = (D + 1) / k
  assert np.all(np.abs(mean[k] - expected) < 4 * sem[k] + 0.02 * expected), (mean[k], expected)


def test_optimal_gd_step_error_is_d_plus_1_over_k_plus_d_plus_1(prompts):
  xs, ys = prompts
  mean, sem = normalised_error(jax.jit(baselines.gd_optimal_step)(xs, ys), ys)
  k = np.arange(N)
  expected = (D + 1) / (k + D + 1)
  assert np.all(np.abs(mean - expected) < 4 * sem + 0.01), (mean, expected)


def test_every_baseline_predicts_zero_without_context_and_uses_only_the_prefix(prompts):
  xs, ys = prompts[0][:64], prompts[1][:64]
  k = 7  # changing points k.. must not change the prediction for y_k
  fns = baselines.baseline_fns(ridge_alpha=0.1, lasso_alpha=0.01, knn_k=3, gd_steps_n=3)
  for name, fn in fns.items():
    fn = jax.jit(fn)
    p = np.asarray(fn(xs, ys))
    perturbed = np.asarray(fn(xs.at[:, k + 1:].add(1.0), ys.at[:, k:].add(1.0)))
    np.testing.assert_allclose(p[:, 0], 0.0, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(perturbed[:, :k + 1], p[:, :k + 1], atol=1e-4, err_msg=name)


def test_ridge_and_lasso_approach_least_squares_as_regularisation_vanishes(prompts):
  xs, ys = prompts[0][:256], prompts[1][:256]
  ls = jax.jit(baselines.least_squares)(xs, ys)
  # float32 solves of the barely determined prefixes agree to about 1e-3 relative; the exact
  # rounding depends on the compiled code (measured 2.3e-4 at LLVM -O0, see conftest.py).
  np.testing.assert_allclose(jax.jit(baselines.ridge)(xs, ys, 1e-6)[:, D + 1:], ls[:, D + 1:],
                             rtol=1e-3, atol=1e-3)
  # The Lasso stays eager: its FISTA loop runs as one compiled scan either way, and jitted it
  # measured no faster.
  np.testing.assert_allclose(baselines.lasso(xs, ys, 1e-6, iters=3000)[:, D + 2:],
                             ls[:, D + 2:], atol=2e-2)


def test_knn_averages_the_nearest_earlier_points():
  xs = np.array([[[0.0], [10.0], [1.0], [0.2]]], np.float32)
  ys = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
  pred = np.asarray(jax.jit(baselines.knn, static_argnums=2)(xs, ys, 2))
  # query 3 (x=0.2): nearest earlier points are x=0 (y=1) and x=1 (y=3).
  np.testing.assert_allclose(pred[0], [0.0, 1.0, 1.5, 2.0])
