"""LRA Text: IMDB sentiment from bytes (TFDS imdb_reviews, read with tfds.data_source).

  substrax-train --config=configs/lra_text.py:gpu --workdir=DIR --config.data.data_dir=TFDS_DIR

The data must be prepared with TFDS beforehand (it needs a network once). Presets: tiny (tests,
on a synthetic dataset), cpu (512 bytes, a small encoder), gpu (LRA's base_tc_config.py: 1000
bytes; papers after LRA use --config.data.max_length=4000).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lra_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      name="imdb",
      max_length=1000,  # bytes per review, truncated or padded
      data_dir="",      # TFDS data_dir holding imdb_reviews; "" = TFDS's default
  ))
  if preset == "tiny":
    c.data.max_length = 64
  elif preset == "cpu":
    c.data.max_length = 512
    c.num_steps = 1000
    c.batch_size = 32
    c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.01)
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint.every_steps = 500
  elif preset in ("gpu", "pod"):
    # base_tc_config.py: 4 layers, 4 heads, emb 256, mlp 1024, CLS, batch 32, 20K steps,
    # lr 0.05 * warmup(8000) * rsqrt_decay, i.e. a peak of 0.05 / sqrt(8000) = 5.6e-4, wd 0.1.
    c.model.update(width=256, depth=4, num_heads=4, mlp_ratio=4, dtype="bfloat16",
                   scan=True)
    c.batch_size = 32
    c.num_steps = 20_000
    c.optim.update(learning_rate=5.6e-4, warmup_steps=8000, weight_decay=0.1)
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint.every_steps = 2000
    c.eval.batch_size = 256
  return c
