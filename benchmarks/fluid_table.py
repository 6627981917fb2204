"""The FluidWorld study's tables and figures, from the runs of benchmarks/fluid_runs.py.

  python benchmarks/fluid_table.py [--root=runs/fluid_mmnist] [--out=docs]

Every run is scored on the same held-out, digit-disjoint test sequences (10 context -> 10
predicted frames), so runs are compared per sequence. Inputs: each run's
eval/video_<data>.json and eval/video_<data>_per_sequence.npz (written by the video evaluator;
`substrax-eval` on an older run writes them).

  Table 1: per-pixel MSE at h = 1, 5, 10 and averaged over h = 1..10, each seed-averaged per
    sequence with a 95% bootstrap interval over test sequences; the per-seed averages; Gaussian
    SSIM (mean over seeds); the coherence horizon of each seed; encoder effective rank.
  Table 2: paired differences (row minus the named model) of the step-averaged MSE, with a
    paired bootstrap over sequences of the seed-averaged errors, and a verdict.
  Table 3: every run against the zero and copy-last predictors at h = 1 (paired, per run).
  Figures: OUT/<root name>_curves.png (MSE per rollout step with 95% bands) and
    OUT/<root name>_frames.png (test sequence 0: context, truth, each variant's seed-0 rollout).
"""
import glob
import json
import os

import numpy as np
from absl import app, flags

import study
from substrax.train.analysis import video_metrics as vm

flags.DEFINE_string("root", "runs/fluid_mmnist", "Where benchmarks/fluid_runs.py put the runs.")
flags.DEFINE_string("out", "docs", "Where the figures go.")
flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples.")
FLAGS = flags.FLAGS

ORDER = ("fluid", "transformer", "convlstm", "fluid_nodiff")
TRIVIAL = ("zero", "copy_last", "context_mean")
COMPARE = ("transformer", "convlstm", "fluid_nodiff")   # FluidWorld minus each, per feedback
SHOWN = (1, 5, 10)


def gather(root: str) -> dict:
  """{variant: [run per seed]}; a run is its eval JSON plus 'mse' {predictor: [N, T]} and
  'frames' {predictor: [T, H, W, C]} from the per-sequence file."""
  runs = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "seed*", "eval", "video_*.json"))):
    if path.endswith("_per_sequence.json"):
      continue
    variant = path.split(os.sep)[-4]
    with open(path) as f:
      run = json.load(f)
    arrays = path[:-len(".json")] + "_per_sequence.npz"
    run_dir = os.path.dirname(os.path.dirname(path))
    if not os.path.exists(arrays):
      raise SystemExit(f"{arrays} is missing: run substrax-eval on {run_dir} (the run "
                       "predates the per-sequence file)")
    with np.load(arrays) as z:
      run["mse"] = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("mse_px/")}
      run["frames"] = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("frames/")}
      run["strip"] = (z["context"], z["target"])
    run["wall_s"] = study.read_wall(run_dir)
    runs.setdefault(variant, []).append(run)
  return dict(sorted(runs.items(), key=lambda kv: (ORDER + (kv[0],)).index(kv[0])))


def rows(runs: dict) -> dict:
  """{row name: (variant, predictor key)}: each variant x feedback, then the trivial predictors."""
  out = {}
  for variant, seeds in runs.items():
    for fb in seeds[0]["feedback"]:
      out[f"{variant} ({fb})"] = (variant, f"{seeds[0]['model']}_{fb}")
  first = next(iter(runs))
  for t in TRIVIAL:
    out[t] = (first, t)
  return out


def seed_mean(runs, variant, key):
  """Per-sequence MSE [N, T] averaged over the variant's seeds (the same test sequences)."""
  return np.mean([r["mse"][key] for r in runs[variant]], axis=0)


