"""Attention: one linen layer whose `kind` picks the substrate and `impl` the implementation.

All tensors are [batch, length, heads, head_dim], the layout of jax.nn.dot_product_attention.
Each kind's plain quadratic form is in `reference`; the fast forms live in softmax.py (softmax,
local), linear.py (linear, performer, cosformer, lsa), linformer.py and combiner.py; relu.py
holds ReLU attention, dense like softmax/xla.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from substrax.models.attention.combiner import combiner_attention
from substrax.models.attention.linear import (cosformer_features, elu_features, linear_attention,
                                              orthogonal_features, performer_features)
from substrax.models.attention.linformer import linformer_attention
from substrax.models.attention.relu import relu_attention
from substrax.models.attention.softmax import local_attention, softmax_attention
from substrax.models.kernels.reference import alibi_slopes
from substrax.models.norms import centre
from substrax.models.positions import RPE_BUCKETS, offsets, rope, rpe_buckets
from substrax.models.sharding import constrain, param_init

# Which implementations each kind has. 'auto' picks per backend (see each function's docstring).
SUPPORTED_IMPLS = {
    "softmax": ("auto", "xla", "cudnn", "pallas"),
    "linear": ("auto", "xla", "pallas"),
    "performer": ("auto", "xla", "pallas"),
    "cosformer": ("auto", "xla", "pallas"),
    "linformer": ("auto", "xla"),
    "local": ("auto", "xla", "cudnn"),
    "combiner": ("auto", "xla"),
    "lsa": ("auto", "xla"),
    "relu": ("auto", "xla"),
}
KINDS = tuple(SUPPORTED_IMPLS)
FEATURE_MAPS = {"linear": elu_features, "cosformer": cosformer_features}


def layer_kwargs(config) -> dict:
  """Attention keyword arguments from a model.attention config block (configs.common); the
  backbone adds `positions`."""
  return {k: config[k] for k in ("kind", "impl", "window", "num_features", "low_rank")}


def feature_rngs(key, step, redraw_every: int):
  """The 'features' RNG for step `step`: Performer redraws its random features every
  `redraw_every` steps (0 = never), as a pure function of the step so resumes are exact."""
  draw = step // redraw_every if redraw_every else 0
  return {"features": jax.random.fold_in(key, draw)}


class Attention(nn.Module):
  """Multi-head attention with fused Q/K/V and output projections.

  Per-kind settings: `window` (local), `num_features` (performer), `low_rank` and `max_len`
  (linformer's projections span max_len positions; cosformer's re-weighting horizon M is
  max_len). Performer draws its features from the 'features' RNG stream (see feature_rngs), or
  from a fixed key when none is given. `positions` applies a relative scheme (rope, alibi, rpe,
  urpe: models/positions.py; URPE's Toeplitz entries span offsets up to max_len); absolute ones
  are the backbone's business. `head_dim` defaults to width / num_heads; `centre_out` makes the
  output projection zero-mean (models/norms.centre).
  """
  num_heads: int
  kind: str = "softmax"
  positions: str = "none"
  head_dim: int | None = None
  centre_out: bool = False
  impl: str = "auto"
  causal: bool = True
  window: int = 16
  num_features: int = 64
  low_rank: int = 16
  max_len: int | None = None
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  out_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x, mask=None, segment_ids=None):
    """x [batch, length, width]; mask [batch, length] True for real tokens; segment_ids
    [batch, length] (softmax only): tokens attend within their segment."""
    if self.impl not in SUPPORTED_IMPLS.get(self.kind, ()):
      raise ValueError(f"attention: kind {self.kind!r} has no impl {self.impl!r}; "
                       f"choose kind from {KINDS} and impl from {SUPPORTED_IMPLS.get(self.kind)}")
    if segment_ids is not None and self.kind != "softmax":
      raise ValueError(f"attention: segment_ids are supported by kind 'softmax' only, "
                       f"not {self.kind!r}")
    width = x.shape[-1]
    head_dim = self.head_dim or width // self.num_heads
    # Explicit params, not DenseGeneral: its kernel init flattens to 2-D, which breaks 4-D
    # logical-partitioning annotations.
    w_qkv = self.param("qkv_kernel", param_init(self.kernel_init, "embed", None, "heads", "kv"),
                       (width, 3, self.num_heads, head_dim))
    b_qkv = self.param("qkv_bias", param_init(nn.initializers.zeros, None, "heads", "kv"),
                       (3, self.num_heads, head_dim))
    qkv = jnp.einsum("ble,ethd->blthd", x, w_qkv.astype(self.dtype)) + b_qkv.astype(self.dtype)
    q, k, v = (constrain(qkv[:, :, i], "batch", "length", "heads", "kv") for i in range(3))
    out = self._core(q, k, v, mask, segment_ids).astype(self.dtype)
    w_out = self.param("out_kernel", param_init(self.out_init, "heads", "kv", "embed"),
                       (self.num_heads, head_dim, width))
    b_out = self.param("out_bias", param_init(nn.initializers.zeros, "embed"), (width,))
    if self.centre_out:
      w_out, b_out = centre(w_out), centre(b_out)
    return jnp.einsum("blhd,hde->ble", out, w_out.astype(self.dtype)) + b_out.astype(self.dtype)

  def _core(self, q, k, v, mask, segment_ids):
    """Creates the kind's own parameters or random features, then calls `attend`."""
    extras = self._positional(q.shape[1])
    if self.positions == "rope":
      q, k = rope(q), rope(k)
    head_dim = q.shape[-1]
    if self.kind == "performer":
      key = self.make_rng("features") if self.has_rng("features") else jax.random.key(0)
      extras["omega"] = orthogonal_features(key, self.num_features, head_dim)
    elif self.kind == "linformer":
      length, max_len = q.shape[1], self.max_len or q.shape[1]
      if length > max_len:
        raise ValueError(f"linformer: length {length} exceeds max_len={max_len}")
      init = param_init(nn.initializers.normal(max_len ** -0.5), "length", None)
      extras["length_proj"] = tuple(
          self.param(f"length_proj_{n}", init, (max_len, self.low_rank))[:length] for n in "kv")
    elif self.kind == "cosformer":
      extras["horizon"] = self.max_len
    elif self.kind == "combiner":
      extras["summary_query"] = self.param(
          "summary_query", param_init(nn.initializers.zeros, "heads", "kv"),
          (self.num_heads, head_dim))
    return attend(self.kind, q, k, v, causal=self.causal, impl=self.impl, mask=mask,
                  segment_ids=segment_ids, window=self.window, **extras)

  def _positional(self, length):
    """The softmax terms of the score-level schemes: ALiBi's slopes, RPE's bias, URPE's
    Toeplitz weights."""
    if self.positions == "alibi":
      return {"alibi_slopes": jnp.asarray(alibi_slopes(self.num_heads), jnp.float32)}
    if self.positions not in ("rpe", "urpe"):
      return {}
    table = self.param("rpe_bias", param_init(nn.initializers.zeros, None, "heads"),
                       (RPE_BUCKETS, self.num_heads))
    terms = {"bias": table[rpe_buckets(length, causal=self.causal)].transpose(2, 0, 1)}
    if self.positions == "urpe":
      max_len = self.max_len or length
      if length > max_len:
        raise ValueError(f"urpe: length {length} exceeds max_len={max_len}")
      c = self.param("urpe_toeplitz", param_init(nn.initializers.ones, "heads", None),
                     (self.num_heads, 2 * max_len - 1))
      terms["weights"] = c[:, offsets(length) + max_len - 1]
    return terms


def attend(kind, q, k, v, *, causal, impl="auto", mask=None, segment_ids=None, window=None,
           omega=None, length_proj=None, summary_query=None, horizon=None, bias=None,
           weights=None, alibi_slopes=None):
  """The attention core of every kind, as a pure function of [batch, length, heads, dim] inputs.

  Kind-specific inputs: window (local), omega [features, dim] (performer), length_proj = (E, F),
  each [length, r] (linformer), summary_query [heads, dim] (combiner), horizon (cosformer's M);
  softmax's positional terms bias, weights and alibi_slopes (softmax_attention).
  """
  if kind == "softmax":
    return softmax_attention(q, k, v, causal=causal, mask=mask, segment_ids=segment_ids,
                             bias=bias, weights=weights, alibi_slopes=alibi_slopes, impl=impl)
  if bias is not None or weights is not None or alibi_slopes is not None:
    raise ValueError(f"attention: kind {kind!r} takes no positional bias")
  if kind == "local":
    return local_attention(q, k, v, window=window, causal=causal, mask=mask, impl=impl)
  if kind == "linformer":
    return linformer_attention(q, k, v, *length_proj, causal=causal, mask=mask)
  if kind == "combiner":
    return combiner_attention(q, k, v, summary_query, causal=causal, mask=mask)
  if kind == "relu":
    return relu_attention(q, k, v, causal=causal, mask=mask)
  if kind == "performer":
    q, k = (performer_features(t, omega, is_query=is_q, causal=causal, mask=mask)
            for t, is_q in ((q, True), (k, False)))
  elif kind == "cosformer":
    q, k = cosformer_features(q, horizon), cosformer_features(k, horizon)
  elif kind in FEATURE_MAPS:
    q, k = FEATURE_MAPS[kind](q), FEATURE_MAPS[kind](k)
  elif kind != "lsa":
    raise ValueError(f"attention: unknown kind {kind!r}; choose one of {KINDS}")
  return linear_attention(q, k, v, causal=causal, mask=mask, normalize=kind != "lsa", impl=impl)
