"""Pallas flash (softmax) attention: online-softmax forward and FlashAttention-2 backward.

`flash_attention` takes [batch, length, heads, head_dim] like the reference and works inside on
[batch, heads, padded_length, padded_head_dim], so that one kernel source serves the HLO
interpreter (CPU), Triton (GPU) and Mosaic (TPU):

- forward, grid (batch, heads, query blocks): each program keeps a running max, running sum and
  fp32 accumulator over key blocks and writes the output block and its per-row logsumexp;
- backward, a `jax.custom_vjp` that recomputes the probabilities from the logsumexp:
  delta = rowsum(o * do) in jnp, one kernel for dk/dv (grid over key blocks, loop over query
  blocks) and one for dq (grid over query blocks, loop over key blocks).

Causal attention skips the blocks above the diagonal in all three kernels, and only the blocks
that straddle the diagonal, the key tail or a segment boundary evaluate the mask. ALiBi (Press et
al. 2022) adds -slope_h * |i - j| to every evaluated block, masked or not, from the block's
positions and the head's slope, so the bias is never stored as a [length, length] array.

Layout choices made for the compiled backends: lengths are padded to a block multiple and head
dims to a power of two (>= 16, the smallest Triton dot); every block's last two dims are either
full array dims or (block, 1) columns, and vectors that a loop walks along (logsumexp, delta and
segment ids on the looped side) are stored as rows [n_blocks, 1, block] indexed on the leading
axis, which is what Mosaic TPU accepts for dynamic indexing. Keys and values of one (batch, head)
are whole blocks, so on TPU they must fit in VMEM.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from substrax.models.kernels.backend import (MIN_DIM, compiler_params, next_pow2,
                                              resolve_interpret)

# Finite stand-in for -inf: exp(MASK - m) is exactly 0 for any real row max m, and a row that
# has seen only masked keys yet stays finite (its sum is a count, not 0), so nothing turns NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
MAX_HEAD_DIM = 256


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels specialise on; hashable, so it can be a custom_vjp nondiff arg."""
  causal: bool
  sm_scale: float
  block_q: int
  block_k: int
  length: int  # real (unpadded) sequence length
  interpret: Any


def _default_block(length, head_dim_padded):
  # 128 fills a tensor-core tile; 256-wide heads halve it to bound registers / VMEM; short
  # sequences use the smallest power of two that covers them.
  cap = 64 if head_dim_padded >= 256 else 128
  return min(cap, max(MIN_DIM, next_pow2(length)))


def _dot(a, b):
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32,
                             precision=jax.lax.Precision.HIGHEST)


def _dot_nt(a, b):
  """a @ b.T without materialising the transpose."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32,
                             precision=jax.lax.Precision.HIGHEST)


def _mask(st, s, q_start, k_start, q_seg, k_seg, q_axis=0):
  """Scores block s with MASK_VALUE wherever the key is padding, after the query (causal) or
  in another segment. s is [queries, keys] (q_axis=0) or its transpose (q_axis=1); the
  segment ids broadcast against it (None: no segments)."""
  q_pos = q_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, q_axis)
  k_pos = k_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1 - q_axis)
  ok = k_pos < st.length
  if st.causal:
    ok = ok & (q_pos >= k_pos)
  if q_seg is not None:
    ok = ok & (q_seg == k_seg)
  return jnp.where(ok, s, MASK_VALUE)


def _alibi(s, slope, q_start, k_start, q_axis=0):
  """Scores block s plus the ALiBi bias -slope * |q_pos - k_pos| (layouts as in `_mask`); slope
  is the head's (1, 1) block. A bias, not a mask: every evaluated block gets it."""
  q_pos = q_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, q_axis)
  k_pos = k_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1 - q_axis)
  return s - slope * jnp.abs((q_pos - k_pos).astype(jnp.float32))  # exact: |i - j| < 2^24


def _key_loop_bounds(st, i, has_segments):
  """For query block i: key blocks [0, mid) need no mask, [mid, hi) need one, the rest are
  skipped (beyond the diagonal when causal, or wholly padding)."""
  bq, bk, n = st.block_q, st.block_k, st.length
  hi = pl.cdiv(n, bk)
  mid = n // bk
  if st.causal:
    hi = jnp.minimum(pl.cdiv((i + 1) * bq, bk), hi)
    mid = jnp.minimum(jax.lax.div(i * bq, bk), mid)
  if has_segments:
    mid = 0
  return mid, hi


