"""Bandit environments and the expert algorithms that act in them, vectorised in JAX.

An environment is (arms [A, d], theta [d]); arm a's mean reward is arms[a] . theta.
  linear     theta ~ U[0, 1]^d, arms ~ U[-1, 1]^(A x d), reward = mean + N(0, noise^2)
             (Lin, Bai & Mei 2024: d = 5, A = 10, noise 1.5)
  bernoulli  arms = I_A (each arm its own feature), theta = the means ~ U[0, 1]^A,
             reward ~ Bernoulli(mean)

Experts (`EXPERTS`) choose from the sufficient statistics of the history (`Stats`), so that one
`rollout` serves them all, the off-policy mixtures and the trained model (data/episodes.py
batches it over environments):
  linucb    ridge lambda = 1, V = I + sum a a^T, index theta_hat . a + 2 sqrt(a^T V^-1 a) (the
            exploration coefficient of Lin et al.'s code); the first action is uniform
  thompson  linear: theta ~ N(V'^-1 sum a r, noise^2 V'^-1), V' = noise^2 I + sum a a^T, the
            posterior under the prior N(0, I); bernoulli: Beta(1 + successes, 1 + failures)
  ucb       UCB1 on each arm's mean: untried arms first, then mean + c sqrt(2 ln t / n), c the
            noise scale (1 for bernoulli)
  egreedy   a uniform arm with probability 0.1, else the best empirical mean (untried: 0)
  uniform   a uniform arm

Inverses are kept by Sherman-Morrison updates and the Gaussian draw uses a small Cholesky written
out here: no LAPACK call runs inside the vmapped scans (docs/design-notes.md, pitfalls).
"""
import typing

import jax
import jax.numpy as jnp

ENVS = ("linear", "bernoulli")
EXPERTS = ("linucb", "thompson", "ucb", "egreedy", "uniform")
LINUCB_ALPHA = 2.0
EPSILON = 0.1


class Spec(typing.NamedTuple):
  env: str = "linear"
  num_arms: int = 10
  dim: int = 5          # feature dimension of the linear env (bernoulli: num_arms)
  noise: float = 1.5    # reward noise std of the linear env
  horizon: int = 50

  @property
  def features(self) -> int:
    return self.dim if self.env == "linear" else self.num_arms

  @classmethod
  def from_config(cls, d):
    return cls(d.env, d.num_arms, d.dim, d.noise, d.horizon)


def sample_envs(spec: Spec, key, num: int) -> dict:
  """{"arms": [num, A, features], "theta": [num, features]}."""
  k_arms, k_theta = jax.random.split(key)
  if spec.env == "linear":
    arms = jax.random.uniform(k_arms, (num, spec.num_arms, spec.dim), minval=-1.0, maxval=1.0)
    theta = jax.random.uniform(k_theta, (num, spec.dim))
  else:
    arms = jnp.broadcast_to(jnp.eye(spec.num_arms), (num, spec.num_arms, spec.num_arms))
    theta = jax.random.uniform(k_theta, (num, spec.num_arms))
  return {"arms": arms, "theta": theta}


def means(env) -> jax.Array:
  """Each arm's mean reward [..., A]."""
  return jnp.einsum("...af,...f->...a", env["arms"], env["theta"])


def reward(spec: Spec, key, mean):
  if spec.env == "linear":
    return mean + spec.noise * jax.random.normal(key, jnp.shape(mean))
  return jax.random.bernoulli(key, mean).astype(jnp.float32)


class Stats(typing.NamedTuple):
  """What the experts read of a history: pulls and reward sums per arm, the LinUCB and Thompson
  inverses and sum a r."""
  t: jax.Array
  counts: jax.Array    # [A]
  sums: jax.Array      # [A]
  v_inv: jax.Array     # (I + sum a a^T)^-1
  ts_inv: jax.Array    # (noise^2 I + sum a a^T)^-1
  ar: jax.Array        # sum a r [features]


def init_stats(spec: Spec) -> Stats:
  f, eye = spec.features, jnp.eye(spec.features)
  return Stats(jnp.zeros((), jnp.int32), jnp.zeros(spec.num_arms), jnp.zeros(spec.num_arms),
               eye, eye / spec.noise ** 2, jnp.zeros(f))


def _rank_one(inv, x):
  """(M + x x^T)^-1 from M^-1 (Sherman-Morrison)."""
  u = inv @ x
  return inv - jnp.outer(u, u) / (1.0 + x @ u)


