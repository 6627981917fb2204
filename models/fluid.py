"""FluidWorld: a reaction-diffusion world model (Polly 2026), reimplemented from its equations.

Each PDE step on u [B, H, W, C] (explicit Euler):

  diff = sum_k softplus(D_k) * Lap_{d_k}(u)            (* sigmoid(gate(u)) with the content gate)
  react = W2 gelu(W1 u + b1) + b2                      (position-wise, hidden 2C)
  h_g += sigmoid(Wg mean_hw(u)) * tanh(Wv mean_hw(u))  (MemoryPump, global)
  h_l = upsample(W_l pool_4x4(u))                      (local memory)
  u += dt * (diff + react + softplus(a_g) h_g + softplus(a_l) h_l),  RMSNorm every 2 steps

The encoder stacks such layers on a patch embedding (z = layers(u0) + u0), then applies lateral
inhibition and synaptic fatigue; the BeliefField carries a state s across frames (gated write,
3 PDE steps with a Hebbian diffusion gain). Every point where the paper and its code differ is
a field; defaults follow the code of the paper's UCF-101 run (see docs/fluidworld.md §1).

The PDE maths are pure functions over explicit parameter dicts, so sub-steps run in lax.scan.
Non-learned state (fatigue health, Hebbian gain) lives in the 'bio' collection and changes
only when that collection is mutable.
"""
import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from substrax.models.sharding import param_init
from substrax.models.video import (PatchEmbed, PixelDecoder, WorldModel, gelu,
                                   torch_bias_init, torch_kernel_init)

BOUNDARIES = ("edge", "periodic", "zero")
ADAPTIVE = ("off", "sample", "batch")
COMBINES = ("stack", "sum")
LOCAL_GRID = 4   # the local memory pools u to 4x4
_PAD_MODE = {"edge": "edge", "periodic": "wrap", "zero": "constant"}


# ---------------------------------------------------------------------------------------------
# Pure PDE pieces. u is [..., H, W, C].

def _neighbour_sum(u, d, axis, boundary):
  """u(x + d) + u(x - d) along `axis`, by padding and slicing (far faster on CPU than a
  grouped convolution)."""
  n = u.shape[axis]
  pad = [(0, 0)] * u.ndim
  pad[axis] = (d, d)
  p = jnp.pad(u, pad, mode=_PAD_MODE[boundary])
  return lax.slice_in_dim(p, 0, n, axis=axis) + lax.slice_in_dim(p, 2 * d, 2 * d + n, axis=axis)


def laplacian(u, dilation: int = 1, boundary: str = "edge"):
  """5-point Laplacian with neighbours `dilation` pixels away.

  boundary: 'edge' replicates the border (FluidWorld; a dilation >= the grid size couples each
  pixel to its row's and column's border values), 'periodic' wraps, 'zero' pads with zeros.
  """
  if boundary not in BOUNDARIES:
    raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
  ndim = u.ndim
  return (_neighbour_sum(u, dilation, ndim - 3, boundary)
          + _neighbour_sum(u, dilation, ndim - 2, boundary) - 4 * u)


def diffusion(u, coeffs, dilations: Sequence[int], boundary: str = "edge"):
  """sum_k coeffs[k] * Lap_{d_k}(u); coeffs [n_dil, C] are the per-channel D_k."""
  return sum(coeffs[k] * laplacian(u, d, boundary) for k, d in enumerate(dilations))


def dense(p, x):
  return x @ p["kernel"] + p["bias"]


def rms_norm(u, scale, eps: float = 1e-8):
  return u * lax.rsqrt(jnp.mean(u * u, axis=-1, keepdims=True) + eps) * scale


def pool(u, grid: int):
  """Average-pools [B, H, W, C] to [B, grid, grid, C] (adaptive pooling for divisible sizes)."""
  b, h, w, c = u.shape
  if h % grid or w % grid:
    raise ValueError(f"cannot pool a {h}x{w} grid to {grid}x{grid}")
  return u.reshape(b, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4))


def local_memory(p, u, grid: int):
  """Bilinear upsampling of a 1x1 projection of u pooled to grid x grid."""
  g = dense(p, pool(u, min(grid, u.shape[1])))
  return jax.image.resize(g, u.shape, "bilinear")


