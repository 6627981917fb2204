"""New prompt distributions of substrax.data.icl against their defining properties."""
import dataclasses

import jax
import numpy as np
import pytest

from substrax.data import icl
from tests.conftest import icl_config

D, N, B = 5, 12, 1000   # one batch shape for every test: each spec compiles once
SPECTRUM = (4.0, 2.0, 1.0, 0.5, 0.25)
SPECS = {
    "spectrum": icl.Spec("linear", D, N, covariance="spectrum", spectrum=SPECTRUM),
    "inverse": icl.Spec("linear", D, N, covariance="spectrum", spectrum=SPECTRUM,
                        weight_covariance="inverse"),
    "heteroscedastic": icl.Spec("heteroscedastic_linear", D, N, noise_min=0.2, noise_max=0.7),
    "pool": icl.Spec("linear", D, N, n_tasks=4),
    "mixture": icl.Spec("mixture", D, N, sparsity=2),
}
_sample = jax.jit(icl.sample, static_argnums=(0, 2))


def sample(spec, seed, **kwargs):
  """B prompts, jitted (eager sampling compiles op by op, slowly) and fetched as numpy."""
  return jax.tree.map(np.asarray, _sample(spec, jax.random.key(seed), B, **kwargs))


def lstsq(batch):
  """Per-prompt least-squares weights [B, d] and residual sums of squares [B]."""
  w = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(batch["xs"], batch["ys"])])
  return w, np.sum((np.einsum("bnd,bd->bn", batch["xs"], w) - batch["ys"]) ** 2, -1)


def weights(spec, seed):
  """w of each prompt, read off exactly by labelling the basis vectors (noiseless classes)."""
  basis = np.zeros((B, N, D), np.float32)
  basis[:, :D] = np.eye(D)
  return sample(spec, seed, xs=basis)["ys"][:, :D]


@pytest.mark.parametrize("name", SPECS)
def test_shapes_and_determinism_under_jit(name):
  spec = SPECS[name]
  a, b, c = (sample(spec, seed) for seed in (3, 3, 4))
  assert a["xs"].shape == (B, N, D) and a["ys"].shape == (B, N)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["ys"], c["ys"])
  extra = {"heteroscedastic": {"noise_std"}, "mixture": {"family"}}.get(name, set())
  assert set(a) == {"xs", "ys"} | extra


def test_from_config_reads_new_keys_and_keeps_old_defaults():
  assert icl.Spec.from_config(icl_config().data) == icl.Spec("linear", 5, 11)
  data = icl_config().data
  data.unlock()
  data.update(covariance="spectrum", spectrum=list(SPECTRUM), weight_covariance="inverse",
              n_tasks=8, pool_seed=2, mixture=["linear", "relu_2nn"])
  spec = icl.Spec.from_config(data)
  assert spec.spectrum == SPECTRUM and spec.mixture == ("linear", "relu_2nn")
  assert (spec.weight_covariance, spec.n_tasks, spec.pool_seed) == ("inverse", 8, 2)
  hash(spec)  # a static argument of jit


def test_spectrum_covariance_matches_covariance_matrix():
  spec = SPECS["spectrum"]
  cov = np.asarray(icl.covariance_matrix(spec))
  np.testing.assert_allclose(np.linalg.eigvalsh(cov), sorted(SPECTRUM), rtol=1e-5)
  assert not np.allclose(cov, np.diag(np.diag(cov)), atol=0.1)  # rotated, not axis-aligned
  root = np.asarray(icl.covariance_root(spec))
  np.testing.assert_allclose(root.T @ root, cov, atol=1e-5)
  x = np.concatenate([sample(spec, seed)["xs"].reshape(-1, D) for seed in range(3)])
  # 36k samples: the expected relative Frobenius error is about 0.009.
  assert np.linalg.norm(np.cov(x.T) - cov) / np.linalg.norm(cov) < 0.03
  for name in ("isotropic", "skewed"):
    r = np.asarray(icl.covariance_root(icl.Spec("linear", D, N, covariance=name)))
    np.testing.assert_allclose(icl.covariance_matrix(icl.Spec("linear", D, N, covariance=name)),
                               r.T @ r, atol=1e-6)


