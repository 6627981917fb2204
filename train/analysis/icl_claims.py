"""Which algorithm does a trained in-context regressor run? Each claim measured against its
closed form, on held-out prompts, for any ICL model (the transformer or LSA).

gd_alignment (von Oswald et al. 2023; Ahn et al. 2023; Mahankali et al. 2023). One
preconditioned GD step from w = 0 predicts y_hat = x_q^T G m with m = (1/n) sum_i x_i y_i over
the n context pairs. For x ~ N(0, S), w ~ N(0, S_w) and noise variance s2 the best G is

    G* = S_w S [ (n+1)/n S S_w S + (tr(S_w S) + s2)/n S ]^-1

which is n/(n+d+1+s2) I (= eta* I) for isotropic data, ((n+1)/n S + (tr S + s2)/n I)^-1 for
w ~ N(0, I) and n/(n+d+1+s2) S^-1 for w ~ N(0, S^-1). The report compares the model with that
step: the loss of each, the cosine between the model's sensitivity dy_hat/dx_q and G* m (the
implicit weights), mean |y_hat - y_hat_GD*|, and the G fitted to the sensitivities by least
squares (g = G m over prompts) against G*, with its learned step tr(G)/d against tr(G*)/d (eta*
for isotropic data). An LSA model's G is also read straight off its weights.
"""
import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from substrax.data import icl as icl_data
from substrax.models import baselines
from substrax.train.analysis import ood, probes, reporting

# The true-family reference of the model-selection claim: Bayes/OLS for dense linear data (the
# posterior mean under the isotropic prior is the min-norm solution), the Lasso for sparse
# data; other families have no closed form and use the best baseline at each k.
ORACLES = {"linear": "least_squares", "sparse_linear": "lasso"}
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
MARTINGALE_SAMPLES = 8   # pseudo-observations per prompt and k


def noise_variance(spec) -> float:
  return spec.noise_std**2 if spec.function_class == "noisy_linear" else 0.0


def optimal_preconditioner(spec) -> np.ndarray:
  """G* for n = n_points - 1 context pairs (the closed form in the module docstring)."""
  n, s2 = spec.n_points - 1, noise_variance(spec)
  cov = np.asarray(icl_data.covariance_matrix(spec), np.float64)
  cov_w = np.linalg.inv(cov) if spec.weight_covariance == "inverse" else np.eye(spec.n_dims)
  moment = (n + 1) / n * cov @ cov_w @ cov + (np.trace(cov_w @ cov) + s2) / n * cov
  return cov_w @ cov @ np.linalg.inv(moment)


def relative_error(a, b) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def lsa_preconditioner(params, d: int) -> np.ndarray:
  """G of a 1-layer LSA read off its weights: y_hat = -W_PV[y,y] x_q^T W_KQ[x,x]^T m when the
  cross terms W_PV[y,x] and W_KQ[y,x] are zero (their sizes are reported next to it)."""
  return -float(params["w_pv_0"][d, d]) * np.asarray(params["w_kq_0"][:d, :d]).T


