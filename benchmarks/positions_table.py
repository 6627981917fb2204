"""The URPE position study: PI and ETP for every positional scheme and seed, then one table.

  python benchmarks/positions_table.py                 # cpu preset: 7 schemes x 2 tasks x 2 seeds
  python benchmarks/positions_table.py --schemes=rpe,urpe --seeds=0

One substrax-train subprocess per (task, scheme, seed) with configs/positions.py:PRESET and
--config.seed=K, in ROOT/<task>/<scheme>/seed<K> (benchmarks/study.py: finished runs are
skipped, interrupted ones resume, so rerunning the command completes the study). Then it
collects each run's eval/positions.json and prints a markdown table of held-out token accuracy
(rows: schemes; columns: PI and ETP per seed), and a second one with ETP's accuracy on the
positions whose target is a token (i < n/2) and the constant-input spread of the final hidden
states; both go to OUT as JSON, with the wall time of every run and of the whole command.
See docs/positions.md.
"""
import json
import os
import time

import numpy as np
from absl import app, flags

import study
from substrax.models import positions

flags.DEFINE_string("preset", "cpu", "Preset of configs/positions.py.")
flags.DEFINE_list("schemes", list(positions.SCHEMES), "model.positions values.")
flags.DEFINE_list("tasks", ["pi", "etp"], "data.task values.")
flags.DEFINE_list("seeds", ["0", "1"], "Training seeds (--config.seed).")
flags.DEFINE_string("root", "runs/positions", "Where the runs go.")
flags.DEFINE_string("out", None, "The table's JSON (default ROOT/positions_table.json).")
FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "positions.py")


def run_dir(task: str, scheme: str, seed: str) -> str:
  return os.path.join(FLAGS.root, task, scheme, f"seed{seed}")


def report_path(workdir: str) -> str:
  return os.path.join(workdir, "eval", "positions.json")


def train_all(num_steps: int):
  for task in FLAGS.tasks:
    for scheme in FLAGS.schemes:
      for seed in FLAGS.seeds:
        workdir = run_dir(task, scheme, seed)
        label = f"{task:<3} {scheme:<10} seed {seed}"
        if study.finished(report_path(workdir), num_steps):
          print(f"{label}: done already", flush=True)
          continue
        study.train(label, CONFIG, workdir,
                    {"data.task": task, "model.positions": scheme, "seed": seed}, FLAGS.preset)


def gather() -> dict:
  """{task: {scheme: {seed: report + wall_s}}} of the runs that finished."""
  runs = {}
  for task in FLAGS.tasks:
    for scheme in FLAGS.schemes:
      for seed in FLAGS.seeds:
        workdir = run_dir(task, scheme, seed)
        if not os.path.exists(report_path(workdir)):
          continue
        with open(report_path(workdir)) as f:
          report = json.load(f)
        report["wall_s"] = study.read_wall(workdir)
        runs.setdefault(task, {}).setdefault(scheme, {})[seed] = report
  return runs


def _cell(runs, task, scheme, seed, key="accuracy", fmt="{:.1%}"):
  r = runs.get(task, {}).get(scheme, {}).get(seed)
  return "—" if r is None or key not in r else fmt.format(r[key]).replace("%", "")


def accuracy_table(runs: dict) -> str:
  columns = [(task, seed) for task in FLAGS.tasks for seed in FLAGS.seeds]
  lines = ["| positions | " + " | ".join(f"{t.upper()} seed {s}" for t, s in columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for scheme in FLAGS.schemes:
    lines.append(f"| {scheme} | " + " | ".join(_cell(runs, t, scheme, s) for t, s in columns)
                 + " |")
  blind = []
  for task, _ in columns:
    r = next((r for s in runs.get(task, {}).values() for r in s.values()), None)
    blind.append("—" if r is None else f"{100 * r['position_blind_accuracy']:.1f}")
  lines.append("| *no positional information* | " + " | ".join(blind) + " |")
  return "\n".join(lines)


def detail_table(runs: dict) -> str:
  """ETP's accuracy on its token targets and the constant-input spread, per seed."""
  seeds = FLAGS.seeds
  head = ([f"ETP i<n/2 seed {s}" for s in seeds] if "etp" in FLAGS.tasks else []) + \
      [f"spread {t.upper()} seed {s}" for t in FLAGS.tasks for s in seeds]
  lines = ["| positions | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
  for scheme in FLAGS.schemes:
    cells = ([_cell(runs, "etp", scheme, s, "accuracy_token_targets") for s in seeds]
             if "etp" in FLAGS.tasks else [])
    for task in FLAGS.tasks:
      for seed in seeds:
        r = runs.get(task, {}).get(scheme, {}).get(seed)
        cells.append("—" if r is None else f"{r['constant_input_spread']['hidden']:.2g}")
    lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  from substrax.configs import positions as config_file
  config = config_file.get_config(FLAGS.preset)
  start = time.perf_counter()
  train_all(config.num_steps)
  wall = time.perf_counter() - start
  runs = gather()
  table, detail = accuracy_table(runs), detail_table(runs)
  d, m = config.data, config.model
  print(f"\nHeld-out token accuracy (%), {FLAGS.preset} preset: n={d.length}, vocab {d.vocab}, "
        f"width {m.width}, depth {m.depth}, {m.num_heads} heads, {config.num_steps} steps of "
        f"batch {config.batch_size}\n")
  print(table)
  print("\nETP accuracy (%) on the positions i < n/2 (targets x_{2i+1}), and max_ij |h_i - h_j| "
        "of the final hidden states on constant inputs\n")
  print(detail)
  walls = [r["wall_s"] for t in runs.values() for s in t.values() for r in s.values()
           if r.get("wall_s") is not None]
  print(f"\nthis command: {wall / 60:.1f} min; the runs' own wall times sum to "
        f"{sum(walls) / 60:.1f} min ({np.mean(walls) if walls else float('nan'):.0f} s each)")
  out = FLAGS.out or os.path.join(FLAGS.root, "positions_table.json")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  cells = {task: {scheme: {seed: {k: r[k] for k in (
      "step", "accuracy", "loss", "accuracy_token_targets", "position_blind_accuracy",
      "constant_input_spread", "accuracy_per_position", "wall_s") if k in r}
      for seed, r in seeds.items()} for scheme, seeds in schemes.items()}
      for task, schemes in runs.items()}
  with open(out, "w") as f:
    json.dump({"preset": FLAGS.preset, "length": d.length, "vocab": d.vocab,
               "model": {"width": m.width, "depth": m.depth, "num_heads": m.num_heads,
                         "mlp_ratio": m.mlp_ratio, "attention": m.attention.kind},
               "num_steps": config.num_steps, "batch_size": config.batch_size,
               "command_wall_s": wall, "runs": cells, "table_markdown": table,
               "detail_markdown": detail}, f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