def _query_loop_bounds(st, j, has_segments):
  """For key block j: query blocks [lo, mid) need a mask, [mid, hi) need none; those before lo
  (above the diagonal when causal) and wholly padded ones are skipped."""
  bq, bk, n = st.block_q, st.block_k, st.length
  hi = pl.cdiv(n, bq)
  lo = jax.lax.div(j * bk, bq) if st.causal else 0
  if has_segments:
    return lo, hi, hi
  first_full = pl.cdiv((j + 1) * bk, bq) if st.causal else lo
  # A key block holding padded keys needs the mask for every query block.
  first_full = jnp.where((j + 1) * bk > n, hi, first_full)
  mid = jnp.clip(first_full, lo, hi)
  return lo, mid, hi


def _split(refs, n_main, has_alibi, has_segments):
  """(main input refs, slope ref, blocked-side seg ref, looped-side seg ref, output refs); an
  absent optional input is None."""
  main, rest = refs[:n_main], list(refs[n_main:])
  slope_ref = rest.pop(0) if has_alibi else None
  seg_refs = (rest.pop(0), rest.pop(0)) if has_segments else (None, None)
  return main, slope_ref, *seg_refs, rest


def _fwd_kernel(*refs, st, has_alibi, has_segments):
  (q_ref, k_ref, v_ref), slope_ref, qseg_ref, kseg_ref, (o_ref, lse_ref) = _split(
      refs, 3, has_alibi, has_segments)
  bq, bk = st.block_q, st.block_k
  i = pl.program_id(2)
  q = q_ref[...]
  slope = None if slope_ref is None else slope_ref[...]  # (1, 1)
  q_seg = None if qseg_ref is None else qseg_ref[...]  # (bq, 1)

  def body(j, carry, masked):
    m, l, acc = carry
    start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s = _dot_nt(q, k) * st.sm_scale
    if slope is not None:
      s = _alibi(s, slope, i * bq, start)
    if masked:
      s = _mask(st, s, i * bq, start, q_seg, None if kseg_ref is None else kseg_ref[j])
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    alpha = jnp.exp(m - m_new)
    l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
    acc = alpha * acc + _dot(p.astype(v.dtype), v)
    return m_new, l, acc

  mid, hi = _key_loop_bounds(st, i, has_segments)
  carry = (jnp.full((bq, 1), MASK_VALUE, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
           jnp.zeros(q.shape, jnp.float32))
  carry = jax.lax.fori_loop(0, mid, functools.partial(body, masked=False), carry)
  m, l, acc = jax.lax.fori_loop(mid, hi, functools.partial(body, masked=True), carry)
  # l >= 1: the row max itself contributes exp(0).
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _dq_kernel(*refs, st, has_alibi, has_segments):
  (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), slope_ref, qseg_ref, kseg_ref, (dq_ref,) = (
      _split(refs, 6, has_alibi, has_segments))
  bq, bk = st.block_q, st.block_k
  i = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]
  slope = None if slope_ref is None else slope_ref[...]  # (1, 1)
  lse, delta = lse_ref[...], delta_ref[...]  # (bq, 1)
  q_seg = None if qseg_ref is None else qseg_ref[...]

  def body(j, dq, masked):
    start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s = _dot_nt(q, k) * st.sm_scale
    if slope is not None:
      s = _alibi(s, slope, i * bq, start)
    if masked:
      s = _mask(st, s, i * bq, start, q_seg, None if kseg_ref is None else kseg_ref[j])
    p = jnp.exp(s - lse)
    ds = p * (_dot_nt(do, v) - delta)
    return dq + _dot(ds.astype(k.dtype), k)

  mid, hi = _key_loop_bounds(st, i, has_segments)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = jax.lax.fori_loop(0, mid, functools.partial(body, masked=False), dq)
  dq = jax.lax.fori_loop(mid, hi, functools.partial(body, masked=True), dq)
  dq_ref[...] = (dq * st.sm_scale).astype(dq_ref.dtype)


