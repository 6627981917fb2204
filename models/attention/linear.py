"""Linear-attention substrates: a feature map, then attention in O(L) through a running state.

  linear     phi(x) = elu(x) + 1                            (Katharopoulos et al. 2020)
  performer  FAVOR+ positive orthogonal random features     (Choromanski et al. 2021)
  cosformer  relu features re-weighted by cos(pi/2 (i-j)/M)  (Qin et al. 2022)
  lsa        no feature map, no softmax, no normaliser      (von Oswald et al. 2023)

Tensors are [batch, length, heads, dim]; `mask` [batch, length] is True for real tokens.
"""
import math

import jax
import jax.numpy as jnp

from substrax.models import kernels
from substrax.models.kernels.linear import CHUNK
from substrax.models.kernels.reference import LINEAR_EPS


def elu_features(x):
  return jax.nn.elu(x) + 1.0


def _orthonormal_rows(g):
  """Gram-Schmidt (applied twice, for stability) on the rows of a square matrix.

  Used instead of jnp.linalg.qr: LAPACK custom calls on CPU can deadlock when XLA runs several of
  them concurrently (see docs/design-notes.md), and this runs inside the train step.
  """
  def body(i, q):
    v = g[i]
    for _ in range(2):
      v = v - q.T @ (q @ v)
    return q.at[i].set(v / jnp.linalg.norm(v))
  return jax.lax.fori_loop(0, g.shape[0], body, jnp.zeros_like(g))


def orthogonal_features(key, num_features, dim):
  """[num_features, dim] random projection: stacked orthogonal blocks whose rows are rescaled to
  chi(dim)-distributed norms, so each row is marginally N(0, I) but rows within a block are
  exactly orthogonal (the "OR" of FAVOR+)."""
  n_blocks = -(-num_features // dim)
  k_blocks, k_norms = jax.random.split(key)
  g = jax.random.normal(k_blocks, (n_blocks, dim, dim), jnp.float32)
  rows = jax.vmap(_orthonormal_rows)(g).reshape(n_blocks * dim, dim)[:num_features]
  norms = jnp.linalg.norm(jax.random.normal(k_norms, (num_features, dim), jnp.float32), axis=1)
  return rows * norms[:, None]


def performer_features(x, omega, *, is_query, causal, mask=None):
  """Positive random features phi(x) = exp(w.x' - |x'|^2 / 2 - c) / sqrt(m), x' = x / d^(1/4), so
  that E[phi(q).phi(k)] = exp(q.k / sqrt(d)) up to the constant factors exp(-c).

  Stabiliser c (stop-gradient): per query, the max over its features, which cancels in the
  normalised output. For keys it must be one constant shared by all keys: the max over the whole
  sequence (real tokens only) when not causal; none when causal, as that max would let future
  keys move the rounding of past outputs.
  """
  x = x.astype(jnp.float32) * x.shape[-1] ** -0.25
  proj = jnp.einsum("blhd,md->blhm", x, omega)
  logits = proj - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  if is_query:
    logits -= jax.lax.stop_gradient(jnp.max(proj, axis=-1, keepdims=True))
  elif not causal:
    real = proj if mask is None else jnp.where(mask[:, :, None, None], proj, -jnp.inf)
    logits -= jax.lax.stop_gradient(jnp.max(real, axis=(1, 3), keepdims=True))
  return jnp.exp(logits) / math.sqrt(omega.shape[0])


def cosformer_features(x, horizon=None):
  """[relu(x) cos(pi i / 2M), relu(x) sin(pi i / 2M)], i = 1..L: their dot products give
  relu(q_i).relu(k_j) cos(pi/2 (i - j)/M), the cosFormer re-weighting.

  M = horizon, the longest length the layer takes (default: this input's length, the paper's M).
  A fixed M makes outputs independent of how much padding follows the real tokens.
  """
  length = x.shape[1]
  horizon = horizon or length
  if length > horizon:
    raise ValueError(f"cosformer: length {length} exceeds the horizon M={horizon}")
  angle = (jnp.pi / 2) * jnp.arange(1, length + 1, dtype=jnp.float32) / horizon
  r = jax.nn.relu(x.astype(jnp.float32))
  return jnp.concatenate([r * jnp.cos(angle)[None, :, None, None],
                          r * jnp.sin(angle)[None, :, None, None]], axis=-1)


def chunked_linear_attention(q, k, v, *, causal, normalize=True, chunk=CHUNK):
  """sum_j (q_i.k_j) v_j [/ (sum_j q_i.k_j + eps)] in float32, j <= i when causal.

  Causal: inside each chunk the masked quadratic form; across chunks the exclusive prefix sum of
  the chunk states k^T v (so memory is O(L/chunk * d_k * d_v), never one state per token). A
  sequence that fits in one chunk is just the quadratic form.
  """
  q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
  if not causal:
    num = jnp.einsum("blhd,bhde->blhe", q, jnp.einsum("blhd,blhe->bhde", k, v))
    den = jnp.einsum("blhd,bhd->blh", q, k.sum(1))
  elif q.shape[1] <= chunk:  # one chunk: just the masked quadratic form
    a = jnp.tril(jnp.einsum("bihd,bjhd->bhij", q, k))
    num = jnp.einsum("bhij,bjhe->bihe", a, v)
    den = jnp.einsum("bhij->bih", a)
  else:
    b, length, h, _ = q.shape
    n = -(-length // chunk)
    pad = ((0, 0), (0, n * chunk - length), (0, 0), (0, 0))
    qc, kc, vc = (jnp.pad(t, pad).reshape(b, n, chunk, h, t.shape[-1]) for t in (q, k, v))
    a = jnp.einsum("bnihd,bnjhd->bnhij", qc, kc) * jnp.tril(jnp.ones((chunk, chunk), jnp.float32))
    states = jnp.einsum("bnjhd,bnjhe->bnhde", kc, vc)
    sums = kc.sum(2)                                                  # [b, n, h, d_k]
    num = (jnp.einsum("bnhij,bnjhe->bnihe", a, vc)
           + jnp.einsum("bnihd,bnhde->bnihe", qc, jnp.cumsum(states, axis=1) - states))
    den = (jnp.einsum("bnhij->bnih", a)
           + jnp.einsum("bnihd,bnhd->bnih", qc, jnp.cumsum(sums, axis=1) - sums))
    num = num.reshape(b, n * chunk, h, -1)[:, :length]
    den = den.reshape(b, n * chunk, h)[:, :length]
  return num / (den[..., None] + LINEAR_EPS) if normalize else num


def linear_attention(q, k, v, *, causal, mask=None, normalize=True, impl="auto"):
  """Attention through feature-mapped q, k: 'xla' the chunked einsum form, 'pallas' the chunked
  kernel (normalised only); 'auto' is xla on CPU and the kernel on GPU and TPU."""
  if mask is not None:  # a padded key contributes nothing to any state
    k = k * mask[:, :, None, None].astype(k.dtype)
  if impl == "auto":
    impl = "xla" if (jax.default_backend() == "cpu" or not normalize) else "pallas"
  if impl == "xla":
    return chunked_linear_attention(q, k, v, causal=causal, normalize=normalize).astype(v.dtype)
  if impl == "pallas":
    if not normalize:
      raise ValueError("linear attention: the Pallas kernel computes the normalised form only")
    return kernels.linear_attention(q.astype(v.dtype), k.astype(v.dtype), v, causal=causal)
  raise ValueError(f"linear attention: unknown impl {impl!r}")
