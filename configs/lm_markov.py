"""Language modelling on a k-th-order switching Markov chain, whose entropy rate is the floor.

  substrax-train --config=configs/lm_markov.py:cpu --workdir=runs/lm_markov

Binary tokens; x_n depends only on x_{n-k}: after a 0 it is 1 with probability p, after a 1 it
is 0 with probability q. The entropy rate pi0 H(p) + pi1 H(q) and the unigram loss H(pi1) are
closed forms (data/lm.py). A model must find the lag k to go below the unigram loss.

Presets: tiny (tests), cpu, gpu/pod (longer sequences, a larger model).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lm_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      source="markov",
      order=3,          # k: x_n depends on x_{n-k} only
      p=0.1, q=0.2,     # flip probabilities after a 0 and after a 1
      length=64,
  ))
  if preset == "tiny":
    c.data.length = 16
  elif preset == "cpu":
    c.batch_size = 64
    c.num_steps = 600
    c.log_every_steps = 50
    c.eval_every_steps = 100
    c.checkpoint.every_steps = 600
  else:
    c.data.length = 256
    c.num_steps = 5000
  return c
