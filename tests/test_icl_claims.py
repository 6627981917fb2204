"""ICL mechanisms: LSA constructions equal GD exactly, closed forms, the read-in encodings, and
a trained LSA layer recovering one GD step (train/analysis/icl_claims.py)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment_config
from substrax.data import icl as icl_data
from substrax.models import baselines
from substrax.models.icl import ENCODINGS, LSA, ICLTransformer, gd_weights
from substrax.models.transformer import BlockConfig
from substrax.train import trainer
from substrax.train.analysis import icl_claims
from substrax.train.errors import ConfigError

# One compiled program each, instead of an eager op (and its compilation) per array op.
sample = jax.jit(icl_data.sample, static_argnums=(0, 2))


def prompts(d=4, n=9, batch=6, seed=0, **spec_kw):
  spec = icl_data.Spec("linear", d, n, **spec_kw)
  return spec, sample(spec, jax.random.key(seed), batch)


def prefix_gd(xs, ys, eta, steps, gamma=0.0):
  """Reference: `steps` GD steps from 0 on every prefix (1/2k)|Xw - y|^2, in numpy; GD++
  transforms the context and query x's by (I - gamma X^T X / k) before each step."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  b, n, d = xs.shape
  out = np.zeros((b, n))
  for i in range(b):
    for k in range(1, n):
      x, y, q, w = xs[i, :k].copy(), ys[i, :k], xs[i, k].copy(), np.zeros(d)
      r = y.copy()
      for _ in range(steps):
        # The LSA layer updates x's and residuals from the same (pre-update) tokens.
        s = x.T @ x / k
        dw = eta * x.T @ r / k
        r, w_q = r - x @ dw, q @ dw
        out[i, k] += w_q
        x, q = x - gamma * x @ s, q - gamma * s @ q
        w = w + dw
  return out


@pytest.mark.parametrize("layers, gamma", [(1, 0.0), (3, 0.0), (3, 0.1)])
def test_constructed_lsa_runs_gd_on_every_prefix(layers, gamma):
  spec, p = prompts()
  model = LSA(spec.n_dims, num_layers=layers)
  params = gd_weights(spec.n_dims, 0.3, num_layers=layers, gamma=gamma)
  apply = jax.jit(model.apply, static_argnames="method")
  got = apply({"params": params}, p["xs"], p["ys"])
  np.testing.assert_allclose(got, prefix_gd(p["xs"], p["ys"], 0.3, layers, gamma), atol=1e-4)
  last = apply({"params": params}, p["xs"], p["ys"], method="predict_last")
  np.testing.assert_allclose(last, got[:, -1], atol=1e-5)


def test_constructed_preconditioned_step_and_the_gd_baseline():
  spec, p = prompts()
  g = jax.random.normal(jax.random.key(1), (4, 4))
  apply = jax.jit(LSA(4).apply, static_argnames="method")
  got = apply({"params": gd_weights(4, 1.0, preconditioner=g)}, p["xs"], p["ys"])

  @jax.jit
  def preconditioned(xs, ys, g):
    X, Y, mask = baselines._prefixes(xs, ys)
    m = baselines._moment(X, Y) / jnp.maximum(mask.sum(-1), 1)[None, :, None]
    return jnp.einsum("bkd,de,bke->bk", xs, g.T, m)
  np.testing.assert_allclose(got, preconditioned(p["xs"], p["ys"], g), atol=1e-4)
  # eta = k/(k+d+1) per prefix is the optimal-step baseline; at the last prefix with eta*(n):
  n = spec.n_points - 1
  eta = n / (n + spec.n_dims + 1)
  last = apply({"params": gd_weights(4, eta)}, p["xs"], p["ys"], method="predict_last")
  np.testing.assert_allclose(last, jax.jit(baselines.gd_optimal_step)(p["xs"], p["ys"])[:, -1],
                             atol=1e-5)


