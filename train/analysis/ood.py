"""Garg et al.'s out-of-distribution prompt suite (2022, §4; their eval.py), for any predictor.

Every setting transforms the inputs of the prompts that `substrax.data.icl.sample` draws from the
same key and relabels them with the same functions, so an error change is due to the inputs alone,
and all settings share their underlying draws (paired comparisons).

Three settings change only the query. As in Garg's eval, the query for the first k points is then
a separate vector: `sample_ood` returns the context ('xs', 'ys') plus 'query_xs' / 'query_ys',
whose entry k is the query for prefix k, and `at_query(prompt, k)` splices it in at position k
(predictions at k see only points before k, so one prompt serves one k).

  standard          the spec's own prompts
  skewed            x = z S with Cov(x) eigenvalues ∝ 1/i^2, E|x|^2 = d (icl "skewed")
  noisy_y           y + N(0, NOISY_Y_STD^2) at every point, the scored targets included
  scale_x_<s>       x -> s x
  orthogonal_query  query k = x_k minus its projection on span(x_0..x_{k-1}), norm kept
                    (Garg's orthogonal_train_test; defined for k < d only)
  query_in_span     query k = a copy of a uniformly drawn earlier x_j, j < k (Garg's
                    overlapping_train_test)
  half_subspace     x = sqrt(d / (d//2)) z P, P the projection on a random d//2-dim subspace
                    drawn per prompt (Garg draws one per evaluation), so E|x|^2 = d
  orthants          in-context x_i = |x_i| * s with one random sign pattern s per prompt; the
                    query is the unrestricted x_k (Garg's random_quadrants)
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from substrax.data import icl
from substrax.train.analysis.reporting import bootstrap_mean, figure, plot

SETTINGS = ("standard", "skewed", "noisy_y", "scale_x_0.5", "scale_x_2", "scale_x_3",
            "orthogonal_query", "query_in_span", "half_subspace", "orthants")
QUERY_SETTINGS = ("orthogonal_query", "query_in_span", "orthants")
# Garg's noisyLR uses std 1 and then rescales y to std sqrt(d); we keep y unscaled, so with
# x, w ~ N(0, I) the Bayes error is 1/d and the zero predictor's (d + 1)/d in normalised units.
NOISY_Y_STD = 1.0


def _orthogonal_queries(xs):
  """Query k = x_k off span(x_<k), rescaled to |x_k|; x_k itself once k >= d (span is R^d)."""
  n, d = xs.shape[1:]
  q, _ = jnp.linalg.qr(jnp.swapaxes(xs, 1, 2))            # [B, d, min(d, n)]; Gram-Schmidt
  earlier = jnp.arange(q.shape[-1])[None, :] < jnp.arange(n)[:, None]   # [k, j]: q_j spans x_<k
  coef = jnp.einsum("bkd,bdj->bkj", xs, q) * earlier
  r = xs - jnp.einsum("bkj,bdj->bkd", coef, q)
  norm = jnp.linalg.norm(xs, axis=-1, keepdims=True)
  r = r * norm / jnp.maximum(jnp.linalg.norm(r, axis=-1, keepdims=True), 1e-30)
  return jnp.where((jnp.arange(n) < d)[:, None], r, xs)


def sample_ood(spec: icl.Spec, setting: str, key, batch_size: int):
  """Prompts of one setting: {'xs', 'ys'} (+ 'query_xs' [B, n, d], 'query_ys' [B, n])."""
  base = icl.sample(spec, key, batch_size)
  kt = jax.random.fold_in(key, 1)   # the transform's randomness; `key` still picks the functions
  d = spec.n_dims

  def relabel(xs):
    return icl.sample(spec, key, batch_size, xs=xs)["ys"]

  def prompt(xs, query_xs=None):
    out = {"xs": xs, "ys": relabel(xs)}
    if query_xs is not None:
      out.update(query_xs=query_xs, query_ys=relabel(query_xs))
    return out

  if setting == "standard":
    return {"xs": base["xs"], "ys": base["ys"]}
  if setting == "noisy_y":
    noise = NOISY_Y_STD * jax.random.normal(kt, base["ys"].shape)
    return {"xs": base["xs"], "ys": base["ys"] + noise}
  if setting.startswith("scale_x_"):
    return prompt(float(setting.removeprefix("scale_x_")) * base["xs"])
  if setting in ("skewed", "half_subspace"):
    # These replace Cov(x): start again from the z ~ N(0, I) behind the standard prompts.
    iso = icl.Spec("linear", d, spec.n_points)
    z = icl.sample(iso, key, batch_size)["xs"]
    if setting == "skewed":
      return prompt(z @ icl.covariance_root(dataclasses.replace(iso, covariance="skewed")))
    u = jax.random.orthogonal(kt, d, (batch_size,))[..., :d // 2]   # [B, d, d//2] orthonormal
    return prompt(jnp.einsum("bnd,bdm,bfm->bnf", z, u, u) * jnp.sqrt(d / (d // 2)))
  if setting == "orthogonal_query":
    return prompt(base["xs"], _orthogonal_queries(base["xs"]))
  if setting == "query_in_span":
    k = jnp.arange(spec.n_points)
    j = jnp.minimum(jnp.floor(jax.random.uniform(kt, (batch_size, spec.n_points)) * k),
                    jnp.maximum(k - 1, 0)).astype(jnp.int32)   # k = 0 has no context: x_0
    return prompt(base["xs"], jnp.take_along_axis(base["xs"], j[..., None], axis=1))
  if setting == "orthants":
    signs = jnp.where(jax.random.bernoulli(kt, shape=(batch_size, 1, d)), 1.0, -1.0)
    return prompt(jnp.abs(base["xs"]) * signs, base["xs"])
  raise ValueError(f"unknown OOD setting {setting!r}; choose one of {', '.join(SETTINGS)}")


def at_query(prompt, k):
  """{'xs', 'ys'} with point k (an int or a traced int) replaced by the setting's query for the
  first k points."""
  if "query_xs" not in prompt:
    return {"xs": prompt["xs"], "ys": prompt["ys"]}
  at_k = jnp.arange(prompt["ys"].shape[1]) == k
  return {"xs": jnp.where(at_k[:, None], prompt["query_xs"], prompt["xs"]),
          "ys": jnp.where(at_k, prompt["query_ys"], prompt["ys"])}


def _scored_ks(spec: icl.Spec, setting: str):
  """(last prefix, k = d), clipped where a setting is undefined (orthogonal queries need k < d)."""
  n, d = spec.n_points, spec.n_dims
  ks = (n - 1, min(d, n - 1))
  return tuple(min(k, d - 1) for k in ks) if setting == "orthogonal_query" else ks


def _errors(spec: icl.Spec, predictor, prompt, ks):
  """Normalised squared error [B, len(ks)] of the prediction for point k of each prompt. `ks`
  is an array, not a static argument, so settings that differ only in k share a compile."""
  if "query_xs" not in prompt:
    preds = predictor(prompt["xs"], prompt["ys"])
    return ((preds - prompt["ys"])[:, ks] ** 2) / spec.normalizer
  cols = []
  for k in ks:   # one prompt per k: its query sits at position k
    p = at_query(prompt, k)
    cols.append((predictor(p["xs"], p["ys"])[:, k] - p["ys"][:, k]) ** 2)
  return jnp.stack(cols, -1) / spec.normalizer


def ood_report(predictors: dict, spec: icl.Spec, key, num_prompts: int, batch_size: int, *,
               n_boot: int = 1000) -> dict:
  """Error of each predictor (xs, ys) -> preds [B, n] in every setting, at k = n-1 and k = d.

  Predictors are jitted here (one at a time, each waited for: see models/baselines.py on
  LAPACK). Every setting sees the same keys. Returns {'settings': {setting: {'k': [k_last, k_d],
  'models': {name: {'mean': [2], 'ci95': [[lo, hi], [lo, hi]]}}}}, ...}.
  """
  if spec.is_classification:
    raise ValueError("the OOD suite scores squared error; linear_classification has none")
  n_batches = -(-num_prompts // batch_size)
  keys = [jax.random.fold_in(key, i) for i in range(n_batches)]
  sampler = jax.jit(sample_ood, static_argnums=(0, 1, 3))
  errors = {name: jax.jit(functools.partial(_errors, spec, fn)) for name, fn in predictors.items()}
  settings = {}
  for setting in SETTINGS:
    ks = np.asarray(_scored_ks(spec, setting))
    # Waited for one by one too: the queries' QR is a LAPACK call.
    prompts = [jax.block_until_ready(sampler(spec, setting, k, batch_size)) for k in keys]
    models = {}
    for name, fn in errors.items():
      err = np.concatenate([jax.device_get(fn(p, ks)) for p in prompts])[:num_prompts]
      mean, ci = bootstrap_mean(err, n_boot)
      models[name] = {"mean": mean.tolist(), "ci95": ci.tolist()}
    settings[setting] = {"k": ks.tolist(), "models": models}
  return {"function_class": spec.function_class, "n_dims": spec.n_dims,
          "n_points": spec.n_points, "metric": spec.metric, "num_prompts": int(num_prompts),
          "noisy_y_std": NOISY_Y_STD, "settings": settings}


def format_ood_table(report: dict) -> str:
  """Markdown: one row per setting, one column per predictor, error at the last prefix."""
  names = list(next(iter(report["settings"].values()))["models"])
  last = report["n_points"] - 1
  lines = [f"{report['metric']} at k = {last} in-context examples, mean [95% bootstrap CI], "
           f"{report['num_prompts']} prompts", "",
           "| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for setting, entry in report["settings"].items():
    k = entry["k"][0]
    label = setting if k == last else f"{setting} (k = {k})"
    cells = [f"{m['mean'][0]:.3f} [{m['ci95'][0][0]:.3f}, {m['ci95'][0][1]:.3f}]"
             for m in entry["models"].values()]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


@plot
def plot_ood(path: str, report: dict):
  """Grouped bars with 95% intervals: settings across, one bar per predictor; k = n-1 and k = d."""
  settings = list(report["settings"])
  names = list(report["settings"][settings[0]]["models"])
  fig = figure(figsize=(1.0 * len(settings) + 3.0, 6.4), dpi=120)
  axes = fig.subplots(2, 1, sharex=True)
  width = 0.8 / len(names)
  x = np.arange(len(settings))
  for row, (ax, which) in enumerate(zip(axes, ("last prefix", "k = d"))):
    for i, name in enumerate(names):
      ms = [report["settings"][s]["models"][name] for s in settings]
      mean = np.array([m["mean"][row] for m in ms])
      ci = np.array([m["ci95"][row] for m in ms])
      err = np.clip(np.stack([mean - ci[:, 0], ci[:, 1] - mean]), 0, None)
      ax.bar(x + (i - (len(names) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
             label=name)
    # Errors span 0 (least squares) to ~d-scaled multiples (scaled x): linear near 0, log above.
    ax.set_yscale("symlog", linthresh=0.05)
    ax.set(ylabel=f"{report['metric']} ({which})")
    ax.grid(alpha=0.3, axis="y")
  ks = [report["settings"][s]["k"] for s in settings]
  axes[-1].set_xticks(x, [f"{s}\nk={a},{b}" for s, (a, b) in zip(settings, ks)], rotation=30,
                      ha="right", fontsize=7)
  axes[0].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
  axes[0].set_title(f"{report['function_class']}, d={report['n_dims']}: out-of-distribution "
                    f"prompts ({report['num_prompts']} each)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, bbox_inches="tight")
