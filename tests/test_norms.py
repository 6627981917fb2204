"""Pre-LN, Pre-RMSNorm and Pre-CRMSNorm language models are one model (Jiang et al. 2023):
the converted parameters give the same logits, and the zero-mean reparameterisation trains
step for step as the LN model does; projecting after each Adam step instead does not.

Everything runs in float64 (restored to float32 for the rest of the suite), where the
differences are rounding, ~1e-15, against bounds of 1e-10 (logits) and 1e-8 (losses).
"""
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from substrax.data import lm as lm_data
from substrax.models import norm_conversion
from substrax.models.lm import LanguageModel
from substrax.models.transformer import BlockConfig, residual_width

import test_scan

VOCAB, WIDTH, DEPTH, HEADS, MAX_LEN = 32, 32, 2, 4, 32
BATCH, LENGTH, STEPS = 8, 32, 200
LOGIT_TOL, LOSS_TOL = 1e-10, 1e-8


pytestmark = pytest.mark.usefixtures("float64")   # conftest: x64 for this module


def _model(norm, zero_mean=False, positions="learned", scan=False):
  return LanguageModel(VOCAB, WIDTH, DEPTH, MAX_LEN,
                       BlockConfig(HEADS, norm=norm, positions=positions, zero_mean=zero_mean,
                                   dtype=jnp.float64, scan=scan))


def _logits(model, params, tokens):
  return model.apply({"params": params}, tokens)


_forward = jax.jit(_logits, static_argnums=0)


def _init(seed=0, positions="learned"):
  """Pre-LN params in float64 with a non-trivial affine: scales 1 + 0.3 N(0, 1), every bias
  (norms' and layers') 0.1 N(0, 1), and embeddings shifted off zero mean by 0.1."""
  return _perturbed_init(_model("layernorm", positions=positions), seed)


@functools.partial(jax.jit, static_argnums=(0, 1))   # compiled: eager, it takes seconds
def _perturbed_init(model, seed):
  params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, LENGTH), jnp.int32)))
  flat = flax.traverse_util.flatten_dict(params["params"])
  for i, (path, value) in enumerate(sorted(flat.items())):
    value = value.astype(jnp.float64)
    noise = jax.random.normal(jax.random.key(1000 * seed + i), value.shape, jnp.float64)
    if path[-1] == "scale":
      value = value + 0.3 * noise
    elif "bias" in path[-1]:
      value = value + 0.1 * noise
    elif path[-1] in ("embed", "pos_embedding"):
      value = value + 0.1
    flat[path] = value
  return flax.traverse_util.unflatten_dict(flat)


HMM = lm_data.hmm_params(0, 8, VOCAB, 0.1)   # loss floor ~2.30 nats, unigram 2.72, ln 32 = 3.47


def _tokens(seed, batch, length):
  """Sequences of an 8-state HMM with sparse rows, so there is something to learn."""
  sample = jax.jit(lm_data.sample_hmm, static_argnames=("batch", "length"))
  return sample(jax.random.key(seed), HMM, batch, length)


def _check_conversions(params, tokens):
  """max |logits| differences of the RMS and CRMS conversions against the LN model."""
  ln = _forward(_model("layernorm"), params, tokens)
  rms = _forward(_model("rmsnorm"), norm_conversion.to_rms(params), tokens)
  crms = _forward(_model("crmsnorm"), norm_conversion.to_crms(params), tokens)
  assert ln.dtype == jnp.float64 and np.isfinite(np.asarray(ln)).all()
  return float(jnp.abs(ln - rms).max()), float(jnp.abs(ln - crms).max())


def test_conversions_keep_the_logits():
  params, tokens = _init(), _tokens(1, BATCH, LENGTH)
  rms, crms = _check_conversions(params, tokens)
  print(f"random init: max|logits LN - RMS| {rms:.1e}, LN - CRMS {crms:.1e}")   # pytest -s
  assert rms <= LOGIT_TOL and crms <= LOGIT_TOL, (rms, crms)
  # The RMS params are those of a zero_mean model too: centring them again changes nothing.
  again = _forward(_model("rmsnorm", zero_mean=True), norm_conversion.to_rms(params), tokens)
  assert float(jnp.abs(again - _forward(_model("layernorm"), params, tokens)).max()) <= LOGIT_TOL
  # RMSNorm keeps its affine, so for it centring alone suffices and folding alone does not.
  ln = _forward(_model("layernorm"), params, tokens)
  centred = _forward(_model("rmsnorm"), norm_conversion.centre_writers(params), tokens)
  folded = _forward(_model("rmsnorm"), norm_conversion.fold_affine(params), tokens)
  assert float(jnp.abs(centred - ln).max()) <= LOGIT_TOL
  assert float(jnp.abs(folded - ln).max()) > 1e-2


