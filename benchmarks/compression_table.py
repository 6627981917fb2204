"""Post-training compression of trained runs: bytes on disk against weight error and task loss.

  python benchmarks/compression_table.py --icl=runs/demo --lm=runs/lm_hmm --out=runs/compression

For each run (the ICL demo, icl_linear:cpu; the HMM language model, lm_hmm:cpu; a missing or
unfinished one is trained first with substrax-train) the newest checkpoint's params are
compressed by models/compression.py, written as one .npz, read back, decompressed to float32
and scored by the task's own eval_step on its held-out data:

  float32          every param as float32 (the reference .npz)
  int8 b64         blockwise int8, one float32 scale per 64 values
  int4 b64, b32    blockwise int4 (packed two per byte)
  int4 tensor      int4 with one scale per tensor (what blockwise scaling is compared with)
  svd 2x, 4x       truncated SVD of each matrix at 1/2, 1/4 of its float32 bytes
  ds 2x, 4x        dense x 2:4-sparse product (DSFormer) at the same bytes

Only matrices (ndim >= 2, not biases) are compressed; biases and norm scales stay float32, as
do matrices too small to factorise at the ratio ("kept f32"). bytes is os.path.getsize of the
.npz (headers and the JSON index included); ratio = float32 .npz bytes / bytes. Weight error is
||W - W^||_F / ||W||_F over the compressed matrices: aggregate (sqrt of summed squares) and
median per matrix. "worst matrix alone" (SVD and DS rows) factorises one matrix at a time, the
rest float32, and names the one that raises the task loss most. Prints markdown tables with the machine and wall
time; writes OUT/compression.json and the .npz files under OUT/<run>/.
"""
import argparse
import json
import os
import platform
import time

# The fits solve many small least-squares problems (<= 512 wide), which one BLAS thread runs
# 10x faster than threads contending for a shared 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import jax
import ml_collections
import numpy as np

import study
from substrax.models import compression
from substrax.train import trainer, workdir as workdir_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RUNS = {"icl": ("icl_linear", "eval/icl_linear.json"), "lm": ("lm_hmm", "eval/lm.json")}
METHODS = {  # name: params -> compressed form
    "float32": compression.float32_tree,
    "int8 b64": lambda p: compression.quantize_tree(p, 8, 64),
    "int4 b64": lambda p: compression.quantize_tree(p, 4, 64),
    "int4 b32": lambda p: compression.quantize_tree(p, 4, 32),
    "int4 tensor": lambda p: compression.quantize_tree(p, 4, None),
    "svd 2x": lambda p: compression.factorize_tree(p, "svd", 2.0),
    "ds 2x": lambda p: compression.factorize_tree(p, "ds", 2.0),
    "svd 4x": lambda p: compression.factorize_tree(p, "svd", 4.0),
    "ds 4x": lambda p: compression.factorize_tree(p, "ds", 4.0),
}


def load(workdir: str):
  """trainer.load_run on the run's own recorded config."""
  config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))
  config.progress_bar = False
  return trainer.load_run(config, workdir)


def ensure_trained(workdir: str, name: str, eval_json: str):
  if os.path.exists(os.path.join(workdir, eval_json)):
    return
  print(f"{workdir}: no {eval_json}; training {name}:cpu there", flush=True)
  if not study.train(name, os.path.join(REPO, "configs", f"{name}.py"), workdir, {}, "cpu"):
    raise SystemExit(f"training {workdir} failed")


