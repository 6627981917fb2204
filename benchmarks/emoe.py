"""Emergent mixture of experts (Qiu et al. 2023, arXiv 2310.10908) in an in-context regressor.

  python benchmarks/emoe.py --out=runs/emoe           # about 6 min on 2 CPU cores

EMoE adds no parameters: a trained MLP's hidden units are clustered by their keys (the columns
of W1) into N experts, a token keeps the units of the k experts whose mean key scores its input
highest, and the groups and gates stay fixed while the weights fine-tune (models/emoe.py,
models/transformer.MLP). One process, in this order:

1. Pretrain one ICL transformer on icl_mixture's prompts (linear, sparse_linear, relu_2nn),
   CPU-sized; its error is printed beside the baselines of each family.
2. Modularity: each layer's MLP activations on held-out mixture prompts; the top-k mass
   (models/emoe.top_k_mass, N = 16, k = 4) of the k-means groups against random balanced
   partitions of the same units, and the mass that the gates actually route to.
3. Fine-tune on FAMILY, one run per seed and arm, every run from the same pretrained weights
   with a fresh AdamW and, for a seed, the same steps, lr and batches: dense; EMoE with every
   MLP converted; EMoE with only the last MLP converted (the paper's practice: one layer near
   the top). Each EMoE model is scored as an MoE (top_k = k) and dense (its fine-tuned weights
   in the dense model, which top_k = N equals), and as converted before any fine-tuning.
4. Normalised squared error in-domain (at k = n - 1 and averaged over k) and on Garg's OOD
   suite (train/analysis/ood.py), per seed, with the paired differences EMoE - dense and a
   paired t-test over the seeds (scipy.stats.ttest_rel).

Prints markdown tables, the machine and the wall time; writes OUT/emoe.json.
"""
import argparse
import dataclasses
import functools
import json
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from substrax.configs import icl_mixture
from substrax.data import icl as icl_data
from substrax.models import baselines, emoe, transformer
from substrax.train import optim, step as step_lib, trainer
from substrax.train.analysis import ood
from substrax.train.tasks import icl as icl_task

EXPERTS, TOP_K = 16, 4
FAMILY = "sparse_linear"   # the fine-tuning family: see docs/emoe.md for why
SEEDS = (0, 1, 2)
PRETRAIN = dict(lr=4e-3, warmup=200)
FINETUNE = dict(lr=1e-3, warmup=30)
RANDOM_PARTITIONS = 50
MODULARITY_PROMPTS = 256   # x (2n - 1) tokens each
EVAL_PROMPTS = 2048        # in-domain, per family
OOD_PROMPTS = 512          # per OOD setting
BASELINES = ("least_squares", "ridge", "lasso")
# EMoE arms: which MLPs are converted (the others stay dense).
ARMS = {"all": "every MLP", "last": "the last MLP only"}


def icl_config(function_class: str, steps: int, lr: float, warmup: int, top_k: int = 0):
  """icl_mixture's CPU config on `function_class` prompts (the warmup at most a tenth of the
  run); top_k > 0 makes every MLP EMoE with EXPERTS experts.

  The model is icl_mixture:cpu's at half the width and twice the MLP ratio: the same 256 MLP
  units (16 per expert) at about half the step time, which the CPU budget needs; per step it
  learned the mixture at least as fast as width 64 did (3000-step pilots)."""
  c = icl_mixture.get_config("cpu")
  c.data.function_class = function_class
  c.model.update(width=32, mlp_ratio=8)
  c.model.mlp.update(experts=EXPERTS if top_k else 0, top_k=top_k)
  c.num_steps = steps
  c.optim.update(learning_rate=lr, warmup_steps=min(warmup, steps // 10))
  c.eval.claims = ()   # 'selection' scores mixture runs only; this script scores its own way
  c.progress_bar = False
  return c


def pretrain(steps: int):
  """(experiment, host params) after `steps` of mixture training with the trainer's own step."""
  exp = trainer.setup(icl_config("mixture", steps, **PRETRAIN))
  with exp.activate():
    state = exp.init()
    for step in range(1, steps + 1):
      state, metrics = exp.train_step(state, exp.train_data)
      if step % 1000 == 0 or step == steps:
        print(f"  pretrain step {step}: loss {float(metrics['loss']):.3f}", flush=True)
  return exp, jax.device_get(state.params)


def fine_tuner(config):
  """(experiment, run): run(params, model_state, seed) trains config.num_steps from `params`
  with a fresh optimiser on the batches exp.train_step would draw under config.seed = seed.
  One compiled step serves every seed (the trainer's closes over its seed: one compile per
  setup, which on 2 cores costs more than the fine-tuning itself). It is built from the
  trainer's own pieces: task.sample_batch with the trainer's data key, step.train_step and the
  config's optimizer."""
  exp = trainer.setup(config)
  schedule = optim.make_schedule(config.optim, config.num_steps)
  tx = optim.make_optimizer(config.optim, schedule)
  update = functools.partial(step_lib.train_step, loss_fn=exp.task.loss_fn, tx=tx,
                             schedule=schedule)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, data_key):
    batch = exp.task.sample_batch(exp.train_data, jax.random.fold_in(data_key, state.step),
                                  state.step)
    return update(state, batch)

  def run(params, model_state, seed):
    params = jax.device_put(params)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=tx.init(params), model_state=jax.device_put(model_state))
    data_key = jax.random.fold_in(jax.random.key(seed), 1)   # trainer.setup's data key
    with exp.activate():
      for _ in range(config.num_steps):
        state, metrics = step(state, data_key)
    return jax.device_get(state.params), float(metrics["loss"])
  return exp, run


