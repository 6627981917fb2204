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
import os

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from substrax.data import icl as icl_data
from substrax.train import reporting

CLAIMS = ("gd_alignment",)


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
  eta_star = n / (n + d + 1 + noise_variance(spec))   # the best scalar step
  gd_grad = m @ g_star.T                                   # dy/dx_q of GD*: G* m
  gd_pred = np.einsum("pd,pd->p", xs[:, -1], gd_grad)
  scalar_pred = eta_star * np.einsum("pd,pd->p", xs[:, -1], m)
  cos = np.sum(grad * gd_grad, -1) / (np.linalg.norm(grad, axis=-1)
                                      * np.linalg.norm(gd_grad, axis=-1) + 1e-30)
  g_fit = np.linalg.lstsq(m, grad, rcond=None)[0].T        # grad_p = G m_p
  target = ys[:, -1]
  report = {
      "n_context": n, "n_dims": d, "num_prompts": int(num_prompts),
      "noise_variance": noise_variance(spec),
      "loss": {"model": float(np.mean((pred - target) ** 2)),
               "preconditioned_gd_optimal": float(np.mean((gd_pred - target) ** 2)),
               "scalar_gd_optimal": float(np.mean((scalar_pred - target) ** 2))},
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
           f"{r['loss']['preconditioned_gd_optimal']:.4f}, scalar GD* "
           f"{r['loss']['scalar_gd_optimal']:.4f}",
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


def plot_gd_alignment(path: str, r: dict, pred, gd_pred):
  fig = Figure(figsize=(12, 3.6), dpi=110)
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


def run_claims(claims, *, predict_last, spec, params, lsa_layers, key, num_prompts, workdir,
               step) -> dict:
  """Runs each claim, writes eval/<claim>.json and .png, prints its summary."""
  out = {}
  for claim in claims:
    if claim == "gd_alignment":
      report, (pred, gd_pred) = gd_alignment(predict_last, spec, params, key=key,
                                              num_prompts=num_prompts, lsa_layers=lsa_layers)
      report["step"] = int(step)
      path = os.path.join(workdir, "eval", claim)
      reporting.write_json(path + ".json", report)
      plot_gd_alignment(path + ".png", report, pred, gd_pred)
      print(format_gd_alignment(report))
      out[claim] = report
  return out
