"""Defaults every experiment shares: trainer, optimizer, mesh, checkpoints, logging.

Configs are plain data. An experiment file calls `base_config(preset)`, fills in `task`, `data`,
`model` and `eval`, then applies one of the presets `tiny`, `cpu`, `gpu`, `pod`.
"""
import ml_collections
from ml_collections import config_dict

PRESETS = ("tiny", "cpu", "gpu", "pod")

# Logical axis -> mesh axis. Parameters shard their `embed` dimension over `fsdp` and their
# heads/mlp dimensions over `model`; activations shard `batch` over data and fsdp together.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("length", None),
    ("layers", None),   # the stacked layer axis of model.scan's parameters
)


def base_config(preset: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = ""
  c.seed = 0
  c.num_steps = 1000
  c.batch_size = 64  # global batch, split over the data and fsdp mesh axes

  # The mesh has axes (data, fsdp, model). `parallelism` names a layout (substrax.train.mesh.
  # PARALLELISM): data (replicated parameters), fsdp (parameters and optimizer state sharded over
  # every device), tensor (heads and mlp over every device) or fsdp_tensor (fsdp x model=2).
  # `mesh_shape` sets the shape explicitly instead, one entry may be -1 for the remaining
  # devices, e.g. (2, 4, 1); set one of the two.
  c.parallelism = "data"
  c.mesh_shape = config_dict.placeholder(tuple)
  c.logical_axis_rules = LOGICAL_AXIS_RULES

  # Multi-process runs (TPU pod slices, multi-node GPU): jax.distributed.initialize before
  # anything else. Unset fields come from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and
  # $JAX_PROCESS_ID, or else from the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes).
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=preset == "pod",
      coordinator_address=config_dict.placeholder(str),   # host:port of process 0
      num_processes=config_dict.placeholder(int),
      process_id=config_dict.placeholder(int),
  ))

  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,   # peak of the warmup-cosine schedule
      warmup_steps=100,
      end_lr_fraction=0.0,  # final lr = peak * end_lr_fraction
      b1=0.9,
      b2=0.999,
      weight_decay=0.0,
      grad_clip_norm=1.0,
  ))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3,
      # None: WORKDIR/checkpoints. Any path Orbax writes, e.g. gs://bucket/run/checkpoints on
      # a TPU pod, where every host must see the same directory.
      directory=config_dict.placeholder(str),
  ))
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.progress_bar = True
  # Each evaluation writes WORKDIR/eval/*.json and, with plots, its figures (*.png); False
  # skips the figures and matplotlib, about 1 s of a 2-core host per evaluating process.
  c.plots = True
  return c


def attention_config(kind: str = "softmax") -> ml_collections.ConfigDict:
  """model.attention: the substrate and its settings (see substrax.models.attention)."""
  return ml_collections.ConfigDict(dict(
      kind=kind,         # softmax, linear, performer, cosformer, linformer, local, combiner, lsa,
                         # relu
      impl="auto",       # auto, xla, cudnn, pallas (which ones a kind has: SUPPORTED_IMPLS)
      window=16,         # local: keys within this distance
      num_features=64,   # performer: random features
      redraw_every=1000, # performer: redraw the features every N steps (0 = never)
      low_rank=16,       # linformer: projected length
  ))


def mlp_config() -> ml_collections.ConfigDict:
  """model.mlp: nested widths (MatFormer), per-layer widths, experts (EMoE); models/transformer
  MLP and train/matformer.py."""
  return ml_collections.ConfigDict(dict(
      granularities=(),  # MatFormer: e.g. (8, 4, 2, 1) trains widths d_ff/8 ... d_ff, nested
      hidden=(),         # hidden units per layer (an extracted submodel); () = mlp_ratio * width
      experts=0,         # EMoE: the hidden units in this many experts; 0 = a dense MLP
      top_k=0,           # EMoE: experts each token uses (top_k = experts is the dense MLP)
  ))