def densify(state, layers):
  """The 'emoe' collection with the MLPs of `layers` computing densely: all their units in
  expert 0 and all gates zero, so the scores tie and lax.top_k, which takes the lowest index
  first, always keeps expert 0."""
  out = jax.tree.map(np.array, state)
  for i in layers:
    mlp = out["backbone"][f"block_{i}"]["mlp"]
    mlp["group"], mlp["gate"] = np.zeros_like(mlp["group"]), np.zeros_like(mlp["gate"])
  return out


def mlp_inputs_and_activations(model, params, xs, ys, depth: int):
  """Each layer's MLP input x [tokens, width] (its norm_mlp output, captured) and hidden
  activations gelu(W1 x + b1) [tokens, hidden], recomputed from x (the MLP keeps none)."""
  _, captured = model.apply({"params": params}, xs, ys, mutable="intermediates",
                            capture_intermediates=lambda module, _: module.name == "norm_mlp")
  out = []
  for i in range(depth):
    x = captured["intermediates"]["backbone"][f"block_{i}"]["norm_mlp"]["__call__"][0]
    fc = params["backbone"][f"block_{i}"]["mlp"]["fc"]
    h = nn.gelu(transformer.dense(x, fc["kernel"], fc["bias"], jnp.float32))
    out.append((np.asarray(x).reshape(-1, x.shape[-1]), np.asarray(h).reshape(-1, h.shape[-1])))
  return out


def routed_mass(x, h, group, gate) -> float:
  """The mean fraction of a token's |activation| mass in the TOP_K experts that its gate scores
  pick: how much of the MLP the MoE keeps (top_k_mass is the most any routing could keep)."""
  mass = np.abs(h) @ np.eye(EXPERTS)[group]                          # [tokens, experts]
  chosen = np.argsort(-(x @ np.asarray(gate).T), axis=1)[:, :TOP_K]
  return float(np.mean(np.take_along_axis(mass, chosen, 1).sum(1) / np.maximum(mass.sum(1),
                                                                                1e-30)))


