"""The Transformer world model: FluidWorld's parameter-matched attention baseline.

Encoder: PatchEmbed + LayerNorm, learned positions (N x d), `depth` pre-norm blocks, final LN.
Temporal: Dense(2d -> d) on [z_t; s_prev] + the same positions, `temporal_depth` blocks, LN.
The state is the previous predicted latent, so this is a one-step Markov predictor (as in
FluidWorld's baseline). Blocks use the repo's Attention layer (fused QKV, 4d^2 + 4d params,
like PyTorch's MultiheadAttention), non-causal. `scan` runs each stack as one nn.scan
(parameters 'blocks' and 'temporal_blocks' with a leading layer axis instead of block_i and
temporal_block_i) and `remat` wraps every block in a jax.checkpoint policy
(models/transformer.py REMAT).
"""
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from substrax.models.attention import Attention
from substrax.models.sharding import param_init
from substrax.models.transformer import remat, scanned
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


class ScannedPreNormBlock(PreNormBlock):
  """A PreNormBlock in nn.scan's (carry, output) form."""

  @nn.compact
  def __call__(self, x):
    return super().__call__(x), None


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
  scan: bool = False    # each stack as one nn.scan over stacked parameters
  remat: str = "none"   # jax.checkpoint policy of every block (models/transformer.py REMAT)

  def setup(self):
    self.embed = PatchEmbed(self.dim, self.patch, "layernorm")
    self.pos = PositionEmbedding()
    self.blocks = self._stack("block", self.depth)
    self.norm = channel_norm("layernorm")
    self.temporal_in = _dense(self.dim, (None, "embed"), None)
    self.temporal_blocks = self._stack("temporal_block", self.temporal_depth)
    self.temporal_norm = channel_norm("layernorm")
    self.decoder = PixelDecoder(self.channels, self.decoder_mid, self.patch)

  def _stack(self, prefix: str, depth: int):
    """One scanned module (named after the attribute it is assigned to), or depth blocks
    named prefix_0, prefix_1, ..."""
    fields = (self.num_heads, self.ffn, self.attention)
    if self.scan:
      return scanned(remat(ScannedPreNormBlock, self.remat, (), False), depth, 0)(*fields)
    layer = remat(PreNormBlock, self.remat, ())
    return [layer(*fields, name=f"{prefix}_{i}") for i in range(depth)]

  def _run(self, stack, t):
    if self.scan:
      return stack(t)[0]
    for blk in stack:
      t = blk(t)
    return t

  def _tokens(self, grid):
    return grid.reshape(grid.shape[0], -1, grid.shape[-1])

  def encode(self, x, train: bool = False):
    u = self.embed(x)
    t = self._run(self.blocks, self.pos(self._tokens(u)))
    return self.norm(t).reshape(u.shape), {}

  def init_state(self, z):
    return jnp.zeros_like(z)

  def step(self, state, z):
    t = self.temporal_in(self._tokens(jnp.concatenate([z, state], axis=-1)))
    t = self._run(self.temporal_blocks, self.pos(t))
    latent = self.temporal_norm(t).reshape(z.shape)
    return latent, latent
