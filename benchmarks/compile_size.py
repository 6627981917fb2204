"""The compiled train step must not grow with the dataset.

  python benchmarks/compile_size.py                 # ListOps with 2K and 96K training examples

Prints the lowered StableHLO bytes and the lower and compile seconds of the ListOps train step
(the `gpu` preset's data: expressions of 500-2000 tokens, and its model) for each training-set
size. `argument` is the trainer's step, which receives the split as an argument. The baseline,
`closed over`, is the same step with the split captured in a closure, as tasks built it before:
jit then embeds the split in the program as a constant. The ratios compare 96K with 2K
(medians of 3 compiles each, the sizes alternating).
The 96K split is generated once (about 2 minutes on 2 cores) and cached like any LRA data.
"""
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from substrax.train import trainer

config_flags.DEFINE_config_file("config", "configs/lra_listops.py:gpu", "A ListOps config.")
flags.DEFINE_list("train_sizes", ["2000", "96000"], "Training-set sizes to compare.")
flags.DEFINE_integer("repeats", 3, "Compiles of each variant; the medians are printed.")
FLAGS = flags.FLAGS


def measure(fn, *args) -> dict:
  jax.clear_caches()   # JAX keeps lowered and compiled programs in memory: time them anew
  start = time.perf_counter()
  lowered = fn.lower(*args)
  lowered_s = time.perf_counter() - start
  size = len(lowered.as_text().encode())
  start = time.perf_counter()
  lowered.compile()
  return {"stablehlo_bytes": size, "lower_s": lowered_s,
          "compile_s": time.perf_counter() - start}


def main(argv):
  del argv
  # A warm persistent cache would time cache reads, not compiles.
  jax.config.update("jax_enable_compilation_cache", False)
  sizes = [int(n) for n in FLAGS.train_sizes]
  steps = {}
  for n in sizes:
    config = FLAGS.config.copy_and_resolve_references()
    config.data.sizes = (n, *config.data.sizes[1:])
    exp = trainer.setup(config)
    closed = jax.jit(lambda state, exp=exp: exp.train_step(state, exp.train_data))
    steps[n] = (exp, {"argument": (exp.train_step, exp.abstract_state, exp.train_data),
                      "closed over": (closed, exp.abstract_state)})
  # The process's first compile also pays XLA's one-off start-up; then the sizes alternate, so
  # a change in the machine's load hits both alike. Medians of FLAGS.repeats.
  with steps[sizes[0]][0].activate():
    measure(*steps[sizes[0]][1]["argument"])
  runs = {(n, name): [] for n in sizes for name in ("argument", "closed over")}
  for _ in range(FLAGS.repeats):
    for n in sizes:
      exp, fns = steps[n]
      with exp.activate():
        for name, (fn, *args) in fns.items():
          runs[n, name].append(measure(fn, *args))
  median = {key: {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
            for key, rs in runs.items()}
  for n in sizes:
    data_mb = sum(x.nbytes for x in jax.tree.leaves(steps[n][0].train_data)) / 2**20
    for name in ("argument", "closed over"):
      r = median[n, name]
      print(f"{n:>7,} examples ({data_mb:6.1f} MB)  {name:<12} StableHLO "
            f"{r['stablehlo_bytes'] / 2**20:9.3f} MB  lower {r['lower_s']:6.2f} s  "
            f"compile {r['compile_s']:6.2f} s")
  small, large = sizes[0], sizes[-1]
  for name in ("argument", "closed over"):
    a, b = median[small, name], median[large, name]
    print(f"{name}: {large:,} / {small:,} examples: StableHLO bytes "
          f"x{b['stablehlo_bytes'] / a['stablehlo_bytes']:.3f}, compile seconds "
          f"x{b['compile_s'] / a['compile_s']:.3f} (medians of {FLAGS.repeats})")


if __name__ == "__main__":
  app.run(main)
