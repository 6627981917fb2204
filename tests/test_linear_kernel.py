"""The Pallas chunked linear-attention kernel against `reference.linear_attention`: values and
gradients (dq, dk, dv) in interpret mode on CPU, chunk-size invariance, the TPU simulator, lowering
for GPU (Triton) and TPU (Mosaic), and the compiled kernel where a GPU is present.

Error measure: max|ours - ref| / max|ref|, per output and per gradient, where gradients are those
of sum(out * w) for a random w. bf16 runs are compared with the fp32 reference evaluated on the
same bf16-rounded inputs.
"""
import functools

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu

from substrax.models.kernels import linear, reference

F32_TOL, BF16_TOL = 1e-5, 2e-2


@functools.partial(jax.jit, static_argnums=range(6))
def _inputs(batch, length, heads, d_k, d_v, dtype, seed=0):
  """Positive feature-mapped q, k (elu + 1), normal v, and the weights w of sum(out * w)."""
  kq, kk, kv, kw = jax.random.split(jax.random.key(seed), 4)
  q = jax.nn.elu(jax.random.normal(kq, (batch, length, heads, d_k))) + 1
  k = jax.nn.elu(jax.random.normal(kk, (batch, length, heads, d_k))) + 1
  v = jax.random.normal(kv, (batch, length, heads, d_v))
  w = jax.random.normal(kw, (batch, length, heads, d_v))
  return tuple(x.astype(dtype) for x in (q, k, v, w))


def _value_and_grads(fn, q, k, v, w):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out,) + vjp(w.astype(out.dtype))


def _rel_err(ours, ref, floor=0.0):
  ours, ref = ours.astype(jnp.float32), ref.astype(jnp.float32)
  return jnp.max(jnp.abs(ours - ref)) / jnp.maximum(jnp.max(jnp.abs(ref)), floor)


def _errors(q, k, v, w, *, causal, chunk_size=None, interpret=None):
  """[out, dq, dk, dv] errors of the kernel against the fp32 reference, in one compiled call.
  Full-precision matmuls keep the reference from dropping to TF32 (GPU) or bf16 passes (TPU)."""
  with jax.default_matmul_precision("highest"):
    return _errors_jit(q, k, v, w, causal=causal, chunk_size=chunk_size, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("causal", "chunk_size", "interpret"))
def _errors_jit(q, k, v, w, *, causal, chunk_size, interpret):
  ours = _value_and_grads(functools.partial(linear.linear_attention, causal=causal,
                                            chunk_size=chunk_size, interpret=interpret), q, k, v, w)
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  ref = _value_and_grads(functools.partial(reference.linear_attention, causal=causal), *f32, w)
  # With one token, out = v (q.k) / (q.k + eps): dq and dk are O(eps), pure rounding noise in any
  # fp32 implementation, so they are measured against the gradient scale that dv sets.
  floor = jnp.max(jnp.abs(ref[3])) if q.shape[1] == 1 else 0.0
  return jnp.stack([_rel_err(ours[0], ref[0]), _rel_err(ours[1], ref[1], floor),
                    _rel_err(ours[2], ref[2], floor), _rel_err(ours[3], ref[3])])


def _assert_close(errors, tol):
  errors = [float(e) for e in errors]
  assert all(e <= tol for e in errors), f"out, dq, dk, dv errors {errors} > {tol}"


# (length, d_k, d_v, causal): every length at D=64, every D at lengths 200/1000, and d_k != d_v.
F32_CASES = ([(length, 64, 64, causal) for length in (1, 17, 128, 200, 1000)
              for causal in (True, False)]
             + [(200, 32, 32, True), (200, 32, 32, False), (1000, 128, 128, True),
                (1000, 128, 128, False), (200, 128, 48, True), (128, 48, 128, False)])
BF16_CASES = [(1, 32, 32, True), (17, 32, 32, False), (128, 128, 128, True),
              (200, 64, 64, False), (1000, 64, 64, True), (200, 128, 48, False)]


@pytest.mark.parametrize("length,d_k,d_v,causal", F32_CASES)
def test_fp32_matches_reference(length, d_k, d_v, causal):
  q, k, v, w = _inputs(1, length, 2, d_k, d_v, jnp.float32)
  _assert_close(_errors(q, k, v, w, causal=causal), F32_TOL)


@pytest.mark.parametrize("length,d_k,d_v,causal", BF16_CASES)
def test_bf16_matches_reference(length, d_k, d_v, causal):
  q, k, v, w = _inputs(2, length, 1, d_k, d_v, jnp.bfloat16)
  _assert_close(_errors(q, k, v, w, causal=causal), BF16_TOL)


@pytest.mark.parametrize("causal", [True, False])
def test_chunk_sizes_agree(causal):
  q, k, v, w = _inputs(1, 200, 2, 32, 32, jnp.float32, seed=1)

  @jax.jit
  def all_chunks(q, k, v):
    return [_value_and_grads(functools.partial(linear.linear_attention, causal=causal,
                                               chunk_size=c), q, k, v, w)
            for c in (16, 32, 128, 256)]

  first, *rest = all_chunks(q, k, v)
  for other in rest:
    _assert_close([_rel_err(a, b) for a, b in zip(other, first)], F32_TOL)


def test_tpu_simulator():
  """Forward and backward kernels under the TPU interpreter (slow: a tiny shape)."""
  q, k, v, w = _inputs(1, 40, 1, 32, 16, jnp.float32, seed=2)
  _assert_close(_errors(q, k, v, w, causal=True, interpret=pltpu.InterpretParams()), F32_TOL)


@pytest.mark.parametrize("platform,backend", [("cuda", "gpu"), ("tpu", "tpu")])
def test_lowers_for_accelerators(platform, backend, monkeypatch):
  """Cross-lowers forward and backward for GPU (Triton) and TPU (Mosaic) from this host. The
  Triton lowering rejects non-power-of-two arrays, so this checks the padding."""
  monkeypatch.setattr(jax, "default_backend", lambda: backend)  # picks that backend's params
  q = jax.ShapeDtypeStruct((1, 300, 2, 48), jnp.bfloat16)  # padded to 320 tokens, 64 features
  v = jax.ShapeDtypeStruct((1, 300, 2, 24), jnp.bfloat16)
  for causal in (True, False):
    def loss(q, k, v):
      out = linear.linear_attention(q, k, v, causal=causal, interpret=False)
      return jnp.sum(out.astype(jnp.float32))
    text = (jax.jit(jax.grad(loss, (0, 1, 2))).trace(q, q, v)
            .lower(lowering_platforms=(platform,)).as_text())
    assert text.count("custom_call") >= 3  # forward, dq and dk/dv kernels


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled Triton kernel needs a GPU")
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, F32_TOL), (jnp.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("causal", [True, False])
def test_compiled_gpu(dtype, tol, causal):
  q, k, v, w = _inputs(2, 1000, 2, 64, 64, dtype)
  _assert_close(_errors(q, k, v, w, causal=causal), tol)


def test_rejects_bad_arguments():
  q = jnp.ones((1, 8, 2, 16))
  with pytest.raises(ValueError, match="chunk_size"):
    linear.linear_attention(q, q, q, chunk_size=48)
  with pytest.raises(ValueError, match="chunk_size"):
    linear.linear_attention(q, q, q, chunk_size=8)
  with pytest.raises(ValueError, match="expects"):
    linear.linear_attention(q, q[:, :4], q)
  with pytest.raises(ValueError, match="expects"):
    linear.linear_attention(q, q, q[0])
