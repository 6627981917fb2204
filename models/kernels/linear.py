"""Chunked linear attention in Pallas: a forward kernel and two backward kernels in a custom VJP.

  out_i = sum_j (q_i . k_j) v_j / (sum_j q_i . k_j + LINEAR_EPS),  j <= i when causal,

on already feature-mapped (non-negative) q and k. One program per (batch, head) walks the
sequence in chunks of C tokens. Causal: inside a chunk the work is quadratic under a
lower-triangular mask; between chunks it carries the state S = sum_j k_j v_j^T [d_k, d_v] and
the normaliser z = sum_j k_j [d_k]. Non-causal: a first loop forms the totals S and z, and the
chunk loop then reads them without the quadratic term. States are always fp32.

Backward, with r_i = 1 / (sum_j q_i . k_j + eps) saved by the forward and g the output cotangent,
the quotient rule gives the gradient of a_ij = q_i . k_j as gn_i . v_j + gd_i, where gn_i = g_i r_i
and gd_i = -(g_i . out_i) r_i: the denominator acts as an extra value channel of ones. Then
  dq: a forward chunk loop carrying (S, z), like the forward pass;
  dk, dv: a reverse chunk loop carrying U = sum_i q_i gn_i^T and w = sum_i gd_i q_i.

The wrapper transposes to [batch, heads, length, dim] so every block's last two dims are the
full (length, dim) of one head, which Pallas TPU accepts as is; it pads the length to a chunk
multiple and the feature dims to powers of two >= 16 (Triton's dot needs both), so the same
kernels run in interpret mode, under Triton on GPU and under Mosaic on TPU. On TPU a head's
whole sequence must fit in VMEM.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from substrax.models.kernels.backend import (MIN_DIM, compiler_params, next_pow2,
                                              resolve_interpret)
from substrax.models.kernels.reference import LINEAR_EPS

# Tokens per chunk, here and in the XLA chunked forms (models/attention): quadratic inside a
# chunk, a carried state between.
CHUNK = 64


def _dot(a, b, *, ta=False, tb=False):
  """a @ b (a^T if ta, b^T if tb), accumulated in fp32; HIGHEST keeps fp32 from becoming TF32."""
  dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, precision=jax.lax.Precision.HIGHEST,
                             preferred_element_type=jnp.float32)


def _rows(c, chunk):
  """The rows of chunk c."""
  return pl.ds(pl.multiple_of(c * chunk, chunk), chunk)


def _load(ref, c, chunk):
  return ref[_rows(c, chunk), :].astype(jnp.float32)


def _tril(x):
  """Zeroes the strictly upper triangle of a square chunk (key after query)."""
  row = jax.lax.broadcasted_iota(jnp.int32, x.shape, 0)
  col = jax.lax.broadcasted_iota(jnp.int32, x.shape, 1)
  return jnp.where(row >= col, x, 0.0)


def _chunk_sum(n, terms, init):
  """Sums the tuple terms(c) over all n chunks (the non-causal totals)."""
  def body(c, acc):
    return tuple(a + t for a, t in zip(acc, terms(c)))
  return jax.lax.fori_loop(0, n, body, init)


def _kv_state(k_ref, v_ref, chunk):
  """The terms of S = sum k v^T and z = sum k for one chunk."""
  def terms(c):
    k, v = _load(k_ref, c, chunk), _load(v_ref, c, chunk)
    return _dot(k, v, ta=True), jnp.sum(k, axis=0, keepdims=True)
  return terms


def _zeros_state(k_ref, v_ref):
  """A zero [d_k, d_v] state and [1, d_k] normaliser."""
  d_k, d_v = k_ref.shape[1], v_ref.shape[1]
  return jnp.zeros((d_k, d_v), jnp.float32), jnp.zeros((1, d_k), jnp.float32)


def _cotangent(g_ref, o_ref, r_ref, c, chunk):
  """gn = g r [C, d_v] and gd = -(g . out) r [C, 1]: the gradient w.r.t. the numerator and the
  denominator of each row."""
  g, o, r = _load(g_ref, c, chunk), _load(o_ref, c, chunk), _load(r_ref, c, chunk)
  return g * r, -jnp.sum(g * o, axis=1, keepdims=True) * r


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, r_ref, *, chunk, causal):
  n = q_ref.shape[0] // chunk

  def body(c, state):
    s, z = state
    q = _load(q_ref, c, chunk)
    num = _dot(q, s)
    den = jnp.sum(q * z, axis=1, keepdims=True)
    if causal:
      k, v = _load(k_ref, c, chunk), _load(v_ref, c, chunk)
      a = _tril(_dot(q, k, tb=True))
      num += _dot(a, v)
      den += jnp.sum(a, axis=1, keepdims=True)
      state = (s + _dot(k, v, ta=True), z + jnp.sum(k, axis=0, keepdims=True))
    r = 1.0 / (den + LINEAR_EPS)
    o_ref[_rows(c, chunk), :] = (num * r).astype(o_ref.dtype)
    r_ref[_rows(c, chunk), :] = r
    return state

  init = _zeros_state(k_ref, v_ref)
  if not causal:
    init = _chunk_sum(n, _kv_state(k_ref, v_ref, chunk), init)
  jax.lax.fori_loop(0, n, body, init)


def _dq_kernel(q_ref, k_ref, v_ref, o_ref, r_ref, g_ref, dq_ref, *, chunk, causal):
  n = q_ref.shape[0] // chunk

  def body(c, state):
    s, z = state
    gn, gd = _cotangent(g_ref, o_ref, r_ref, c, chunk)
    dq = _dot(gn, s, tb=True) + gd * z
    if causal:
      k, v = _load(k_ref, c, chunk), _load(v_ref, c, chunk)
      da = _tril(_dot(gn, v, tb=True) + gd)
      dq += _dot(da, k)
      state = (s + _dot(k, v, ta=True), z + jnp.sum(k, axis=0, keepdims=True))
    dq_ref[_rows(c, chunk), :] = dq.astype(dq_ref.dtype)
    return state

  init = _zeros_state(k_ref, v_ref)
  if not causal:
    init = _chunk_sum(n, _kv_state(k_ref, v_ref, chunk), init)
  jax.lax.fori_loop(0, n, body, init)


def _dkv_kernel(q_ref, k_ref, v_ref, o_ref, r_ref, g_ref, dk_ref, dv_ref, *, chunk, causal):
  n = q_ref.shape[0] // chunk

  def qg_state(c):
    """The terms of U = sum q gn^T and w = sum gd q for one chunk."""
    q = _load(q_ref, c, chunk)
    gn, gd = _cotangent(g_ref, o_ref, r_ref, c, chunk)
    return _dot(q, gn, ta=True), jnp.sum(gd * q, axis=0, keepdims=True)

  def body(i, state):
    c = n - 1 - i  # reverse: the state holds the queries after this chunk
    u, w = state
    k, v = _load(k_ref, c, chunk), _load(v_ref, c, chunk)
    dk_c = _dot(v, u, tb=True) + w
    dv_c = _dot(k, u)
    if causal:
      q = _load(q_ref, c, chunk)
      gn, gd = _cotangent(g_ref, o_ref, r_ref, c, chunk)
      a = _tril(_dot(q, k, tb=True))
      da = _tril(_dot(gn, v, tb=True) + gd)
      dk_c += _dot(da, q, ta=True)
      dv_c += _dot(a, gn, ta=True)
      state = (u + _dot(q, gn, ta=True), w + jnp.sum(gd * q, axis=0, keepdims=True))
    dk_ref[_rows(c, chunk), :] = dk_c.astype(dk_ref.dtype)
    dv_ref[_rows(c, chunk), :] = dv_c.astype(dv_ref.dtype)
    return state

  init = _zeros_state(k_ref, v_ref)
  if not causal:
    init = _chunk_sum(n, qg_state, init)
  jax.lax.fori_loop(0, n, body, init)


def _call(kernel, inputs, out_shapes, interpret):
  """One program per (batch, head); each block is a head's whole [length, dim] slice."""
  def spec(shape):
    return pl.BlockSpec((None, None) + tuple(shape[2:]), lambda b, h: (b, h, 0, 0))
  batch, heads = inputs[0].shape[:2]
  return pl.pallas_call(
      kernel, grid=(batch, heads),
      in_specs=[spec(x.shape) for x in inputs],
      out_specs=[spec(s.shape) for s in out_shapes],
      out_shape=out_shapes, compiler_params=compiler_params(interpret, grid_rank=2),
      interpret=interpret)(*inputs)


