"""Video metrics: SSIM variants against references, pixel conventions, the eRank bug, rollouts."""
import json

import numpy as np
import pytest

from substrax.train.analysis import video_metrics as vm


def frames(seed=0, shape=(2, 3, 20, 24, 3), noise=0.2):
  rng = np.random.default_rng(seed)
  x = rng.random(shape).astype(np.float32)
  return x, np.clip(x + noise * rng.standard_normal(shape), 0, 1).astype(np.float32)


def naive_ssim(x, y, variant):
  """SSIM of one [H, W, C] pair by explicit loops over windows, straight from the definition."""
  kernel, pad, cov_norm, c1, c2 = vm._ssim_window(variant)
  k = kernel.shape[0]
  x, y = (np.pad(a.astype(np.float64), ((pad, pad), (pad, pad), (0, 0))) for a in (x, y))
  per_channel = []
  for c in range(x.shape[-1]):
    values = []
    for i in range(x.shape[0] - k + 1):
      for j in range(x.shape[1] - k + 1):
        a, b = x[i:i + k, j:j + k, c], y[i:i + k, j:j + k, c]
        ma, mb = (kernel * a).sum(), (kernel * b).sum()
        va = cov_norm * (kernel * (a - ma) ** 2).sum()
        vb = cov_norm * (kernel * (b - mb) ** 2).sum()
        vab = cov_norm * (kernel * (a - ma) * (b - mb)).sum()
        values.append((2 * ma * mb + c1) * (2 * vab + c2)
                      / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    per_channel.append(np.mean(values))
  return np.mean(per_channel)


@pytest.mark.parametrize("variant", vm.SSIM_VARIANTS)
def test_ssim_identity_negative_and_naive_reference(variant):
  x, y = frames()
  np.testing.assert_allclose(vm.ssim(x, x, variant), 1.0, atol=1e-5)
  assert np.all(np.asarray(vm.ssim(x, 1 - x, variant)) < 0)
  ours = np.asarray(vm.ssim(x[0, :2, :14, :16], y[0, :2, :14, :16], variant))
  ref = [naive_ssim(x[0, t, :14, :16], y[0, t, :14, :16], variant) for t in range(2)]
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  assert vm.ssim(x[0], y[0], variant).shape == (3,)   # [B, H, W, C] frames work too


@pytest.mark.parametrize("variant, kwargs", [
    ("gaussian", dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)),
    ("uniform7", {})])
def test_ssim_matches_skimage(variant, kwargs):
  metrics = pytest.importorskip("skimage.metrics")
  x, y = frames()
  ref = [[metrics.structural_similarity(x[b, t], y[b, t], data_range=1.0, channel_axis=-1,
                                        **kwargs) for t in range(3)] for b in range(2)]
  np.testing.assert_allclose(vm.ssim(x, y, variant), ref, atol=1e-4)


def test_pixel_metric_conventions():
  x, y = frames()
  h, w, c = x.shape[-3:]
  assert vm.mse_px(x, y).shape == (2, 3)
  np.testing.assert_allclose(vm.mse_frame(x, y), h * w * c * vm.mse_px(x, y), rtol=1e-5)
  np.testing.assert_allclose(vm.mae_frame(x, y), h * w * c * vm.mae_px(x, y), rtol=1e-5)
  # A uniform 0.1 offset: MSE 0.01 -> 20 dB; identical frames hit the 100 dB guard, not inf.
  np.testing.assert_allclose(vm.psnr(np.full_like(x, 0.1), np.zeros_like(x)), 20.0, rtol=1e-5)
  np.testing.assert_allclose(vm.psnr(x, x), 100.0)
  # Predictions are clipped to [0, 1] before scoring.
  np.testing.assert_allclose(vm.mse_px(x + 5.0, np.ones_like(x)), 0.0)


def gaussian_and_rank8(seed=0, k=8):
  """Features [16, 16, 16, 128]: isotropic Gaussian, and k latent channels mixed into 128."""
  rng = np.random.default_rng(seed)
  full = rng.standard_normal((16, 16, 16, 128)).astype(np.float32)
  mix = np.linalg.qr(rng.standard_normal((128, k)))[0].T   # orthonormal rows: rank exactly k
  low = (rng.standard_normal((16, 16, 16, k)) @ mix).astype(np.float32)
  return full, low


def test_effective_rank_and_participation_ratio_see_channel_rank():
  full, low = gaussian_and_rank8()
  assert 0.97 * 128 < vm.effective_rank(full) <= 128
  assert 0.9 * 8 < vm.effective_rank(low) < 1.1 * 8
  assert 0.95 * 128 < vm.participation_ratio(full) <= 128
  assert 0.9 * 8 < vm.participation_ratio(low) < 1.1 * 8
  # Scale-free: rescaling the features changes none of the latent metrics.
  small = full[:2]
  for fn in (vm.effective_rank, vm.participation_ratio, vm.spatial_variation, vm.dead_channels):
    np.testing.assert_allclose(fn(small * 7.0), fn(small), rtol=1e-4)