def fmt(mean, ci, digits=4):
  return f"{mean:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def table_errors(runs, named, n_boot) -> str:
  head = ([f"MSE h={h}" for h in SHOWN] + ["MSE mean h=1-10", "per seed (mean h=1-10)",
                                           "SSIM h=1", "SSIM mean", "coherence horizon",
                                           "eff. rank", "params"])
  lines = ["| predictor | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
  for name, (variant, key) in named.items():
    mse = seed_mean(runs, variant, key)
    curve = vm.step_curve(mse, n_boot)
    avg = vm.scalar_interval(mse.mean(1), n_boot)
    cells = [fmt(curve["mean"][h - 1], curve["ci95"][h - 1]) for h in SHOWN]
    cells.append(fmt(avg["mean"], avg["ci95"]))
    seeds = runs[variant] if key not in TRIVIAL else runs[variant][:1]
    cells.append(" / ".join(f"{r['mse'][key].mean():.4f}" for r in seeds))
    ssim = np.mean([r["rollout"]["predictors"][key]["per_step"]["ssim_gaussian"]["mean"]
                    for r in seeds], axis=0)
    cells += [f"{ssim[0]:.3f}", f"{ssim.mean():.3f}"]
    if key in TRIVIAL:
      cells += ["—", "—", "—"]
    else:
      horizons = [r["rollout"]["predictors"][key]["coherence_horizon_mse"] for r in seeds]
      cells.append(" / ".join(str(h or "never") for h in horizons))
      cells.append(" / ".join(f"{r['latent']['effective_rank']:.1f}" for r in seeds)
                   + f" of {seeds[0]['latent']['channels']}")
      cells.append(f"{seeds[0]['num_params']:,}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def verdict(diff: dict) -> str:
  if not diff["excludes_zero"]:
    return "no difference resolved"
  return "lower (better)" if diff["mean"] < 0 else "higher (worse)"


def table_paired(runs, named, n_boot) -> str:
  lines = ["| comparison (step-averaged MSE, row minus column) | difference [95% CI] | "
           "h=1 difference [95% CI] | FluidWorld is |", "|---|---|---|---|"]
  if "fluid" not in runs:
    return "(no FluidWorld runs)"
  for fb in runs["fluid"][0]["feedback"]:
    a = seed_mean(runs, "fluid", f"fluid_{fb}")
    others = [(f"{v} ({fb})", v, f"{runs[v][0]['model']}_{fb}") for v in COMPARE if v in runs]
    others += [(t, "fluid", t) for t in ("zero", "copy_last")]
    for label, variant, key in others:
      b = seed_mean(runs, variant, key)
      avg = vm.paired_difference(a.mean(1), b.mean(1), n_boot)
      first = vm.paired_difference(a[:, 0], b[:, 0], n_boot)
      lines.append(f"| fluid ({fb}) − {label} | {fmt(avg['mean'], avg['ci95'])} | "
                   f"{fmt(first['mean'], first['ci95'])} | {verdict(avg)} |")
  return "\n".join(lines)


def table_floors(runs, named, n_boot) -> str:
  lines = ["| run | MSE h=1 | − zero [95% CI] | − copy-last [95% CI] | beats both at h=1 |",
           "|---|---|---|---|---|"]
  for name, (variant, key) in named.items():
    if key in TRIVIAL:
      continue
    for r in runs[variant]:
      m = r["mse"][key][:, 0]
      diffs = [vm.paired_difference(m, r["mse"][t][:, 0], n_boot) for t in ("zero", "copy_last")]
      beats = all(d["ci95"][1] < 0 for d in diffs)
      lines.append(f"| {name} seed {r['seed']} | {m.mean():.4f} | "
                   + " | ".join(fmt(d["mean"], d["ci95"]) for d in diffs)
                   + f" | {'yes' if beats else 'NO'} |")
  return "\n".join(lines)


def figures(runs, named, n_boot, stem: str):
  report = {"steps": list(range(1, next(iter(runs.values()))[0]["horizon"] + 1)),
            "predictors": {}}
  for name, (variant, key) in named.items():
    report["predictors"][name] = {
        "trivial": key in TRIVIAL,
        "per_step": {"mse_px": vm.step_curve(seed_mean(runs, variant, key), n_boot)}}
  first = next(iter(runs.values()))[0]
  vm.plot_rollout_curves(
      stem + "_curves.png", report, metrics=("mse_px",),
      title=f"{first['data']}: {first['rollout']['n_sequences']} held-out sequences, "
            f"{first['context']} -> {first['horizon']}; seed-averaged, 95% bootstrap bands")
  rollouts = {f"{name} s{runs[v][0]['seed']}": runs[v][0]["frames"][key]
              for name, (v, key) in named.items() if key not in TRIVIAL}
  rollouts["copy_last"] = first["frames"]["copy_last"]
  vm.plot_frame_strip(stem + "_frames.png", *first["strip"], rollouts)


def main(argv):
  del argv
  runs = gather(FLAGS.root)
  if not runs:
    raise SystemExit(f"no finished runs under {FLAGS.root}; run benchmarks/fluid_runs.py first")
  named = rows(runs)
  first = next(iter(runs.values()))[0]
  print(f"{first['data']}, step {first['step']}: {first['rollout']['n_sequences']} held-out "
        f"test sequences, {first['context']} context -> {first['horizon']} predicted frames; "
        f"seeds per variant: " + ", ".join(f"{v} {len(s)}" for v, s in runs.items()) + "\n")
  print("Table 1. Per-pixel MSE (seed-averaged per sequence; 95% bootstrap CI over sequences)\n")
  print(table_errors(runs, named, FLAGS.bootstrap))
  print("\nTable 2. Paired differences of FluidWorld against each model and floor\n")
  print(table_paired(runs, named, FLAGS.bootstrap))
  print("\nTable 3. Each run against the zero and copy-last predictors at h = 1\n")
  print(table_floors(runs, named, FLAGS.bootstrap))
  walls = [(v, r["wall_s"]) for v, rs in runs.items() for r in rs if r["wall_s"]]
  if walls:
    print("\nWall time per run (min): " + ", ".join(
        f"{v} {np.mean([w for u, w in walls if u == v]) / 60:.1f}" for v in runs)
        + f"; all {len(walls)} runs {sum(w for _, w in walls) / 60:.0f} min")
  os.makedirs(FLAGS.out, exist_ok=True)
  stem = os.path.join(FLAGS.out, os.path.basename(os.path.normpath(FLAGS.root)))
  figures(runs, named, FLAGS.bootstrap, stem)
  print(f"\nfigures: {stem}_curves.png, {stem}_frames.png")


if __name__ == "__main__":
  app.run(main)
