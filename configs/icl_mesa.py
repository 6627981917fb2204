"""Mesa-optimisation: is a trained linear attention layer one GD step? (Zheng et al. 2024)

  substrax-train --config=configs/icl_mesa.py:cpu --workdir=runs/mesa
  substrax-eval  --config=configs/icl_mesa.py:cpu --workdir=runs/mesa     # the report again

One linear causal self-attention layer (train/tasks/mesa.py) trained on the next-token MSE of
x_{t+1} = W x_t, W Haar-orthogonal per sequence. The evaluation writes eval/mesa.{json,png}:
cosine and relative error of the model's implicit W against one GD step on the in-context
least-squares objective, against OLS and against the true W, per position, with the MSE of
each predictor and of copying x_t.

Presets: tiny (tests), cpu (d = 5, 25 tokens), gpu/pod (d = 10, 60 tokens).
"""
import ml_collections

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.base_config(preset)
  c.task = "mesa"
  c.data = ml_collections.ConfigDict(dict(
      n_dims=5,
      length=25,          # tokens per sequence; the loss is on all length - 1 next tokens
      init_scale=1.0,     # x_1 ~ N(0, init_scale^2 I)
  ))
  c.model = ml_collections.ConfigDict(dict(init_scale=0.02))   # W_KQ, W_PV ~ N(0, s^2)
  c.eval = ml_collections.ConfigDict(dict(num_sequences=4096, seed=1_000_003))
  c.optim.update(learning_rate=3e-3, warmup_steps=100, end_lr_fraction=0.0)

  if preset == "tiny":
    c.data.update(n_dims=3, length=8)
    c.batch_size = 64
    c.num_steps = 150
    c.optim.update(learning_rate=1e-2, warmup_steps=10)
    c.log_every_steps = 10
    c.eval_every_steps = 50
    c.checkpoint.every_steps = 150
    c.eval.num_sequences = 512
    c.progress_bar = False
  elif preset == "cpu":
    c.batch_size = 256
    c.num_steps = 4000
    c.log_every_steps = 250
    c.eval_every_steps = 1000
    c.checkpoint.every_steps = 1000
  else:
    c.data.update(n_dims=10, length=60)
    c.batch_size = 1024 if preset == "gpu" else 4096
    c.num_steps = 20_000
    c.log_every_steps = 500
    c.eval_every_steps = 5000
    c.checkpoint.every_steps = 5000
    c.eval.num_sequences = 16_384
  return c
