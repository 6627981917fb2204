"""FluidWorld and its matched baselines: counts, PDE maths, gradients, bio state, smoke tests."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.models import video
from substrax.models.convlstm import ConvLSTMWorld
from substrax.models.fluid import FluidConfig, FluidLayer, FluidWorld, laplacian
from substrax.models.video_transformer import VideoTransformer

PAPER = dict(channels=3, dim=128)          # 64x64x3, patch 4 -> 16x16 latent (the defaults)
CPU = dict(channels=1, dim=64, decoder_mid=32)
TINY = dict(channels=1, dim=16, decoder_mid=16)
TINY_FLUID = FluidConfig(num_layers=1, layer_steps=2, dilations=(1, 2), belief_steps=2,
                         belief_dilations=(1,))


# These tests are compile-bound: XLA's backend at -O0 halves the compile time of a window's grad.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def init_key():
  # The RngBitGenerator PRNG compiles an init several times faster than threefry on CPU.
  return jax.random.key(0, impl="rbg")


def init(module, *args):
  return nn.unbox(fast_jit(module.init)(init_key(), *args))


def shapes(model, hw, channels):
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                 jnp.zeros((1, hw, hw, channels))))["params"]


def size(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_paper_parameter_counts():
  fw = shapes(FluidWorld(**PAPER), 64, 3)
  assert {k: size(v) for k, v in fw.items()} == {
      "embed": 6_400, "layers_0": 132_483, "layers_1": 132_483, "layers_2": 132_483,
      "belief": 165_891, "decoder": 231_235}
  assert size(fw) == 800_975
  tf = shapes(VideoTransformer(**PAPER), 64, 3)
  assert size(tf["temporal_in"]) + size(tf["temporal_block_0"]) + size(tf["temporal_norm"]) \
      == 198_528
  assert size(tf["block_0"]["attn"]) == 4 * 128 ** 2 + 4 * 128
  assert size(tf) == 800_067
  cl = shapes(ConvLSTMWorld(**PAPER), 64, 3)
  assert (size(cl["embed"]), size(cl["bottleneck"])) == (6_528, 113_032)
  assert size(cl["cell"]) + size(cl["out_proj"]) + size(cl["out_norm"]) == 451_200
  assert size(cl["decoder"]) == 231_235
  assert size(cl) == 801_995


def test_cpu_parameter_counts_match():
  fluid = FluidConfig(dilations=(1, 2, 8), belief_dilations=(1, 2))
  counts = [
      size(shapes(FluidWorld(**CPU, config=fluid), 32, 1)),
      size(shapes(VideoTransformer(**CPU, ffn=204), 32, 1)),
      # GroupNorm(8) cannot split 45 channels; 9 groups of 5 keep the matched width.
      size(shapes(ConvLSTMWorld(**CPU, enc_mid=45, enc_groups=9, hidden=32), 32, 1)),
  ]
  assert counts == [201_549, 201_637, 201_160]
  assert max(counts) / min(counts) - 1 < 0.005


def naive_laplacian(u, d, boundary):
  _, h, w, _ = u.shape
  out = np.zeros_like(u)

  def at(i, j):
    if boundary == "edge":
      return u[:, min(max(i, 0), h - 1), min(max(j, 0), w - 1)]
    if boundary == "periodic":
      return u[:, i % h, j % w]
    return u[:, i, j] if 0 <= i < h and 0 <= j < w else 0.0

  for i in range(h):
    for j in range(w):
      out[:, i, j] = at(i + d, j) + at(i - d, j) + at(i, j + d) + at(i, j - d) - 4 * u[:, i, j]
  return out


@pytest.mark.parametrize("boundary", ["edge", "periodic", "zero"])
@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_laplacian_matches_loop(boundary, dilation):
  u = np.random.default_rng(dilation).normal(size=(2, 5, 6, 3)).astype(np.float32)
  lap = jax.jit(laplacian, static_argnums=(1, 2))
  np.testing.assert_allclose(lap(jnp.asarray(u), dilation, boundary),
                             naive_laplacian(u, dilation, boundary), atol=1e-5)
  if boundary != "zero":   # zero padding makes a constant field's border non-zero
    assert np.all(lap(jnp.full((1, 5, 6, 2), 3.0), dilation, boundary) == 0)


def set_params(variables, **values):
  """Replaces top-level leaves of a FluidLayer's params, keeping shapes."""
  params = dict(variables["params"])
  for k, v in values.items():
    params[k] = jax.tree.map(lambda x: jnp.full_like(x, v), params[k])
  return {"params": params}


def test_no_diffusion_no_terms_leaves_state_unchanged():
  layer = FluidLayer(8, max_steps=2, dilations=(1,), norm_every=0, diffusion=False)
  u = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  v = set_params(init(layer, u), react_out=0.0, pump_value=0.0, local=0.0)
  out, _ = fast_jit(layer.apply, static_argnames="train")(v, u, train=True)
  np.testing.assert_array_equal(out, u)


@pytest.mark.parametrize("dt_d, grows", [(0.3, True), (0.2, False)])
def test_cfl_checkerboard(dt_d, grows):
  """Euler on the 5-point Laplacian scales a checkerboard by 1 - 8 dt D: stable iff dt D <= 1/4."""
  layer = FluidLayer(1, max_steps=5, dilations=(1,), boundary="periodic", norm_every=0,
                     dt_clip=(1e-3, 1.0), content_gate=False, reaction=False,
                     global_memory=False, local_memory=False)
  i, j = np.indices((8, 8))
  u = jnp.asarray(((-1.0) ** (i + j))[None, :, :, None], jnp.float32)
  dt, d = 0.1, dt_d / 0.1
  v = set_params(init(layer, u), log_dt=np.log(dt),
                 diffusion=np.log(np.expm1(d)))   # softplus(raw) = d
  out, _ = fast_jit(layer.apply, static_argnames="train")(v, u, train=True)
  ratio = float(jnp.abs(out).max())
  assert (ratio > 1.0) == grows
  np.testing.assert_allclose(ratio, abs(1 - 8 * dt_d) ** 5, rtol=1e-4)