def gd_alignment(predict_last, spec, params, *, key, num_prompts: int, lsa_layers: int = 0):
  """predict_last(xs [P, n, d], ys [P, n]) -> [P]: y_n from the first n - 1 pairs."""
  d, n = spec.n_dims, spec.n_points - 1
  prompts = icl_data.sample(spec, key, num_prompts)
  xs, ys = prompts["xs"], prompts["ys"]
  m = jnp.einsum("pnd,pn->pd", xs[:, :-1], ys[:, :-1]) / n

  def y_hat(x_q, x, y):
    return predict_last(x.at[-1].set(x_q)[None], y[None])[0]

  sens = jax.jit(jax.vmap(jax.value_and_grad(y_hat)))
  preds, grads = [], []
  for start in range(0, num_prompts, 1024):   # bounded memory for large prompt sets
    p, g = sens(xs[start:start + 1024, -1], xs[start:start + 1024], ys[start:start + 1024])
    preds.append(np.asarray(p))
    grads.append(np.asarray(g))
  pred, grad = np.concatenate(preds), np.concatenate(grads)
  xs, ys, m = np.asarray(xs, np.float64), np.asarray(ys, np.float64), np.asarray(m, np.float64)

  g_star = optimal_preconditioner(spec)
  gd_grad = m @ g_star.T                                   # dy/dx_q of GD*: G* m
  gd_pred = np.einsum("pd,pd->p", xs[:, -1], gd_grad)
  # The best single step size on these prompts (least squares): eta* only for isotropic data.
  plain = np.einsum("pd,pd->p", xs[:, -1], m)
  scalar_pred = plain * np.sum(plain * ys[:, -1]) / np.sum(plain * plain)
  cos = np.sum(grad * gd_grad, -1) / (np.linalg.norm(grad, axis=-1)
                                      * np.linalg.norm(gd_grad, axis=-1) + 1e-30)
  g_fit = np.linalg.lstsq(m, grad, rcond=None)[0].T        # grad_p = G m_p
  target = ys[:, -1]
  report = {
      "n_context": n, "n_dims": d, "num_prompts": int(num_prompts),
      "noise_variance": noise_variance(spec),
      "loss": {"model": float(np.mean((pred - target) ** 2)),
               "preconditioned_gd_optimal": float(np.mean((gd_pred - target) ** 2)),
               "scalar_gd_best": float(np.mean((scalar_pred - target) ** 2))},
      "sensitivity_cosine": {"mean": float(cos.mean()), "min": float(cos.min())},
      "mean_abs_prediction_difference": float(np.mean(np.abs(pred - gd_pred))),
      "mean_abs_target": float(np.mean(np.abs(target))),
      "preconditioner": {"fitted": g_fit.tolist(), "optimal": g_star.tolist(),
                         "fitted_relative_error": relative_error(g_fit, g_star),
                         "fit_residual_relative": relative_error(m @ g_fit.T, grad) if np.any(
                             grad) else float("nan")},
      "learned_step": float(np.trace(g_fit) / d), "optimal_step": float(np.trace(g_star) / d),
  }
  report["learned_step_relative_error"] = (abs(report["learned_step"] - report["optimal_step"])
                                           / report["optimal_step"])
  if lsa_layers == 1:
    g_w = lsa_preconditioner(params, d)
    report["preconditioner"].update(
        weights=g_w.tolist(), weights_relative_error=relative_error(g_w, g_star),
        cross_terms_max=float(max(np.abs(np.asarray(params["w_pv_0"][d, :d])).max(),
                                  np.abs(np.asarray(params["w_kq_0"][d, :d])).max())))
  return report, (pred, gd_pred)


def format_gd_alignment(r: dict) -> str:
  p = r["preconditioner"]
  lines = [f"gd_alignment: d={r['n_dims']}, n={r['n_context']} context pairs, "
           f"{r['num_prompts']} held-out prompts",
           f"  loss: model {r['loss']['model']:.4f}, preconditioned GD* "
           f"{r['loss']['preconditioned_gd_optimal']:.4f}, best scalar-step GD "
           f"{r['loss']['scalar_gd_best']:.4f}",
           f"  sensitivity cosine to GD*: mean {r['sensitivity_cosine']['mean']:.5f}, "
           f"min {r['sensitivity_cosine']['min']:.4f}",
           f"  mean |y_model - y_GD*|: {r['mean_abs_prediction_difference']:.4f} "
           f"(mean |y| {r['mean_abs_target']:.3f})",
           f"  step tr(G)/d: learned {r['learned_step']:.4f} vs tr(G*)/d {r['optimal_step']:.4f} "
           f"({100 * r['learned_step_relative_error']:.2f}% off)",
           f"  G fitted to the sensitivities vs G*: {100 * p['fitted_relative_error']:.2f}% "
           f"relative Frobenius error"]
  if "weights" in p:
    lines.append(f"  G read off the LSA weights vs G*: {100 * p['weights_relative_error']:.2f}%"
                 f" (largest cross term {p['cross_terms_max']:.2e})")
  return "\n".join(lines)