def update(stats: Stats, x, action, r) -> Stats:
  hit = jax.nn.one_hot(action, stats.counts.shape[0])
  return Stats(stats.t + 1, stats.counts + hit, stats.sums + hit * r,
               _rank_one(stats.v_inv, x), _rank_one(stats.ts_inv, x), stats.ar + x * r)


def cholesky(m):
  """Lower-triangular L with L L^T = m, one column at a time (small matrices only)."""
  n = m.shape[-1]
  low = jnp.zeros_like(m)
  for j in range(n):
    s = m[:, j] - low @ low[j]   # columns >= j of low are still zero
    # The floor keeps a rounding-negative pivot of a near-singular covariance finite.
    low = low.at[:, j].set(jnp.where(jnp.arange(n) >= j, s / jnp.sqrt(jnp.maximum(s[j], 1e-12)),
                                     0.0))
  return low


def act(expert: str, spec: Spec, stats: Stats, arms, key):
  """The expert's action (int32) given the history's statistics; `key` is this step's."""
  k_coin, k_arm = jax.random.split(key)
  uniform = jax.random.randint(k_arm, (), 0, spec.num_arms)
  counts = stats.counts
  mean = stats.sums / jnp.maximum(counts, 1)
  if expert == "uniform":
    return uniform
  if expert == "linucb":
    theta = stats.v_inv @ stats.ar
    bonus = jnp.sqrt(jnp.einsum("af,fg,ag->a", arms, stats.v_inv, arms))
    return jnp.where(stats.t == 0, uniform, jnp.argmax(arms @ theta + LINUCB_ALPHA * bonus))
  if expert == "thompson":
    if spec.env == "bernoulli":
      draw = jax.random.beta(k_coin, 1.0 + stats.sums, 1.0 + counts - stats.sums)
      return jnp.argmax(draw).astype(jnp.int32)
    cov = spec.noise ** 2 * stats.ts_inv
    z = jax.random.normal(k_coin, (spec.features,))
    theta = stats.ts_inv @ stats.ar + cholesky(0.5 * (cov + cov.T)) @ z
    return jnp.argmax(arms @ theta).astype(jnp.int32)
  if expert == "ucb":
    scale = spec.noise if spec.env == "linear" else 1.0
    t = jnp.maximum(stats.t, 1).astype(jnp.float32)
    index = mean + scale * jnp.sqrt(2.0 * jnp.log(t) / jnp.maximum(counts, 1))
    return jnp.argmax(jnp.where(counts == 0, jnp.inf, index)).astype(jnp.int32)
  if expert == "egreedy":
    explore = jax.random.uniform(k_coin) < EPSILON
    return jnp.where(explore, uniform, jnp.argmax(mean)).astype(jnp.int32)
  raise ValueError(f"unknown expert {expert!r}; choose one of {', '.join(EXPERTS)}")


def rollout(spec: Spec, env, key, policy, off_policy=False):
  """One episode of `spec.horizon` steps in one environment.

  policy(history, t, key) -> its action at step t, from history = {"stats", "actions" [H],
  "rewards" [H]}, what happened before t (entries >= t of actions/rewards are zeros). With
  `off_policy` (a traced bool) the episode takes uniform actions instead, and the policy's
  choice is still recorded: the label a learner imitating it is trained on.

  Returns {"actions", "rewards", "labels", "optimal"} ([H] each; optimal: the best arm) and the
  per-step regret [H] (pseudo-regret max_a mean_a - mean of the action taken; the reward noise
  does not enter it).
  """
  horizon = spec.horizon
  mu = means(env)

  def body(carry, t):
    stats, actions, rewards = carry
    k_policy, k_off, k_reward = jax.random.split(jax.random.fold_in(key, t), 3)
    history = {"stats": stats, "actions": actions, "rewards": rewards}
    label = policy(history, t, k_policy).astype(jnp.int32)
    action = jnp.where(off_policy, jax.random.randint(k_off, (), 0, spec.num_arms), label)
    r = reward(spec, k_reward, mu[action])
    stats = update(stats, env["arms"][action], action, r)
    carry = (stats, actions.at[t].set(action), rewards.at[t].set(r))
    return carry, (label, mu.max() - mu[action])

  start = (init_stats(spec), jnp.zeros(horizon, jnp.int32), jnp.zeros(horizon, jnp.float32))
  (_, actions, rewards), (labels, regret) = jax.lax.scan(body, start, jnp.arange(horizon))
  optimal = jnp.full(horizon, jnp.argmax(mu), jnp.int32)
  return {"actions": actions, "rewards": rewards, "labels": labels, "optimal": optimal}, regret


def expert_policy(expert: str, spec: Spec, env):
  return lambda history, t, key: act(expert, spec, history["stats"], env["arms"], key)
