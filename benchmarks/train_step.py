"""Train-step speed: median ms/step, examples/s and MFU against a float32 matmul peak.

  python benchmarks/train_step.py                       # the reference tiny ICL shape
  python benchmarks/train_step.py --config=configs/icl_linear.py:gpu

The step timed is the full trainer step: on-device prompt sampling plus the jitted update,
exactly as the trainer dispatches them. MFU = XLA-counted FLOPs of the update per second divided
by the peak of a jitted float32 matmul (n=2048 on CPU, 8192 on accelerators) measured in the
same run.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import study
from substrax.train import trainer

config_flags.DEFINE_config_file("config", "configs/icl_linear.py:cpu", "Experiment config.")
flags.DEFINE_integer("steps", 300, "Timed steps.")
flags.DEFINE_integer("warmup", 30, "Untimed steps after compilation.")
FLAGS = flags.FLAGS


def matmul_peak(n: int, reps: int = 10) -> float:
  """FLOP/s of a jitted n x n float32 matmul (median of `reps`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  return 2 * n**3 / study.median_seconds(jax.jit(lambda x, y: x @ y), a, a, reps=reps)


def main(argv):
  del argv
  config = FLAGS.config
  exp = trainer.setup(config)
  with exp.activate():
    flops = trainer.train_step_flops(exp)
    times = study.step_times(exp, FLAGS.warmup, FLAGS.steps)
  peak = matmul_peak(2048 if jax.default_backend() == "cpu" else 8192)
  ms = float(np.median(times)) * 1e3
  result = {
      "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "batch_size": config.batch_size, "ms_per_step_median": ms,
      "ms_per_step_p10_p90": [float(np.percentile(times, q)) * 1e3 for q in (10, 90)],
      "examples_per_sec": config.batch_size / (ms / 1e3),
      "flops_per_step_xla": flops, "achieved_gflops": flops / (ms / 1e3) / 1e9,
      "matmul_peak_gflops": peak / 1e9, "mfu": flops / (ms / 1e3) / peak,
  }
  print(f"{ms:.2f} ms/step (median of {FLAGS.steps}), {result['examples_per_sec']:.0f} examples/s, "
        f"{result['achieved_gflops']:.1f} GFLOP/s of a {result['matmul_peak_gflops']:.1f} GFLOP/s "
        f"float32 matmul peak: MFU {result['mfu']:.1%}" + (
            " (a lower bound: XLA counts the scanned layers once)"
            if config.model.get("scan") else ""))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
