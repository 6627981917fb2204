"""In-context regression models (Garg et al. 2022 read-in/read-out around the backbone).

A prompt (x_1, y_1, ..., x_n, y_n) becomes 2n tokens: x_i, then y_i zero-padded to d dims.
One linear read-in embeds both token types; the read-out at token x_i predicts y_i from the
i-1 pairs before it, so a single forward pass yields predictions for every prefix length.
"""
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from substrax.models.sharding import param_init
from substrax.models.transformer import Transformer


def interleave(xs, ys):
  """[B, n, d], [B, n] -> [B, 2n, d] tokens x_1, (y_1, 0, ..., 0), x_2, ..."""
  y_tokens = jnp.zeros_like(xs).at[..., 0].set(ys)
  b, n, d = xs.shape
  return jnp.stack([xs, y_tokens], axis=2).reshape(b, 2 * n, d)


class ICLTransformer(nn.Module):
  n_points: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  norm: str = "layernorm"
  attention: Mapping[str, Any] | None = None  # Attention keyword arguments; None = softmax
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, xs, ys):
    """Returns predictions [B, n]: entry k uses the first k (x, y) pairs to predict y_{k+1}."""
    # PyTorch's nn.Linear default, as in Garg et al.'s read-in/read-out: with GPT-2's 0.02 the
    # x signal drowns under the position embeddings and training stalls on a long plateau.
    init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    # The last y token influences no prediction under causal attention, so it is not fed.
    tokens = interleave(xs, ys)[:, :-1]
    h = nn.Dense(self.width, dtype=self.dtype, name="read_in",
                 kernel_init=param_init(init, None, "embed"),
                 bias_init=param_init(nn.initializers.zeros, "embed"))(tokens)
    h = Transformer(self.width, self.depth, self.num_heads, max_len=2 * self.n_points - 1,
                    mlp_ratio=self.mlp_ratio, norm=self.norm, attention=self.attention,
                    causal=True, dtype=self.dtype,
                    name="backbone")(h)
    out = nn.Dense(1, dtype=jnp.float32, name="read_out",
                   kernel_init=param_init(init, "embed", None),
                   bias_init=param_init(nn.initializers.zeros, None))(h[:, ::2])
    return out[..., 0]
