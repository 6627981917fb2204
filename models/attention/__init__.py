"""Attention: one linen layer whose `kind` picks the substrate and `impl` the implementation.

All tensors are [batch, length, heads, head_dim], the layout of jax.nn.dot_product_attention.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from substrax.models.sharding import constrain, param_init

KINDS = ("softmax",)
IMPLS = ("auto", "xla", "cudnn")


def _xla_softmax_attention(q, k, v, *, causal: bool):
  # Plain einsums: at short lengths on CPU this beats jax.nn.dot_product_attention's XLA path.
  length = q.shape[1]
  scores = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1] ** -0.5), k).astype(jnp.float32)
  if causal:
    scores = scores + jnp.where(jnp.tril(jnp.ones((length, length), bool)), 0.0, -1e30)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def softmax_attention(q, k, v, *, causal: bool, impl: str = "auto"):
  """Scaled dot-product attention; the softmax runs in float32.

  impl: 'xla' plain einsums; 'cudnn' jax.nn.dot_product_attention's cuDNN kernel; 'auto' picks
  'xla' on CPU and lets jax.nn.dot_product_attention choose (cuDNN where supported) elsewhere.
  """
  if impl == "xla" or (impl == "auto" and jax.default_backend() == "cpu"):
    return _xla_softmax_attention(q, k, v, causal=causal)
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                      implementation="cudnn" if impl == "cudnn" else None)


ATTENTION_FNS = {"softmax": softmax_attention}


class Attention(nn.Module):
  """Multi-head attention with fused Q/K/V and output projections."""
  num_heads: int
  kind: str = "softmax"
  impl: str = "auto"
  causal: bool = True
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  out_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    # Explicit params, not DenseGeneral: its kernel init flattens to 2-D, which breaks 4-D
    # logical-partitioning annotations.
    w_qkv = self.param("qkv_kernel", param_init(self.kernel_init, "embed", None, "heads", "kv"),
                       (width, 3, self.num_heads, head_dim))
    b_qkv = self.param("qkv_bias", param_init(nn.initializers.zeros, None, "heads", "kv"),
                       (3, self.num_heads, head_dim))
    qkv = jnp.einsum("ble,ethd->blthd", x, w_qkv.astype(self.dtype)) + b_qkv.astype(self.dtype)
    q, k, v = (constrain(qkv[:, :, i], "batch", "length", "heads", "kv") for i in range(3))
    out = ATTENTION_FNS[self.kind](q, k, v, causal=self.causal, impl=self.impl)
    w_out = self.param("out_kernel", param_init(self.out_init, "heads", "kv", "embed"),
                       (self.num_heads, head_dim, width))
    b_out = self.param("out_bias", param_init(nn.initializers.zeros, "embed"), (width,))
    return jnp.einsum("blhd,hde->ble", out, w_out.astype(self.dtype)) + b_out.astype(self.dtype)
