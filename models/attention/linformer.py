"""Linformer (Wang et al. 2020): softmax attention over r learned projections of the length axis.

  out = softmax(q (E^T K)^T / sqrt(d)) (F^T V),  E, F: [length, r]

Padded tokens are zeroed before the projection, so they never reach a real token (LRA's
implementation ignores padding). Linformer is not causal as published; the causal form here
projects only each query's prefix, E^T K restricted to j <= i. It is computed in chunks, like
chunked linear attention: inside a chunk the prefix terms come from the masked quadratic form,
across chunks from the running projections E^T K and F^T V of the earlier chunks, so memory is
O(L * chunk + L / chunk * r * d), never one projection per token.
"""
import jax
import jax.numpy as jnp

from substrax.models.kernels.linear import CHUNK


def _causal(q, k, v, e, f, chunk):
  b, length, h, d = q.shape
  c = min(chunk, length)
  n = -(-length // c)
  pad = n * c - length
  qc, kc, vc = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, c, h, d)
                for t in (q, k, v))
  ec, fc = (jnp.pad(t, ((0, pad), (0, 0))).reshape(n, c, -1) for t in (e, f))
  tril = jnp.tril(jnp.ones((c, c), q.dtype))
  a = jnp.einsum("bnihd,bnjhd->bnhij", qc, kc) * tril                 # q_i . k_j, j <= i in chunk
  s = jnp.einsum("bnhij,njr->bnhir", a, ec)                           # sum_j e_jr q_i . k_j
  if n > 1:  # plus the projections of all earlier chunks
    k_proj = jnp.einsum("ncr,bnchd->bnrhd", ec, kc)
    s += jnp.einsum("bnihd,bnrhd->bnhir", qc, jnp.cumsum(k_proj, axis=1) - k_proj)
  p = jax.nn.softmax(s, axis=-1)                                      # [b, n, h, c, r]
  w = jnp.einsum("bnhir,njr->bnhij", p, fc) * tril                    # weight of v_j in out_i
  out = jnp.einsum("bnhij,bnjhd->bnihd", w, vc)
  if n > 1:
    v_proj = jnp.einsum("ncr,bnchd->bnrhd", fc, vc)
    out += jnp.einsum("bnhir,bnrhd->bnihd", p, jnp.cumsum(v_proj, axis=1) - v_proj)
  return out.reshape(b, n * c, h, d)[:, :length]


def linformer_attention(q, k, v, e, f, *, causal, mask=None, chunk=CHUNK):
  """q, k, v: [batch, length, heads, d]; e, f: [length, r]. Computed in float32."""
  q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
  if mask is not None:
    k, v = (t * mask[:, :, None, None] for t in (k, v))
  q = q * q.shape[-1] ** -0.5
  if causal:
    return _causal(q, k, v, e, f, chunk)
  kp = jnp.einsum("lr,blhd->brhd", e, k)
  vp = jnp.einsum("lr,blhd->brhd", f, v)
  p = jax.nn.softmax(jnp.einsum("blhd,brhd->blhr", q, kp), axis=-1)
  return jnp.einsum("blhr,brhd->blhd", p, vp)
