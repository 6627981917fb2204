import functools

import jax
import jax.numpy as jnp
import numpy as np

from substrax.models import attention
from substrax.models.icl import ICLTransformer, interleave
from substrax.models.transformer import BlockConfig


def test_interleave_layout():
  xs = jnp.arange(12.0).reshape(1, 3, 4)
  ys = jnp.array([[10.0, 20.0, 30.0]])
  t = np.asarray(jax.jit(interleave)(xs, ys))
  np.testing.assert_array_equal(t[0, 0], xs[0, 0])
  np.testing.assert_array_equal(t[0, 1], [10.0, 0, 0, 0])
  np.testing.assert_array_equal(t[0, 4], xs[0, 2])


def test_prediction_k_sees_only_the_first_k_pairs():
  model = ICLTransformer(n_points=8, width=32, depth=2, block=BlockConfig(num_heads=4))
  xs = jax.random.normal(jax.random.key(0), (2, 8, 3))
  ys = jax.random.normal(jax.random.key(1), (2, 8))
  params = jax.jit(model.init)(jax.random.key(2), xs, ys)
  apply = jax.jit(model.apply)
  preds = apply(params, xs, ys)
  k = 4
  moved = apply(params, xs.at[:, k + 1:].set(5.0), ys.at[:, k:].set(-5.0))
  np.testing.assert_allclose(moved[:, :k + 1], preds[:, :k + 1], atol=1e-5)
  assert not np.allclose(moved[:, k + 1:], preds[:, k + 1:])


def test_xla_softmax_attention_matches_jax_reference():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 9, 4, 16))

  @functools.partial(jax.jit, static_argnums=3)
  def ours_and_ref(q, k, v, causal):
    return (attention.softmax_attention(q, k, v, causal=causal, impl="xla"),
            jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla"))
  for causal in (True, False):
    ours, ref = ours_and_ref(q, k, v, causal)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
