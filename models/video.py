"""What the three world models share: patch embedding, decoder, losses, training window, rollout.

Layout is NHWC; frames are [batch, time, H, W, C] in [0, 1]. A world model is a `WorldModel`
with four methods, each called through `model.apply(variables, ..., method=name)`:

  encode(x [B, H, W, C], train) -> (z [B, h, w, d], aux)    aux: dict of diagnostics, e.g.
                                                           'energy' (PDE-alive input), 'steps_used'
  init_state(z) -> state                                   a zero state shaped like z (any pytree)
  step(state, z) -> (state, latent)                        latent [B, h, w, d] predicts frame t+1
  decode(latent) -> logits [B, H, W, C]

In latent-feedback rollouts the predicted latent is the next input (z <- latent), which is what
FluidWorld (z <- s), its Transformer (z <- state) and its ConvLSTM (z <- proj(h)) do.
Non-learned state (FluidWorld's 'bio' collection) is threaded through `window_loss` and `rollout`
and updated only when asked to.

Example:
  loss, (metrics, bio) = window_loss(model, variables, frames, loss=LossConfig())
  frames, diags = rollout(model, variables, context, horizon=10, feedback="reencode")
"""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from substrax.models.sharding import param_init

NORMS = ("rmsnorm", "layernorm")
RECON_LOSSES = ("mse", "bce")
STATE_GRADS = ("detach", "bptt")
FEEDBACKS = ("latent", "reencode")

# PyTorch's default Conv/Linear init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for both.
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# Kaiming-normal fan_out (relu gain); jax's "normal" is untruncated, like torch's.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def gelu(x):
  return nn.gelu(x, approximate=False)   # PyTorch's default GELU is the exact erf form


# Sharding names go only on axes of the model width d ('embed') or the FFN width ('mlp'); the
# other channel counts (image channels, decoder widths, odd bottlenecks) need not divide a mesh.

def group_norm(groups: int = 8, axis=None, name=None):
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name=name,
                      scale_init=param_init(nn.initializers.ones, axis),
                      bias_init=param_init(nn.initializers.zeros, axis))


def channel_norm(kind: str, name=None):
  """RMSNorm (eps 1e-8 inside the sqrt, FluidWorld) or LayerNorm (eps 1e-5, the baselines)."""
  if kind not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
  scale = param_init(nn.initializers.ones, "embed")
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=1e-8, scale_init=scale, name=name)
  return nn.LayerNorm(epsilon=1e-5, scale_init=scale,
                      bias_init=param_init(nn.initializers.zeros, "embed"), name=name)


def torch_conv(features: int, kernel: int, fan_in: int, axes=(None, None), name=None, **kwargs):
  """nn.Conv with PyTorch's default init; axes names its (in, out) channel axes."""
  return nn.Conv(features, (kernel, kernel), name=name,
                 kernel_init=param_init(torch_kernel_init, None, None, *axes),
                 bias_init=param_init(torch_bias_init(fan_in * kernel * kernel), axes[1]),
                 **kwargs)


class PatchEmbed(nn.Module):
  """Non-overlapping patch convolution (kernel = stride = patch), then a channel norm."""
  dim: int
  patch: int = 4
  norm: str = "rmsnorm"

  @nn.compact
  def __call__(self, x):
    x = torch_conv(self.dim, self.patch, x.shape[-1], (None, "embed"), strides=self.patch,
                   padding="VALID", name="proj")(x)
    return channel_norm(self.norm, name="norm")(x)


def _decoder_conv(features, kernel, name, in_axis=None):
  return nn.Conv(features, (kernel, kernel), padding="SAME", name=name,
                 kernel_init=param_init(kaiming_fan_out, None, None, in_axis, None),
                 bias_init=param_init(nn.initializers.zeros, None))


