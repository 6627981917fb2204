"""Scaling laws of a size sweep on a task with a known Bayes loss (benchmarks/scaling_laws.py).

Loss against non-embedding parameters N is fitted as L(N) = L∞ + (N₀/N)^α in one of two
spaces (`space`):

- "reducible": least squares on log(L − L∞) = α log N₀ − α log N, a straight line in log N
  once L∞ is fixed, so L∞ is profiled out by a bounded 1-D search and the rest is linear.
  It weighs every size by its relative excess, so the large models, whose excess is small,
  are not drowned by the small ones. Its residuals change scale with L∞, though: log(L − L∞)
  spreads more the closer L∞ comes to the losses, so when the points scatter about a power
  law the criterion can prefer L∞ = 0 whatever the data's floor.
- "total": least squares on log L, the same law by nonlinear least squares; its residuals
  keep one scale for every L∞.

The fit is made on all but the largest models, and the held-out ones test its extrapolation.
Its L∞ is compared with the Bayes loss of the HMM. With one token budget for every size, L∞
also absorbs the data-limited part of the loss (what an infinite model still loses after that
many tokens), so L∞ above the Bayes loss is expected, not a failure of the fit.

The compute frontier (loss against C = 6·N·tokens, the lower envelope of all training curves)
gets the same fit, and N_opt(C) a power law N_opt ∝ C^β.
"""
import jax
import numpy as np
from scipy import optimize

from substrax.train.analysis import reporting

SPACES = ("reducible", "total")
GAP_MIN = 1e-9    # L∞ ≤ (1 − GAP_MIN)·min L: log(L − L∞) diverges at min L
BOUND_TOL = 1e-6  # in log(min L − L∞): closer than this to an end of the search is "at the bound"
CAVEAT = ("with few sizes N_opt is a step function of C, and with a cosine "
          "schedule matched to the full token budget the intermediate points of a curve are "
          "not compute-optimal (a run aimed at that budget would do better), which favours the "
          "smaller models at every C below the end of the larger runs")


def _line_fits(x, y):
  """Least squares y = a + b·x for each row of y [..., n] -> (a, b, sum of squared residuals).
  Residuals are formed directly (not as Syy − b²Sxx) so that an exact fit reads ~0."""
  xc = x - x.mean()
  yc = y - y.mean(-1, keepdims=True)
  b = (yc * xc).sum(-1) / (xc * xc).sum()
  a = y.mean(-1) - b * x.mean()
  r = yc - b[..., None] * xc
  return a, b, (r * r).sum(-1)


def _law(l_inf, intercept, alpha, rms_log, at_bound, fixed, points, space) -> dict:
  """A fit's record: L = l_inf + exp(intercept − α log N), N₀ = exp(intercept / α)."""
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    log_n0 = float(intercept) / alpha if alpha != 0 else float("nan")
    n0 = float(np.exp(log_n0))
  return {"l_inf": float(l_inf), "alpha": float(alpha), "n0": n0, "log_n0": log_n0,
          "intercept": float(intercept), "rms_log": float(rms_log), "at_bound": at_bound,
          "fixed_l_inf": fixed, "points": points, "space": space}


def _result(x, loss, l_inf, at_bound, fixed):
  a, b, sse = _line_fits(x, np.log(loss - l_inf))
  return _law(l_inf, a, -float(b), np.sqrt(sse / len(x)), at_bound, fixed, len(x), "reducible")


def non_embedding(params) -> int:
  """N of a language model (models/lm.py): its backbone's parameters without the position
  table; the token embedding and the head are embedding parameters."""
  leaves = jax.tree_util.tree_leaves_with_path(params["backbone"])
  return sum(int(np.size(v)) for path, v in leaves
             if "pos_embedding" not in jax.tree_util.keystr(path))


