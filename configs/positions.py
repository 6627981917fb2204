"""The synthetic position tasks of Luo et al. 2022 (URPE): position identification and
even-token prediction on i.i.d. uniform tokens, with a bidirectional encoder.

  substrax-train --config=configs/positions.py:cpu --workdir=runs/positions/pi_urpe \\
      --config.data.task=pi --config.model.positions=urpe

`data.task` is pi (y_i = i) or etp (y_i = x_{2i+1} for i < n/2, else 0); `model.positions` is
any scheme of models/positions.py (learned, sinusoidal, none, rope, alibi, rpe, urpe).
eval/positions.json holds the held-out token accuracy, overall and per position, and the
constant-input spread; benchmarks/positions_table.py trains every scheme on both tasks
(docs/positions.md).

Presets: tiny (tests, seconds), cpu (n = 32, vocab 64, width 64, 4 heads, 2 layers, 800 steps:
about 25 s a run, so the 28 runs of benchmarks/positions_table.py take 11-20 minutes on the
shared 2-core machine), gpu/pod (the paper's n = 128, vocab 1000; 3 layers of width 256).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lm_base(preset)   # the model block (check_backbone's keys) and trainer defaults
  c.task = "positions"
  c.data = ml_collections.ConfigDict(dict(
      task="pi",      # pi or etp
      length=32,      # n tokens per sequence; no BOS token
      vocab=64,       # tokens are i.i.d. uniform over this many symbols
  ))
  c.model.update(width=64, depth=2, num_heads=4, mlp_ratio=2, max_len=32)
  c.eval = ml_collections.ConfigDict(dict(
      num_sequences=1024,   # the fixed held-out sequences (eval_step and evaluate)
      batch_size=256,
      seed=1_000_003,
  ))
  # A constant rate after the warmup: ETP's copy circuit appears after a plateau of several
  # hundred steps, which a decaying rate lengthens.
  c.optim.update(learning_rate=3e-3, warmup_steps=50, end_lr_fraction=1.0, weight_decay=0.0)
  if preset == "tiny":
    c.data.update(length=8, vocab=16)
    c.model.update(width=32, depth=1, num_heads=2, max_len=8)
    c.eval.update(num_sequences=64, batch_size=64)
    c.optim.warmup_steps = 5
  elif preset == "cpu":
    c.batch_size = 32
    c.num_steps = 800
    c.log_every_steps = 100
    c.eval_every_steps = 200
    c.checkpoint.every_steps = 800
  else:
    c.data.update(length=128, vocab=1000)
    c.model.update(width=256, depth=3, num_heads=8, mlp_ratio=4, max_len=128)
    c.optim.update(learning_rate=5e-4, warmup_steps=1000, end_lr_fraction=0.1)
    c.batch_size = 128 if preset == "gpu" else 512
    c.num_steps = 20_000
    c.log_every_steps = 200
    c.eval_every_steps = 2000
    c.checkpoint.every_steps = 5000
  return c
