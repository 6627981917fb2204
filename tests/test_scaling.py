"""Scaling-law fits (train/analysis/scaling.py) on synthetic sweeps whose law is known."""
import json
import os

import numpy as np
import pytest

from substrax.train.analysis import scaling

L_INF, N0, ALPHA = 1.2, 1e3, 0.35
SIZES = np.array([6e3, 2e4, 6e4, 2e5, 6e5, 2e6])
# Chinchilla-style curves L(N, D) = E + (N0/N)^ALPHA + B/D^BETA_D with E the Bayes loss: at the
# end of a fixed budget the sweep follows L∞ + (N0/N)^ALPHA with L∞ = E + B/D^BETA_D above E.
BAYES, B, BETA_D, TOKENS = 1.14, 3.9, 0.3, 2_048_000


def law(n, l_inf=L_INF):
  return l_inf + (N0 / np.asarray(n, np.float64))**ALPHA


def sequence_losses(seed, means, sequences=256, common=0.3, own=0.1):
  """Each held-out sequence has its own difficulty, shared by every model (the Bayes loss varies
  between sequences), plus model-specific noise that grows with the model's excess."""
  rng = np.random.default_rng(seed)
  difficulty = rng.normal(0, common, sequences)
  excess = means - means.min() + 0.05
  return means[:, None] + difficulty + own * np.sqrt(excess)[:, None] * rng.normal(
      size=(len(means), sequences))


def synthetic_results(seed=0, sizes=SIZES, points=24):
  floor = BAYES + B * TOKENS**-BETA_D
  finals = sequence_losses(seed, law(sizes, floor), common=0.05, own=0.05)
  tokens = np.geomspace(TOKENS / 200, TOKENS, points)
  models = []
  for n, seqs in zip(sizes, finals):
    curve = BAYES + (N0 / n)**ALPHA + B * tokens**-BETA_D
    curve[-1] = seqs.mean()
    models.append({"name": f"w{int(n) // 1000}k", "width": 16, "depth": 2,
                   "non_embedding_params": int(n), "learning_rates": [3e-3, 1e-2, 3e-2],
                   "final_losses": [seqs.mean() + 0.1, seqs.mean(), seqs.mean() + 0.05],
                   "best_lr": 1e-2, "loss": float(seqs.mean()),
                   "sequence_losses": seqs.tolist(),
                   "curve": {"step": list(range(points)), "tokens": tokens.tolist(),
                             "loss": curve.tolist()}})
  return {"preset": "cpu", "bayes_nats": BAYES, "unigram_nats": 2.06, "tokens_per_run": TOKENS,
          "models": models, "wall_s": 1.0}


