"""In-context decision making: a transformer pretrained on an expert's episodes, then let act.

Supervised pretraining as in Lin, Bai & Mei 2024. Environments: the stochastic linear and
Bernoulli bandits of data/bandits.py and the darkroom MDP of data/darkroom.py (`data.env`). Each
training episode comes from `data.expert`, or, for a `data.off_policy` fraction of them, from
uniform play; its targets are, per step,
  ad   the expert's action given the history so far (Algorithm Distillation), or
  dpt  the optimal action: the best arm, or darkroom's shortest-path move (the
       Decision-Pretrained Transformer).

evaluate() lets the model act (sampling its policy, and greedily) in `eval.num_envs` new
environments next to every expert on the same environments and step keys, and writes
eval/bandit.json and eval/bandit_regret.png: cumulative regret against the step with bootstrap
bands, the model's final regret over each expert's (paired bootstrap over environments), and
the action agreement with the expert on its held-out episodes.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from substrax.data import bandits, darkroom, episodes, pipeline
from substrax.models import bandit as bandit_model
from substrax.models import transformer
from substrax.train.analysis import reporting
from substrax.train import mesh as mesh_lib
from substrax.train.tasks import Task
from substrax.train.validation import check_backbone, require

OBJECTIVES = ("ad", "dpt")
ENVS = (*bandits.ENVS, "darkroom")


def environment(d):
  """(the data module, its Spec) of data.env: both modules have the same functions."""
  if d.env == "darkroom":
    return darkroom, darkroom.Spec.from_config(d)
  return bandits, bandits.Spec.from_config(d)


def validate(config):
  d, m, e = config.data, config.model, config.eval
  require(d.env in ENVS, "data.env",
          f"unknown environment {d.env!r}; choose one of {', '.join(ENVS)}")
  module, _ = environment(d)
  require(d.expert in module.EXPERTS, "data.expert",
          f"unknown expert {d.expert!r} for {d.env!r}; choose one of {', '.join(module.EXPERTS)}")
  require(d.objective in OBJECTIVES, "data.objective",
          f"unknown objective {d.objective!r}; choose one of {', '.join(OBJECTIVES)}")
  if d.env == "darkroom":
    require(d.size >= 2, "data.size", f"must be >= 2, got {d.size}")
  else:
    require(d.num_arms >= 2, "data.num_arms", f"must be >= 2, got {d.num_arms}")
    require(d.dim > 0, "data.dim", f"must be positive, got {d.dim}")
    # Linear Thompson sampling, which the evaluation always runs, scales its posterior by it.
    require(d.env != "linear" or d.noise > 0, "data.noise",
            f"the linear bandit needs noise > 0, got {d.noise}")
  require(d.horizon > 0, "data.horizon", f"must be positive, got {d.horizon}")
  require(d.num_envs > 0, "data.num_envs", f"must be positive, got {d.num_envs}")
  require(0 <= d.off_policy <= 1, "data.off_policy", f"must be in [0, 1], got {d.off_policy}")
  check_backbone(m)
  require(not m.mlp.granularities and not m.mlp.experts, "model.mlp",
          "the in-context learner is a dense model; leave granularities and experts empty")
  for key in ("num_envs", "episodes", "bootstrap"):
    require(e[key] > 0, f"eval.{key}", f"must be positive, got {e[key]}")


def make_model(config):
  d, m = config.data, config.model
  return bandit_model.BanditTransformer(width=m.width, depth=m.depth, horizon=d.horizon,
                                        block=transformer.block_config(m))


def model_args(d, batch):
  """The model's inputs from a batch of episodes: a bandit's arms; darkroom's actions as arms
  with one-hot features, and its states as one-hot x and y observations."""
  if d.env != "darkroom":
    return batch["arms"], batch["actions"], batch["rewards"], None
  states = batch["states"]
  arms = jnp.broadcast_to(jnp.eye(darkroom.ACTIONS), (states.shape[0], darkroom.ACTIONS,
                                                       darkroom.ACTIONS))
  observations = jax.nn.one_hot(states, d.size).reshape(*states.shape[:-1], 2 * d.size)
  return arms, batch["actions"], batch["rewards"], observations


def episodes_of(config, key, num, off_policy):
  """The arrays a batch or an evaluation reads: the model's inputs, targets (the objective's
  labels), labels (the expert's actions) and optimal (the optimal actions)."""
  d = config.data
  module, spec = environment(d)
  run = episodes.trajectories(module, spec, key, num, d.expert, off_policy)
  inputs = ("states",) if d.env == "darkroom" else ("arms",)
  return {k: run[k] for k in (*inputs, "actions", "rewards", "labels", "optimal")} | {
      "targets": run["labels"] if d.objective == "ad" else run["optimal"]}


def build(config) -> Task:
  d = config.data
  model = make_model(config)
  train = episodes_of(config, jax.random.fold_in(jax.random.key(config.seed), 3), d.num_envs,
                      d.off_policy)
  del train["labels"], train["optimal"]
  eval_data = held_out(config)
  model_regret = make_model_regret(d, model)

  def logits_of(params, model_state, batch):
    return model.apply({"params": params, **model_state}, *model_args(d, batch))

  def loss_fn(params, model_state, batch, step):
    del step
    logits = logits_of(params, model_state, batch)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["targets"])
    return loss, ({"accuracy": accuracy}, model_state)

  def eval_step(params, model_state, data, step):
    del step
    logits = logits_of(params, model_state, data)
    chosen = jnp.argmax(logits, -1)
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, data["targets"]).mean(),
            "agreement": jnp.mean(chosen == data["labels"]),
            "optimal_rate": jnp.mean(chosen == data["optimal"])}

  def evaluate(params, model_state, workdir, step):
    return evaluate_online(config, model, model_regret, {"params": params, **model_state},
                           eval_data, workdir, step)

  axes = {k: ("batch",) + (None,) * (v.ndim - 1) for k, v in train.items()}
  init_inputs = model_args(d, jax.tree.map(lambda x: jnp.zeros_like(x[:1]), train))
  return Task(model=model, init_inputs=init_inputs, train_data=train,
              sample_batch=pipeline.pool_sampler(config.batch_size), batch_axes=axes,
              loss_fn=loss_fn, eval_data=eval_data, eval_step=eval_step, evaluate=evaluate)


