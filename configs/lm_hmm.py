"""Language modelling on a random hidden Markov model, whose Bayes loss is the floor.

  substrax-train --config=configs/lm_hmm.py:cpu --workdir=runs/lm_hmm

The HMM (8 states, 16 symbols, Dirichlet 0.05 rows, seed 1) is sticky enough that inferring
its state matters: the Bayes loss of its held-out sequences is 1.14 nats per token, the
unigram loss 2.06. eval/lm.json puts the model's held-out loss beside both. Any model flag
applies: --config.model.norm=rmsnorm, --config.model.positions=rope, ...

Presets: tiny (tests), cpu (within a few percent of the Bayes loss in minutes on 2 cores),
gpu/pod (a larger model on longer sequences).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.lm_base(preset)
  c.data = ml_collections.ConfigDict(dict(
      source="hmm",
      states=8, symbols=16,
      concentration=0.05,   # of the Dirichlet rows of the transition and emission matrices
      seed=1,               # draws the HMM
      length=64,            # tokens predicted per sequence
  ))
  if preset == "tiny":
    c.data.length = 16
  elif preset == "cpu":
    c.batch_size = 64
    c.num_steps = 600
    c.optim.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 100
    c.checkpoint.every_steps = 600
  else:
    c.data.length = 256
  return c
