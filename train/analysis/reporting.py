"""Shared pieces of evaluators: bootstrap intervals, JSON, curve plots and console tables."""
import contextlib
import contextvars
import functools
import json
import os

import numpy as np

_PLOTS = contextvars.ContextVar("plots", default=True)


@contextlib.contextmanager
def plots(enabled: bool):
  """Inside it, the functions marked @plot draw only if `enabled` (the trainer's evaluations
  run inside it with config.plots)."""
  token = _PLOTS.set(enabled)
  try:
    yield
  finally:
    _PLOTS.reset(token)


def plot(draw):
  """Marks a function that draws a figure into a file: where plots are off (see `plots`) it
  returns None without drawing, and a process that never draws never imports matplotlib."""
  @functools.wraps(draw)
  def maybe_draw(*args, **kwargs):
    return draw(*args, **kwargs) if _PLOTS.get() else None
  return maybe_draw


def figure(**kwargs):
  """A matplotlib Figure. Not pyplot, so figures render without touching the backend; and
  imported here, on first use, so a process that never plots (a bad config, substrax-inspect, a
  run stopped before its evaluation) skips matplotlib's import (0.66 s on a 2-core host)."""
  from matplotlib.figure import Figure
  return Figure(**kwargs)


def bootstrap_mean(errors: np.ndarray, n_boot: int, seed: int = 0):
  """errors [n_samples, n_points] -> (mean [n_points], 95% interval [n_points, 2])."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, errors.shape[0], size=(n_boot, errors.shape[0]))
  means = np.stack([errors[i].mean(0) for i in idx])
  return errors.mean(0), np.stack(np.percentile(means, [2.5, 97.5], axis=0), axis=-1)


def interval(cell: dict, digits: int = 3) -> str:
  """A {"mean", "ci95": [lo, hi]} cell as 'mean [lo, hi]'."""
  lo, hi = cell["ci95"]
  return f"{cell['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def paired_ratio(a, b, n_boot: int, seed: int = 0):
  """mean(a) / mean(b) over paired samples [N], with a 95% bootstrap interval that resamples
  the pairs together (b's mean must be positive; a resample whose b sums to 0 is dropped)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
  den = b[idx].mean(1)
  ratios = a[idx].mean(1)[den > 0] / den[den > 0]
  return float(a.mean() / b.mean()), np.percentile(ratios, [2.5, 97.5]).tolist()


def write_json(path: str, payload: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1)


def read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


@plot
def plot_curves(path: str, x, curves: dict, *, xlabel: str, ylabel: str, title: str,
                highlight: str | None = None, ylim=None):
  """One line per entry of curves {name: {'mean': [...], 'ci95': [[lo, hi], ...]}} with bands."""
  fig = figure(figsize=(7.6, 4.2), dpi=120)
  ax = fig.subplots()
  for name, c in curves.items():
    mean, ci = np.asarray(c["mean"]), np.asarray(c["ci95"])
    main = name == highlight
    line, = ax.plot(x, mean, lw=2.5 if main else 1.3, ls="-" if main else "--", label=name,
                    zorder=3 if main else 2)
    ax.fill_between(x, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.2, lw=0)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(path)


def format_table(columns, rows: dict, *, first: str = "model") -> str:
  """Rows {name: [values per column]} as a fixed-width text table; numbers get 3 decimals,
  strings are printed as they are."""
  names = [first, *[str(c) for c in columns]]
  width = max(len(first), *(len(r) for r in rows)) + 1
  col = max(8, *(len(c) + 1 for c in names[1:]))
  lines = [f"{names[0]:<{width}}" + "".join(f"{c:>{col}}" for c in names[1:])]
  for name, values in rows.items():
    lines.append(f"{name:<{width}}" + "".join(
        f"{v:>{col}}" if isinstance(v, str) else f"{v:{col}.3f}" for v in values))
  return "\n".join(lines)


@plot
def plot_confusion(path: str, confusion: np.ndarray, *, title: str):
  """Row-normalised confusion matrix (true class down, predicted class across)."""
  rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  n = len(confusion)
  fig = figure(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n), dpi=120)
  ax = fig.subplots()
  im = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
  ax.set(xlabel="predicted", ylabel="true", xticks=range(n), yticks=range(n))
  ax.set_title(title, fontsize=7)
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path)