def _forward(q, k, v, causal, chunk, interpret):
  b, h, length = q.shape[:3]
  kernel = functools.partial(_fwd_kernel, chunk=chunk, causal=causal)
  return _call(kernel, (q, k, v),
               (jax.ShapeDtypeStruct(v.shape, q.dtype),
                jax.ShapeDtypeStruct((b, h, length, 1), jnp.float32)), interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _linear(q, k, v, causal, chunk, interpret):
  return _forward(q, k, v, causal, chunk, interpret)[0]


def _linear_fwd(q, k, v, causal, chunk, interpret):
  o, r = _forward(q, k, v, causal, chunk, interpret)
  return o, (q, k, v, o, r)


def _linear_bwd(causal, chunk, interpret, residuals, g):
  q, k, v, o, r = residuals
  inputs = (q, k, v, o, r, g)
  dq_kernel = functools.partial(_dq_kernel, chunk=chunk, causal=causal)
  dkv_kernel = functools.partial(_dkv_kernel, chunk=chunk, causal=causal)
  (dq,) = _call(dq_kernel, inputs, (jax.ShapeDtypeStruct(q.shape, q.dtype),), interpret)
  dk, dv = _call(dkv_kernel, inputs, (jax.ShapeDtypeStruct(k.shape, k.dtype),
                                      jax.ShapeDtypeStruct(v.shape, v.dtype)), interpret)
  return dq, dk, dv


_linear.defvjp(_linear_fwd, _linear_bwd)


def default_chunk_size(length):
  """64 tokens, or the sequence rounded up to a power of two (at least 16) when it is shorter."""
  return min(CHUNK, max(MIN_DIM, next_pow2(length)))


def linear_attention(q, k, v, *, causal=True, chunk_size=None, interpret=None):
  """Normalised linear attention, equal to `reference.linear_attention`, differentiable.

  q, k: [batch, length, heads, d_k], already feature-mapped (non-negative); v: [batch, length,
  heads, d_v]. Returns [batch, length, heads, d_v] in q.dtype. chunk_size: a power of two
  >= 16 (default `default_chunk_size(length)`). interpret: None runs Pallas interpret mode on
  CPU and compiles on GPU/TPU; True, False or an interpret-params object (e.g.
  `pltpu.InterpretParams()`) goes to pallas_call as is.
  """
  if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
    raise ValueError("linear_attention expects q, k [batch, length, heads, d_k] and v [batch, "
                     f"length, heads, d_v]; got q {q.shape}, k {k.shape}, v {v.shape}.")
  length = q.shape[1]
  chunk = default_chunk_size(length) if chunk_size is None else chunk_size
  if not isinstance(chunk, int) or chunk < MIN_DIM or chunk & (chunk - 1):
    raise ValueError(f"chunk_size must be a power of two >= {MIN_DIM} (GPU dot shapes); "
                     f"got {chunk_size!r}.")
  interpret = resolve_interpret(interpret)

  # [B, L, H, D] -> [B, H, L', D'] with zero padding: padded keys and values add nothing,
  # padded queries give 0 / eps = 0, and the slice below drops them (and their gradients).
  padded_len = pl.cdiv(length, chunk) * chunk
  def prep(x):
    dim = x.shape[-1]
    pads = ((0, 0), (0, 0), (0, padded_len - length), (0, max(MIN_DIM, next_pow2(dim)) - dim))
    return jnp.pad(jnp.swapaxes(x, 1, 2), pads)
  out = _linear(prep(q), prep(k), prep(v), causal, chunk, interpret)
  return jnp.swapaxes(out[:, :, :length, :v.shape[-1]], 1, 2)