class ResBlock(nn.Module):
  """x + Conv3x3(GN(GELU(Conv3x3(x))))."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = group_norm(name="norm")(gelu(_decoder_conv(c, 3, "conv_0")(x)))
    return x + _decoder_conv(c, 3, "conv_1")(h)


class PixelDecoder(nn.Module):
  """Latent [B, h, w, d] -> logits [B, h*scale, w*scale, out_channels] (FluidWorld's decoder).

  log2(scale) stages of bilinear x2 resize, Conv3x3, GELU, GN(8), ResBlock; the last stage
  halves the width to mid // 2.
  """
  out_channels: int
  mid: int = 64
  scale: int = 4

  @nn.compact
  def __call__(self, z):
    stages = int(round(math.log2(self.scale)))
    if 2 ** stages != self.scale:
      raise ValueError(f"decoder scale must be a power of 2, got {self.scale}")
    x = gelu(_decoder_conv(self.mid, 1, "proj_in", "embed")(z))
    x = ResBlock(name="res_in")(x)
    for i in range(stages):
      width = self.mid // 2 if i == stages - 1 else self.mid
      b, h, w, c = x.shape
      # Half-pixel bilinear upsampling equals PyTorch's align_corners=False.
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
      x = group_norm(name=f"up_{i}_norm")(gelu(_decoder_conv(width, 3, f"up_{i}_conv")(x)))
      x = ResBlock(name=f"up_{i}_res")(x)
    return _decoder_conv(self.out_channels, 3, "proj_out")(x)


class WorldModel(nn.Module):
  """The fields and methods the three world models share.

  A subclass's setup assigns `decoder` (a PixelDecoder, upsampling by `patch`) and the subclass
  defines encode, init_state and step. Defaults are the paper's 64x64x3 setting.
  """
  channels: int = 3
  dim: int = 128
  patch: int = 4
  decoder_mid: int = 64

  def decode(self, latent):
    return self.decoder(latent)

  def __call__(self, x, train: bool = False):
    """Runs every part once (for init): returns (recon logits, next-frame logits)."""
    z, _ = self.encode(x, train)
    _, latent = self.step(self.init_state(z), z)
    return self.decode(z), self.decode(latent)


# ---------------------------------------------------------------------------------------------
# Trivial predictors: context [B, T, H, W, C] -> [B, horizon, H, W, C].

def zero_prediction(context, horizon: int):
  return jnp.zeros((context.shape[0], horizon, *context.shape[2:]), context.dtype)


def copy_last_prediction(context, horizon: int):
  return jnp.repeat(context[:, -1:], horizon, axis=1)


def context_mean_prediction(context, horizon: int):
  return jnp.repeat(jnp.mean(context, axis=1, keepdims=True), horizon, axis=1)


# ---------------------------------------------------------------------------------------------
# Losses (FluidWorld's world-model loss; the PDE-alive term only applies to models with energy).

@dataclasses.dataclass(frozen=True)
class LossConfig:
  recon: str = "mse"          # 'mse' on sigmoid outputs, or 'bce' with logits (1-channel data)
  recon_weight: float = 1.0
  pred_weight: float = 1.0
  var_weight: float = 0.5
  var_target: float = 1.0
  grad_weight: float = 1.0
  alive_weight: float = 0.5   # 0.5 is FluidWorld's code default; 0 is the "fair" setting
  alive_target: float = 1.2


def pixel_loss(logits, target, kind: str = "mse"):
  if kind == "mse":
    return jnp.mean((jax.nn.sigmoid(logits) - target) ** 2)
  if kind == "bce":
    return jnp.mean(sigmoid_bce(logits, target))
  raise ValueError(f"recon loss must be one of {RECON_LOSSES}, got {kind!r}")


def sigmoid_bce(logits, target):
  # log(1 + e^x) - x*t, written stably (what BCEWithLogits computes).
  return jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def variance_hinge(z, target: float = 1.0):
  """mean_c max(0, target - std_{B,H,W}(z_c)), with torch's unbiased std."""
  var = jnp.var(z.reshape(-1, z.shape[-1]), axis=0, ddof=1)
  return jnp.mean(jax.nn.relu(target - jnp.sqrt(var + 1e-8)))   # eps keeps d/dvar finite at 0


def gradient_l1(logits, target):
  """L1 between forward differences (cropped, not zero-padded) of sigmoid(logits) and target."""
  p = jax.nn.sigmoid(logits)
  dy = lambda a: a[:, 1:] - a[:, :-1]
  dx = lambda a: a[:, :, 1:] - a[:, :, :-1]
  return jnp.mean(jnp.abs(dy(p) - dy(target))) + jnp.mean(jnp.abs(dx(p) - dx(target)))


def pde_alive(energy, target: float = 1.2):
  """(mean |du| - target)^2: keeps the PDE from settling (FluidWorld code only)."""
  return (energy - target) ** 2


def world_model_loss(cfg: LossConfig, x_t, x_next, recon_logits, pred_logits, z, energy=None):
  """One transition's loss and its terms."""
  terms = {
      "recon": pixel_loss(recon_logits, x_t, cfg.recon),
      "pred": pixel_loss(pred_logits, x_next, cfg.recon),
      "var": variance_hinge(z, cfg.var_target),
      "grad": 0.5 * (gradient_l1(recon_logits, x_t) + gradient_l1(pred_logits, x_next)),
  }
  loss = (cfg.recon_weight * terms["recon"] + cfg.pred_weight * terms["pred"]
          + cfg.var_weight * terms["var"] + cfg.grad_weight * terms["grad"])
  if energy is not None:
    terms["energy"] = energy
    terms["alive"] = pde_alive(energy, cfg.alive_target)
    loss = loss + cfg.alive_weight * terms["alive"]
  return loss, terms


# ---------------------------------------------------------------------------------------------
# Training window and rollout.

def _caller(model, variables, update: bool):
  """apply(method, *args) -> (out, variables'); non-param collections mutate only if `update`."""
  params = {"params": variables["params"]}
  mutable = [c for c in variables if c != "params"] if update else False

  def apply(extra, method, *args):
    v = {**params, **extra}
    if mutable:
      out, new = model.apply(v, *args, method=method, mutable=mutable)
      return out, {**extra, **new}
    return model.apply(v, *args, method=method), extra
  return apply, {c: x for c, x in variables.items() if c != "params"}


def _time_major(frames):
  return jnp.swapaxes(frames, 0, 1)


def _zero_latent(apply, extra, x0, train):
  z = jax.eval_shape(lambda: apply(extra, "encode", x0, train)[0][0])
  return jnp.zeros(z.shape, z.dtype)


def window_loss(model, variables, frames, *, loss: LossConfig = LossConfig(),
                state_grad: str = "detach", train: bool = True, update_bio: bool = True,
                remat: bool = False, unroll: int | bool = True):
  """Teacher-forced loss over a window frames [B, T+1, H, W, C], averaged over t = 0..T-1.

  state_grad: 'detach' stops gradients through the carried state (FluidWorld's code: each
  frame's loss is backpropagated on its own); 'bptt' backpropagates through it (the paper text).
  remat recomputes each time step in the backward pass. unroll is lax.scan's: fully unrolled by
  default, because XLA:CPU runs weight-gradient convolutions inside a while loop ~20x slower.
  Returns (loss, (metrics, collections)): per-term means, 'loss_per_step' [T], and the non-param
  collections after the window (updated only when update_bio).
  """
  if state_grad not in STATE_GRADS:
    raise ValueError(f"state_grad must be one of {STATE_GRADS}, got {state_grad!r}")
  apply, extra = _caller(model, variables, update_bio)
  state, _ = apply(extra, "init_state", _zero_latent(apply, extra, frames[:, 0], train))

  def body(carry, x_t):
    state, extra = carry
    (z, aux), extra = apply(extra, "encode", x_t, train)
    if state_grad == "detach":
      state = lax.stop_gradient(state)
    (state, latent), extra = apply(extra, "step", state, z)
    return (state, extra), (z, latent, aux.get("energy"))

  if remat:
    body = jax.checkpoint(body)
  (_, extra), (z, latent, energy) = lax.scan(body, (state, extra),
                                             _time_major(frames[:, :-1]), unroll=unroll)
  # The decoder is stateless, so it runs once on all T steps' recon and prediction latents,
  # outside the scan (bigger batches, and no convolutions inside a loop).
  t, b = z.shape[:2]
  logits, _ = apply(extra, "decode", jnp.concatenate([z, latent]).reshape(2 * t * b, *z.shape[2:]))
  recon, pred = jnp.split(logits.reshape(2, t, b, *logits.shape[1:]), 2)
  per_step = jax.vmap(functools.partial(world_model_loss, loss))
  losses, terms = per_step(_time_major(frames[:, :-1]), _time_major(frames[:, 1:]), recon[0],
                           pred[0], z, energy)
  metrics = {k: jnp.mean(v) for k, v in terms.items()}
  metrics["loss_per_step"] = losses
  return jnp.mean(losses), (metrics, extra)


def _rms(tree):
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  sq = sum(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) for x in leaves)
  n = sum(x[0].size for x in leaves)
  return jnp.sqrt(sq / n)


