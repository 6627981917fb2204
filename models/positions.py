"""Positional schemes: how a transformer sees order (`model.positions`).

Absolute, added to the residual stream once, before the first block (models/transformer.py):
  learned     a trained [max_len, width] table (GPT-2)
  sinusoidal  the fixed sin/cos table of Vaswani et al. 2017
  none        nothing: order enters only through the causal mask

Relative, inside every attention layer (models/attention):
  rope        rotates each (2i, 2i+1) pair of query and key features by position * theta_i
              (Su et al., RoFormer), so q_m . k_n depends on m - n only
  alibi       adds -slope_h * |i - j| to the scores (Press et al. 2022); no parameters
  rpe         adds a learned bias b_h(bucket(j - i)) to the scores, T5's log-spaced buckets
  urpe        rpe, then multiplies the softmax output elementwise by a learned Toeplitz matrix
              C_ij = c_h(j - i), initialised to ones (Luo et al. 2022): Attn = (softmax(S + B) * C) V

A relative scheme is defined only where the attention kind exposes what it acts on; RELATIVE
lists where each one works, and config validation names any other pair.
"""
import math

import jax.numpy as jnp
import numpy as np

ABSOLUTE = ("learned", "sinusoidal", "none")
# Relative scheme -> attention kinds that define it. RoPE needs raw q . k products (softmax,
# local windows, LSA's unnormalised linear form and ReLU attention's relu(q . k)); the biases and
# URPE's multiplier act on the materialised softmax scores.
RELATIVE = {"rope": ("softmax", "local", "lsa", "relu"), "alibi": ("softmax",),
            "rpe": ("softmax",), "urpe": ("softmax",)}
SCHEMES = ABSOLUTE + tuple(RELATIVE)
# Softmax implementations that take each scheme: the score biases need the dense form, except
# ALiBi, which the flash kernel computes from positions.
IMPLS = {"alibi": ("auto", "xla", "pallas"), "rpe": ("auto", "xla"), "urpe": ("auto", "xla")}
RPE_BUCKETS = 32
RPE_MAX_DISTANCE = 128
ROPE_BASE = 10_000.0

def sinusoids(length: int, width: int):
  """[length, width]: sin in the even features, cos in the odd ones, wavelengths 2pi..10^4 2pi."""
  pos = np.arange(length)[:, None]
  freq = np.exp(-math.log(10_000.0) * np.arange(0, width, 2) / width)
  table = np.zeros((length, width), np.float32)
  table[:, 0::2] = np.sin(pos * freq)
  table[:, 1::2] = np.cos(pos * freq)[:, : width // 2]
  return jnp.asarray(table)


def rope(x):
  """Rotates x [batch, length, heads, dim] (dim even): each feature pair (2i, 2i+1) of position m
  turns by the angle m * base^(-2i/dim)."""
  length, dim = x.shape[1], x.shape[-1]
  theta = ROPE_BASE ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angle = jnp.arange(length, dtype=jnp.float32)[:, None] * theta        # [length, dim/2]
  cos, sin = (f(angle)[None, :, None, :] for f in (jnp.cos, jnp.sin))
  even, odd = x[..., 0::2].astype(jnp.float32), x[..., 1::2].astype(jnp.float32)
  out = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def offsets(length: int):
  """[length, length] int: j - i, the key's position minus the query's."""
  pos = jnp.arange(length)
  return pos[None, :] - pos[:, None]


def alibi_bias(slopes, length: int):
  """[heads, length, length]: -slope_h * |j - i|."""
  return -slopes[:, None, None] * jnp.abs(offsets(length)).astype(slopes.dtype)[None]


def rpe_buckets(length: int, *, causal: bool, num_buckets: int = RPE_BUCKETS,
                max_distance: int = RPE_MAX_DISTANCE):
  """[length, length] int in [0, num_buckets): T5's relative-position buckets of j - i. Half the
  buckets (all when causal, which sees only j <= i) hold exact distances, the rest grow
  logarithmically up to max_distance; non-causal splits past and future."""
  rel = offsets(length)
  n = num_buckets
  bucket = jnp.zeros_like(rel)
  if causal:
    distance = jnp.maximum(-rel, 0)
  else:
    n //= 2
    bucket = jnp.where(rel > 0, n, 0)
    distance = jnp.abs(rel)
  exact = n // 2
  log_ratio = jnp.log(jnp.maximum(distance, 1) / exact) / math.log(max_distance / exact)
  far = exact + (log_ratio * (n - exact)).astype(jnp.int32)
  return bucket + jnp.where(distance < exact, distance, jnp.minimum(far, n - 1))
