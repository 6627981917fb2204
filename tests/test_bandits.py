"""In-context bandits: the vectorised experts against textbook loops, LinUCB's margin over
uniform play, the episodes' mixtures, and the bandit task end to end."""
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.configs import bandit as bandit_config
from substrax.configs import darkroom as darkroom_config
from substrax.data import bandits, darkroom, episodes
from substrax.models.bandit import BanditTransformer
from substrax.models.transformer import BlockConfig
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.tasks import bandit


def textbook(expert, spec, env, key, actions):
  """Each step's scores under `expert` written as the textbook loop, in float64 numpy with
  explicit inverses, along the episode that took `actions`; the expert's choice is the argmax
  (a one-hot where it draws an arm at random). Only the random draws are shared with
  data/bandits.py: the same per-step keys."""
  arms, mu = np.asarray(env["arms"], np.float64), np.asarray(bandits.means(env), np.float64)
  num_arms, f = arms.shape
  xs, rs, scores = [], [], []
  counts, sums = np.zeros(num_arms), np.zeros(num_arms)
  for t, a in enumerate(actions):
    k_policy, _, k_reward = jax.random.split(jax.random.fold_in(key, t), 3)
    k_coin, k_arm = jax.random.split(k_policy)
    uniform = np.eye(num_arms)[int(jax.random.randint(k_arm, (), 0, num_arms))]
    x, r = np.array(xs).reshape(-1, f), np.array(rs)
    mean = sums / np.maximum(counts, 1)
    if expert == "uniform":
      score = uniform
    elif expert == "linucb":
      v_inv = np.linalg.inv(np.eye(f) + x.T @ x)
      index = arms @ (v_inv @ x.T @ r) + 2 * np.sqrt(np.sum(arms @ v_inv * arms, 1))
      score = uniform if t == 0 else index
    elif expert == "thompson" and spec.env == "bernoulli":
      score = np.asarray(jax.random.beta(k_coin, 1 + sums.astype(np.float32),
                                         1 + (counts - sums).astype(np.float32)), np.float64)
    elif expert == "thompson":
      inv = np.linalg.inv(spec.noise ** 2 * np.eye(f) + x.T @ x)
      z = np.asarray(jax.random.normal(k_coin, (f,)), np.float64)
      score = arms @ (inv @ x.T @ r + np.linalg.cholesky(spec.noise ** 2 * inv) @ z)
    elif expert == "ucb":
      scale = spec.noise if spec.env == "linear" else 1.0
      with np.errstate(divide="ignore", invalid="ignore"):
        bonus = scale * np.sqrt(2 * np.log(max(t, 1)) / counts)
      score = np.where(counts == 0, 1e9, mean + bonus)   # untried arms first
    else:   # egreedy
      explore = float(jax.random.uniform(k_coin)) < bandits.EPSILON
      score = uniform if explore else mean
    scores.append(score)
    reward = float(bandits.reward(spec, k_reward, np.float32(mu[a])))
    xs.append(arms[a])
    rs.append(reward)
    counts[a] += 1
    sums[a] += reward
  return np.array(scores), mu.max() - mu[np.asarray(actions)]


@pytest.mark.parametrize("env", bandits.ENVS)
def test_experts_match_their_textbook_loops_on_fixed_seeds(env):
  """Every action the vectorised expert takes is the textbook's argmax, up to float32 rounding
  between near-tied arms (Bernoulli arms with equal counts and sums tie exactly)."""
  spec = bandits.Spec(env=env, horizon=25)
  envs = bandits.sample_envs(spec, jax.random.key(3), 3)
  keys = jax.random.split(jax.random.key(4), 3)
  for expert in bandits.EXPERTS:
    run = jax.jit(jax.vmap(lambda e, k, x=expert: bandits.rollout(
        spec, e, k, bandits.expert_policy(x, spec, e))))
    episodes, regret = run(envs, keys)
    exact = 0
    for i in range(3):
      env_i = jax.tree.map(lambda a, i=i: a[i], envs)
      actions = np.asarray(episodes["actions"][i])
      scores, expected = textbook(expert, spec, env_i, keys[i], actions)
      taken = scores[np.arange(len(actions)), actions]
      np.testing.assert_array_less(scores.max(1) - 1e-4, taken + 1e-12, err_msg=expert)
      exact += (np.argmax(scores, 1) == actions).sum()
      np.testing.assert_allclose(np.asarray(regret[i]), expected, atol=1e-5, err_msg=expert)
    assert exact >= 0.9 * 3 * spec.horizon, expert