def test_optimal_preconditioner_closed_forms():
  iso = icl_data.Spec("linear", 5, 21)
  np.testing.assert_allclose(icl_claims.optimal_preconditioner(iso), 20 / 26 * np.eye(5),
                             atol=1e-12)
  aniso = icl_data.Spec("linear", 5, 21, covariance="spectrum",
                        spectrum=(4.0, 2.0, 1.0, 0.5, 0.25), weight_covariance="inverse")
  cov = np.asarray(icl_data.covariance_matrix(aniso), np.float64)
  np.testing.assert_allclose(icl_claims.optimal_preconditioner(aniso),
                             20 / 26 * np.linalg.inv(cov), rtol=1e-5, atol=1e-6)


def test_optimal_preconditioner_beats_its_perturbations_by_monte_carlo():
  spec = icl_data.Spec("linear", 3, 9, covariance="spectrum", spectrum=(3.0, 1.0, 0.3))
  p = sample(spec, jax.random.key(3), 200_000)
  xs, ys = np.asarray(p["xs"], np.float64), np.asarray(p["ys"], np.float64)
  m = np.einsum("pnd,pn->pd", xs[:, :-1], ys[:, :-1]) / 8
  g = icl_claims.optimal_preconditioner(spec)

  def loss(gm):
    return np.mean((np.einsum("pd,de,pe->p", xs[:, -1], gm, m) - ys[:, -1]) ** 2)
  best = loss(g)
  for delta in (np.eye(3) * 0.1, np.diag([0.1, -0.1, 0.0]), np.ones((3, 3)) * 0.05):
    assert best < loss(g + delta) and best < loss(g - delta)
  assert best < loss(np.trace(g) / 3 * np.eye(3))   # the best G is not a scalar step


def test_alignment_report_is_exact_on_the_constructed_optimum_and_flags_a_wrong_step():
  spec = icl_data.Spec("linear", 3, 9, covariance="spectrum", spectrum=(2.0, 1.0, 0.5))
  g = icl_claims.optimal_preconditioner(spec)
  model = LSA(3)
  for scale, exact in ((1.0, True), (2.0, False)):
    params = gd_weights(3, scale, preconditioner=g)
    fn = lambda xs, ys, params=params: model.apply({"params": params}, xs, ys,
                                                   method="predict_last")
    r, _ = icl_claims.gd_alignment(fn, spec, params, key=jax.random.key(0), num_prompts=512,
                                   lsa_layers=1)
    if exact:
      assert r["sensitivity_cosine"]["min"] > 1 - 1e-5
      assert r["mean_abs_prediction_difference"] < 1e-4
      assert r["preconditioner"]["fitted_relative_error"] < 1e-4
      assert r["preconditioner"]["weights_relative_error"] < 1e-6
      assert r["loss"]["model"] == pytest.approx(r["loss"]["preconditioned_gd_optimal"], rel=1e-4)
    else:
      assert r["learned_step_relative_error"] == pytest.approx(1.0, rel=1e-3)
      assert r["preconditioner"]["weights_relative_error"] == pytest.approx(1.0, rel=1e-4)
      assert r["loss"]["model"] > r["loss"]["preconditioned_gd_optimal"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encodings_keep_prediction_k_blind_to_y_k_and_later(encoding):
  _, p = prompts(d=3, n=6, batch=2)
  model = ICLTransformer(n_points=6, width=16, depth=2, block=BlockConfig(num_heads=2),
                         encoding=encoding)
  params = jax.jit(model.init)(jax.random.key(0), p["xs"], p["ys"])
  apply = jax.jit(model.apply)
  base = apply(params, p["xs"], p["ys"])
  for k in range(6):
    moved = apply(params, p["xs"], p["ys"].at[:, k].add(5.0))
    np.testing.assert_allclose(moved[:, :k + 1], base[:, :k + 1], atol=1e-5)
    if k < 5:
      assert not np.allclose(moved[:, k + 1], base[:, k + 1])


def test_trained_lsa_layer_recovers_one_gd_step(workdir):
  # A small version of configs/icl_lsa.py:cpu (d = 10, n = 10: cos >= 0.999, |dy| <= 0.02).
  config = experiment_config("icl_lsa", "tiny", **{
      "batch_size": 1024, "num_steps": 400, "optim.warmup_steps": 20,
      "optim.learning_rate": 1e-2,
      "eval.claim_prompts": 2000, "eval.num_prompts": 256, "eval.batch_size": 256,
      "eval_every_steps": 1000, "log_every_steps": 100, "checkpoint.every_steps": 1000})
  trainer.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "eval", "gd_alignment.json")) as f:
    r = json.load(f)
  assert r["sensitivity_cosine"]["mean"] > 0.995
  assert r["learned_step_relative_error"] < 0.05
  assert r["preconditioner"]["weights_relative_error"] < 0.1
  assert r["loss"]["model"] < 1.02 * r["loss"]["preconditioned_gd_optimal"]


