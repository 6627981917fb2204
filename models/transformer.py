"""GPT-2-style backbone: learned positions, pre-norm blocks, GELU MLP, final norm.

It takes already-embedded inputs [batch, length, width] so that every front end (ICL read-in,
token embeddings, patches) reuses the same stack.
"""
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from substrax.models.attention import Attention
from substrax.models.sharding import constrain, param_init

NORMS = ("layernorm", "rmsnorm")


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
  num_heads: int
  mlp_ratio: int
  norm: str
  attention: Mapping[str, Any]
  causal: bool
  max_len: int
  dtype: jnp.dtype
  out_init: nn.initializers.Initializer
  dropout: float

  @nn.compact
  def __call__(self, x, mask=None, segment_ids=None, deterministic=True):
    drop = nn.Dropout(self.dropout, deterministic=deterministic or self.dropout == 0)
    h = make_norm(self.norm, "norm_attn")(x).astype(self.dtype)
    attn = Attention(self.num_heads, causal=self.causal, max_len=self.max_len, dtype=self.dtype,
                     out_init=self.out_init, name="attn", **self.attention)
    x = x + drop(attn(h, mask, segment_ids))
    h = make_norm(self.norm, "norm_mlp")(x).astype(self.dtype)
    x = x + drop(MLP(self.mlp_ratio * x.shape[-1], self.dtype, self.out_init, name="mlp")(h))
    return constrain(x, "batch", "length", None)


class Transformer(nn.Module):
  width: int
  depth: int
  num_heads: int
  max_len: int
  mlp_ratio: int = 4
  norm: str = "layernorm"
  # Attention keyword arguments: kind, impl and the kind's settings (see models/attention);
  # None means softmax with the default implementation.
  attention: Mapping[str, Any] | None = None
  causal: bool = True
  dropout: float = 0.0   # on each residual branch; active only when deterministic=False
  positions: bool = True  # learned position embeddings; False: order enters only causally
  dtype: jnp.dtype = jnp.float32

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
    block = functools.partial(Block, self.num_heads, self.mlp_ratio, self.norm,
                              dict(self.attention or {}),
                              self.causal, self.max_len, self.dtype, out_init, self.dropout)
    for i in range(self.depth):
      x = block(name=f"block_{i}")(x, mask, segment_ids, deterministic)
    return make_norm(self.norm, "norm_final")(x)
