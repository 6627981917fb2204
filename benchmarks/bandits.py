"""In-context bandits (Lin, Bai & Mei 2024): Algorithm Distillation against DPT, and how regret
moves with the share of off-policy episodes in pretraining.

  python benchmarks/bandits.py                      # both studies, configs/bandit.py:cpu
  python benchmarks/bandits.py --studies=ratio --fractions=0,0.5,0.9,1

Studies (each trains its members together: study.train_together, one compile per study):
  objectives  linear bandits, LinUCB episodes: AD (targets: LinUCB's next action) and DPT
              (targets: the best arm), for each seed
  ratio       Bernoulli bandits, Thompson-sampling labels: a fraction f of the pretraining
              episodes is played uniformly (the labels stay Thompson's choice given the
              history), f in --fractions; AD

It also measures how close LinUCB's own decisions are (the gap between its two best indices),
which bounds how well any approximate imitator can agree with it.

Every member's report is the task's own eval/bandit.json (regret over 200 new environments next
to every expert, agreement on held-out expert episodes) in ROOT/<study>/<member>; finished
studies are skipped, so rerunning the command completes it. Then it prints the markdown tables
and writes ROOT/bandits.json and ROOT/bandits.png (cumulative regret curves; regret against f).
"""
import contextlib
import io
import json
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

import study
from substrax.configs import bandit as bandit_config
from substrax.configs import common
from substrax.data import bandits, episodes
from substrax.train import trainer
from substrax.train.analysis import reporting
from substrax.train.errors import ConfigError
from substrax.train.tasks import bandit

flags.DEFINE_enum("preset", "cpu", common.PRESETS, "Preset of configs/bandit.py.")
flags.DEFINE_list("studies", ["objectives", "ratio"], "Which studies to run.")
flags.DEFINE_list("seeds", ["0"], "Training seeds (config.seed) of the objectives study.")
flags.DEFINE_list("fractions", ["0", "0.5", "0.9"], "Off-policy fractions of the ratio study.")
flags.DEFINE_integer("chunk", 250, "Steps per compiled call (progress is printed after each).",
                     lower_bound=1)
flags.DEFINE_string("root", "runs/bandits", "Where the runs go.")
FLAGS = flags.FLAGS
STUDIES = ("objectives", "ratio")


def values(flag: str, cast) -> list:
  """A list flag's values, each parsed once: one line naming the flag for a bad or repeated
  value, or for none."""
  raw = FLAGS[flag].value
  try:
    parsed = [cast(v) for v in raw]
  except ValueError:
    raise app.UsageError(f"--{flag}: every value must be a {cast.__name__}, got {raw}") from None
  if not parsed or len(set(parsed)) < len(parsed):
    raise app.UsageError(f"--{flag}: needs distinct values, got {raw}")
  return parsed


def members(name: str) -> dict:
  """{member name: config} of a study."""
  out = {}
  if name == "objectives":
    for seed in values("seeds", int):
      for objective in bandit.OBJECTIVES:
        c = bandit_config.get_config(FLAGS.preset)
        c.data.objective, c.seed = objective, seed
        out[f"{objective}_seed{seed}"] = c
  else:
    for f in values("fractions", float):
      c = bandit_config.get_config(FLAGS.preset)
      c.data.update(env="bernoulli", expert="thompson", off_policy=f)
      out[f"off{f:g}"] = c
  for c in out.values():
    trainer.validate(c)
  return out


def claim_root():
  """ROOT/study.json records the preset; a rerun with another would mix the studies of two
  presets (a finished member is recognised by its step count alone), so it stops instead."""
  path = os.path.join(FLAGS.root, "study.json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f)["preset"] != FLAGS.preset:
        raise app.UsageError(f"{FLAGS.root} holds studies of another preset ({path}); "
                             "choose another --root")
  os.makedirs(FLAGS.root, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"preset": FLAGS.preset}, f)


