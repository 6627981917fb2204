"""Darkroom, a tabular MDP for in-context RL (Zintgraf et al. 2020; Lee et al. 2023), in JAX.

A size x size grid. The agent starts at (0, 0); the goal, one cell drawn uniformly, is not shown:
a step that ends on it earns reward 1, every other step 0. Actions: 0 x+1, 1 x-1, 2 y+1, 3 y-1,
4 stay; moves off the grid are clipped. One episode of `horizon` steps, no reset, so a learner
must find the goal and then stay on it.

Experts:
  optimal  the shortest path to the goal, x first, then y, then stay: it knows the goal (DPT's
           target at every state)
  sweep    knows nothing: stays once (the start may be the goal), then sweeps the grid row by row
           in a boustrophedon until a step earns a reward, then heads back to that cell (in
           its own episodes: stays on it) (AD's expert)
  uniform  a uniform action

Regret at step t is what the optimal policy earns at t (1 once it can have reached the goal)
minus the reward earned: the environment is deterministic.
"""
import typing

import jax
import jax.numpy as jnp
import numpy as np

ACTIONS = 5
EXPERTS = ("sweep", "optimal", "uniform")
MOVES = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], np.int32)


class Spec(typing.NamedTuple):
  size: int = 10
  horizon: int = 100

  @classmethod
  def from_config(cls, d):
    return cls(d.size, d.horizon)


def move(spec: Spec, state, action):
  return jnp.clip(state + jnp.asarray(MOVES)[action], 0, spec.size - 1)


def optimal_action(state, goal):
  """x first, then y, then stay."""
  return jnp.select([state[0] < goal[0], state[0] > goal[0], state[1] < goal[1],
                     state[1] > goal[1]], [0, 1, 2, 3], 4).astype(jnp.int32)


def sweep_action(spec: Spec, state, seen, t):
  """Stay at t = 0; once a step was rewarded, the shortest path back to the cell it ended on
  (`seen`, (-1, -1) before that); else along even rows x+1, odd rows x-1, and up a row at a
  row's end (at the last cell: stay)."""
  even = state[1] % 2 == 0
  at_end = jnp.where(even, state[0] == spec.size - 1, state[0] == 0)
  step = jnp.where(at_end, jnp.where(state[1] == spec.size - 1, 4, 2), jnp.where(even, 0, 1))
  step = jnp.where(t == 0, 4, step)
  return jnp.where(seen[0] >= 0, optimal_action(state, seen), step).astype(jnp.int32)


def act(expert: str, spec: Spec, state, seen, goal, t, key):
  if expert == "optimal":
    return optimal_action(state, goal)
  if expert == "sweep":
    return sweep_action(spec, state, seen, t)
  if expert == "uniform":
    return jax.random.randint(key, (), 0, ACTIONS)
  raise ValueError(f"unknown expert {expert!r}; choose one of {', '.join(EXPERTS)}")


def rollout(spec: Spec, env, key, policy, off_policy=False):
  """One episode in env = {"goal": [2]}. policy(history, t, key) -> the action at step t, from
  history = {"states" [H, 2] up to t, "actions" [H] and "rewards" [H] before t (later entries
  are zeros), "seen": the cell the last rewarded step ended on, (-1, -1) if none}. With
  `off_policy` the episode takes uniform actions and records the policy's choice as the label.
  Returns {"states", "actions", "rewards", "labels", "optimal"} ([H, 2] / [H] each; optimal:
  the shortest-path action at each state visited) and the per-step regret [H]."""
  horizon, goal = spec.horizon, env["goal"]
  distance = jnp.abs(goal).sum()   # from the start (0, 0)
  best = (jnp.arange(horizon) + 1 >= distance).astype(jnp.float32)

  def body(carry, t):
    state, seen, states, actions, rewards = carry
    states = states.at[t].set(state)
    k_policy, k_off = jax.random.split(jax.random.fold_in(key, t))
    history = {"states": states, "actions": actions, "rewards": rewards, "seen": seen}
    label = policy(history, t, k_policy).astype(jnp.int32)
    action = jnp.where(off_policy, jax.random.randint(k_off, (), 0, ACTIONS), label)
    nxt = move(spec, state, action)
    r = jnp.all(nxt == goal).astype(jnp.float32)
    seen = jnp.where(r > 0, nxt, seen)
    carry = (nxt, seen, states, actions.at[t].set(action), rewards.at[t].set(r))
    return carry, (label, optimal_action(state, goal), r)

  start = (jnp.zeros(2, jnp.int32), jnp.full(2, -1, jnp.int32),
           jnp.zeros((horizon, 2), jnp.int32), jnp.zeros(horizon, jnp.int32),
           jnp.zeros(horizon, jnp.float32))
  (_, _, states, actions, rewards), (labels, optimal, r) = jax.lax.scan(
      body, start, jnp.arange(horizon))
  return ({"states": states, "actions": actions, "rewards": rewards, "labels": labels,
           "optimal": optimal}, best - r)


def expert_policy(expert: str, spec: Spec, env):
  def policy(history, t, key):
    return act(expert, spec, history["states"][t], history["seen"], env["goal"], t, key)
  return policy


def sample_envs(spec: Spec, key, num: int) -> dict:
  return {"goal": jax.random.randint(key, (num, 2), 0, spec.size)}
