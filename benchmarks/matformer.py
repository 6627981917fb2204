"""MatFormer (Devvrit et al. 2023) on the HMM language model: nested MLPs against models trained
at each width, Mix'n'Match, and the extracted submodels' step times.

  python benchmarks/matformer.py                 # ~9 min on 2 CPU cores; reruns skip done runs

Every model is configs/lm_hmm.py:cpu at depth 2 (600 steps, batch 64, sequences of 64): one
MatFormer with model.mlp.granularities=(8, 4, 2, 1), whose loss sums the four widths d_ff/8 ...
d_ff (d_ff = 512), and four dense baselines with every MLP at 64, 128, 256 and 512 units, each
trained from scratch for the same 600 steps (the MatFormer's step costs more: four forward and
backward passes).

It prints, on the same 512 held-out sequences (the task's eval/lm.json set):
  1. each granularity's loss beside the baseline of that width, and their ratio (the claim:
     within 2%);
  2. all 16 per-layer choices (Mix'n'Match) by FFN parameters, with Spearman's rho between the
     parameter count and minus the loss (the claim: >= 0.9), and whether any choice is worse
     than the smallest uniform one;
  3. consistency: how often the smallest submodel's next-token argmax agrees with the full
     model's, against the smallest baseline's agreement with the largest baseline;
  4. each uniform submodel written out by `matformer.extract` as a dense run, and its train and
     forward step times beside the full model's (ratios in the same process).
Writes --out/matformer.json.
"""
import concurrent.futures
import functools
import json
import os
import platform
import time

import jax
import numpy as np
import optax
from absl import app, flags, logging
from scipy import stats

import study
from substrax.configs import lm_hmm
from substrax.train import matformer, trainer
from substrax.train.tasks import lm as lm_task

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/matformer", "Where the runs and matformer.json go.")
flags.DEFINE_integer("timing_steps", 10, "Steps timed per submodel (after one compile step).")

FACTORS = (8, 4, 2, 1)
DEPTH = 2


def configs():
  """The overrides of lm_hmm:cpu: (the MatFormer's, {units: each dense baseline's})."""
  mat = {"model.depth": DEPTH, "model.mlp.granularities": FACTORS}
  base = {512 // f: {"model.depth": DEPTH, "model.mlp.hidden": (512 // f,) * DEPTH}
          for f in FACTORS}
  return mat, base


def build(overrides):
  """lm_hmm:cpu with the overrides, as `substrax-train --config.KEY=VALUE` applies them."""
  c = lm_hmm.get_config("cpu")
  c.progress_bar = False
  c.update_from_flattened_dict(overrides)
  return c


def scorer(model, tokens, batch=64):
  """(params, units) -> (mean held-out loss, argmax predictions [n, length])."""
  @functools.partial(jax.jit, static_argnums=2)
  def one(params, x, units):
    logits = model.apply({"params": params}, x[:, :-1], units=units)
    return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]), logits.argmax(-1)

  def score(params, units=None):
    parts = [one(params, tokens[i:i + batch], units) for i in range(0, len(tokens), batch)]
    return (float(np.mean(np.concatenate([np.asarray(p[0]) for p in parts]))),
            np.concatenate([np.asarray(p[1]) for p in parts]))
  return score