def pde_rhs(p, u, pump, *, dilations, boundary, gain=None):
  """du/dt of one PDE step and the updated global memory `pump` [B, C].

  The terms present in `p` are used: 'diffusion' (raw D [n_dil, C]), 'gate', 'react_in' and
  'react_out', 'pump_gate'/'pump_value'/'pump_alpha', 'local'/'local_alpha'. `gain` multiplies
  the diffusion term (the BeliefField's Hebbian 1 + 0.5 M).
  """
  rhs = jnp.zeros_like(u)
  if "diffusion" in p:
    diff = diffusion(u, jax.nn.softplus(p["diffusion"]), dilations, boundary)
    if "gate" in p:
      diff = diff * jax.nn.sigmoid(dense(p["gate"], u))
    if gain is not None:
      diff = diff * gain
    rhs = rhs + diff
  if "react_in" in p:
    rhs = rhs + dense(p["react_out"], gelu(dense(p["react_in"], u)))
  if "pump_gate" in p:
    m = jnp.mean(u, axis=(1, 2))
    pump = pump + jax.nn.sigmoid(dense(p["pump_gate"], m)) * jnp.tanh(dense(p["pump_value"], m))
    rhs = rhs + jax.nn.softplus(p["pump_alpha"]) * pump[:, None, None, :]
  if "local" in p:
    rhs = rhs + jax.nn.softplus(p["local_alpha"]) * local_memory(p["local"], u, LOCAL_GRID)
  return rhs, pump


def lateral_inhibition(z, beta: float = 0.3, floor: float = 0.2):
  """Scales each channel by 1 - beta (1 - |z| / max_c |z|), at least `floor` (never binds)."""
  peak = jnp.max(jnp.abs(z), axis=-1, keepdims=True)
  return z * jnp.maximum(1 - beta * (1 - jnp.abs(z) / (peak + 1e-6)), floor)


def hebbian_update(m, u, decay: float = 0.99, rate: float = 0.01, max_gain: float = 2.0):
  """M <- clip(decay M + rate mean_B relu(u * avgpool3(u)), 0, max_gain), without gradient."""
  u = lax.stop_gradient(u)
  coactive = jax.nn.relu(u * nn.avg_pool(u, (3, 3), padding="SAME", count_include_pad=True))
  return jnp.clip(decay * m + rate * jnp.mean(coactive, axis=0), 0.0, max_gain)


# ---------------------------------------------------------------------------------------------
# Parameter declarations (returned as dicts for the pure functions above).

class Affine(nn.Module):
  """Declares a Linear / Conv1x1's parameters (PyTorch init) and returns them unapplied."""
  features: int
  fan_in: int
  axes: tuple = ("embed", "mlp")
  kernel_init: nn.initializers.Initializer | None = None
  bias_init: nn.initializers.Initializer | None = None

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", param_init(self.kernel_init or torch_kernel_init, *self.axes),
                        (self.fan_in, self.features))
    bias = self.param("bias", param_init(self.bias_init or torch_bias_init(self.fan_in),
                                         self.axes[1]), (self.features,))
    return {"kernel": kernel, "bias": bias}


def _scalar(module, name, value):
  return module.param(name, param_init(nn.initializers.constant(value)), ())


def _pde_params(module, dim, *, n_dil, diffusion, gate, reaction, pump, local):
  """The PDE step's parameters, created in `module`'s compact scope."""
  p = {}
  if diffusion:
    p["diffusion"] = module.param("diffusion", param_init(nn.initializers.constant(0.1), None,
                                                          "embed"), (n_dil, dim))
    if gate:   # zero weights, bias 2: sigmoid = 0.88 everywhere, close to isotropic at init
      p["gate"] = Affine(dim, dim, kernel_init=nn.initializers.zeros,
                         bias_init=nn.initializers.constant(2.0), name="gate")()
  if reaction:
    p["react_in"] = Affine(2 * dim, dim, name="react_in")()
    p["react_out"] = Affine(dim, 2 * dim, axes=("mlp", "embed"), name="react_out")()
  if pump:
    p["pump_gate"] = Affine(dim, dim, name="pump_gate")()
    p["pump_value"] = Affine(dim, dim, name="pump_value")()
    p["pump_alpha"] = _scalar(module, "pump_alpha", 0.1)
  if local:
    p["local"] = Affine(dim, dim, name="local")()
    p["local_alpha"] = _scalar(module, "local_alpha", 0.05)
  return p


