"""The scaling-law study (Henighan et al. 2020) on a source whose loss floor is known: transformer
language models of several sizes on a random hidden Markov model, whose Bayes loss the forward
algorithm gives exactly.

  python benchmarks/scaling_laws.py                  # cpu: 7 sizes, 0.9k to 0.2M parameters
  python benchmarks/scaling_laws.py --preset=gpu     # two decades larger, a harder HMM

Every size trains on the same token budget with the warmup-cosine schedule over exactly that
budget, at each learning rate of a small grid; the grid's runs of one size train together
under one jax.vmap (study.train_together: the lm task's own model, loss, sampler and
train_step, the trainer's keys). The learning rate is chosen on one set of held-out sequences
and the chosen run scored on another, whose Bayes loss is computed on the same tokens. Then
L(N) = L_inf + (N0/N)^alpha is fitted on every size but the largest, in log space on the
reducible part and, as a check of that criterion, on log L, each with a paired bootstrap over
held-out sequences (train/analysis/scaling.py); each fit predicts the largest size's loss,
and the compute frontier L(C) and N_opt ~ C^beta are fitted from the held-out curves. N
counts non-embedding parameters: the backbone without its position table.

It prints the table and the fit, and writes ROOT/scaling_laws.json (what
notebooks/scaling_laws.py refits) and ROOT/scaling_laws.png. A size already in the JSON is
not trained again, so rerunning the command completes an interrupted study.
"""
import json
import os
import platform
import time

import jax
import numpy as np
import optax
from absl import app, flags

import study
from substrax.configs import lm_hmm
from substrax.data import lm as lm_data
from substrax.data import pipeline
from substrax.train import trainer
from substrax.train.analysis import scaling
from substrax.train.tasks import lm

flags.DEFINE_enum("preset", "cpu", ["tiny", "cpu", "gpu"], "Sizes, budget and source.")
flags.DEFINE_string("root", "runs/scaling_laws", "Where the JSON and the plot go.")
flags.DEFINE_integer("held_out", 1, "Largest sizes left out of the fit and predicted.")
FLAGS = flags.FLAGS

# (width, depth, heads) per size, ascending; the budget in steps of batch x length tokens.
PRESETS = {
    "tiny": dict(sizes=[(8, 1, 2), (8, 2, 2), (16, 1, 2), (16, 2, 2)], steps=20, batch=16,
                 length=16, learning_rates=(1e-2,), chunk=20, heldout=32, base="tiny",
                 reps=20),   # checks the pipeline, not the intervals
    "cpu": dict(sizes=[(8, 1, 2), (16, 1, 2), (16, 2, 2), (24, 2, 2), (32, 3, 4), (48, 3, 4),
                       (64, 4, 4)],
                steps=1500, batch=32, length=64,
                learning_rates=(3e-3, 6e-3, 1.2e-2, 2.4e-2, 4.8e-2, 9.6e-2),
                chunk=150, heldout=2048, base="cpu"),
    # Two decades larger (0.1M to 25M), on an HMM with more states to infer, so that the
    # largest models still have a reducible loss.
    "gpu": dict(sizes=[(64, 2, 4), (96, 3, 4), (128, 4, 4), (192, 4, 6), (256, 6, 8),
                       (384, 6, 8), (512, 8, 8)],
                steps=20_000, batch=128, length=256, learning_rates=(5e-4, 1e-3, 2e-3, 4e-3),
                chunk=1000, heldout=4096, base="gpu",
                source=dict(states=64, symbols=32, concentration=0.05, seed=1)),
}
# The cpu source: 16 hidden states, 16 symbols, sparse rows (Bayes 1.543, unigram 2.563 nats).
SOURCE = dict(states=16, symbols=16, concentration=0.05, seed=1)


def source() -> dict:
  return PRESETS[FLAGS.preset].get("source", SOURCE)