def step_times(config, workdir, steps, repeats=3):
  """(train step, forward on one batch) in seconds per call for the run in `workdir`: the best
  of `repeats` timings of `steps` calls each, after compiling."""
  exp, state, _ = trainer.load_run(config, workdir)
  with exp.activate():
    tokens = exp.eval_data["tokens"][:config.batch_size]
    forward = jax.jit(lambda p, x: exp.task.model.apply({"params": p}, x[:, :-1]))
    forward(state.params, tokens).block_until_ready()
    state, _ = exp.train_step(state, exp.train_data)   # compiles
    jax.block_until_ready(state)
    train, infer = [], []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        state, _ = exp.train_step(state, exp.train_data)
      jax.block_until_ready(state)
      train.append((time.perf_counter() - start) / steps)
      start = time.perf_counter()
      for _ in range(steps):
        out = forward(state.params, tokens)
      out.block_until_ready()
      infer.append((time.perf_counter() - start) / steps)
    return min(train), min(infer)


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)   # Orbax logs every restore
  start = time.perf_counter()
  machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
             "device": str(jax.devices()[0].device_kind), "load_avg_1m": os.getloadavg()[0]}
  print(f"machine: {machine['cpu_count']} CPUs ({machine['device']}), load "
        f"{machine['load_avg_1m']:.1f}, {machine['platform']}", flush=True)
  mat_over, base_over = configs()
  runs = {"matformer": (mat_over, os.path.join(FLAGS.out, "matformer"))}
  runs.update({f"dense_{u}": (o, os.path.join(FLAGS.out, f"dense_{u}"))
               for u, o in base_over.items()})
  # Two runs at a time: these small models leave a core idle in XLA's thread pool, and the
  # MatFormer's run takes as long as the four baselines together.
  todo = [(label, overrides, workdir) for label, (overrides, workdir) in runs.items()
          if not study.finished(os.path.join(workdir, "eval", "lm.json"), 600)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(lambda run: study.train(run[0], "lm_hmm", run[2], run[1], "cpu"), todo))

  mat_config = build(mat_over)
  m = mat_config.model
  heldout = lm_task.load_source(mat_config)[1]   # the sequences eval/lm.json scores
  tokens = heldout(mat_config.eval.num_sequences, mat_config.data.length + 1)
  exp, state, _ = trainer.load_run(mat_config, runs["matformer"][1])
  with exp.activate():
    score = scorer(exp.task.model, tokens)
    mix = {}
    for choice in matformer.mix_and_match(m):
      loss, preds = score(state.params, matformer.units(m, choice))
      mix[choice] = {"ffn_params": matformer.ffn_params(m, choice), "loss": loss, "preds": preds}
  base = {}
  for u, overrides in base_over.items():
    config = build(overrides)
    bexp, bstate, _ = trainer.load_run(config, runs[f"dense_{u}"][1])
    with bexp.activate():
      loss, preds = scorer(bexp.task.model, tokens)(bstate.params)
    base[u] = {"loss": loss, "preds": preds}

  result = {"machine": machine, "config": "configs/lm_hmm.py:cpu", "depth": DEPTH,
            "factors": FACTORS, "heldout_sequences": len(tokens)}
  print(f"\n1. Each granularity against a dense model trained at that width (600 steps each), "
        f"held-out loss on {len(tokens)} sequences:\n")
  print("| MLP units | MatFormer | dense baseline | ratio |\n|---|---|---|---|")
  rows = []
  for f in FACTORS:
    u, mat_loss = 512 // f, mix[(f,) * DEPTH]["loss"]
    ratio = mat_loss / base[u]["loss"]
    rows.append({"units": u, "matformer": mat_loss, "dense": base[u]["loss"], "ratio": ratio})
    print(f"| {u} | {mat_loss:.4f} | {base[u]['loss']:.4f} | {ratio:.4f} |")
  result["granularities"] = rows
  worst = max(r["ratio"] for r in rows)
  print(f"\nworst ratio {worst:.4f}: {'within' if worst <= 1.02 else 'NOT within'} 2%")

  order = sorted(mix, key=lambda c: (mix[c]["ffn_params"], c))
  params = np.array([mix[c]["ffn_params"] for c in order])
  losses = np.array([mix[c]["loss"] for c in order])
  rho = stats.spearmanr(params, -losses).statistic
  smallest = mix[(FACTORS[0],) * DEPTH]["loss"]
  worse = [c for c in order if mix[c]["loss"] > smallest + 1e-9]
  print(f"\n2. Mix'n'Match: all {len(order)} per-layer choices (factor of layer 0, layer 1):\n")
  print("| choice | FFN params | held-out loss |\n|---|---|---|")
  for c in order:
    print(f"| {c} | {mix[c]['ffn_params']:,} | {mix[c]['loss']:.4f} |")
  print(f"\nSpearman rho(FFN params, -loss) = {rho:.3f} ({'>=' if rho >= 0.9 else '<'} 0.9); "
        f"choices worse than the smallest uniform one: {worse or 'none'}")
  result["mix_and_match"] = [{"choice": c, "ffn_params": mix[c]["ffn_params"],
                              "loss": mix[c]["loss"]} for c in order]
  result["spearman_rho"] = rho
  result["worse_than_smallest"] = worse

  small, full = mix[(FACTORS[0],) * DEPTH]["preds"], mix[(1,) * DEPTH]["preds"]
  mat_agree = float(np.mean(small == full))
  base_agree = float(np.mean(base[512 // FACTORS[0]]["preds"] == base[512]["preds"]))
  print(f"\n3. Consistency: next-token argmax agreement of the d_ff/{FACTORS[0]} model with the "
        f"full one: MatFormer {mat_agree:.4f}, independently trained baselines {base_agree:.4f}")
  result["consistency"] = {"matformer": mat_agree, "baselines": base_agree}

  print(f"\n4. Extracted submodels (dense runs written by matformer.extract), milliseconds per "
        f"call, the best of 3 x {FLAGS.timing_steps} calls after compiling, batch 64 x 64 "
        "tokens:\n")
  print("| submodel | MLP units | train step ms | ratio | forward ms | ratio |\n"
        "|---|---|---|---|---|---|")
  times = {}
  for f in sorted(FACTORS):
    choice = (f,) * DEPTH
    out = os.path.join(FLAGS.out, "extracted", f"g{f}")
    sub = (matformer.submodel_config(mat_config, choice) if os.path.exists(
        os.path.join(out, "config.json")) else matformer.extract(
            mat_config, runs["matformer"][1], choice, out))
    times[f] = step_times(sub, out, FLAGS.timing_steps)
  for f in sorted(FACTORS):
    train, forward = times[f]
    print(f"| d_ff/{f} | {512 // f} | {1e3 * train:.2f} | {train / times[1][0]:.3f} | "
          f"{1e3 * forward:.2f} | {forward / times[1][1]:.3f} |")
  result["step_times"] = {str(f): {"train_s": t[0], "forward_s": t[1]} for f, t in times.items()}
  result["wall_s"] = time.perf_counter() - start
  print(f"\nwall time {result['wall_s'] / 60:.1f} min (runs already trained are reused)")
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "matformer.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
