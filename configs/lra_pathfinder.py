"""LRA Pathfinder: are the two dots joined by one dashed path? Images as pixel sequences.

  substrax-train --config=configs/lra_pathfinder.py:cpu --workdir=runs/pathfinder

Presets: tiny (tests), cpu (32x32 = 1024 tokens, a small encoder that trains in minutes on 2
cores), gpu (LRA's Pathfinder-32 "hard" data and Transformer settings). Path-X is
--config.data.image_size=128.
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lra_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      name="pathfinder",
      seed=0,
      sizes=(160_000, 20_000, 20_000),  # train, val, test images
      image_size=32,
      difficulty="hard",                # easy, intermediate, hard: the contour length
      cache_dir="",                     # "" = $SUBSTRAX_DATA or ~/.cache/substrax
  ))
  c.model.pool = "mean"
  if preset == "tiny":
    c.data.update(sizes=(64, 32, 32), image_size=16)
  elif preset == "cpu":
    # Sized so that softmax, the slowest kind, trains in about 4 minutes on 2 cores.
    c.data.sizes = (10_000, 1_000, 1_000)
    c.model.update(width=32, depth=1, num_heads=2, mlp_ratio=1)
    c.num_steps = 300
    c.batch_size = 16
    c.optim.update(learning_rate=2e-3, warmup_steps=30, weight_decay=0.0)
    c.log_every_steps = 25
    c.eval_every_steps = 100
    c.checkpoint.every_steps = 100
  elif preset in ("gpu", "pod"):
    # LRA's Pathfinder-32 Transformer override: 4 layers, 4 heads, emb 32, mlp 32, MEAN pooling,
    # dropout 0.2; batch 512 for 200 epochs of 160K images; lr 1e-3, warmup 1 epoch, cosine.
    c.model.update(width=32, depth=4, num_heads=4, mlp_ratio=1, dropout=0.2, dtype="bfloat16",
                   scan=True)
    c.batch_size = 512
    c.num_steps = 200 * 160_000 // 512
    c.optim.update(learning_rate=1e-3, warmup_steps=160_000 // 512, weight_decay=0.0)
    c.log_every_steps = 200
    c.eval_every_steps = 3125
    c.checkpoint.every_steps = 3125
    c.eval.batch_size = 512
  return c