@reporting.plot
def plot_gd_alignment(path: str, r: dict, pred, gd_pred):
  fig = reporting.figure(figsize=(12, 3.6), dpi=110)
  ax = fig.add_subplot(1, 3, 1)
  ax.scatter(gd_pred, pred, s=3, alpha=0.4)
  lim = [min(gd_pred.min(), pred.min()), max(gd_pred.max(), pred.max())]
  ax.plot(lim, lim, "k--", lw=1)
  ax.set(xlabel="preconditioned GD* prediction", ylabel="model prediction",
         title=f"cos {r['sensitivity_cosine']['mean']:.4f}, "
               f"|dy| {r['mean_abs_prediction_difference']:.3f}")
  p = r["preconditioner"]
  scale = np.abs(np.asarray(p["optimal"])).max()
  for i, (name, g) in enumerate((("fitted G", p["fitted"]), ("closed-form G*", p["optimal"]))):
    ax = fig.add_subplot(1, 3, i + 2)
    im = ax.imshow(np.asarray(g), cmap="RdBu_r", vmin=-scale, vmax=scale)
    ax.set_title(name if i else f"{name} ({100 * p['fitted_relative_error']:.1f}% from G*)")
    fig.colorbar(im, ax=ax, shrink=0.8)
  fig.tight_layout()
  fig.savefig(path)


# ------------------------------------------------------------- Akyurek et al.: SPD and ILWD


def algorithm_weights(spec, *, ridge_alpha: float, gd_steps: int) -> dict:
  """Each reference algorithm as (xs, ys) -> implicit weights [B, n, d] per prefix."""
  return {"least_squares": baselines.least_squares_weights,
          "ridge": lambda xs, ys: baselines.ridge_weights(xs, ys, ridge_alpha),
          "gd_optimal_step": lambda xs, ys: baselines.gd_optimal_step_weights(xs, ys),
          f"gd_{gd_steps}_steps": lambda xs, ys: baselines.gd_steps_weights(xs, ys, gd_steps)}


def implicit_weights(predict, xs, ys, queries):
  """The model's implicit linear weights per prompt and prefix (Akyurek et al.): with the
  first k pairs fixed, the least-squares fit (with intercept) of its predictions for fresh
  queries [m, d] at position k. Returns (w [B, n, d], R^2 of the fit [B, n])."""
  b, n, d = xs.shape
  m = queries.shape[0]
  run = jax.jit(predict)
  design = np.concatenate([np.asarray(queries, np.float64), np.ones((m, 1))], 1)
  w, r2 = np.zeros((b, n, d)), np.zeros((b, n))
  for k in range(n):
    # Prompt p, query j: x_k replaced by query j (only the first k pairs precede it).
    probe = jnp.repeat(xs, m, 0).at[:, k].set(jnp.tile(queries, (b, 1)))
    y = np.asarray(jax.device_get(run(probe, jnp.repeat(ys, m, 0))))[:, k].reshape(b, m)
    coef = np.linalg.lstsq(design, y.T.astype(np.float64), rcond=None)[0]   # [d+1, b]
    w[:, k] = coef[:d].T
    resid = y - (design @ coef).T
    r2[:, k] = 1 - resid.var(1) / np.maximum(y.var(1), 1e-30)
  return w, r2


