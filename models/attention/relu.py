"""ReLU attention (Lin, Bai & Mei, "Transformers as Decision Makers", ICLR 2024).

  out_i = (1 / n_i) sum_{j allowed for i} relu(q_i . k_j) v_j

n_i is the number of keys query i may see: i + 1 (0-based) when causal, every real key when not;
padded keys neither count nor contribute. No 1/sqrt(d) scaling, as in the paper. The weights are
dense, O(L^2 d) like softmax/xla, and computed in float32.
"""
import jax
import jax.numpy as jnp

from substrax.models.attention.softmax import allowed_keys


def relu_attention(q, k, v, *, causal, mask=None):
  """q, k, v: [batch, length, heads, d]; mask [batch, length] True for real tokens."""
  dtype = v.dtype
  q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
  ok = allowed_keys(q.shape[1], causal=causal, mask=mask)                  # [b|1, 1, q, k]
  w = jnp.where(ok, jax.nn.relu(jnp.einsum("bqhd,bkhd->bhqk", q, k)), 0.0)
  out = jnp.einsum("bhqk,bkhd->bqhd", w, v)
  # n_i from the padding mask alone: real keys up to i when causal, all real keys otherwise.
  real = jnp.ones(q.shape[:2]) if mask is None else mask.astype(jnp.float32)
  n = jnp.cumsum(real, axis=1) if causal else real.sum(1, keepdims=True)   # [b, q or 1]
  # A query with no allowed key (leading or full padding) has out = 0; dividing by 1 keeps it so.
  return (out / jnp.maximum(n, 1.0)[:, :, None, None]).astype(dtype)
