"""In-context softmax regression against one gradient-descent step (Li, Song, Xia, Yu, Zhou
2023, arXiv 2304.13276); the equations are in train/analysis/softmax_regression.py.

  python benchmarks/softmax_regression.py --preset=cpu      # ~2 min on a 2-core CPU host
  python benchmarks/softmax_regression.py --preset=gpu --out=runs/softmax_regression_gpu

Part A: for each (n, d) of the preset, one softmax self-attention layer (PromptRegressor) is
trained in context with Adam on fresh prompts, its seeds together under one jax.vmap, to
minimise L(x_hat) = 1/2 ||softmax(A x_hat) - b||^2. On held-out prompts (fixed keys) its x_hat
is compared with one GD step x1 from 0 at the step size eta* that minimises the mean L(x1) on
separate tuning prompts: the cosine between x_hat and x1, between their centred predictions
f - 1/n on a fresh A' of the same task and on the prompt's A, their errors against f(A', x*),
and the losses L(x_hat), L(x1), L(0). The same layer at its initialisation is the control.
Means over prompts of the seed-averaged figures, with 95% bootstrap intervals over prompts.

Part B: the Lipschitz constants of the weight map x -> f(A, x) and the data map A -> f(A, x)
on ||A||_2 <= R, ||x||_2 <= R, estimated from below (random points, then projected ascent on
the Jacobian's spectral norm), against R / 2 (an exact upper bound) and the paper's
M = n^1.5 exp(10 R^2); and the shifts ||f(A, x) - f(A, 0)|| that the trained layer and the GD
step make on the held-out prompts, next to the two bounds times ||x||.

Prints the tables and writes OUT/softmax_regression.json and OUT/softmax_regression.png.
"""
import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from matplotlib.figure import Figure

import study
from substrax.train.analysis import reporting
from substrax.train.analysis.reporting import interval
from substrax.train.analysis import softmax_regression as sr

PRESETS = {
    "tiny": dict(settings=((8, 4),), seeds=(0, 1, 2), steps=300, batch=32, learning_rate=1e-2,
                 model=dict(width=16, num_heads=2, head_dim=8), scale=1.0, tune_prompts=512,
                 eval_prompts=256, bootstrap=200,
                 lipschitz=dict(ns=(8,), radii=(0.5, 2.0), d=4, points=64, starts=4, steps=20)),
    "cpu": dict(settings=((8, 4), (16, 8), (32, 8)), seeds=(0, 1, 2), steps=3000, batch=64,
                learning_rate=3e-3, model=dict(width=32, num_heads=4, head_dim=8), scale=1.0,
                tune_prompts=4096, eval_prompts=2048, bootstrap=1000,
                lipschitz=dict(ns=(8, 16, 32, 64), radii=(0.5, 1.0, 2.0), d=8, points=512,
                               starts=32, steps=300)),
    "gpu": dict(settings=((16, 8), (64, 16), (128, 32)), seeds=(0, 1, 2), steps=20000,
                batch=256, learning_rate=3e-3, model=dict(width=64, num_heads=8, head_dim=16),
                scale=1.0, tune_prompts=16384, eval_prompts=8192, bootstrap=1000,
                lipschitz=dict(ns=(8, 16, 32, 64), radii=(0.5, 1.0, 2.0), d=8, points=4096,
                               starts=64, steps=1000)),
}
# Fixed keys: every preset and seed is tuned and evaluated on the same prompts of each shape.
TUNE_KEY, EVAL_KEY, QUERY_KEY, LIPSCHITZ_KEY = 1000, 2000, 3000, 4000
CURVE_POINTS = 50   # training-loss curve kept in the JSON, as window means

flags.DEFINE_enum("preset", "cpu", list(PRESETS), "Sizes of the study (tiny: the tests').")
flags.DEFINE_string("out", "runs/softmax_regression", "Where the JSON and the plot go.")
FLAGS = flags.FLAGS


