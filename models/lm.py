"""Decoder-only language model: token embedding, the shared backbone, an untied linear head.

The head is untied so that converting between norms (models/norm_conversion.py) can fold the
final norm's affine into it without touching the embedding.
"""
import flax.linen as nn

from substrax.models.norms import centre
from substrax.models.sharding import constrain, param_init
from substrax.models.transformer import BlockConfig, Transformer, residual_width


class LanguageModel(nn.Module):
  vocab_size: int
  width: int
  depth: int
  max_len: int
  block: BlockConfig
  causal: bool = True

  @nn.compact
  def __call__(self, tokens, deterministic=True, units=None):
    """tokens int [batch, length] -> logits [batch, length, vocab] in float32; with causal
    attention, position t predicts token t + 1. `units`: each layer's MLP units (MatFormer)."""
    stream = residual_width(self.width, self.block.norm)
    table = self.param("embed", param_init(nn.initializers.normal(0.02), "vocab", "embed"),
                       (self.vocab_size, stream))
    if self.block.zero_mean:
      table = centre(table)
    x = constrain(table[tokens].astype(self.block.dtype), "batch", "length", None)
    h = Transformer(self.width, self.depth, self.max_len, self.block, causal=self.causal,
                    name="backbone")(x, deterministic=deterministic, units=units)
    # The final norm computes in float32 or wider; the head keeps that (float64 under x64).
    return nn.Dense(self.vocab_size, name="head",
                    kernel_init=param_init(nn.initializers.normal(0.02), "embed", "vocab"),
                    bias_init=param_init(nn.initializers.zeros, "vocab"))(h)
