"""Property tests for every attention kind: fast form = quadratic form, causality, padding,
FAVOR+ convergence, local = softmax at full window, ReLU attention by hand, and 50 ICL training
steps per kind."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import icl_config
from substrax.models import attention
from substrax.models.attention import linear, reference, softmax
from substrax.train import trainer

B, L, H, D = 2, 150, 2, 8   # L spans several chunks (64) and a ragged combiner grid (13 x 12)
CAUSAL_KINDS = attention.KINDS   # every kind here has a causal form


def rel_err(ours, ref, rows=None):
  """max |ours - ref| / max |ref|, over the query rows where `rows` [batch, length] is True."""
  if rows is not None:
    ours, ref = (jnp.where(rows[:, :, None, None], t, 0.0) for t in (ours, ref))
  return float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))


def fast_and_quadratic(kind, key, *, causal, mask):
  """(attend's fast form, the quadratic reference) of `kind` on the same random inputs."""
  ks = jax.random.split(key, 7)
  q, k, v = (jax.random.normal(kk, (B, L, H, D)) for kk in ks[:3])
  extras = {}
  if kind == "softmax":
    extras["segment_ids"] = jnp.arange(L)[None, :] // 50 + jnp.arange(B)[:, None]  # packed
    ref = reference.softmax(q, k, v, causal=causal, mask=mask, **extras)
  elif kind == "local":
    extras["window"] = 9
    ref = reference.local(q, k, v, causal=causal, mask=mask, **extras)
  elif kind == "linformer":
    extras["length_proj"] = tuple(jax.random.normal(kk, (L, 16)) * L ** -0.5 for kk in ks[3:5])
    ref = reference.linformer(q, k, v, *extras["length_proj"], causal=causal, mask=mask)
  elif kind == "combiner":
    extras["summary_query"] = jax.random.normal(ks[5], (H, D))
    ref = reference.combiner(q, k, v, extras["summary_query"], causal=causal, mask=mask)
  elif kind == "relu":
    ref = reference.relu(q, k, v, causal=causal, mask=mask)
  else:
    if kind == "performer":
      extras["omega"] = linear.orthogonal_features(ks[6], 32, D)
      qf, kf = (linear.performer_features(t, extras["omega"], is_query=is_q, causal=causal,
                                          mask=mask) for t, is_q in ((q, True), (k, False)))
    elif kind in attention.FEATURE_MAPS:
      qf, kf = attention.FEATURE_MAPS[kind](q), attention.FEATURE_MAPS[kind](k)
    else:
      qf, kf = q, k
    ref = reference.linear(qf, kf, v, causal=causal, mask=mask, normalize=kind != "lsa")
  ours = attention.attend(kind, q, k, v, causal=causal, impl="xla", mask=mask, **extras)
  return ours, ref


@pytest.mark.parametrize("kind", attention.KINDS)
def test_fast_form_equals_quadratic_form(kind):
  # Padding scattered through one example and a padded tail in the other.
  mask = jnp.ones((B, L), bool).at[0, ::7].set(False).at[1, 120:].set(False)
  for causal in (True, False):
    for m in (None, mask):
      ours, ref = fast_and_quadratic(kind, jax.random.key(0), causal=causal, mask=m)
      assert rel_err(ours, ref, m) <= 1e-5, (kind, causal, m is not None)


def test_relu_attention_by_hand():
  """Length 3, one head, d = 2. relu(q_i . k_j) = [[1, 0, 2], [0, 2, 0], [1, 1, 1]] (row i,
  column j); v = [1, 0], [0, 2], [4, 4]. Each output averages over the keys i may see."""
  q = jnp.array([[1., 0.], [0., 1.], [1., 1.]])
  k = jnp.array([[1., 0.], [-1., 2.], [2., -1.]])
  v = jnp.array([[1., 0.], [0., 2.], [4., 4.]])
  q, k, v = (jnp.stack([t, t])[:, :, None, :] for t in (q, k, v))   # [2, 3, 1, 2]
  attend = jax.jit(attention.attend, static_argnums=0, static_argnames="causal")
  run = lambda causal, mask=None: np.asarray(
      attend("relu", q, k, v, causal=causal, mask=mask))[:, :, 0]
  np.testing.assert_allclose(run(True)[0], [[1, 0], [0, 2], [5 / 3, 2]], rtol=1e-6)
  np.testing.assert_allclose(run(False)[0], [[3, 8 / 3], [0, 4 / 3], [5 / 3, 2]], rtol=1e-6)
  # Key 1 padded in the first example: it neither contributes (relu(q_2 . k_1) = 1) nor
  # counts, so query 2 averages v_0 and v_2 over 2 keys. The second example is all padding.
  mask = jnp.array([[True, False, True], [False, False, False]])
  for causal, row0 in ((True, [1, 0]), (False, [4.5, 4])):
    out = run(causal, mask)
    np.testing.assert_allclose(out[0, [0, 2]], [row0, [2.5, 2]], rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)   # no allowed key: 0, not NaN


def layer(kind, causal, width=32, heads=2):
  module = attention.Attention(heads, kind=kind, causal=causal, window=5, num_features=32,
                               low_rank=8, max_len=40)
  x = jax.random.normal(jax.random.key(1), (2, 40, width))
  params = module.init(jax.random.key(2), x)
  # Non-zero summary query and biases, so no part of a kind is trivially inert.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)
  return module, params, x


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_causal_kinds_are_prefix_invariant(kind):
  module, params, x = layer(kind, causal=True)
  t = 17
  changed = x.at[:, t + 1:].set(jax.random.normal(jax.random.key(4), x[:, t + 1:].shape) * 3)
  out, out_changed = module.apply(params, x), module.apply(params, changed)
  assert rel_err(out_changed[:, :t + 1], out[:, :t + 1]) <= 1e-5
  assert rel_err(out_changed[:, t + 1:], out[:, t + 1:]) > 1e-3   # the test can fail


@pytest.mark.parametrize("kind", attention.KINDS)
@pytest.mark.parametrize("causal", [True, False])
def test_padding_never_changes_real_tokens(kind, causal):
  module, params, x = layer(kind, causal=causal)
  mask = jnp.ones(x.shape[:2], bool).at[0, 3::4].set(False).at[1, 25:].set(False)
  noise = jax.random.normal(jax.random.key(5), x.shape) * 5
  out = module.apply(params, x, mask)
  out_other_padding = module.apply(params, jnp.where(mask[..., None], x, noise), mask)
  real = mask[..., None]
  assert float(jnp.max(jnp.abs(jnp.where(real, out_other_padding - out, 0.0)))) <= 1e-5 * float(
      jnp.max(jnp.abs(out)))
  assert bool(jnp.all(jnp.isfinite(out)))


def test_favor_error_falls_as_inverse_sqrt_features():
  """Relative error of FAVOR+ against exact softmax attention, averaged over feature draws."""
  b, length, h, d = 1, 128, 4, 16
  q, k, v = (0.5 * jax.random.normal(kk, (b, length, h, d))
             for kk in jax.random.split(jax.random.key(6), 3))
  exact = jax.jit(reference.softmax, static_argnames="causal")(q, k, v, causal=False)
  sizes = np.array([16, 64, 256, 1024])

  def error(key, m):
    omega = linear.orthogonal_features(key, m, d)
    qf = linear.performer_features(q, omega, is_query=True, causal=False)
    kf = linear.performer_features(k, omega, is_query=False, causal=False)
    approx = linear.linear_attention(qf, kf, v, causal=False, impl="xla")
    return jnp.linalg.norm(approx - exact) / jnp.linalg.norm(exact)

  error = jax.jit(error, static_argnums=1)
  errs = np.array([np.mean([error(jax.random.key(s), int(m)) for s in range(8)]) for m in sizes])
  slope = np.polyfit(np.log(sizes), np.log(errs), 1)[0]
  assert np.all(np.diff(errs) < 0), errs
  assert -0.75 <= slope <= -0.35, (slope, errs)


def test_orthogonal_features_are_orthogonal_within_a_block():
  @jax.jit
  def features_and_gram(key):
    omega = linear.orthogonal_features(key, 40, 16)   # blocks of 16, 16, 8 rows
    block = omega[:16] / jnp.linalg.norm(omega[:16], axis=1, keepdims=True)
    return omega, block @ block.T

  omega, gram = features_and_gram(jax.random.key(7))
  np.testing.assert_allclose(gram, np.eye(16), atol=1e-5)
  assert omega.shape == (40, 16)


@pytest.mark.parametrize("causal", [True, False])
def test_local_with_full_window_is_softmax(causal):
  q, k, v = (jax.random.normal(kk, (B, 37, H, D)) for kk in jax.random.split(jax.random.key(8), 3))
  local = jax.jit(softmax.local_attention, static_argnames=("window", "causal", "impl"))
  exact = jax.jit(reference.softmax, static_argnames="causal")
  for window in (37, 100):
    ours = local(q, k, v, window=window, causal=causal, impl="xla")
    assert rel_err(ours, exact(q, k, v, causal=causal)) <= 1e-5


@pytest.mark.parametrize("kind", [k for k in attention.KINDS
                                  if "pallas" in attention.SUPPORTED_IMPLS[k]])
def test_pallas_impl_matches_xla_in_values_and_gradients(kind):
  """The layer routed through the Pallas kernels (interpret mode here), padding mask included."""
  x = jax.random.normal(jax.random.key(10), (2, 40, 32))
  mask = jnp.ones((2, 40), bool).at[0, 30:].set(False).at[1, ::6].set(False)
  for causal in (True, False):
    outs = {}
    for impl in ("xla", "pallas"):
      module = attention.Attention(2, kind=kind, impl=impl, causal=causal, num_features=32)
      params = module.init(jax.random.key(2), x)
      loss = lambda p, x: jnp.sum(jnp.where(mask[..., None], module.apply(p, x, mask), 0.0) ** 2)
      out = jnp.where(mask[..., None], module.apply(params, x, mask), 0.0)  # real tokens only
      outs[impl] = (out, *jax.grad(loss, argnums=(0, 1))(params, x))
    for ours, ref in zip(jax.tree.leaves(outs["pallas"]), jax.tree.leaves(outs["xla"])):
      assert rel_err(ours, ref) <= 1e-5, (kind, causal)


def test_unsupported_impl_and_segments_are_rejected():
  x = jnp.zeros((1, 8, 16))
  with pytest.raises(ValueError, match="no impl 'cudnn'"):
    attention.Attention(2, kind="performer", impl="cudnn").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="segment_ids"):
    attention.Attention(2, kind="linear").init(jax.random.key(0), x, None,
                                               jnp.zeros((1, 8), jnp.int32))


def test_performer_redraws_features_on_schedule():
  module, params, x = layer("performer", causal=True)
  key = jax.random.key(9)
  at = lambda step: module.apply(params, x, rngs=attention.feature_rngs(key, step, 100))
  np.testing.assert_array_equal(at(0), at(99))
  assert not np.allclose(at(99), at(100))


@pytest.mark.parametrize("kind", attention.KINDS)
def test_icl_tiny_trains_with_every_kind(kind):
  """50 steps of the tiny ICL experiment (one block, to keep compiles short): the loss on the
  fixed held-out prompts falls, and the training loss stays finite."""
  config = icl_config(**{"model.attention.kind": kind, "model.depth": 1, "num_steps": 50,
                         "optim.learning_rate": 3e-3, "batch_size": 32})
  exp = trainer.setup(config)
  with exp.activate():
    state = exp.init()
    held_out = lambda s: float(exp.eval_step(s.params, s.model_state, exp.eval_data, s.step)["loss"])
    before = held_out(state)
    losses = []
    for _ in range(50):
      state, metrics = exp.train_step(state, exp.train_data)
      losses.append(float(metrics["loss"]))
    after = held_out(state)
  assert np.all(np.isfinite(losses))
  assert after < 0.97 * before, (kind, before, after)