def _where_live(live, new, old):
  return jnp.where(live.reshape(live.shape + (1,) * (new.ndim - 1)), new, old)


class FluidLayer(nn.Module):
  """One encoder PDE layer: `max_steps` Euler steps in lax.scan; the MemoryPump restarts at 0.

  At eval (train=False) with adaptive != 'off', integration stops per sample ('sample') or for
  the whole batch ('batch', FluidWorld's rule) once step >= min_steps and the last `patience`
  turbulence values (relative change of u pooled to 8x8) are below stop_eps. Shapes stay
  static: all steps run and a stopped sample's u is frozen.
  Returns (u, {'energy': mean |du/dt| over steps and samples, 'steps_used': [B] int32}).
  """
  dim: int
  max_steps: int = 6
  dilations: Sequence[int] = (1, 4, 16)
  boundary: str = "edge"
  dt0: float = 0.1
  dt_clip: tuple[float, float] = (0.005, 0.15)   # gated layer's code; FluidLayer2D used 0.35
  norm_every: int = 2                            # RMSNorm after every 2nd step; 0 = never
  diffusion: bool = True                         # False: D = 0 ablation (no coefficients)
  content_gate: bool = True
  reaction: bool = True
  global_memory: bool = True
  local_memory: bool = True
  adaptive: str = "sample"
  min_steps: int = 3
  patience: int = 2
  stop_eps: float = 0.08
  probe_grid: int = 8
  remat: bool = False
  unroll: int | bool = 1         # lax.scan's unroll of the sub-steps

  @nn.compact
  def __call__(self, u, train: bool = False):
    if self.adaptive not in ADAPTIVE:
      raise ValueError(f"adaptive must be one of {ADAPTIVE}, got {self.adaptive!r}")
    p = _pde_params(self, self.dim, n_dil=len(self.dilations), diffusion=self.diffusion,
                    gate=self.content_gate, reaction=self.reaction, pump=self.global_memory,
                    local=self.local_memory)
    scale = self.param("norm_scale", param_init(nn.initializers.ones, "embed"), (self.dim,))
    log_dt = _scalar(self, "log_dt", math.log(self.dt0))
    dt = jnp.clip(jnp.exp(log_dt), *self.dt_clip)

    def step(u, pump, tau):
      rhs, pump = pde_rhs(p, u, pump, dilations=self.dilations, boundary=self.boundary)
      u = u + dt * rhs
      if self.norm_every:
        u = jnp.where((tau + 1) % self.norm_every == 0, rms_norm(u, scale), u)
      return u, pump, jnp.mean(jnp.abs(rhs), axis=(1, 2, 3))

    if self.remat:
      step = jax.checkpoint(step)
    pump = jnp.zeros((u.shape[0], self.dim), u.dtype)
    taus = jnp.arange(self.max_steps)
    batch = u.shape[0]

    if train or self.adaptive == "off":
      def body(carry, tau):
        u, pump, e = step(*carry, tau)
        return (u, pump), e
      (u, _), energy = lax.scan(body, (u, pump), taus, unroll=self.unroll)
      return u, {"energy": jnp.mean(energy),
                 "steps_used": jnp.full((batch,), self.max_steps, jnp.int32)}

    grid = min(self.probe_grid, u.shape[1])

    def adaptive_body(carry, tau):
      u, pump, probe, below, done, used, esum = carry
      u_new, pump_new, e = step(u, pump, tau)
      probe_new = pool(u_new, grid)
      change, ref = jnp.abs(probe_new - probe), jnp.abs(probe)
      if self.adaptive == "sample":
        turb = change.mean(axis=(1, 2, 3)) / (ref.mean(axis=(1, 2, 3)) + 1e-8)
      else:
        turb = jnp.full((batch,), change.mean() / (ref.mean() + 1e-8))
      below = jnp.concatenate([below[:, 1:], (turb < self.stop_eps)[:, None]], axis=1)
      stop = (tau + 1 >= self.min_steps) & jnp.all(below, axis=1)
      live = ~done
      carry = (_where_live(live, u_new, u), _where_live(live, pump_new, pump),
               _where_live(live, probe_new, probe), below, done | (live & stop),
               used + live, esum + jnp.where(live, e, 0.0))
      return carry, None

    init = (u, pump, pool(u, grid), jnp.zeros((batch, self.patience), bool),
            jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,)))
    (u, _, _, _, _, used, esum), _ = lax.scan(adaptive_body, init, taus, unroll=self.unroll)
    return u, {"energy": jnp.mean(esum / used), "steps_used": used}


