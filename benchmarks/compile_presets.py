"""Compiles every config's `gpu` and `pod` preset on 8 fake CPU devices: lower and compile
seconds, XLA's compiled memory per device, FLOPs per step.

  python benchmarks/compile_presets.py                          # every config, gpu and pod
  python benchmarks/compile_presets.py --only=icl_linear:gpu,lra_text:pod
  python benchmarks/compile_presets.py --scan_compare=icl_linear:gpu   # nn.scan vs unrolled
  python benchmarks/compile_presets.py --scan_compare=icl_linear:gpu --depths=1,3,12,24,48
  python benchmarks/compile_presets.py --scan_compare=icl_linear:gpu --set=model.remat=full

Each preset is `substrax-inspect --json` in a process of its own, with XLA_FLAGS set in its
environment before jax starts and a timeout, so a crash or a hang stays in its row and its
memory is freed. The children run without the persistent compilation cache: a cache read is not
a compile. `setup` is building the task, its dataset included (generated, or read from the
cache under $SUBSTRAX_DATA; a cold Pathfinder-32 build took 25 minutes on 2 busy cores).
lm_text trains on the user's corpus (data.path): it compiles with the repository's README.md as
the corpus, which changes only its data column. Writes OUT/results.json and
OUT/results.md (the table); with --only, those presets' rows replace their old ones there.
Exits 1 if a preset failed, after the table. --scan_compare compiles each variant once more
with XLA's dump on and reports the distinct kernels of its train step.
"""
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import jax
from absl import flags

import study
from substrax import configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8
PRESETS = ("gpu", "pod")
# Configs whose data the user supplies, and the overrides of a stand-in with the same shapes.
CORPUS = os.path.join(tempfile.gettempdir(), "compile_presets_corpus.txt")  # lm_text needs .txt
# LRA Text and Image read TFDS datasets that need a network once: random records in their schema.
TFDS_DIR = os.path.join(tempfile.gettempdir(), "compile_presets_tfds")
STAND_INS = {"lm_text": [f"--config.data.path={CORPUS}"],
             "lra_text": [f"--config.data.data_dir={TFDS_DIR}"],
             "lra_image": [f"--config.data.data_dir={TFDS_DIR}"]}
STAND_IN_LABELS = {"lm_text": "README as corpus", "lra_text": "random stand-in data",
                   "lra_image": "random stand-in data"}

flags.DEFINE_list("only", [], "CONFIG:PRESET entries to run instead of all, e.g. "
                  "icl_linear:gpu,lra_text:pod.")
flags.DEFINE_string("scan_compare", None, "CONFIG:PRESET: compile with model.scan=True and "
                    "=False, interleaved, and compare the median compile seconds.")
flags.DEFINE_integer("repeats", 3, "--scan_compare: compiles of each variant.")
flags.DEFINE_list("depths", [], "--scan_compare: model depths to compare at (default: the "
                  "preset's), e.g. 1,12,48: where scanning starts to pay on XLA:CPU.")
flags.DEFINE_list("set", [], "--scan_compare: config overrides for both variants, e.g. "
                  "model.remat=full.")
flags.DEFINE_integer("timeout_s", 1800, "Per preset, data generation included.")
flags.DEFINE_string("out", "runs/compile_presets", "Where results.json and results.md go.")
FLAGS = flags.FLAGS


def parse_entry(entry: str) -> tuple[str, str]:
  name, _, preset = entry.partition(":")
  if name not in configs.names():
    raise ValueError(f"no config {name!r} in configs/ (from {entry!r})")
  if preset not in ("tiny", "cpu", *PRESETS):
    raise ValueError(f"{entry!r}: give CONFIG:PRESET with a preset of tiny, cpu, gpu, pod")
  return name, preset


def child_env(dump_to: str | None = None) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(DEVICES),
             JAX_ENABLE_COMPILATION_CACHE="false")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if not f.startswith(("--xla_force_host_platform_device_count", "--xla_dump_to"))]
  kept.append(f"--xla_force_host_platform_device_count={DEVICES}")
  env["XLA_FLAGS"] = " ".join(kept + ([f"--xla_dump_to={dump_to}"] if dump_to else []))
  return env


