"""Trains the LRA presets for every (task, attention kind, seed), one substrax-train each.

  python benchmarks/lra_runs.py                      # cpu presets: ListOps, Pathfinder-32, sMNIST
  python benchmarks/lra_runs.py --preset=gpu --tasks=listops,pathfinder,image,text

Runs land in ROOT/<task>/<kind>/seed<k> (benchmarks/study.py: rerunning the command completes a
study). Data is generated (and cached) before the first run, so no run's time includes it.
"""
import os

from absl import app, flags

import study
from substrax.train.tasks import lra

flags.DEFINE_string("preset", "cpu", "Config preset.")
flags.DEFINE_list("tasks", ["listops", "pathfinder", "image"], "configs/lra_<task>.py files.")
flags.DEFINE_list("kinds", ["softmax", "linear", "performer", "local"], "Attention kinds.")
flags.DEFINE_list("seeds", ["0", "1"], "Training seeds (the data is the same for every seed).")
flags.DEFINE_string("root", "runs/lra", "Where the runs go.")
FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(task: str) -> str:
  return os.path.join(REPO, "configs", f"lra_{task}.py")


def load_config(task: str):
  from substrax.configs import lra_image, lra_listops, lra_pathfinder, lra_text
  module = {"listops": lra_listops, "pathfinder": lra_pathfinder, "image": lra_image,
            "text": lra_text}[task]
  return module.get_config(FLAGS.preset)


def main(argv):
  del argv
  for task in FLAGS.tasks:
    lra.load_splits(load_config(task).data)   # generate and cache once, outside the timings
  for seed in FLAGS.seeds:
    for task in FLAGS.tasks:
      config = load_config(task)
      for kind in FLAGS.kinds:
        workdir = os.path.join(FLAGS.root, task, kind, f"seed{seed}")
        label = f"{task:<10} {kind:<10} seed {seed}"
        if study.finished(os.path.join(workdir, "eval", f"lra_{config.data.name}.json"),
                          config.num_steps):
          print(f"{label}: done already")
          continue
        study.train(label, config_path(task), workdir,
                    {"model.attention.kind": kind, "seed": seed}, FLAGS.preset)


if __name__ == "__main__":
  app.run(main)