class SynapticFatigue(nn.Module):
  """z * health; each mutable call spends health by channel use and recovers it (FluidWorld).

  health [C] is shared by the batch and persists across calls in the 'bio' collection.
  """
  cost: float = 0.1
  recovery: float = 0.02
  floor: float = 0.1

  @nn.compact
  def __call__(self, z):
    health = self.variable("bio", "health", jnp.ones, (z.shape[-1],), z.dtype)
    out = z * health.value
    if self.is_mutable_collection("bio") and not self.is_initializing():
      use = jnp.mean(jnp.abs(lax.stop_gradient(z)), axis=(0, 1, 2))
      health.value = jnp.clip(health.value - self.cost * use + self.recovery, self.floor, 1.0)
    return out


class BeliefField(nn.Module):
  """The temporal state: s = gamma s + sigmoid(Wg z) tanh(Wv z), then `steps` PDE steps.

  The evolve has reaction, a MemoryPump carried across frames, a Hebbian gain (1 + 0.5 M) on
  diffusion with M [h, w, C] in 'bio', and RMSNorm only after the steps in `norm_steps`
  (zero-based; FluidWorld normalises after step 2 only, so its output is not normalised).
  dead_params adds the unused `stimulus_proj` (1->d->d) and `read_proj` (LayerNorm + Linear)
  that the paper's parameter count includes.
  """
  dim: int
  steps: int = 3
  dilations: Sequence[int] = (1, 4)
  boundary: str = "edge"
  dt0: float = 0.1
  dt_clip: tuple[float, float] = (0.01, 0.3)
  gamma0: float = 0.95
  norm_steps: Sequence[int] = (1,)
  diffusion: bool = True
  reaction: bool = True
  memory: bool = True
  hebbian: bool = True
  dead_params: bool = False
  remat: bool = False
  unroll: int | bool = 1

  def init_state(self, z):
    return {"s": jnp.zeros_like(z), "pump": jnp.zeros((z.shape[0], z.shape[-1]), z.dtype)}

  @nn.compact
  def __call__(self, state, z):
    """Returns (new state, s): s [B, h, w, d] is the latent that predicts the next frame."""
    d = self.dim
    write_gate = Affine(d, d, name="write_gate")()
    write_value = Affine(d, d, name="write_value")()
    log_gamma = _scalar(self, "log_gamma", math.log(self.gamma0))
    p = _pde_params(self, d, n_dil=len(self.dilations), diffusion=self.diffusion, gate=False,
                    reaction=self.reaction, pump=self.memory, local=False)
    scale = self.param("norm_scale", param_init(nn.initializers.ones, "embed"), (d,))
    log_dt = _scalar(self, "log_dt", math.log(self.dt0))
    if self.dead_params:
      self._declare_dead_params()

    gamma = jnp.clip(jnp.exp(log_gamma), 0.5, 0.99)
    s = gamma * state["s"] + jax.nn.sigmoid(dense(write_gate, z)) * jnp.tanh(dense(write_value, z))
    dt = jnp.clip(jnp.exp(log_dt), *self.dt_clip)
    if self.hebbian:
      m_var = self.variable("bio", "hebbian", jnp.zeros, z.shape[1:], z.dtype)
      m = m_var.value
    else:
      m = jnp.zeros(z.shape[1:], z.dtype)
    learn = self.hebbian and self.is_mutable_collection("bio") and not self.is_initializing()

    def step(carry, tau):
      u, pump, m = carry
      gain = 1 + 0.5 * m if self.hebbian else None
      rhs, pump = pde_rhs(p, u, pump, dilations=self.dilations, boundary=self.boundary,
                          gain=gain)
      if learn:
        m = hebbian_update(m, u)
      u = u + dt * rhs
      if self.norm_steps:
        u = jnp.where(jnp.isin(tau, jnp.asarray(self.norm_steps)), rms_norm(u, scale), u)
      return (u, pump, m), None

    if self.remat:
      step = jax.checkpoint(step)
    (s, pump, m), _ = lax.scan(step, (s, state["pump"], m), jnp.arange(self.steps),
                              unroll=self.unroll)
    if learn:
      m_var.value = m
    return {"s": s, "pump": pump}, s

  def _declare_dead_params(self):
    d = self.dim
    Affine(d, 1, axes=(None, "embed"), name="stimulus_in")()
    Affine(d, d, name="stimulus_out")()
    self.param("read_norm_scale", param_init(nn.initializers.ones, "embed"), (d,))
    self.param("read_norm_bias", param_init(nn.initializers.zeros, "embed"), (d,))
    Affine(d, d, name="read_out")()


