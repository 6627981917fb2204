"""Attention cores against sequence length: time and peak memory of every kind and impl.

  python benchmarks/attention.py --batch=1 --heads=4              # every kind/impl, L=256..16K
  python benchmarks/attention.py --lengths=256,512,1024,2048 --batch=1 --heads=2
  python benchmarks/attention.py --series=softmax/pallas,softmax/cudnn,linear/pallas \
      --passes=fwd,bwd                                            # kernel TFLOP/s on a GPU
  python benchmarks/attention.py --series=softmax/pallas --alibi  # ALiBi: flash vs dense bias

Each point times `attend(kind, q, k, v, causal=..., impl=...)` (models/attention) on random
[batch, L, heads, head_dim] inputs, jitted and compiled once, then, after a warm-up call, the
median of --reps calls (block_until_ready). Passes: fwdbwd = grads of sum(out * w) w.r.t. q, k,
v (w random, fixed); fwd = the output alone; bwd = the vjp of w from the residuals of a forward
run beforehand (its compile_s includes that forward). Kind extras are drawn once per L:
performer 64 orthogonal features, linformer rank 16, local window 128, combiner a random summary
query. Compile time is reported separately.

Memory is XLA's compiled estimate (memory_analysis): temp + argument + output - alias bytes, on
every backend; on a GPU also the allocator's peak_bytes_in_use after the point (a running peak
over the whole process, so it only says something where it rises). A point whose estimate
exceeds --memory_budget_gb is skipped, and a (kind/impl, pass) series stops after a point that
took longer than --time_budget_s.

Every point is also a ratio against softmax/xla at the same L, pass and run (always measured):
x_time = softmax_xla_time / time ("x faster"), x_mem = softmax_xla_memory / memory; null where
softmax/xla was skipped. Model FLOPs, TFLOP/s = FLOPs / time:
  softmax (any impl):  fwd = 4 B H L^2 D, halved when causal;  bwd = 2.5 fwd.
  linear, performer, cosformer, lsa (chunked form, chunk C = min(64, L), feature dim F = D for
  linear and lsa, 2D for cosformer, 64 for performer): fwd = 2 B H L (C (F + D) + 2 F D), the
  intra-chunk products plus the state update and read; bwd = 2 fwd; feature maps not counted.
  local, linformer, combiner, relu: none.
Prints a line per point as it finishes and, at the end, ms, x_time and TFLOP/s as one row per
kind/impl and one column per L; writes a JSON file (environment, flags, every point, the checks)
after each point and a log-log PNG next to it after each L, so a killed run keeps what it did.
"""
import os
import platform
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from substrax.models import attention
from substrax.models.kernels.linear import CHUNK
from substrax.models.kernels.reference import alibi_slopes
from substrax.train.analysis import reporting

BASELINE = "softmax/xla"
PASSES = ("fwd", "bwd", "fwdbwd")
LINEAR_KINDS = ("linear", "performer", "cosformer", "lsa")
NUM_FEATURES, LOW_RANK, WINDOW = 64, 16, 128

flags.DEFINE_list("lengths", [str(2**n) for n in range(8, 15)], "Sequence lengths.")
flags.DEFINE_integer("batch", 1, "Batch size.")
flags.DEFINE_integer("heads", 4, "Heads.")
flags.DEFINE_integer("head_dim", 64, "Head dimension.")
flags.DEFINE_bool("causal", True, "Causal attention.")
flags.DEFINE_string("dtype", None, "Input dtype (default: float32 on CPU, bfloat16 elsewhere).")
flags.DEFINE_list("series", None, "kind/impl pairs to run (default: every kind with each impl "
                  "of SUPPORTED_IMPLS but auto, cudnn on GPU only); softmax/xla always runs.")
flags.DEFINE_list("passes", ["fwdbwd"], f"Passes to time, of {PASSES}.")
flags.DEFINE_integer("reps", 5, "Timed calls per point (median), fewer where they would take "
                     "the point past --time_budget_s.")
flags.DEFINE_float("memory_budget_gb", None, "Skip points whose compiled memory estimate exceeds "
                   "this (default: half the host RAM on CPU, 80% of the device memory else).")
flags.DEFINE_float("time_budget_s", 60.0, "A (kind/impl, pass) series stops after a point "
                   "(compile and calls) that took longer.")
flags.DEFINE_bool("alibi", False, "Softmax gets ALiBi biases: dense in softmax/xla, computed "
                  "block by block inside softmax/pallas (models/positions.py).")
