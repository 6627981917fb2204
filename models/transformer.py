"""GPT-2-style backbone: positions, pre-norm blocks, GELU MLP, final norm.

It takes already-embedded inputs [batch, length, residual width] so that every front end (ICL
read-in, token embeddings, patches) reuses the same stack. The residual width is `width`, or
width - 1 under CRMSNorm, whose stream stores only the free coordinates of a zero-mean vector
(models/norms.py); heads and the MLP keep the sizes that `width` gives them.

With `scan` the identical blocks run as one `nn.scan` whose parameters carry a leading layer
axis ('blocks' instead of block_0, block_1, ...), so tracing and lowering stop growing with depth;
`remat` names the `jax.checkpoint` policy each block is wrapped in (REMAT).
"""
import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from substrax.models import positions as schemes
from substrax.models.attention import Attention, layer_kwargs
from substrax.models.norms import centre, make_norm
from substrax.models.sharding import LAYERS, constrain, param_init

# model.remat: what each block keeps for the backward pass (the rest is recomputed there).
REMAT = {
    "none": None,   # no jax.checkpoint: every activation is kept
    "full": jax.checkpoint_policies.nothing_saveable,   # only the block's input
    # The outputs of matmuls without batch dimensions (QKV, attention output and MLP
    # projections); attention scores, softmax, norms and GELU are recomputed.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """The settings every block of a backbone shares; `block_config` reads them from a config."""
  num_heads: int
  mlp_ratio: int = 4
  norm: str = "layernorm"
  positions: str = "learned"   # models/positions.py
  # Every layer that writes to the residual stream (embeddings, positions, output projections)
  # writes its zero-mean projection: Jiang et al.'s Pre-RMSNorm, which with norm='rmsnorm'
  # trains exactly as the same parameters do under 'layernorm'.
  zero_mean: bool = False
  # Attention keyword arguments: kind, impl and the kind's settings (see models/attention);
  # None means softmax with the default implementation.
  attention: Mapping[str, Any] | None = None
  dropout: float = 0.0   # on each residual branch; active only when deterministic=False
  dtype: Any = jnp.float32   # compute dtype; parameters and norms stay float32
  # Hidden units of each layer's MLP, e.g. a submodel extracted from a MatFormer; () gives
  # every layer mlp_ratio * width.
  mlp_hidden: tuple[int, ...] = ()
  experts: int = 0   # EMoE: the MLP's units in this many experts (0: dense); see MLP
  top_k: int = 0     # EMoE: experts each token uses
  # The backbone's layout and memory, not its function: one nn.scan over identical blocks
  # (parameters stacked on a leading layer axis), and the REMAT policy of every block.
  scan: bool = False
  remat: str = "none"

  def hidden(self, width: int, depth: int) -> tuple[int, ...]:
    """Each layer's MLP hidden units."""
    return tuple(self.mlp_hidden) or (self.mlp_ratio * width,) * depth


def block_config(m) -> BlockConfig:
  """The BlockConfig of a model config block (the fields validation.check_backbone checks;
  `dropout` where the config has one)."""
  return BlockConfig(num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, norm=m.norm,
                     positions=m.get("positions", "learned"),
                     zero_mean=m.get("zero_mean", False),
                     attention=layer_kwargs(m.attention), dropout=m.get("dropout", 0.0),
                     dtype=jnp.dtype(m.dtype), scan=m.get("scan", False),
                     remat=m.get("remat", "none"), **mlp_fields(m))


def mlp_fields(m) -> dict:
  """BlockConfig's MLP fields from a config's model.mlp block (configs.common.mlp_config)."""
  mlp = m.get("mlp")
  if mlp is None:
    return {}
  return dict(mlp_hidden=tuple(mlp.hidden), experts=mlp.experts, top_k=mlp.top_k)


def granularity_units(block: BlockConfig, width: int, depth: int, factors) -> tuple[int, ...]:
  """Each layer's MLP units under per-layer MatFormer factors (1 = every unit, 8 = an eighth)."""
  return tuple(h // f for h, f in zip(block.hidden(width, depth), factors, strict=True))


def residual_width(width: int, norm: str) -> int:
  """The residual stream's width: CRMSNorm drops the coordinate a zero-mean vector implies."""
  return width - 1 if norm == "crmsnorm" else width


class Weights(nn.Module):
  """A dense layer's kernel and bias under nn.Dense's names, shapes and initialisers, returned
  whole so that the MLP can use a prefix of them."""
  shape: tuple[int, int]
  kernel_init: nn.initializers.Initializer
  bias_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self):
    return (self.param("kernel", self.kernel_init, self.shape),
            self.param("bias", self.bias_init, self.shape[-1:]))


def dense(x, kernel, bias, dtype):
  """nn.Dense's computation, op for op, so models compute what they did with nn.Dense."""
  x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
  y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


class MLP(nn.Module):
  """GELU FFN whose hidden units are nested (MatFormer, Devvrit et al. 2023): a call with
  `units` < hidden runs the first `units` of them, the slices W1[:, :units], b1[:units] and
  W2[:units], exactly the full FFN with the other units' activations masked to zero.

  With `experts` > 0 (EMoE, Qiu et al. 2023) the hidden units form that many experts, each a
  fixed group of units, and a token keeps only the units of the `top_k` experts whose gate
  vector scores its input highest: W2 (m(x) * gelu(W1 x + b1)) + b2, m(x) masking every other
  unit. The groups and gate vectors are the 'emoe' collection (not parameters, so fine-tuning
  leaves them fixed): a fresh model groups contiguous units, models/emoe.py sets k-means groups
  from a trained W1. With top_k = experts it is the dense FFN.
  """
  hidden: int
  dtype: jnp.dtype
  out_init: nn.initializers.Initializer
  zero_mean: bool = False
  experts: int = 0
  top_k: int = 0

  @nn.compact
  def __call__(self, x, units=None):
    width, units = x.shape[-1], units or self.hidden
    kernel, b1 = Weights((width, self.hidden),
                         param_init(nn.initializers.normal(0.02), "embed", "mlp"),
                         param_init(nn.initializers.zeros, "mlp"), name="fc")()
    w2, b2 = Weights((self.hidden, width), param_init(self.out_init, "mlp", "embed"),
                     param_init(nn.initializers.zeros, "embed"), name="proj")()
    w1 = kernel
    if units < self.hidden:
      w1, b1, w2 = w1[:, :units], b1[:units], w2[:units]
    if self.zero_mean:   # Pre-RMSNorm: the branch writes its zero-mean projection
      w2, b2 = centre(w2), centre(b2)
    h = nn.gelu(dense(x, w1, b1, self.dtype))
    if self.experts:   # (validation keeps experts and nested widths apart)
      h = h * self._expert_mask(x, kernel).astype(h.dtype)
    h = constrain(h, "batch", "length", "mlp")
    return dense(h, w2, b2, self.dtype)

  def _expert_mask(self, x, w1):
    """[..., hidden] 1 for the units of each token's top_k experts."""
    size = self.hidden // self.experts
    group = self.variable("emoe", "group", lambda: jnp.arange(self.hidden) // size).value
    gate = self.variable("emoe", "gate", lambda: mean_keys(w1, group, self.experts)).value
    _, chosen = jax.lax.top_k(x.astype(jnp.float32) @ gate.T, self.top_k)
    keep = jax.nn.one_hot(chosen, self.experts, dtype=jnp.float32).sum(-2)   # [..., experts]
    return keep[..., group]


def mean_keys(w1, group, experts):
  """[experts, width]: each expert's mean raw key (the columns of W1 [width, hidden] that its
  units read with), EMoE's gate vector."""
  onehot = jax.nn.one_hot(group, experts, dtype=jnp.float32)          # [hidden, experts]
  return (w1.astype(jnp.float32) @ onehot / onehot.sum(0)).T


class Block(nn.Module):
  config: BlockConfig
  width: int
  causal: bool
  max_len: int
  out_init: nn.initializers.Initializer
  hidden: int   # MLP hidden units

  @nn.compact
  def __call__(self, x, mask=None, segment_ids=None, deterministic=True, units=None):
    c = self.config
    drop = nn.Dropout(c.dropout, deterministic=deterministic or c.dropout == 0)
    h = make_norm(c.norm, "norm_attn")(x).astype(c.dtype)
    attn = Attention(c.num_heads, causal=self.causal, max_len=self.max_len, dtype=c.dtype,
                     positions=c.positions, head_dim=self.width // c.num_heads,
                     centre_out=c.zero_mean, out_init=self.out_init, name="attn",
                     **dict(c.attention or {}))
    x = x + drop(attn(h, mask, segment_ids))
    h = make_norm(c.norm, "norm_mlp")(x).astype(c.dtype)
    x = x + drop(MLP(self.hidden, c.dtype, self.out_init, c.zero_mean, c.experts, c.top_k,
                     name="mlp")(h, units))
    return constrain(x, "batch", "length", None)


class ScannedBlock(Block):
  """A Block in nn.scan's (carry, output) form; its parameters are Block's, one layer's slice."""

  @nn.compact
  def __call__(self, x, mask=None, segment_ids=None, deterministic=True):
    return super().__call__(x, mask, segment_ids, deterministic), None


def remat(module, policy: str, static_argnums: tuple[int, ...], prevent_cse: bool = True):
  """`module` under nn.remat with REMAT[policy] (itself for 'none'). static_argnums count the
  module as argument 0, as flax's lifted transforms do; inside nn.scan prevent_cse can be off
  (the loop already keeps XLA from merging the recomputation into the forward pass)."""
  if REMAT[policy] is None:
    return module
  return nn.remat(module, policy=REMAT[policy], static_argnums=static_argnums,
                  prevent_cse=prevent_cse)


def scanned(module, depth: int, broadcasts: int):
  """nn.scan of `module` over `depth` layers: parameters stacked on a leading axis named LAYERS
  (mapped to no mesh axis), each layer its own parameter, dropout and feature RNGs, and the
  `broadcasts` arguments after the carry shared by every layer."""
  return nn.scan(module, variable_axes={"params": 0},
                 split_rngs={"params": True, "dropout": True, "features": True},
                 in_axes=(nn.broadcast,) * broadcasts, length=depth,
                 metadata_params={nn.PARTITION_NAME: LAYERS})


# The names of scanned stacks of layers: the Transformer's and the video Transformer's 'blocks'
# and the latter's 'temporal_blocks' (unrolled: block_<i>, temporal_block_<i>).
STACKS = ("blocks", "temporal_blocks")


def unstack_layers(stacked) -> list:
  """A scanned backbone's 'blocks' tree (leaves [depth, ...]) as one tree per layer: what the
  unrolled backbone holds as block_0, block_1, ..."""
  depth = jax.tree.leaves(stacked)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)]