def test_linucb_regret_is_far_below_uniform_play():
  """Over H = 200 uniform play loses H (max mean - average mean) per environment in
  expectation; LinUCB's regret grows like d sqrt(H) log H, a small fraction of that."""
  spec = bandits.Spec(horizon=200)
  runs = {x: episodes.trajectories(bandits, spec, jax.random.key(5), 256, x)
          for x in ("linucb", "uniform")}
  regret = {x: np.asarray(r["regret"]).sum(1) for x, r in runs.items()}
  mu = np.asarray(bandits.means(runs["uniform"]))
  expected = 200 * (mu.max(1) - mu.mean(1))
  se = np.std(regret["uniform"] - expected) / np.sqrt(256)
  assert abs(regret["uniform"].mean() - expected.mean()) < 4 * se
  assert regret["linucb"].mean() < 0.25 * regret["uniform"].mean()
  # Sublinear: the second half of the episode costs LinUCB less than the first.
  per_step = np.asarray(runs["linucb"]["regret"]).mean(0)
  assert per_step[100:].sum() < 0.6 * per_step[:100].sum()


def test_cholesky_matches_lapack():
  g = np.random.default_rng(0).normal(size=(6, 6))
  m = g @ g.T + 0.1 * np.eye(6)
  np.testing.assert_allclose(jax.jit(bandits.cholesky)(m), np.linalg.cholesky(m), rtol=1e-4,
                             atol=1e-5)


def test_episodes_are_reproducible_and_off_policy_labels_are_the_experts_choice():
  spec = bandits.Spec(horizon=20)
  a, b = (episodes.trajectories(bandits, spec, jax.random.key(1), 64, "linucb") for _ in "ab")
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert (np.asarray(a["labels"]) == np.asarray(a["actions"])).all()
  off = episodes.trajectories(bandits, spec, jax.random.key(1), 64, "linucb", 1.0)
  # Replayed along each uniformly played episode, LinUCB's choice given the history it shows
  # is the recorded label (the rollout's step keys: LinUCB uses its key only at t = 0).
  arms = np.asarray(off["arms"])
  keys = jax.random.split(jax.random.split(jax.random.key(1), 3)[2], 64)
  act, update = jax.jit(bandits.act, static_argnums=(0, 1)), jax.jit(bandits.update)
  for i in range(2):
    stats = bandits.init_stats(spec)
    for t in range(spec.horizon):
      k_policy = jax.random.split(jax.random.fold_in(keys[i], t), 3)[0]
      label = act("linucb", spec, stats, arms[i], k_policy)
      assert int(label) == int(off["labels"][i, t]), (i, t)
      a_t = int(off["actions"][i, t])
      stats = update(stats, arms[i, a_t], a_t, off["rewards"][i, t])
  agree = np.asarray(off["labels"])[:, 1:] == np.asarray(off["actions"])[:, 1:]
  assert 0.03 < agree.mean() < 0.25        # uniform play hits LinUCB's choice 1 time in 10


def test_relu_learner_is_causal():
  """Step t's logits do not depend on the actions and rewards of step t or later."""
  block = BlockConfig(num_heads=2, attention=dict(kind="relu", impl="auto", window=4,
                                                  num_features=8, low_rank=4))
  model = BanditTransformer(width=32, depth=1, horizon=12, block=block)
  k_arms, k_actions, k_rewards = jax.random.split(jax.random.key(0), 3)
  run = {"arms": jax.random.uniform(k_arms, (2, 10, 5), minval=-1),
         "actions": jax.random.randint(k_actions, (2, 12), 0, 10),
         "rewards": jax.random.normal(k_rewards, (2, 12))}
  args = run["arms"], run["actions"], run["rewards"]
  params = jax.jit(model.init)(jax.random.key(1), *args)
  apply = jax.jit(model.apply)
  logits = apply(params, *args)
  changed = apply(params, run["arms"], run["actions"].at[:, 7:].set(0),
                  run["rewards"].at[:, 7:].add(1.0))
  np.testing.assert_allclose(changed[:, :8], logits[:, :8], atol=1e-5)
  assert float(np.abs(changed[:, 8:] - logits[:, 8:]).max()) > 1e-4