flags.DEFINE_string("out", "runs/bench/attention.json", "JSON output; the PNG goes next to it.")
FLAGS = flags.FLAGS
OUR_FLAGS = ("lengths", "batch", "heads", "head_dim", "causal", "dtype", "series", "passes",
             "alibi", "reps", "memory_budget_gb", "time_budget_s", "out")


def default_series():
  on_gpu = jax.default_backend() == "gpu"
  return [f"{kind}/{impl}" for kind, impls in attention.SUPPORTED_IMPLS.items()
          for impl in impls if impl != "auto" and (impl != "cudnn" or on_gpu)]


def memory_budget_bytes():
  if FLAGS.memory_budget_gb is not None:
    return FLAGS.memory_budget_gb * 2**30
  stats = jax.devices()[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return 0.8 * stats["bytes_limit"]
  return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def model_flops(kind, length, pass_):
  """Model FLOPs of one pass (module docstring), or None for kinds without a formula."""
  b, h, d = FLAGS.batch, FLAGS.heads, FLAGS.head_dim
  if kind == "softmax":
    fwd = 4 * b * h * length**2 * d / (2 if FLAGS.causal else 1)
    bwd_factor = 2.5
  elif kind in LINEAR_KINDS:
    f = {"cosformer": 2 * d, "performer": NUM_FEATURES}.get(kind, d)
    fwd = 2 * b * h * length * (min(CHUNK, length) * (f + d) + 2 * f * d)
    bwd_factor = 2.0
  else:
    return None
  return {"fwd": fwd, "bwd": bwd_factor * fwd, "fwdbwd": (1 + bwd_factor) * fwd}[pass_]


def make_inputs(length, dtype):
  """q, k, v, the output weights w, and every kind's extras, drawn once per length."""
  shape = (FLAGS.batch, length, FLAGS.heads, FLAGS.head_dim)
  keys = jax.random.split(jax.random.key(length), 7)
  q, k, v, w = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys[:4])
  proj = lambda key: jax.random.normal(key, (length, LOW_RANK), jnp.float32) * length**-0.5
  extras = {
      "performer": {"omega": attention.orthogonal_features(keys[4], NUM_FEATURES,
                                                           FLAGS.head_dim)},
      "linformer": {"length_proj": (proj(keys[5]), proj(keys[6]))},
      "local": {"window": WINDOW},
      "combiner": {"summary_query": 0.1 * jax.random.normal(keys[6], shape[2:], jnp.float32)},
  }
  if FLAGS.alibi:
    extras["softmax"] = {"alibi_slopes": alibi_slopes(FLAGS.heads)}
  return (q, k, v, w), extras


def pass_fn_and_args(kind, impl, pass_, inputs, extras):
  """The jitted function of one pass and its arguments. Extras are arguments (static window
  aside), so that XLA cannot fold them into constants."""
  q, k, v, w = inputs
  static = {key: val for key, val in extras.items() if key == "window"}
  arrays = {key: val for key, val in extras.items() if key != "window"}

  def core(q, k, v, arrays):
    return attention.attend(kind, q, k, v, causal=FLAGS.causal, impl=impl, **static, **arrays)

  if pass_ == "fwd":
    return jax.jit(core), (q, k, v, arrays)
  if pass_ == "fwdbwd":
    loss = lambda q, k, v, arrays, w: jnp.sum(core(q, k, v, arrays).astype(jnp.float32) * w)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), (q, k, v, arrays, w)
  out, vjp = jax.jit(lambda q, k, v, arrays: jax.vjp(lambda *t: core(*t, arrays), q, k, v))(
      q, k, v, arrays)
  return jax.jit(lambda vjp, g: vjp(g)), (vjp, w.astype(out.dtype))