def algorithms(predict, spec, *, key, num_prompts: int, ridge_alpha: float, gd_steps: int):
  """SPD(model, A) = E (y_model - y_A)^2 / normaliser and ILWD(model, A) = E |w_model - w_A|^2
  per prefix k, for each algorithm A, on held-out prompts (Akyurek et al. 2023)."""
  kp, kq = jax.random.split(key)
  prompts = icl_data.sample(spec, kp, num_prompts)
  xs, ys = prompts["xs"], prompts["ys"]
  m = 2 * spec.n_dims + 2
  queries = jax.random.normal(kq, (m, spec.n_dims)) @ icl_data.covariance_root(spec)
  w_model, fit_r2 = implicit_weights(predict, xs, ys, queries)
  y_model = np.asarray(jax.jit(predict)(xs, ys), np.float64)
  report = {"k": list(range(spec.n_points)), "num_prompts": int(num_prompts),
            "num_queries": int(m), "implicit_fit_r2": fit_r2.mean(0).tolist(),
            "normalizer": spec.normalizer, "algorithms": {}}
  x = np.asarray(xs, np.float64)
  for name, fn in algorithm_weights(spec, ridge_alpha=ridge_alpha, gd_steps=gd_steps).items():
    w_alg = np.asarray(jax.block_until_ready(jax.jit(fn)(xs, ys)), np.float64)
    y_alg = np.einsum("bkd,bkd->bk", x, w_alg)
    report["algorithms"][name] = {
        "spd": (((y_model - y_alg) ** 2).mean(0) / spec.normalizer).tolist(),
        "ilwd": np.sum((w_model - w_alg) ** 2, -1).mean(0).tolist()}
  return report


