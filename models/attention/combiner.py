"""Combiner-Axial (Ren et al. 2021): full-support attention in O(L sqrt(L)).

The sequence is laid out row-major on an R x C grid, C = ceil(sqrt(L)). Query i (row a) attends
  - directly to the keys of its own row (up to i when causal), and
  - to C column regions: region r holds the keys of column r in the other rows (rows < a when
    causal). A region enters the joint softmax as one summary: its expected key and value under a
    within-region distribution q(j | region) ~ exp(u . k_j / sqrt(d)), u a learned summary query per
    head, with logit q_i . k_bar / sqrt(d) + log |region|, so that a region of identical keys
    carries exactly the mass of its members.
One joint softmax normalises direct and region logits together:
  p(j | i) = p(region | i) q(j | region) for j in a region.
"""
import math

import jax
import jax.numpy as jnp

from substrax.models.kernels.reference import MASKED


def grid_shape(length):
  cols = math.isqrt(length - 1) + 1 if length > 1 else 1
  return -(-length // cols), cols


def _logsumexp_combine(x, y):
  """Merges two stabilised partial sums (max logit, sum w, sum w k, sum w v)."""
  m = jnp.maximum(x[0], y[0])
  sx, sy = jnp.exp(x[0] - m), jnp.exp(y[0] - m)
  return (m, x[1] * sx + y[1] * sy, x[2] * sx[..., None] + y[2] * sy[..., None],
          x[3] * sx[..., None] + y[3] * sy[..., None])


def _shift_rows(t, direction, fill):
  """Moves a [b, R, ...] tensor one row down (direction=1) or up (-1), filling the gap."""
  pad = jnp.full_like(t[:, :1], fill)
  return (jnp.concatenate([pad, t[:, :-1]], axis=1) if direction == 1
          else jnp.concatenate([t[:, 1:], pad], axis=1))


def combiner_attention(q, k, v, u, *, causal, mask=None):
  """q, k, v: [batch, length, heads, d]; u: [heads, d] summary query. Computed in float32."""
  b, length, h, d = q.shape
  rows, cols = grid_shape(length)
  pad = rows * cols - length
  valid = jnp.ones((b, length), bool) if mask is None else mask
  q, k, v = (jnp.pad(t.astype(jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
  valid = jnp.pad(valid, ((0, 0), (0, pad)))
  grid = lambda t: t.reshape(b, rows, cols, *t.shape[2:])
  q, k, v, valid = grid(q) * d ** -0.5, grid(k), grid(v), grid(valid)

  # Direct part: the query's own row.
  direct = jnp.einsum("barhd,bachd->barhc", q, k)                    # query col r, key col c
  ok = valid[:, :, None, None, :]
  if causal:
    ok = ok & jnp.tril(jnp.ones((cols, cols), bool))[None, None, :, None, :]
  direct = jnp.where(ok, direct, MASKED)

  # Region summaries: stabilised sums over rows of each column, exclusive of the query's row.
  w = jnp.where(valid[..., None], jnp.einsum("bachd,hd->bach", k, u) * d ** -0.5, MASKED)
  # Sums of exp(w - max) with max the row-wise running max; padded keys weigh exactly zero.
  parts = (w, jnp.where(valid[..., None], 1.0, 0.0) * jnp.ones_like(w),
           jnp.where(valid[..., None, None], k, 0.0), jnp.where(valid[..., None, None], v, 0.0))
  empty = (MASKED, 0.0, 0.0, 0.0)
  before = tuple(_shift_rows(t, 1, e) for t, e in zip(
      jax.lax.associative_scan(_logsumexp_combine, parts, axis=1), empty))
  region = before
  if not causal:
    after = tuple(_shift_rows(t, -1, e) for t, e in zip(
        jax.lax.associative_scan(_logsumexp_combine, parts, axis=1, reverse=True), empty))
    region = _logsumexp_combine(before, after)
  _, mass, ksum, vsum = region                                       # [b, a, c, h(, d)]
  count = jnp.cumsum(valid, axis=1) - valid if causal else valid.sum(1, keepdims=True) - valid
  safe = jnp.maximum(mass, 1e-30)[..., None]
  k_bar, v_bar = ksum / safe, vsum / safe
  summary = (jnp.einsum("barhd,bachd->barhc", q, k_bar)
             + jnp.log(jnp.maximum(count, 1))[:, :, None, None, :])
  summary = jnp.where((count > 0)[:, :, None, None, :], summary, MASKED)

  p = jax.nn.softmax(jnp.concatenate([direct, summary], axis=-1), axis=-1)
  out = (jnp.einsum("barhc,bachd->barhd", p[..., :cols], v)
         + jnp.einsum("barhc,bachd->barhd", p[..., cols:], v_bar))
  return out.reshape(b, rows * cols, h, d)[:, :length]