def config_of(width: int, depth: int, heads: int, learning_rate: float):
  p = PRESETS[FLAGS.preset]
  c = lm_hmm.get_config(p["base"])
  c.update_from_flattened_dict({
      **{f"data.{k}": v for k, v in source().items()}, "data.length": p["length"],
      "model.width": width, "model.depth": depth, "model.num_heads": heads,
      "model.max_len": p["length"], "eval.lengths": (p["length"],),
      "batch_size": p["batch"], "num_steps": p["steps"], "optim.learning_rate": learning_rate,
      "optim.warmup_steps": max(1, p["steps"] // 20)})
  trainer.validate(c)
  return c


def train_size(width: int, depth: int, heads: int, select: np.ndarray,
               tokens: np.ndarray) -> dict:
  """Trains one size at every learning rate of the grid; the best on the `select` sequences
  is scored on `tokens` (held out from the choice) and kept."""
  p = PRESETS[FLAGS.preset]
  name = f"w{width}d{depth}"
  start = time.perf_counter()
  configs = [config_of(width, depth, heads, lr) for lr in p["learning_rates"]]
  task, states, curve = study.train_together(configs, lm.build, p["chunk"], name,
                                             evaluate=True)

  @jax.jit
  def losses(params, tokens):
    """Each sequence's mean next-token loss (nats) over positions 1..L."""
    logits = task.model.apply({"params": params}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean(-1)

  def per_sequence(params, tokens):
    return np.concatenate([np.asarray(losses(params, b["tokens"]))[:valid]
                           for b, valid in pipeline.batches({"tokens": tokens}, 256)])

  members = [jax.tree.map(lambda x: x[i], states.params) for i in range(len(configs))]
  selection = [float(per_sequence(m, select).mean()) for m in members]
  if np.all(np.isnan(selection)):
    study.stop(f"{name}: every learning rate diverged (NaN loss)", 1)
  best = int(np.nanargmin(selection))
  scored = per_sequence(members[best], tokens)
  per_step = p["batch"] * p["length"]
  return {"name": name, "width": width, "depth": depth, "heads": heads,
          "non_embedding_params": scaling.non_embedding(members[0]),
          "learning_rates": list(p["learning_rates"]), "selection_losses": selection,
          "best_lr": p["learning_rates"][best],
          "best_at_grid_edge": best in (0, len(configs) - 1),
          "loss": float(scored.mean()), "sequence_losses": scored.tolist(),
          "curve": {"step": curve["step"], "tokens": [s * per_step for s in curve["step"]],
                    "loss": curve["loss"][:, best].tolist()},
          "wall_s": time.perf_counter() - start}


def main(argv):
  del argv
  p = PRESETS[FLAGS.preset]
  if not 0 <= FLAGS.held_out <= len(p["sizes"]) - 3:
    raise app.UsageError(f"--held_out must leave at least 3 of the {len(p['sizes'])} sizes to "
                         f"fit, got {FLAGS.held_out}")
  os.makedirs(FLAGS.root, exist_ok=True)
  out = os.path.join(FLAGS.root, "scaling_laws.json")
  start = time.perf_counter()
  settings = {"preset": FLAGS.preset, "source": source(), "sequence_length": p["length"],
              "tokens_per_run": p["steps"] * p["batch"] * p["length"],
              "learning_rates": list(p["learning_rates"]), "heldout_sequences": p["heldout"]}
  models = []
  if os.path.exists(out):   # a rerun completes the study it finds, and only that one
    with open(out) as f:
      previous = json.load(f)
    if {k: previous.get(k) for k in settings} != settings:
      raise app.UsageError(f"{out} holds a study with other settings; choose another --root")
    models = previous["models"]
  config = config_of(*p["sizes"][0], p["learning_rates"][0])
  params = lm_data.hmm_params(**source())
  tokens = lm_data.hmm_heldout(config.eval.seed, params, p["heldout"], p["length"] + 1)
  # The learning rate is chosen on other sequences than those its loss is reported on.
  select = lm_data.hmm_heldout(config.eval.seed + 2, params, p["heldout"] // 4,
                               p["length"] + 1)
  results = {**settings,
             "bayes_nats": float(lm_data.hmm_token_losses(params, tokens)[:, 1:].mean()),
             "unigram_nats": lm_data.hmm_unigram(params), "models": models,
             "machine": f"{platform.machine()}, {os.cpu_count()} cpus"}
  done = {m["name"] for m in results["models"]}
  for width, depth, heads in p["sizes"]:
    if f"w{width}d{depth}" in done:
      print(f"w{width}d{depth}: done already", flush=True)
      continue
    model = train_size(width, depth, heads, select, tokens)
    print(f"w{width}d{depth}: N = {model['non_embedding_params']}, held-out loss "
          f"{model['loss']:.4f} at lr {model['best_lr']:g} (Bayes {results['bayes_nats']:.4f}), "
          f"{model['wall_s'] / 60:.1f} min", flush=True)
    results["models"].append(model)
    results["models"].sort(key=lambda m: m["non_embedding_params"])
    with open(out + ".tmp", "w") as f:   # complete sizes survive an interruption
      json.dump(results, f)
    os.replace(out + ".tmp", out)
  results["wall_s"] = sum(m["wall_s"] for m in results["models"])
  reps = p.get("reps", 1000)   # bootstrap replicates; the log-L fit's take ~30 ms each
  fit = scaling.study_fit(results, held_out=FLAGS.held_out, reps=reps)
  total = scaling.study_fit(results, held_out=FLAGS.held_out, reps=reps, space="total")
  results["fit"], results["fit_total"] = fit, total
  with open(out + ".tmp", "w") as f:
    json.dump(results, f)
  os.replace(out + ".tmp", out)
  plot_path = os.path.join(FLAGS.root, "scaling_laws.png")
  scaling.plot(plot_path, results, fit, total)
  print(scaling.markdown(results, fit, total))
  print(f"this command {(time.perf_counter() - start) / 60:.1f} min, training every size "
        f"{results['wall_s'] / 60:.1f} min; {out}; {plot_path}")


if __name__ == "__main__":
  study.run(main, lambda: f"the sizes already trained are kept in {FLAGS.root}/"
            "scaling_laws.json; rerun the command to complete the study")
