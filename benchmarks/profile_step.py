"""Where the train step's time goes: a jax.profiler trace of the compiled step, its XLA ops
joined to the model code that emitted them, summed by part of the model.

  python benchmarks/profile_step.py                        # the tiny ICL step (icl_linear:cpu)
  python benchmarks/profile_step.py --config=configs/lm_hmm.py:cpu --steps=20

Traces --steps steps after compilation and warm-up into --workdir/trace (open it in
TensorBoard's profile plugin or Perfetto), writes the optimized HLO to --workdir/step.hlo.txt,
and prints the op time per step by part (forward or backward; MLP, attention projections,
attention core, norms, optimizer, sampler), then the top ops. Op times are summed over XLA's
threads, so they add up to roughly the step's wall time only where the ops run one at a time.
--matmuls=M,K,N;... also times each of those float32 matmuls (and its weight gradient, the
transposed product) jitted alone, and a 2048^3 one: what the shapes allow on this host.
"""
import collections
import glob
import os
import re

import jax
from absl import flags
from ml_collections import config_flags

import study
from substrax.train import trainer

config_flags.DEFINE_config_file("config", "configs/icl_linear.py:cpu", "Experiment config.")
flags.DEFINE_integer("steps", 50, "Traced steps.")
flags.DEFINE_integer("top", 25, "Ops listed.")
flags.DEFINE_string("workdir", "runs/profile_step", "Trace and HLO go here.")
flags.DEFINE_string("matmuls", "1344,64,192;1344,64,256;1344,256,64",
                    "M,K,N shapes timed alone (the tiny ICL step's rows x width products).")
FLAGS = flags.FLAGS

# The first of these names in an op's source path (its metadata op_name) names its part.
PARTS = (("jit(_normal)", "sampler"), ("jit(_uniform)", "sampler"),
         ("attn._core", "attention core"), ("/attn/", "attention projections"),
         ("/mlp/", "MLP"), ("norm", "norms"), ("read_in", "read-in/out"),
         ("read_out", "read-in/out"), ("embed", "read-in/out"))


def part(op_name: str) -> str:
  """'backward MLP', 'forward norms', ... from an op's op_name; what lies outside the model
  (no jvp in its path) is the optimizer and the metrics unless it is the sampler."""
  name = next((p for key, p in PARTS if key in op_name), None)
  if "jvp(" not in op_name:
    return name if name == "sampler" else "optimizer, loss and metrics"
  return ("backward " if "transpose(jvp(" in op_name else "forward ") + (name or "other")


def matmul_gflops(m: int, k: int, n: int, reps: int = 200) -> tuple[float, float]:
  """GFLOP/s of a jitted [m, k] x [k, n] float32 matmul and of its weight gradient
  [m, k]^T x [m, n] (medians of `reps`)."""
  a, w = jax.random.normal(jax.random.key(0), (m, k)), jax.random.normal(jax.random.key(1), (k, n))
  g = jax.random.normal(jax.random.key(2), (m, n))
  product = study.median_seconds(jax.jit(lambda a, w: a @ w), a, w, reps=reps)
  gradient = study.median_seconds(jax.jit(lambda a, g: a.T @ g), a, g, reps=reps)
  return 2 * m * k * n / product / 1e9, 2 * m * k * n / gradient / 1e9


def main(_):
  config = FLAGS.config
  config.progress_bar = False
  exp = trainer.setup(config)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  trace_dir = os.path.join(FLAGS.workdir, "trace")
  with exp.activate():
    hlo = exp.train_step.lower(exp.abstract_state, exp.train_data).compile().as_text()
    state = exp.init()
    for _ in range(20):
      state, metrics = exp.train_step(state, exp.train_data)
    jax.block_until_ready(metrics)
    jax.profiler.start_trace(trace_dir)
    for _ in range(FLAGS.steps):
      state, metrics = exp.train_step(state, exp.train_data)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
  with open(os.path.join(FLAGS.workdir, "step.hlo.txt"), "w") as f:
    f.write(hlo)
  source = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
      r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"", hlo, re.M)}
  newest = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
               key=os.path.getmtime)
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(newest).planes:
    for line in plane.lines:
      if "XLAEigen" not in line.name:   # XLA:CPU's worker threads, where the ops run
        continue
      for event in line.events:
        if event.name in source:
          totals[event.name] += event.duration_ns / FLAGS.steps / 1e3
  if not totals:
    study.stop("the trace holds no XLA:CPU op events (this script reads CPU traces)", 1)
  by_part = collections.Counter()
  for op, us in totals.items():
    by_part[part(source[op][1])] += us
  total = sum(by_part.values())
  print(f"{config.task} step, {jax.devices()[0].device_kind}: {total / 1e3:.2f} ms of op time "
        f"per step over {FLAGS.steps} traced steps")
  for name, us in by_part.most_common():
    print(f"  {us / 1e3:7.2f} ms {100 * us / total:5.1f}%  {name}")
  print(f"top {FLAGS.top} ops (us per step, output shape, source):")
  for op, us in totals.most_common(FLAGS.top):
    shape, op_name = source[op]
    print(f"  {us:7.1f}  {op:28s} {shape:28s} {op_name.removeprefix('jit(sample_and_update)/')}")
  if FLAGS.matmuls:
    print("float32 matmuls alone (GFLOP/s: product, weight gradient):")
    for shape in [*FLAGS.matmuls.split(";"), "2048,2048,2048"]:
      m, k, n = (int(v) for v in shape.split(","))
      print(f"  [{m}, {k}] x [{k}, {n}]: " + " / ".join(
          f"{r:.0f}" for r in matmul_gflops(m, k, n, 20 if m == 2048 else 200)))
  print(f"wrote {trace_dir} and {FLAGS.workdir}/step.hlo.txt")


if __name__ == "__main__":
  study.run(main, lambda: "nothing is kept")
