"""The ConvLSTM world model: FluidWorld's parameter-matched recurrent baseline.

PatchEmbed + LayerNorm -> residual bottleneck -> ConvLSTM cell -> Conv1x1 + GN(8) -> PixelDecoder.
The cell is one Conv over [x; h] giving the four gates (Xavier-uniform, forget bias 1) and by
default has no peepholes, like FluidWorld's cell and the widely copied ndrplz cell; `peephole`
adds Shi et al.'s (2015) per-position Hadamard terms.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from substrax.models.sharding import param_init
from substrax.models.video import (PatchEmbed, PixelDecoder, WorldModel, gelu, group_norm,
                                   torch_conv)


class Bottleneck(nn.Module):
  """u + GELU(Conv1x1(GN(GELU(Conv3x3(u))))), with mid channels in between."""
  mid: int
  groups: int = 8

  @nn.compact
  def __call__(self, u):
    d = u.shape[-1]
    h = gelu(torch_conv(self.mid, 3, d, ("embed", None), padding="SAME", name="conv_in")(u))
    h = group_norm(self.groups, name="norm")(h)
    return u + gelu(torch_conv(d, 1, self.mid, (None, "embed"), name="conv_out")(h))


class ConvLSTMCell(nn.Module):
  """(h, c), x -> (h', c'); gates in the order input, forget, output, candidate."""
  hidden: int
  kernel: int = 3
  peephole: bool = False

  @nn.compact
  def __call__(self, state, x):
    h, c = state
    k = self.hidden

    def gate_bias(key, shape, dtype=jnp.float32):
      return jnp.zeros(shape, dtype).at[k:2 * k].set(1.0)   # forget-gate bias 1

    gates = nn.Conv(4 * k, (self.kernel, self.kernel), padding="SAME", name="gates",
                    kernel_init=param_init(nn.initializers.xavier_uniform(), *[None] * 4),
                    bias_init=param_init(gate_bias, None))(jnp.concatenate([x, h], axis=-1))
    i, f, o, g = jnp.split(gates, 4, axis=-1)
    if self.peephole:
      peep = self.param("peephole", param_init(nn.initializers.zeros, None, None, None, None),
                        (3,) + c.shape[1:])
      i, f = i + peep[0] * c, f + peep[1] * c
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    if self.peephole:
      o = o + peep[2] * c
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


class ConvLSTMWorld(WorldModel):
  """Defaults are the paper's baseline (64x64x3, d=128, mid 88, hidden 64: 801,995 params)."""
  enc_mid: int = 88
  enc_groups: int = 8      # GroupNorm groups in the bottleneck (must divide enc_mid)
  hidden: int = 64
  kernel: int = 3
  peephole: bool = False

  def setup(self):
    self.embed = PatchEmbed(self.dim, self.patch, "layernorm")
    self.bottleneck = Bottleneck(self.enc_mid, self.enc_groups)
    self.cell = ConvLSTMCell(self.hidden, self.kernel, self.peephole)
    self.out_proj = torch_conv(self.dim, 1, self.hidden, (None, "embed"))
    self.out_norm = group_norm(axis="embed")
    self.decoder = PixelDecoder(self.channels, self.decoder_mid, self.patch)

  def encode(self, x, train: bool = False):
    return self.bottleneck(self.embed(x)), {}

  def init_state(self, z):
    zeros = jnp.zeros(z.shape[:-1] + (self.hidden,), z.dtype)
    return zeros, zeros

  def step(self, state, z):
    h, c = self.cell(state, z)
    return (h, c), self.out_norm(self.out_proj(h))
