"""The Transformer world model: FluidWorld's parameter-matched attention baseline.

Encoder: PatchEmbed + LayerNorm, learned positions (N x d), `depth` pre-norm blocks, final LN.
Temporal: Dense(2d -> d) on [z_t; s_prev] + the same positions, `temporal_depth` blocks, LN.
The state is the previous predicted latent, so this is a one-step Markov predictor (as in
FluidWorld's baseline). Blocks use the repo's Attention layer (fused QKV, 4d^2 + 4d params,
like PyTorch's MultiheadAttention), non-causal.
"""
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from substrax.models.attention import Attention
from substrax.models.sharding import param_init
from substrax.models.video import PatchEmbed, PixelDecoder, WorldModel, channel_norm, gelu

_init = nn.initializers.truncated_normal(0.02)


def _dense(features, axes, name):
  return nn.Dense(features, name=name, kernel_init=param_init(_init, *axes),
                  bias_init=param_init(nn.initializers.zeros, axes[1]))


class PreNormBlock(nn.Module):
  """x + Attn(LN(x)); x + FFN(LN(x)), with the FFN width given explicitly."""
  num_heads: int
  ffn: int
  attention: Mapping[str, Any] | None = None

  @nn.compact
  def __call__(self, x):
    attn = Attention(self.num_heads, causal=False, max_len=x.shape[1], kernel_init=_init,
                     out_init=_init, name="attn", **dict(self.attention or {}))
    x = x + attn(channel_norm("layernorm", name="norm_attn")(x))
    h = channel_norm("layernorm", name="norm_ffn")(x)
    h = gelu(_dense(self.ffn, ("embed", "mlp"), "ffn_in")(h))
    return x + _dense(x.shape[-1], ("mlp", "embed"), "ffn_out")(h)


class PositionEmbedding(nn.Module):
  """Learned [N, d] positions, std 0.02; N comes from the first input."""

  @nn.compact
  def __call__(self, tokens):
    pos = self.param("embedding", param_init(nn.initializers.normal(0.02), "length", "embed"),
                     tokens.shape[1:])
    return tokens + pos


class VideoTransformer(WorldModel):
  """Defaults are the paper's baseline (64x64x3, d=128, FFN 384: 800,067 params)."""
  num_heads: int = 8
  depth: int = 2
  temporal_depth: int = 1
  ffn: int = 384
  attention: Mapping[str, Any] | None = None   # Attention kwargs (kind, impl, ...); None: softmax

  def setup(self):
    self.embed = PatchEmbed(self.dim, self.patch, "layernorm")
    self.pos = PositionEmbedding()
    block = lambda name: PreNormBlock(self.num_heads, self.ffn, self.attention, name=name)
    self.blocks = [block(f"block_{i}") for i in range(self.depth)]
    self.norm = channel_norm("layernorm")
    self.temporal_in = _dense(self.dim, (None, "embed"), None)
    self.temporal_blocks = [block(f"temporal_block_{i}") for i in range(self.temporal_depth)]
    self.temporal_norm = channel_norm("layernorm")
    self.decoder = PixelDecoder(self.channels, self.decoder_mid, self.patch)

  def _tokens(self, grid):
    return grid.reshape(grid.shape[0], -1, grid.shape[-1])

  def encode(self, x, train: bool = False):
    u = self.embed(x)
    t = self.pos(self._tokens(u))
    for blk in self.blocks:
      t = blk(t)
    return self.norm(t).reshape(u.shape), {}

  def init_state(self, z):
    return jnp.zeros_like(z)

  def step(self, state, z):
    t = self.temporal_in(self._tokens(jnp.concatenate([z, state], axis=-1)))
    t = self.pos(t)
    for blk in self.temporal_blocks:
      t = blk(t)
    latent = self.temporal_norm(t).reshape(z.shape)
    return latent, latent