def _fit_total(x, loss, l_inf: float | None) -> dict:
  """L = L∞ + exp(a − α log N) by least squares on log L, L∞ ∈ [0, min L], from four starts
  (the reducible-part line at L∞ = 0, ½, 0.9 and 0.99 of min L)."""
  lowest, y = float(loss.min()), np.log(loss)
  law = lambda l, a, alpha: np.log(l + np.exp(a - alpha * x)) - y

  def jacobian(l, a, alpha):
    """d/d(L∞, a, α) of the residuals: with u = exp(a − α x), 1/(L∞ + u) times (1, u, −x u)."""
    u = np.exp(a - alpha * x)
    return np.stack([np.ones_like(x), u, -x * u], 1) / (l + u)[:, None]

  best = None
  for start in ([l_inf] if l_inf is not None else [0.0, 0.5, 0.9, 0.99]):
    l0 = start if l_inf is not None else start * lowest
    a, b, _ = _line_fits(x, np.log(loss - l0))
    alpha0 = max(-float(b), 1e-3)
    if l_inf is not None:
      res = optimize.least_squares(lambda p: law(l_inf, *p), [float(a), alpha0],
                                   jac=lambda p: jacobian(l_inf, *p)[:, 1:])
      params = (l_inf, *res.x)
    else:
      res = optimize.least_squares(lambda p: law(*p), [l0, float(a), alpha0],
                                   jac=lambda p: jacobian(*p),
                                   bounds=([0.0, -np.inf, 0.0], [lowest, np.inf, np.inf]))
      params = tuple(res.x)
    if best is None or res.cost < best[0]:
      best = (res.cost, params)
  cost, (l_fit, a, alpha) = best
  at_bound = (None if l_inf is not None else "lower" if l_fit < BOUND_TOL * lowest
              else "upper" if lowest - l_fit < BOUND_TOL * lowest else None)
  return _law(l_fit, a, alpha, np.sqrt(2 * cost / len(x)), at_bound, l_inf is not None,
              len(x), "total")