def held_out(config):
  """The expert's own episodes (no off-policy ones), for the agreement and the held-out loss."""
  return episodes_of(config, jax.random.fold_in(jax.random.key(config.eval.seed), 0),
                     config.eval.episodes, 0.0)


def model_policy(d, model, variables, env, greedy):
  """The trained model as a rollout policy: its action at step t is drawn from (or, where the
  bool `greedy`, traced or not, holds, the argmax of) the logits it reads at token t."""
  def policy(history, t, key):
    batch = {k: v[None] for k, v in history.items() if k in ("states", "actions", "rewards")}
    if d.env != "darkroom":
      batch["arms"] = env["arms"][None]
    logits = model.apply(variables, *model_args(d, batch))[0, t]
    return jnp.where(greedy, jnp.argmax(logits), jax.random.categorical(key, logits))
  return policy


def make_model_regret(d, model):
  """jit((variables, envs, keys, greedy) -> the model's per-step regret [num_envs, H]), its
  rollouts vmapped over environments; `greedy` is an argument, so both ways share a compile."""
  module, spec = environment(d)

  @jax.jit
  def model_regret(variables, envs, keys, greedy):
    def one(env, key):
      return module.rollout(spec, env, key, model_policy(d, model, variables, env, greedy))[1]
    return jax.vmap(one)(envs, keys)
  return model_regret