def test_inverse_weight_covariance_whitens():
  inv = np.linalg.inv(np.asarray(icl.covariance_matrix(SPECS["inverse"])))
  w = np.concatenate([weights(SPECS["inverse"], seed) for seed in range(10)])
  # 10k draws: the expected relative Frobenius error is about 0.017.
  assert np.linalg.norm(w.T @ w / len(w) - inv) / np.linalg.norm(inv) < 0.05
  w = np.concatenate([weights(SPECS["spectrum"], seed) for seed in range(10)])
  np.testing.assert_allclose(w.T @ w / len(w), np.eye(D), atol=0.06)  # default: N(0, I)


def test_heteroscedastic_noise_std_range_and_residual_variance():
  b = sample(SPECS["heteroscedastic"], 2)
  std = b["noise_std"]
  assert std.min() >= 0.2 and std.max() <= 0.7 and std.max() - std.min() > 0.4
  _, rss = lstsq(b)
  ratio = rss / (N - D) / std**2   # chi^2_7 / 7 per prompt: mean 1, standard error 0.017
  assert abs(ratio.mean() - 1) < 0.07, ratio.mean()
  assert np.corrcoef(rss / (N - D), std**2)[0, 1] > 0.4


def test_finite_pool_has_n_tasks_distinct_weights():
  spec = SPECS["pool"]
  pool = np.unique(np.round(lstsq(sample(spec, 0))[0], 3), axis=0)
  assert len(pool) == 4, pool
  np.testing.assert_array_equal(np.unique(np.round(lstsq(sample(spec, 1))[0], 3), axis=0), pool)
  other = lstsq(sample(dataclasses.replace(spec, pool_seed=1), 0))[0]
  assert not np.isin(np.round(other, 3), pool).any()


def test_mixture_prompts_follow_their_family():
  spec = SPECS["mixture"]
  b = sample(spec, 5)
  family = b["family"]
  assert set(family) == {0, 1, 2}
  w, rss = lstsq(b)
  nonzero = (np.abs(w) > 1e-4).sum(-1)
  linear, sparse, relu = (family == spec.mixture.index(f)
                          for f in ("linear", "sparse_linear", "relu_2nn"))
  assert np.all(rss[linear | sparse] < 1e-6) and np.all(rss[relu] > 1e-4)
  assert np.all(nonzero[linear] == D) and np.all(nonzero[sparse] == 2)


def test_autoregressive_sequences_follow_orthogonal_w():
  sample_ar = jax.jit(icl.sample_ar, static_argnums=(1, 2, 3))
  b = sample_ar(jax.random.key(0), 8, 4, 20)
  xs, w = np.asarray(b["xs"]), np.asarray(b["W"])
  assert xs.shape == (8, 20, 4) and w.shape == (8, 4, 4)
  np.testing.assert_allclose(np.einsum("bij,btj->bti", w, xs[:, :-1]), xs[:, 1:], atol=1e-5)
  np.testing.assert_allclose(w @ w.transpose(0, 2, 1), np.broadcast_to(np.eye(4), w.shape),
                             atol=1e-5)
  norms = np.linalg.norm(xs, axis=-1)
  np.testing.assert_allclose(norms, norms[:, :1].repeat(20, 1), rtol=1e-4)
  assert len({tuple(np.round(m.ravel(), 4)) for m in w}) == 8   # one W per sequence
  scaled = sample_ar(jax.random.key(0), 8, 4, 20, init_scale=3.0)["xs"]
  np.testing.assert_allclose(scaled, 3 * xs, rtol=1e-4, atol=1e-5)