def format_algorithms(r: dict) -> str:
  n = len(r["k"])
  shown = sorted({1, n // 2, n - 1})
  rows = {}
  for name, a in r["algorithms"].items():
    rows[name] = [a["spd"][k] for k in shown] + [a["ilwd"][k] for k in shown]
  cols = [f"SPD k={k}" for k in shown] + [f"ILWD k={k}" for k in shown]
  fit = ", ".join(f"{r['implicit_fit_r2'][k]:.3f}" for k in shown)
  return (f"algorithms: the model against each algorithm ({r['num_prompts']} prompts; implicit "
          f"weights from {r['num_queries']} queries, fit R^2 {fit} at k = {shown})\n"
          + reporting.format_table(cols, rows, first="algorithm"))


@reporting.plot
def plot_algorithms(path: str, r: dict):
  fig = reporting.figure(figsize=(10, 3.6), dpi=110)
  for i, metric in enumerate(("spd", "ilwd")):
    ax = fig.add_subplot(1, 2, i + 1)
    for name, a in r["algorithms"].items():
      ax.plot(r["k"][1:], a[metric][1:], marker="o", ms=3, label=name)
    ax.set(xlabel="in-context examples k", yscale="log",
           ylabel={"spd": "SPD (squared prediction difference / normaliser)",
                   "ilwd": "ILWD (squared implicit-weight distance)"}[metric])
    ax.grid(alpha=0.3)
  fig.axes[-1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


# ------------------------------------------------------- uncertainty and the martingale check


def bayes_predictive(xs, ys, noise_var: float, cov_w=None):
  """The exact posterior predictive of Bayesian linear regression with w ~ N(0, cov_w) (I by
  default) and known noise variance, per prefix: (mean, variance) [B, n], float64 on the host."""
  x, y = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  b, n, d = x.shape
  s2 = max(noise_var, 1e-8)
  prior = np.linalg.inv(np.eye(d) if cov_w is None else np.asarray(cov_w, np.float64))
  mean, var = np.zeros((b, n)), np.zeros((b, n))
  for k in range(n):
    xk, yk = x[:, :k], y[:, :k]
    post = np.linalg.inv(np.einsum("bkd,bke->bde", xk, xk) / s2 + prior)
    mu = np.einsum("bde,be->bd", post, np.einsum("bkd,bk->bd", xk, yk) / s2)
    mean[:, k] = np.einsum("bd,bd->b", x[:, k], mu)
    var[:, k] = noise_var + np.einsum("bd,bde,be->b", x[:, k], post, x[:, k])
  return mean, var


def gaussian_nll(y, mean, var):
  return 0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var)


def coverage(y, mean, var, levels=COVERAGE_LEVELS):
  """Fraction of targets inside each central interval mean +- z sqrt(var)."""
  z = np.asarray(jax.scipy.special.ndtri(0.5 + np.asarray(levels) / 2), np.float64)
  inside = np.abs(y - mean)[..., None] <= z * np.sqrt(var)[..., None]
  return inside.reshape(-1, len(levels)).mean(0)


def uncertainty(distribution, spec, *, key, num_prompts: int):
  """The model's predictive mean and variance against the Bayes posterior predictive (known
  prior and noise): NLL per k, their gap, and the coverage of central intervals."""
  prompts = icl_data.sample(spec, key, num_prompts)
  xs, ys = prompts["xs"], prompts["ys"]
  mean, var = (np.asarray(v, np.float64) for v in jax.jit(distribution)(xs, ys))
  cov_w = (np.linalg.inv(np.asarray(icl_data.covariance_matrix(spec), np.float64))
           if spec.weight_covariance == "inverse" else None)
  b_mean, b_var = bayes_predictive(xs, ys, noise_variance(spec), cov_w)
  y = np.asarray(ys, np.float64)
  nll, b_nll = gaussian_nll(y, mean, var), gaussian_nll(y, b_mean, b_var)
  gap, gap_ci = reporting.bootstrap_mean(nll - b_nll, 1000)
  return {"k": list(range(spec.n_points)), "num_prompts": int(num_prompts),
          "noise_variance": noise_variance(spec),
          "nll": {"model": nll.mean(0).tolist(), "bayes": b_nll.mean(0).tolist()},
          "nll_gap": {"mean": gap.tolist(), "ci95": gap_ci.tolist()},
          "mse": {"model": ((mean - y) ** 2).mean(0).tolist(),
                  "bayes": ((b_mean - y) ** 2).mean(0).tolist()},
          "variance_ratio": (var / b_var).mean(0).tolist(),
          "coverage_levels": list(COVERAGE_LEVELS),
          "coverage": {"model": coverage(y[:, 1:], mean[:, 1:], var[:, 1:]).tolist(),
                       "bayes": coverage(y[:, 1:], b_mean[:, 1:], b_var[:, 1:]).tolist()}}


def format_uncertainty(r: dict) -> str:
  n = len(r["k"])
  shown = sorted({1, n // 2, n - 1})
  rows = {"model NLL": [r["nll"]["model"][k] for k in shown],
          "Bayes NLL": [r["nll"]["bayes"][k] for k in shown],
          "NLL gap": [r["nll_gap"]["mean"][k] for k in shown],
          "var / Bayes var": [r["variance_ratio"][k] for k in shown]}
  cov = ", ".join(f"{lvl:.0%}: {m:.3f} (Bayes {b:.3f})" for lvl, m, b in zip(
      r["coverage_levels"], r["coverage"]["model"], r["coverage"]["bayes"]))
  return (f"uncertainty: Gaussian head against the Bayes posterior predictive "
          f"({r['num_prompts']} prompts, noise variance {r['noise_variance']:g})\n"
          + reporting.format_table([f"k={k}" for k in shown], rows, first="")
          + f"\ninterval coverage (k >= 1): {cov}")


@reporting.plot
def plot_uncertainty(path: str, r: dict):
  fig = reporting.figure(figsize=(10, 3.6), dpi=110)
  ax = fig.add_subplot(1, 2, 1)
  for name in ("model", "bayes"):
    ax.plot(r["k"], r["nll"][name], marker="o", ms=3, label=name)
  ax.set(xlabel="in-context examples k", ylabel="Gaussian NLL")
  ax.legend()
  ax.grid(alpha=0.3)
  ax = fig.add_subplot(1, 2, 2)
  for name in ("model", "bayes"):
    ax.plot(r["coverage_levels"], r["coverage"][name], marker="o", label=name)
  ax.plot([0.4, 1], [0.4, 1], "k--", lw=1)
  ax.set(xlabel="nominal coverage", ylabel="empirical coverage", title="calibration")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)


def martingale(predict, spec, *, key, num_prompts: int):
  """How far the predictive mean is from a martingale (Falck et al. 2024): after k pairs, add a
  pseudo-pair (x_{k+1}, y~) with y~ drawn from the model's own predictive (its mean plus the
  task noise), then predict a fresh query x_q. A Bayesian predictor's mean at x_q is then
  unchanged in expectation. Reports E[(E_y~ mu_{k+1}(x_q) - mu_k(x_q))^2] / normaliser per k
  for the model and for the Bayes posterior mean (the floor set by the finite sample of y~),
  and the spread of mu_k(x_q) over orderings of the k pairs (exchangeability)."""
  kp, kq, ke, kperm = jax.random.split(key, 4)
  prompts = icl_data.sample(spec, kp, num_prompts)
  # Edited in NumPy on the host: eager ops on a shape that changes with k would compile per k.
  xs, ys = np.asarray(prompts["xs"]), np.asarray(prompts["ys"])
  n, d = spec.n_points, spec.n_dims
  x_q = np.asarray(jax.random.normal(kq, (num_prompts, d)) @ icl_data.covariance_root(spec))
  eps = np.sqrt(noise_variance(spec)) * np.asarray(
      jax.random.normal(ke, (n, MARTINGALE_SAMPLES, num_prompts)))
  rng = np.random.default_rng(np.asarray(jax.random.key_data(kperm)))
  # The same k pairs in 4 random orders (the rest of the prompt in place), for every k.
  orders = {k: [np.concatenate([rng.permutation(k), np.arange(k, n)]) for _ in range(4)]
            for k in range(1, n - 1)}
  bayes = lambda x, y: bayes_predictive(x, y, noise_variance(spec))[0]
  out = {"k": list(range(1, n - 1)), "num_prompts": int(num_prompts),
         "samples": MARTINGALE_SAMPLES}
  for name, fn in (("model", jax.jit(predict)), ("bayes", bayes)):
    call = lambda x, y, fn=fn: np.asarray(fn(x, y))
    y_next = call(xs, ys)                                           # [:, k]: mu_k(x_{k+1})
    gaps, spread = [], []
    for k in range(1, n - 1):
      x_now = _with_column(xs, k, x_q)
      now = call(x_now, ys)[:, k]
      x_after = _with_column(xs, k + 1, x_q)
      after = [call(x_after, _with_column(ys, k, y_next[:, k] + eps[k, s]))[:, k + 1]
               for s in range(MARTINGALE_SAMPLES)]
      gaps.append(float(np.mean((np.mean(after, 0) - now) ** 2) / spec.normalizer))
      order = [call(x_now[:, p], ys[:, p])[:, k] for p in orders[k]]
      spread.append(float(np.mean(np.var(order, 0)) / spec.normalizer))
    out[name] = {"martingale_gap": gaps, "order_variance": spread}
  return out


def _with_column(a: np.ndarray, k: int, value) -> np.ndarray:
  """A copy of a [batch, n, ...] with position k set to value."""
  a = a.copy()
  a[:, k] = value
  return a


def format_martingale(r: dict) -> str:
  shown = sorted({r["k"][0], r["k"][len(r["k"]) // 2], r["k"][-1]})
  idx = [r["k"].index(k) for k in shown]
  rows = {f"{name} {metric}": [r[name][metric][i] for i in idx]
          for name in ("model", "bayes") for metric in ("martingale_gap", "order_variance")}
  return (f"martingale: predictive-mean drift after a self-drawn pseudo-pair, and spread over "
          f"orderings ({r['num_prompts']} prompts, {r['samples']} draws; / normaliser)\n"
          + reporting.format_table([f"k={k}" for k in shown], rows, first=""))


@reporting.plot
def plot_martingale(path: str, r: dict):
  fig = reporting.figure(figsize=(10, 3.6), dpi=110)
  for i, metric in enumerate(("martingale_gap", "order_variance")):
    ax = fig.add_subplot(1, 2, i + 1)
    for name in ("model", "bayes"):
      ax.plot(r["k"], np.maximum(r[name][metric], 1e-12), marker="o", ms=3, label=name)
    ax.set(xlabel="in-context examples k", ylabel=metric.replace("_", " "), yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)


# ---------------------------------------------------------------------- model selection


def selection(predict, spec, *, key, num_prompts: int, baseline_fns: dict):
  """A model trained on a mixture of families, scored on each family alone: its error per k
  and its regret against the true-family reference (ORACLES, else the best baseline)."""
  out = {"k": list(range(spec.n_points)), "num_prompts": int(num_prompts), "families": {}}
  run = jax.jit(predict)
  for i, family in enumerate(spec.mixture):
    fam = dataclasses.replace(spec, function_class=family)
    prompts = icl_data.sample(fam, jax.random.fold_in(key, i), num_prompts)
    xs, ys = prompts["xs"], prompts["ys"]
    err = lambda pred: ((np.asarray(pred, np.float64) - np.asarray(ys)) ** 2
                        / fam.normalizer).mean(0)
    model = err(run(xs, ys))
    base = {name: err(jax.block_until_ready(jax.jit(fn)(xs, ys)))
            for name, fn in baseline_fns.items()}
    oracle = (base[ORACLES[family]] if family in ORACLES
              else np.min([v for k, v in base.items() if k != "zero"], 0))
    out["families"][family] = {
        "model": model.tolist(), "oracle": oracle.tolist(),
        "oracle_name": ORACLES.get(family, "best baseline per k"),
        "regret": (model - oracle).tolist(), "baselines": {k: v.tolist() for k, v in base.items()},
        "metric": fam.metric}
  return out


def format_selection(r: dict) -> str:
  n = len(r["k"])
  shown = sorted({1, n // 2, n - 1})
  rows = {}
  for family, f in r["families"].items():
    rows[f"{family} model"] = [f["model"][k] for k in shown]
    rows[f"{family} {f['oracle_name']}"] = [f["oracle"][k] for k in shown]
    rows[f"{family} regret"] = [f["regret"][k] for k in shown]
  return (f"selection: the mixture-trained model on each family ({r['num_prompts']} prompts; "
          f"normalised squared error)\n"
          + reporting.format_table([f"k={k}" for k in shown], rows, first=""))


@reporting.plot
def plot_selection(path: str, r: dict):
  fams = list(r["families"])
  fig = reporting.figure(figsize=(4 * len(fams), 3.6), dpi=110)
  for i, family in enumerate(fams):
    f = r["families"][family]
    ax = fig.add_subplot(1, len(fams), i + 1)
    ax.plot(r["k"], f["model"], lw=2.5, label="mixture model")
    ax.plot(r["k"], f["oracle"], "k--", label=f["oracle_name"])
    ax.set(xlabel="in-context examples k", ylabel=f["metric"], title=family, ylim=(0, 1.5))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)


# ------------------------------------------------------------------------------ the runner


def probe_positions(spec) -> list:
  return sorted({k for k in (max(1, spec.n_dims // 2), spec.n_dims, spec.n_points - 1)
                 if 1 <= k < spec.n_points})


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim's computation, its printed summary and its PNG. compute gets run_claims' keywords
  and also returns the plot's extra arguments: data the PNG shows and the JSON does not keep."""
  compute: Callable   # (key, **run) -> (report, extra)
  format: Callable    # report -> summary
  plot: Callable      # (path, report, *extra) -> writes the PNG


def compute_gd_alignment(key, *, predict_last, spec, params, eval_config, lsa_layers, **_):
  return gd_alignment(predict_last, spec, params, key=key, num_prompts=eval_config.claim_prompts,
                      lsa_layers=lsa_layers)


def compute_algorithms(key, *, predict, spec, eval_config, **_):
  e = eval_config
  return algorithms(predict, spec, key=key, num_prompts=min(e.claim_prompts, 1024),
                    ridge_alpha=e.ridge_alpha, gd_steps=e.gd_steps), ()


def compute_probes(key, *, model, params, init_params, spec, eval_config, **_):
  recoverable = spec.function_class in ("linear", "sparse_linear") and (
      spec.n_points >= spec.n_dims)
  targets = [t for t in probes.TARGETS if t != "w" or recoverable]
  return probes.probe_report(model, params, init_params(jax.random.fold_in(key, 1)), spec, key,
                             num_prompts=eval_config.claim_prompts,
                             positions=probe_positions(spec), targets=targets, eta=1.0,
                             mlp_steps=eval_config.get("probe_steps", probes.MLP["steps"])), ()


def format_probes(report) -> str:
  return ("probes (R^2 on held-out prompts; controls: untrained model, shuffled targets)\n"
          + probes.format_probe_table(report))


def compute_ood(key, *, predictors, spec, eval_config, **_):
  # Without the Lasso: its 300 FISTA iterations, compiled per setting, cost more than the rest
  # of the table, and for dense linear data it tracks least squares.
  e = eval_config
  return ood.ood_report({k: v for k, v in predictors.items() if k != "lasso"}, spec, key,
                        e.claim_prompts, e.batch_size, n_boot=e.bootstrap), ()


def format_ood(report) -> str:
  return "ood: Garg et al.'s out-of-distribution prompts\n" + ood.format_ood_table(report)


def compute_uncertainty(key, *, distribution, spec, eval_config, **_):
  return uncertainty(distribution, spec, key=key, num_prompts=eval_config.claim_prompts), ()


def compute_martingale(key, *, predict, spec, eval_config, **_):
  return martingale(predict, spec, key=key, num_prompts=min(eval_config.claim_prompts, 1024)), ()


def compute_selection(key, *, predict, predictors, spec, eval_config, **_):
  model = next(iter(predictors))
  return selection(predict, spec, key=key, num_prompts=min(eval_config.claim_prompts, 2048),
                   baseline_fns={k: v for k, v in predictors.items() if k != model}), ()


# New claims go last: a claim's random key is its index here.
REGISTRY = {
    "gd_alignment": Claim(compute_gd_alignment, format_gd_alignment, plot_gd_alignment),
    "algorithms": Claim(compute_algorithms, format_algorithms, plot_algorithms),
    "probes": Claim(compute_probes, format_probes, probes.plot_probes),
    "ood": Claim(compute_ood, format_ood, ood.plot_ood),
    "uncertainty": Claim(compute_uncertainty, format_uncertainty, plot_uncertainty),
    "martingale": Claim(compute_martingale, format_martingale, plot_martingale),
    "selection": Claim(compute_selection, format_selection, plot_selection),
}
CLAIMS = tuple(REGISTRY)


def run_claims(claims, *, key, workdir, step, **run) -> dict:
  """Runs each claim, writes eval/<claim>.json and .png, prints its summary.

  run holds what the claims measure, by keyword: model, params, spec, eval_config, lsa_layers;
  predict(xs, ys) -> [B, n], predict_last(xs, ys) -> [B] and distribution(xs, ys) -> (mean,
  var) [B, n] (a Gaussian head only), the trained model's; predictors, every (xs, ys) -> [B, n]
  to compare (the model first, then the baselines); init_params(key), an untrained model's
  params (the probes' control).
  """
  out = {}
  for name in claims:
    claim, path = REGISTRY[name], os.path.join(workdir, "eval", name)
    report, extra = claim.compute(jax.random.fold_in(key, CLAIMS.index(name)), **run)
    claim.plot(path + ".png", report, *extra)
    summary = claim.format(report)
    report["step"] = int(step)
    reporting.write_json(path + ".json", report)
    print(summary)
    out[name] = report
  return out