def measure(kind, impl, pass_, length, inputs, extras, budget):
  """One point: compile, memory estimate, then timed calls unless over the memory budget."""
  point = {"kind": kind, "impl": impl, "length": length, "pass": pass_}
  start = time.perf_counter()
  fn, args = pass_fn_and_args(kind, impl, pass_, inputs, extras)
  compiled = fn.lower(*args).compile()
  point["compile_s"] = time.perf_counter() - start
  mem = compiled.memory_analysis()
  fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
            "alias_size_in_bytes")
  point["memory"] = {f: int(getattr(mem, f)) for f in fields}
  point["memory_bytes"] = (sum(point["memory"][f] for f in fields[:3])
                           - point["memory"]["alias_size_in_bytes"])
  if point["memory_bytes"] > budget:
    point["skipped"] = f"memory estimate over the {budget / 2**30:.1f} GiB budget"
    return point, time.perf_counter() - start
  def call():
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - t
  # A warm-up call, then up to --reps timed ones while the point stays within the time budget
  # (a warm-up over budget is the one timing).
  times = [call()]
  if times[0] <= FLAGS.time_budget_s:
    times = []
    while len(times) < FLAGS.reps and (not times
                                       or time.perf_counter() - start < FLAGS.time_budget_s):
      times.append(call())
  point["ms"] = float(np.median(times)) * 1e3
  point["calls"] = len(times)
  flops = model_flops(kind, length, pass_)
  point["model_flops"] = flops
  point["tflops"] = None if flops is None else flops / (point["ms"] / 1e3) / 1e12
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    point["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return point, time.perf_counter() - start


def add_ratios(points):
  """x_time and x_mem of each point against softmax/xla at the same length and pass."""
  base = {(p["length"], p["pass"]): p for p in points
          if f"{p['kind']}/{p['impl']}" == BASELINE and "ms" in p}
  for p in points:
    b = base.get((p["length"], p["pass"]))
    timed = b is not None and "ms" in p
    p["x_time"] = b["ms"] / p["ms"] if timed else None
    p["x_mem"] = b["memory_bytes"] / p["memory_bytes"] if timed else None


def fmt(value, spec):
  return "-" if value is None else format(value, spec)


def print_point(p):
  name = f"{p['kind']}/{p['impl']}"
  if "ms" not in p:
    mem = f" ({p['memory_bytes'] / 2**20:.0f} MiB)" if "memory_bytes" in p else ""
    print(f"{name:<18}{p['length']:>6} {p['pass']:<7} skipped: {p['skipped']}{mem}", flush=True)
    return
  print(f"{name:<18}{p['length']:>6} {p['pass']:<7}{p['compile_s']:>9.2f}{p['ms']:>11.2f}"
        f"{fmt(p['x_time'], '.2f'):>9}{p['memory_bytes'] / 2**20:>11.1f}"
        f"{fmt(p['x_mem'], '.2f'):>8}{fmt(p['tflops'], '.3f'):>9}", flush=True)


def find(points, series, length, pass_="fwdbwd"):
  return next((p for p in points if f"{p['kind']}/{p['impl']}" == series
               and p["length"] == length and p["pass"] == pass_ and "ms" in p), None)


def checks(points):
  """The acceptance checks: printed PASS/FAIL lines, never an exit status."""
  lines = []
  p = find(points, "linear/pallas", 8192)
  shape_ok = FLAGS.causal and FLAGS.head_dim == 64
  if p and p["x_time"] is not None and shape_ok:
    lines.append(f"check: linear/pallas fwd+bwd at L=8192, causal, D=64 is {p['x_time']:.1f}x "
                 f"faster than softmax/xla (need >= 20): {'PASS' if p['x_time'] >= 20 else 'FAIL'}")
  else:
    lines.append("check: linear/pallas vs softmax/xla at L=8192: NOT MEASURED (needs causal, "
                 "head_dim=64, 8192 in --lengths and both points timed)")
  small, large = find(points, "linear/pallas", 4096), find(points, "linear/pallas", 16384)
  if small and large:
    growth = large["memory_bytes"] / small["memory_bytes"]
    lines.append(f"check: linear/pallas peak memory 16K/4K = {growth:.2f} (linear in L is 4; "
                 f"need <= 5): {'PASS' if growth <= 5 else 'FAIL'}")
  else:
    lines.append("check: linear/pallas memory growth 4K -> 16K: NOT MEASURED (needs 4096 and "
                 "16384 in --lengths)")
  return lines


def summary(points, series, lengths):
  """Per pass and figure, a table with one row per kind/impl and one column per L."""
  for pass_ in FLAGS.passes:
    for field, spec, title in (("ms", ".1f", "ms per call"),
                               ("x_time", ".2f", "x faster than softmax/xla"),
                               ("tflops", ".3g", "model TFLOP/s")):
      rows = {}
      for name in series:
        cells = [find(points, name, n, pass_) for n in lengths]
        cells = [fmt(c and c[field], spec) for c in cells]
        if any(c != "-" for c in cells):
          rows[name] = cells
      print(f"\n{pass_}: {title}")
      print(f"{'kind/impl':<18}" + "".join(f"{n:>10}" for n in lengths))
      for name, cells in rows.items():
        print(f"{name:<18}" + "".join(f"{c:>10}" for c in cells))


def environment():
  dev = jax.devices()[0]
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "python": platform.python_version(),
          "backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "cpu_affinity": len(os.sched_getaffinity(0)),
          "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}


def plot(path, points, lengths):
  """Log-log time and memory against L, one line per kind/impl (and pass, when several)."""
  fig = Figure(figsize=(12, 4.6), dpi=120)
  ax_t, ax_m = fig.subplots(1, 2)
  names = dict.fromkeys((p["kind"], p["impl"], p["pass"]) for p in points)
  colors = {kind: f"C{i}" for i, kind in enumerate(attention.KINDS)}  # colour: kind; dash: impl
  dashes = {"xla": "--", "pallas": "-", "cudnn": ":"}
  markers = {"fwdbwd": "o", "fwd": "^", "bwd": "v"}
  for kind, impl, pass_ in names:
    series = [p for p in points if (p["kind"], p["impl"], p["pass"]) == (kind, impl, pass_)
              and "ms" in p]
    if not series:
      continue
    label = f"{kind}/{impl}" + (f" {pass_}" if len(FLAGS.passes) > 1 else "")
    style = dict(marker=markers[pass_], ms=3, lw=2.5 if f"{kind}/{impl}" == BASELINE else 1.3,
                 color=colors[kind], ls=dashes[impl], label=label)
    x = [p["length"] for p in series]
    ax_t.plot(x, [p["ms"] for p in series], **style)
    ax_m.plot(x, [p["memory_bytes"] / 2**20 for p in series], **style)
  shape = (f"B={FLAGS.batch} H={FLAGS.heads} D={FLAGS.head_dim} {FLAGS.dtype} "
           f"{'causal' if FLAGS.causal else 'bidirectional'}, {jax.devices()[0].device_kind}")
  for ax, ylabel in ((ax_t, "time per call (ms)"), (ax_m, "compiled memory estimate (MiB)")):
    ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel=ylabel)
    ax.set_xticks(lengths, [str(n) for n in lengths], fontsize=7)
    ax.set_xticks([], minor=True)
    ax.grid(alpha=0.3, which="both")
  ax_t.set_title(shape, fontsize=9)
  ax_m.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(path)