def test_a_config_recorded_before_probe_steps_and_plots_still_validates():
  # benchmarks/compression_table.py rebuilds a run's config from its config.json.
  config = experiment_config("icl_linear", "tiny", **{"eval.claims": ("probes",)})
  del config.eval["probe_steps"]
  del config["plots"]
  trainer.validate(config)


@pytest.mark.parametrize("key, value", [
    ("model.name", "mlp"), ("model.encoding", "stacked"), ("data.loss_on", "first"),
    ("eval.claims", ("telepathy",)), ("model.lsa.num_layers", 0), ("eval.probe_steps", 0)])
def test_bad_config_names_the_key(key, value):
  config = experiment_config("icl_lsa", "tiny", **{key: value})
  if key == "model.encoding":
    config.model.name = "transformer"
  with pytest.raises(ConfigError, match=f"^{key}:"):
    trainer.setup(config)


def test_bayes_predictive_is_ridge_with_the_prior_and_calibrated():
  spec = icl_data.Spec("noisy_linear", 4, 9, noise_std=0.5)
  p = sample(spec, jax.random.key(4), 4000)
  mean, var = icl_claims.bayes_predictive(p["xs"], p["ys"], 0.25)
  np.testing.assert_allclose(mean, jax.jit(baselines.ridge)(p["xs"], p["ys"], 0.25), atol=1e-4)
  cov = icl_claims.coverage(np.asarray(p["ys"])[:, 1:], mean[:, 1:], var[:, 1:])
  np.testing.assert_allclose(cov, icl_claims.COVERAGE_LEVELS, atol=0.015)


def test_martingale_gap_separates_bayes_from_the_averaging_estimator():
  spec = icl_data.Spec("noisy_linear", 3, 8, noise_std=0.5)
  r = icl_claims.martingale(baselines.averaging, spec, key=jax.random.key(0), num_prompts=512)
  # Averaging treats a pseudo-pair as new evidence and moves; the Bayes mean does not, up to
  # the sampling noise of the pseudo-pairs.
  assert np.mean(r["model"]["martingale_gap"]) > 5 * np.mean(r["bayes"]["martingale_gap"])
  assert max(r["bayes"]["order_variance"]) < 1e-8       # exchangeable by construction
  assert max(r["model"]["order_variance"]) < 1e-8


@pytest.mark.parametrize("name, claims", [
    # gd_alignment, probes and ood run in tests/test_notebook.py (notebooks/icl_probes).
    ("icl_bayes", ("uncertainty", "martingale", "algorithms")),
    ("icl_mixture", ("selection",))])
def test_every_claim_runs_on_a_tiny_run(name, claims, workdir):
  config = experiment_config(name, "tiny", **{"eval.claims": claims, "eval.claim_prompts": 64,
                                              "eval.num_prompts": 64, "eval.batch_size": 64,
                                              "num_steps": 4, "optim.warmup_steps": 1,
                                              "eval_every_steps": 100})
  trainer.train_and_evaluate(config, workdir)
  for claim in claims:
    with open(os.path.join(workdir, "eval", f"{claim}.json")) as f:
      r = json.load(f)
    assert r["step"] == 4
    assert os.path.exists(os.path.join(workdir, "eval", f"{claim}.png"))
  if name == "icl_mixture":
    for family, f in r["families"].items():
      np.testing.assert_allclose(np.subtract(f["model"], f["oracle"]), f["regret"], atol=1e-9)
      assert len(f["model"]) == config.data.n_points
