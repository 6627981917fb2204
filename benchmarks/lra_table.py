"""The two LRA tables: accuracy of finished runs, and train-step speed/memory against length.

  python benchmarks/lra_table.py            # accuracy table from runs/lra (benchmarks/lra_runs.py)
  python benchmarks/lra_table.py --speed    # also the speed/memory table at 1K-4K

Accuracy: test accuracy, mean +- std over seeds, per attention kind and task, with the
majority-class baseline and LRA's published rows (Tay et al. 2021, full-size models and data)
for reference. Speed/memory, in the layout of LRA's Table 2: steps/s and peak memory of one
training step (forward, backward, AdamW) of LRA's Text encoder (4 layers, 4 heads, width 256,
MLP 1024) at batch 1 (B*H = 4 fixed), each relative to softmax with impl 'xla' measured in the
same run. Peak memory is XLA's compiled estimate: temp + arguments + outputs - aliased bytes.
"""
import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import study
from substrax.configs import common
from substrax.models import attention
from substrax.models.classifier import Classifier
from substrax.models.transformer import BlockConfig

flags.DEFINE_string("root", "runs/lra", "Where benchmarks/lra_runs.py put the runs.")
flags.DEFINE_bool("speed", False, "Also measure the speed/memory table.")
flags.DEFINE_list("lengths", ["1024", "2048", "3072", "4096"], "Sequence lengths (speed).")
flags.DEFINE_list("kinds", list(attention.KINDS), "Attention kinds (speed).")
flags.DEFINE_integer("steps", 3, "Timed steps per point after one warm-up step (speed).")
FLAGS = flags.FLAGS

TASKS = {"listops": "ListOps", "pathfinder": "Pathfinder", "image": "Image"}
PUBLISHED_DATA = {"listops": "listops", "pathfinder": "pathfinder", "image": "cifar10"}
# Tay et al. 2021 (README as of 2020-11-08): ListOps, Pathfinder-32, Image (CIFAR-10), in %.
PUBLISHED = {"softmax": ("Transformer", 36.37, 71.40, 42.44),
             "linear": ("Linear Trans.", 16.13, 75.30, 42.34),
             "performer": ("Performer", 18.01, 77.05, 42.77),
             "local": ("Local Att", 15.82, 66.63, 41.46),
             "linformer": ("Linformer", 35.70, 76.34, 38.56)}


def gather(root: str) -> dict:
  """{task: {kind: [result per seed]}} from ROOT/<task>/<kind>/seed*/eval/lra_*.json."""
  runs = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "*", "seed*", "eval", "lra_*.json"))):
    task, kind = path.split(os.sep)[-5:-3]
    with open(path) as f:
      result = json.load(f)
    wall = study.read_wall(os.path.dirname(os.path.dirname(path)))
    if wall is not None:
      result["wall_s"] = wall
    runs.setdefault(task, {}).setdefault(kind, []).append(result)
  return runs


def accuracy_table(runs: dict) -> str:
  tasks = [t for t in TASKS if t in runs] + sorted(set(runs) - set(TASKS))
  kinds = [k for k in attention.KINDS if any(k in runs[t] for t in tasks)]

  def describe(task):
    r = next(iter(runs[task].values()))[0]
    return f"{TASKS.get(task, task)} ({r['task']}, L={r['length']}, {r['step']} steps)"

  lines = ["| attention | " + " | ".join(describe(t) for t in tasks) + " |",
           "|---|" + "---|" * len(tasks)]
  for kind in kinds:
    cells = []
    for task in tasks:
      acc = [100 * r["test_accuracy"] for r in runs[task].get(kind, [])]
      cells.append(f"{np.mean(acc):.1f} ± {np.std(acc):.1f} (n={len(acc)})" if acc else "—")
    lines.append(f"| {kind} | " + " | ".join(cells) + " |")
  majority = [100 * next(iter(runs[t].values()))[0]["test_majority_accuracy"] for t in tasks]
  lines.append("| majority class | " + " | ".join(f"{m:.1f}" for m in majority) + " |")
  for kind in kinds:
    if kind in PUBLISHED:
      name, *published = PUBLISHED[kind]
      cells = []
      for t in tasks:
        if t not in TASKS:
          cells.append("—")
          continue
        value, dataset = published[list(TASKS).index(t)], PUBLISHED_DATA[t]
        ours = next(iter(runs[t].values()))[0]["task"]
        cells.append(f"{value:.2f}" + ("" if ours == dataset else f" (on {dataset})"))
      lines.append(f"| *LRA published: {name}* | " + " | ".join(cells) + " |")
  walls = [r["wall_s"] for t in tasks for rs in runs[t].values() for r in rs if "wall_s" in r]
  if walls:
    lines.append(f"\n{len(walls)} runs; wall time per run: median {np.median(walls) / 60:.1f} "
                 f"min, longest {max(walls) / 60:.1f} min.")
  return "\n".join(lines)


