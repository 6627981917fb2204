"""The generic trainer: mesh -> sharded init -> jitted steps -> checkpoints -> metrics -> eval.

It knows nothing about any experiment: the task named by `config.task` supplies the model, the
data and the loss. `setup` is shared by training, evaluation, inspection and benchmarks.
"""
import contextlib
import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from substrax.train import checkpointing, optim, tasks, validation
from substrax.train import mesh as mesh_lib, step as step_lib
from substrax.train.metrics import MetricWriter


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved at `step`."""

  def __init__(self, step: int):
    super().__init__(
        f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume")
    self.step = step


class NonFiniteLoss(FloatingPointError):
  """The loss or gradient became NaN/Inf; no checkpoint was written after the last good step."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  task: tasks.Task
  abstract_state: step_lib.TrainState   # ShapeDtypeStructs carrying their shardings
  init: Callable         # () -> sharded initial TrainState, a function of config.seed
  train_step: Callable   # state -> (state, metrics): samples the step's batch, updates; donates
  eval_step: Callable    # (params, model_state, step) -> held-out metrics (jitted task.eval_step)

  @contextlib.contextmanager
  def activate(self):
    """Mesh and logical-axis rules must be active whenever the jitted functions are traced."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield


def _strip_boxes(tree):
  """Replaces logical-partitioning boxes by their values (the shardings are kept separately)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def setup(config) -> Experiment:
  """Validates the config, builds the mesh and task, and prepares the jitted functions."""
  task_module = tasks.get(config.task)
  shape = mesh_lib.mesh_shape(config)
  validation.check_trainer(config, shape, jax.device_count())
  task_module.validate(config)
  mesh = mesh_lib.make_mesh(shape)
  rules = tuple((name, tuple(t) if isinstance(t, list) else t)
                for name, t in config.logical_axis_rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    task = task_module.build(config)
    schedule = optim.make_schedule(config.optim, config.num_steps)
    tx = optim.make_optimizer(config.optim, schedule)
    init_boxed = functools.partial(step_lib.init_state, model=task.model, inputs=task.init_inputs,
                                   tx=tx)
    boxed = jax.eval_shape(init_boxed, jax.random.key(0))
    state_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    shapes = _strip_boxes(boxed)
    validation.check_shardable(shapes, state_sharding, mesh)
    batch_specs = jax.tree.map(lambda axes: P(*axes), task.batch_axes,
                               is_leaf=lambda x: isinstance(x, tuple))
    batch_sharding = nn.logical_to_mesh_sharding(batch_specs, mesh, rules)
  init_key, data_key = (jax.random.fold_in(jax.random.key(config.seed), i) for i in (0, 1))
  update = functools.partial(step_lib.train_step, loss_fn=task.loss_fn, tx=tx, schedule=schedule)

  def sample_and_update(state):
    # Data is a pure function of (seed, step), sampled on device: resumes are exact and the
    # host never feeds the loop.
    batch = task.sample_batch(jax.random.fold_in(data_key, state.step), state.step)
    return update(state, jax.lax.with_sharding_constraint(batch, batch_sharding))

  return Experiment(
      config=config, mesh=mesh, rules=rules, task=task,
      abstract_state=checkpointing.abstract_with_shardings(shapes, state_sharding),
      init=jax.jit(lambda: _strip_boxes(init_boxed(init_key)), out_shardings=state_sharding),
      train_step=jax.jit(sample_and_update, in_shardings=(state_sharding,),
                         out_shardings=(state_sharding, NamedSharding(mesh, P())),
                         donate_argnums=0),
      eval_step=jax.jit(task.eval_step))


class _PreemptionCheck:
  """Whether to save and stop after a step because SIGTERM arrived.

  One process: a Python SIGTERM handler sets a flag. Several processes: SIGTERM may reach only
  one of them, so JAX's preemption service (which catches SIGTERM itself) picks a step that
  every process reaches, and they all save there together.
  """

  def __enter__(self):
    self.requested, self._previous = False, None
    self._multiprocess = jax.process_count() > 1
    if not self._multiprocess:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook runners): no handler
        pass
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __call__(self, step: int) -> bool:
    if self._multiprocess:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def restore_or_init(exp: Experiment, manager) -> tuple[step_lib.TrainState, int]:
  state, step = checkpointing.restore_newest(manager, exp.abstract_state)
  if state is None:
    return exp.init(), 0
  checkpointing.status(f"resuming from the checkpoint at step {step} in {manager.directory}")
  return state, step


def evaluate(exp: Experiment, state: step_lib.TrainState, workdir: str, step: int):
  """Runs the task's evaluator. Evaluators read their results on the host, so with several
  processes the state is gathered to every host, and process 0 alone evaluates it with the task
  rebuilt on its own devices."""
  if jax.process_count() == 1:
    return exp.task.evaluate(state.params, state.model_state, workdir, step)
  params, model_state = multihost_utils.process_allgather(
      (state.params, state.model_state), tiled=True)
  if jax.process_index() != 0:
    return None
  with jax.set_mesh(mesh_lib.make_mesh((-1, 1, 1), jax.local_devices())), \
       nn.logical_axis_rules(exp.rules):
    task = tasks.get(exp.config.task).build(exp.config)
    return task.evaluate(params, model_state, workdir, step)


