"""LRA ListOps: evaluate nested MAX/MIN/MED/SM expressions (10 classes), generated offline.

  substrax-train --config=configs/lra_listops.py:cpu --workdir=runs/listops \
      --config.model.attention.kind=performer

Presets: tiny (tests), cpu (lengths 100-512 that train in minutes on 2 cores), gpu (LRA's data:
96K/2K/2K examples of 500-2000 tokens, and the Transformer of its base_listops_config.py).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lra_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      name="listops",
      seed=0,                       # the generator's seed: the same data for every run
      sizes=(96_000, 2_000, 2_000), # train, val, test: distinct expressions
      min_length=500,               # tokens per expression, as the model sees them
      max_length=2000,
      cache_dir="",                 # "" = $SUBSTRAX_DATA or ~/.cache/substrax
  ))
  if preset == "tiny":
    c.data.update(sizes=(256, 64, 64), min_length=10, max_length=64)
  elif preset == "cpu":
    # Sized so that softmax, the slowest kind, trains in about 4 minutes on 2 cores.
    c.data.update(sizes=(20_000, 1_000, 1_000), min_length=100, max_length=512)
    c.model.num_heads = 2
    c.num_steps = 600
    c.batch_size = 16
    c.optim.update(learning_rate=2e-3, warmup_steps=60, weight_decay=0.01)
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint.every_steps = 200
  elif preset in ("gpu", "pod"):
    # base_listops_config.py: 4 layers, 8 heads, emb 512, mlp 1024, CLS, batch 32, 5K steps,
    # lr 0.05 * warmup(1000) * rsqrt_decay, i.e. a peak of 0.05 / sqrt(1000) = 1.6e-3, wd 0.1.
    c.model.update(width=512, depth=4, num_heads=8, mlp_ratio=2, dtype="bfloat16",
                   scan=True)
    c.batch_size = 32
    c.num_steps = 5000
    c.optim.update(learning_rate=1.6e-3, warmup_steps=1000, weight_decay=0.1)
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint.every_steps = 1000
    c.eval.batch_size = 256
  return c
