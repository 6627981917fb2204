"""Sequence classifier for the Long Range Arena: token embedding, a bidirectional encoder built
from the shared backbone (any attention kind), CLS or mean pooling, and an MLP head (as in LRA).
"""
import flax.linen as nn
import jax.numpy as jnp

from substrax.models.sharding import constrain, param_init
from substrax.models.transformer import BlockConfig, Transformer

POOLS = ("cls", "mean")


class Classifier(nn.Module):
  vocab_size: int
  num_classes: int
  max_len: int
  width: int
  depth: int
  block: BlockConfig          # its mlp_ratio also sizes the head's hidden layer
  pool: str = "cls"

  @nn.compact
  def __call__(self, tokens, mask=None, deterministic=True):
    """tokens int [batch, length]; mask [batch, length] True for real tokens (None: all real).

    Returns logits [batch, num_classes] in float32.
    """
    x = nn.Embed(self.vocab_size, self.width, name="embed",
                 embedding_init=param_init(nn.initializers.normal(1.0), "vocab", "embed"))(tokens)
    x = constrain(x.astype(self.block.dtype), "batch", "length", None)
    if self.pool == "cls":
      cls = self.param("cls", param_init(nn.initializers.normal(0.02), "embed"), (self.width,))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width)), x],
                          axis=1)
      if mask is not None:
        mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask], axis=1)
    h = Transformer(self.width, self.depth, max_len=self.max_len + (self.pool == "cls"),
                    block=self.block, causal=False, name="encoder")(
                        x, mask, deterministic=deterministic)
    if self.pool == "cls":
      pooled = h[:, 0]
    elif mask is None:
      pooled = jnp.mean(h, axis=1)
    else:
      w = mask[..., None].astype(h.dtype)
      pooled = jnp.sum(h * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    hidden = nn.Dense(self.block.mlp_ratio * self.width, name="head_hidden",
                      kernel_init=param_init(nn.initializers.normal(0.02), "embed", "mlp"),
                      bias_init=param_init(nn.initializers.zeros, "mlp"))(pooled)
    return nn.Dense(self.num_classes, name="head_out", dtype=jnp.float32,
                    kernel_init=param_init(nn.initializers.normal(0.02), "mlp", None),
                    bias_init=param_init(nn.initializers.zeros, None))(nn.relu(hidden))
