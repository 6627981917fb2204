"""Training speed of FluidWorld against the Transformer as the frame grows: O(N) vs O(N^2)?

  python benchmarks/fluid_scaling.py                          # 32, 64, 128 px, cpu-preset models
  python benchmarks/fluid_scaling.py --models=fluid,transformer,transformer-linear,convlstm

FluidWorld's paper argues from op counts that its PDE costs O(N) in the latent positions N while
attention costs O(N^2), so it should overtake the Transformer at higher resolutions. This times
it: iterations/s of one training step (the video task's window loss, forward and backward, then
AdamW) on random frames of the given sizes, with the models of the config (patch 4: an
(S/4)x(S/4) latent grid, so N = 64, 256, 1024 tokens at 32, 64, 128 px). `transformer-<kind>`
swaps the attention substrate (e.g. linear). Every ratio is against FluidWorld at the same size
in the same run; the growth exponent is log(time ratio) / log(N ratio) from the smallest size.
Peak memory is XLA's compiled estimate: temp + arguments + outputs - aliased bytes.
"""
import json
import time

import jax
import numpy as np
import optax
from flax import linen as nn
from absl import app, flags
from ml_collections import config_flags

from substrax.models import video
from substrax.train.tasks import video as video_task

config_flags.DEFINE_config_file("config", "configs/fluid_mmnist.py:cpu", "Video config (models).")
flags.DEFINE_list("sizes", ["32", "64", "128"], "Frame sides in pixels.")
flags.DEFINE_list("models", ["fluid", "transformer"], "fluid, convlstm, transformer[-<kind>].")
flags.DEFINE_integer("batch_size", 0, "Batch size; 0 = the config's.")
flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")
flags.DEFINE_string("json_out", "", "Also write the points here.")
FLAGS = flags.FLAGS


def model_config(base, spec: str, size: int):
  config = base.copy_and_resolve_references()
  with config.unlocked():
    name, _, kind = spec.partition("-")
    config.model.name = name
    if kind:
      config.model.attention.kind = kind
    config.data.size = size
  return config


def speed_point(config, batch_size: int, steps: int) -> dict:
  d, m = config.data, config.model
  model = video_task.make_model(config)
  loss = video.LossConfig(**config.loss.to_dict())
  frames = jax.random.uniform(jax.random.key(0),
                              (batch_size, d.window + 1, d.size, d.size, d.channels))
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), frames[:, 0]))
  params = variables.pop("params")
  tx = optax.adamw(config.optim.learning_rate)

  def step(params, opt_state, model_state, frames):
    def loss_fn(p):
      return video.window_loss(model, {"params": p, **model_state}, frames, loss=loss,
                               state_grad=m.state_grad, remat=m.remat)
    grads, (_, model_state) = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state

  state = (params, tx.init(params), dict(variables))
  compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state, frames).compile()
  mem = compiled.memory_analysis()
  peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
          - mem.alias_size_in_bytes)
  point = {"size": d.size, "tokens": (d.size // m.patch) ** 2,
           "params": sum(x.size for x in jax.tree.leaves(params)), "peak_bytes": int(peak)}
  try:
    state = jax.block_until_ready(compiled(*state, frames))   # warm-up
  except jax.errors.JaxRuntimeError as e:
    if "out of memory" not in str(e).lower():
      raise
    return {**point, "iters_per_s": float("nan")}   # a result too: it does not fit
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state = compiled(*state, frames)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  return {**point, "iters_per_s": 1 / float(np.median(times))}


def table(points: dict, sizes: list[int]) -> str:
  base = points["fluid"] if "fluid" in points else None
  head = [f"it/s {s} px (N={points[next(iter(points))][i]['tokens']})"
          for i, s in enumerate(sizes)] + [f"peak MiB {s} px" for s in sizes]
  head.append(f"time growth N^a, {sizes[0]}->{sizes[-1]} px")
  lines = [f"| model (params at {sizes[0]} px) | " + " | ".join(head) + " |",
           "|---|" + "---|" * len(head)]
  for spec, row in points.items():
    cells = []
    for i, p in enumerate(row):
      ratio = "" if base is None or spec == "fluid" else \
          f" ({p['iters_per_s'] / base[i]['iters_per_s']:.2f}x)"
      cells.append("out of memory" if np.isnan(p["iters_per_s"])
                   else f"{p['iters_per_s']:.3g}{ratio}")
    cells += [f"{p['peak_bytes'] / 2**20:.0f}" for p in row]
    a = np.log(row[0]["iters_per_s"] / row[-1]["iters_per_s"]) / np.log(
        row[-1]["tokens"] / row[0]["tokens"])
    cells.append(f"{a:.2f}")
    lines.append(f"| {spec} ({row[0]['params']:,}) | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  sizes = [int(s) for s in FLAGS.sizes]
  batch = FLAGS.batch_size or FLAGS.config.batch_size
  points = {}
  for spec in FLAGS.models:
    for size in sizes:
      p = speed_point(model_config(FLAGS.config, spec, size), batch, FLAGS.steps)
      points.setdefault(spec, []).append(p)
      print(f"  {spec:<20} {size:>4} px: {p['iters_per_s']:.3g} it/s, "
            f"{p['peak_bytes'] / 2**20:.0f} MiB", flush=True)
  device = jax.devices()[0]
  print(f"\nTraining iterations/s at batch {batch}, window {FLAGS.config.data.window} "
        f"({device.platform}: {device.device_kind}); ratios against fluid at the same size:\n")
  print(table(points, sizes))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump({"device": device.device_kind, "batch_size": batch, "points": points}, f,
                indent=1)


if __name__ == "__main__":
  app.run(main)
