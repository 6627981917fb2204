"""Command-line entry points: substrax-train, substrax-eval, substrax-inspect, substrax-extract.

  substrax-train --config=icl_linear:cpu --workdir=runs/icl [--config.a.b=value ...]
  substrax-extract --config=... --workdir=RUN --granularity=8,1 --out=NEW_RUN   # MatFormer

`--config` takes a config file (`configs/icl_linear.py:cpu`) or the name of one installed with
the package (`icl_linear:cpu`), so the commands work from any directory. Exit statuses are in
train/errors.py: 0 done, 1 NaN/Inf, 2 bad input, 74 a failed write, 130 SIGINT, 143 SIGTERM.
Every exit by design is one line on stderr; `--verbose` adds the traceback and library logs.
"""
import json
import logging as pylogging
import os
import re
import signal
import sys
import threading
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from substrax import configs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config: a file or an installed "
                                "config's name, then :preset.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, eval outputs.")
flags.DEFINE_bool("json", False, "substrax-inspect: print JSON instead of a table.")
flags.DEFINE_bool("verbose", False, "Show tracebacks and library logs on exits by design.")
flags.DEFINE_list("granularity", None, "substrax-extract: one MatFormer factor per layer, e.g. "
                  "8,1 (d_ff/8 units in layer 0, all of them in layer 1).")
flags.DEFINE_string("out", None, "substrax-extract: the new run directory.")

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# substrax's own code, installed or in a checkout (whose .venv may lie inside PACKAGE).
OWN_CODE = tuple(os.path.join(PACKAGE, d) + os.sep for d in ("train", "models", "data", "configs"))


def resolve_config(value: str) -> str:
  """`--config`'s value with an installed config's name replaced by its file's path."""
  path, sep, preset = value.partition(":")
  if not path:
    raise ValueError("--config: is empty; give a config file or one of "
                     f"{', '.join(configs.names())}, e.g. --config=icl_linear:cpu")
  if os.path.isfile(path):
    return value
  if path in configs.names():
    return os.path.join(configs.DIR, path + ".py") + sep + preset
  raise ValueError(f"--config: no file {path!r}, and no installed config of that name; "
                   f"installed: {', '.join(configs.names())}")


def _config_value(argv) -> tuple[int, str] | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return i, arg[len("--config="):]
    if arg == "--config" and i + 1 < len(argv):
      return i + 1, argv[i + 1]
  return None


def _unknown_key(message: str, argv) -> str | None:
  """ml_collections' KeyError repr for an override of a missing field, as one readable line:
  `unknown key model.widht (did you mean model.width?)`."""
  match = re.search(r"[\"']\\?'(\w+)\\?'(?:\\n)?(?:Did you mean \"(\w+)\")?", message)
  if not match:
    return None
  bad, suggestion = match.groups()
  for arg in argv:
    key = arg.partition("=")[0].removeprefix("--config.")
    parts = key.split(".")
    if arg.startswith("--config.") and bad in parts:
      at = parts.index(bad)
      line = f"unknown key {key}"
      if suggestion:
        line += f" (did you mean {'.'.join(parts[:at] + [suggestion] + parts[at + 1:])}?)"
      return line
  return None


def _parse(argv):
  """absl parsing, but any flag or config-file error is one line and exit status 2."""
  name = argv[0].rsplit("/", 1)[-1]
  try:
    found = _config_value(argv)
    if found is None:
      raise ValueError("--config: is required, e.g. --config=icl_linear:cpu")
    i, value = found
    argv = list(argv)
    argv[i] = argv[i][:len(argv[i]) - len(value)] + resolve_config(value)
    rest = FLAGS(argv)
    FLAGS.config.get("task")   # a config file that failed to load raises here
    return rest
  except Exception as e:  # noqa: BLE001 - every parse failure is a bad input
    if "--verbose" in argv:
      traceback.print_exc()
    message = str(e).strip()
    line = _unknown_key(message, argv) or _last_line(e)
    print(f"{name}: {line}", file=sys.stderr)
    sys.exit(2)


def _last_line(e: BaseException) -> str:
  """The most specific line of an exception chain (config loaders wrap the real cause)."""
  while e.__cause__ is not None:
    e = e.__cause__
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