def rollout(model, variables, context, horizon: int, *, feedback: str = "latent",
            update_bio: bool = False):
  """Teacher-forced over context [B, T0, H, W, C], then `horizon` open-loop predictions.

  feedback: 'latent' feeds the predicted latent back (FluidWorld's protocol); 'reencode'
  decodes, applies the sigmoid and encodes the frame again (the same input path for every model).
  Returns (frames [B, horizon, H, W, C] in [0, 1], diagnostics): per-step 'latent_rms' and
  'state_rms' [B, horizon]; 'context' (encoder aux over the context) and, for 'reencode',
  'reencode' (encoder aux of each fed-back frame), both stacked over time on axis 0.
  """
  if feedback not in FEEDBACKS:
    raise ValueError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
  apply, extra = _caller(model, variables, update_bio)
  latent0 = _zero_latent(apply, extra, context[:, 0], False)
  state, _ = apply(extra, "init_state", latent0)

  def observe(carry, x):
    state, _, extra = carry
    (z, aux), extra = apply(extra, "encode", x, False)
    (state, latent), extra = apply(extra, "step", state, z)
    return (state, latent, extra), aux

  (state, latent, extra), context_aux = lax.scan(observe, (state, latent0, extra),
                                                 _time_major(context))

  def predict(carry, _):
    state, latent, extra = carry
    logits, extra = apply(extra, "decode", latent)
    frame = jax.nn.sigmoid(logits)
    diag = {"latent_rms": _rms(latent), "state_rms": _rms(state)}
    if feedback == "latent":
      z = latent
    else:
      (z, diag["reencode"]), extra = apply(extra, "encode", frame, False)
    # The last iteration's step only feeds its diagnostics; it keeps the loop uniform.
    (state, latent), extra = apply(extra, "step", state, z)
    return (state, latent, extra), (frame, diag)

  (_, _, extra), (frames, diags) = lax.scan(predict, (state, latent, extra), None, length=horizon)
  diags = dict(diags, context=context_aux)
  for k in ("latent_rms", "state_rms"):
    diags[k] = jnp.swapaxes(diags[k], 0, 1)
  if update_bio:
    diags["collections"] = extra
  return _time_major(frames), diags