def train_and_evaluate(config, workdir: str) -> step_lib.TrainState:
  """Trains to config.num_steps (resuming from workdir's newest checkpoint), then evaluates."""
  validation.check_workdir(workdir)
  exp = setup(config)
  with exp.activate():
    manager = checkpointing.make_manager(checkpointing.directory(config, workdir),
                                         config.checkpoint.keep)
    state, start = restore_or_init(exp, manager)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    writer = MetricWriter(workdir, resume_step=start)
    try:
      state = _train_loop(exp, state, start, manager, writer)
    finally:
      manager.close()   # waits for the last async save
      writer.close()
    evaluate(exp, state, workdir, config.num_steps)
  return state


def _train_loop(exp, state, start, manager, writer):
  config = exp.config
  examples_per_step = config.batch_size
  bar = tqdm(total=config.num_steps, initial=start, disable=not config.progress_bar,
             dynamic_ncols=True, desc="train")
  clock = {"step": start, "time": None}

  def record(step, metrics):
    """Host side of step `step`: NaN check, then JSONL/TensorBoard/progress bar."""
    host = jax.device_get(metrics)
    if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
      last = manager.latest_step()
      raise NonFiniteLoss(
          f"loss is {host['loss']} (grad norm {host['grad_norm']}) at step {step}; stopping. " +
          (f"The last good checkpoint is step {last}." if last is not None
           else "No checkpoint was written before it."))
    now = time.perf_counter()
    if clock["time"] is None:  # the first step includes compilation; rates start after it
      clock.update(step=step, time=now)
    if step % config.log_every_steps == 0 or step == config.num_steps:
      if step > clock["step"]:
        rate = (step - clock["step"]) / (now - clock["time"])
        host.update(steps_per_sec=rate, examples_per_sec=rate * examples_per_step)
        bar.set_postfix(loss=f"{host['loss']:.4f}", steps_s=f"{rate:.1f}",
                        ex_s=f"{rate * examples_per_step:.0f}")
      writer.write(step, "train", host)
      clock.update(step=step, time=now)

  pending = None  # metrics are fetched one step late so dispatch never waits on the host
  with _PreemptionCheck() as preempted:
    for step in range(start, config.num_steps):
      state, metrics = exp.train_step(state)
      done = step + 1
      if pending is not None:
        record(*pending)
      pending = (done, metrics)
      bar.update(1)
      if done % config.eval_every_steps == 0:
        writer.write(done, "eval", jax.device_get(
            exp.eval_step(state.params, state.model_state, state.step)))
      stop = preempted(done)
      if done % config.checkpoint.every_steps == 0 or done == config.num_steps or stop:
        record(*pending)  # a checkpoint is written only after its step's loss is known finite
        pending = None
        checkpointing.save(manager, done, state)
      if stop:
        bar.close()
        raise Preempted(done)
  if pending is not None:
    record(*pending)
  bar.close()
  return state


def evaluate_checkpoint(config, workdir: str):
  """Runs the task's evaluator on the newest checkpoint in workdir."""
  exp = setup(config)
  with exp.activate():
    manager = checkpointing.make_manager(checkpointing.directory(config, workdir),
                                         config.checkpoint.keep)
    try:
      state, step = checkpointing.restore_newest(manager, exp.abstract_state)
    finally:
      manager.close()
    validation.require(step is not None, "--workdir",
                       f"no checkpoint found in {manager.directory}")
    return evaluate(exp, state, workdir, step)


def train_step_flops(exp: Experiment) -> float:
  """FLOPs of one compiled train step (data sampling included), as counted by XLA."""
  cost = exp.train_step.lower(exp.abstract_state).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def inspect(config, depth: int = 3) -> dict:
  """Parameter counts per module (path prefix of `depth`), bytes, and FLOPs per train step."""
  exp = setup(config)
  params = exp.abstract_state.params
  modules: dict[str, list[int]] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(str(getattr(k, "key", k)) for k in path[:-1][:depth]) or "(root)"
    entry = modules.setdefault(name, [0, 0])
    entry[0] += int(np.prod(leaf.shape))
    entry[1] += int(np.prod(leaf.shape)) * leaf.dtype.itemsize
  state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                    for x in jax.tree.leaves(exp.abstract_state))

  def per_device(tree):   # the largest shard a device holds under the mesh's shardings
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))
  with exp.activate():
    flops = train_step_flops(exp)
  return {
      "modules": [{"name": k, "params": v[0], "bytes": v[1]} for k, v in modules.items()],
      "total_params": sum(v[0] for v in modules.values()),
      "param_bytes": sum(v[1] for v in modules.values()),
      "train_state_bytes": state_bytes,
      "param_bytes_per_device": per_device(params),
      "optimizer_bytes_per_device": per_device(exp.abstract_state.opt_state),
      "flops_per_step": flops,
      "batch_size": config.batch_size,
      "mesh": dict(exp.mesh.shape),
  }


def format_inspect(report: dict) -> str:
  width = max(len(m["name"]) for m in report["modules"]) + 2
  lines = [f"{'module':<{width}}{'params':>12}{'bytes':>14}"]
  lines += [f"{m['name']:<{width}}{m['params']:>12,}{m['bytes']:>14,}" for m in report["modules"]]
  lines.append(f"{'total':<{width}}{report['total_params']:>12,}{report['param_bytes']:>14,}")
  lines.append(f"train state (params + optimizer): {report['train_state_bytes']:,} bytes")
  lines.append(f"per device: params {report['param_bytes_per_device']:,} bytes, optimizer state "
               f"{report['optimizer_bytes_per_device']:,} bytes")
  lines.append(f"FLOPs per train step (XLA count, batch {report['batch_size']}): "
               f"{report['flops_per_step']:.4g}")
  lines.append(f"mesh: {json.dumps(report['mesh'])}")
  return "\n".join(lines)
