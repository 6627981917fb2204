"""Plain quadratic forms of every attention kind: each builds the full [L, L] weight matrix.

They define what the fast forms in this package compute and are what the property tests compare
against. Arguments match the fast functions; everything runs in float32.
"""
import jax
import jax.numpy as jnp

from substrax.models.attention.combiner import grid_shape
from substrax.models.attention.softmax import allowed_keys
from substrax.models.kernels.reference import LINEAR_EPS, MASKED, masked_softmax


def _f32(*ts):
  return tuple(t.astype(jnp.float32) for t in ts)


def softmax(q, k, v, *, causal, mask=None, segment_ids=None, window=None):
  q, k, v = _f32(q, k, v)
  ok = allowed_keys(q.shape[1], causal=causal, mask=mask, segment_ids=segment_ids, window=window)
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
  return jnp.einsum("bhqk,bkhd->bqhd", masked_softmax(s, ok), v)


def local(q, k, v, *, window, causal, mask=None):
  return softmax(q, k, v, causal=causal, mask=mask, window=window)


def linear(qf, kf, v, *, causal, mask=None, normalize=True):
  """sum_j a_ij v_j [/ (sum_j a_ij + eps)] with a_ij = qf_i . kf_j over the allowed keys."""
  qf, kf, v = _f32(qf, kf, v)
  a = jnp.einsum("bqhd,bkhd->bhqk", qf, kf) * allowed_keys(qf.shape[1], causal=causal, mask=mask)
  out = jnp.einsum("bhqk,bkhd->bqhd", a, v)
  if normalize:
    out = out / (jnp.einsum("bhqk->bqh", a)[..., None] + LINEAR_EPS)
  return out


def linformer(q, k, v, e, f, *, causal, mask=None):
  """Each query's own projection of the keys it may see: E^T (allowed_i * K)."""
  q, k, v = _f32(q, k, v)
  ok = allowed_keys(q.shape[1], causal=causal, mask=mask)[:, 0].astype(jnp.float32)  # [b|1, i, j]
  kp = jnp.einsum("bij,jr,bjhd->bihrd", ok, e, k)
  vp = jnp.einsum("bij,jr,bjhd->bihrd", ok, f, v)
  s = jnp.einsum("bihd,bihrd->bihr", q, kp) * q.shape[-1] ** -0.5
  return jnp.einsum("bihr,bihrd->bihd", jax.nn.softmax(s, -1), vp)


def combiner(q, k, v, u, *, causal, mask=None):
  """The Combiner-Axial weight matrix p(j | i), written out per (query, key) pair."""
  q, k, v = _f32(q, k, v)
  b, length, h, d = q.shape
  _, cols = grid_shape(length)
  pos = jnp.arange(length)
  row, col = pos // cols, pos % cols
  valid = jnp.ones((b, length), bool) if mask is None else mask
  same_row = row[:, None] == row[None, :]
  direct = same_row & ((pos[None, :] <= pos[:, None]) if causal else True)
  other = (row[None, :] < row[:, None]) if causal else ~same_row
  direct = direct[None] & valid[:, None, :]                                    # [b, i, j]
  member = (other[None] & valid[:, None, :]).astype(jnp.float32)               # [b, i, j]
  onehot = jax.nn.one_hot(col, cols)                                           # [j, r]
  scale = d ** -0.5
  w = jnp.exp(jnp.einsum("bjhd,hd->bjh", k, u) * scale)                        # within-region
  mass = jnp.einsum("bij,jr,bjh->bihr", member, onehot, w)
  count = jnp.einsum("bij,jr->bir", member, onehot)
  mass = jnp.maximum(mass, 1e-30)
  k_bar = jnp.einsum("bij,jr,bjh,bjhd->bihrd", member, onehot, w, k) / mass[..., None]
  s_direct = jnp.where(direct[:, :, None, :], jnp.einsum("bihd,bjhd->bihj", q, k) * scale, MASKED)
  s_region = (jnp.einsum("bihd,bihrd->bihr", q, k_bar) * scale
              + jnp.log(jnp.maximum(count, 1))[:, :, None])
  s_region = jnp.where((count > 0)[:, :, None], s_region, MASKED)
  p = jax.nn.softmax(jnp.concatenate([s_direct, s_region], -1), -1)
  p_direct, p_region = p[..., :length], p[..., length:]
  # p(j | i) = p(direct j | i) + p(region col(j) | i) * q(j | region), q(j | region) = w_j / mass
  within = jnp.einsum("bij,jr,bjh->bihjr", member, onehot, w) / mass[:, :, :, None]
  weights = p_direct + jnp.einsum("bihr,bihjr->bihj", p_region, within)
  return jnp.einsum("bihj,bjhd->bihd", weights, v)


def relu(q, k, v, *, causal, mask=None):
  """Weights relu(q_i . k_j) * allowed_ij / (number of allowed keys of i, at least 1); no
  1/sqrt(d)."""
  q, k, v = _f32(q, k, v)
  ok = allowed_keys(q.shape[1], causal=causal, mask=mask).astype(jnp.float32)  # [b|1, 1, i, j]
  count = jnp.maximum(ok.sum(-1, keepdims=True), 1.0)
  w = jax.nn.relu(jnp.einsum("bqhd,bkhd->bhqk", q, k)) * ok / count
  return jnp.einsum("bhqk,bkhd->bqhd", w, v)