def summarise(per_prompt: dict, boot: int) -> dict:
  """{name: [seeds, prompts] or [prompts]} -> {name: {mean, ci95[, seeds]}}: the interval is a
  bootstrap over prompts of the seed-averaged figure; `seeds` holds each seed's mean."""
  values = {k: np.asarray(v, np.float64) for k, v in per_prompt.items()}
  pooled = np.stack([v.mean(0) if v.ndim == 2 else v for v in values.values()], axis=1)
  mean, ci = reporting.bootstrap_mean(pooled, boot)
  out = {}
  for i, (k, v) in enumerate(values.items()):
    out[k] = {"mean": float(mean[i]), "ci95": ci[i].tolist()}
    if v.ndim == 2:
      out[k]["seeds"] = v.mean(1).tolist()
  return out


def setting_study(n: int, d: int, p: dict) -> tuple[dict, dict]:
  """Part A and the measured shifts for one (n, d): (the JSON entry, arrays for the plot)."""
  start = time.perf_counter()
  model = sr.PromptRegressor(**p["model"])
  seeds = jnp.asarray(p["seeds"])
  keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i), (0, None))
  initial = jax.jit(jax.vmap(lambda k: sr.init_params(model, k, n, d)))(keys(seeds, 0))
  train = functools.partial(sr.train, model, n=n, d=d, scale=p["scale"], steps=p["steps"],
                            batch=p["batch"], learning_rate=p["learning_rate"])
  trained, losses = jax.jit(jax.vmap(train))(initial, keys(seeds, 1))
  losses = np.asarray(losses)
  train_s = time.perf_counter() - start

  eta, grid_losses = sr.best_step(sr.sample_prompts(jax.random.key(TUNE_KEY), p["tune_prompts"],
                                                    n, d, p["scale"]))
  prompts = sr.sample_prompts(jax.random.key(EVAL_KEY), p["eval_prompts"], n, d, p["scale"])
  queries = sr.fresh_queries(jax.random.key(QUERY_KEY), prompts)
  x1 = sr.gd_step(prompts["A"], prompts["b"], eta)
  # The prompts enter as arguments, not as constants of the compiled program.
  apply = jax.jit(jax.vmap(lambda params, A, b: model.apply({"params": params}, A, b),
                           (0, None, None)))
  metrics = jax.vmap(sr.model_metrics, (None, None, 0, None))
  gd = {k: np.asarray(v) for k, v in sr.gd_metrics(prompts, queries, x1).items()}
  gd.update({f"{k}_gd": v for k, v in sr.shift_bounds(prompts["A"], x1).items()})
  entry = {"n": n, "d": d, "eta_star": eta, "train_s": train_s,
           "eta_grid": {"etas": sr.ETAS.tolist(), "mean_loss": grid_losses.tolist()},
           "train_loss_first": losses[:, :10].mean(1).tolist(),
           "train_loss_last": losses[:, -100:].mean(1).tolist(),
           "train_curve": losses.reshape(len(p["seeds"]), CURVE_POINTS, -1).mean(-1).tolist(),
           "gd": summarise(gd, p["bootstrap"])}
  x_hats = {}
  for name, params in (("trained", trained), ("untrained", initial)):
    x_hat = apply(params, prompts["A"], prompts["b"])
    per_prompt = {k: np.asarray(v) for k, v in metrics(prompts, queries, x_hat, x1).items()}
    # Paired with GD on the same prompts: tighter than comparing the two intervals.
    per_prompt["error_minus_gd"] = per_prompt["error_model"] - gd["error_gd"]
    per_prompt["loss_minus_gd"] = per_prompt["loss_model"] - gd["loss_gd"]
    bounds = [sr.shift_bounds(prompts["A"], np.asarray(x)) for x in x_hat]
    per_prompt.update({k: np.stack([b[k] for b in bounds]) for k in bounds[0]})
    entry[name] = summarise(per_prompt, p["bootstrap"])
    x_hats[name] = np.asarray(x_hat)
  entry["wall_s"] = time.perf_counter() - start
  print(f"n={n}, d={d}: trained {len(p['seeds'])} seeds x {p['steps']} steps in {train_s:.1f} s, "
        f"eta* = {eta:.3g}, training loss {np.array2string(losses[:, -100:].mean(1), precision=5)}"
        f"; {entry['wall_s']:.1f} s in all", flush=True)
  return entry, {"x_hat": x_hats, "x1": np.asarray(x1)}


