# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Scaling laws on a hidden Markov model
#
# `benchmarks/scaling_laws.py` trains transformers of several sizes on one token budget, on a
# random HMM whose Bayes loss is known exactly. Here their held-out losses are fitted with
# L(N) = L∞ + (N₀/N)^α on all but the largest model (`train/analysis/scaling.py`), which then
# tests the extrapolation, and L∞ is set against the Bayes loss. With one token budget for
# every size, L∞ also holds what an infinitely large model still loses after that many tokens,
# so it should lie somewhat above the Bayes loss. Intervals come from a paired bootstrap over
# the held-out sequences: evaluation noise only, not seed-to-seed training noise.
#
# Set `SUBSTRAX_STUDY` to read another study's JSON and `SUBSTRAX_REPS` for fewer bootstrap
# replicates in the fits (CI uses a tiny study and 100).

# %%
import io
import json
import os

from IPython.display import Image, display

from substrax.train.analysis import scaling

STUDY = os.environ.get("SUBSTRAX_STUDY", "../runs/scaling_laws/scaling_laws.json")
REPS = int(os.environ.get("SUBSTRAX_REPS", 1000))   # bootstrap replicates of every fit below
with open(STUDY) as f:
  results = json.load(f)
models = len(results["models"])
fit = scaling.study_fit(results, held_out=min(1, models - 3), reps=REPS)
print(scaling.markdown(results, fit))

# %% [markdown]
# ## Refit
#
# `HELD_OUT`: how many of the largest models the fit leaves out (at least 3 stay in).
# `FIX_AT_BAYES`: pin L∞ to the Bayes loss and see how α moves: a floor below the true one
# leaves a reducible part that falls more slowly, so α drops.
# The fit on log L, tens of ms per replicate, takes a tenth of the `REPS` replicates.

# %%
HELD_OUT = 2
FIX_AT_BAYES = True

held_out = max(0, min(HELD_OUT, models - 3))
refit = scaling.study_fit(results, held_out=held_out, reps=REPS)
bayes = results["bayes_nats"]
lowest = min(min(m["loss"], *m["curve"]["loss"]) for m in results["models"])
# The same law fitted on log L instead of log(L − L∞) (see train/analysis/scaling.py).
on_log_l = scaling.study_fit(results, held_out=held_out, space="total", reps=max(REPS // 10, 10))
fits = {"free L∞, on log(L − L∞)": refit, "free L∞, on log L": on_log_l}
if FIX_AT_BAYES and bayes < lowest:
  fits["L∞ = Bayes"] = scaling.study_fit(results, held_out=held_out, l_inf=bayes, reps=REPS)
elif FIX_AT_BAYES:
  print(f"a measured loss ({lowest:.4f}) lies below the Bayes loss (noise): L∞ not pinned")
ci = lambda pair: f"[{pair[0]:.4f}, {pair[1]:.4f}]"
for label, f in fits.items():
  law = f["fit"]
  print(f"{label}: L∞ = {law['l_inf']:.4f}, α = {law['alpha']:.3f} "
        f"{ci(f['bootstrap']['alpha_ci'])}, log-space residual RMS {law['rms_log']:.4f}, "
        f"α_C = {f['frontier']['fit']['alpha']:.3f}")
  for check in f["held_out"]:
    print(f"  {check['name']}: predicted {check['predicted']:.4f} {ci(check['interval'])} vs "
          f"measured {check['measured']:.4f} ({100 * check['rel_error']:+.2f}%)")

# %%
png = io.BytesIO()
scaling.plot(None, results, refit, on_log_l).savefig(png, format="png")
display(Image(png.getvalue()))
