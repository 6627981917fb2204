"""Length generalization on an algorithmic task (data/algorithmic.py), trained as a language
model with the loss on the answer tokens only.

  substrax-train --config=configs/lm_algorithmic.py:cpu --workdir=runs/alg/count \\
      --config.data.task=count --config.model.positions=rope

Training contexts hold instances of sizes 1 to `data.train_max` = L packed back to back;
evaluation scores each size of `eval.lengths` (L, 1.5L, 2L, 3L) by exact match of the greedy
answer, one instance per sequence from position 0, and writes eval/algorithmic.{json,png}.
benchmarks/length_generalization.py runs the tasks x positional schemes x seeds study
(docs/length-generalization.md).

Presets: tiny (tests), cpu (L = 8, a 2-layer width-64 model, 1500 steps of 32 contexts),
gpu/pod (L = 20, a 6-layer width-256 model).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lm_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      source="algorithmic",
      task="count",
      train_max=8,       # L: training instances have sizes 1..L
      length=64,         # tokens per packed training context (inputs; targets are shifted)
      contexts=8192,     # the training pool: packed contexts drawn once
  ))
  c.model.update(width=64, depth=2, num_heads=4, mlp_ratio=4, max_len=64)
  c.eval.update(lengths=(8, 12, 16, 24), num_sequences=512, batch_size=256)
  c.optim.weight_decay = 0.0
  if preset == "tiny":
    c.data.update(train_max=4, length=32, contexts=64)
    c.model.update(max_len=32)
    c.eval.update(lengths=(4, 6), num_sequences=64, batch_size=64)
  elif preset == "cpu":
    c.batch_size = 32
    c.num_steps = 1500
    c.log_every_steps = 100
    c.eval_every_steps = 250
    c.checkpoint.every_steps = 1500
  else:
    c.data.update(train_max=20, length=256)
    c.model.max_len = 256
    c.eval.lengths = (20, 30, 40, 60)
  return c
