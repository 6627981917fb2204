"""In-context regression with every attention substrate: accuracy and speed against softmax.

  python benchmarks/icl_substrates.py                          # cpu preset, all nine kinds
  python benchmarks/icl_substrates.py --kinds=softmax,lsa --steps=3000

Trains the same ICL model once per `model.attention.kind` (each run in --workdir/<kind>, so a
rerun resumes or just re-evaluates), then prints error/d at k in-context examples and the median
training steps/s of each kind, each as a ratio against softmax from the same invocation, and
writes summary.json and substrates.png (error curves, softmax highlighted) in --workdir.
"""
import os

import numpy as np
from absl import app, flags, logging

from substrax.configs import icl_linear
from substrax.models import attention
from substrax.train import trainer
from substrax.train.analysis import reporting
from substrax.train.metrics import read_jsonl

flags.DEFINE_string("preset", "cpu", "Preset of configs/icl_linear.py.")
flags.DEFINE_list("kinds", list(attention.KINDS), "Attention kinds to train.")
flags.DEFINE_integer("steps", None, "Override num_steps (default: the preset's).")
flags.DEFINE_string("workdir", "runs/substrates", "One subdirectory per kind.")
FLAGS = flags.FLAGS


def run(kind: str) -> dict:
  config = icl_linear.get_config(FLAGS.preset)
  config.model.attention.kind = kind
  config.progress_bar = False
  if FLAGS.steps:
    config.num_steps = FLAGS.steps
    config.optim.warmup_steps = min(config.optim.warmup_steps, FLAGS.steps // 10)
    config.eval_every_steps = config.checkpoint.every_steps = FLAGS.steps
  workdir = os.path.join(FLAGS.workdir, kind)
  print(f"--- {kind}: {config.num_steps} steps in {workdir}", flush=True)
  trainer.train_and_evaluate(config, workdir)
  curves = reporting.read_json(os.path.join(workdir, "eval", "icl_linear.json"))
  rates = [r["steps_per_sec"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")
           if "steps_per_sec" in r]
  return {"curves": curves, "steps_per_sec": float(np.median(rates)) if rates else None}


def main(_):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  if "softmax" not in FLAGS.kinds:
    raise app.UsageError("--kinds must include softmax, the baseline of every ratio")
  results = {kind: run(kind) for kind in FLAGS.kinds}
  base = results["softmax"]
  d = base["curves"]["n_dims"]
  ks = sorted({0, d // 2, d, min(2 * d, len(base["curves"]["k"]) - 1)})
  model_mean = lambda r: np.asarray(r["curves"]["models"]["transformer"]["mean"])
  rows, summary = {}, {}
  for kind, r in results.items():
    err = model_mean(r)
    speed = r["steps_per_sec"] / base["steps_per_sec"]
    rows[kind] = [*(err[k] for k in ks), err[ks[-1]] / model_mean(base)[ks[-1]],
                  r["steps_per_sec"], speed]
    summary[kind] = {"error": {f"k={k}": float(err[k]) for k in ks},
                     "ci95": r["curves"]["models"]["transformer"]["ci95"],
                     "steps_per_sec": r["steps_per_sec"], "speed_vs_softmax": speed}
  for name in ("least_squares", "gd_optimal_step", "averaging"):
    rows[f"({name})"] = [base["curves"]["models"][name]["mean"][k] for k in ks] + [np.nan] * 3
  print(f"error/d at k in-context examples; err_x and speed_x are ratios to softmax "
        f"(preset {FLAGS.preset}, {base['curves']['step']} steps)")
  print(reporting.format_table([*(f"k={k}" for k in ks), "err_x", "step/s", "speed_x"], rows,
                               first="attention"))
  reporting.write_json(os.path.join(FLAGS.workdir, "summary.json"),
                       {"preset": FLAGS.preset, "steps": base["curves"]["step"], "k": ks,
                        "kinds": summary})
  curves = {kind: r["curves"]["models"]["transformer"] for kind, r in results.items()}
  curves["least squares"] = base["curves"]["models"]["least_squares"]
  reporting.plot_curves(os.path.join(FLAGS.workdir, "substrates.png"), base["curves"]["k"], curves,
                        highlight="softmax", xlabel="in-context examples k",
                        ylabel="squared error / d",
                        title=f"ICL linear regression, d={d}: attention substrates",
                        ylim=(0, 1.25))
  print(f"wrote {FLAGS.workdir}/summary.json and substrates.png")


if __name__ == "__main__":
  app.run(main)