def test_conversions_of_a_scanned_model():
  # model.scan stacks the layers in one 'blocks' tree: the same parameters, stacked, convert
  # to the stacked conversions and keep the logits.
  params, tokens = _init(), _tokens(2, BATCH, LENGTH)
  stack = lambda p: {**p, "backbone": test_scan.stack(p["backbone"], depth=DEPTH)}
  ln = _forward(_model("layernorm"), params, tokens)
  assert float(jnp.abs(_forward(_model("layernorm", scan=True), stack(params), tokens)
                       - ln).max()) <= LOGIT_TOL
  for norm, convert in (("rmsnorm", norm_conversion.to_rms),
                        ("crmsnorm", norm_conversion.to_crms)):
    converted = convert(stack(params))
    jax.tree.map(np.testing.assert_array_equal, converted, stack(convert(params)))
    got = _forward(_model(norm, scan=True), converted, tokens)
    assert float(jnp.abs(got - ln).max()) <= LOGIT_TOL, norm


def test_crms_params_have_the_residual_width_minus_one():
  params = norm_conversion.to_crms(_init())
  stream = residual_width(WIDTH, "crmsnorm")
  assert stream == WIDTH - 1
  expected = nn.meta.unbox(jax.eval_shape(
      _model("crmsnorm").init, jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32)))["params"]
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, expected)
  block = params["backbone"]["block_0"]
  assert params["embed"].shape == (VOCAB, stream)
  assert params["backbone"]["pos_embedding"].shape == (MAX_LEN, stream)
  assert block["attn"]["qkv_kernel"].shape == (stream, 3, HEADS, WIDTH // HEADS)
  assert block["attn"]["out_kernel"].shape == (HEADS, WIDTH // HEADS, stream)
  assert block["norm_attn"]["scale"].shape == (stream,)
  assert params["head"]["kernel"].shape == (stream, VOCAB)


def test_sinusoidal_positions_convert_to_zero_mean_rms():
  """The fixed table is no parameter, so only the zero_mean RMS model centres it."""
  params, tokens = _init(positions="sinusoidal"), _tokens(1, BATCH, LENGTH)
  ln = _forward(_model("layernorm", positions="sinusoidal"), params, tokens)
  rms = _forward(_model("rmsnorm", zero_mean=True, positions="sinusoidal"),
                 norm_conversion.to_rms(params), tokens)
  plain = _forward(_model("rmsnorm", positions="sinusoidal"), norm_conversion.to_rms(params),
                   tokens)
  assert float(jnp.abs(ln - rms).max()) <= LOGIT_TOL
  assert float(jnp.abs(ln - plain).max()) > 1e-3


def _train(model, params, batches, project=None):
  """AdamW on the next-token loss, one batch per step, `project` applied after each update;
  returns the final params and the loss of every step (before its update)."""
  opt = optax.adamw(3e-3, weight_decay=0.01)

  def loss_fn(p, batch):
    logits = _logits(model, p, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  def step(carry, batch):
    p, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, state = opt.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    return ((project(p) if project else p), state), loss

  @jax.jit
  def run(p, batches):
    (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), batches)
    return p, losses

  p, losses = run(params, batches)
  losses = np.asarray(losses)
  assert losses.dtype == np.float64 and np.isfinite(losses).all()
  return p, losses


@pytest.fixture(scope="module")
def ln_run():
  """The start, the batches, and the Pre-LN model trained on them: (params, losses)."""
  start = _init(seed=1)
  batches = _tokens(2, STEPS * BATCH, LENGTH + 1).reshape(STEPS, BATCH, LENGTH + 1)
  return start, batches, _train(_model("layernorm"), start, batches)


def test_conversions_of_a_trained_lm(ln_run):
  _, batches, (trained, losses) = ln_run
  assert losses[-20:].mean() < lm_data.hmm_unigram(HMM)   # it learned more than the marginal
  rms, crms = _check_conversions(trained, batches[0, :, :-1])
  print(f"trained LM: max|logits LN - RMS| {rms:.1e}, LN - CRMS {crms:.1e}")
  assert rms <= LOGIT_TOL and crms <= LOGIT_TOL, (rms, crms)


def test_zero_mean_rms_trains_as_layernorm(ln_run):
  """The same raw params and batches: the zero_mean RMS model sees the centred stream, on which
  RMS = LN, and depends on the raw writers only through their projection, so its gradients
  and hence AdamW's steps are the LN model's."""
  start, batches, (_, ln_losses) = ln_run
  _, rms_losses = _train(_model("rmsnorm", zero_mean=True), start, batches)
  gap = np.abs(ln_losses - rms_losses)
  print(f"LN vs zero-mean RMS, {STEPS} AdamW steps: max loss gap {gap.max():.1e}")
  assert gap.max() <= LOSS_TOL, gap.max()


def test_projecting_after_each_step_is_not_equivalent(ln_run):
  """A plain RMS model from the centred start, its writers re-centred after every AdamW step,
  computes the LN loss at step 0; but its gradients keep the mean component that the LN
  model's lack, and Adam's per-coordinate scaling lets it into the centred part as well
  (measured: 1.2e-3 after step 1, 5.6e-3 at the last step, 3.2e-2 at most)."""
  start, batches, (_, ln_losses) = ln_run
  _, losses = _train(_model("rmsnorm"), norm_conversion.centre_writers(start), batches,
                     project=norm_conversion.centre_writers)
  gap = np.abs(ln_losses - losses)
  print(f"projected after each step: loss gap {gap[-1]:.1e} at step {STEPS}, max {gap.max():.1e}")
  assert gap[0] <= LOSS_TOL
  assert gap[-1] >= 1e-4 and gap.max() >= 1e-3, (gap[-1], gap.max())

