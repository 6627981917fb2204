"""Plain jax.numpy definitions of the two kernels: what the Pallas versions must reproduce.

Layout [batch, length, heads, head_dim]. Both compute in float32 and return the input dtype.
The masked softmax here is also the one every XLA attention form uses (models/attention).
"""
import operator

import jax
import jax.numpy as jnp

# Added to the linear-attention normaliser so that a query whose features are all zero (or a
# padded query) yields 0 instead of 0/0. Shared by every implementation.
LINEAR_EPS = 1e-6
# Finite, so that a row with every key masked gives a uniform (not NaN) distribution.
MASKED = -1e30


def masked_softmax(logits, allowed):
  """Softmax over the last axis, in float32, of the logits where `allowed` (broadcast) holds."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))   # float64 stays
  return jax.nn.softmax(jnp.where(allowed, logits, MASKED), axis=-1)


def alibi_slopes(num_heads):
  """The ALiBi head slopes of Press et al. (2022), float32 [num_heads].

  For a power of two H: 2^(-8i/H), i = 1..H. Otherwise, with n the largest power of two below H,
  the n slopes of n heads followed by every other slope of 2n heads (the paper's rule), that is
  2^(-4(2i-1)/n) for i = 1..H-n: those interleave with the first ones, so all stay distinct and
  within [2^-8, 1).
  """
  num_heads = operator.index(num_heads)
  if num_heads < 1:
    raise ValueError(f"alibi_slopes: num_heads must be >= 1, got {num_heads}")
  n = 1 << (num_heads.bit_length() - 1)
  exponents = ([8 * i / n for i in range(1, n + 1)]
               + [4 * (2 * i - 1) / n for i in range(1, num_heads - n + 1)])
  return jnp.asarray([2.0 ** -e for e in exponents], jnp.float32)


def flash_attention(q, k, v, *, causal=False, sm_scale=None, segment_ids=None, alibi_slopes=None):
  """softmax(q k^T * sm_scale + bias) v. segment_ids [batch, length] (int): a query attends only
  to keys with the same id. alibi_slopes [heads] (float): bias -alibi_slopes[h] * |i - j| for
  query i and key j in head h (ALiBi); no bias when None. Query and key lengths are equal."""
  sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * sm_scale
  length = q.shape[1]
  if alibi_slopes is not None:
    pos = jnp.arange(length)
    distance = jnp.abs(pos[:, None] - pos[None, :]).astype(jnp.float32)
    s = s - jnp.asarray(alibi_slopes, jnp.float32)[:, None, None] * distance
  allowed = jnp.ones((1, 1, length, length), bool)
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((length, length), bool))
  if segment_ids is not None:
    allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  p = masked_softmax(s, allowed)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32)).astype(q.dtype)


def linear_attention(q, k, v, *, causal=True):
  """Normalised linear attention on already feature-mapped (non-negative) q and k:

    out_i = sum_j (q_i . k_j) v_j / (sum_j q_i . k_j + LINEAR_EPS),  j <= i when causal.

  q, k: [batch, length, heads, d_k]; v: [batch, length, heads, d_v]. Written as the quadratic
  form, the most direct statement of the definition.
  """
  a = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
  if causal:
    a = jnp.tril(a)
  num = jnp.einsum("bhqk,bkhd->bqhd", a, v.astype(jnp.float32))
  den = jnp.einsum("bhqk->bqh", a)[..., None]
  return (num / (den + LINEAR_EPS)).astype(q.dtype)
