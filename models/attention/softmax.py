"""Softmax attention and true sliding-window (local) attention.

Tensors are [batch, length, heads, head_dim]. `mask` is [batch, length] bool, True for real tokens;
`segment_ids` is [batch, length] int >= 0. Padded keys are never attended to.
"""
import jax
import jax.numpy as jnp

from substrax.models import kernels, positions
from substrax.models.kernels.reference import masked_softmax


def allowed_keys(length, *, causal, mask=None, segment_ids=None, window=None):
  """[batch or 1, 1, length, length] bool: which keys each query may see."""
  i = jnp.arange(length)[:, None]
  j = jnp.arange(length)[None, :]
  ok = jnp.ones((length, length), bool)
  if causal:
    ok &= j <= i
  if window is not None:  # keys within distance < window, on the allowed side(s)
    ok &= jnp.abs(i - j) < window
  ok = ok[None, None]
  if mask is not None:
    ok = ok & mask[:, None, None, :]
  if segment_ids is not None:
    ok = ok & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  return ok


def dense_softmax(q, k, v, allowed, bias=None, weights=None):
  """(softmax(q k^T / sqrt(d) + bias) * weights) v over the allowed keys; the softmax runs in
  float32. bias and weights broadcast against the [batch, heads, queries, keys] scores."""
  s = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1] ** -0.5), k)
  if bias is not None:
    s = s + bias
  p = masked_softmax(s, allowed)
  if weights is not None:
    p = p * weights
  return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v)


def _cudnn_supports(q, *, mask, segment_ids) -> bool:
  """What jax.nn.dot_product_attention(implementation='cudnn') accepts, per jax's own checks."""
  d = q.shape[-1]
  return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
          and d % 8 == 0 and d <= 128 and mask is None and segment_ids is None)


def softmax_attention(q, k, v, *, causal, mask=None, segment_ids=None, bias=None, weights=None,
                      alibi_slopes=None, impl="auto"):
  """Scaled dot-product attention.

  Positional terms (models/positions.py): `bias` [heads, length, length] added to the scores,
  `weights` [heads, length, length] multiplying the softmax output (URPE), both dense, so xla
  only; `alibi_slopes` [heads], which the flash kernel turns into its bias block by block.

  impl: 'xla' dense einsums; 'cudnn' jax.nn.dot_product_attention's cuDNN kernel; 'pallas' the
  flash kernel; 'auto' is xla on CPU or with a dense bias or weights, cuDNN on GPU where it
  supports the call and the flash kernel otherwise, and the flash kernel on TPU.
  """
  if impl == "auto":
    backend = jax.default_backend()
    if backend == "cpu" or bias is not None or weights is not None:
      impl = "xla"
    elif (backend == "gpu" and alibi_slopes is None
          and _cudnn_supports(q, mask=mask, segment_ids=segment_ids)):
      impl = "cudnn"
    else:
      impl = "pallas"
  if impl != "xla" and (bias is not None or weights is not None):
    raise ValueError(f"softmax attention: a dense positional bias needs impl 'xla', not {impl!r}")
  if impl == "xla":
    if alibi_slopes is not None:
      bias = positions.alibi_bias(alibi_slopes, q.shape[1])
    return dense_softmax(q, k, v, allowed_keys(q.shape[1], causal=causal, mask=mask,
                                               segment_ids=segment_ids), bias, weights)
  if impl == "cudnn":
    if segment_ids is not None or alibi_slopes is not None:
      raise ValueError("softmax attention: impl='cudnn' takes neither segment_ids nor ALiBi; "
                       "use 'pallas'")
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation="cudnn",
        mask=None if mask is None else mask[:, None, None, :])
  if impl == "pallas":
    if mask is not None:  # padded tokens get their own segment, so real queries never see them
      base = jnp.zeros(mask.shape, jnp.int32) if segment_ids is None else segment_ids
      segment_ids = jnp.where(mask, base, -1)
    return kernels.flash_attention(q, k, v, causal=causal, segment_ids=segment_ids,
                                   alibi_slopes=alibi_slopes)
  raise ValueError(f"softmax attention: unknown impl {impl!r}")


def _blocked_local(q, k, v, *, window, causal, mask):
  """Each block of `window` queries attends to its own key block and the neighbouring ones, with
  the exact band mask inside: O(L * window * d) time and memory instead of O(L^2)."""
  b, length, h, d = q.shape
  w = min(window, length)
  n = -(-length // w)
  pad = n * w - length
  valid = jnp.ones((b, length), bool) if mask is None else mask
  if pad:
    q, k, v = (jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in (q, k, v))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))
  blocks = lambda t: t.reshape(b, n, w, *t.shape[2:])
  shift = lambda t, s: jnp.roll(t, s, axis=1)  # neighbour block; wrap-around is masked below
  offsets = (1, 0) if causal else (1, 0, -1)
  kb, vb, mb = blocks(k), blocks(v), blocks(valid)
  kc = jnp.concatenate([shift(kb, o) for o in offsets], axis=2)       # [b, n, |o|*w, h, d]
  vc = jnp.concatenate([shift(vb, o) for o in offsets], axis=2)
  mc = jnp.concatenate([shift(mb, o) for o in offsets], axis=2)       # [b, n, |o|*w]
  qpos = jnp.arange(n)[:, None] * w + jnp.arange(w)[None, :]          # [n, w]
  kpos = jnp.concatenate([qpos - o * w for o in offsets], axis=1)     # [n, |o|*w]
  rel = qpos[:, :, None] - kpos[:, None, :]                           # [n, w, |o|*w]
  ok = (jnp.abs(rel) < window) & (kpos[:, None, :] >= 0) & (kpos[:, None, :] < n * w)
  if causal:
    ok &= rel >= 0
  ok = ok[None, :, None] & mc[:, :, None, None, :]                    # [b, n, 1, w, |o|*w]
  s = jnp.einsum("bnqhd,bnkhd->bnhqk", blocks(q) * d ** -0.5, kc)
  p = masked_softmax(s, ok).astype(v.dtype)
  out = jnp.einsum("bnhqk,bnkhd->bnqhd", p, vc).reshape(b, n * w, h, d)
  return out[:, :length]


def local_attention(q, k, v, *, window, causal, mask=None, impl="auto"):
  """Sliding-window softmax attention: query i sees keys j with |i - j| < window (and j <= i when
  causal). With window >= length it is exactly softmax attention.

  impl: 'xla' blocked einsums; 'cudnn' jax.nn.dot_product_attention with local_window_size (causal
  only, as cuDNN supports left windows only); 'auto' picks cuDNN on GPU where supported, else xla.
  """
  if impl == "auto":
    impl = ("cudnn" if causal and _cudnn_supports(q, mask=mask, segment_ids=None) else "xla")
  if impl == "xla":
    return _blocked_local(q, k, v, window=window, causal=causal, mask=mask)
  if impl == "cudnn":
    if not causal:
      raise ValueError("local attention: impl='cudnn' supports causal windows only")
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn", local_window_size=(window - 1, 0),
        mask=None if mask is None else mask[:, None, None, :])
  raise ValueError(f"local attention: unknown impl {impl!r}")
