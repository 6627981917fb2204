import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.data import icl


@pytest.mark.parametrize("fc", icl.FUNCTION_CLASSES)
def test_shapes_determinism_and_truncation(fc):
  spec = icl.Spec(fc, n_dims=6, n_points=9, noise_std=0.5, sparsity=2)
  a = icl.sample(spec, jax.random.key(3), 32, dims_active=4)
  b = icl.sample(spec, jax.random.key(3), 32, dims_active=4)
  c = icl.sample(spec, jax.random.key(4), 32, dims_active=4)
  assert a["xs"].shape == (32, 9, 6) and a["ys"].shape == (32, 9)
  np.testing.assert_array_equal(a["ys"], b["ys"])
  assert not np.array_equal(a["ys"], c["ys"])
  np.testing.assert_array_equal(a["xs"][..., 4:], 0.0)
  assert np.all(np.isfinite(a["ys"]))


def test_classification_labels_are_signs():
  ys = icl.sample(icl.Spec("linear_classification", 5, 11), jax.random.key(0), 64)["ys"]
  assert set(np.unique(ys)) <= {-1.0, 1.0}


def test_sparse_linear_uses_exactly_s_coordinates():
  spec = icl.Spec("sparse_linear", n_dims=8, n_points=40, sparsity=3)
  b = icl.sample(spec, jax.random.key(1), 16)
  w = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(b["xs"], b["ys"])])
  assert np.all((np.abs(w) > 1e-4).sum(-1) == 3)


def test_skewed_covariance_spectrum_and_scale():
  spec = icl.Spec("linear", n_dims=5, n_points=50, covariance="skewed")
  x = np.asarray(icl.sample(spec, jax.random.key(0), 4000)["xs"]).reshape(-1, 5)
  eig = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
  np.testing.assert_allclose(eig / eig[0], 1 / np.arange(1, 6) ** 2, rtol=0.08)
  np.testing.assert_allclose(np.mean(np.sum(x**2, -1)), 5.0, rtol=0.03)


def test_curriculum_schedule():
  spec = icl.Spec("linear", n_dims=20, n_points=41, dims_start=5, points_start=11, interval=2000)
  for step, dims, points in [(0, 5, 11), (1999, 5, 11), (2000, 6, 13), (30000, 20, 41),
                             (10**6, 20, 41)]:
    d, p = icl.curriculum(spec, jnp.int32(step))
    assert (int(d), int(p)) == (dims, points), step
  assert tuple(map(int, icl.curriculum(icl.Spec("linear", 5, 11), 0))) == (5, 11)
