"""In-context linear regression (Garg et al. 2022), the project's main job.

  substrax-train --config=configs/icl_linear.py:cpu --workdir=runs/icl
  substrax-train --config=configs/icl_linear.py:gpu --workdir=DIR \
      --config.data.function_class=sparse_linear

Presets: tiny (tests, seconds), cpu (the demo, minutes on 2 cores), gpu (Garg's standard
model with the dimension/points curriculum), pod (the same with a large global batch).
"""
import ml_collections
from ml_collections import config_dict

from substrax.configs import common


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  preset = common.check_preset(preset)
  c = common.base_config(preset)
  c.task = "icl"

  c.data = ml_collections.ConfigDict(dict(
      function_class="linear",  # see substrax.data.icl.FUNCTION_CLASSES
      n_dims=5,
      n_points=11,              # (x, y) pairs per prompt
      covariance="isotropic",   # "skewed": eigenvalues of Cov(x) proportional to 1/i^2;
                                # "spectrum": eigenvalues data.spectrum (a fixed rotation)
      spectrum=config_dict.placeholder(tuple),
      weight_covariance="isotropic",   # w ~ N(0, I), or "inverse": w ~ N(0, Cov(x)^-1)
      noise_std=0.0,            # for noisy_linear
      noise_min=0.0, noise_max=1.0,   # heteroscedastic_linear: per-prompt std ~ U(min, max)
      n_tasks=0,                # > 0: w from a fixed pool of n_tasks vectors (task diversity)
      mixture=("linear", "sparse_linear", "relu_2nn"),   # families of function_class=mixture
      sparsity=3,               # for sparse_linear
      # Garg's curriculum: start small, grow every `interval` steps. None = no curriculum.
      loss_on="all",            # every prefix, or "last": only the query after n_points - 1
      curriculum=ml_collections.ConfigDict(dict(
          dims_start=config_dict.placeholder(int), dims_inc=1,
          points_start=config_dict.placeholder(int), points_inc=2,
          interval=2000)),
  ))

  c.model = ml_collections.ConfigDict(dict(
      name="transformer",         # or "lsa": linear self-attention layers (models/icl.py LSA)
      encoding="interleaved",     # transformer read-in: interleaved, flagged or concat
      head="mean",                # or "gaussian": a mean (squared error) and a variance (NLL)
      positions="learned",        # or "none" (order enters causally); models/positions.py
      lsa=ml_collections.ConfigDict(dict(num_layers=1, init_scale=0.02)),
      width=64, depth=3, num_heads=2, mlp_ratio=4,
      norm="layernorm",  # or "rmsnorm"
      dtype="float32",   # compute dtype; parameters stay float32
      attention=common.attention_config(),
      mlp=common.mlp_config(),
      **common.layer_fields(preset),   # gpu/pod: the 12 layers run as one scan
  ))

  c.eval = ml_collections.ConfigDict(dict(
      num_prompts=1280, batch_size=640, seed=1_000_003,
      ridge_alpha=0.1, lasso_alpha=0.01, knn_k=3, gd_steps=5, bootstrap=1000,
      claims=(),              # train/analysis/icl_claims.py CLAIMS to measure after training
      claim_prompts=4096,
      probe_steps=500,        # Adam steps of each MLP probe (train/analysis/probes.py)
  ))

  if preset == "tiny":
    c.model.update(width=32, depth=2, num_heads=2)
    c.batch_size = 16
    c.num_steps = 20
    c.optim.warmup_steps = 5
    c.log_every_steps = 1
    c.eval_every_steps = 10
    c.checkpoint.every_steps = 10
    c.eval.update(num_prompts=128, batch_size=128, bootstrap=200, probe_steps=100)
    c.progress_bar = False
  elif preset == "cpu":
    # benchmarks/demo_recipe.py: of the recipes it sweeps, the closest to least squares after
    # 3 minutes of training on 2 cores is Garg's curriculum run fast (2 -> 5 dims and 5 -> 11
    # points, one increment every 250 steps) with Adam's b2 at 0.99, the lowest mean over three
    # training seeds (BENCHMARKS.md). 11,200 steps: the sweep's 11,600 bare steps of 15.5 ms,
    # less what the trainer's evaluations, saves and metric fetches add.
    c.num_steps = 11200
    c.optim.update(learning_rate=2e-3, warmup_steps=500, b2=0.99)
    c.data.curriculum.update(dims_start=2, points_start=5, interval=250)
    c.log_every_steps = 200
    c.eval_every_steps = 2000
    c.checkpoint.every_steps = 2000
  else:  # gpu and pod: Garg's "standard" model at d=20 with the curriculum.
    c.data.update(n_dims=20, n_points=41)
    c.data.curriculum.update(dims_start=5, points_start=11)
    c.model.update(width=256, depth=12, num_heads=8, dtype="bfloat16")
    c.num_steps = 500_000
    c.optim.update(learning_rate=1e-4, warmup_steps=1000, end_lr_fraction=0.1)
    c.log_every_steps = 500
    c.eval_every_steps = 10_000
    c.checkpoint.every_steps = 5000
    if preset == "pod":
      c.batch_size = 1024
      c.num_steps = 100_000
      c.optim.learning_rate = 3e-4
  return c


def pre_curriculum_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `cpu` recipe before benchmarks/demo_recipe.py's sweep (12,000 steps, no curriculum,
  Adam's b2 0.999), for the configs whose results were measured with it."""
  c.num_steps = 12000
  c.optim.b2 = 0.999
  c.data.curriculum.update(dims_start=None, points_start=None, interval=2000)
  return c
