"""Does a trained linear self-attention layer run one step of gradient descent?

  substrax-train --config=configs/icl_lsa.py:cpu --workdir=runs/lsa_gd
  substrax-eval  --config=configs/icl_lsa.py:cpu --workdir=runs/lsa_gd     # the report again

One LSA layer (models/icl.py LSA) trained on in-context linear regression with x, w ~ N(0, I),
d = 10 and n = 10 context pairs, the loss on the query only (von Oswald et al. 2023;
Mahankali et al. 2023: the optimum is one GD step from 0 with eta* = n/(n+d+1+s2)). The
evaluation writes eval/gd_alignment.{json,png} (train/analysis/icl_claims.py): loss against GD*,
the sensitivity cosine, mean |y_hat - y_hat_GD*|, and the learned step against eta*, next to the
usual error curves against the baselines. configs/icl_precond.py is the anisotropic case.

Presets: tiny (tests), cpu (d = 10, n = 10; 3,000 steps at batch 2,048, about a minute on 2
cores), gpu/pod (d = 20, n = 40, 20,000 steps).
"""
import ml_collections

from substrax.configs import icl_linear


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  c = icl_linear.get_config(preset)
  c.data.update(n_dims=10, n_points=11, loss_on="last")
  c.data.curriculum.update(dims_start=None, points_start=None, interval=2000)
  c.model.update(name="lsa", dtype="float32")
  c.model.lsa.update(num_layers=1, init_scale=0.02)
  c.optim.update(learning_rate=3e-3, warmup_steps=100, end_lr_fraction=0.0, weight_decay=0.0,
                 b2=0.999)
  c.eval.update(claims=("gd_alignment",), claim_prompts=10_000, gd_steps=1)
  if preset == "tiny":
    c.data.update(n_dims=3, n_points=6)
    c.batch_size = 64
    c.num_steps = 30
    c.optim.warmup_steps = 5
    c.eval.claim_prompts = 256
  elif preset == "cpu":
    c.batch_size = 2048
    c.num_steps = 3000
    c.log_every_steps = 250
    c.eval_every_steps = 1000
    c.checkpoint.every_steps = 1000
  else:
    c.data.update(n_dims=20, n_points=41)
    c.batch_size = 4096
    c.num_steps = 20_000
    c.eval_every_steps = 5000
  return c
