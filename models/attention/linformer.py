"""Linformer (Wang et al. 2020): softmax attention over r learned projections of the length axis.

  out = softmax(q (E^T K)^T / sqrt(d)) (F^T V),  E, F: [length, r]

Padded tokens are zeroed before the projection, so they never reach a real token (LRA's
implementation ignores padding). Linformer is not causal as published; the causal form here
projects only each query's prefix, E^T K restricted to j <= i, kept as a prefix sum.
"""
import jax
import jax.numpy as jnp


def linformer_attention(q, k, v, e, f, *, causal, mask=None):
  """q, k, v: [batch, length, heads, d]; e, f: [length, r]. Computed in float32."""
  q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
  if mask is not None:
    k, v = (t * mask[:, :, None, None] for t in (k, v))
  q = q * q.shape[-1] ** -0.5
  if causal:
    kp = jnp.cumsum(jnp.einsum("lr,blhd->blrhd", e, k), axis=1)   # [b, l, r, h, d]
    vp = jnp.cumsum(jnp.einsum("lr,blhd->blrhd", f, v), axis=1)
    p = jax.nn.softmax(jnp.einsum("blhd,blrhd->blhr", q, kp), axis=-1)
    return jnp.einsum("blhr,blrhd->blhd", p, vp)
  kp = jnp.einsum("lr,blhd->brhd", e, k)
  vp = jnp.einsum("lr,blhd->brhd", f, v)
  p = jax.nn.softmax(jnp.einsum("blhd,brhd->blhr", q, kp), axis=-1)
  return jnp.einsum("blhr,brhd->blhd", p, vp)
