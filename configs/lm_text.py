"""Byte-level language modelling on text: local .txt files or a prepared TFDS dataset.

  substrax-train --config=configs/lm_text.py:cpu --config.data.path=corpus/ --workdir=runs/text
  substrax-train --config=configs/lm_text.py:cpu --config.data.source=tfds \
      --config.data.name=tiny_shakespeare --workdir=runs/shakespeare

Tokens are UTF-8 bytes (vocab 256); documents (files, or blank-line paragraphs of a single
file) are split into train and held out, every tenth document held out, and packed into one
stream with a 0 byte after each. Text has no known floor: eval/lm.json reports bits per byte
and per character beside the unigram loss of the train byte frequencies.

Presets: tiny (tests), cpu, gpu/pod.
"""
import ml_collections
from ml_collections import config_dict

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lm_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      source="text",    # or "tfds"
      path=config_dict.placeholder(str),       # text: a .txt file or a folder of them
      name="tiny_shakespeare",                 # tfds: tiny_shakespeare or lm1b
      data_dir=config_dict.placeholder(str),   # tfds: None is TFDS's default
      max_records=100_000,                     # tfds: records read per split (lm1b is large)
      length=128,
  ))
  if preset == "tiny":
    c.data.length = 16
  elif preset == "cpu":
    c.model.max_len = 128
    c.eval.lengths = (128,)
    c.batch_size = 32
    c.num_steps = 2000
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint.every_steps = 1000
  else:
    c.data.length = 512
    c.model.update(width=512, depth=8, max_len=512)
    c.eval.lengths = (512,)
    c.batch_size = 128 if preset == "gpu" else 512
    c.num_steps = 20_000
  return c