def linucb_margins(num: int = 500) -> dict:
  """How close LinUCB's decisions are: the gap between its two best indices at every step after
  the first, over `num` of its episodes of the preset (float64 numpy, explicit inverses)."""
  config = bandit_config.get_config(FLAGS.preset)
  spec = bandits.Spec.from_config(config.data)
  run = episodes.trajectories(bandits, spec, jax.random.key(0), num, "linucb")
  arms, rewards = (np.asarray(run[k], np.float64) for k in ("arms", "rewards"))
  x = np.take_along_axis(arms, np.asarray(run["actions"])[..., None], 1)    # [num, H, f]
  gram = np.cumsum(np.einsum("ntf,ntg->ntfg", x, x), 1)
  ar = np.cumsum(x * rewards[..., None], 1)
  gaps = []
  for t in range(1, spec.horizon):   # the index at step t, from the steps before it
    v_inv = np.linalg.inv(np.eye(spec.features) + gram[:, t - 1])
    index = (np.einsum("naf,nfg,ng->na", arms, v_inv, ar[:, t - 1])
             + bandits.LINUCB_ALPHA * np.sqrt(np.einsum("naf,nfg,nag->na", arms, v_inv, arms)))
    top = np.sort(index, 1)
    gaps.append(top[:, -1] - top[:, -2])
  gaps = np.stack(gaps, 1)
  return {"episodes": num, "below_0.05": float((gaps < 0.05).mean()),
          "below_0.1": float((gaps < 0.1).mean()), "median": float(np.median(gaps)),
          "median_by_step": np.median(gaps, 0).tolist()}


def report_path(name: str, member: str) -> str:
  return os.path.join(FLAGS.root, name, member, "eval", "bandit.json")


def train_study(name: str, configs: dict):
  """Trains and evaluates a study's members; its wall time goes to ROOT/<study>/wall_time.json."""
  start = time.perf_counter()
  task, states, _ = study.train_together(list(configs.values()), bandit.build, FLAGS.chunk, name)
  # The members share the environment, so one compiled rollout of the model serves them all.
  model_regret = bandit.make_model_regret(next(iter(configs.values())).data, task.model)
  for i, (member, config) in enumerate(configs.items()):
    params = jax.tree.map(lambda x, i=i: x[i], states.params)
    with contextlib.redirect_stdout(io.StringIO()):
      report = bandit.evaluate_online(config, task.model, model_regret, {"params": params},
                                      bandit.held_out(config), os.path.join(FLAGS.root, name,
                                                                           member),
                                      config.num_steps)
    print(f"  {name} {member}: regret {report['final_regret']['model']['mean']:.2f}, "
          f"agreement {report['agreement']['mean']:.3f}", flush=True)
  wall = time.perf_counter() - start
  with open(os.path.join(FLAGS.root, name, "wall_time.json"), "w") as f:
    json.dump({"wall_s": wall, "members": len(configs)}, f)
  print(f"{name}: {wall / 60:.2f} min for {len(configs)} members", flush=True)


def row(report: dict, name: str) -> str:
  return reporting.interval(report["final_regret"][name], 2)


