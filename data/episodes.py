"""Episodes of an in-context decision-making environment, batched over environments.

An environment module (data/bandits.py, data/darkroom.py) provides EXPERTS, sample_envs(spec,
key, num), expert_policy(expert, spec, env) and rollout(spec, env, key, policy, off_policy) ->
(episode, per-step regret). The functions here vmap them over environments, jitted with the
module, its Spec and the expert static, so each shape compiles once per process.
"""
import functools

import jax


@functools.partial(jax.jit, static_argnames=("module", "spec", "expert"))
def regret(module, spec, expert: str, envs, keys):
  """The expert's per-step regret [num, H], episode i in envs[i] from keys[i]."""
  def one(env, key):
    return module.rollout(spec, env, key, module.expert_policy(expert, spec, env))[1]
  return jax.vmap(one)(envs, keys)


@functools.partial(jax.jit, static_argnames=("module", "spec", "num", "expert"))
def trajectories(module, spec, key, num: int, expert: str, off_policy_fraction=0.0):
  """`num` fresh environments and one episode in each, reproducibly from `key`.

  A fraction of the episodes (each independently) is played uniformly ("off-policy"
  contexts); every episode's labels are the expert's actions given the history it shows.
  Returns the environments' arrays, the episodes' (actions, rewards, labels, optimal, ...:
  [num, H, ...]) and regret [num, H].
  """
  k_env, k_off, k_run = jax.random.split(key, 3)
  envs = module.sample_envs(spec, k_env, num)
  off = jax.random.uniform(k_off, (num,)) < off_policy_fraction

  def one(env, off, key):
    return module.rollout(spec, env, key, module.expert_policy(expert, spec, env), off)

  run, regret = jax.vmap(one)(envs, off, jax.random.split(k_run, num))
  return {**envs, **run, "regret": regret}
