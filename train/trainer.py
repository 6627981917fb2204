"""The generic trainer: mesh -> sharded init -> jitted steps -> checkpoints -> metrics -> eval.

It knows nothing about any experiment: the task named by `config.task` supplies the model, the
data and the loss. `setup` is shared by training, evaluation, inspection and benchmarks.
"""
import contextlib
import dataclasses
import functools
import json
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from substrax.train import checkpointing, errors, optim, tasks, validation
from substrax.train import mesh as mesh_lib, step as step_lib, workdir as workdir_lib
from substrax.train.analysis import reporting
from substrax.train.errors import NonFiniteLoss, StorageError, Stopped, STORAGE_ERRNOS, reason
from substrax.train.metrics import MetricWriter


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  task: tasks.Task
  abstract_state: step_lib.TrainState   # ShapeDtypeStructs carrying their shardings
  train_data: Any        # the task's training arrays on the mesh, an argument of train_step
  eval_data: Any         # the task's held-out arrays on the mesh, an argument of eval_step
  init: Callable         # () -> sharded initial TrainState, a function of config.seed
  train_step: Callable   # (state, train_data) -> (state, metrics): draws the step's batch from
                         # train_data, then updates; donates the state
  eval_step: Callable    # (params, model_state, eval_data, step) -> held-out metrics

  @contextlib.contextmanager
  def activate(self):
    """Mesh and logical-axis rules must be active whenever the jitted functions are traced."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield


def _strip_boxes(tree):
  """Replaces logical-partitioning boxes by their values (the shardings are kept separately)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def replicate(tree, mesh):
  """Host or device arrays -> arrays replicated on every device of the mesh, also across
  processes (each process holds the same values: the data is a function of the config)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda idx, x=np.asarray(x): x[idx]), tree)


def validate(config) -> tuple[int, ...]:
  """Every check of the config that needs neither data nor compiling; returns the mesh shape."""
  validation.check_trainer(config)
  shape = mesh_lib.config_shape(config, jax.device_count())
  tasks.get(config.task).validate(config)
  return shape


def setup(config) -> Experiment:
  """Validates the config, builds the mesh and task, and prepares the jitted functions."""
  task_module = tasks.get(config.task)
  mesh = mesh_lib.make_mesh(validate(config))
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

  def sample_and_update(state, data):
    # The batch is a pure function of (data, seed, step), drawn on device: resumes are exact
    # and the host never feeds the loop. The data is an argument, never a closed-over
    # constant, so the compiled step does not grow with the dataset.
    batch = task.sample_batch(data, jax.random.fold_in(data_key, state.step), state.step)
    return update(state, jax.lax.with_sharding_constraint(batch, batch_sharding))

  # Datasets are replicated: a step gathers random rows, which a sharded copy would turn
  # into cross-device traffic every step, and every LRA-scale split fits beside the model.
  train_data, eval_data = replicate(task.train_data, mesh), replicate(task.eval_data, mesh)
  data_sharding = jax.tree.map(lambda x: x.sharding, train_data)
  return Experiment(
      config=config, mesh=mesh, rules=rules, task=task,
      abstract_state=checkpointing.abstract_with_shardings(shapes, state_sharding),
      train_data=train_data, eval_data=eval_data,
      init=jax.jit(lambda: _strip_boxes(init_boxed(init_key)), out_shardings=state_sharding),
      train_step=jax.jit(sample_and_update, in_shardings=(state_sharding, data_sharding),
                         out_shardings=(state_sharding, NamedSharding(mesh, P())),
                         donate_argnums=0),
      eval_step=jax.jit(task.eval_step))


class _StopRequests:
  """Whether to save and stop after a step because SIGINT or SIGTERM arrived.

  One process: the first signal sets a flag that the loop reads after every step; a second
  SIGINT stops at once without saving. Several processes: SIGTERM may reach only one of them,
  so JAX's preemption service (which catches SIGTERM itself) picks a step that every process
  reaches, and they all save there together; SIGINT stops the local process at once.
  """

  def __enter__(self):
    self.signum, self._previous = None, {}
    self._multiprocess = jax.process_count() > 1
    for signum in (signal.SIGINT,) if self._multiprocess else (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook runners): no handler
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum is not None or self._multiprocess:
      if signum == signal.SIGINT:
        errors.stop(signum, "SIGINT: stopped at once, without saving; a rerun resumes from "
                    "the newest checkpoint")
      return
    # Set before printing: a second signal can interrupt this handler while it prints.
    self.signum = signum
    checkpointing.status(   # a slow step may take a while: say the signal was heard
        f"{signal.Signals(signum).name}: saving this step, then stopping" +
        (" (SIGINT again stops at once, without saving)" if signum == signal.SIGINT else ""))

  def __call__(self, step: int) -> bool:
    if self._multiprocess and multihost_utils.reached_preemption_sync_point(step):
      self.signum = signal.SIGTERM
    return self.signum is not None

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def restore_or_init(exp: Experiment, manager) -> tuple[step_lib.TrainState, int]:
  state, step = checkpointing.restore_newest(manager, exp.abstract_state, set_aside=True)
  if state is None:
    return exp.init(), 0
  checkpointing.status(f"resuming from the checkpoint at step {step} in {manager.directory}")
  return state, step


def evaluate(exp: Experiment, state: step_lib.TrainState, workdir: str, step: int):
  """Runs the task's evaluator, drawing its figures if config.plots. Evaluators read their
  results on the host, so with several processes the state is gathered to every host, and
  process 0 alone evaluates it with the task rebuilt on its own devices."""
  with reporting.plots(exp.config.get("plots", True)):   # absent from older runs' config.json
    return _evaluate(exp, state, workdir, step)


def _evaluate(exp: Experiment, state: step_lib.TrainState, workdir: str, step: int):
  try:
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
  except OSError as e:
    if e.errno not in STORAGE_ERRNOS:
      raise
    where = f": {e.filename}" if e.filename else ""
    raise StorageError(f"writing the evaluation of step {step} failed ({reason(e)}{where}); "
                       "the checkpoints are intact, substrax-eval reruns it")


def train_and_evaluate(config, workdir: str) -> step_lib.TrainState:
  """Trains to config.num_steps (resuming from workdir's newest checkpoint), then evaluates.

  Before anything is compiled: the directories are writable, no other trainer holds the
  workdir, and the config is the experiment that the workdir's config.json records.
  """
  validate(config)   # a bad value fails before any directory is made (setup checks again)
  checkpoint_dir = checkpointing.directory(config, workdir)
  workdir_lib.check_for_training(workdir, checkpoint_dir)
  lock = workdir_lib.Lock(workdir, checkpointing.status)
  with lock if jax.process_index() == 0 else contextlib.nullcontext():
    recorded = workdir_lib.check_config(workdir, config, training=True)
    if recorded is not None:
      # checkpoint.directory may change on a rerun only if the checkpoints moved with it: an
      # empty new directory would restart the run at step 0.
      before = checkpointing.directory(ml_collections.ConfigDict(recorded), workdir)
      validation.require(before == checkpoint_dir or checkpointing.complete_steps(checkpoint_dir)
                         or not checkpointing.complete_steps(before), "checkpoint.directory",
                         f"{checkpoint_dir} holds no checkpoint, and the run's are in {before}; "
                         "move them there first, or keep the old directory")
    exp = setup(config)
    with exp.activate():
      manager = checkpointing.make_manager(checkpoint_dir, config.checkpoint.keep)
      state, start = restore_or_init(exp, manager)
      if jax.process_index() == 0:
        if recorded is None and start > 0:
          checkpointing.status(f"warning: {workdir}/config.json was missing; it is written "
                               "from this config")
        workdir_lib.write_config(workdir, config)
      writer = MetricWriter(workdir, start, checkpointing.status)
      try:
        state, step = _train_loop(exp, state, start, manager, writer)
        checkpointing.wait(manager)
      except (StorageError, KeyboardInterrupt):
        raise   # a failed save, or a second Ctrl-C: waiting on the saves could hang
      except BaseException:
        checkpointing.wait(manager)   # a save in flight finishes before the process exits
        raise
      finally:
        writer.close()
      manager.close()
      evaluate(exp, state, workdir, step)
  return state


def _train_loop(exp, state, start, manager, writer):
  """Steps from `start` to config.num_steps; returns (state, its step)."""
  config = exp.config
  if start >= config.num_steps:
    checkpointing.status(f"the run is at step {start}, num_steps is {config.num_steps}: "
                         "nothing to train")
    return state, start
  examples_per_step = config.batch_size
  bar = tqdm(total=config.num_steps, initial=start, disable=not config.progress_bar,
             dynamic_ncols=True, desc="train")
  clock = {"step": start, "time": None}

  def record(step, metrics):
    """Host side of step `step`: NaN check, then JSONL/TensorBoard/progress bar."""
    host = jax.device_get(metrics)
    bad = [k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(host[k])]
    if bad:
      checkpointing.wait(manager)   # a save in flight is a good checkpoint: let it finish
      last = checkpointing.complete_steps(manager.directory)
      raise NonFiniteLoss(
          f"{', '.join(f'{k} is {host[k]}' for k in bad)} at step {step}; stopping. " +
          (f"The last good checkpoint is step {last[-1]}." if last
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
  with _StopRequests() as stops:
    for step in range(start, config.num_steps):
      state, metrics = exp.train_step(state, exp.train_data)
      done = step + 1
      if pending is not None:
        record(*pending)
      pending = (done, metrics)
      bar.update(1)
      if done % config.eval_every_steps == 0:
        writer.write(done, "eval", jax.device_get(
            exp.eval_step(state.params, state.model_state, exp.eval_data, state.step)))
      stop = stops(done)
      if done % config.checkpoint.every_steps == 0 or done == config.num_steps or stop:
        record(*pending)  # a checkpoint is written only after its step's metrics are finite
        pending = None
        checkpointing.save(manager, done, state)
      if stop:
        break
    if pending is not None:
      record(*pending)
    bar.close()
    if stops.signum is not None:   # also a signal that came after the last step's check
      checkpointing.wait(manager)
      raise Stopped(f"{signal.Signals(stops.signum).name}: saved a checkpoint at step {done}; "
                    "rerun the same command to resume", stops.signum)
  return state, done


def load_run(config, workdir: str):
  """(experiment, state, step) of the newest readable checkpoint in `workdir`, whose
  config.json must record `config`'s experiment. Reads only: never renames, deletes or saves a
  checkpoint. Model surgery (train/surgery.py) starts here too."""
  validate(config)
  checkpoint_dir = checkpointing.directory(config, workdir)
  workdir_lib.check_for_eval(workdir, checkpoint_dir)
  workdir_lib.check_config(workdir, config, training=False)
  exp = setup(config)
  with exp.activate():
    manager = checkpointing.make_manager(checkpoint_dir, config.checkpoint.keep, read_only=True)
    try:
      state, step = checkpointing.restore_newest(manager, exp.abstract_state, set_aside=False)
    finally:
      manager.close()
  validation.require(step is not None, "--workdir", f"no checkpoint in {checkpoint_dir}")
  return exp, state, step


def evaluate_checkpoint(config, workdir: str):
  """Runs the task's evaluator on the newest readable checkpoint in workdir; writes only
  WORKDIR/eval/."""
  exp, state, step = load_run(config, workdir)
  with exp.activate():
    return evaluate(exp, state, workdir, step)


# XLA's compiled memory estimate, per device: these fields of Compiled.memory_analysis().
MEMORY_FIELDS = ("argument", "output", "temp", "alias", "generated_code")


def compile_train_step(exp: Experiment) -> dict:
  """Lowers and compiles the train step once from the abstract state (nothing is initialised)
  and reads XLA's FLOP count and memory estimate from that one compiled program. Call it
  inside `exp.activate()`.

  Returns lower_s and compile_s (wall seconds), flops (NaN where the backend counts none) and
  memory: bytes per device of MEMORY_FIELDS plus total = argument + output + temp - alias (the
  donated state is aliased, so it counts once), or None where the backend has no estimate.
  """
  start = time.perf_counter()
  lowered = exp.train_step.lower(exp.abstract_state, exp.train_data)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  stats = compiled.memory_analysis()
  memory = None
  if stats is not None:
    memory = {f: int(getattr(stats, f"{f}_size_in_bytes")) for f in MEMORY_FIELDS}
    memory["total"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  return {"lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at,
          "flops": float((cost or {}).get("flops", float("nan"))), "memory": memory}


def train_step_flops(exp: Experiment) -> float:
  """FLOPs of one compiled train step (data sampling included), as counted by XLA."""
  return compile_train_step(exp)["flops"]


def inspect(config, depth: int = 3) -> dict:
  """Parameter counts per module (path prefix of `depth`), bytes, FLOPs per train step, and the
  step's lower and compile seconds and compiled memory per device.

  It builds the mesh on this process's devices and never joins a multi-process run, so a `pod`
  preset is inspected on one host (with N fake CPU devices: XLA_FLAGS=
  --xla_force_host_platform_device_count=N)."""
  jax.devices()   # the backend's start-up is not the task's setup time
  start = time.perf_counter()
  exp = setup(config)
  setup_s = time.perf_counter() - start
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
    step = compile_train_step(exp)
  return {
      "modules": [{"name": k, "params": v[0], "bytes": v[1]} for k, v in modules.items()],
      "total_params": sum(v[0] for v in modules.values()),
      "param_bytes": sum(v[1] for v in modules.values()),
      "train_state_bytes": state_bytes,
      "param_bytes_per_device": per_device(params),
      "optimizer_bytes_per_device": per_device(exp.abstract_state.opt_state),
      "data_bytes_per_device": per_device(exp.train_data),
      "flops_per_step": step["flops"],   # per device: XLA counts the partitioned program
      "batch_size": config.batch_size,
      "mesh": dict(exp.mesh.shape),
      "backend": jax.default_backend(),
      # setup builds the task, so it includes generating or loading the dataset
      "setup_s": setup_s, "lower_s": step["lower_s"], "compile_s": step["compile_s"],
      # a persistent-cache hit reads the program instead of compiling it
      "compilation_cache": bool(jax.config.jax_enable_compilation_cache
                                and jax.config.jax_compilation_cache_dir),
      "memory_per_device": step["memory"],
  }


def format_inspect(report: dict) -> str:
  width = max(len(m["name"]) for m in report["modules"]) + 2
  lines = [f"{'module':<{width}}{'params':>12}{'bytes':>14}"]
  lines += [f"{m['name']:<{width}}{m['params']:>12,}{m['bytes']:>14,}" for m in report["modules"]]
  lines.append(f"{'total':<{width}}{report['total_params']:>12,}{report['param_bytes']:>14,}")
  lines.append(f"train state (params + optimizer): {report['train_state_bytes']:,} bytes")
  lines.append(f"per device: params {report['param_bytes_per_device']:,} bytes, optimizer state "
               f"{report['optimizer_bytes_per_device']:,} bytes, training data "
               f"{report['data_bytes_per_device']:,} bytes")
  devices = int(np.prod(list(report["mesh"].values())))
  # XLA counts the partitioned program: one device's share of the step
  lines.append(f"FLOPs per train step and device (XLA count, global batch "
               f"{report['batch_size']} on {devices} devices): {report['flops_per_step']:.4g}")
  lines.append(f"train step on {devices} {report['backend']} devices: setup "
               f"{report['setup_s']:.2f} s (task and data), lower {report['lower_s']:.2f} s, "
               f"compile {report['compile_s']:.2f} s" +
               (" (persistent compilation cache on)" if report["compilation_cache"] else ""))
  mem = report["memory_per_device"]
  if mem is None:
    lines.append(f"compiled memory per device: unavailable on {report['backend']}")
  else:
    lines.append(f"compiled memory per device (XLA estimate): {mem['total']:,} bytes")
    lines.append(f"  = arguments {mem['argument']:,} + outputs {mem['output']:,} + temp "
                 f"{mem['temp']:,} - aliased {mem['alias']:,} (generated code "
                 f"{mem['generated_code']:,})")
  lines.append(f"mesh: {json.dumps(report['mesh'])}")
  return "\n".join(lines)
