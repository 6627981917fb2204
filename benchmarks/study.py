"""Running a study's cells: one substrax-train subprocess per cell (lra_runs.py, fluid_runs.py),
or several configs of one task trained together under jax.vmap (train_together).

A finished run (its eval JSON written at the last step) is skipped and an interrupted one
resumes from its checkpoint, so rerunning a study's command completes it. Each run's wall time
is saved next to it as wall_time.json for the table scripts.
"""
import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from substrax.train import errors, metrics, optim
from substrax.train import step as step_lib


def stop(message: str, code: int):
  """Ends the command with one line on stderr, no traceback."""
  print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def run(main, interrupted):
  """app.run(main) for a study command: a bad flag or an app.UsageError exits 2 in one line,
  and Ctrl-C exits 130 in one line that says what is kept (`interrupted()`, called once the
  flags are parsed). Library INFO logs (JAX's backend probing) stay off stderr."""
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as err:
      stop(str(err), 2)

  def guarded(argv):
    logging.set_verbosity(logging.WARNING)
    # Python drops a KeyboardInterrupt raised inside a GC callback (JAX has one), and the run
    # then went on to the end; errors.stop delivers the signal again until one gets through.
    signal.signal(signal.SIGINT, lambda signum, _: errors.stop(signum, "SIGINT"))
    try:
      return main(argv)
    except app.UsageError as err:
      stop(str(err), 2)
    except KeyboardInterrupt:
      errors.caught()
      stop(f"interrupted (SIGINT); {interrupted()}", 130)

  app.run(guarded, flags_parser=parse)


def median_seconds(f, *args, reps: int) -> float:
  """Median wall seconds of `reps` synchronised calls f(*args), after one untimed call."""
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def step_times(exp, warmup: int, steps: int) -> list[float]:
  """Seconds of each of `steps` full trainer steps (on-device sampling plus the update, one
  dispatch, synchronised every step) from a fresh state, after `warmup` untimed ones. Call it
  inside exp.activate()."""
  state = exp.init()
  for _ in range(warmup):
    state, m = exp.train_step(state, exp.train_data)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, m = exp.train_step(state, exp.train_data)
    m["loss"].block_until_ready()
    times.append(time.perf_counter() - start)
  return times


def finished(eval_json: str, num_steps: int) -> bool:
  if not os.path.exists(eval_json):
    return False
  with open(eval_json) as f:
    return json.load(f)["step"] == num_steps