def speed_point(kind: str, length: int, steps: int) -> dict:
  """Steps/s and compiled peak memory of one LRA Text-encoder training step."""
  block = BlockConfig(num_heads=4, mlp_ratio=4,
                      attention=attention.layer_kwargs(common.attention_config(kind)))
  model = Classifier(vocab_size=257, num_classes=2, max_len=length, width=256, depth=4,
                     block=block, pool="cls")
  tokens = jax.random.randint(jax.random.key(0), (1, length), 1, 257)
  labels = jnp.zeros((1,), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                        is_leaf=lambda x: hasattr(x, "value"))
  tx = optax.adamw(1e-4)

  def step(params, opt_state, tokens, labels):
    def loss_fn(p):
      logits = model.apply({"params": p}, tokens)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, tokens,
                                                        labels).compile()
  mem = compiled.memory_analysis()
  peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
          - mem.alias_size_in_bytes)
  params, opt_state = compiled(params, opt_state, tokens, labels)   # warm-up
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    params, opt_state = compiled(params, opt_state, tokens, labels)
    jax.block_until_ready(params)
    times.append(time.perf_counter() - start)
  return {"kind": kind, "length": length, "steps_per_s": 1 / float(np.median(times)),
          "peak_bytes": int(peak)}


def speed_table(points: list[dict], lengths: list[int]) -> str:
  base = {p["length"]: p for p in points if p["kind"] == "softmax"}
  head = ([f"steps/s {n // 1024}K" for n in lengths] +
          [f"peak mem (MiB) {n // 1024}K" for n in lengths])
  lines = ["| attention (impl xla) | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
  for kind in dict.fromkeys(p["kind"] for p in points):
    row = {p["length"]: p for p in points if p["kind"] == kind}
    speed = [f"{row[n]['steps_per_s']:.3g} ({row[n]['steps_per_s'] / base[n]['steps_per_s']:.1f}x)"
             for n in lengths]
    memory = [f"{row[n]['peak_bytes'] / 2**20:.0f} ({row[n]['peak_bytes'] / base[n]['peak_bytes']:.2f}x)"
              for n in lengths]
    lines.append(f"| {kind} | " + " | ".join(speed + memory) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  runs = gather(FLAGS.root)
  if runs:
    print("Test accuracy (%), mean ± std over seeds:\n")
    print(accuracy_table(runs))
  else:
    print(f"no finished runs under {FLAGS.root}; run benchmarks/lra_runs.py first")
  if not FLAGS.speed:
    return
  lengths = [int(n) for n in FLAGS.lengths]
  kinds = ["softmax"] + [k for k in FLAGS.kinds if k != "softmax"]   # the baseline first
  points = []
  for kind in kinds:
    for length in lengths:
      points.append(speed_point(kind, length, FLAGS.steps))
      p = points[-1]
      print(f"  {kind:<10} L={length:<5} {p['steps_per_s']:.3g} steps/s, "
            f"{p['peak_bytes'] / 2**20:.0f} MiB", flush=True)
  device = jax.devices()[0]
  print(f"\nTrain-step speed and peak memory, ratios against softmax in the same run "
        f"({device.platform}: {device.device_kind}, {jax.device_count()} device(s)):\n")
  print(speed_table(points, lengths))
  os.makedirs(FLAGS.root, exist_ok=True)
  with open(os.path.join(FLAGS.root, "speed.json"), "w") as f:
    json.dump({"device": device.device_kind, "points": points}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