@dataclasses.dataclass(frozen=True)
class FluidConfig:
  """FluidWorld's PDE hyperparameters (a model.fluid config block); defaults are the paper's
  UCF-101 model.

  Paper/code switches: content_gate, dt_clip (0.15 code, 0.35 paper text), dilations,
  num_layers / layer_steps, fatigue, hebbian, dead_params, diffusion (False: D = 0 ablation),
  adaptive (eval stopping). combine: 'stack' feeds each layer the previous one's output
  (z = L_n(...L_1(u0)) + u0); 'sum' adds the layers applied to u0 in parallel
  (z = sum_i L_i(u0) + u0).
  """
  num_layers: int = 3
  layer_steps: int = 6
  dilations: Sequence[int] = (1, 4, 16)
  boundary: str = "edge"
  dt_clip: tuple[float, float] = (0.005, 0.15)
  content_gate: bool = True
  diffusion: bool = True
  reaction: bool = True
  memory: bool = True          # the layers' global + local memory and the BeliefField's pump
  combine: str = "stack"
  adaptive: str = "sample"
  inhibition: bool = True
  fatigue: bool = True
  hebbian: bool = True
  belief_steps: int = 3
  belief_dilations: Sequence[int] = (1, 4)
  belief_dt_clip: tuple[float, float] = (0.01, 0.3)
  dead_params: bool = True
  remat: bool = False          # recompute PDE sub-steps in the backward pass
  unroll: int | bool = 1       # unroll of the PDE sub-step scans


class FluidWorld(WorldModel):
  """PatchEmbed -> FluidLayers (+ skip) -> inhibition -> fatigue; BeliefField; PixelDecoder.

  Defaults are the paper's UCF-101 model (64x64x3, d=128, 800,975 params).
  """
  config: FluidConfig = FluidConfig()

  def setup(self):
    c = self.config
    if c.combine not in COMBINES:
      raise ValueError(f"combine must be one of {COMBINES}, got {c.combine!r}")
    self.embed = PatchEmbed(self.dim, self.patch, "rmsnorm")
    self.layers = [
        FluidLayer(self.dim, c.layer_steps, tuple(c.dilations), c.boundary, dt_clip=c.dt_clip,
                   diffusion=c.diffusion, content_gate=c.content_gate, reaction=c.reaction,
                   global_memory=c.memory, local_memory=c.memory, adaptive=c.adaptive,
                   remat=c.remat, unroll=c.unroll)
        for _ in range(c.num_layers)]
    if c.fatigue:
      self.fatigue_gate = SynapticFatigue()
    self.belief = BeliefField(self.dim, c.belief_steps, tuple(c.belief_dilations), c.boundary,
                              dt_clip=c.belief_dt_clip, diffusion=c.diffusion,
                              reaction=c.reaction, memory=c.memory, hebbian=c.hebbian,
                              dead_params=c.dead_params, remat=c.remat, unroll=c.unroll)
    self.decoder = PixelDecoder(self.channels, self.decoder_mid, self.patch)

  def encode(self, x, train: bool = False):
    """x [B, H, W, C] -> (z [B, H/p, W/p, d], {'energy', 'steps_used' [B, num_layers]})."""
    c = self.config
    stack = c.combine == "stack"
    u0 = self.embed(x)
    u, outs, auxes = u0, [], []
    for layer in self.layers:
      out, aux = layer(u if stack else u0, train)
      u = out
      outs.append(out)
      auxes.append(aux)
    z = (u if stack else sum(outs)) + u0
    if c.inhibition:
      z = lateral_inhibition(z)
    if c.fatigue:
      z = self.fatigue_gate(z)
    return z, {"energy": jnp.mean(jnp.stack([a["energy"] for a in auxes])),
               "steps_used": jnp.stack([a["steps_used"] for a in auxes], axis=-1)}

  def init_state(self, z):
    return self.belief.init_state(z)

  def step(self, state, z):
    return self.belief(state, z)