def main(argv):
  del argv
  if FLAGS.dtype is None:
    FLAGS.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  series = list(dict.fromkeys([BASELINE, *(FLAGS.series or default_series())]))
  for name in series:
    kind, _, impl = name.partition("/")
    if impl not in attention.SUPPORTED_IMPLS.get(kind, ()) or impl == "auto":
      raise app.UsageError(f"--series: {name!r} is not a kind/impl pair of SUPPORTED_IMPLS")
  if not set(FLAGS.passes) <= set(PASSES):
    raise app.UsageError(f"--passes must be among {PASSES}")
  lengths = sorted(int(n) for n in FLAGS.lengths)
  budget = memory_budget_bytes()
  result = {"environment": environment(), "flags": {f: FLAGS[f].value for f in OUR_FLAGS},
            "memory_budget_bytes": budget, "points": []}
  points, stopped = result["points"], set()
  png = os.path.splitext(FLAGS.out)[0] + ".png"
  print(f"attention fwd/bwd: B={FLAGS.batch} H={FLAGS.heads} D={FLAGS.head_dim} {FLAGS.dtype} "
        f"causal={FLAGS.causal} on {result['environment']['device_kind']} "
        f"({jax.default_backend()}, jax {jax.__version__}); memory budget "
        f"{budget / 2**30:.1f} GiB, time budget {FLAGS.time_budget_s:.0f} s per point")
  print(f"{'kind/impl':<18}{'L':>6} {'pass':<7}{'compile_s':>9}{'ms':>11}{'x_time':>9}"
        f"{'mem_MiB':>11}{'x_mem':>8}{'TFLOP/s':>9}")
  for length in lengths:
    inputs, extras = make_inputs(length, jnp.dtype(FLAGS.dtype))
    for name in series:
      kind, _, impl = name.partition("/")
      for pass_ in FLAGS.passes:
        if (name, pass_) in stopped:
          continue
        try:
          point, took = measure(kind, impl, pass_, length, inputs, extras.get(kind, {}), budget)
        except Exception as e:  # pylint: disable=broad-except
          # A kernel that does not lower or run on this backend ends its series, not the run.
          first_line = (str(e).strip().splitlines() or [""])[0][:200]
          point = {"kind": kind, "impl": impl, "length": length, "pass": pass_,
                   "skipped": f"error: {type(e).__name__}: {first_line}"}
          took = float("inf")
        points.append(point)
        add_ratios(points)
        print_point(point)
        result["checks"] = checks(points)
        reporting.write_json(FLAGS.out, result)  # after every point: a killed run keeps its data
        if took > FLAGS.time_budget_s:
          stopped.add((name, pass_))
          print(f"  ({name} {pass_}: no longer L after this point)", flush=True)
    plot(png, points, lengths)
  summary(points, series, lengths)
  print("\n" + "\n".join(checks(points)))
  print(f"wrote {FLAGS.out} and {png}")


if __name__ == "__main__":
  app.run(main)
