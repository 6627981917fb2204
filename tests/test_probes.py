"""Probes of hidden states: the fitters on synthetic data, the targets by hand, the report."""
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.data import icl
from substrax.models.icl import ICLTransformer, interleave
from substrax.models.transformer import BlockConfig
from substrax.train.analysis import probes


def split(f, y, n_train):
  return f[:n_train], y[:n_train], f[n_train:], y[n_train:]


def test_linear_probe_recovers_a_linear_map_and_not_shuffled_targets():
  kf, ka, kp = jax.random.split(jax.random.key(0), 3)

  @jax.jit
  def data(kf, ka):
    f = jax.random.normal(kf, (600, 20)) * jnp.arange(1.0, 21.0) + 3.0   # unstandardised
    return f, f @ jax.random.normal(ka, (20, 4)) + 1.0
  f, y = data(kf, ka)
  f_tr, y_tr, f_te, y_te = split(f, y, 400)
  fit = probes.fit_linear_probe(f_tr, y_tr, f_te, y_te)
  np.testing.assert_allclose(fit["r2_per_target"], 1.0, atol=1e-3)
  shuffled = probes.fit_linear_probe(f_tr, y_tr[jax.random.permutation(kp, 400)], f_te, y_te)
  assert float(shuffled["r2"]) < 0.05, shuffled


def test_mlp_probe_fits_a_square_the_linear_probe_cannot():
  f = jax.random.normal(jax.random.key(1), (1000, 4))
  args = split(f, f ** 2, 800)
  linear = float(probes.fit_linear_probe(*args)["r2"])
  mlp = float(probes.fit_mlp_probe(*args, jax.random.key(2))["r2"])
  assert linear < 0.1 and mlp > 0.9, (linear, mlp)


@pytest.fixture(scope="module")
def tiny():
  spec = icl.Spec("linear", n_dims=3, n_points=6)
  model = ICLTransformer(n_points=6, width=16, depth=2, block=BlockConfig(num_heads=2))
  batch = {"xs": jax.random.normal(jax.random.key(0), (4, 6, 3)),
           "ys": jax.random.normal(jax.random.key(1), (4, 6))}
  init = jax.jit(lambda k: model.init(k, batch["xs"], batch["ys"])["params"])
  return spec, model, init(jax.random.key(2)), init(jax.random.key(3)), batch


def test_hidden_states_start_at_the_read_in_and_end_before_the_read_out(tiny):
  _, model, params, _, batch = tiny
  xs, ys = batch["xs"], batch["ys"]
  h = jax.jit(functools.partial(probes.hidden_states, model))(params, xs, ys)
  assert h.shape == (3, 4, 11, 16)

  @jax.jit
  def by_hand(params, xs, ys, h):
    read_in = nn.Dense(16).apply({"params": params["read_in"]}, interleave(xs, ys)[:, :-1])
    final = nn.LayerNorm().apply({"params": params["backbone"]["norm_final"]}, h[-1][:, ::2])
    return read_in, nn.Dense(1).apply({"params": params["read_out"]}, final)[..., 0]
  read_in, preds = by_hand(params, xs, ys, h)
  np.testing.assert_allclose(h[0], read_in, atol=1e-6)
  np.testing.assert_allclose(preds, jax.jit(model.apply)({"params": params}, xs, ys), atol=1e-5)


def test_probe_targets_match_hand_computation():
  xs = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  ys = np.random.default_rng(1).normal(size=(2, 5)).astype(np.float32)
  w = np.ones((2, 3), np.float32)
  k, eta = 4, 0.3
  t = probes.probe_targets(jnp.asarray(xs), jnp.asarray(ys), k, eta=eta, w=w)
  assert set(t) == set(probes.TARGETS)
  for b in range(2):
    x, y = xs[b, :k].astype(np.float64), ys[b, :k].astype(np.float64)
    xtx = x.T @ x
    np.testing.assert_allclose(t["xty"][b], x.T @ y, rtol=1e-5)
    np.testing.assert_allclose(t["xtx"][b], [xtx[i, j] for i in range(3) for j in range(i, 3)],
                               rtol=1e-5)
    np.testing.assert_allclose(t["w_ols"][b], np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-4)
    np.testing.assert_allclose(t["w_gd"][b], eta / k * (x.T @ y), rtol=1e-5)
  np.testing.assert_array_equal(t["w"], w)


def test_probe_report_end_to_end(tiny, tmp_path):
  spec, model, params, untrained, _ = tiny
  # Two of the targets: tests/test_notebook.py checks every target's fits (notebooks/icl_probes).
  targets = ("w_ols", "xtx")
  report = probes.probe_report(model, params, untrained, spec, jax.random.key(3), num_prompts=64,
                               positions=(2, 5), targets=targets, eta=0.5, mlp_steps=100)
  assert report["config"]["mlp"] == {**probes.MLP, "steps": 100}
  records = report["probes"]
  assert len(records) == len(targets) * len(probes.KINDS) * 3 * 2
  keys = {(r["target"], r["kind"], r["layer"], r["k"]) for r in records}
  assert len(keys) == len(records)
  for r in records:
    assert {"r2", "r2_untrained", "r2_shuffled", "gap", "r2_per_target", "token"} <= set(r)
    assert np.isfinite(r["r2"]) and r["token"] == 2 * r["k"]
  assert len(next(r for r in records if r["target"] == "xtx")["r2_per_target"]) == 6
  json.dumps(report, allow_nan=False)
  table = probes.format_probe_table(report)
  assert table.count("\n| w_ols |") == 3 and "token 10" in table
  path = str(tmp_path / "probes.png")
  probes.plot_probes(path, report, k=2)
  assert os.path.getsize(path) > 0


def test_probe_report_needs_w_it_cannot_recover(tiny):
  spec, model, params, untrained, _ = tiny
  noisy = icl.Spec("noisy_linear", n_dims=3, n_points=6, noise_std=0.1)
  with pytest.raises(ValueError, match="needs w"):
    probes.probe_report(model, params, untrained, noisy, jax.random.key(0), num_prompts=8,
                        positions=(2,), targets=("w",), eta=0.5)


def test_probe_report_aligns_states_targets_and_controls(tiny, monkeypatch):
  # Token 2k is x_{k+1}: layer 0 (the read-in) holds it linearly, in any model.
  spec, model, params, untrained, _ = tiny
  monkeypatch.setattr(probes, "probe_targets", lambda xs, ys, k, **_: {"xty": xs[:, k]})
  report = probes.probe_report(model, params, untrained, spec, jax.random.key(4), num_prompts=64,
                               positions=(1, 4), targets=("xty",), eta=0.5)
  for r in report["probes"]:
    if r["layer"] == 0:
      assert min(r["r2"], r["r2_untrained"]) > (0.99 if r["kind"] == "linear" else 0.8), r
      assert r["r2_shuffled"] < 0.1, r