@pytest.mark.mesh   # the online evaluation leaves the 8-device training mesh for one device
def test_bandit_task_trains_and_reports_regret_and_agreement(tmp_path):
  config = bandit_config.get_config("tiny")
  state = trainer.train_and_evaluate(config, str(tmp_path))
  report = json.load(open(tmp_path / "eval" / "bandit.json"))
  assert int(state.step) == config.num_steps == report["step"]
  assert set(report["regret"]) == {"model", "model_greedy", *bandits.EXPERTS}
  assert all(len(c["mean"]) == config.data.horizon for c in report["regret"].values())
  # Every expert's curve is the one data/episodes.py gives on the same environments and keys.
  e = config.eval
  spec = bandits.Spec.from_config(config.data)
  envs = bandits.sample_envs(spec, jax.random.fold_in(jax.random.key(e.seed), 1), e.num_envs)
  keys = jax.random.split(jax.random.fold_in(jax.random.key(e.seed), 2), e.num_envs)
  linucb = np.cumsum(np.asarray(episodes.regret(bandits, spec, "linucb", envs, keys)), -1)
  np.testing.assert_allclose(report["regret"]["linucb"]["mean"], linucb.mean(0), rtol=1e-6)
  assert 0 < report["agreement"]["mean"] < 1
  assert (tmp_path / "eval" / "bandit_regret.png").stat().st_size > 10_000


def test_the_model_plays_the_experts_environments_and_keys():
  """online_regret gives the model's rollout the experts' environments and step keys: a
  "model" that is LinUCB reproduces LinUCB's regret exactly."""
  spec = bandits.Spec(horizon=15)
  d = bandit_config.get_config("tiny").data
  d.horizon = 15

  def linucb_as_model(variables, envs, keys, greedy):
    del variables, greedy
    return episodes.regret(bandits, spec, "linucb", envs, keys)

  envs = bandits.sample_envs(spec, jax.random.key(2), 8)
  regret = bandit.online_regret(d, linucb_as_model, None, envs, jax.random.key(3))
  np.testing.assert_array_equal(regret["model"], regret["linucb"])
  assert not np.array_equal(regret["model"], regret["thompson"])


@pytest.mark.parametrize("changes, key", [
    ({"data.env": "contextual"}, "data.env"),
    ({"data.env": "darkroom"}, "data.expert"),                # linucb is a bandit expert
    ({"data.env": "darkroom", "data.expert": "sweep", "data.size": 1}, "data.size"),
    ({"data.expert": "exp3"}, "data.expert"),
    ({"data.objective": "rl"}, "data.objective"),
    ({"data.off_policy": 1.5}, "data.off_policy"),
    ({"data.num_arms": 1}, "data.num_arms"),
    ({"data.noise": 0.0}, "data.noise"),     # the evaluation's Thompson sampling needs it
    ({"model.attention.kind": "relu", "model.positions": "alibi"}, "model.positions"),
    ({"eval.num_envs": 0}, "eval.num_envs"),
    ({"eval.episodes": 0}, "eval.episodes"),
])
def test_config_errors_name_the_key(changes, key):
  config = bandit_config.get_config("tiny")
  config.update_from_flattened_dict(changes)
  with pytest.raises(ConfigError, match=f"^{key}: "):
    trainer.validate(config)


def test_dpt_targets_are_the_best_arm():
  config = bandit_config.get_config("tiny")
  config.data.objective = "dpt"
  data = bandit.episodes_of(config, jax.random.key(0), 8, 0.0)
  run = episodes.trajectories(bandits, bandits.Spec.from_config(config.data), jax.random.key(0),
                              8, "linucb")
  best = np.asarray(bandits.means(run)).argmax(1)
  np.testing.assert_array_equal(np.asarray(data["targets"]), np.repeat(best[:, None], 12, 1))