def _dkdv_kernel(*refs, st, has_alibi, has_segments):
  # Works on the transposed scores sT = k q^T [bk, bq], so that every dot is a @ b or a @ b.T
  # and the query-side vectors are rows.
  (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), slope_ref, kseg_ref, qseg_ref, (
      dk_ref, dv_ref) = _split(refs, 6, has_alibi, has_segments)
  bq, bk = st.block_q, st.block_k
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  slope = None if slope_ref is None else slope_ref[...]  # (1, 1)
  k_seg = None if kseg_ref is None else kseg_ref[...]  # (bk, 1)

  def body(i, carry, masked):
    dk, dv = carry
    start = pl.multiple_of(i * bq, bq)
    q = q_ref[pl.ds(start, bq), :]
    do = do_ref[pl.ds(start, bq), :]
    s_t = _dot_nt(k, q) * st.sm_scale
    if slope is not None:
      s_t = _alibi(s_t, slope, start, j * bk, q_axis=1)
    if masked:
      s_t = _mask(st, s_t, start, j * bk, None if qseg_ref is None else qseg_ref[i], k_seg,
                  q_axis=1)
    p_t = jnp.exp(s_t - lse_ref[i])
    dv = dv + _dot(p_t.astype(do.dtype), do)
    ds_t = p_t * (_dot_nt(v, do) - delta_ref[i])
    dk = dk + _dot(ds_t.astype(q.dtype), q)
    return dk, dv

  lo, mid, hi = _query_loop_bounds(st, j, has_segments)
  carry = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  carry = jax.lax.fori_loop(lo, mid, functools.partial(body, masked=True), carry)
  dk, dv = jax.lax.fori_loop(mid, hi, functools.partial(body, masked=False), carry)
  dk_ref[...] = (dk * st.sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# BlockSpec helpers; arrays are [B, H, Lp, Dp], vectors [B, H, Lp, 1] (columns) or
# [B, H, n, 1, block] (rows), segment ids [B, Lp, 1] or [B, n, 1, block], ALiBi slopes [H, 1, 1].
def _blocked(block, dp):
  return pl.BlockSpec((None, None, block, dp), lambda b, h, x: (b, h, x, 0))


def _whole(lp, dp):
  return pl.BlockSpec((None, None, lp, dp), lambda b, h, x: (b, h, 0, 0))


def _rows(x, block):
  """[..., Lp] -> [..., Lp // block, 1, block]."""
  return x.reshape(*x.shape[:-1], x.shape[-1] // block, 1, block)


def _segment_specs(seg, blocked_size, looped_size):
  """Inputs and specs for the blocked side (column) and the looped side (rows)."""
  b, lp = seg.shape
  n = lp // looped_size
  return ([seg[..., None], _rows(seg, looped_size)],
          [pl.BlockSpec((None, blocked_size, 1), lambda b_, h, x: (b_, x, 0)),
           pl.BlockSpec((None, n, 1, looped_size), lambda b_, h, x: (b_, 0, 0, 0))])


def _call(kernel, st, grid, inputs, in_specs, out_specs, out_shape, slopes, seg, blocked,
          looped):
  has_alibi, has_segments = slopes is not None, seg is not None
  if has_alibi:
    # An input, not a closed-over constant: the slopes may be traced. Each program reads its
    # head's (1, 1) block, whose last two dims are full dims, as Mosaic and Triton require.
    inputs = [*inputs, slopes]
    in_specs = [*in_specs, pl.BlockSpec((None, 1, 1), lambda b, h, x: (h, 0, 0))]
  if has_segments:
    seg_inputs, seg_specs = _segment_specs(seg, blocked, looped)
    inputs, in_specs = [*inputs, *seg_inputs], [*in_specs, *seg_specs]
  return pl.pallas_call(
      functools.partial(kernel, st=st, has_alibi=has_alibi, has_segments=has_segments), grid=grid,
      in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, interpret=st.interpret,
      compiler_params=compiler_params(st.interpret, grid_rank=3,
                                      num_warps=4 if inputs[0].shape[-1] <= 64 else 8))(*inputs)


def _forward(st, q, k, v, slopes, seg):
  b, h, lp, dp = q.shape
  bq = st.block_q
  return _call(
      _fwd_kernel, st, (b, h, lp // bq), [q, k, v],
      [_blocked(bq, dp), _whole(lp, dp), _whole(lp, dp)],
      [_blocked(bq, dp), _blocked(bq, 1)],
      [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lp, 1), jnp.float32)],
      slopes, seg, bq, st.block_k)


def _backward(st, q, k, v, slopes, seg, o, lse, do):
  b, h, lp, dp = q.shape
  bq, bk = st.block_q, st.block_k
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
  dq = _call(
      _dq_kernel, st, (b, h, lp // bq), [q, k, v, do, lse, delta],
      [_blocked(bq, dp), _whole(lp, dp), _whole(lp, dp), _blocked(bq, dp), _blocked(bq, 1),
       _blocked(bq, 1)],
      _blocked(bq, dp), jax.ShapeDtypeStruct(q.shape, q.dtype), slopes, seg, bq, bk)
  nq = lp // bq
  rows = pl.BlockSpec((None, None, nq, 1, bq), lambda b_, h_, x: (b_, h_, 0, 0, 0))
  dk, dv = _call(
      _dkdv_kernel, st, (b, h, lp // bk),
      [q, k, v, do, _rows(lse[..., 0], bq), _rows(delta[..., 0], bq)],
      [_whole(lp, dp), _blocked(bk, dp), _blocked(bk, dp), _whole(lp, dp), rows, rows],
      [_blocked(bk, dp), _blocked(bk, dp)],
      [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      slopes, seg, bk, bq)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, slopes, seg):
  return _forward(st, q, k, v, slopes, seg)[0]


def _flash_fwd(st, q, k, v, slopes, seg):
  o, lse = _forward(st, q, k, v, slopes, seg)
  return o, (q, k, v, slopes, seg, o, lse)


def _flash_bwd(st, residuals, do):
  dq, dk, dv = _backward(st, *residuals, do)
  return dq, dk, dv, None, None  # the slopes (fixed hyperparameters) get a zero cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


def _check_block(name, value):
  if not isinstance(value, (int, np.integer)) or value < MIN_DIM or value & (value - 1):
    raise ValueError(f"flash_attention: {name} must be a power of two >= {MIN_DIM}, "
                     f"got {value!r}")
  return int(value)


def flash_attention(q, k, v, *, causal=False, sm_scale=None, segment_ids=None,
                    alibi_slopes=None, block_q=None, block_k=None, interpret=None):
  """softmax(q k^T * sm_scale) v over [batch, length, heads, head_dim], in q.dtype.

  sm_scale defaults to head_dim ** -0.5. segment_ids: optional int [batch, length]; a query
  attends only to keys with the same id. alibi_slopes: optional float [heads] (for instance
  `reference.alibi_slopes(heads)`); head h adds -alibi_slopes[h] * |i - j| to the score of query
  i and key j after the scaling (ALiBi). block_q / block_k: powers of two >= 16 (default: 128,
  64 for head dims above 128, less for short sequences). interpret: None (interpret mode on CPU,
  compiled elsewhere), True, False, or an interpret-params object such as
  `pltpu.InterpretParams()`, passed to pallas_call. Differentiable in q, k and v (the slopes get
  a zero gradient).
  """
  if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
    raise ValueError("flash_attention: q, k, v must share one shape [batch, length, heads, "
                     f"head_dim], got {q.shape}, {k.shape}, {v.shape}")
  if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
    raise ValueError("flash_attention: q, k, v must share one floating dtype, got "
                     f"{q.dtype}, {k.dtype}, {v.dtype}")
  batch, length, heads, head_dim = q.shape
  if head_dim > MAX_HEAD_DIM:
    raise ValueError(f"flash_attention: head_dim must be <= {MAX_HEAD_DIM}, got {head_dim}")
  if segment_ids is not None and (segment_ids.shape != (batch, length)
                                  or not jnp.issubdtype(segment_ids.dtype, jnp.integer)):
    raise ValueError(f"flash_attention: segment_ids must be int [batch, length] = "
                     f"{(batch, length)}, got {segment_ids.dtype}{list(segment_ids.shape)}")
  if alibi_slopes is not None:
    alibi_slopes = jnp.asarray(alibi_slopes)
    if alibi_slopes.shape != (heads,) or not jnp.issubdtype(alibi_slopes.dtype, jnp.floating):
      raise ValueError(f"flash_attention: alibi_slopes must be float [heads] = [{heads}], got "
                       f"{alibi_slopes.dtype}{list(alibi_slopes.shape)}")
  dp = max(MIN_DIM, next_pow2(head_dim))
  bq = _check_block("block_q", _default_block(length, dp) if block_q is None else block_q)
  bk = _check_block("block_k", _default_block(length, dp) if block_k is None else block_k)
  if q.size == 0:
    return jnp.zeros_like(q)
  st = _Static(causal=bool(causal),
               sm_scale=float(head_dim ** -0.5 if sm_scale is None else sm_scale),
               block_q=bq, block_k=bk, length=length,
               interpret=resolve_interpret(interpret))
  lp = -(-length // max(bq, bk)) * max(bq, bk)

  def prep(x):  # [B, L, H, D] -> [B, H, Lp, Dp], zero padded
    return jnp.pad(x.transpose(0, 2, 1, 3),
                   ((0, 0), (0, 0), (0, lp - length), (0, dp - head_dim)))

  seg = None
  if segment_ids is not None:
    # Padded positions are excluded by position, so their id does not matter.
    seg = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, lp - length)))
  slopes = None if alibi_slopes is None else alibi_slopes.astype(jnp.float32).reshape(heads, 1, 1)
  out = _flash(st, prep(q), prep(k), prep(v), slopes, seg)
  return out[:, :, :length, :head_dim].transpose(0, 2, 1, 3)
