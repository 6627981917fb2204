"""The demo's training recipe: which `cpu` preset of configs/icl_linear.py gets the softmax
transformer closest to least squares within a fixed budget of training time.

  python benchmarks/demo_recipe.py                        # every candidate, 180 s each
  python benchmarks/demo_recipe.py --only=base,lr3e-3 --budget_s=180
  python benchmarks/demo_recipe.py --only=curriculum_fast,curriculum_fast_b2 --seeds=0,1,2

Each candidate is the `cpu` preset plus overrides (learning rate, schedule, batch, warmup,
curriculum). Its number of steps is the budget divided by its own step time, measured on this
host at the start (a timed burst per batch size, kept in --workdir/step_seconds.json: measure
on an otherwise idle host), so every candidate gets the same training time. The evaluation and
the baselines are the preset's own (1,280 held-out prompts, error/d at k = 2d with a 95%
bootstrap interval). Columns: steps x the idle-host step time (budget_s), and the trainer's own
training time (train_s: its logged intervals, compilation excluded), which a busy host inflates.
Runs live in --workdir/<name>; a finished one is read back, not retrained. Prints a table and
writes results.json.
"""
import json
import os

import jax
import numpy as np
from absl import flags

import study
from substrax.configs import icl_linear
from substrax.train import trainer
from substrax.train.analysis import reporting
from substrax.train.metrics import read_jsonl

# name -> overrides of configs/icl_linear.py:cpu. Starting the curriculum at the full 5 dims and
# 11 points switches it off, so "base" is the preset as it was before this sweep (learning rate
# 2e-3, 500 warmup steps, cosine to 0, batch 64, no curriculum, Adam's b2 0.999). Every
# candidate not named for b2 keeps 0.999, as when it was measured; the preset now has 0.99.
OFF = {"data.curriculum.dims_start": 5, "data.curriculum.points_start": 11, "optim.b2": 0.999}
CURRICULUM = {"data.curriculum.dims_start": 2, "data.curriculum.points_start": 5,
              "optim.b2": 0.999}
CANDIDATES = {
    "base": {**OFF, "optim.learning_rate": 2e-3},
    "lr1e-3": {**OFF, "optim.learning_rate": 1e-3},
    "lr3e-3": {**OFF, "optim.learning_rate": 3e-3},
    "batch32": {**OFF, "optim.learning_rate": 2e-3, "batch_size": 32},
    "curriculum": {**CURRICULUM, "optim.learning_rate": 2e-3, "data.curriculum.interval": 500},
    "curriculum_slow": {**CURRICULUM, "optim.learning_rate": 2e-3,
                        "data.curriculum.interval": 1000},
    "curriculum_fast": {**CURRICULUM, "optim.learning_rate": 2e-3,
                        "data.curriculum.interval": 250},
    # Around the best point: a faster curriculum still, a higher peak learning rate, and
    # Adam's second moment averaged over ~100 steps instead of ~1,000 (b2 0.99), which follows
    # the gradient scale as the curriculum grows the prompts.
    "curriculum_faster": {**CURRICULUM, "optim.learning_rate": 2e-3,
                          "data.curriculum.interval": 125},
    "curriculum_fast_lr3e-3": {**CURRICULUM, "optim.learning_rate": 3e-3,
                               "data.curriculum.interval": 250},
    "curriculum_fast_b2": {**CURRICULUM, "optim.learning_rate": 2e-3, "optim.b2": 0.99,
                           "data.curriculum.interval": 250},
    "curriculum_fast_b2_0.95": {**CURRICULUM, "optim.learning_rate": 2e-3, "optim.b2": 0.95,
                                "data.curriculum.interval": 250},
}

flags.DEFINE_list("only", None, "Candidates to run (default: all): " + ",".join(CANDIDATES))
flags.DEFINE_list("seeds", ["0"], "Training seeds (config.seed) of every candidate; with "
                  "several, the best is the lowest mean over them.")
flags.DEFINE_float("budget_s", 180.0, "Training seconds per candidate (compilation excluded).")
flags.DEFINE_string("workdir", "runs/demo_recipe", "One subdirectory per candidate.")
FLAGS = flags.FLAGS
CONFIG = "configs/icl_linear.py"


def step_seconds(batch_size: int, steps: int = 200) -> float:
  """Median seconds of the full trainer step (sampling included) of the cpu preset at a batch
  size, after compilation and 20 warm-up steps."""
  config = icl_linear.get_config("cpu")
  config.batch_size = batch_size
  exp = trainer.setup(config)
  with exp.activate():
    return float(np.median(study.step_times(exp, 20, steps)))