def train(label: str, config: str, workdir: str, overrides: dict, preset: str) -> bool:
  """Runs `substrax-train --config=CONFIG:PRESET --workdir=WORKDIR --config.k=v ...`; prints one
  line with the wall time and the run's last output line (or its stderr on failure)."""
  binary = os.path.join(os.path.dirname(sys.executable), "substrax-train")
  args = [binary, f"--config={config}:{preset}", f"--workdir={workdir}",
          "--config.progress_bar=False"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  start = time.perf_counter()
  proc = subprocess.run(args, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    print(f"{label}: FAILED ({proc.returncode})\n{proc.stderr}", flush=True)
    return False
  with open(os.path.join(workdir, "wall_time.json"), "w") as f:
    json.dump({"wall_s": wall, "preset": preset}, f)
  last = proc.stdout.strip().splitlines()
  print(f"{label}: {wall / 60:5.2f} min  {last[-1] if last else ''}", flush=True)
  return True


def read_wall(run_dir: str):
  path = os.path.join(run_dir, "wall_time.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["wall_s"]


def train_together(configs, build, chunk: int, label: str, evaluate: bool = False):
  """Trains one task's configs under one jax.vmap: one compile and one process for all of them.

  The configs may differ only in seed, optim.learning_rate and `data` settings that change the
  data's values, not its shapes; `build(config)` makes each one's Task, and each member trains
  and is evaluated on its own train_data and eval_data. Keys are the trainer's (init
  fold_in(key(seed), 0), batches fold_in(fold_in(key(seed), 1), step)), and each member's
  learning rate scales the first config's warmup-cosine schedule, which is linear in its peak,
  so every member follows its own config's schedule. vmap changes the float reduction order,
  so a member is not bit-identical to a substrax-train run of the same config.

  Returns (the first config's Task, the stacked final TrainState, the held-out curve): with
  `evaluate`, the task's eval_step runs on every member after each chunk of steps, and the
  curve is {"step": [...], metric: array [evaluations, members]}.
  """
  config = configs[0]
  shared = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("seed", "data")} | {
      "optim": {k: v for k, v in c.optim.to_dict().items() if k != "learning_rate"}}
  for c in configs[1:]:
    if shared(c) != shared(config):
      raise ValueError("train_together: configs may differ only in seed, optim.learning_rate "
                       "and data")
  if min(c.optim.learning_rate for c in configs) <= 0:
    raise ValueError("train_together: every optim.learning_rate must be positive")
  built = [build(c) for c in configs]
  task = built[0]
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  data = stack([b.train_data for b in built])
  eval_data = stack([b.eval_data for b in built])
  schedule = optim.make_schedule(config.optim, config.num_steps)
  scales = jnp.array([c.optim.learning_rate / config.optim.learning_rate for c in configs],
                     jnp.float32)
  keys = [[jax.random.fold_in(jax.random.key(c.seed), i) for c in configs] for i in (0, 1)]
  init_keys, data_keys = (jnp.stack(k) for k in keys)

  def init(key):
    tx = optim.make_optimizer(config.optim, schedule)
    return nn.meta.unbox(step_lib.init_state(key, model=task.model, inputs=task.init_inputs,
                                             tx=tx))

  def update(state, data, data_key, scale):
    member_schedule = lambda step: scale * schedule(step)
    tx = optim.make_optimizer(config.optim, member_schedule)
    batch = task.sample_batch(data, jax.random.fold_in(data_key, state.step), state.step)
    return step_lib.train_step(state, batch, loss_fn=task.loss_fn, tx=tx,
                               schedule=member_schedule)

  def steps(states, data, data_keys, scales, n):
    def body(states, _):
      states, metrics = jax.vmap(update)(states, data, data_keys, scales)
      return states, metrics["loss"]
    return jax.lax.scan(body, states, length=n)

  run = jax.jit(steps, static_argnums=4, donate_argnums=0)
  held_out = jax.jit(jax.vmap(task.eval_step, in_axes=(0, 0, 0, None)))
  states = jax.jit(jax.vmap(init))(init_keys)
  curve = {"step": []}
  done = 0
  while done < config.num_steps:
    n = min(chunk, config.num_steps - done)
    tick = time.perf_counter()
    states, losses = run(states, data, data_keys, scales, n)
    losses = np.asarray(losses)
    done += n
    line = (f"  {label} step {done}: training loss per member "
            f"{np.array2string(losses[-1], precision=4)}")
    if evaluate:
      scores = held_out(states.params, states.model_state, eval_data, done)
      curve["step"].append(done)
      for k, v in scores.items():
        curve.setdefault(k, []).append(np.asarray(v))
      line += f", held out {np.array2string(np.asarray(scores['loss']), precision=4)}"
    print(f"{line}, {n * len(configs) / (time.perf_counter() - tick):.0f} member-steps/s",
          flush=True)
  curve = {k: v if k == "step" else np.stack(v) for k, v in curve.items()}
  return task, states, curve


def write_curve(workdir: str, curve: dict, member: int):
  """A member's held-out curve as the eval records of WORKDIR/metrics.jsonl, written by the
  trainer's own MetricWriter, so that the task's evaluate() reports and plots it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, metrics.FILENAME)
  if os.path.exists(path):   # a rerun replaces the curve
    os.remove(path)
  writer = metrics.MetricWriter(workdir, 0, print)
  for i, step in enumerate(curve["step"]):
    writer.write(step, "eval", {k: v[i, member] for k, v in curve.items() if k != "step"})
  writer.close()
