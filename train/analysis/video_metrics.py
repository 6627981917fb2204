"""Honest rollout metrics for video world models: pixels, SSIM variants, latents, rollouts.

Frames are [B, T, H, W, C] or [B, H, W, C] in [0, 1]; every per-frame metric returns one value
per frame, shape frames.shape[:-3], so callers choose how to average. Definitions follow
docs/fluidworld.md §4; the FluidWorld paper's own (buggy or non-standard) variants are kept
under `paper_*` / `box3` names so its numbers can be reproduced next to the correct ones.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from substrax.train.analysis.reporting import bootstrap_mean, figure, plot

SSIM_VARIANTS = ("gaussian", "uniform7", "box3")
# Floor on the per-frame MSE inside PSNR, so a perfect frame scores 100 dB rather than inf.
PSNR_MSE_FLOOR = 1e-10


def _clip(pred, target):
  return jnp.clip(pred, 0.0, 1.0), jnp.clip(target, 0.0, 1.0)


# ----------------------------------------------------------------------------- pixel metrics


def mse_px(pred, target):
  """Per-frame mean squared error over (H, W, C)."""
  pred, target = _clip(pred, target)
  return jnp.mean((pred - target) ** 2, axis=(-3, -2, -1))


def mse_frame(pred, target):
  """Per-frame sum of squared errors over (H, W, C) = H·W·C·mse_px (OpenSTL's "MSE")."""
  pred, target = _clip(pred, target)
  return jnp.sum((pred - target) ** 2, axis=(-3, -2, -1))


def mae_px(pred, target):
  """Per-frame mean absolute error over (H, W, C)."""
  pred, target = _clip(pred, target)
  return jnp.mean(jnp.abs(pred - target), axis=(-3, -2, -1))


def mae_frame(pred, target):
  """Per-frame sum of absolute errors over (H, W, C) (OpenSTL's "MAE")."""
  pred, target = _clip(pred, target)
  return jnp.sum(jnp.abs(pred - target), axis=(-3, -2, -1))


def psnr(pred, target):
  """Per-frame −10·log10(mse_px) for data range 1; averaging frames is the caller's job.

  The MSE is floored at PSNR_MSE_FLOOR (100 dB) so identical frames stay finite.
  """
  return -10.0 * jnp.log10(jnp.maximum(mse_px(pred, target), PSNR_MSE_FLOOR))


# ---------------------------------------------------------------------------------- SSIM


def _ssim_window(variant: str):
  """(kernel [k, k], zero padding per side, covariance factor, C1, C2) of a variant."""
  c1, c2 = 0.01 ** 2, 0.03 ** 2   # K1 = 0.01, K2 = 0.03, data range 1
  if variant == "gaussian":
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    return np.outer(g, g), 0, 1.0, c1, c2
  if variant == "uniform7":
    n = 49
    return np.full((7, 7), 1.0 / n), 0, n / (n - 1.0), c1, c2
  if variant == "box3":
    # torch avg_pool2d(3, 1, 1) counts the zero padding, so borders are plain /9 sums.
    return np.full((3, 3), 1.0 / 9.0), 1, 1.0, 1e-4, 9e-4
  raise ValueError(f"unknown SSIM variant {variant!r}; expected one of {SSIM_VARIANTS}")


@functools.partial(jax.jit, static_argnames="variant")
def ssim(pred, target, variant: str = "gaussian"):
  """Per-frame SSIM, mean over the SSIM map and then over channels.

  With μ, σ², σ_xy local weighted moments (σ² = E_w[x²] − μ², times the covariance factor):
  SSIM = (2μ_xμ_y + C1)(2σ_xy + C2) / ((μ_x² + μ_y² + C1)(σ_x² + σ_y² + C2)).

  Variants:
    gaussian: 11×11 Gaussian window, σ = 1.5 (normalised to sum 1), K1 = 0.01, K2 = 0.03,
      data range 1, population moments, valid region only (Wang et al. 2004; equals skimage
      with gaussian_weights=True, use_sample_covariance=False, data_range=1).
    uniform7: 7×7 uniform window, sample covariance (factor N/(N−1), N = 49), K1 = 0.01,
      K2 = 0.03, data range 1, valid region only (skimage's defaults; what OpenSTL reports).
    box3: FluidWorld's 3×3 box, avg_pool2d(3, stride 1, padding 1) with zero padding counted
      (so border windows see zeros), population moments, C1 = 1e-4, C2 = 9e-4, mean over the
      full H×W map. Only for comparison with the paper.
  """
  pred, target = _clip(pred, target)
  kernel, pad, cov_norm, c1, c2 = _ssim_window(variant)
  lead, (h, w, c) = pred.shape[:-3], pred.shape[-3:]
  if min(h, w) + 2 * pad < kernel.shape[0]:
    raise ValueError(f"frames {h}x{w} are smaller than the {variant} SSIM window")
  # Channels go into the batch so one single-channel convolution filters every moment.
  x = jnp.moveaxis(pred.reshape(-1, h, w, c), -1, 1).reshape(-1, h, w, 1)
  y = jnp.moveaxis(target.reshape(-1, h, w, c), -1, 1).reshape(-1, h, w, 1)
  moments = jax.lax.conv_general_dilated(
      jnp.concatenate([x, y, x * x, y * y, x * y]), jnp.asarray(kernel, x.dtype)[..., None, None],
      window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  mx, my, mxx, myy, mxy = jnp.split(moments, 5)
  vx, vy, vxy = (cov_norm * (mxx - mx * mx), cov_norm * (myy - my * my),
                 cov_norm * (mxy - mx * my))
  smap = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  per_channel = smap.reshape(-1, c, smap.shape[1] * smap.shape[2]).mean(-1)
  return per_channel.mean(-1).reshape(lead)


@jax.jit
def frame_metrics(pred, target) -> dict:
  """Every pixel metric and SSIM variant per frame: {name: frames.shape[:-3]}."""
  out = {"mse_px": mse_px(pred, target), "mse_frame": mse_frame(pred, target),
         "mae_px": mae_px(pred, target), "mae_frame": mae_frame(pred, target),
         "psnr": psnr(pred, target)}
  for variant in SSIM_VARIANTS:
    out[f"ssim_{variant}"] = ssim(pred, target, variant)
  return out


# -------------------------------------------------------------------------------- latents


def _rows(features):
  """[..., C] -> centred (N, C) matrix, rows = every position of every sample."""
  x = features.reshape(-1, features.shape[-1]).astype(jnp.float32)
  return x - x.mean(0)


def _entropy_exp(weights):
  """exp of the Shannon entropy of weights normalised to sum 1 (zeros contribute 0)."""
  p = weights / jnp.sum(weights)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def effective_rank(features):
  """Roy & Vetterli (2007) effective rank of features [B, H, W, C], bounded by C.

  X = features as a (B·H·W, C) matrix, column-centred; σ = singular values of X;
  p = σ / Σσ; eRank = exp(−Σ p log p).
  """
  return _entropy_exp(jnp.linalg.svd(_rows(features), compute_uv=False))


def participation_ratio(features):
  """(Σλ)² / Σλ² with λ the eigenvalues of the channel covariance of features [B, H, W, C].

  λ ∝ σ² of the centred (B·H·W, C) matrix; the 1/(N−1) factor cancels.
  """
  lam = jnp.linalg.svd(_rows(features), compute_uv=False) ** 2
  return jnp.sum(lam) ** 2 / jnp.sum(lam ** 2)


def spatial_variation(features):
  """Scale-free spatial variation of features [B, H, W, C].

  std over (H, W) per (sample, channel), averaged over (B, C), divided by the std over all of
  (B, H, W, C); both population stds. FluidWorld's "Spatial Std" is the numerator alone, which
  any rescaling of the features (its norm layers, its variance loss) changes.
  """
  x = features.astype(jnp.float32)
  return jnp.std(x, axis=(1, 2)).mean() / jnp.std(x)


def dead_channels(features, threshold: float = 0.1):
  """Number of channels of features [B, H, W, C] whose std over (B, H, W) < threshold·scale.

  Standardisation, one scale per model: scale = sqrt(mean over channels of the per-channel
  variance), the pooled within-channel std. So the count is invariant to rescaling the
  features and to per-channel offsets (a constant channel is dead whatever its bias), and
  "dead" means less than `threshold` of the model's typical channel spread. FluidWorld counts
  (C, H, W) elements with batch-std < 0.1 on raw features instead.
  """
  std = jnp.std(features.reshape(-1, features.shape[-1]).astype(jnp.float32), axis=0)
  scale = jnp.sqrt(jnp.mean(std ** 2))
  return jnp.sum(std < threshold * scale)


def paper_effective_rank(features):
  """FluidWorld's "effective rank" (reproduced bug), for regression comparison only.

  features [B, H, W, C] are centred over B, then every (sample, channel) H×W map gets its own
  SVD (torch svdvals on the 4-D [B, C, H, W] tensor), and all B·C·min(H, W) singular values are
  pooled into one entropy. It is bounded by B·C·min(H, W), not C, and barely sees channel rank.
  """
  x = features.astype(jnp.float32)
  x = jnp.moveaxis(x - x.mean(0), -1, 1)
  return _entropy_exp(jnp.linalg.svd(x, compute_uv=False).reshape(-1))


# ------------------------------------------------------------------------ rollout statistics


def step_curve(per_sequence, n_boot: int = 1000, seed: int = 0) -> dict:
  """per_sequence [N, T] -> {'mean': [T], 'ci95': [T, 2]}: bootstrap over sequences."""
  mean, ci = bootstrap_mean(np.asarray(per_sequence, np.float64), n_boot, seed)
  return {"mean": mean.tolist(), "ci95": ci.tolist()}


def scalar_interval(per_sequence, n_boot: int = 1000, seed: int = 0) -> dict:
  """per_sequence [N] -> {'mean': float, 'ci95': [lo, hi]}: bootstrap over sequences."""
  mean, ci = bootstrap_mean(np.asarray(per_sequence, np.float64)[:, None], n_boot, seed)
  return {"mean": float(mean[0]), "ci95": ci[0].tolist()}


def paired_difference(a, b, n_boot: int = 1000, seed: int = 0) -> dict:
  """Paired bootstrap of a − b over sequences; a, b are [N] or [N, T] on the same sequences.

  Resampling the per-sequence differences resamples both models' sequences together, so the
  shared difficulty of a sequence cancels. 'excludes_zero' is per point.
  """
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  scalar = d.ndim == 1
  mean, ci = bootstrap_mean(d[:, None] if scalar else d, n_boot, seed)
  excludes = (ci[:, 0] > 0) | (ci[:, 1] < 0)
  if scalar:
    return {"mean": float(mean[0]), "ci95": ci[0].tolist(), "excludes_zero": bool(excludes[0])}
  return {"mean": mean.tolist(), "ci95": ci.tolist(), "excludes_zero": excludes.tolist()}


def curve_area(curve, steps=None):
  """Normalised area under a metric-vs-h curve: trapezoid over steps / (steps[-1] − steps[0]).

  curve [..., T] (a mean curve or per-sequence curves [N, T]); steps default to 1..T. The
  normalisation makes it the curve's average height, comparable across horizons; T = 1 gives
  the single value.
  """
  curve = np.asarray(curve, np.float64)
  if curve.shape[-1] == 1:
    return curve[..., 0]
  steps = np.arange(1, curve.shape[-1] + 1) if steps is None else np.asarray(steps, np.float64)
  return np.trapezoid(curve, steps, axis=-1) / (steps[-1] - steps[0])


def coherence_horizon(model_error, *baseline_errors, steps=None):
  """First step h at which the model's mean error exceeds any baseline's; None if never.

  model_error and each baseline are mean curves [T] (e.g. per-step MSE of the model, the zero
  predictor and the copy-last predictor), compared on the same steps (default 1..T). Exceeding
  either baseline ends coherence, i.e. the floor is the elementwise best trivial predictor.
  """
  model_error = np.asarray(model_error, np.float64)
  floor = np.min(np.stack([np.asarray(b, np.float64) for b in baseline_errors]), axis=0)
  steps = np.arange(1, model_error.shape[-1] + 1) if steps is None else np.asarray(steps)
  worse = np.flatnonzero(model_error > floor)
  return None if worse.size == 0 else int(steps[worse[0]])


def recovery_statistic(curve):
  """Largest rise of a higher-is-better curve over its own earlier minimum, per sequence.

  curve [..., T] (e.g. per-sequence SSIM vs h) -> max over h ≥ 2 of (s(h) − min_{h' < h} s(h')),
  floored at 0 (0 for monotone decreasing curves and for T = 1). It is ≥ 0 by construction and
  positive for noise alone, so only differences between models (and trivial predictors,
  computed identically on the same sequences) are meaningful, never the value against 0.
  """
  s = np.asarray(curve, np.float64)
  if s.shape[-1] < 2:
    return np.zeros(s.shape[:-1])
  earlier_min = np.minimum.accumulate(s, axis=-1)[..., :-1]
  return np.maximum((s[..., 1:] - earlier_min).max(-1), 0.0)


def paper_recovery(curve):
  """FluidWorld's "recovery": max of s after its per-rollout argmin, minus that min (0 if the
  minimum is the last step). Reproduced for comparison; biased ≥ 0 like recovery_statistic."""
  s = np.asarray(curve, np.float64)
  t = np.arange(s.shape[-1])
  argmin = s.argmin(-1)[..., None]
  after = np.where(t > argmin, s, -np.inf).max(-1)
  return np.where(np.isfinite(after), after - s.min(-1), 0.0)


# ------------------------------------------------------------------------------- assembly


def trivial_predictions(context, horizon: int) -> dict:
  """Trivial predictors from context [B, Tc, H, W, C]: {name: [B, horizon, H, W, C]}.

  zero: all-black frames; copy_last: the last context frame repeated; context_mean: the mean
  context frame repeated.
  """
  context = jnp.clip(jnp.asarray(context, jnp.float32), 0.0, 1.0)
  tile = lambda frame: jnp.repeat(frame[:, None], horizon, axis=1)
  return {"zero": tile(jnp.zeros_like(context[:, -1])), "copy_last": tile(context[:, -1]),
          "context_mean": tile(context.mean(1))}


def per_sequence_metrics(pred, target, batch_size: int = 64) -> dict:
  """frame_metrics over [N, T, H, W, C] rollouts in chunks: {name: np.ndarray [N, T]}."""
  chunks = [frame_metrics(jnp.asarray(pred[i:i + batch_size], jnp.float32),
                          jnp.asarray(target[i:i + batch_size], jnp.float32))
            for i in range(0, len(target), batch_size)]
  return {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}


def rollout_report(target, predictions: dict, *,
                   trivial=("zero", "copy_last", "context_mean"), floors=("zero", "copy_last"),
                   n_boot: int = 1000, seed: int = 0, batch_size: int = 64) -> dict:
  """Per-step metrics with 95 % bootstrap intervals for several predictors, JSON-ready.

  target [N, T, H, W, C]; predictions {name: [N, T, H, W, C]}, with the names in `trivial`
  marking trivial predictors (see trivial_predictions). For each predictor: per-step curves
  and step-averaged values of every metric, SSIM areas and recovery statistics (both
  definitions) per variant. For each non-trivial predictor additionally: the coherence
  horizon on mse_px against the `floors` predictors present, and the paired difference of its
  step-averaged mse_px against each trivial predictor present (negative = model better).
  """
  steps = list(range(1, target.shape[1] + 1))
  per_seq = {name: per_sequence_metrics(p, target, batch_size) for name, p in predictions.items()}
  floor_curves = [per_seq[f]["mse_px"].mean(0) for f in floors if f in per_seq]
  report = {"steps": steps, "n_sequences": int(target.shape[0]), "trivial": list(trivial),
            "floors": list(floors), "predictors": {}}
  for name, metrics in per_seq.items():
    entry = {"trivial": name in trivial,
             "per_step": {k: step_curve(v, n_boot, seed) for k, v in metrics.items()},
             "average": {k: scalar_interval(v.mean(1), n_boot, seed) for k, v in metrics.items()}}
    for variant in SSIM_VARIANTS:
      s = metrics[f"ssim_{variant}"]
      entry[f"ssim_{variant}_area"] = scalar_interval(curve_area(s), n_boot, seed)
      entry[f"ssim_{variant}_recovery"] = scalar_interval(recovery_statistic(s), n_boot, seed)
      entry[f"ssim_{variant}_paper_recovery"] = scalar_interval(paper_recovery(s), n_boot, seed)
    if name not in trivial and floor_curves:
      entry["coherence_horizon_mse"] = coherence_horizon(metrics["mse_px"].mean(0),
                                                         *floor_curves)
      entry["mse_px_minus_trivial"] = {
          t: paired_difference(metrics["mse_px"].mean(1), per_seq[t]["mse_px"].mean(1),
                               n_boot, seed)
          for t in trivial if t in per_seq}
    report["predictors"][name] = entry
  return report


# ---------------------------------------------------------------------------------- plots


@plot
def plot_rollout_curves(path: str, report: dict, metrics=("mse_px", "ssim_gaussian"), *,
                        title: str = ""):
  """One panel per metric: per-step mean with 95 % band per predictor, trivial ones dashed."""
  steps = report["steps"]
  fig = figure(figsize=(4.2 * len(metrics) + 1.6, 3.8), dpi=120)
  axes = np.atleast_1d(fig.subplots(1, len(metrics)))
  for ax, metric in zip(axes, metrics):
    for name, entry in report["predictors"].items():
      c = entry["per_step"][metric]
      mean, ci = np.asarray(c["mean"]), np.asarray(c["ci95"])
      trivial = entry["trivial"]
      line, = ax.plot(steps, mean, ls="--" if trivial else "-", lw=1.2 if trivial else 2.0,
                      label=name, zorder=2 if trivial else 3)
      ax.fill_between(steps, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.2, lw=0)
    ax.set(xlabel="rollout step h", ylabel=metric)
    ax.grid(alpha=0.3)
  axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, bbox_inches="tight")   # keeps the outside legend whole


@plot
def plot_frame_strip(path: str, context, target, rollouts: dict, max_frames: int = 10):
  """One sequence as a grid: rows context, ground truth, then each rollout; frames [T, H, W, C].

  At most max_frames columns (the first ones); C = 1 is drawn in grayscale.
  """
  rows = [("context", context), ("ground truth", target), *rollouts.items()]
  cols = min(max_frames, max(len(f) for _, f in rows))
  fig = figure(figsize=(0.9 * cols + 1.2, 0.95 * len(rows)), dpi=120)
  axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
  for r, (name, frames) in enumerate(rows):
    frames = np.clip(np.asarray(frames, np.float32), 0.0, 1.0)
    for t in range(cols):
      ax = axes[r, t]
      ax.set_xticks([])
      ax.set_yticks([])
      if t < len(frames):
        img = frames[t]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
      else:
        ax.axis("off")
      if t == 0:
        ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
  fig.subplots_adjust(left=0.14, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
  fig.savefig(path)
