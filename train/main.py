"""Command-line entry points: substrax-train, substrax-eval, substrax-inspect.

  substrax-train --config=configs/icl_linear.py:cpu --workdir=runs/icl [--config.a.b=value ...]

Exit status: 0 done, 1 a NaN/Inf loss stopped training, 2 a bad config or input, 143 SIGTERM
(after saving a checkpoint; rerun the same command to resume).
"""
import json
import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
# JAX reports each platform it probes (TPU, GPU) at INFO level; keep stderr for what matters.
pylogging.getLogger("jax._src.xla_bridge").setLevel(pylogging.WARNING)
config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, eval outputs.")
flags.DEFINE_bool("json", False, "substrax-inspect: print JSON instead of a table.")


def _parse(argv):
  """absl parsing, but any flag or config-file error is one line and exit status 2."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is None:
      raise ValueError("--config is required, e.g. --config=configs/icl_linear.py:cpu")
    return rest
  except Exception as e:  # noqa: BLE001 - every parse failure is a bad input
    message = str(e).strip().splitlines()
    print(f"{argv[0].rsplit('/', 1)[-1]}: {message[-1] if message else type(e).__name__}",
          file=sys.stderr)
    sys.exit(2)


def _guard(fn):
  """Maps the trainer's outcomes to exit statuses, with one line on stderr."""
  from substrax.data.tfds import DataSourceError
  from substrax.train import trainer, validation

  def main(argv):
    del argv
    # Orbax and JAX log every save and compile at INFO; the trainer prints its own status lines.
    logging.set_verbosity(logging.WARNING)
    try:
      fn()
    except validation.ConfigError as e:
      print(f"config error: {e}", file=sys.stderr)
      sys.exit(2)
    except DataSourceError as e:
      print(f"data error: {e}", file=sys.stderr)
      sys.exit(2)
    except trainer.NonFiniteLoss as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    except trainer.Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(143)
  return main


def _train():
  from substrax.train import distributed, trainer
  distributed.initialize(FLAGS.config.distributed)
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _eval():
  from substrax.train import distributed, trainer, validation
  validation.require(bool(FLAGS.workdir), "--workdir", "is required")
  distributed.initialize(FLAGS.config.distributed)
  trainer.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)


def _inspect():
  from substrax.train import trainer
  report = trainer.inspect(FLAGS.config)
  print(json.dumps(report, indent=1) if FLAGS.json else trainer.format_inspect(report))


def run_train():
  app.run(_guard(_train), flags_parser=_parse)


def run_eval():
  app.run(_guard(_eval), flags_parser=_parse)


def run_inspect():
  app.run(_guard(_inspect), flags_parser=_parse)


if __name__ == "__main__":
  run_train()
