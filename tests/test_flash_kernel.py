"""Pallas flash attention (models/kernels/flash.py) against the plain-jnp reference.

On CPU every kernel runs in interpret mode; on a GPU the same tests run the compiled (Triton)
kernels, and `test_compiled_gpu_*` adds larger shapes. Accuracy is max|ours - ref| / max|ref| for
the output and for dq, dk, dv (the vjp of a random linear functional of the output).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.models.kernels import flash, reference

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled GPU kernels only")


def rel_err(ours, ref):
  scale = jnp.max(jnp.abs(ref))
  diff = jnp.max(jnp.abs(ours.astype(jnp.float32) - ref.astype(jnp.float32)))
  return float(diff / jnp.where(scale > 0, scale, 1.0))  # exact-zero refs (L=1 dq, dk): absolute


def inputs(length, head_dim, dtype=jnp.float32, batch=1, heads=2, seed=0):
  q, k, v, w = (jax.random.normal(key, (batch, length, heads, head_dim))
                for key in jax.random.split(jax.random.key(seed), 4))
  return [x.astype(dtype) for x in (q, k, v, w)]


def segments(length, batch=1, pad=7):
  """Three segments of uneven length, then a padded tail that gets id -1 (as the layer does)."""
  pos = np.arange(length)
  ids = np.where(pos < length // 4, 0, np.where(pos < (2 * length) // 3, 1, 2))
  ids = np.where(pos >= length - pad, -1, ids)
  return jnp.asarray(np.broadcast_to(ids, (batch, length)), jnp.int32)


def value_and_grads(fn, q, k, v, w, **kw):
  out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kw), q, k, v)
  return (out, *vjp(w))


@functools.partial(jax.jit, static_argnames="static")
def _both(q, k, v, w, segment_ids, alibi_slopes, static):
  causal, sm_scale, block_q, block_k = static
  kw = dict(causal=causal, sm_scale=sm_scale, segment_ids=segment_ids, alibi_slopes=alibi_slopes)
  ours = value_and_grads(flash.flash_attention, q, k, v, w, block_q=block_q, block_k=block_k,
                         **kw)
  # bf16: the reference runs in fp32 on the same (already bf16-rounded) numbers.
  ref = value_and_grads(reference.flash_attention, *(x.astype(jnp.float32) for x in (q, k, v, w)),
                        **kw)
  return ours, ref


def check(length, head_dim, causal, dtype=jnp.float32, *, heads=2, segment_ids=None,
          sm_scale=None, alibi_slopes=None, block_q=None, block_k=None):
  q, k, v, w = inputs(length, head_dim, dtype, heads=heads)
  with jax.default_matmul_precision("highest"):  # no TF32 in the reference on GPU
    ours, ref = _both(q, k, v, w, segment_ids, alibi_slopes,
                      static=(causal, sm_scale, block_q, block_k))
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  errs = {name: rel_err(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref)}
  for name, a in zip(("out", "dq", "dk", "dv"), ours):
    assert a.dtype == dtype and a.shape == q.shape, name
    assert bool(jnp.isfinite(a.astype(jnp.float32)).all()), f"{name} has non-finite values"
  assert max(errs.values()) < tol, errs
  return errs


# Every length with both causal values, every head dim with both causal values (the full
# product costs several minutes of compilation on 2 cores).
@pytest.mark.parametrize("length,head_dim,causal", [
    (1, 32, False), (1, 64, True),
    (17, 32, True), (17, 128, False),
    (128, 64, False), (128, 128, True),
    (200, 32, False), (200, 64, True),
    (1000, 128, True), (1000, 64, False),
])
def test_fp32_matches_reference(length, head_dim, causal):
  check(length, head_dim, causal)


@pytest.mark.parametrize("length,head_dim,causal", [
    (17, 64, True), (200, 128, False), (1000, 32, True),
])
def test_bf16_matches_reference(length, head_dim, causal):
  check(length, head_dim, causal, jnp.bfloat16)


@pytest.mark.parametrize("causal", [False, True])
def test_segment_ids_with_padded_tail(causal):
  check(200, 64, causal, segment_ids=segments(200))


def test_segment_ids_bf16():
  check(130, 32, True, jnp.bfloat16, segment_ids=segments(130, pad=30))


@pytest.mark.parametrize("head_dim", [256, 48])
def test_large_and_odd_head_dims(head_dim):
  check(100, head_dim, True, sm_scale=0.3)


@pytest.mark.parametrize("block_q,block_k", [(16, 64), (64, 16)])
def test_unequal_blocks(block_q, block_k):
  # Lengths pad to a multiple of the larger block, so whole padded blocks appear on one side.
  check(90, 32, True, segment_ids=segments(90), block_q=block_q, block_k=block_k)
  check(90, 32, False, block_q=block_q, block_k=block_k)


def test_alibi_slopes():
  assert reference.alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
  # 6 heads: the 4 slopes of 4 heads, then the 1st and 3rd of the 8 slopes of 8 heads.
  assert reference.alibi_slopes(6).tolist() == [2.0 ** -i for i in (2, 4, 6, 8, 1, 3)]

  # The paper's own code (github.com/ofirpress/attention_with_linear_biases), transcribed.
  def paper(n):
    def power_of_2(n):
      start = 2 ** (-2 ** -(math.log2(n) - 3))
      return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
      return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper(2 * closest)[0::2][:n - closest]

  for heads in range(1, 41):
    np.testing.assert_allclose(reference.alibi_slopes(heads), paper(heads), rtol=1e-6)
  with pytest.raises(ValueError, match="num_heads"):
    reference.alibi_slopes(0)


# ALiBi with 4 heads, slopes 1/4 ... 1/256: at length 1000 the steepest head effectively sees a
# few dozen keys and the flattest most of them. Default blocks run only the masked loops at 17
# (one block) and causal 128, only the unmasked ones at non-causal 128, both at 1000; unequal
# blocks put the query and key block starts at different offsets.
@pytest.mark.parametrize("length,causal,block_q,block_k", [
    (17, False, None, None), (17, True, None, None),
    (128, False, None, None), (128, True, None, None),
    (1000, False, None, None), (1000, True, None, None),
    (200, True, 16, 64), (200, False, 64, 16),
])
def test_alibi_matches_reference(length, causal, block_q, block_k):
  check(length, 32, causal, heads=4, alibi_slopes=reference.alibi_slopes(4), block_q=block_q,
        block_k=block_k)


def test_alibi_with_segment_ids():
  check(200, 32, False, heads=4, segment_ids=segments(200), alibi_slopes=reference.alibi_slopes(4),
        block_q=32, block_k=64)


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_zero_slopes_is_exactly_no_alibi(causal):
  # Bit for bit only with a power-of-two sm_scale: otherwise XLA CPU contracts s * sm_scale - m
  # into one FMA (one rounding) when no bias sits between them, and the two differ by an ulp.
  q, k, v, w = inputs(100, 32)
  kw = dict(causal=causal, sm_scale=0.25, block_q=32, block_k=32)  # both loops, all kernels
  plain = jax.jit(lambda *a: value_and_grads(flash.flash_attention, *a, **kw))(q, k, v, w)
  zero = jax.jit(lambda *a: value_and_grads(flash.flash_attention, *a, alibi_slopes=jnp.zeros(2),
                                            **kw))(q, k, v, w)
  for a, b in zip(plain, zero):
    assert bool(jnp.array_equal(a, b))


def test_alibi_steep_slopes_attend_to_self():
  # Slopes far above the score range leave each query only its own key, so out = v: pins the
  # sign of the bias and its centring on the diagonal (in every block) without the reference.
  q, k, v, _ = inputs(40, 32)
  for causal in (False, True):
    for fn in (functools.partial(flash.flash_attention, block_q=16, block_k=16),
               reference.flash_attention):
      out = jax.jit(functools.partial(fn, causal=causal))(q, k, v, alibi_slopes=jnp.full(2, 1e4))
      assert rel_err(out, v) < 1e-6


def test_causal_skips_blocks_above_the_diagonal():
  # A masked probability is exactly 0, and 0 * NaN = NaN inside a dot: a kernel that visited a
  # block above the diagonal would spread the NaNs planted there to rows that must not see them.
  length, blk = 64, 16
  q, k, v, w = inputs(length, 32)
  fn = jax.jit(lambda *a: value_and_grads(flash.flash_attention, *a, causal=True,
                                          block_q=blk, block_k=blk))
  ref = jax.jit(lambda *a: value_and_grads(reference.flash_attention, *a, causal=True))
  early, late = slice(None, length - blk), slice(blk, None)

  # Forward and dq kernels: NaN values in the last key block reach only the last query block.
  out, dq, _, _ = fn(q, k, v.at[:, -blk:].set(jnp.nan), w)
  ref_out, ref_dq, _, _ = ref(q, k, v.at[:, -blk:].set(0.0), w)
  assert bool(jnp.isfinite(out[:, early]).all()) and bool(jnp.isfinite(dq[:, early]).all())
  assert rel_err(out[:, early], ref_out[:, early]) < 1e-5
  assert rel_err(dq[:, early], ref_dq[:, early]) < 1e-5

  # dk/dv kernel: NaN cotangents on the first query block reach only the first key block.
  _, _, dk, dv = fn(q, k, v, w.at[:, :blk].set(jnp.nan))
  _, _, ref_dk, ref_dv = ref(q, k, v, w.at[:, :blk].set(0.0))
  assert bool(jnp.isfinite(dk[:, late]).all()) and bool(jnp.isfinite(dv[:, late]).all())
  assert rel_err(dk[:, late], ref_dk[:, late]) < 1e-5
  assert rel_err(dv[:, late], ref_dv[:, late]) < 1e-5


def test_tpu_simulator():
  from jax.experimental.pallas import tpu as pltpu
  q, k, v, w = inputs(40, 32, heads=1)
  sid = segments(40, pad=5)
  ours = jax.jit(lambda *a: value_and_grads(
      flash.flash_attention, *a, causal=True, segment_ids=sid, block_q=32, block_k=32,
      interpret=pltpu.InterpretParams()))(q, k, v, w)
  ref = jax.jit(lambda *a: value_and_grads(reference.flash_attention, *a, causal=True,
                                          segment_ids=sid))(q, k, v, w)
  for a, b in zip(ours, ref):
    assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_compiled_path_lowers(platform, alibi, monkeypatch):
  # Lowers (without compiling) the forward and backward kernels for Mosaic TPU and for Triton,
  # which checks the block-shape rules of both backends on a CPU-only machine.
  monkeypatch.setattr(jax, "default_backend", lambda: {"tpu": "tpu", "cuda": "gpu"}[platform])
  x = jax.ShapeDtypeStruct((2, 100, 2, 48), jnp.bfloat16)
  sid = jax.ShapeDtypeStruct((2, 100), jnp.int32)
  slopes = jax.ShapeDtypeStruct((2,), jnp.float32) if alibi else None

  def loss(q, k, v, segment_ids, alibi_slopes):
    out = flash.flash_attention(q, k, v, causal=True, segment_ids=segment_ids,
                                alibi_slopes=alibi_slopes, block_q=32, block_k=16,
                                interpret=False)
    return out.astype(jnp.float32).sum()

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x, sid, slopes).lower(
      lowering_platforms=(platform,)).as_text()
  target = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}[platform]
  assert text.count(f"custom_call @{target}(") == 3  # forward, dq, dk/dv


def test_rejects_bad_arguments():
  q = jnp.zeros((1, 8, 2, 32))
  with pytest.raises(ValueError, match="shape"):
    flash.flash_attention(q, q[:, :4], q)
  with pytest.raises(ValueError, match="dtype"):
    flash.flash_attention(q, q, q.astype(jnp.bfloat16))
  with pytest.raises(ValueError, match="block_q"):
    flash.flash_attention(q, q, q, block_q=48)
  with pytest.raises(ValueError, match="block_k"):
    flash.flash_attention(q, q, q, block_k=8)
  with pytest.raises(ValueError, match="segment_ids"):
    flash.flash_attention(q, q, q, segment_ids=jnp.zeros((1, 7), jnp.int32))
  with pytest.raises(ValueError, match="alibi_slopes"):
    flash.flash_attention(q, q, q, alibi_slopes=jnp.ones(3))
  with pytest.raises(ValueError, match="alibi_slopes"):
    flash.flash_attention(q, q, q, alibi_slopes=jnp.ones(2, jnp.int32))
  with pytest.raises(ValueError, match="head_dim"):
    big = jnp.zeros((1, 8, 1, 512))
    flash.flash_attention(big, big, big)


@on_gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_gpu_long_sequences(dtype, causal):
  check(2048, 128, causal, dtype)
  check(1500, 64, causal, dtype, segment_ids=segments(1500, pad=100))
