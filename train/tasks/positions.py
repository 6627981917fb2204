"""Synthetic position tasks of Luo et al. 2022 ("Your Transformer May Not be as Powerful as You
Expect"): can a bidirectional encoder with a given positional scheme (`model.positions`) tell
positions apart?

Inputs are i.i.d. uniform tokens over `data.vocab` symbols, `data.length` = n of them, with no
BOS token (a distinguished token would leak position through attention). `data.task`:
  pi   position identification: y_i = i, one class per position
  etp  even-token prediction: y_i = x_{2i+1} for i < n // 2, else the constant class 0

The model is models/lm.LanguageModel with causal=False (a per-position linear head) over
max(vocab, n) classes, trained on the mean cross-entropy over all positions; batches are drawn
on device from the step's key, so there are no data arrays. Evaluation writes
eval/positions.json (held-out token accuracy overall and per position, the accuracy a model
with no positional information can reach, and the constant-input spread: max_{i,j}
|h_i - h_j| of the final hidden states and of the logits on the sequences c, c, ..., c, the
largest over every token c) and eval/positions.png (accuracy per position).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from substrax.models.lm import LanguageModel
from substrax.models.transformer import Transformer, block_config
from substrax.train.analysis import reporting
from substrax.train.tasks import Task
from substrax.train.validation import check_backbone, require

TASKS = ("pi", "etp")
CONSTANT = 0   # ETP's target at the positions past n // 2


def validate(config):
  d, m, e = config.data, config.model, config.eval
  require(d.task in TASKS, "data.task",
          f"unknown task {d.task!r}; choose one of {', '.join(TASKS)}")
  require(d.length >= 2, "data.length", f"must be at least 2, got {d.length}")
  require(d.vocab >= 2, "data.vocab", f"must be at least 2, got {d.vocab}")
  check_backbone(m)
  require(not m.mlp.granularities and not m.mlp.experts, "model.mlp",
          "MatFormer granularities and EMoE experts are for the lm and icl tasks")
  require(m.max_len >= d.length, "model.max_len",
          f"must be at least data.length={d.length}, got {m.max_len}")
  require(e.num_sequences > 0, "eval.num_sequences",
          f"must be positive, got {e.num_sequences}")
  require(e.batch_size > 0, "eval.batch_size", f"must be positive, got {e.batch_size}")


def num_classes(d) -> int:
  """One output class per token and per position: both tasks share the head's size."""
  return max(d.vocab, d.length)