def lipschitz_study(p: dict) -> list:
  q = p["lipschitz"]
  rows = []
  for n in q["ns"]:
    for i, radius in enumerate(q["radii"]):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(LIPSCHITZ_KEY), n), i)
      row = {"n": n, "d": q["d"], "R": radius, "half_R": radius / 2,
             "M": float(sr.paper_bound(n, radius))}
      for which in ("weight", "data"):
        row[which] = sr.lipschitz_estimate(which, key, n, q["d"], radius, points=q["points"],
                                           starts=q["starts"], steps=q["steps"])
      rows.append(row)
  return rows


def cosine_table(settings: list) -> str:
  lines = ["Cosines on held-out prompts, mean [95% bootstrap interval over prompts] of the "
           "seed-averaged figure; the trained row's last column lists each seed's "
           "cos(x_hat, x1).", "",
           "| n, d | model | cos(x_hat, x1) | pred. cos on fresh A' | pred. cos on prompt A | "
           "cos(x, x*) | per seed cos(x_hat, x1) |", "|---|---|---|---|---|---|---|"]
  for s in settings:
    for name in ("trained", "untrained"):
      c = s[name]
      seeds = ", ".join(f"{v:.3f}" for v in c["x_cosine"]["seeds"]) if name == "trained" else ""
      lines.append(f"| {s['n']}, {s['d']} | {name} attention | {interval(c['x_cosine'])} | "
                   f"{interval(c['prediction_cosine_fresh'])} | "
                   f"{interval(c['prediction_cosine_prompt'])} | "
                   f"{interval(c['x_star_cosine_model'])} | {seeds} |")
    lines.append(f"| {s['n']}, {s['d']} | GD step, eta* = {s['eta_star']:.3g} | 1 | 1 | 1 | "
                 f"{interval(s['gd']['x_star_cosine_gd'])} | |")
  return "\n".join(lines)


def error_table(settings: list) -> str:
  lines = ["Errors ||f(A', x) - f(A', x*)|| on the fresh A' and losses L(x) on the prompt, "
           "mean [95% interval]; 'trained - GD' is the paired per-prompt difference.", "",
           "| n, d | error: trained | error: GD x1 | error: untrained | error: trained - GD | "
           "L(x_hat) trained | L(x1) | L(0) | L: trained - GD |",
           "|---|---|---|---|---|---|---|---|---|"]
  for s in settings:
    t, u, g = s["trained"], s["untrained"], s["gd"]
    lines.append(f"| {s['n']}, {s['d']} | {interval(t['error_model'], 4)} | "
                 f"{interval(g['error_gd'], 4)} | {interval(u['error_model'], 4)} | "
                 f"{interval(t['error_minus_gd'], 4)} | {interval(t['loss_model'], 5)} | "
                 f"{interval(g['loss_gd'], 5)} | {interval(g['loss_zero'], 5)} | "
                 f"{interval(t['loss_minus_gd'], 5)} |")
  return "\n".join(lines)