def test_adaptive_stopping():
  layer = FluidLayer(8, max_steps=6, dilations=(1, 2))
  u = jnp.stack([jnp.ones((8, 8, 8)), 3 * jax.random.normal(jax.random.key(0), (8, 8, 8))])
  v = set_params(init(layer, u), react_out=0.0, pump_value=0.0, local=0.0)
  batch_layer = FluidLayer(8, max_steps=6, dilations=(1, 2), adaptive="batch")

  @fast_jit
  def steps_used(v, u):
    return [m.apply(v, u, train=t)[1]["steps_used"]
            for m, t in ((layer, False), (batch_layer, False), (layer, True))]

  sample, batch, train = map(np.asarray, steps_used(v, u))
  # A constant field never changes, so it stops at min_steps; the noisy one runs on (<= max).
  assert list(sample) == [3, 6]
  assert np.all(batch == batch[0]) and np.all(batch <= 6)   # FluidWorld's batch-wide rule
  assert np.all(train == 6)


@pytest.fixture(scope="module")
def tiny_fw():
  model = FluidWorld(**TINY, config=TINY_FLUID)
  frames = jax.random.uniform(jax.random.key(1), (2, 3, 32, 32, 1))
  return model, init(model, frames[:, 0]), frames


def test_state_grad_detach_vs_bptt(tiny_fw):
  """Frame 0 reaches the loss at t = 1 only through the carried state."""
  model, v, frames = tiny_fw

  @fast_jit
  def grads(frames):
    def step1(frames, mode):
      return video.window_loss(model, v, frames, state_grad=mode)[1][0]["loss_per_step"][1]
    return [jax.grad(step1)(frames, mode)[:, 0] for mode in video.STATE_GRADS]

  detach, bptt = grads(frames)
  assert np.all(np.asarray(detach) == 0.0)
  assert float(jnp.abs(bptt).max()) > 0


def test_bio_updates_only_when_mutable(tiny_fw):
  model, v, frames = tiny_fw
  x = frames[:, 0]
  encode = fast_jit(lambda v, mutable: model.apply(v, x, method="encode", mutable=mutable),
                   static_argnums=1)
  (z0, _), (z1, _) = encode(v, False), encode(v, False)
  np.testing.assert_array_equal(z0, z1)
  (z2, _), new = encode(v, ("bio",))
  np.testing.assert_array_equal(z2, z0)   # the update takes effect on the next call
  assert not np.allclose(new["bio"]["fatigue_gate"]["health"], v["bio"]["fatigue_gate"]["health"])
  (z3, _) = encode({**v, **new}, False)
  assert not np.allclose(z3, z0)
  step = fast_jit(lambda v, z: model.apply(v, model.apply(v, z, method="init_state"), z,
                                          method="step", mutable=["bio"]))
  _, new = step(v, z0)
  assert float(jnp.abs(new["bio"]["belief"]["hebbian"]).max()) > 0
  # Without fatigue the encoder holds no state: eval repeats exactly even while bio updates.
  calm = FluidWorld(**TINY, config=dataclasses.replace(TINY_FLUID, fatigue=False))
  bio = {"bio": {"belief": v["bio"]["belief"]}}
  encode_calm = fast_jit(lambda v: calm.apply(v, x, method="encode", mutable=["bio"]))
  (a, _), upd = encode_calm({"params": v["params"], **bio})
  (b, _), _ = encode_calm({"params": v["params"], **upd})
  np.testing.assert_array_equal(a, b)


def smoke(model, variables, frames):
  def loss(params):
    return video.window_loss(model, {**variables, "params": params}, frames)

  @fast_jit
  def run(variables):
    (value, (metrics, _)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    rolls = [video.rollout(model, variables, frames[:, :2], 3, feedback=f)[0]
             for f in video.FEEDBACKS]
    return value, grads, rolls

  value, grads, rolls = run(variables)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for r in rolls:
    assert r.shape == (2, 3, 32, 32, 1)
    assert float(r.min()) >= 0 and float(r.max()) <= 1


def test_smoke_fluidworld(tiny_fw):
  smoke(*tiny_fw)


@pytest.mark.parametrize("model", [
    VideoTransformer(channels=1, dim=16, ffn=32, depth=1, decoder_mid=16),
    ConvLSTMWorld(channels=1, dim=16, enc_mid=8, hidden=8, decoder_mid=16),
], ids=["transformer", "convlstm"])
def test_smoke_baselines(model):
  frames = jax.random.uniform(jax.random.key(1), (2, 3, 32, 32, 1))
  smoke(model, init(model, frames[:, 0]), frames)


def test_trivial_predictors():
  ctx = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 2, 2, 1) / 24
  assert np.all(video.zero_prediction(ctx, 5) == 0)
  np.testing.assert_array_equal(video.copy_last_prediction(ctx, 5)[:, 4], ctx[:, -1])
  np.testing.assert_allclose(video.context_mean_prediction(ctx, 2)[:, 1], ctx.mean(1))