def _quiet_libraries():
  """Orbax, asyncio and tensorboardX report recoverable events as tracebacks and warnings;
  the trainer prints its own one-line status for each, so theirs are dropped."""
  logging.set_verbosity(logging.ERROR)
  for logger in ("asyncio", "jax._src.xla_bridge", "tensorboardX"):
    pylogging.getLogger(logger).setLevel(pylogging.CRITICAL)
  pylogging.getLogger("absl").addFilter(lambda r: "/orbax/" not in r.pathname)
  # Orbax's background threads, and TensorStore's callbacks into asyncio loops that Orbax has
  # closed, print tracebacks of a failed write; the failure also reaches the trainer as an
  # exception, reported there in one line. Any traceback through substrax's code still prints.
  hooks = threading.excepthook, sys.unraisablehook, sys.excepthook
  threading.excepthook = lambda a: None if _noise(a.exc_traceback) else hooks[0](a)
  sys.unraisablehook = lambda a: None if _noise(a.exc_traceback) else hooks[1](a)
  sys.excepthook = lambda t, e, tb: None if _noise(tb) else hooks[2](t, e, tb)


def _noise(tb) -> bool:
  files = [frame.filename for frame in traceback.extract_tb(tb)]
  return (not any(f.startswith(OWN_CODE) for f in files)
          and any("/orbax/" in f or "/asyncio/" in f for f in files))


def _stop(signum, frame):
  """SIGINT and SIGTERM outside the training loop (which saves first: trainer._StopRequests)."""
  from substrax.train import errors
  errors.stop(signum, f"{signal.Signals(signum).name}: stopped outside a training step; "
              "nothing unsaved was lost, rerun the same command to continue")


def _guard(fn):
  """Maps the ways a run ends by design (train/errors.py) to exit statuses, one line each."""

  def main(argv):
    del argv
    from substrax.data import DataError
    from substrax.train import errors
    from substrax.train.errors import ConfigError, NonFiniteLoss, StorageError, Stopped
    by_design = ((ConfigError, 2, "config error: "), (DataError, 2, "data error: "),
                 (NonFiniteLoss, 1, "error: "), (StorageError, 74, "storage error: "),
                 (Stopped, None, ""), (KeyboardInterrupt, 130, "SIGINT: stopped at once, "
                                      "without saving; a rerun resumes from the newest "
                                      "checkpoint"))
    if not FLAGS.verbose:
      _quiet_libraries()
    # A stop that Python dropped inside a GC callback is delivered again (errors.stop); its
    # "Exception ignored" traceback says nothing the user needs.
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda a: (None if isinstance(a.exc_value, Stopped)
                                    else unraisable(a))
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
      fn()
    except tuple(t for t, _, _ in by_design) as e:
      errors.caught()
      if FLAGS.verbose:
        traceback.print_exc()
      status, prefix = next((s, p) for t, s, p in by_design if isinstance(e, t))
      print(prefix + str(e), file=sys.stderr, flush=True)
      sys.stdout.flush()
      # Skip interpreter teardown: Orbax's background threads and event loops print
      # tracebacks while shutting down, and one may still wait on a failed write.
      os._exit(e.exit_status if status is None else status)
  return main


def _train():
  from substrax.train import distributed, trainer
  distributed.initialize(FLAGS.config.distributed)
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _eval():
  from substrax.train import distributed, trainer
  distributed.initialize(FLAGS.config.distributed)
  trainer.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)


def _inspect():
  from substrax.train import trainer
  # No distributed.initialize: inspect compiles for this host's devices, `pod` presets too.
  report = trainer.inspect(FLAGS.config)
  print(json.dumps(report, indent=1) if FLAGS.json else trainer.format_inspect(report))


def _extract():
  import jax
  from substrax.train import distributed, matformer
  from substrax.train.errors import ConfigError
  if not FLAGS.workdir:
    raise ConfigError("--workdir: is required (the MatFormer run to extract from)")
  if not FLAGS.granularity or not FLAGS.out:
    raise ConfigError("--granularity and --out are required, e.g. --granularity=8,1 "
                      "--out=runs/submodel")
  try:
    choice = tuple(int(f) for f in FLAGS.granularity)
  except ValueError:
    raise ConfigError(f"--granularity: needs integers, got {','.join(FLAGS.granularity)}") from None
  distributed.initialize(FLAGS.config.distributed)
  sub = matformer.extract(FLAGS.config, FLAGS.workdir, choice, FLAGS.out)
  hidden = "(" + "".join(f"{h}," for h in sub.model.mlp.hidden) + ")"
  if jax.process_index() == 0:
    print(f"wrote the submodel {','.join(map(str, choice))} to {FLAGS.out}: a dense model with "
          f"model.mlp.hidden={hidden}; substrax-eval and substrax-train run it with the same "
          f"--config plus --config.model.mlp.hidden='{hidden}' "
          "--config.model.mlp.granularities='()'")


def run_train():
  app.run(_guard(_train), flags_parser=_parse)


def run_eval():
  app.run(_guard(_eval), flags_parser=_parse)


def run_inspect():
  app.run(_guard(_inspect), flags_parser=_parse)


def run_extract():
  app.run(_guard(_extract), flags_parser=_parse)


if __name__ == "__main__":
  run_train()