def sweep_labels(size, states, rewards):
  """The sweep expert's choices along an episode, written out in plain Python."""
  seen, labels = None, []
  for t, ((x, y), r) in enumerate(zip(states.tolist(), rewards.tolist())):
    if seen is not None:
      labels.append(0 if x < seen[0] else 1 if x > seen[0] else 2 if y < seen[1] else
                    3 if y > seen[1] else 4)
    elif t == 0 or (y == size - 1 and x == (size - 1 if y % 2 == 0 else 0)):
      labels.append(4)
    elif (y % 2 == 0 and x == size - 1) or (y % 2 == 1 and x == 0):
      labels.append(2)
    else:
      labels.append(0 if y % 2 == 0 else 1)
    if r > 0:   # the step ended on the goal: the state after it
      seen = states[t + 1].tolist() if t + 1 < len(states) else seen
  return labels


def test_darkroom_experts():
  """The shortest path never loses reward; the sweep finds every goal within size^2 steps and
  then stays; uniform play rarely reaches it; labels of uniformly played episodes are the
  sweep's choices given what those episodes show."""
  spec = darkroom.Spec(size=4, horizon=20)
  goals = {"goal": np.array([[a, b] for a in range(4) for b in range(4)])}
  keys = jax.random.split(jax.random.key(0), 16)
  regret = {x: np.asarray(episodes.regret(darkroom, spec, x, goals, keys))
            for x in darkroom.EXPERTS}
  assert (regret["optimal"] == 0).all()
  run = jax.jit(jax.vmap(lambda g, k: darkroom.rollout(spec, g, k, darkroom.expert_policy(
      "sweep", spec, g))[0]))(goals, keys)
  rewards = np.asarray(run["rewards"])
  first = rewards.argmax(1)
  assert rewards.max(1).all() and (first <= 15).all()
  assert all(rewards[i, first[i]:].all() for i in range(16))   # it stays on the goal
  # The sweep's first step stays, so a goal at the start is found at once.
  assert first[0] == 0 and regret["sweep"][0].sum() == 0
  assert regret["uniform"].sum(1).mean() > 2 * regret["sweep"].sum(1).mean()
  off = episodes.trajectories(darkroom, darkroom.Spec(size=3, horizon=40), jax.random.key(1),
                              8, "sweep", 1.0)
  states, rewards = np.asarray(off["states"]), np.asarray(off["rewards"])
  assert (rewards.sum(1) > 0).sum() >= 4   # most episodes meet the goal: `seen` is exercised
  for i in range(8):
    assert np.asarray(off["labels"][i]).tolist() == sweep_labels(3, states[i], rewards[i]), i


def test_darkroom_runs_through_the_task():
  """Darkroom's DPT targets are the shortest-path moves, and an (untrained) model's loss,
  held-out metrics and online evaluation run on it."""
  config = darkroom_config.get_config("tiny")
  config.data.objective = "dpt"
  trainer.validate(config)
  task = bandit.build(config)
  np.testing.assert_array_equal(np.asarray(task.eval_data["targets"]),
                                np.asarray(task.eval_data["optimal"]))
  params = flax.linen.meta.unbox(jax.jit(task.model.init)(jax.random.key(0),
                                                            *task.init_inputs))["params"]
  batch = task.sample_batch(task.train_data, jax.random.key(1), 0)
  loss, _ = jax.jit(task.loss_fn)(params, {}, batch, 0)
  assert abs(float(loss) - np.log(darkroom.ACTIONS)) < 0.2   # near uniform at initialisation
  assert set(jax.jit(task.eval_step)(params, {}, task.eval_data, 0)) == {
      "loss", "agreement", "optimal_rate"}
  # Acting, the model's choice at step t is its argmax at token t of the finished episode:
  # the policy reads the right token and a history that holds what happened before t.
  spec, variables = darkroom.Spec.from_config(config.data), {"params": params}
  env = {"goal": jnp.array([2, 1])}
  policy = bandit.model_policy(config.data, task.model, variables, env, greedy=True)
  episode, _ = jax.jit(lambda: darkroom.rollout(spec, env, jax.random.key(4), policy))()
  logits = jax.jit(task.model.apply)(variables, *bandit.model_args(
      config.data, jax.tree.map(lambda x: x[None], episode)))
  np.testing.assert_array_equal(np.asarray(episode["labels"]), np.asarray(logits[0].argmax(-1)))