def inspect(name: str, preset: str, overrides=(), dump_to: str | None = None) -> dict:
  """One preset through substrax-inspect --json in a fresh process: its report (modules left
  out) or the one-line reason it failed."""
  binary = os.path.join(os.path.dirname(sys.executable), "substrax-inspect")
  overrides = [*STAND_INS.get(name, []), *overrides]
  args = [binary, f"--config={os.path.join(configs.DIR, name)}.py:{preset}", "--json", *overrides]
  row = {"config": name, "preset": preset, "overrides": overrides, "jax": jax.__version__,
         "time": time.strftime("%Y-%m-%d %H:%M")}
  start = time.perf_counter()
  # A session of its own, so that a timeout or Ctrl-C also ends the data builders' workers.
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=REPO, env=child_env(dump_to), start_new_session=True)
  try:
    stdout, stderr = proc.communicate(timeout=FLAGS.timeout_s)
  except BaseException as e:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    if not isinstance(e, subprocess.TimeoutExpired):
      raise
    return row | {"ok": False, "reason": f"timed out after {FLAGS.timeout_s} s",
                  "wall_s": time.perf_counter() - start}
  row["wall_s"] = time.perf_counter() - start
  if proc.returncode != 0:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = lines[-1].removeprefix("substrax-inspect: ") if lines else "no output"
    if proc.returncode < 0:   # killed: the kernel's OOM killer sends SIGKILL
      reason = f"killed by {signal.Signals(-proc.returncode).name}; last line: {reason}"
    return row | {"ok": False, "reason": reason}
  # The report is the last top-level JSON object on stdout (data builders may print first).
  text = stdout[stdout.rindex("\n{\n") + 1 if "\n{\n" in stdout else 0:]
  report = json.loads(text)
  report.pop("modules")
  return row | {"ok": True} | report


def mib(n: int) -> str:
  return f"{n / 2**20:,.1f}" if n >= 2**20 / 10 else "<0.1" if n else "0"


def scanned(row: dict) -> str:
  """The row's model.scan. XLA's cost analysis counts a loop body once, so the FLOPs of a
  scanned model count its blocks once."""
  for override in row["overrides"]:
    if override.startswith("--config.model.scan="):
      return {"True": "yes", "False": "no"}[override.partition("=")[2]]
  model = importlib.import_module(f"substrax.configs.{row['config']}").get_config(
      row["preset"]).model
  if model.get("name", "transformer") != "transformer":   # LSA models have no blocks to scan
    return "-"
  return {True: "yes", False: "no"}.get(model.get("scan"), "-")


HEADER = ("| preset | mesh (data, fsdp, model) | params | model.scan | setup s (data) | lower s "
          "| compile s | params MiB/dev | optimizer MiB/dev | data MiB/dev | temp MiB/dev "
          "| total MiB/dev | GFLOP/step/dev |")


def table_row(row: dict) -> str:
  label = f"{row['config']}:{row['preset']}"
  label += f" ({STAND_IN_LABELS[row['config']]})" if row["config"] in STAND_INS else ""
  if not row["ok"]:
    # its first clause: TFDS's message goes on to say how to prepare the data (in the JSON)
    return f"| {label} | failed: {row['reason'].split('; ')[0]} |" + " |" * 11
  mesh = "x".join(str(v) for v in row["mesh"].values())
  mem = row["memory_per_device"]
  temp, total = (mib(mem["temp"]), mib(mem["total"])) if mem else ("unavailable",) * 2
  return (f"| {label} | {mesh} | {row['total_params']:,} | {scanned(row)} | {row['setup_s']:.1f} | "
          f"{row['lower_s']:.1f} | {row['compile_s']:.1f} | {mib(row['param_bytes_per_device'])} "
          f"| {mib(row['optimizer_bytes_per_device'])} | {mib(row['data_bytes_per_device'])} | "
          f"{temp} | {total} | {row['flops_per_step'] / 1e9:,.1f} |")