def online_regret(d, model_regret, variables, envs, key):
  """{name: cumulative regret [num_envs, H]} for the model (sampling its policy, as the imitated
  expert's conditional distribution; and greedy) and each expert, all on the same environments
  and step keys."""
  module, spec = environment(d)
  keys = jax.random.split(key, len(jax.tree.leaves(envs)[0]))
  per_step = {"model": model_regret(variables, envs, keys, False),
              "model_greedy": model_regret(variables, envs, keys, True)}
  per_step |= {x: episodes.regret(module, spec, x, envs, keys) for x in module.EXPERTS}
  return {name: np.cumsum(np.asarray(r), -1) for name, r in per_step.items()}


def evaluate_online(config, model, model_regret, variables, held, workdir, step):
  d, e = config.data, config.eval
  module, spec = environment(d)
  envs = module.sample_envs(spec, jax.random.fold_in(jax.random.key(e.seed), 1), e.num_envs)
  # On one device, without the model's sharding constraints: inside the training mesh they
  # would split a batch of one episode over every device at each rollout step.
  one = mesh_lib.make_mesh((1, 1, 1), jax.local_devices()[:1])
  key = jax.random.fold_in(jax.random.key(e.seed), 2)
  with jax.set_mesh(one), nn.logical_axis_rules(()):
    # A NamedSharding on the new mesh: put on a bare device, arrays keep the training mesh in
    # their types, and tracing then refuses the change of mesh.
    variables, envs, held, key = jax.device_put((variables, envs, held, key),
                                                jax.sharding.NamedSharding(one, jax.P()))
    regret = online_regret(d, model_regret, variables, envs, key)
    chosen = np.asarray(jnp.argmax(model.apply(variables, *model_args(d, held)), -1))
  curves = {}
  for name, r in regret.items():
    mean, ci = reporting.bootstrap_mean(r, e.bootstrap)
    curves[name] = {"mean": mean.tolist(), "ci95": ci.tolist()}
  final = {name: r[:, -1] for name, r in regret.items()}
  # Over every expert that loses something (darkroom's optimal policy loses nothing).
  ratios = {x: reporting.paired_ratio(final["model"], final[x], e.bootstrap)
            for x in module.EXPERTS if final[x].mean() > 0}
  agree = (chosen == np.asarray(held["labels"])).mean(1, keepdims=True)
  agreement, agreement_ci = reporting.bootstrap_mean(agree, e.bootstrap)
  payload = {
      "step": int(step), "env": d.env, "expert": d.expert, "objective": d.objective,
      "off_policy": d.off_policy, "horizon": d.horizon, "num_envs": e.num_envs,
      "regret": curves,
      "final_regret": {k: {"mean": v["mean"][-1], "ci95": v["ci95"][-1]}
                       for k, v in curves.items()},
      "ratio": {x: {"mean": m, "ci95": ci} for x, (m, ci) in ratios.items()},
      "agreement": {"mean": float(agreement[0]), "ci95": agreement_ci[0].tolist(),
                    "episodes": e.episodes}}
  out = os.path.join(workdir, "eval")
  reporting.write_json(os.path.join(out, "bandit.json"), payload)
  reporting.plot_curves(
      os.path.join(out, "bandit_regret.png"), np.arange(1, d.horizon + 1), curves,
      highlight="model", xlabel="step t", ylabel="cumulative regret",
      title=f"{d.objective.upper()} of {d.expert}, {d.env}, step {step}")
  print(f"cumulative regret at H={d.horizon} over {e.num_envs} new environments:")
  print(reporting.format_table(
      ["regret", "ci95 low", "ci95 high", "model/this"],
      {k: [v["mean"], *v["ci95"], ratios[k][0] if k in ratios else "-"]
       for k, v in payload["final_regret"].items()}, first="policy"))
  print(f"action agreement with {d.expert} on {e.episodes} held-out episodes: "
        f"{agreement[0]:.3f} [{agreement_ci[0][0]:.3f}, {agreement_ci[0][1]:.3f}]")
  return payload
