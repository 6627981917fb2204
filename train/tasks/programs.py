"""Transformer Programs (Friedman et al. 2023) on the algorithmic tasks sort, reverse,
histogram and dyck1: train with Gumbel-softmax, discretise, decompile into Python.

Inputs are BOS + a prompt of `data.length` symbols; every prompt position has a label, the
task's answer symbol there (data/algorithmic.py): sort's sorted list, reverse's reversed list,
the histogram count, the Dyck label. Prompts come from the task's own sampler (histogram: 8
symbols; dyck1: 2 brackets), except that sort and reverse draw `data.vocab` symbols. Attention
is bidirectional, causal for dyck1 (`model.attention='auto'`).

The model is models/transformer_programs.py. The Gumbel-softmax temperature falls
geometrically from tau.start at step 0 to tau.end at the last step; the noise key is a function
of (seed, step). Training draws batches from a fixed pool of `data.train_size` examples.
Evaluation, on `eval.num_sequences` held-out inputs, writes eval/program.py (the decompiled
discrete model, runnable standalone) and eval/programs.json: the soft model's token accuracy at
tau.end without noise (at 0.01 every relaxed choice is already one-hot, so its gap to the
discrete model is ~0 by construction) and with the Gumbel noise training used at tau.end, the
discrete model's accuracy, both gaps, the program's agreement with the discrete model (every
position of every input, BOS included: it must be 1.0) and its length in lines.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from substrax.data import algorithmic, pipeline
from substrax.models import transformer_programs as tp
from substrax.train.analysis import reporting
from substrax.train.tasks import Task
from substrax.train.validation import require

TASKS = ("sort", "reverse", "histogram", "dyck1")
ATTENTION = ("auto", "causal", "bidirectional")
FIXED_SYMBOLS = {"histogram": 8, "dyck1": 2}   # the task's own alphabet


def symbols(d) -> int:
  return FIXED_SYMBOLS.get(d.task, d.vocab)


def num_classes(d) -> int:
  """Labels are the answer symbols themselves: tokens, counts 1..n, Dyck labels 4..6."""
  return {"histogram": d.length + 1, "dyck1": algorithmic.LABEL_F + 1}.get(d.task, d.vocab)


def program_config(config) -> tp.ProgramConfig:
  d, m = config.data, config.model
  causal = m.attention == "causal" or (m.attention == "auto" and d.task == "dyck1")
  return tp.ProgramConfig(vocab=symbols(d), length=d.length + 1, classes=num_classes(d),
                          layers=m.layers, cat_heads=m.cat_heads, num_heads=m.num_heads,
                          mlps=m.mlps, causal=causal, num_scale=m.num_scale)


def validate(config):
  d, m, e, t = config.data, config.model, config.eval, config.tau
  require(d.task in TASKS, "data.task", f"unknown task {d.task!r}; choose one of "
          f"{', '.join(TASKS)}")
  require(1 <= d.length <= 64, "data.length", f"must be in [1, 64], got {d.length}")
  require(2 <= d.vocab <= 64, "data.vocab", f"must be in [2, 64], got {d.vocab}")
  require(d.train_size > 0, "data.train_size", f"must be positive, got {d.train_size}")
  require(m.layers > 0, "model.layers", f"must be positive, got {m.layers}")
  for key in ("cat_heads", "num_heads", "mlps"):
    require(m[key] >= 0, f"model.{key}", f"must be >= 0, got {m[key]}")
  require(m.num_scale > 0, "model.num_scale", f"must be positive, got {m.num_scale}")
  require(m.attention in ATTENTION, "model.attention",
          f"unknown attention {m.attention!r}; choose one of {', '.join(ATTENTION)}")
  require(0 < t.end <= t.start, "tau", f"needs 0 < tau.end <= tau.start, got {t.start}, {t.end}")
  require(e.num_sequences > 0, "eval.num_sequences", f"must be positive, got {e.num_sequences}")
  require(0 < e.held_out <= e.num_sequences, "eval.held_out",
          f"must be in [1, eval.num_sequences={e.num_sequences}], got {e.held_out}")


def examples(d, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [count, n + 1] with BOS first, labels int32 [count, n + 1], 0 at BOS)."""
  task = algorithmic.get(d.task)
  draw = (task.sample if d.task in FIXED_SYMBOLS
          else lambda rng, n: rng.integers(0, d.vocab, n).tolist())
  prompts = [draw(rng, d.length) for _ in range(count)]
  bos = np.full((count, 1), symbols(d), np.int32)
  tokens = np.concatenate([bos, np.array(prompts, np.int32)], 1)
  labels = np.concatenate([0 * bos, np.array([task.solve(p) for p in prompts], np.int32)], 1)
  return tokens, labels


def temperature(t, step, num_steps):
  """tau.start at step 0, falling geometrically to tau.end at step num_steps - 1."""
  frac = jnp.minimum(step / max(num_steps - 1, 1), 1.0)
  return t.start * (t.end / t.start) ** frac