def step_kernels(name: str, preset: str, overrides) -> int:
  """The distinct kernels XLA:CPU compiles for the train step: one more compile, with the
  compiler's dump on, counting the LLVM modules of its kernels. XLA:CPU compiles a
  fused computation once and reuses the kernel wherever it recurs, as in identical unrolled
  layers, so the count, not the depth, sets most of the compile time."""
  with tempfile.TemporaryDirectory() as dump:
    row = inspect(name, preset, overrides, dump_to=dump)
    if not row["ok"]:
      study.stop(f"{name}:{preset} {' '.join(overrides)}: {row['reason']}", 1)
    # module_0054.jit_sample_and_update.<kernel>.ir-with-opt.ll: one LLVM module per kernel of
    # the train step (train/trainer.py's sample_and_update); the setup's programs are others.
    kernels = [f for f in os.listdir(dump)
               if ".jit_sample_and_update." in f and f.endswith(".ir-with-opt.ll")]
  programs = {f.split(".")[0] for f in kernels}
  if len(programs) != 1:
    study.stop(f"{name}:{preset}: expected the kernels of one train step in XLA's dump, found "
               f"{len(programs)} programs (has its naming changed?)", 1)
  return len(kernels)


def compare_scan(entry: str, depth: str | None = None) -> dict:
  """Median lower and compile seconds of the preset scanned and unrolled, compiled alternately
  so that a change in the host's load hits both; then each variant's kernel count."""
  name, preset = parse_entry(entry)
  label = " ".join([entry] + ([f"depth {depth}"] if depth else []) + FLAGS.set)
  runs = {True: [], False: []}
  common = [f"--config.{o}" for o in FLAGS.set] + ([f"--config.model.depth={depth}"]
                                                   if depth else [])
  for rep in range(FLAGS.repeats):
    for scan in (True, False):
      overrides = [f"--config.model.scan={scan}", *common]
      row = inspect(name, preset, overrides)
      if not row["ok"]:
        study.stop(f"{entry} {' '.join(overrides)}: {row['reason']}", 1)
      runs[scan].append(row)
      mem = row["memory_per_device"]
      print(f"{label} scan={scan!s:<5} run {rep + 1}: lower {row['lower_s']:.2f} s, compile "
            f"{row['compile_s']:.2f} s, memory/device "
            f"{mib(mem['total']) + ' MiB' if mem else 'unavailable'}, XLA GFLOP/step/device "
            f"{row['flops_per_step'] / 1e9:.2f}", flush=True)
  median = {scan: {k: statistics.median(r[k] for r in rows) for k in ("lower_s", "compile_s")}
            | {"kernels": step_kernels(name, preset, [f"--config.model.scan={scan}", *common])}
            for scan, rows in runs.items()}
  print(f"{label}, medians of {FLAGS.repeats} ({DEVICES} fake CPU devices): scan lower "
        f"{median[True]['lower_s']:.2f} s, compile {median[True]['compile_s']:.2f} s, "
        f"{median[True]['kernels']} kernels; unrolled lower {median[False]['lower_s']:.2f} s, "
        f"compile {median[False]['compile_s']:.2f} s, {median[False]['kernels']} kernels; "
        f"compile unrolled / scan = "
        f"{median[False]['compile_s'] / median[True]['compile_s']:.2f}x", flush=True)
  return median


def compare_depths(entry: str, depths: list[str]):
  """compare_scan at each depth, then one table: how compile time grows with depth."""
  medians = {d: compare_scan(entry, d) for d in depths}
  print("\n| depth | scan lower s | scan compile s | scan kernels | unrolled lower s "
        "| unrolled compile s | unrolled kernels | unrolled / scan |\n"
        "|---|---|---|---|---|---|---|---|")
  for d, m in medians.items():
    print(f"| {d} | {m[True]['lower_s']:.2f} | {m[True]['compile_s']:.2f} | "
          f"{m[True]['kernels']} | {m[False]['lower_s']:.2f} | {m[False]['compile_s']:.2f} | "
          f"{m[False]['kernels']} | {m[False]['compile_s'] / m[True]['compile_s']:.2f}x |")


