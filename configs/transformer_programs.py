"""Transformer Programs (Friedman et al. 2023): train, discretise and decompile into Python.

  substrax-train --config=configs/transformer_programs.py:cpu --workdir=runs/tp/histogram \\
      --config.data.task=histogram

`data.task` is sort, reverse, histogram or dyck1 (n = 8 symbols after BOS; vocab 8 for sort
and reverse). eval/program.py is the decompiled program and eval/programs.json its scores
(docs/transformer-programs.md).

Presets: tiny (tests: a few steps), cpu (the paper's settings, Adam at 5e-2, batch 512, 20k
training examples, tau 3 -> 0.01, for 2000 steps: 143 s a run on the shared 2-core machine
when lightly loaded, 4-6 minutes when busy), gpu/pod (the same for 10k steps, about 250 epochs
as in the paper). num_scale = 30 (models/transformer_programs.py) lets the classifier read
counts within 2000 steps: histogram 99.4% instead of 95.8%.
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.base_config(preset)
  c.task = "programs"
  c.data = ml_collections.ConfigDict(dict(
      task="histogram",    # sort, reverse, histogram or dyck1
      length=8,            # n prompt symbols after BOS
      vocab=8,             # sort and reverse symbols (histogram: 8, dyck1: 2, the tasks' own)
      train_size=20_000,   # the fixed training pool batches are drawn from
      seed=17,
  ))
  c.model = ml_collections.ConfigDict(dict(
      layers=2,
      cat_heads=4,         # categorical (hard-attention) heads per layer
      num_heads=2,         # numerical (mean-aggregation) heads per layer
      mlps=2,              # lookup-table MLPs per layer
      attention="auto",    # auto (causal for dyck1), causal or bidirectional
      num_scale=30.0,      # the classifier reads numerical variables with weights x this
  ))
  c.tau = ml_collections.ConfigDict(dict(start=3.0, end=0.01))   # geometric annealing
  c.eval = ml_collections.ConfigDict(dict(
      num_sequences=10_000,   # evaluate(): accuracies and the program's agreement
      held_out=2048,          # eval_step: the first of them, during training
      seed=1_000_003,
  ))
  # The paper's Adam at a constant 5e-2.
  c.optim.update(learning_rate=5e-2, warmup_steps=0, end_lr_fraction=1.0, weight_decay=0.0,
                 grad_clip_norm=10.0)
  c.batch_size = 512
  if preset == "tiny":
    c.num_steps = 4
    c.batch_size = 32
    c.data.train_size = 256
    c.model.update(cat_heads=2, num_heads=1, mlps=1)
    c.eval.update(num_sequences=500, held_out=64)
    c.log_every_steps = 2
    c.eval_every_steps = 2
    c.checkpoint.every_steps = 4
    c.progress_bar = False
  elif preset == "cpu":
    c.num_steps = 2000
    c.log_every_steps = 200
    c.eval_every_steps = 500
    c.checkpoint.every_steps = 2000
  else:
    c.num_steps = 10_000
    c.log_every_steps = 500
    c.eval_every_steps = 2000
    c.checkpoint.every_steps = 5000
  return c
