"""Trains the LRA presets for every (task, attention kind, seed), one substrax-train each.

  python benchmarks/lra_runs.py                      # cpu presets: ListOps, Pathfinder-32, sMNIST
  python benchmarks/lra_runs.py --preset=gpu --tasks=listops,pathfinder,image,text

Runs land in ROOT/<task>/<kind>/seed<k>; a finished run (its eval JSON at the last step) is
skipped and an interrupted one resumes, so rerunning the command completes a study. Each run's
wall time is saved next to it for benchmarks/lra_table.py. Data is generated (and cached) before
the first run, so no run's time includes it.
"""
import json
import os
import subprocess
import sys
import time

from absl import app, flags

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


def finished(workdir: str, config) -> bool:
  path = os.path.join(workdir, "eval", f"lra_{config.data.name}.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f)["step"] == config.num_steps


def main(argv):
  del argv
  train = os.path.join(os.path.dirname(sys.executable), "substrax-train")
  for task in FLAGS.tasks:
    lra.load_splits(load_config(task).data)   # generate and cache once, outside the timings
  for seed in FLAGS.seeds:
    for task in FLAGS.tasks:
      config = load_config(task)
      for kind in FLAGS.kinds:
        workdir = os.path.join(FLAGS.root, task, kind, f"seed{seed}")
        if finished(workdir, config):
          print(f"{task:<10} {kind:<10} seed {seed}: done already")
          continue
        start = time.perf_counter()
        proc = subprocess.run(
            [train, f"--config={config_path(task)}:{FLAGS.preset}", f"--workdir={workdir}",
             f"--config.model.attention.kind={kind}", f"--config.seed={seed}",
             "--config.progress_bar=False"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
          print(f"{task:<10} {kind:<10} seed {seed}: FAILED ({proc.returncode})\n{proc.stderr}")
          continue
        with open(os.path.join(workdir, "wall_time.json"), "w") as f:
          json.dump({"wall_s": wall, "preset": FLAGS.preset}, f)
        print(f"{task:<10} {kind:<10} seed {seed}: {wall / 60:5.2f} min  "
              f"{proc.stdout.strip().splitlines()[-1]}", flush=True)


if __name__ == "__main__":
  app.run(main)