def layer_fields(preset: str) -> dict:
  """model.scan and model.remat (models/transformer.py), the backbone's layout and memory:
  `scan` runs its identical blocks as one nn.scan (parameters stacked on a leading layer axis,
  so tracing and lowering stop growing with depth; XLA:CPU's compile barely changes and the
  compiled step needs more memory: BENCHMARKS.md); `remat` is the jax.checkpoint policy of every
  block: none, full (keeps only each block's input) or dots (keeps the matmul outputs without
  batch dimensions). The gpu and pod presets of the deep models scan; tiny and cpu keep the
  unrolled block_0, block_1, ... that their checkpoints and analyses use."""
  return dict(scan=preset in ("gpu", "pod"), remat="none")


def check_preset(preset: str) -> str:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  return preset


def classifier_config() -> ml_collections.ConfigDict:
  """model block of the LRA encoder classifier (substrax.models.classifier)."""
  return ml_collections.ConfigDict(dict(
      width=64, depth=2, num_heads=4, mlp_ratio=2,
      norm="layernorm",
      pool="cls",        # or "mean" over real tokens
      dropout=0.0,       # on each residual branch, training only
      dtype="float32",
      attention=attention_config(),
      scan=False, remat="none",   # see layer_fields; the LRA gpu presets of depth 4 scan
  ))


def lra_base(preset: str) -> ml_collections.ConfigDict:
  """Trainer defaults shared by the LRA configs; each file adds `data` and its presets."""
  c = base_config(preset)
  c.task = "lra"
  c.model = classifier_config()
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=128,           # evaluate(): full val and test splits in batches of this size
      held_out_examples=256,    # eval_step: the first examples of val, logged during training
  ))
  if preset == "tiny":
    c.num_steps = 20
    c.batch_size = 16
    c.optim.warmup_steps = 5
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint.every_steps = 10
    c.eval.update(batch_size=64, held_out_examples=64)
    c.progress_bar = False
  return c


def lm_base(preset: str) -> ml_collections.ConfigDict:
  """Trainer, model and eval defaults shared by the language-modelling configs (task 'lm',
  substrax.train.tasks.lm); each file adds its `data` block and sizes."""
  c = base_config(preset)
  c.task = "lm"
  c.model = ml_collections.ConfigDict(dict(
      width=128, depth=4, num_heads=4, mlp_ratio=4,
      norm="layernorm",        # layernorm, rmsnorm, crmsnorm (models/norms.py)
      zero_mean=False,         # centred residual writers: Pre-RMSNorm with norm='rmsnorm'
      positions="learned",     # learned, sinusoidal, none, rope, alibi, rpe, urpe
      max_len=64,              # positions a learned/sinusoidal/URPE table covers
      dtype="float32",
      attention=attention_config(),
      mlp=mlp_config(),
      **layer_fields(preset),
  ))
  c.eval = ml_collections.ConfigDict(dict(
      lengths=(64,),           # evaluate() scores held-out sequences of each length
      num_sequences=512,
      batch_size=64,
      seed=1_000_003,          # held-out sequences of the synthetic sources
  ))
  c.optim.update(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01)
  if preset == "tiny":
    c.model.update(width=32, depth=1, num_heads=2, max_len=16)
    c.eval.update(lengths=(16,), num_sequences=64)
    c.num_steps = 20
    c.batch_size = 16
    c.optim.warmup_steps = 5
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint.every_steps = 10
    c.progress_bar = False
  elif preset in ("gpu", "pod"):   # sequences of 256 tokens unless a config says otherwise
    c.model.update(width=256, depth=6, num_heads=8, max_len=256)
    c.eval.lengths = (256,)
    c.batch_size = 256 if preset == "gpu" else 1024
    c.num_steps = 10_000
    c.log_every_steps = 200
    c.eval_every_steps = 1000
    c.checkpoint.every_steps = 2000
  return c