def tables(reports: dict) -> str:
  lines = []
  if "objectives" in reports:
    runs = reports["objectives"]
    first = next(iter(runs.values()))
    lines += [f"Linear bandits, H = {first['horizon']}, {first['num_envs']} new environments: "
              "cumulative regret (95% CI) and the learner's regret over LinUCB's and uniform's "
              "(paired bootstrap)", "",
              "| policy | regret at H | / LinUCB | / uniform | agreement with LinUCB |",
              "|---|---|---|---|---|"]
    for member, r in runs.items():
      ratio = {x: r["ratio"][x] for x in ("linucb", "uniform")}
      a = r["agreement"]
      lines.append(f"| {member} | {row(r, 'model')} | "
                   + " | ".join(reporting.interval(v) for v in ratio.values())
                   + f" | {reporting.interval(a)} |")
    for x in bandits.EXPERTS:
      lines.append(f"| {x} | {row(first, x)} | | | |")
    lines.append("")
  if "ratio" in reports:
    runs = reports["ratio"]
    first = next(iter(runs.values()))
    lines += [f"Bernoulli bandits, AD of Thompson sampling, H = {first['horizon']}: regret against "
              "the off-policy (uniform) fraction of the pretraining episodes", "",
              "| off-policy fraction | regret at H | / Thompson | agreement with Thompson |",
              "|---|---|---|---|"]
    for r in runs.values():
      t, a = r["ratio"]["thompson"], r["agreement"]
      lines.append(f"| {r['off_policy']:g} | {row(r, 'model')} | {reporting.interval(t)} | "
                   f"{reporting.interval(a)} |")
    for x in ("thompson", "uniform"):
      lines.append(f"| {x} | {row(first, x)} | | |")
  return "\n".join(lines)


def plot(path: str, reports: dict):
  panels = [k for k in STUDIES if k in reports]
  fig = Figure(figsize=(5.2 * len(panels), 4.0), dpi=120)
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  for ax, name in zip(axes, panels):
    runs = reports[name]
    first = next(iter(runs.values()))
    t = np.arange(1, first["horizon"] + 1)
    curves = {m: r["regret"]["model"] for m, r in runs.items()}
    curves |= {x: first["regret"][x] for x in bandits.EXPERTS}
    for label, c in curves.items():
      learner = label in runs
      mean, ci = np.asarray(c["mean"]), np.asarray(c["ci95"])
      line, = ax.plot(t, mean, lw=2.2 if learner else 1.1, ls="-" if learner else "--",
                      label=label if name == "objectives" else
                      (f"AD, off-policy {runs[label]['off_policy']:g}" if learner else label))
      ax.fill_between(t, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.15, lw=0)
    ax.set(xlabel="step t", ylabel="cumulative regret",
           title="linear bandit, LinUCB episodes" if name == "objectives"
           else "Bernoulli bandit, Thompson labels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)


def main(argv):
  del argv
  unknown = set(FLAGS.studies) - set(STUDIES)
  if unknown or not FLAGS.studies:
    raise app.UsageError(f"--studies: choose from {STUDIES}, got {FLAGS.studies}")
  try:
    plans = {name: members(name) for name in FLAGS.studies}
  except (ConfigError, ValueError) as err:
    raise app.UsageError(str(err)) from None
  claim_root()
  walls, reports = {}, {}
  for name, configs in plans.items():
    num_steps = next(iter(configs.values())).num_steps
    if all(study.finished(report_path(name, m), num_steps) for m in configs):
      print(f"{name}: done already", flush=True)
    else:
      train_study(name, configs)
    reports[name] = {}
    for m in configs:
      with open(report_path(name, m)) as f:
        reports[name][m] = json.load(f)
    walls[name] = study.read_wall(os.path.join(FLAGS.root, name))
  margins = linucb_margins()
  print(tables(reports))
  print(f"\nLinUCB's two best indices, {margins['episodes']} of its episodes: gap < 0.05 in "
        f"{margins['below_0.05']:.1%} of decisions, < 0.1 in {margins['below_0.1']:.1%}, median "
        f"{margins['median']:.3f}")
  with open(os.path.join(FLAGS.root, "bandits.json"), "w") as f:
    json.dump({"preset": FLAGS.preset, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
               "study_wall_s": walls, "linucb_margins": margins, "reports": reports}, f,
              indent=1)
  plot(os.path.join(FLAGS.root, "bandits.png"), reports)
  print("training and evaluation: " + ", ".join(
      f"{name} {w / 60:.1f} min" for name, w in walls.items() if w is not None)
      + f"; {FLAGS.root}/bandits.json, {FLAGS.root}/bandits.png")


if __name__ == "__main__":
  study.run(main, lambda: f"finished studies are kept under {FLAGS.root}; rerun the command "
            "to complete them")