def build(config) -> Task:
  d, e = config.data, config.eval
  cfg = program_config(config)
  model = tp.TransformerProgram(cfg)
  train_tokens, train_labels = examples(d, np.random.default_rng(d.seed), d.train_size)
  test_tokens, test_labels = examples(d, np.random.default_rng(e.seed), e.num_sequences)
  held = {"tokens": test_tokens[:e.held_out], "labels": test_labels[:e.held_out]}
  noise = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)

  def sample_batch(data, key, step):
    del step  # the key already depends on the step
    rows = jax.random.randint(key, (config.batch_size,), 0, data["tokens"].shape[0])
    return pipeline.take(data, rows)

  def scores(logits, labels):
    """(mean cross-entropy, token accuracy), both over the prompt positions (not BOS)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, 1:], labels[:, 1:])
    return jnp.mean(losses), jnp.mean(jnp.argmax(logits[:, 1:], -1) == labels[:, 1:])

  def loss_fn(params, model_state, batch, step):
    tau = temperature(config.tau, step, config.num_steps)
    logits = model.apply({"params": params}, batch["tokens"], tau,
                         jax.random.fold_in(noise, step))
    loss, accuracy = scores(logits, batch["labels"])
    return loss, ({"accuracy": accuracy, "tau": tau}, model_state)

  def eval_step(params, model_state, data, step):
    del model_state
    tau = temperature(config.tau, step, config.num_steps)
    soft = scores(model.apply({"params": params}, data["tokens"], tau), data["labels"])
    hard = scores(model.apply({"params": params}, data["tokens"], hard=True), data["labels"])
    return {"loss": soft[0], "accuracy": soft[1], "discrete_accuracy": hard[1], "tau": tau}

  soft_logits = jax.jit(lambda params, tokens, key: model.apply({"params": params}, tokens,
                                                                config.tau.end, key))

  def evaluate(params, model_state, workdir, step):
    del model_state
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    mask = np.arange(test_tokens.shape[1]) > 0
    soft = np.argmax(np.asarray(soft_logits(params, test_tokens, None)), -1)
    # The model as training last saw it: Gumbel noise at tau.end.
    noisy = np.argmax(np.asarray(soft_logits(params, test_tokens,
                                             jax.random.fold_in(noise, config.num_steps))), -1)
    hard = tp.discrete_predict(params, test_tokens, cfg)
    path = os.path.join(out, "program.py")
    with open(path, "w") as f:
      f.write(tp.decompile(params, cfg, f"{d.task}, n = {d.length}"))
    with open(path) as f:   # run what was written, not what was meant to be
      source = f.read()
    program = tp.load_program(source)
    start = time.time()
    outputs = np.array([program(row[1:].tolist()) for row in test_tokens])
    payload = {
        "step": int(step), "task": d.task, "length": d.length, "symbols": symbols(d),
        "classes": cfg.classes, "causal": cfg.causal, "num_sequences": len(test_tokens),
        "tau_end": config.tau.end,
        "soft_accuracy": float(np.mean((soft == test_labels)[:, mask])),
        "soft_noisy_accuracy": float(np.mean((noisy == test_labels)[:, mask])),
        "discrete_accuracy": float(np.mean((hard == test_labels)[:, mask])),
        "discrete_sequence_accuracy": float(np.mean(np.all(
            (hard == test_labels)[:, mask], -1))),
        "agreement": float(np.mean(outputs == hard)),
        "program_lines": len(source.splitlines()),
        "program_seconds": time.time() - start}
    payload["gap"] = payload["soft_accuracy"] - payload["discrete_accuracy"]
    payload["noisy_gap"] = payload["soft_noisy_accuracy"] - payload["discrete_accuracy"]
    reporting.write_json(os.path.join(out, "programs.json"), payload)
    print_summary(payload)
    return payload

  return Task(model=model, init_inputs=(jnp.asarray(test_tokens[:1]),),
              train_data={"tokens": train_tokens, "labels": train_labels},
              sample_batch=sample_batch,
              batch_axes={"tokens": ("batch", None), "labels": ("batch", None)},
              loss_fn=loss_fn, eval_data=held, eval_step=eval_step, evaluate=evaluate)


def print_summary(r: dict):
  print(f"Transformer Program, {r['task']} (n={r['length']}, {r['symbols']} symbols, "
        f"{'causal' if r['causal'] else 'bidirectional'}), step {r['step']}, "
        f"{r['num_sequences']} held-out inputs:")
  print(f"  soft accuracy (tau={r['tau_end']:g}) {r['soft_accuracy']:.4f}, with Gumbel noise "
        f"{r['soft_noisy_accuracy']:.4f}; discrete {r['discrete_accuracy']:.4f} (gaps "
        f"{r['gap']:+.4f}, {r['noisy_gap']:+.4f}), program agreement "
        f"{r['agreement']:.4f}, {r['program_lines']} lines")