def write_tfds_stand_ins(entries) -> None:
  """Random cifar10 and imdb_reviews as prepared TFDS datasets in TFDS_DIR, when an entry needs
  them: the presets' shapes (reviews of 4,096 bytes cover every max_length) with little data,
  but a batch of 256 in train[:90%]."""
  if not any(name in ("lra_text", "lra_image") for name, _ in entries) or os.path.isdir(TFDS_DIR):
    return
  try:
    import tensorflow_datasets
    from substrax.data import tfds
  except ImportError as e:
    study.stop(f"the LRA Text and Image stand-ins need tensorflow-datasets ({e}); pip install "
               "'substrax[tfds]', or leave lra_text and lra_image out with --only", 2)
  tensorflow_datasets.disable_progress_bar()
  tmp = tempfile.mkdtemp(dir=os.path.dirname(TFDS_DIR))
  try:
    for name in tfds.NAMES:
      tfds.write_prepared(name, tmp, {
          "train": tfds.random_records(name, 1000, 0, text_bytes=4096),
          "test": tfds.random_records(name, 100, 1, text_bytes=4096)})
    os.rename(tmp, TFDS_DIR)   # whole or absent: an interrupted write is never reused
  except OSError:
    if not os.path.isdir(TFDS_DIR):   # not a concurrent run that renamed its copy first
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
  if len(argv) > 1:
    study.stop(f"unexpected arguments {' '.join(argv[1:])}", 2)
  with open(os.path.join(REPO, "README.md"), "rb") as src, open(CORPUS, "wb") as dst:
    dst.write(src.read())
  for name in ("depths", "set"):
    if FLAGS[name].value and not FLAGS.scan_compare:
      study.stop(f"--{name}: only --scan_compare reads it", 2)
  fixed = ("model.scan=",) + (("model.depth=",) if FLAGS.depths else ())
  if bad := [o for o in FLAGS.set if "=" not in o or o.startswith(fixed)]:
    study.stop(f"--set: give KEY=VALUE config overrides other than "
               f"{' and '.join(f[:-1] for f in fixed)}, got {bad[0]}", 2)
  if not all(d.isdigit() and int(d) > 0 for d in FLAGS.depths):
    study.stop(f"--depths: give positive integers, got {','.join(FLAGS.depths)}", 2)
  try:
    if FLAGS.scan_compare:
      entries = [parse_entry(FLAGS.scan_compare)]
    else:
      entries = ([parse_entry(e) for e in FLAGS.only] if FLAGS.only else
                 [(name, preset) for name in configs.names() for preset in PRESETS])
  except ValueError as e:
    study.stop(str(e), 2)
  write_tfds_stand_ins(entries)
  if FLAGS.scan_compare:
    if FLAGS.depths:
      return compare_depths(FLAGS.scan_compare, FLAGS.depths)
    compare_scan(FLAGS.scan_compare)
    return None
  rows = []
  print(HEADER + "\n" + "|---" * HEADER.count(" | ") + "|---|", flush=True)
  for name, preset in entries:
    rows.append(inspect(name, preset))
    print(table_row(rows[-1]), flush=True)
  path = os.path.join(FLAGS.out, "results.json")
  kept = []
  if FLAGS.only and os.path.exists(path):
    with open(path) as f:
      kept = [r for r in json.load(f)["rows"] if (r["config"], r["preset"]) not in entries]
  order = lambda r: (r["config"], ("tiny", "cpu", *PRESETS).index(r["preset"]))
  table_rows = sorted(kept + rows, key=order)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"devices": DEVICES, "rows": table_rows}, f, indent=1)
  with open(os.path.join(FLAGS.out, "results.md"), "w") as f:
    f.write("\n".join([HEADER, "|---" * HEADER.count(" | ") + "|---|"] +
                      [table_row(r) for r in table_rows]) + "\n")
  print(f"\nwrote {path} and results.md: {len(rows)} rows from this run, {len(kept)} kept")
  failed = [f"{r['config']}:{r['preset']}" for r in rows if not r["ok"]]
  if failed:
    study.stop(f"{len(failed)} of {len(rows)} presets failed: {', '.join(failed)}", 1)


if __name__ == "__main__":
  study.run(main, lambda: "presets finished so far are printed above; nothing was written")
