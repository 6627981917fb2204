"""Garg et al.'s OOD settings: geometry, same functions, and the report end to end."""
import os

import jax
import numpy as np
import pytest

from substrax.data import icl
from substrax.models import baselines
from substrax.train.analysis import ood

D, N, B = 4, 9, 64
SPEC = icl.Spec("linear", D, N)
sample_ood = jax.jit(ood.sample_ood, static_argnums=(0, 1, 3))
sample = jax.jit(icl.sample, static_argnums=(0, 2))   # eager sampling compiles op by op


def draw(setting, seed=0):
  return jax.tree.map(np.asarray, sample_ood(SPEC, setting, jax.random.key(seed), B))


@pytest.fixture(scope="module")
def standard():
  return draw("standard")


@pytest.fixture(scope="module")
def true_weights():
  """w of each prompt: the functions depend on the key alone, so label the basis vectors."""
  basis = np.zeros((B, N, D), np.float32)
  basis[:, :D] = np.eye(D)
  return np.asarray(sample(SPEC, jax.random.key(0), B, xs=basis)["ys"][:, :D])


@pytest.mark.parametrize("setting", ood.SETTINGS)
def test_shapes_determinism_and_same_functions(setting, standard, true_weights):
  a, b, c = draw(setting), draw(setting), draw(setting, 1)
  query = setting in ood.QUERY_SETTINGS
  assert set(a) == {"xs", "ys"} | ({"query_xs", "query_ys"} if query else set())
  assert a["xs"].shape == a.get("query_xs", a["xs"]).shape == (B, N, D)
  assert a["ys"].shape == a.get("query_ys", a["ys"]).shape == (B, N)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["xs"], c["xs"])
  w = true_weights
  if setting == "noisy_y":
    np.testing.assert_array_equal(a["xs"], standard["xs"])
    assert 0.85 < np.std(a["ys"] - standard["ys"]) / ood.NOISY_Y_STD < 1.15
  else:   # relabelled by the standard prompts' functions
    np.testing.assert_allclose(a["ys"], np.einsum("bnd,bd->bn", a["xs"], w), atol=1e-4)
  if query:
    np.testing.assert_allclose(a["query_ys"], np.einsum("bnd,bd->bn", a["query_xs"], w),
                               atol=1e-4)
    k = N - 1
    spliced = ood.at_query(a, k)
    np.testing.assert_array_equal(spliced["xs"][:, :k], a["xs"][:, :k])
    np.testing.assert_array_equal(spliced["xs"][:, k], a["query_xs"][:, k])
    np.testing.assert_array_equal(spliced["ys"][:, k], a["query_ys"][:, k])


def test_standard_is_the_specs_own_sample(standard):
  ref = sample(SPEC, jax.random.key(0), B)
  np.testing.assert_array_equal(standard["xs"], ref["xs"])
  np.testing.assert_array_equal(standard["ys"], ref["ys"])


def test_scaled_and_skewed_inputs(standard):
  for s in (0.5, 2, 3):
    xs = draw(f"scale_x_{s}")["xs"]
    np.testing.assert_allclose(np.linalg.norm(xs, axis=-1),
                               s * np.linalg.norm(standard["xs"], axis=-1), rtol=1e-5)
  root = np.asarray(icl.covariance_root(icl.Spec("linear", D, N, covariance="skewed")))
  np.testing.assert_allclose(draw("skewed")["xs"], standard["xs"] @ root, atol=1e-5)


def test_orthogonal_query_is_orthogonal_to_the_context(standard):
  p = draw("orthogonal_query")
  np.testing.assert_array_equal(p["xs"], standard["xs"])
  xs, q = p["xs"], p["query_xs"]
  for k in range(1, D):
    inner = np.einsum("bd,bjd->bj", q[:, k], xs[:, :k])
    scale = np.linalg.norm(q[:, k], axis=-1)[:, None] * np.linalg.norm(xs[:, :k], axis=-1)
    assert np.abs(inner / scale).max() < 1e-4, k
  np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.linalg.norm(xs, axis=-1), rtol=1e-4)
  np.testing.assert_allclose(q[:, 0], xs[:, 0], rtol=1e-6)   # nothing to be orthogonal to yet
  np.testing.assert_array_equal(q[:, D:], xs[:, D:])    # the context spans R^d


def test_query_in_span_copies_an_earlier_point():
  p = draw("query_in_span")
  chosen = []
  for k in range(1, N):
    match = np.all(p["query_xs"][:, k, None] == p["xs"][:, :k], axis=-1)   # [B, k]
    assert np.all(match.sum(-1) == 1), k
    chosen.append(match.argmax(-1))
  assert len(np.unique(chosen[-1])) > N // 2   # j is drawn, not fixed


def test_half_subspace_has_rank_d_over_2_and_norm_d():
  xs = draw("half_subspace")["xs"]
  sv = np.linalg.svd(xs, compute_uv=False)   # [B, D]
  assert np.all(sv[:, D // 2 - 1] > 1e-2) and np.all(sv[:, D // 2:] < 1e-4 * sv[:, :1])
  assert abs(np.mean(np.sum(xs**2, -1)) / D - 1) < 0.1
  bases = [np.linalg.svd(x)[2][:D // 2] for x in xs[:2]]
  assert not np.allclose(np.abs(bases[0] @ bases[1].T), np.eye(D // 2), atol=1e-3)  # per prompt


def test_orthants_context_shares_a_sign_pattern(standard):
  p = draw("orthants")
  signs = np.sign(p["xs"])
  assert np.all(signs == signs[:, :1])
  assert len({tuple(s) for s in signs[:, 0]}) > 4
  np.testing.assert_array_equal(np.abs(p["xs"]), np.abs(standard["xs"]))
  np.testing.assert_array_equal(p["query_xs"], standard["xs"])   # Garg: unrestricted query


def test_report_table_and_plot_end_to_end(tmp_path):
  predictors = {"least_squares": baselines.least_squares, "zero": baselines.zero}
  report = ood.ood_report(predictors, SPEC, jax.random.key(0), num_prompts=96, batch_size=64,
                          n_boot=50)
  s = report["settings"]
  assert list(s) == list(ood.SETTINGS)
  assert s["standard"]["k"] == [N - 1, D] and s["orthogonal_query"]["k"] == [D - 1, D - 1]
  ls = {name: np.array(v["models"]["least_squares"]["mean"]) for name, v in s.items()}
  assert np.all(ls["standard"] < 1e-4) and np.all(ls["scale_x_3"] < 1e-3)
  assert np.all(ls["noisy_y"] > 0.1)           # noise: 1/d per point plus the fit's variance
  assert np.all(ls["orthogonal_query"] > 0.3)  # min-norm LS predicts 0 off the span
  zero = np.array(s["scale_x_3"]["models"]["zero"]["mean"])
  assert np.all(zero > 4)                      # E|x.w|^2 / d = 9 for x scaled by 3
  for v in s.values():
    for m in v["models"].values():
      ci = np.array(m["ci95"])
      assert np.all(ci[:, 0] <= np.array(m["mean"]) + 1e-9) and ci.shape == (2, 2)
  table = ood.format_ood_table(report)
  assert table.count("\n| ") == len(ood.SETTINGS) + 1 and "| least_squares | zero |" in table
  assert "orthogonal_query (k = 3)" in table
  path = os.path.join(tmp_path, "ood.png")
  ood.plot_ood(path, report)
  assert os.path.getsize(path) > 10_000
