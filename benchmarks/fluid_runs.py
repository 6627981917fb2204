"""The FluidWorld study on Moving-MNIST-32: each world model x seed, one substrax-train each.

  python benchmarks/fluid_runs.py                 # cpu preset: 3 models + the ablation, 2 seeds
  python benchmarks/fluid_runs.py --variants=fluid,transformer,convlstm --seeds=0,1,2
  python benchmarks/fluid_table.py                # the table, curves and frame strip

Variants: fluid, transformer and convlstm (parameter-matched within 0.25%, configs/fluid_mmnist.py)
and fluid_nodiff, FluidWorld with D = 0 (is the Laplacian the mechanism?). The three models of a
seed run before the ablation and before the next seed, so a cut-short study still compares them.
Runs land in ROOT/<variant>/seed<k> (benchmarks/study.py: rerunning the command completes it).
"""
import os

from absl import app, flags

import study
from substrax.configs import fluid_grayscott, fluid_mmnist

VARIANTS = {
    "fluid": {"model.name": "fluid"},
    "transformer": {"model.name": "transformer"},
    "convlstm": {"model.name": "convlstm"},
    "fluid_nodiff": {"model.name": "fluid", "model.fluid.diffusion": False},
}
CONFIGS = {"moving_mnist": fluid_mmnist, "grayscott": fluid_grayscott}

flags.DEFINE_string("preset", "cpu", "Config preset.")
flags.DEFINE_enum("data", "moving_mnist", list(CONFIGS), "Dataset (its configs/fluid_*.py).")
flags.DEFINE_list("variants", list(VARIANTS), f"Any of {', '.join(VARIANTS)}.")
flags.DEFINE_list("seeds", ["0", "1"], "Training seeds (the test set is the same for every seed).")
flags.DEFINE_string("root", "runs/fluid_mmnist", "Where the runs go.")
FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  del argv
  unknown = set(FLAGS.variants) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
  module = CONFIGS[FLAGS.data]
  config = module.get_config(FLAGS.preset)
  path = os.path.join(REPO, "configs", os.path.basename(module.__file__))
  models = [v for v in FLAGS.variants if v != "fluid_nodiff"]
  cells = [(s, v) for s in FLAGS.seeds for v in models]
  cells += [(s, v) for s in FLAGS.seeds for v in FLAGS.variants if v == "fluid_nodiff"]
  for seed, variant in cells:
    workdir = os.path.join(FLAGS.root, variant, f"seed{seed}")
    label = f"{variant:<13} seed {seed}"
    if study.finished(os.path.join(workdir, "eval", f"video_{config.data.name}.json"),
                      config.num_steps):
      print(f"{label}: done already")
      continue
    study.train(label, path, workdir, {**VARIANTS[variant], "seed": seed}, FLAGS.preset)


if __name__ == "__main__":
  app.run(main)