def targets(task: str, tokens):
  """[batch, n] int labels of `tokens` [batch, n]."""
  n = tokens.shape[1]
  pos = jnp.arange(n)
  if task == "pi":
    return jnp.broadcast_to(pos, tokens.shape).astype(jnp.int32)
  source = jnp.minimum(2 * pos + 1, n - 1)
  return jnp.where(pos < n // 2, tokens[:, source], CONSTANT).astype(jnp.int32)


def position_blind_accuracy(task: str, n: int, vocab: int) -> float:
  """The best expected accuracy without positional information: a constant class per token
  sequence, for PI 1/n; for ETP the constant class, right at the n - n//2 constant positions and
  with probability 1/vocab at the others."""
  if task == "pi":
    return 1.0 / n
  return ((n - n // 2) + (n // 2) / vocab) / n


def heldout_tokens(d, e):
  """The fixed evaluation sequences: numpy's generator seeded by eval.seed."""
  rng = np.random.default_rng(e.seed)
  return rng.integers(0, d.vocab, (e.num_sequences, d.length)).astype(np.int32)


def hidden_and_logits(model, params, tokens):
  """(final hidden states [batch, n, width] (the backbone's output, after its final norm),
  logits [batch, n, classes])."""
  logits, state = model.apply({"params": params}, tokens, capture_intermediates=(
      lambda module, method: isinstance(module, Transformer) and method == "__call__"),
                              mutable=["intermediates"])
  return state["intermediates"]["backbone"]["__call__"][0], logits


def spread(h):
  """max_{i,j} |h_i - h_j| over the positions of h [..., n, features], the largest over the
  leading axes: 0 exactly when every position carries the same vector. Differences are taken
  directly (no |a|^2 + |b|^2 - 2ab cancellation), one sequence at a time ([n, n, features])."""
  h = h.reshape(-1, *h.shape[-2:])
  h = h.astype(jnp.promote_types(h.dtype, jnp.float32))

  def one(x):
    diff = x[:, None, :] - x[None, :, :]
    return jnp.max(jnp.sqrt(jnp.sum(jnp.square(diff), -1)))
  return jnp.max(jax.lax.map(one, h))


def constant_input_spread(model, params, vocab: int, n: int) -> dict:
  """The spreads (scalar arrays; jittable) of the hidden states and of the logits on the
  constant sequences c, ..., c of length n, the largest over every token c < vocab."""
  tokens = jnp.broadcast_to(jnp.arange(vocab, dtype=jnp.int32)[:, None], (vocab, n))
  h, logits = hidden_and_logits(model, params, tokens)
  return {"hidden": spread(h), "logits": spread(logits)}


def build(config) -> Task:
  d, m, e = config.data, config.model, config.eval
  model = LanguageModel(num_classes(d), m.width, m.depth, m.max_len, block_config(m),
                        causal=False)

  def sample_batch(data, key, step):
    del data, step  # the key already depends on the step
    return {"tokens": jax.random.randint(key, (config.batch_size, d.length), 0, d.vocab,
                                         jnp.int32)}

  def token_scores(params, tokens):
    """(cross-entropy [batch, n], correct [batch, n]) of the model on `tokens`."""
    logits = model.apply({"params": params}, tokens)
    labels = targets(d.task, tokens)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels),
            jnp.argmax(logits, -1) == labels)

  def loss_fn(params, model_state, batch, step):
    del step
    losses, correct = token_scores(params, batch["tokens"])
    return jnp.mean(losses), ({"accuracy": jnp.mean(correct)}, model_state)

  def eval_step(params, model_state, data, step):
    del model_state, step
    losses, correct = token_scores(params, data["tokens"])
    return {"loss": jnp.mean(losses), "accuracy": jnp.mean(correct)}

  scores = jax.jit(token_scores)
  spreads = jax.jit(lambda params: constant_input_spread(model, params, d.vocab, d.length))

  def evaluate(params, model_state, workdir, step):
    del model_state
    tokens = heldout_tokens(d, e)
    losses, correct = (np.concatenate(parts) for parts in zip(*(
        jax.tree.map(np.asarray, scores(params, tokens[i:i + e.batch_size]))
        for i in range(0, len(tokens), e.batch_size))))
    per_position = correct.mean(0)
    half = d.length // 2
    payload = {"step": int(step), "task": d.task, "positions": m.positions,
               "attention": m.attention.kind, "length": d.length, "vocab": d.vocab,
               "classes": num_classes(d), "num_sequences": len(tokens),
               "accuracy": float(correct.mean()), "loss": float(losses.mean()),
               "accuracy_per_position": [float(a) for a in per_position],
               "position_blind_accuracy": position_blind_accuracy(d.task, d.length, d.vocab),
               "constant_input_spread": {k: float(v) for k, v in spreads(params).items()}}
    if d.task == "etp":   # the positions whose target is a token, not the constant
      payload["accuracy_token_targets"] = float(per_position[:half].mean())
    out = os.path.join(workdir, "eval")
    reporting.write_json(os.path.join(out, "positions.json"), payload)
    plot(os.path.join(out, "positions.png"), payload)
    print_summary(payload)
    return payload

  return Task(model=model, init_inputs=(jnp.zeros((1, d.length), jnp.int32),),
              train_data={}, sample_batch=sample_batch,
              batch_axes={"tokens": ("batch", None)}, loss_fn=loss_fn,
              eval_data={"tokens": heldout_tokens(d, e)}, eval_step=eval_step,
              evaluate=evaluate)


@reporting.plot
def plot(path: str, r: dict):
  fig = reporting.figure(figsize=(6.4, 4.2), dpi=120)
  ax = fig.subplots()
  ax.bar(np.arange(r["length"]), r["accuracy_per_position"], color="C0",
         label=f"model: {r['accuracy']:.3f} overall")
  ax.axhline(r["position_blind_accuracy"], color="k", ls="--", lw=1.2,
             label=f"no positional information: {r['position_blind_accuracy']:.3f}")
  ax.set(xlabel="position i", ylabel="held-out token accuracy", ylim=(0, 1.02),
         title=f"{r['task'].upper()}, n={r['length']}, vocab {r['vocab']}, "
               f"positions {r['positions']}, step {r['step']}")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


def print_summary(r: dict):
  rows = {r["positions"]: [r["accuracy"], r["loss"], r["position_blind_accuracy"],
                           r["constant_input_spread"]["hidden"]]}
  print(f"{r['task'].upper()} (n={r['length']}, vocab {r['vocab']}), step {r['step']} "
        "(held out):")
  print(reporting.format_table(["accuracy", "loss", "blind acc", "const spread"], rows,
                               first="positions"))
