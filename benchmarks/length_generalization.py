"""The length-generalization study (Zhou et al. 2024): train each algorithmic task at sizes
1..L, score exact match at L, 1.5L, 2L and 3L, for each positional scheme and seed.

  python benchmarks/length_generalization.py                    # 8 tasks x 3 schemes x 3 seeds
  python benchmarks/length_generalization.py --tasks=count,sort --seeds=0

Each cell (task, scheme) trains its seeds together (study.train_together): the lm task's
model, loss, data pool and train_step (what `substrax-train
--config=configs/lm_algorithmic.py:PRESET` runs) under one jax.vmap over the seeds, with the
trainer's keys: one compile and one process per cell instead of per seed. It is not
bit-identical to a substrax-train run of the same seed (vmap changes the float reduction order,
and training amplifies it; docs/length-generalization.md gives the measured difference).
Every seed's report is the task's own eval/algorithmic.json, in ROOT/<task>/<scheme>/seed<K>;
finished cells are skipped, so rerunning the command completes the study. Each task's packed
context and position table cover its longest test instance, so learned positions are trained
at every position a test uses.

Then it prints a markdown table (rows: task and scheme, tasks ordered by their best scheme's
mean exact match at 1.5L; cells: mean [min, max] over seeds), marking the tasks with a RASP-L
program in data/rasp_programs.py, and writes the table's JSON (with each cell's wall time and
the whole command's) and a plot of exact match against test size. See
docs/length-generalization.md.
"""
import ast
import contextlib
import io
import json
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

import study
from substrax.configs import lm_algorithmic
from substrax.data import algorithmic, rasp_programs
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.tasks import lm

flags.DEFINE_string("preset", "cpu", "Preset of configs/lm_algorithmic.py.")
flags.DEFINE_list("tasks", ["count", "copy_unique", "mode", "sort", "parity_scratchpad",
                            "reverse", "copy_repeat", "parity"], "data.task values.")
flags.DEFINE_list("schemes", ["learned", "rope", "none"], "model.positions values.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (config.seed).")
flags.DEFINE_multi_string("set", [], "KEY=VALUE config overrides for every cell, e.g. "
                          "--set=model.depth=4 (values are Python literals).")
flags.DEFINE_integer("chunk", 250, "Steps per compiled call (progress is printed after each).")
flags.DEFINE_string("root", "runs/length_generalization", "Where the runs go.")
flags.DEFINE_string("out", None, "The table's JSON (default ROOT/length_generalization.json).")
flags.DEFINE_string("plot", None, "The plot (default ROOT/length_generalization.png).")
FLAGS = flags.FLAGS
MULTIPLES = (1.0, 1.5, 2.0, 3.0)


def sizes(train_max: int) -> tuple:
  return tuple(int(round(m * train_max)) for m in MULTIPLES)


def preset_config():
  """configs/lm_algorithmic.py:PRESET with the --set overrides."""
  c = lm_algorithmic.get_config(FLAGS.preset)
  for item in FLAGS.set:
    key, _, value = item.partition("=")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass   # a string such as layernorm
    c.update_from_flattened_dict({key: value})
  return c


