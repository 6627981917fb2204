"""Config checks that run before anything is compiled.

Each failure raises ConfigError with one line naming the key and what is wrong; the CLI prints
it and exits with status 2.
"""
import math

import jax

from substrax.models import attention, norms, positions, transformer
from substrax.models.sharding import MESH_AXES
from substrax.train.errors import ConfigError


def require(ok: bool, key: str, message: str):
  if not ok:
    raise ConfigError(f"{key}: {message}")


def _floats(node, key=""):
  """(dotted key, value) for every float in a config, through nested blocks, lists, tuples."""
  if isinstance(node, float):
    yield key, node
  elif hasattr(node, "items"):
    for k, v in node.items():
      yield from _floats(v, f"{key}.{k}" if key else k)
  elif isinstance(node, (list, tuple)):
    for i, v in enumerate(node):
      yield from _floats(v, f"{key}[{i}]")


def check_trainer(config):
  """Checks the fields every experiment shares (see configs/common.py). The mesh fields are
  checked where the mesh is built (train/mesh.py)."""
  for key, value in _floats(config):
    require(math.isfinite(value), key, f"must be finite, got {value}")
  require(config.num_steps > 0, "num_steps", f"must be positive, got {config.num_steps}")
  require(config.batch_size > 0, "batch_size", f"must be positive, got {config.batch_size}")
  o = config.optim
  require(o.learning_rate > 0, "optim.learning_rate", f"must be positive, got {o.learning_rate}")
  require(0 <= o.warmup_steps < config.num_steps, "optim.warmup_steps",
          f"must be in [0, num_steps={config.num_steps}), got {o.warmup_steps}")
  require(0 <= o.end_lr_fraction <= 1, "optim.end_lr_fraction",
          f"must be in [0, 1], got {o.end_lr_fraction}")
  require(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optim.b1/b2", f"must be in [0, 1), got {o.b1}, {o.b2}")
  require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
  require(o.grad_clip_norm > 0, "optim.grad_clip_norm", f"must be positive, got {o.grad_clip_norm}")
  for key, value in (("checkpoint.every_steps", config.checkpoint.every_steps),
                     ("checkpoint.keep", config.checkpoint.keep),
                     ("log_every_steps", config.log_every_steps),
                     ("eval_every_steps", config.eval_every_steps)):
    require(value > 0, key, f"must be positive, got {value}")
  for i, rule in enumerate(config.logical_axis_rules):
    targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    for t in targets:
      require(t is None or t in MESH_AXES, f"logical_axis_rules[{i}]",
              f"maps {rule[0]!r} to unknown mesh axis {t!r}; mesh axes are {MESH_AXES}")


DTYPES = ("float32", "bfloat16")


def check_backbone(m, key: str = "model"):
  """The transformer-backbone fields every model config shares, and its attention block."""
  require(m.width > 0 and m.depth > 0 and m.num_heads > 0, key,
          f"width, depth and num_heads must be positive, got {m.width}, {m.depth}, {m.num_heads}")
  require(m.width % m.num_heads == 0, f"{key}.num_heads",
          f"{m.num_heads} heads do not divide {key}.width={m.width}")
  require(m.mlp_ratio > 0, f"{key}.mlp_ratio", f"must be positive, got {m.mlp_ratio}")
  require(m.norm in norms.NORMS, f"{key}.norm",
          f"unknown norm {m.norm!r}; choose one of {', '.join(norms.NORMS)}")
  require(m.dtype in DTYPES, f"{key}.dtype",
          f"unknown dtype {m.dtype!r}; choose one of {DTYPES}")
  check_attention(m.attention, f"{key}.attention")
  check_positions(m, key)   # after the attention block: it checks the pair
  if m.get("mlp") is not None:
    check_mlp(m, f"{key}.mlp")
  check_layers(m, key)


def check_layers(m, key: str = "model"):
  """model.scan and model.remat (configs.common.layer_fields). A scanned stack is one block
  with stacked parameters, so every layer must be the same block: no per-layer MLP widths,
  MatFormer granularities or EMoE experts, whose code and analyses read block_0, block_1, ..."""
  policy = m.get("remat", "none")
  require(policy in transformer.REMAT, f"{key}.remat",
          f"unknown policy {policy!r}; choose one of {', '.join(transformer.REMAT)}")
  mlp = m.get("mlp")
  if not m.get("scan", False) or mlp is None:
    return
  hidden = transformer.block_config(m).hidden(m.width, m.depth)
  require(len(set(hidden)) == 1, f"{key}.scan",
          f"needs identical layers, but {key}.mlp.hidden gives them widths {hidden}; set "
          f"{key}.scan=False")
  require(not mlp.granularities, f"{key}.scan",
          f"cannot be combined with {key}.mlp.granularities (MatFormer runs and extracts each "
          f"layer at its own width); set {key}.scan=False")
  require(not mlp.experts, f"{key}.scan",
          f"cannot be combined with {key}.mlp.experts (EMoE keeps and sets each layer's expert "
          f"groups by name); set {key}.scan=False")


def check_mlp(m, key: str = "model.mlp"):
  """model.mlp (configs.common.mlp_config): every layer's units divide into the granularities'
  widths and into the experts."""
  mlp = m.mlp
  hidden = transformer.block_config(m).hidden(m.width, m.depth)
  require(len(hidden) == m.depth and all(isinstance(h, int) and h > 0 for h in hidden),
          f"{key}.hidden", f"needs one positive width per layer ({m.depth}), got {tuple(mlp.hidden)}")
  fs = tuple(mlp.granularities)
  require(all(isinstance(f, int) and f > 0 for f in fs) and len(set(fs)) == len(fs),
          f"{key}.granularities", f"must be distinct positive factors, e.g. (8, 4, 2, 1), got {fs}")
  require(not fs or 1 in fs, f"{key}.granularities",
          f"must include 1, the full width, which the nested widths are prefixes of; got {fs}")
  for f in fs:
    require(all(h % f == 0 for h in hidden), f"{key}.granularities",
            f"factor {f} does not divide the MLP widths {hidden}")
  require(mlp.experts >= 0, f"{key}.experts", f"must be >= 0, got {mlp.experts}")
  require(mlp.experts or not mlp.top_k, f"{key}.top_k",
          f"applies only with experts > 0, got top_k={mlp.top_k} and experts=0")
  require(not (mlp.experts and fs), f"{key}.experts",
          "experts and granularities cannot be combined: an expert's units would straddle the "
          "nested widths")
  if mlp.experts:
    require(all(h % mlp.experts == 0 for h in hidden), f"{key}.experts",
            f"{mlp.experts} experts do not divide the MLP widths {hidden}")
    require(1 <= mlp.top_k <= mlp.experts, f"{key}.top_k",
            f"must be in [1, experts={mlp.experts}], got {mlp.top_k}")


def check_positions(m, key: str = "model"):
  """model.positions and model.zero_mean against the norm and the attention kind."""
  scheme, kind, impl = m.get("positions", "learned"), m.attention.kind, m.attention.impl
  require(scheme in positions.SCHEMES, f"{key}.positions",
          f"unknown scheme {scheme!r}; choose one of {', '.join(positions.SCHEMES)}")
  kinds = positions.RELATIVE.get(scheme, attention.KINDS)
  require(kind in kinds, f"{key}.positions",
          f"{scheme!r} is not defined for attention kind {kind!r}; it works with "
          f"{', '.join(kinds)}")
  impls = positions.IMPLS.get(scheme, attention.SUPPORTED_IMPLS[kind])
  require(impl in impls, f"{key}.attention.impl",
          f"positions {scheme!r} need impl {' or '.join(impls)}, got {impl!r}")
  require(not (m.get("zero_mean", False) and m.norm == "crmsnorm"), f"{key}.zero_mean",
          "crmsnorm's residual stream is zero-mean by construction; leave zero_mean False")


def check_attention(a, key: str = "model.attention"):
  """The attention block of a model config (see configs.common.attention_config)."""
  require(a.kind in attention.KINDS, f"{key}.kind",
          f"unknown kind {a.kind!r}; choose one of {', '.join(attention.KINDS)}")
  impls = attention.SUPPORTED_IMPLS[a.kind]
  require(a.impl in impls, f"{key}.impl",
          f"kind {a.kind!r} has no impl {a.impl!r}; choose one of {', '.join(impls)}")
  for name in ("window", "num_features", "low_rank"):
    require(a[name] > 0, f"{key}.{name}", f"must be positive, got {a[name]}")
  require(a.redraw_every >= 0, f"{key}.redraw_every", f"must be >= 0, got {a.redraw_every}")


def check_shardable(shapes, shardings, mesh):
  """Every sharded dimension must divide evenly by its mesh axes; names the parameter if not."""
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(shapes),
                                    jax.tree_util.tree_leaves(shardings)):
    for dim, axes in zip(leaf.shape, sharding.spec):
      axes = axes if isinstance(axes, tuple) else (axes,)
      size = math.prod(mesh.shape[a] for a in axes if a is not None)
      require(dim % size == 0, jax.tree_util.keystr(path),
              f"dimension {dim} does not divide over mesh axes {axes} of size {size}; "
              f"change the model size or mesh_shape")