def train_seconds(workdir: str) -> float:
  """Training time from the trainer's log: each logged interval's steps over its rate."""
  rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")
          if "steps_per_sec" in r]
  total, last = 0.0, None
  for r in rows:
    if last is not None:
      total += (r["step"] - last) / r["steps_per_sec"]
    last = r["step"]
  first = rows[0]   # the first interval's rate starts after the compiled first step
  return total + first["step"] / first["steps_per_sec"]


def main(_):
  names = FLAGS.only or list(CANDIDATES)
  unknown = [n for n in names if n not in CANDIDATES]
  if unknown:
    study.stop(f"--only: unknown candidate(s) {', '.join(unknown)}; choose from "
         f"{', '.join(CANDIDATES)}", 2)
  if not all(s.isdigit() for s in FLAGS.seeds):
    study.stop(f"--seeds: give non-negative integers, got {','.join(FLAGS.seeds)}", 2)
  seeds = [int(s) for s in FLAGS.seeds]
  if FLAGS.budget_s <= 0:
    study.stop(f"--budget_s: must be positive, got {FLAGS.budget_s}", 2)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  timing_path = os.path.join(FLAGS.workdir, "step_seconds.json")
  timings = reporting.read_json(timing_path) if os.path.exists(timing_path) else {}
  batch_of = lambda name: int(CANDIDATES[name].get("batch_size",
                                                   icl_linear.get_config("cpu").batch_size))
  for batch in sorted({batch_of(n) for n in names}):   # measured once, kept for reruns
    if str(batch) not in timings:
      timings[str(batch)] = step_seconds(batch)
      print(f"batch {batch}: {1e3 * timings[str(batch)]:.2f} ms per step", flush=True)
      reporting.write_json(timing_path, timings)
  results = {}
  for name in names:
    overrides, batch = CANDIDATES[name], batch_of(name)
    steps = int(FLAGS.budget_s / timings[str(batch)]) // 100 * 100
    for seed in seeds:   # seed 0 is the preset's; another seed's run is NAME_seedS
      run = name if seed == 0 else f"{name}_seed{seed}"
      workdir = os.path.join(FLAGS.workdir, run)
      run_overrides = {**overrides, "seed": seed, "num_steps": steps, "log_every_steps": 100,
                       "eval_every_steps": steps, "checkpoint.every_steps": steps}
      eval_json = os.path.join(workdir, "eval", "icl_linear.json")
      done = (os.path.exists(eval_json)
              and reporting.read_json(eval_json)["step"] == steps)
      if not done and not study.train(run, CONFIG, workdir, run_overrides, "cpu"):
        study.stop(f"candidate {run} failed; see above", 1)
      curves = reporting.read_json(eval_json)
      d = curves["n_dims"]
      model = curves["models"]["transformer"]
      results[run] = {
          "candidate": name, "seed": seed, "overrides": overrides, "batch_size": batch,
          "steps": steps, "step_ms": 1e3 * timings[str(batch)], "train_s": train_seconds(workdir),
          "error_k2d": model["mean"][2 * d], "ci95_k2d": model["ci95"][2 * d],
          "least_squares_k2d": curves["models"]["least_squares"]["mean"][2 * d],
          "error_kd": model["mean"][d]}
  rows = {n: [str(r["batch_size"]), str(r["steps"]), f"{r['steps'] * r['step_ms'] / 1e3:.0f}",
              f"{r['train_s']:.0f}",
              *(f"{v:.4f}" for v in (r["error_k2d"], *r["ci95_k2d"], r["error_kd"]))]
          for n, r in results.items()}
  print(f"error/d of the softmax transformer at k = 2d after {FLAGS.budget_s:.0f} s of "
        f"training per candidate ({jax.devices()[0].device_kind}, step times measured here)")
  print(reporting.format_table(["batch", "steps", "budget_s", "train_s", "err_k2d", "ci_lo", "ci_hi",
                                "err_kd"], rows, first="run"))
  # The intervals above are over prompts; training seeds move a run by more than that.
  means = {n: float(np.mean([r["error_k2d"] for r in results.values() if r["candidate"] == n]))
           for n in names}
  if len(seeds) > 1:
    print(f"mean error/d at k = 2d over seeds {','.join(map(str, seeds))}: "
          + ", ".join(f"{n} {m:.4f}" for n, m in means.items()))
  best = min(means, key=means.get)
  print(f"best: {best} {json.dumps(CANDIDATES[best])}: error/d {means[best]:.4f} at k = 2d"
        + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""))
  reporting.write_json(os.path.join(FLAGS.workdir, "results.json"),
                       {"budget_s": FLAGS.budget_s, "seeds": seeds, "runs": results,
                        "mean_error_k2d": means, "best": best})


if __name__ == "__main__":
  study.run(main, lambda: f"finished candidates stay in {FLAGS.workdir}; a rerun resumes")