def modularity(layers, states, seed: int = 0):
  """Per layer, from its MLP inputs and activations: the top-k mass of each k-means grouping
  in `states` ('emoe' collections) and of RANDOM_PARTITIONS random balanced partitions of the
  same units, and the mass each grouping's gates route to."""
  rng = np.random.default_rng(seed)
  rows = []
  for i, (x, h) in enumerate(layers):
    hidden = h.shape[-1]
    mlps = [state["backbone"][f"block_{i}"]["mlp"] for state in states]
    km = [emoe.top_k_mass(h, mlp["group"], EXPERTS, TOP_K) for mlp in mlps]
    rand = [emoe.top_k_mass(h, rng.permutation(np.arange(hidden) // (hidden // EXPERTS)),
                            EXPERTS, TOP_K) for _ in range(RANDOM_PARTITIONS)]
    rows.append({"layer": i, "kmeans": km, "random_mean": float(np.mean(rand)),
                 "random_std": float(np.std(rand, ddof=1)), "random_max": float(np.max(rand)),
                 "routed": [routed_mass(x, h, mlp["group"], mlp["gate"]) for mlp in mlps]})
  return rows


def scored_k(spec, setting: str) -> int:
  """The prefix each setting is scored at: the last, or d - 1 for orthogonal queries, which
  exist only for k < d (as in ood.py)."""
  return min(spec.n_points, spec.n_dims) - 1 if setting == "orthogonal_query" else \
      spec.n_points - 1


def curve(predict, prompt, spec) -> np.ndarray:
  """Normalised squared error per k [n] of a predictor (xs, ys) -> predictions [B, n]."""
  preds = jax.block_until_ready(predict(prompt["xs"], prompt["ys"]))
  return np.asarray(((preds - prompt["ys"]) ** 2 / spec.normalizer).mean(0))


def score(predict, in_domain, ood_prompts, spec) -> dict:
  """{'curve': in-domain error per k, 'ood': {setting: error at the setting's scored k}}."""
  return {"curve": curve(predict, in_domain, spec).tolist(),
          "ood": {setting: float(curve(predict, ood.at_query(p, scored_k(spec, setting)),
                                       spec)[scored_k(spec, setting)])
                  for setting, p in ood_prompts.items()}}


def paired(a, b) -> dict:
  """a - b over paired seeds: the differences, their mean and std and ttest_rel's p-value."""
  d = np.asarray(a) - np.asarray(b)
  return {"diff": d.tolist(), "mean": float(d.mean()), "std": float(d.std(ddof=1)),
          "p": float(stats.ttest_rel(a, b).pvalue)}


def pm(values) -> str:
  return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def machine() -> dict:
  return {"platform": platform.platform(), "uname": " ".join(platform.uname()),
          "cpus": os.cpu_count(), "devices": [str(d) for d in jax.devices()],
          "jax": jax.__version__, "python": platform.python_version()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/emoe", help="where emoe.json goes")
  parser.add_argument("--pretrain_steps", type=int, default=5000)
  parser.add_argument("--finetune_steps", type=int, default=300)
  args = parser.parse_args()
  start = time.perf_counter()
  walls, load = {}, {"start": os.getloadavg()}

  def lap(name):
    walls[name] = time.perf_counter() - start - sum(walls.values())
    print(f"[{name}: {walls[name]:.0f} s]", flush=True)

  # 1. Pretraining, and the model against the baselines on each family of the mixture. The
  # fine-tuning family's prompts here are also its in-domain test set.
  print(f"pretraining on the mixture, {args.pretrain_steps} steps", flush=True)
  pre_exp, pre_params = pretrain(args.pretrain_steps)
  model, depth = pre_exp.task.model, pre_exp.config.model.depth
  apply = jax.jit(model.apply)
  ft_config = icl_config(FAMILY, args.finetune_steps, **FINETUNE)
  spec, e = icl_data.Spec.from_config(ft_config.data), ft_config.eval
  key = jax.random.key(e.seed)
  baseline_fns = baselines.baseline_fns(ridge_alpha=e.ridge_alpha, lasso_alpha=e.lasso_alpha,
                                        knn_k=e.knn_k, gd_steps_n=e.gd_steps)
  predictors = {"transformer": functools.partial(apply, {"params": pre_params}),
                **{b: jax.jit(baseline_fns[b]) for b in BASELINES}}
  sample = jax.jit(icl_data.sample, static_argnums=(0, 2))
  family_specs = {f: dataclasses.replace(spec, function_class=f) for f in spec.mixture}
  family_prompts = {f: sample(fs, key, EVAL_PROMPTS) for f, fs in family_specs.items()}
  pretrained = {f: {name: curve(fn, family_prompts[f], fs) for name, fn in predictors.items()}
                for f, fs in family_specs.items()}
  lap("pretrain")

  # 2. Conversion, identity checks, modularity.
  _, run_dense = fine_tuner(ft_config)
  emoe_ft, run_emoe = fine_tuner(icl_config(FAMILY, args.finetune_steps, **FINETUNE,
                                            top_k=TOP_K))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                          emoe_ft.abstract_state.model_state["emoe"])
  converted = {s: emoe.convert(pre_params, template, s) for s in SEEDS}
  states = {"all": converted,
            "last": {s: densify(c, range(depth - 1)) for s, c in converted.items()}}
  moe_model = emoe_ft.task.model
  apply_moe = jax.jit(moe_model.apply)
  full = icl_task.make_model(icl_config(FAMILY, 1, **FINETUNE, top_k=EXPERTS))
  probe = sample(icl_data.Spec.from_config(pre_exp.config.data), jax.random.fold_in(key, 1),
                 MODULARITY_PROMPTS)
  xs, ys = probe["xs"], probe["ys"]
  dense_out = apply({"params": pre_params}, xs, ys)
  checks = {
      "top_k = N vs dense": float(jnp.max(jnp.abs(jax.jit(full.apply)(
          {"params": pre_params, "emoe": converted[0]}, xs, ys) - dense_out))),
      "zero-gate layers vs dense": float(jnp.max(jnp.abs(apply_moe(
          {"params": pre_params, "emoe": densify(converted[0], range(depth))},
          xs, ys) - dense_out)))}
  print("identity checks, max |difference|: " + ", ".join(f"{k} {v:.1e}"
                                                          for k, v in checks.items()))
  assert max(checks.values()) < 1e-4, checks
  mod = modularity(mlp_inputs_and_activations(model, pre_params, xs, ys, depth),
                   list(converted.values()))
  lap("convert + modularity")

  # 3. Fine-tuning: every arm from the same pretrained params; for a seed, the same batches.
  runs = {s: {} for s in SEEDS}
  for s in SEEDS:
    runs[s]["dense"] = run_dense(pre_params, {}, s)
    for arm in ARMS:
      runs[s][arm] = run_emoe(pre_params, {"emoe": states[arm][s]}, s)
    print(f"  seed {s}: final train loss " + ", ".join(
        f"{name} {loss:.3f}" for name, (_, loss) in runs[s].items()), flush=True)
  lap("fine-tune")

  # 4. Evaluation, every model on the same prompts: in-domain and each OOD setting.
  sample_ood = jax.jit(ood.sample_ood, static_argnums=(0, 1, 3))
  ood_prompts = {setting: sample_ood(spec, setting, key, OOD_PROMPTS)
                 for setting in ood.SETTINGS if setting != "standard"}

  def scored(predict):
    return score(predict, family_prompts[FAMILY], ood_prompts, spec)
  reference = scored(functools.partial(apply, {"params": pre_params}))
  converted_only = {f"EMoE {arm}, MoE, not fine-tuned": [scored(functools.partial(
      apply_moe, {"params": pre_params, "emoe": states[arm][s]})) for s in SEEDS] for arm in ARMS}
  models = {}
  for s in SEEDS:
    models.setdefault("dense", []).append(
        scored(functools.partial(apply, {"params": runs[s]["dense"][0]})))
    for arm in ARMS:
      params = runs[s][arm][0]
      models.setdefault(f"EMoE {arm}, MoE", []).append(scored(functools.partial(
          apply_moe, {"params": params, "emoe": states[arm][s]})))
      models.setdefault(f"EMoE {arm}, dense", []).append(
          scored(functools.partial(apply, {"params": params})))
  lap("evaluate")

  # Metrics per model and seed, and the paired differences against dense fine-tuning.
  last = spec.n_points - 1
  ood_settings = list(ood_prompts)

  def metrics(r):
    return {f"error k={last}": r["curve"][-1], "error mean over k": float(np.mean(r["curve"])),
            "OOD mean": float(np.mean([r["ood"][s] for s in ood_settings])),
            **{s: r["ood"][s] for s in ood_settings}}
  per_seed = {name: [metrics(r) for r in rs] for name, rs in models.items()}
  before = {name: [metrics(r) for r in rs] for name, rs in converted_only.items()}
  names = list(per_seed["dense"][0])
  diffs = {name: {m: paired([r[m] for r in rs], [r[m] for r in per_seed["dense"]])
                  for m in names} for name, rs in per_seed.items() if name != "dense"}
  wall = time.perf_counter() - start
  load["end"] = os.getloadavg()

  # Tables.
  info = machine()
  print(f"\nMachine: {info['uname']}; {info['cpus']} CPUs; devices {info['devices']}; "
        f"jax {info['jax']}; load average {load['start'][0]:.1f} at start, "
        f"{load['end'][0]:.1f} at end. Wall time {wall:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + ").")
  ks = sorted({2, spec.n_dims, last})
  print(f"\n### Pretrained model ({args.pretrain_steps} steps on the mixture) against the "
        f"baselines, {EVAL_PROMPTS} prompts per family\n")
  print("| family | predictor | " + " | ".join(f"k={k}" for k in ks) + " | mean over k |")
  print("|---|---|" + "---:|" * (len(ks) + 1))
  for f, curves in pretrained.items():
    for name, c in curves.items():
      print(f"| {f} | {name} | " + " | ".join(f"{c[k]:.3f}" for k in ks)
            + f" | {c.mean():.3f} |")
  print(f"\n### Modularity: top-{TOP_K} mass of {EXPERTS} experts, held-out mixture tokens "
        f"({MODULARITY_PROMPTS} prompts x {2 * spec.n_points - 1})\n")
  print(f"| layer | k-means ({len(SEEDS)} seeds) | random balanced ({RANDOM_PARTITIONS}) "
        "| max random | ratio | z | routed by the gates |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in mod:
    km = np.mean(r["kmeans"])
    print(f"| {r['layer']} | {pm(r['kmeans'])} | {r['random_mean']:.4f} ± "
          f"{r['random_std']:.4f} | {r['random_max']:.4f} | {km / r['random_mean']:.3f} | "
          f"{(km - r['random_mean']) / r['random_std']:.1f} | {pm(r['routed'])} |")
  print(f"\n### Fine-tuning on {FAMILY}: {args.finetune_steps} steps, lr {FINETUNE['lr']}, "
        f"seeds {list(SEEDS)}; error on {EVAL_PROMPTS} in-domain prompts and the mean over the "
        "OOD settings below\n")
  print(f"| model | error k={last} per seed | mean ± std | mean over k per seed | mean ± std "
        "| OOD mean, mean ± std |")
  print("|---|---|---:|---|---:|---:|")
  for name, rs in {**per_seed, **before}.items():
    a, b = [r[f"error k={last}"] for r in rs], [r["error mean over k"] for r in rs]
    print(f"| {name} | " + ", ".join(f"{v:.4f}" for v in a) + f" | {pm(a)} | "
          + ", ".join(f"{v:.4f}" for v in b) + f" | {pm(b)} | {pm([r['OOD mean'] for r in rs])} |")
  for name, c in pretrained[FAMILY].items():   # the same prompts
    label = "pretrained" if name == "transformer" else name
    ood_mean = f"{metrics(reference)['OOD mean']:.4f}" if name == "transformer" else ""
    print(f"| {label} (reference) | {c[-1]:.4f} | | {c.mean():.4f} | | {ood_mean} |")
  print("\n### Paired differences, EMoE - dense (negative: EMoE better), over the seeds\n")
  print("| model | metric | Δ per seed | mean Δ ± std | ttest_rel p |")
  print("|---|---|---|---:|---:|")
  for name, ds in diffs.items():
    for m in (f"error k={last}", "error mean over k", "OOD mean"):
      d = ds[m]
      print(f"| {name} | {m} | " + ", ".join(f"{v:+.4f}" for v in d["diff"])
            + f" | {d['mean']:+.4f} ± {d['std']:.4f} | {d['p']:.3f} |")
  print(f"\n### OOD suite ({OOD_PROMPTS} prompts per setting): error at k={last} "
        f"(orthogonal_query at k={scored_k(spec, 'orthogonal_query')}), mean ± std over seeds\n")
  cols = ["pretrained", *per_seed]
  print("| setting | " + " | ".join(cols) + " |")
  print("|---|" + "---:|" * len(cols))
  for s in ood_settings + ["OOD mean"]:
    cells = [f"{metrics(reference)[s]:.3f}"]
    cells += [pm([r[s] for r in rs]) for rs in per_seed.values()]
    print(f"| {s} | " + " | ".join(cells) + " |")
  print("\n### OOD paired differences, EMoE - dense: mean Δ (ttest_rel p)\n")
  print("| setting | " + " | ".join(diffs) + " |")
  print("|---|" + "---:|" * len(diffs))
  for s in ood_settings + ["OOD mean"]:
    print(f"| {s} | " + " | ".join(f"{ds[s]['mean']:+.4f} ({ds[s]['p']:.2f})"
                                   for ds in diffs.values()) + " |")

  os.makedirs(args.out, exist_ok=True)
  result = {
      "machine": info, "load_average": load, "wall_s": wall, "phase_wall_s": walls,
      "settings": {"experts": EXPERTS, "top_k": TOP_K, "family": FAMILY, "seeds": SEEDS,
                   "pretrain_steps": args.pretrain_steps, "pretrain": PRETRAIN,
                   "finetune_steps": args.finetune_steps, "finetune": FINETUNE,
                   "random_partitions": RANDOM_PARTITIONS, "eval_prompts": EVAL_PROMPTS,
                   "ood_prompts": OOD_PROMPTS,
                   "modularity_prompts": MODULARITY_PROMPTS, "arms": ARMS},
      "identity_checks": checks,
      "pretrained_vs_baselines": {f: {n: c.tolist() for n, c in cs.items()}
                                  for f, cs in pretrained.items()},
      "modularity": mod,
      "finetune_train_loss": {s: {n: loss for n, (_, loss) in r.items()}
                              for s, r in runs.items()},
      "pretrained": reference, "models": {**models, **converted_only},
      "metrics": {**per_seed, **before}, "paired": diffs}
  with open(os.path.join(args.out, "emoe.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {args.out}/emoe.json")


if __name__ == "__main__":
  main()