def fit_power_law(n, loss, *, l_inf: float | None = None, grid: int = 200,
                  space: str = "reducible") -> dict:
  """L = L∞ + (N₀/N)^α by least squares on log(L − L∞) over L∞ ∈ [0, min L) (space
  "reducible"), or on log L over L∞ ∈ [0, min L] (space "total", _fit_total).

  For fixed L∞ the fit is a line in log N, so only L∞ is searched: a grid in log(min L − L∞)
  (the residual can have several minima) then a bounded Brent search between the best grid
  point's neighbours. `l_inf` fixes L∞ instead (e.g. at the Bayes loss).

  Returns l_inf, alpha, n0 (and log_n0, intercept = α log N₀), rms_log (the residual RMS of
  log(L − L∞)), points, fixed_l_inf, and at_bound: None, "lower" (L∞ = 0: the points show no
  floor, the law is a pure power law) or "upper" (L∞ → min L; a guard only: log(min L − L∞) →
  −∞ drives the residual up whenever there are ≥ 3 sizes). A fit at a bound is returned as it
  is, so the caller sees it. Needs ≥ 3 sizes (2 with L∞ fixed): with two, every L∞ fits
  exactly (with three the residual is usually 0 as well: only the bootstrap shows the spread).
  rms_log is the residual RMS in the fit's space; `space` is returned too.
  """
  if space not in SPACES:
    raise ValueError(f"unknown space {space!r}; expected one of {SPACES}")
  x, loss = np.log(np.asarray(n, np.float64)), np.asarray(loss, np.float64)
  if x.shape != loss.shape or x.ndim != 1:
    raise ValueError(f"n and loss must be 1-D of one length, got {x.shape} and {loss.shape}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(loss))):
    raise ValueError("n must be positive and n, loss finite")
  if len(np.unique(x)) < (2 if l_inf is not None else 3):
    raise ValueError(f"need ≥ 3 distinct sizes (2 with L∞ fixed), got {len(np.unique(x))}")
  lowest = float(loss.min())
  if l_inf is not None:
    if not 0 <= l_inf < lowest:
      raise ValueError(f"fixed L∞ = {l_inf} must lie in [0, min loss = {lowest})")
  if lowest <= 0:
    raise ValueError(f"losses must be positive, got min {lowest}")
  if space == "total":
    return _fit_total(x, loss, None if l_inf is None else float(l_inf))
  if l_inf is not None:
    return _result(x, loss, float(l_inf), None, True)
  # t = log(min L − L∞): t_hi is L∞ = 0, t_lo is L∞ just below min L.
  t_lo, t_hi = np.log(lowest * GAP_MIN), np.log(lowest)
  sse = lambda t: _line_fits(x, np.log(loss - lowest + np.exp(t)))[2]
  ts = np.linspace(t_lo, t_hi, grid)
  values = sse(ts[:, None])
  i = int(np.argmin(values))
  bracket = ts[max(i - 1, 0)], ts[min(i + 1, grid - 1)]
  res = optimize.minimize_scalar(sse, bounds=bracket, method="bounded",
                                 options={"xatol": 1e-12})
  t = float(res.x) if res.fun <= values[i] else float(ts[i])
  at_bound = "lower" if t_hi - t < BOUND_TOL else "upper" if t - t_lo < BOUND_TOL else None
  l_inf = 0.0 if at_bound == "lower" else max(lowest - np.exp(t), 0.0)
  return _result(x, loss, l_inf, at_bound, False)


def predict(fit: dict, n):
  """The fitted law at n (a scalar or an array)."""
  out = fit["l_inf"] + np.exp(fit["intercept"] - fit["alpha"] * np.log(np.asarray(n, np.float64)))
  return float(out) if np.ndim(out) == 0 else out


def _interval(samples):
  return [float(v) for v in np.percentile(samples, [2.5, 97.5], axis=0)]


def bootstrap(n, sequence_losses, reps: int = 1000, seed: int = 0, *, predict_n=None,
              l_inf: float | None = None, space: str = "reducible") -> dict:
  """Paired bootstrap of the fit over held-out sequences.

  sequence_losses [models, sequences]: each model's mean loss on the same held-out sequences.
  Every replicate draws one set of sequence indices with replacement for all models (a hard
  sequence is hard for every size, so resampling them independently would overstate the
  noise), recomputes each model's mean and refits. This captures evaluation noise only, not
  seed-to-seed training noise (other initialisations, data orders or learning-rate picks),
  which needs retrained models; the intervals are lower bounds on the total uncertainty.

  Returns samples {alpha, l_inf, log_n0, prediction [reps, k] or None}, 95% percentile
  intervals alpha_ci, l_inf_ci, prediction_ci ([lo, hi] per predict_n, or one pair for a scalar
  predict_n), corr_alpha_l_inf (Pearson, nan with L∞ fixed), at_bound_fraction, reps.
  """
  losses = np.asarray(sequence_losses, np.float64)
  if losses.ndim != 2 or losses.shape[0] != len(n):
    raise ValueError(f"sequence_losses must be [models={len(n)}, sequences], got {losses.shape}")
  count = losses.shape[1]
  rng = np.random.default_rng(seed)
  # How often each sequence is drawn in `count` draws with replacement: the same distribution
  # as indexing with rng.integers(0, count, count), and one matrix product for all the means.
  draws = rng.multinomial(count, np.full(count, 1.0 / count), size=reps)
  means = draws @ losses.T / count   # [reps, models]
  fits = [fit_power_law(n, m, l_inf=l_inf, space=space) for m in means]
  samples = {k: np.array([f[k] for f in fits]) for k in ("alpha", "l_inf", "log_n0")}
  out = {"samples": samples, "reps": reps,
         "alpha_ci": _interval(samples["alpha"]), "l_inf_ci": _interval(samples["l_inf"]),
         "at_bound_fraction": float(np.mean([f["at_bound"] is not None for f in fits])),
         "prediction_ci": None}
  spread = samples["alpha"].std() > 0 and samples["l_inf"].std() > 0
  out["corr_alpha_l_inf"] = (float(np.corrcoef(samples["alpha"], samples["l_inf"])[0, 1])
                             if spread else float("nan"))
  samples["prediction"] = None
  if predict_n is not None:
    at = np.atleast_1d(np.asarray(predict_n, np.float64))
    pred = np.stack([predict(f, at) for f in fits])   # [reps, k]
    samples["prediction"] = pred
    cis = [_interval(pred[:, j]) for j in range(len(at))]
    out["prediction_ci"] = cis[0] if np.ndim(predict_n) == 0 else cis
  return out


def _curve_compute(model):
  """(C = 6·N·tokens, loss) of a model's held-out curve, points with tokens > 0 only."""
  tokens = np.asarray(model["curve"]["tokens"], np.float64)
  loss = np.asarray(model["curve"]["loss"], np.float64)
  order = np.argsort(tokens)
  tokens, loss = tokens[order], loss[order]
  keep = tokens > 0
  return 6.0 * model["non_embedding_params"] * tokens[keep], loss[keep]


def compute_frontier(models, points: int = 64, fit_from: float | None = None,
                     l_inf: float | None = None, space: str = "reducible") -> dict:
  """The lower envelope of loss against training compute, its power law, and N_opt(C).

  C = 6·N·tokens. On a log grid of C, each model's curve is interpolated linearly in log C and
  replaced by its running minimum (the best it reached with compute ≤ C; after its last point
  it keeps its final loss); the frontier is the minimum over models, so it never increases,
  and N_opt is the N of the model achieving it. L(C) = L∞ + (C₀/C)^α_C (fit_power_law) and
  log N_opt = β log C + const (least squares) are fitted for C ≥ fit_from, by default the end
  of the smallest run: below it the smallest model's early, far-from-converged steps are all
  there is. `l_inf` fixes the floor of L(C), e.g. at the Bayes loss: with both N and tokens
  growing it is the floor in principle, and a short range of C rarely pins it down.

  Caveat, also in the returned `caveat`: with few sizes and a cosine schedule matched to the
  full budget, the intermediate points are not compute-optimal, so β (and α_C) are noisy.

  Returns compute, loss, n_opt, model (names) on the grid; fit_from; fit (the L(C) power law,
  its n0 being C₀); beta, beta_const; sizes_on_frontier (distinct N_opt in the fit range);
  noisy (True); caveat.
  """
  curves = [_curve_compute(m) for m in models]
  if any(len(c) == 0 for c, _ in curves):
    raise ValueError("every model needs a curve with at least one point at tokens > 0")
  log_c = np.linspace(np.log(min(c[0] for c, _ in curves)), np.log(max(c[-1] for c, _ in curves)),
                      points)
  envelopes = []
  for c, loss in curves:
    value = np.interp(log_c, np.log(c), loss)   # holds the last loss after the run ends
    value[log_c < np.log(c[0])] = np.inf        # no compute spent yet: not on the frontier
    envelopes.append(np.minimum.accumulate(value))
  envelopes = np.stack(envelopes)   # [models, points]
  best = np.argmin(envelopes, 0)
  frontier = envelopes[best, np.arange(points)]
  sizes = np.array([m["non_embedding_params"] for m in models], np.float64)
  n_opt = sizes[best]
  compute = np.exp(log_c)
  fit_from = float(curves[int(np.argmin(sizes))][0][-1]) if fit_from is None else float(fit_from)
  in_range = compute >= fit_from * (1 - 1e-12)
  if in_range.sum() < 3:
    raise ValueError(f"fewer than 3 grid points at C ≥ fit_from = {fit_from:.3g}")
  fit = fit_power_law(compute[in_range], frontier[in_range], l_inf=l_inf, space=space)
  beta_const, beta = np.polynomial.polynomial.polyfit(log_c[in_range], np.log(n_opt[in_range]), 1)
  return {"compute": compute.tolist(), "loss": frontier.tolist(), "n_opt": n_opt.tolist(),
          "model": [models[i]["name"] for i in best], "fit_from": fit_from, "fit": fit,
          "beta": float(beta), "beta_const": float(beta_const),
          "sizes_on_frontier": int(len(np.unique(n_opt[in_range]))), "noisy": True,
          "caveat": CAVEAT}


def _plain(value):
  """Arrays to lists, so that a study_fit result goes straight into json.dump."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value.tolist() if isinstance(value, np.ndarray) else value


def study_fit(results: dict, held_out: int = 1, *, reps: int = 1000, seed: int = 0,
              l_inf: float | None = None, space: str = "reducible") -> dict:
  """Fits all but the `held_out` largest models and checks the law against what it left out.

  Returns fit (fit_power_law), bootstrap (its intervals and samples, as lists), fit_models and
  held_out (per held-out model: name, n, measured, predicted, interval, rel_error =
  (predicted − measured)/measured), prediction (the largest model's entry, None when
  held_out = 0), bayes {nats, l_inf_rel_diff = (L∞ − Bayes)/Bayes, in_interval: whether the
  Bayes loss lies in the bootstrap interval of L∞}, and frontier (compute_frontier over all the
  models, held-out ones included: it describes the runs, it predicts nothing; plus
  fit_bayes_floor, its L(C) fit with L∞_C fixed at the Bayes loss, or None). `l_inf` fixes L∞
  of both fits (e.g. at the Bayes loss) to see how α and α_C move; `space` picks the fit's
  space for both (fit_power_law).
  """
  models = sorted(results["models"], key=lambda m: m["non_embedding_params"])
  keep = len(models) - held_out
  if held_out < 0 or keep < (2 if l_inf is not None else 3):
    raise ValueError(f"held_out={held_out} leaves {keep} of {len(models)} models to fit; "
                     "the fit needs 3 (2 with L∞ fixed)")
  train, test = models[:keep], models[keep:]
  n = [m["non_embedding_params"] for m in train]
  fit = fit_power_law(n, [m["loss"] for m in train], l_inf=l_inf, space=space)
  test_n = [m["non_embedding_params"] for m in test]
  boot = bootstrap(n, [m["sequence_losses"] for m in train], reps, seed,
                   predict_n=test_n or None, l_inf=l_inf, space=space)
  checks = []
  for j, m in enumerate(test):
    predicted = predict(fit, m["non_embedding_params"])
    checks.append({"name": m["name"], "n": m["non_embedding_params"], "measured": m["loss"],
                   "predicted": predicted, "interval": boot["prediction_ci"][j],
                   "rel_error": (predicted - m["loss"]) / m["loss"]})
  bayes = float(results["bayes_nats"])
  lo, hi = boot["l_inf_ci"]
  frontier = compute_frontier(models, l_inf=l_inf, space=space)
  compute, loss = np.array(frontier["compute"]), np.array(frontier["loss"])
  in_range = compute >= frontier["fit_from"] * (1 - 1e-12)
  # A short range of C rarely pins the frontier's floor down; the Bayes loss is its floor in
  # principle (N and tokens both grow), so α_C with that floor is reported too.
  frontier["fit_bayes_floor"] = (
      fit_power_law(compute[in_range], loss[in_range], l_inf=bayes, space=space)
      if l_inf is None and bayes < loss[in_range].min() else None)
  return {"fit": fit, "bootstrap": _plain(boot), "fit_models": [m["name"] for m in train],
          "held_out": checks, "prediction": checks[-1] if checks else None,
          "bayes": {"nats": bayes, "l_inf_rel_diff": (fit["l_inf"] - bayes) / bayes,
                    "in_interval": bool(lo <= bayes <= hi)},
          "frontier": frontier}


def plot(path: str | None, results: dict, fit: dict, other: dict | None = None):
  """Left: loss against N with the fit, its extrapolation and the Bayes loss; right: training
  curves against compute with the frontier's power law. `fit` is a study_fit result; `other`,
  another (e.g. in the other space), adds its law and prediction on the left."""
  from matplotlib import colormaps   # here, as in reporting.figure: only plotting needs it
  models = sorted(results["models"], key=lambda m: m["non_embedding_params"])
  law, boot, bayes = fit["fit"], fit["bootstrap"], fit["bayes"]["nats"]
  fig = reporting.figure(figsize=(12, 4.6), dpi=120)
  left, right = fig.subplots(1, 2)
  n_all = np.array([m["non_embedding_params"] for m in models], np.float64)
  loss_all = np.array([m["loss"] for m in models])
  trained = np.array([m["name"] in fit["fit_models"] for m in models])
  left.plot(n_all[trained], loss_all[trained], "o", color="C0", label="fitted sizes", zorder=4)
  if (~trained).any():
    left.plot(n_all[~trained], loss_all[~trained], "o", mfc="none", color="C0", ms=8,
              label="held out (measured)", zorder=4)
  n_fit_max = n_all[trained].max()
  inside = np.geomspace(n_all.min(), n_fit_max, 100)
  left.plot(inside, predict(law, inside), color="C1",
            label=f"L∞ + (N₀/N)^α on log{'(L − L∞)' if law['space'] == 'reducible' else ' L'}, "
                  f"α = {law['alpha']:.3f}")
  if n_all.max() > n_fit_max:
    beyond = np.geomspace(n_fit_max, n_all.max(), 50)
    left.plot(beyond, predict(law, beyond), color="C1", ls=":")
  for check in fit["held_out"]:
    lo, hi = check["interval"]
    left.errorbar([check["n"]], [check["predicted"]], fmt="D", color="C1", ms=5, capsize=4,
                  yerr=[[check["predicted"] - lo], [hi - check["predicted"]]],
                  label="prediction (95% bootstrap)" if check is fit["held_out"][0] else None)
  if other is not None:
    law2 = other["fit"]
    left.plot(np.geomspace(n_all.min(), n_all.max(), 100),
              predict(law2, np.geomspace(n_all.min(), n_all.max(), 100)), color="C4", ls="-.",
              label=f"on log L: L∞ = {law2['l_inf']:.3f}, α = {law2['alpha']:.3f}")
  left.axhline(bayes, color="k", ls="--", lw=1, label=f"Bayes loss {bayes:.3f}")
  left.axhline(law["l_inf"], color="C2", lw=1, label=f"L∞ = {law['l_inf']:.3f}")
  lo, hi = boot["l_inf_ci"]
  if hi > lo:
    left.axhspan(lo, hi, color="C2", alpha=0.2, lw=0, label="L∞ 95% bootstrap")
  low = bayes if law["at_bound"] == "lower" else min(bayes, law["l_inf"])   # L∞ = 0 squashes
  high = loss_all.max()
  left.set_ylim(low - 0.15 * (high - low), high + 0.08 * (high - low))   # a wide band runs off
  left.set(xscale="log", xlabel="non-embedding parameters N", ylabel="held-out loss (nats/token)",
           title="loss against size (end of training)")
  left.legend(fontsize=8)
  left.grid(alpha=0.3)

  frontier = fit["frontier"]
  colors = colormaps["viridis"](np.linspace(0.0, 0.85, len(models)))
  for m, color in zip(models, colors):
    tokens = np.asarray(m["curve"]["tokens"], np.float64)
    keep = tokens > 0
    right.plot(6.0 * m["non_embedding_params"] * tokens[keep],
               np.asarray(m["curve"]["loss"])[keep], color=color, lw=1.2, label=m["name"])
  compute = np.asarray(frontier["compute"])
  right.plot(compute, frontier["loss"], color="k", lw=0.8, alpha=0.6, label="frontier")
  fitted = np.geomspace(frontier["fit_from"], compute.max(), 100)
  right.plot(fitted, predict(frontier["fit"], fitted), color="C3", ls="--",
             label=f"L∞ + (C₀/C)^α_C, α_C = {frontier['fit']['alpha']:.3f}")
  right.axhline(bayes, color="k", ls="--", lw=1)
  top = max(max(m["curve"]["loss"]) for m in models) * 1.02
  right.set_ylim(bayes - 0.05 * (top - bayes), top)
  right.set(xscale="log", xlabel="training compute C = 6·N·tokens (FLOPs)",
            ylabel="held-out loss (nats/token)",
            title=f"compute frontier, N_opt ∝ C^{frontier['beta']:.2f} (noisy)")
  right.legend(fontsize=7, ncol=2)
  right.grid(alpha=0.3)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path)
  return fig


def _bound_note(law):
  return {"lower": " (at its lower bound 0: the fitted sizes show no floor)",
          "upper": " (at its upper bound, the lowest loss: the fit is degenerate)",
          None: ""}[law["at_bound"]]


SPACE_NAMES = {"reducible": "least squares on log(L − L∞), the reducible part",
               "total": "least squares on log L"}


def markdown(results: dict, fit: dict, *others: dict) -> str:
  """A per-model table, then for `fit` and each of `others` (study_fit results, e.g. in the
  other space) the law, its intervals, the held-out check and the frontier."""
  bayes = fit["bayes"]["nats"]
  models = sorted(results["models"], key=lambda m: m["non_embedding_params"])
  lines = ["| model | N | best lr | loss | excess over Bayes | |", "|---|---:|---:|---:|---:|---|"]
  for m in models:
    role = "fit" if m["name"] in fit["fit_models"] else "held out"
    edge = " (grid edge)" if m.get("best_at_grid_edge") else ""
    lines.append(f"| {m['name']} | {m['non_embedding_params']:,} | {m['best_lr']:.3g}{edge} | "
                 f"{m['loss']:.4f} | {m['loss'] - bayes:.4f} | {role} |")
  for f in (fit, *others):
    lines += ["", f"Fit by {SPACE_NAMES[f['fit']['space']]}:", *_fit_lines(f)]
  lines.append("- Intervals: paired bootstrap over held-out sequences, i.e. evaluation noise "
               "only, not seed-to-seed training noise")
  return "\n".join(lines)


def _fit_lines(fit: dict) -> list[str]:
  bayes, law, boot = fit["bayes"]["nats"], fit["fit"], fit["bootstrap"]
  lines = []
  if law["fixed_l_inf"]:
    lines.append(f"- L∞ fixed at {law['l_inf']:.4f} (Bayes loss {bayes:.4f})")
  else:
    lo, hi = boot["l_inf_ci"]
    inside = "inside" if fit["bayes"]["in_interval"] else "outside"
    lines.append(f"- L∞ = {law['l_inf']:.4f} [{lo:.4f}, {hi:.4f}]{_bound_note(law)} vs Bayes loss "
                 f"{bayes:.4f}: {100 * fit['bayes']['l_inf_rel_diff']:+.1f}%, Bayes {inside} "
                 f"the interval")
  lo, hi = boot["alpha_ci"]
  lines.append(f"- α = {law['alpha']:.3f} [{lo:.3f}, {hi:.3f}], N₀ = {law['n0']:.3g}, "
               f"log-space residual RMS {law['rms_log']:.3f}")
  lines.append(f"- corr(α, L∞) over {boot['reps']} bootstrap replicates: "
               f"{boot['corr_alpha_l_inf']:+.2f}; {100 * boot['at_bound_fraction']:.0f}% of "
               "replicates put L∞ at a bound")
  for check in fit["held_out"]:
    lo, hi = check["interval"]
    lines.append(f"- {check['name']} (N = {check['n']:,}, held out): predicted "
                 f"{check['predicted']:.4f} [{lo:.4f}, {hi:.4f}] vs measured "
                 f"{check['measured']:.4f}: {100 * check['rel_error']:+.2f}%")
  frontier = fit["frontier"]
  pinned = frontier.get("fit_bayes_floor")
  pinned = f"; α_C = {pinned['alpha']:.3f} with L∞_C fixed at the Bayes loss" if pinned else ""
  lines.append(f"- compute frontier (C ≥ {frontier['fit_from']:.3g} FLOPs): "
               f"α_C = {frontier['fit']['alpha']:.3f}, L∞_C = {frontier['fit']['l_inf']:.4f}"
               f"{_bound_note(frontier['fit'])}{pinned}; N_opt ∝ C^β with "
               f"β = {frontier['beta']:.2f} ({frontier['sizes_on_frontier']} sizes on the frontier)"
               f". Noisy, as is α_C: {frontier['caveat']}")
  return lines