@pytest.mark.parametrize("space", scaling.SPACES)
def test_fit_recovers_an_exact_law(space):
  fit = scaling.fit_power_law(SIZES, law(SIZES), space=space)
  assert fit["space"] == space
  assert fit["at_bound"] is None and fit["rms_log"] < 1e-8
  np.testing.assert_allclose([fit["l_inf"], fit["alpha"], fit["n0"]], [L_INF, ALPHA, N0],
                             rtol=1e-6)
  np.testing.assert_allclose(scaling.predict(fit, 1e8), law(1e8), rtol=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_fit_from_noisy_points(seed):
  # 3 mnats of noise on losses whose excess over L∞ runs from 0.54 down to 0.13.
  noisy = law(SIZES) + np.random.default_rng(seed).normal(0, 0.003, len(SIZES))
  fit = scaling.fit_power_law(SIZES, noisy)
  assert abs(fit["l_inf"] - L_INF) < 0.03
  assert abs(fit["alpha"] / ALPHA - 1) < 0.1
  assert abs(scaling.predict(fit, 2e7) - law(2e7)) < 0.02


def test_fit_reports_a_bound_and_takes_a_fixed_floor():
  # A pure power law has its best floor at 0: returned there and flagged, not hidden.
  fit = scaling.fit_power_law(SIZES, law(SIZES, 0.0))
  assert fit["at_bound"] == "lower" and fit["l_inf"] == 0.0
  np.testing.assert_allclose(fit["alpha"], ALPHA, rtol=1e-9)
  fixed = scaling.fit_power_law(SIZES[:2], law(SIZES[:2]), l_inf=L_INF)
  assert fixed["fixed_l_inf"] and fixed["l_inf"] == L_INF
  np.testing.assert_allclose([fixed["alpha"], fixed["n0"]], [ALPHA, N0], rtol=1e-9)
  with pytest.raises(ValueError, match="3 distinct sizes"):
    scaling.fit_power_law(SIZES[:2], law(SIZES[:2]))
  with pytest.raises(ValueError, match="fixed L∞"):
    scaling.fit_power_law(SIZES, law(SIZES), l_inf=law(SIZES).min())


def test_bootstrap_covers_the_truth_and_alpha_moves_with_l_inf():
  """Sign of corr(α, L∞): a higher L∞ shrinks every reducible part L − L∞ by the same amount,
  so log(L − L∞) drops most where it is smallest, at the largest N: the line in log N gets
  steeper and α larger. Fits that trade L∞ against α thus move them together: corr > 0.
  A difficulty shared by all models only shifts L∞ (checked exactly below), which dilutes the
  correlation but cannot flip it."""
  covered = {"alpha": 0, "l_inf": 0, "prediction": 0}
  for seed in range(10):
    seqs = sequence_losses(seed, law(SIZES))
    boot = scaling.bootstrap(SIZES[:-1], seqs[:-1], reps=200, seed=seed, predict_n=SIZES[-1])
    covered["alpha"] += boot["alpha_ci"][0] <= ALPHA <= boot["alpha_ci"][1]
    covered["l_inf"] += boot["l_inf_ci"][0] <= L_INF <= boot["l_inf_ci"][1]
    covered["prediction"] += boot["prediction_ci"][0] <= law(SIZES[-1]) <= boot["prediction_ci"][1]
    assert boot["corr_alpha_l_inf"] > 0, seed
    assert boot["samples"]["alpha"].shape == (200,)
  # 95% intervals: 10 of 10 with probability 0.6, at least 8 with probability 0.99.
  assert min(covered.values()) >= 8, covered
  # Without a shared difficulty the trade-off dominates the fits.
  boot = scaling.bootstrap(SIZES, sequence_losses(0, law(SIZES), common=0.0), reps=200)
  assert boot["corr_alpha_l_inf"] > 0.8
  # Paired resampling: with only a shared difficulty every replicate shifts all the models by
  # one amount, which moves L∞ and leaves α exactly as fitted (unpaired draws would not).
  seqs = sequence_losses(1, law(SIZES), own=0.0)
  fit = scaling.fit_power_law(SIZES, seqs.mean(1))
  boot = scaling.bootstrap(SIZES, seqs, reps=50, seed=3)
  np.testing.assert_allclose(boot["samples"]["alpha"], fit["alpha"], rtol=1e-6)
  assert boot["samples"]["l_inf"].std() > 0.01


def test_compute_frontier_is_monotone_and_moves_to_larger_models():
  results = synthetic_results()
  frontier = scaling.compute_frontier(results["models"], points=80)
  loss, n_opt = np.array(frontier["loss"]), np.array(frontier["n_opt"])
  assert np.all(np.diff(loss) <= 0) and np.all(np.diff(n_opt) >= 0)
  assert len(set(n_opt)) == len(SIZES) and frontier["sizes_on_frontier"] >= 3
  assert frontier["noisy"] and "not compute-optimal" in frontier["caveat"]
  # Its ends: the smallest model's first point and the best final loss of the sweep.
  first = results["models"][0]["curve"]["loss"][0]
  np.testing.assert_allclose([loss[0], loss[-1]],
                             [first, min(m["loss"] for m in results["models"])], rtol=1e-9)
  assert 0.1 < frontier["beta"] < 1
  # With its floor at E, the frontier of L = E + A/N^a + B/D^b falls as C^(-ab/(a+b)) (minimise
  # over N at D = C/6N); a finite sweep's envelope, plateaus included, comes close.
  bayes_floor = scaling.compute_frontier(results["models"], points=80, l_inf=BAYES)["fit"]
  np.testing.assert_allclose(bayes_floor["alpha"], ALPHA * BETA_D / (ALPHA + BETA_D), rtol=0.1)


def test_study_fit_markdown_and_plot(tmp_path):
  results = synthetic_results()
  fit = scaling.study_fit(results, held_out=1, reps=200)
  json.dumps(fit)   # ready for a report file
  assert fit["fit_models"] == [m["name"] for m in results["models"][:-1]]
  check = fit["prediction"]
  assert check["name"] == results["models"][-1]["name"] and abs(check["rel_error"]) < 0.01
  assert check["interval"][0] <= check["measured"] <= check["interval"][1]
  # The fit's floor is the data-limited one, above the Bayes loss by B/D^BETA_D = 0.05 nats.
  lo, hi = fit["bootstrap"]["l_inf_ci"]
  assert lo <= BAYES + B * TOKENS**-BETA_D <= hi and not fit["bayes"]["in_interval"]
  assert 0.02 < fit["bayes"]["l_inf_rel_diff"] < 0.07
  text = scaling.markdown(results, fit)
  assert text.count("| fit |") == 5 and text.count("| held out |") == 1
  assert f"vs measured {check['measured']:.4f}" in text and "β =" in text
  pinned = fit["frontier"]["fit_bayes_floor"]
  np.testing.assert_allclose(pinned["alpha"], ALPHA * BETA_D / (ALPHA + BETA_D), rtol=0.1)
  assert f"α_C = {pinned['alpha']:.3f} with L∞_C fixed" in text
  fig = scaling.plot(str(tmp_path / "scaling.png"), results, fit)
  assert os.path.getsize(tmp_path / "scaling.png") > 10_000 and len(fig.axes) == 2


def test_study_fit_with_the_bayes_floor_and_limits():
  results = synthetic_results()
  free = scaling.study_fit(results, held_out=2, reps=50)
  fixed = scaling.study_fit(results, held_out=2, reps=50, l_inf=BAYES)
  # A floor 0.05 nats too low leaves a reducible part that falls more slowly: a smaller α.
  assert fixed["fit"]["fixed_l_inf"] and fixed["fit"]["alpha"] < free["fit"]["alpha"] - 0.05
  assert len(fixed["held_out"]) == 2 and "L∞ fixed at 1.1400" in scaling.markdown(results, fixed)
  with pytest.raises(ValueError, match="leaves 2 of 6"):
    scaling.study_fit(results, held_out=4)


def test_the_reducible_criterion_can_prefer_no_floor_where_the_total_one_finds_it():
  """log(L - L_inf) spreads more as L_inf nears the losses, so scatter about a law with a
  floor can push the reducible-part fit to L_inf = 0, and the log-L fit near the floor."""
  sizes = np.geomspace(1e3, 1e5, 6)
  points = 1.5 + (sizes / 1e3) ** -0.5 * 0.1
  points = points * (1 + np.array([0.004, -0.004, 0.004, -0.004, 0.004, -0.004]))
  reducible = scaling.fit_power_law(sizes, points)
  total = scaling.fit_power_law(sizes, points, space="total")
  assert reducible["at_bound"] == "lower"
  assert abs(total["l_inf"] - 1.5) < 0.02
