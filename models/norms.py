"""The three pre-norms of Jiang et al. 2023, "Pre-RMSNorm and Pre-CRMSNorm Transformers":

  LayerNorm   LN(x)   = (x - mean(x)) / sqrt(var(x) + eps)
  RMSNorm     RMS(x)  = x / sqrt(mean(x^2) + eps)
  CRMSNorm    CRMS(x) = x / sqrt((sum(x^2) + sum(x)^2) / (n + 1) + eps),  x in R^n

CRMSNorm reads the n = d - 1 free coordinates of a zero-mean d-vector (its last coordinate is
minus the sum of the others), so CRMS(x) is the RMS of that d-vector. If 1^T x = 0 then
LN(x) = RMS(x), eps included: a residual stream kept zero-mean makes the three interchangeable
(models/norm_conversion.py). Each applies a scale and a bias, RMSNorm and CRMSNorm too, so that
an LN model's parameters map one to one onto the RMS model that trains identically. LayerNorm
is Flax's (`make_norm`).

A zero-mean writer (the attention output and MLP projections under `zero_mean`) stores the raw
kernel K and bias b and applies K - mean_out(K) and b - mean(b) (`centre`). Every output is
zero-mean, and because the model depends on K only through that projection, its gradients, and
so Adam's steps, match an LN model with raw K.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from substrax.models.sharding import param_init

NORMS = ("layernorm", "rmsnorm", "crmsnorm")
EPS = 1e-6


def centre(x, axis=-1):
  """x minus its mean along `axis`: the projection onto the zero-mean subspace."""
  return x - jnp.mean(x, axis=axis, keepdims=True)


def make_norm(kind: str, name: str):
  """The norm module of a backbone: Flax's nn.LayerNorm for 'layernorm' (trained runs stay bit
  for bit what they were: a re-derived LayerNorm has the same forward values but a gradient
  that differs in rounding), Norm otherwise. Each has a scale and a bias."""
  if kind == "layernorm":
    return nn.LayerNorm(epsilon=EPS, name=name,
                        scale_init=param_init(nn.initializers.ones, "embed"),
                        bias_init=param_init(nn.initializers.zeros, "embed"))
  return Norm(kind, name=name)


class Norm(nn.Module):
  """RMSNorm or CRMSNorm: x * inv * scale + bias, computed in float32 (float64 under x64)."""
  kind: str

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    scale = self.param("scale", param_init(nn.initializers.ones, "embed"), (width,))
    bias = self.param("bias", param_init(nn.initializers.zeros, "embed"), (width,))
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.kind == "rmsnorm":
      square = jnp.mean(x * x, axis=-1, keepdims=True)
    elif self.kind == "crmsnorm":   # the mean square of the implied d-vector (x, -sum x)
      square = (jnp.sum(x * x, axis=-1, keepdims=True)
                + jnp.sum(x, axis=-1, keepdims=True) ** 2) / (width + 1)
    else:
      raise ValueError(f"unknown norm {self.kind!r}; choose one of {', '.join(NORMS)}")
    return x * (jax.lax.rsqrt(square + EPS) * scale) + bias
