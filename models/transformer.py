"""GPT-2-style backbone: learned positions, pre-norm blocks, GELU MLP, final norm.

It takes already-embedded inputs [batch, length, width] so that every front end (ICL read-in,
token embeddings, patches) reuses the same stack.
"""
import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from substrax.models.attention import Attention, layer_kwargs
from substrax.models.sharding import constrain, param_init

NORMS = ("layernorm", "rmsnorm")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """The settings every block of a backbone shares; `block_config` reads them from a config."""
  num_heads: int
  mlp_ratio: int = 4
  norm: str = "layernorm"
  # Attention keyword arguments: kind, impl and the kind's settings (see models/attention);
  # None means softmax with the default implementation.
  attention: Mapping[str, Any] | None = None
  dropout: float = 0.0   # on each residual branch; active only when deterministic=False
  dtype: Any = jnp.float32   # compute dtype; parameters and norms stay float32


def block_config(m) -> BlockConfig:
  """The BlockConfig of a model config block (the fields validation.check_backbone checks;
  `dropout` where the config has one)."""
  return BlockConfig(num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, norm=m.norm,
                     attention=layer_kwargs(m.attention), dropout=m.get("dropout", 0.0),
                     dtype=jnp.dtype(m.dtype))


def make_norm(kind: str, name: str):
  cls = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}[kind]
  kwargs = dict(scale_init=param_init(nn.initializers.ones, "embed"))
  if kind == "layernorm":
    kwargs["bias_init"] = param_init(nn.initializers.zeros, "embed")
  return cls(name=name, dtype=jnp.float32, **kwargs)


class MLP(nn.Module):
  hidden: int
  dtype: jnp.dtype
  out_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = nn.Dense(self.hidden, dtype=self.dtype, name="fc",
                 kernel_init=param_init(nn.initializers.normal(0.02), "embed", "mlp"),
                 bias_init=param_init(nn.initializers.zeros, "mlp"))(x)
    h = constrain(nn.gelu(h), "batch", "length", "mlp")
    return nn.Dense(width, dtype=self.dtype, name="proj",
                    kernel_init=param_init(self.out_init, "mlp", "embed"),
                    bias_init=param_init(nn.initializers.zeros, "embed"))(h)


class Block(nn.Module):
  config: BlockConfig
  causal: bool
  max_len: int
  out_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, x, mask=None, segment_ids=None, deterministic=True):
    c = self.config
    drop = nn.Dropout(c.dropout, deterministic=deterministic or c.dropout == 0)
    h = make_norm(c.norm, "norm_attn")(x).astype(c.dtype)
    attn = Attention(c.num_heads, causal=self.causal, max_len=self.max_len, dtype=c.dtype,
                     out_init=self.out_init, name="attn", **dict(c.attention or {}))
    x = x + drop(attn(h, mask, segment_ids))
    h = make_norm(c.norm, "norm_mlp")(x).astype(c.dtype)
    x = x + drop(MLP(c.mlp_ratio * x.shape[-1], c.dtype, self.out_init, name="mlp")(h))
    return constrain(x, "batch", "length", None)


class Transformer(nn.Module):
  width: int
  depth: int
  max_len: int
  block: BlockConfig
  causal: bool = True
  positions: bool = True  # learned position embeddings; False: order enters only causally

  @nn.compact
  def __call__(self, x, mask=None, segment_ids=None, deterministic=True):
    """x [batch, length, width]; optional mask [batch, length] (True for real tokens) and
    segment_ids [batch, length] (softmax attention only). Dropout draws from the 'dropout' RNG."""
    length = x.shape[1]
    if self.positions:
      pos = self.param("pos_embedding",
                       param_init(nn.initializers.normal(0.02), "length", "embed"),
                       (self.max_len, self.width))
      x = x + pos[:length].astype(x.dtype)
    x = constrain(x, "batch", "length", None)
    # GPT-2 scales the residual-branch output projections by 1/sqrt(2 * depth).
    out_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.depth))
    for i in range(self.depth):
      block = Block(self.block, self.causal, self.max_len, out_init, name=f"block_{i}")
      x = block(x, mask, segment_ids, deterministic)
    return make_norm(self.block.norm, "norm_final")(x)