def stack_layers(layers):
  """Per-layer trees stacked into the scanned 'blocks' tree: unstack_layers' inverse."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *layers)


class Transformer(nn.Module):
  width: int
  depth: int
  max_len: int
  block: BlockConfig
  causal: bool = True

  @nn.compact
  def __call__(self, x, mask=None, segment_ids=None, deterministic=True, units=None):
    """x [batch, length, residual_width(width, norm)]; optional mask [batch, length] (True for
    real tokens) and segment_ids [batch, length] (softmax attention only); `units`, per layer,
    runs each MLP on a prefix of its hidden units (MatFormer; `granularity_units`). Dropout
    draws from the 'dropout' RNG."""
    length, stream = x.shape[1], x.shape[-1]
    scheme = self.block.positions
    if scheme in ("learned", "sinusoidal"):
      if length > self.max_len:
        raise ValueError(f"positions: length {length} exceeds max_len={self.max_len}")
      table = (self.param("pos_embedding",
                          param_init(nn.initializers.normal(0.02), "length", "embed"),
                          (self.max_len, stream))
               if scheme == "learned" else schemes.sinusoids(self.max_len, stream))
      table = table[:length].astype(x.dtype)
      x = x + (centre(table) if self.block.zero_mean else table)
    x = constrain(x, "batch", "length", None)
    # GPT-2 scales the residual-branch output projections by 1/sqrt(2 * depth).
    out_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.depth))
    hidden = self.block.hidden(self.width, self.depth)
    args = (self.block, self.width, self.causal, self.max_len, out_init)
    if self.block.scan:
      if units is not None or len(set(hidden)) > 1:   # validation refuses both
        raise ValueError("scan needs identical layers: no per-layer MLP widths or units")
      stack = scanned(remat(ScannedBlock, self.block.remat, (4,), False), self.depth, 3)
      x, _ = stack(*args, hidden[0], name="blocks")(x, mask, segment_ids, deterministic)
    else:
      layer = remat(Block, self.block.remat, (4, 5))
      for i in range(self.depth):
        x = layer(*args, hidden[i], name=f"block_{i}")(
            x, mask, segment_ids, deterministic, None if units is None else units[i])
    return make_norm(self.block.norm, "norm_final")(x)