def lipschitz_table(rows: list) -> str:
  lines = [f"Lipschitz constants on ||A||_2 <= R, ||x||_2 <= R (d = {rows[0]['d']}): the largest "
           "Jacobian norm found (random points -> after projected ascent), the exact bound R/2 "
           "and the paper's M = n^1.5 exp(10 R^2).", "",
           "| n | R | weight map x -> f | data map A -> f | R/2 | M | M / weight | M / data |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    w, a = r["weight"], r["data"]
    lines.append(f"| {r['n']} | {r['R']:g} | {w['random']:.4f} -> {w['refined']:.4f} | "
                 f"{a['random']:.4f} -> {a['refined']:.4f} | {r['half_R']:g} | {r['M']:.3g} | "
                 f"{r['M'] / w['refined']:.3g} | {r['M'] / a['refined']:.3g} |")
  return "\n".join(lines)


def shift_table(settings: list) -> str:
  lines = ["Weight shifts 0 -> x on the held-out prompts: the actual ||f(A, x) - f(A, 0)||, the "
           "exact bound (||A||_2 / 2) ||x|| and log10 of M ||x|| with R = max(||A||_2, ||x||).",
           "", "| n, d | shift by | actual | (norm A / 2) norm x | log10 M norm x |",
           "|---|---|---|---|---|"]
  for s in settings:
    t, g = s["trained"], s["gd"]
    lines.append(f"| {s['n']}, {s['d']} | trained x_hat | {interval(t['shift_model'])} | "
                 f"{interval(t['analytic_bound'])} | {interval(t['log10_paper_bound'], 1)} |")
    lines.append(f"| {s['n']}, {s['d']} | GD x1 | {interval(g['shift_gd'])} | "
                 f"{interval(g['analytic_bound_gd'])} | {interval(g['log10_paper_bound_gd'], 1)} |")
  return "\n".join(lines)


def plot(path: str, settings: list, arrays: list):
  """Left: x_hat against x1, coordinate by coordinate, for the largest setting's first seed;
  right: cos(x_hat, x1) and the fresh-A' prediction cosine per setting, trained and untrained."""
  fig = Figure(figsize=(10, 4.2), dpi=120)
  left, right = fig.subplots(1, 2)
  s, a = settings[-1], arrays[-1]
  x1 = a["x1"][:200].ravel()
  for name, color in (("trained", "C0"), ("untrained", "C7")):
    left.scatter(x1, a["x_hat"][name][0, :200].ravel(), s=4, alpha=0.5, color=color, label=name)
  lim = np.abs(x1).max() * 1.1
  left.plot([-lim, lim], [-lim, lim], "k:", lw=1, label="x_hat = x1")
  left.set(xlabel="GD step x1 (coordinate)", ylabel="attention x_hat (coordinate)",
           title=f"n={s['n']}, d={s['d']}, seed 0, 200 held-out prompts")
  left.legend(fontsize=8)
  labels = [f"n={s['n']}, d={s['d']}" for s in settings]
  pos = np.arange(len(settings))
  bars = (("trained", "x_cosine", "C0"), ("trained", "prediction_cosine_fresh", "C1"),
          ("untrained", "x_cosine", "C7"), ("untrained", "prediction_cosine_fresh", "C8"))
  names = {"x_cosine": "cos(x_hat, x1)", "prediction_cosine_fresh": "prediction cosine on A'"}
  for j, (name, key, color) in enumerate(bars):
    cells = [s[name][key] for s in settings]
    mean = np.array([c["mean"] for c in cells])
    ci = np.array([c["ci95"] for c in cells])
    right.bar(pos + (j - 1.5) * 0.2, mean, 0.2, color=color, label=f"{name}: {names[key]}",
              yerr=np.abs(ci.T - mean), capsize=2)
  right.set_xticks(pos, labels)
  right.axhline(0, color="black", lw=0.8)
  right.set(ylabel="cosine with the GD step", title="Attention vs one GD step (95% intervals)")
  right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
  fig.tight_layout()
  fig.savefig(path)


def measure(preset: str, out: str) -> dict:
  """Runs the preset's study, prints its tables, writes OUT/softmax_regression.{json,png}."""
  p = PRESETS[preset]
  start = time.perf_counter()
  pairs = [setting_study(n, d, p) for n, d in p["settings"]]
  settings, arrays = [e for e, _ in pairs], [a for _, a in pairs]
  tick = time.perf_counter()
  lipschitz = lipschitz_study(p)
  lipschitz_s = time.perf_counter() - tick
  print(f"\n{cosine_table(settings)}\n\n{error_table(settings)}\n\n{lipschitz_table(lipschitz)}"
        f"\n\n{shift_table(settings)}\n")
  os.makedirs(out, exist_ok=True)
  plot(os.path.join(out, "softmax_regression.png"), settings, arrays)
  report = {"preset": preset, "config": p,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {jax.default_backend()}",
            "settings": settings, "lipschitz": lipschitz, "lipschitz_s": lipschitz_s,
            "wall_s": time.perf_counter() - start}
  path = os.path.join(out, "softmax_regression.json")
  reporting.write_json(path, report)
  print(f"part B (Lipschitz) {lipschitz_s:.1f} s; this command {report['wall_s']:.1f} s on "
        f"{report['machine']}; {path} and softmax_regression.png")
  return report


def main(argv):
  del argv
  measure(FLAGS.preset, FLAGS.out)


if __name__ == "__main__":
  study.run(main, lambda: "nothing is kept; rerun the command")