def study_run(workdir: str, out: str) -> dict:
  exp, state, step = load(workdir)
  params = jax.tree.map(np.asarray, state.params)
  reference = compression.float32_tree(params)
  os.makedirs(out, exist_ok=True)

  def task_metrics(p):
    placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), p, state.params)
    with exp.activate():
      metrics = exp.eval_step(placed, state.model_state, exp.eval_data, state.step)
    return {k: float(v) for k, v in metrics.items()}

  def worst_matrix(compressed, loss):
    """(path, loss change) of the factorised matrix whose compression alone (the rest float32)
    raises the task loss most; None where nothing was factorised (an eval per matrix is the
    study's main cost, so quantized rows skip it)."""
    changes = {path: task_metrics(compression.decompress({**reference, path: rec}))["loss"] - loss
               for path, rec in compressed.items() if rec["kind"] in ("svd", "ds")}
    return max(changes.items(), key=lambda kv: kv[1]) if changes else None

  rows = []
  for name, method in METHODS.items():
    start = time.perf_counter()
    compressed = method(params)
    fit_s = time.perf_counter() - start
    path = os.path.join(out, name.replace(" ", "_") + ".npz")
    size = compression.save(compressed, path)
    metrics = task_metrics(compression.decompress(compression.load(path)))
    base = rows[0] if rows else {"bytes": size, "metrics": metrics}
    kept = sum(rec["kind"] == "float32" and compression.is_matrix(p, rec["w"])
               for p, rec in compressed.items())
    rows.append({"method": name, "bytes": size, "ratio": base["bytes"] / size, "fit_s": fit_s,
                 "kept_float32": int(kept), "error": compression.weight_error(params, compressed),
                 "metrics": metrics, "loss_change": metrics["loss"] - base["metrics"]["loss"],
                 "worst_matrix": worst_matrix(compressed, base["metrics"]["loss"])})
    print(f"  {name}: {size} bytes, fit {fit_s:.1f} s", flush=True)
  return {"workdir": workdir, "step": int(step), "rows": rows}


def table(result: dict) -> str:
  lines = ["| method | bytes on disk | ratio | matrices (kept f32) | weight err aggr. | median "
           "| task loss | Δ loss | Δ % | worst matrix alone: Δ loss | fit s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
  base = result["rows"][0]["metrics"]["loss"]
  for r in result["rows"]:
    e = r["error"]
    worst = "{} {:+.4f}".format(*r["worst_matrix"]) if r["worst_matrix"] else "-"
    lines.append(f"| {r['method']} | {r['bytes']:,} | {r['ratio']:.2f} | {e['matrices']} "
                 f"({r['kept_float32']}) | {e['aggregate']:.4f} | {e['median']:.4f} | "
                 f"{r['metrics']['loss']:.4f} | {r['loss_change']:+.4f} | "
                 f"{100 * r['loss_change'] / base:+.1f} | {worst} | "
                 f"{r['fit_s']:.1f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--icl", default="runs/demo", help="icl_linear:cpu run directory")
  parser.add_argument("--lm", default="runs/lm_hmm", help="lm_hmm:cpu run directory")
  parser.add_argument("--out", default="runs/compression", help=".npz files and the JSON")
  args = parser.parse_args()
  start = time.perf_counter()
  machine = {"platform": platform.platform(), "processor": platform.processor(),
             "machine": platform.machine(), "cpus": os.cpu_count(),
             "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}
  results = {}
  for key, workdir in (("icl", args.icl), ("lm", args.lm)):
    name, eval_json = RUNS[key]
    ensure_trained(workdir, name, eval_json)
    print(f"{key}: {workdir}", flush=True)
    results[key] = study_run(workdir, os.path.join(args.out, key))
  wall = time.perf_counter() - start
  print(f"\nMachine: {machine['platform']} ({machine['machine']}, {machine['cpus']} CPUs), "
        f"devices {machine['devices']}, jax {machine['jax']}; wall time {wall:.0f} s\n")
  for key, result in results.items():
    print(f"### {key}: {result['workdir']} (step {result['step']})\n")
    print(table(result) + "\n")
  with open(os.path.join(args.out, "compression.json"), "w") as f:
    json.dump({"machine": machine, "wall_s": wall, "runs": results}, f, indent=1)


if __name__ == "__main__":
  main()