def test_paper_effective_rank_is_blind_to_channel_rank():
  """Regression for FluidWorld's bug (docs/fluidworld.md §2: 26,011 vs 25,034 on these shapes)."""
  full, low = gaussian_and_rank8()
  paper_full, paper_low = float(vm.paper_effective_rank(full)), float(vm.paper_effective_rank(low))
  assert 20_000 < paper_low < paper_full < 32_768
  assert paper_low / paper_full > 0.9   # the correct eRank differs by 16x


def test_spatial_variation_and_dead_channels():
  full, _ = gaussian_and_rank8()
  smooth = np.broadcast_to(full[:, :1, :1], full.shape)   # constant over (H, W)
  assert vm.spatial_variation(full) > 0.95 and vm.spatial_variation(smooth) < 1e-6
  dead = full.copy()
  dead[..., :5] = 3.0                       # constant channels, whatever their offset
  dead[..., 5:7] *= 0.01                    # near-constant channels
  assert int(vm.dead_channels(full)) == 0 and int(vm.dead_channels(dead)) == 7


def test_coherence_horizon_area_and_recovery():
  zero = np.full(6, 0.04)
  copy = np.array([0.01, 0.03, 0.05, 0.06, 0.07, 0.07])
  model = np.array([0.005, 0.02, 0.035, 0.045, 0.05, 0.05])
  assert vm.coherence_horizon(model, zero, copy) == 4              # exceeds the zero floor at h=4
  assert vm.coherence_horizon(np.array([0.02, 0.01, 0.0, 0, 0, 0]), zero, copy) == 1  # > copy
  assert vm.coherence_horizon(np.zeros(6), zero, copy) is None
  assert vm.coherence_horizon(model, zero, steps=[2, 4, 6, 8, 10, 12]) == 8
  np.testing.assert_allclose(vm.curve_area([1.0, 0.5, 0.5]), 0.625)
  np.testing.assert_allclose(vm.curve_area(np.ones((4, 7))), np.ones(4))
  curves = np.array([[0.9, 0.5, 0.7, 0.2, 0.3],    # dip then rise of 0.2; later 0.1 from 0.2
                     [0.9, 0.8, 0.7, 0.6, 0.5]])   # monotone: no recovery
  np.testing.assert_allclose(vm.recovery_statistic(curves), [0.2, 0.0])
  np.testing.assert_allclose(vm.paper_recovery(curves), [0.1, 0.0])


def test_bootstrap_intervals():
  rng = np.random.default_rng(0)
  errors = rng.random((50, 4)) + np.arange(4)
  curve = vm.step_curve(errors, n_boot=200)
  for mean, (lo, hi) in zip(curve["mean"], curve["ci95"]):
    assert lo <= mean <= hi
  a = rng.random(50)
  diff = vm.paired_difference(a + 0.5, a, n_boot=200)
  assert diff["excludes_zero"] and diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
  assert not vm.paired_difference(a, a[::-1], n_boot=200)["excludes_zero"]
  assert vm.paired_difference(errors, errors + 1, n_boot=50)["excludes_zero"] == [True] * 4


def test_rollout_report_json_and_plots(tmp_path):
  rng = np.random.default_rng(0)
  video = np.clip(rng.random((6, 8, 16, 16, 1)) * (rng.random((6, 8, 1, 1, 1)) > 0.3), 0, 1)
  context, target = video[:, :3], video[:, 3:].astype(np.float32)
  preds = dict(vm.trivial_predictions(context, target.shape[1]))
  preds["model"] = np.clip(target + 0.05 * rng.standard_normal(target.shape), 0, 1)
  report = vm.rollout_report(target, preds, n_boot=50)
  json.dumps(report)   # JSON-ready as it is
  model = report["predictors"]["model"]
  assert set(model["per_step"]) == {"mse_px", "mse_frame", "mae_px", "mae_frame", "psnr",
                                    "ssim_gaussian", "ssim_uniform7", "ssim_box3"}
  assert len(model["per_step"]["mse_px"]["mean"]) == 5 and report["predictors"]["zero"]["trivial"]
  assert model["coherence_horizon_mse"] is None
  assert model["mse_px_minus_trivial"]["zero"]["mean"] < 0
  curves, strip = tmp_path / "curves.png", tmp_path / "strip.png"
  vm.plot_rollout_curves(str(curves), report, title="test")
  vm.plot_frame_strip(str(strip), context[0], target[0],
                      {"model": preds["model"][0], "copy_last": preds["copy_last"][0]})
  assert curves.stat().st_size > 1000 and strip.stat().st_size > 1000