def config_of(task: str, scheme: str, seed: int):
  """The preset with the cell's task, scheme and seed; its context and position table hold
  the task's longest test instance."""
  c = preset_config()
  tests = sizes(c.data.train_max)
  tokens = algorithmic.sequence_length(algorithmic.get(task), tests[-1])
  length = -(-tokens // 16) * 16
  c.update_from_flattened_dict({"data.task": task, "model.positions": scheme, "seed": seed,
                                "data.length": length, "model.max_len": length,
                                "eval.lengths": tests})
  trainer.validate(c)
  return c


def run_dir(task: str, scheme: str, seed: str) -> str:
  return os.path.join(FLAGS.root, task, scheme, f"seed{seed}")


def report_path(workdir: str) -> str:
  return os.path.join(workdir, "eval", "algorithmic.json")


def train_cell(task: str, scheme: str) -> float:
  """Trains the cell's seeds under one vmap and writes each seed's report; the wall time."""
  start = time.perf_counter()
  configs = [config_of(task, scheme, int(s)) for s in FLAGS.seeds]
  # Each seed draws its own training pool.
  task_fns, states, _ = study.train_together(configs, lm.build, FLAGS.chunk, f"{task} {scheme}")
  for i, seed in enumerate(FLAGS.seeds):
    params = jax.tree.map(lambda x: x[i], states.params)
    with contextlib.redirect_stdout(io.StringIO()):   # the task's table, one line here
      report = task_fns.evaluate(params, {}, run_dir(task, scheme, seed), configs[0].num_steps)
    print(f"  {task} {scheme} seed {seed}: exact match " + ", ".join(
        f"n={r['n']} {r['exact_match']:.3f}" for r in report["lengths"]), flush=True)
  return time.perf_counter() - start


def claim_root():
  """ROOT/study.json records the preset and --set; a rerun with other settings would mix
  cells of two studies, so it stops instead."""
  path = os.path.join(FLAGS.root, "study.json")
  settings = {"preset": FLAGS.preset, "set": sorted(FLAGS.set)}
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != settings:
        raise app.UsageError(f"{FLAGS.root} holds a study with other settings ({path}); "
                             "choose another --root")
  os.makedirs(FLAGS.root, exist_ok=True)
  with open(path, "w") as f:
    json.dump(settings, f)


def train_all(num_steps: int) -> dict:
  walls = {}
  for task in FLAGS.tasks:
    for scheme in FLAGS.schemes:
      if all(study.finished(report_path(run_dir(task, scheme, s)), num_steps)
             for s in FLAGS.seeds):
        print(f"{task} {scheme}: done already", flush=True)
        continue
      wall = train_cell(task, scheme)
      walls[f"{task}/{scheme}"] = wall
      print(f"{task} {scheme}: {wall / 60:.2f} min for {len(FLAGS.seeds)} seeds", flush=True)
  return walls


def gather() -> dict:
  """{task: {scheme: {seed: {'exact': [per test size], 'n': [sizes]}}}} of the finished runs."""
  runs = {}
  for task in FLAGS.tasks:
    for scheme in FLAGS.schemes:
      for seed in FLAGS.seeds:
        path = report_path(run_dir(task, scheme, seed))
        if not os.path.exists(path):
          continue
        with open(path) as f:
          report = json.load(f)
        runs.setdefault(task, {}).setdefault(scheme, {})[seed] = {
            "exact": [r["exact_match"] for r in report["lengths"]],
            "n": [r["n"] for r in report["lengths"]],
}
  return runs


def summarise(runs: dict) -> dict:
  """Per task and scheme: mean, min and max over seeds of exact match at each test size."""
  out = {}
  for task, schemes in runs.items():
    for scheme, seeds in schemes.items():
      exact = np.array([r["exact"] for r in seeds.values()])
      out.setdefault(task, {})[scheme] = {
          "n": next(iter(seeds.values()))["n"], "seeds": len(seeds),
          "mean": exact.mean(0).tolist(), "min": exact.min(0).tolist(),
          "max": exact.max(0).tolist()}
  return out


def ranked(summary: dict) -> list:
  """Tasks by their best scheme's mean exact match at 1.5L, then at 2L, best first."""
  key = lambda task: max((s["mean"][1], s["mean"][2]) for s in summary[task].values())
  return sorted(summary, key=key, reverse=True)


def table(summary: dict) -> str:
  train_max = preset_config().data.train_max
  heads = [f"n = {n} ({m:g}L)" for n, m in zip(sizes(train_max), MULTIPLES)]
  lines = ["| task | RASP-L | positions | seeds | " + " | ".join(heads) + " |",
           "|---" * (4 + len(heads)) + "|"]
  for task in ranked(summary):
    for scheme, s in summary[task].items():
      cells = [f"{a:.2f} [{lo:.2f}, {hi:.2f}]" for a, lo, hi in zip(s["mean"], s["min"],
                                                                       s["max"])]
      program = "yes" if rasp_programs.RASP_L[task] else "no"
      lines.append(f"| {task} | {program} | {scheme} | {s['seeds']} | " + " | ".join(cells)
                   + " |")
  return "\n".join(lines)


def plot(path: str, summary: dict):
  tasks = ranked(summary)
  cols = 4
  rows = -(-len(tasks) // cols)
  fig = Figure(figsize=(3.2 * cols, 2.6 * rows), dpi=110)
  axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
  for ax, task in zip(axes.flat, tasks):
    for scheme, s in summary[task].items():
      line, = ax.plot(MULTIPLES, s["mean"], "o-", lw=1.5, label=scheme)
      ax.fill_between(MULTIPLES, s["min"], s["max"], color=line.get_color(), alpha=0.2)
    program = "RASP-L" if rasp_programs.RASP_L[task] else "no RASP-L program"
    ax.set_title(f"{task} ({program})", fontsize=9)
    ax.set_xticks(MULTIPLES)
    ax.set_ylim(-0.03, 1.03)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(tasks):]:
    ax.set_visible(False)
  for ax in axes[:, 0]:
    ax.set_ylabel("exact match")
  for ax in axes[-1]:
    ax.set_xlabel("test size / L")
  axes.flat[0].legend(fontsize=7)
  fig.suptitle("Exact match beyond the training sizes (mean over seeds, band = min to max)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path)


def main(argv):
  del argv
  try:   # a bad task, scheme or --set fails in one line before any training
    for task in FLAGS.tasks:
      for scheme in FLAGS.schemes:
        config_of(task, scheme, 0)
  except (ConfigError, ValueError) as err:
    raise app.UsageError(str(err)) from None
  claim_root()
  start = time.perf_counter()
  walls = train_all(preset_config().num_steps)
  wall = time.perf_counter() - start
  runs = gather()
  summary = summarise(runs)
  print(table(summary))
  out = FLAGS.out or os.path.join(FLAGS.root, "length_generalization.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if os.path.exists(out):   # a rerun keeps the wall times of the cells it skipped
    with open(out) as f:
      walls = {**json.load(f).get("cell_wall_s", {}), **walls}
  with open(out, "w") as f:
    json.dump({"preset": FLAGS.preset, "set": FLAGS.set,
               "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
               "command_wall_s": wall, "cell_wall_s": walls,
               "train_wall_s": sum(walls.values()), "summary": summary, "runs": runs},
              f, indent=1)
  plot_path = FLAGS.plot or os.path.join(FLAGS.root, "length_generalization.png")
  plot(plot_path, summary)
  print(f"this command {wall / 60:.1f} min, every cell's training {sum(walls.values()) / 60:.1f} "
        f"min; table {out}; plot {plot_path}")


if __name__ == "__main__":
  study.run(main, lambda: f"finished cells are kept under {FLAGS.root}; rerun the command "
            "to complete the study")
