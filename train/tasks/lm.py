"""Autoregressive language modelling on sources whose optimal loss is known (data/lm.py).

Sources (`data.source`): `markov` (k-th-order switching chain; floor = its entropy rate),
`hmm` (a random hidden Markov model; floor = the Bayes loss by the forward algorithm on the
held-out sequences), `text` (bytes of local .txt files) and `tfds` (tiny_shakespeare, lm1b);
text has no known floor. The synthetic sources are sampled on device from parameters the
trainer passes in as data; text windows are cut from the train stream on device.

With `data.tokenizer` (configs/lm_tokenized.py), the markov source is cut into blocks of
`data.length` characters and trained on token ids instead: each block is a document
[EOS] tokens [EOS], encoded by a char, LZW or BPE dictionary (data/tokenization.py) fit on the
training blocks, and every loss is in nats per character of the block, the closing EOS
included (see _build_tokenized).

`algorithmic` trains on the tasks of data/algorithmic.py (`data.task`), instances of sizes 1 to
`data.train_max` packed into contexts of `data.length` tokens, with the loss on the answer
tokens only; it is scored by exact match at each instance size of `eval.lengths` (see
_build_algorithmic).

Every sequence of the other sources has `data.length` + 1 tokens: position t predicts token
t + 1, so the loss and the floors cover the `length` predicted tokens. Evaluation writes
eval/lm.json (held-out loss in nats and bits per token and per character, at each of
`eval.lengths`, beside the floor and the unigram loss) and eval/lm.png (held-out loss against
the step, with both as lines).
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from substrax.data import algorithmic, pipeline, tokenization
from substrax.data import lm as lm_data
from substrax.models.lm import LanguageModel
from substrax.models.transformer import block_config
from substrax.train import matformer, metrics
from substrax.train.analysis import reporting
from substrax.train.tasks import Task
from substrax.train.validation import check_backbone, require

SOURCES = ("markov", "hmm", "text", "tfds", "algorithmic")
# Schemes with a table over positions: a model evaluates only up to model.max_len.
TABLES = ("learned", "sinusoidal", "urpe")


def validate(config):
  d, m, e = config.data, config.model, config.eval
  require(d.source in SOURCES, "data.source",
          f"unknown source {d.source!r}; choose one of {', '.join(SOURCES)}")
  require(d.length >= 2, "data.length", f"must be at least 2, got {d.length}")
  if "tokenizer" in d:
    return _validate_tokenized(config)
  if d.source == "markov":
    try:
      lm_data.check_markov(d.order, d.p, d.q)
    except ValueError as err:
      require(False, "data.order/p/q", str(err))
  elif d.source == "hmm":
    require(d.states > 0 and d.symbols > 1, "data.states/symbols",
            f"need states >= 1 and symbols >= 2, got {d.states}, {d.symbols}")
    require(d.concentration > 0, "data.concentration",
            f"must be positive, got {d.concentration}")
  elif d.source == "algorithmic":
    return _validate_algorithmic(config)
  elif d.source == "text":
    require(bool(d.path), "data.path", "is required for source 'text' (a .txt file or folder)")
  else:
    require(d.name in lm_data.TFDS_NAMES, "data.name",
            f"unknown TFDS dataset {d.name!r}; choose one of {', '.join(lm_data.TFDS_NAMES)}")
  check_backbone(m)
  require(m.max_len >= d.length, "model.max_len",
          f"must be at least data.length={d.length}, got {m.max_len}")
  require(len(e.lengths) > 0 and all(n >= 2 for n in e.lengths), "eval.lengths",
          f"must be lengths >= 2, got {tuple(e.lengths)}")
  if m.positions in TABLES:
    require(max(e.lengths) <= m.max_len, "eval.lengths",
            f"{max(e.lengths)} exceeds model.max_len={m.max_len}, the longest sequence "
            f"positions {m.positions!r} cover")
  require(e.num_sequences > 0, "eval.num_sequences",
          f"must be positive, got {e.num_sequences}")


def load_source(config):
  """(train_data for sample_batch, held-out sequence maker, source facts, floor of given
  held-out tokens or None where no floor is known)."""
  d, e = config.data, config.eval
  if d.source == "markov":
    source = lm_data.markov_source(d.order, d.p, d.q)
    train = {"p": np.float32(d.p), "q": np.float32(d.q)}
    heldout = lambda n, length: lm_data.markov_heldout(e.seed, n, length, d.order, d.p, d.q)
    # The first order - 1 targets are i.i.d.: their floor is the unigram loss.
    floor = lambda tokens: float(
        lm_data.markov_position_loss(d.order, d.p, d.q, tokens.shape[1])[1:].mean())
    return train, heldout, source, floor
  if d.source == "hmm":
    params = lm_data.hmm_params(d.seed, d.states, d.symbols, d.concentration)
    train = {k: v.astype(np.float32) for k, v in params.items()}
    heldout = lambda n, length: lm_data.hmm_heldout(e.seed, params, n, length)
    floor = lambda tokens: float(lm_data.hmm_token_losses(params, tokens)[:, 1:].mean())
    return train, heldout, lm_data.hmm_source(params, heldout(8, d.length + 1)), floor
  corpus = (lm_data.load_text(d.path) if d.source == "text"
            else lm_data.load_tfds(d.name, d.data_dir, d.max_records))

  def heldout(n, length):
    stream = corpus.heldout
    count = min(n, len(stream) // length)
    require(count > 0, "eval.lengths",
            f"the held-out text has {len(stream)} bytes, fewer than one window of {length}")
    return stream[:count * length].reshape(count, length).astype(np.int32)

  return {"stream": corpus.train}, heldout, corpus.source, None


def build(config) -> Task:
  d, m, e = config.data, config.model, config.eval
  if d.source == "algorithmic":
    return _build_algorithmic(config)
  if "tokenizer" in d:
    return _build_tokenized(config)
  train_data, heldout, source, floor_of = load_source(config)
  model = LanguageModel(source.vocab_size, m.width, m.depth, m.max_len, block_config(m))
  window = d.length + 1

  def sample_batch(data, key, step):
    del step  # the key already depends on the step
    if d.source == "markov":
      tokens = lm_data.sample_markov(key, config.batch_size, window, d.order, data["p"],
                                     data["q"])
    elif d.source == "hmm":
      tokens = lm_data.sample_hmm(key, data, config.batch_size, window)
    else:
      tokens = lm_data.sample_windows(key, data["stream"], config.batch_size, d.length)
    return {"tokens": tokens.astype(jnp.int32)}

  def token_losses(params, model_state, tokens, units=None):
    logits = model.apply({"params": params, **model_state}, tokens[:, :-1], units=units)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

  def loss_at(params, model_state, batch, step, units):
    del step
    return jnp.mean(token_losses(params, model_state, batch["tokens"], units)), ({}, model_state)

  held_out = {"tokens": heldout(min(e.num_sequences, 256), window)}
  uniform_units = matformer.uniform_units(m)

  def eval_step(params, model_state, data, step):
    del step
    return {"loss" if f == 1 else f"loss_g{f}": jnp.mean(token_losses(
        params, model_state, data["tokens"], units)) for f, units in uniform_units.items()}

  losses = jax.jit(token_losses, static_argnums=3)

  def heldout_loss(params, model_state, tokens, units=None) -> float:
    """Mean held-out loss of `tokens`, in batches of eval.batch_size."""
    return float(np.mean(np.concatenate([
        np.asarray(losses(params, model_state, tokens[i:i + e.batch_size], units))
        for i in range(0, len(tokens), e.batch_size)])))

  def evaluate(params, model_state, workdir, step):
    rows = []
    for length in e.lengths:
      tokens = heldout(e.num_sequences, length + 1)
      floor = floor_of(tokens) if floor_of else None
      rows.append(_row(length, heldout_loss(params, model_state, tokens), floor, source))
      if len(uniform_units) > 1:   # MatFormer: every granularity, each layer at one factor
        rows[-1]["granularities"] = {
            str(f): rows[-1]["loss_nats"] if units is None
            else heldout_loss(params, model_state, tokens, units)
            for f, units in uniform_units.items()}
    payload = {"step": int(step), "source": d.source, "vocab_size": source.vocab_size,
               "train_length": d.length, "positions": m.positions, "norm": m.norm,
               "attention": m.attention.kind, "chars_per_token": source.chars_per_token,
               "unigram_nats": source.unigram, "lengths": rows,
               "curve": _curve(workdir)}
    out = os.path.join(workdir, "eval")
    reporting.write_json(os.path.join(out, "lm.json"), payload)
    plot(os.path.join(out, "lm.png"), payload)
    print_summary(payload)
    return payload

  return Task(model=model, init_inputs=(jnp.zeros((1, d.length), jnp.int32),),
              train_data=train_data, sample_batch=sample_batch,
              batch_axes={"tokens": ("batch", None)},
              loss_fn=matformer.summed_loss(loss_at, uniform_units), eval_data=held_out,
              eval_step=eval_step, evaluate=evaluate)


def _row(length, loss, floor, source) -> dict:
  bits = loss / math.log(2)
  row = {"length": length, "loss_nats": loss, "loss_bits_per_token": bits,
         "loss_bits_per_char": bits / source.chars_per_token, "floor_nats": floor,
         "unigram_nats": source.unigram}
  if floor is not None:
    row["excess_over_floor"] = loss / floor - 1.0
    gap = source.unigram - floor
    # 1: the floor reached; 0: no better than the symbol frequencies.
    row["gap_closed"] = (source.unigram - loss) / gap if gap > 0 else None
  return row


def _eval_records(workdir) -> list[dict]:
  """What eval_step logged at each evaluation, from metrics.jsonl ([] before any)."""
  path = os.path.join(workdir, "metrics.jsonl")
  return metrics.read_jsonl(path, "eval") if os.path.exists(path) else []


def _curve(workdir) -> dict:
  """The held-out loss eval_step logged at each evaluation."""
  records = _eval_records(workdir)
  return {"step": [r["step"] for r in records], "loss": [r["loss"] for r in records]}


@reporting.plot
def plot(path: str, r: dict):
  fig = reporting.figure(figsize=(6.4, 4.2), dpi=120)
  ax = fig.subplots()
  first = r["lengths"][0]
  ax.plot(r["curve"]["step"], r["curve"]["loss"], "o-", lw=2, label="model, held out")
  if first["floor_nats"] is not None:
    ax.axhline(first["floor_nats"], color="k", ls="--", lw=1.2,
               label=f"floor {first['floor_nats']:.3f}")
  ax.axhline(r["unigram_nats"], color="grey", ls=":", lw=1.2,
             label=f"unigram {r['unigram_nats']:.3f}")
  ax.set(xlabel="step", ylabel=f"nats per {r.get('unit', 'token')}",
         title=f"{r['source']} LM, length {r['train_length']}, {r['positions']}, {r['norm']}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


def print_summary(r: dict):
  cols = ["loss nats", "bits/char", "floor", "unigram", "excess", "gap closed"]
  fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
  rows = {f"L={x['length']}": [fmt(x["loss_nats"], ".4f"), fmt(x["loss_bits_per_char"], ".4f"),
                               fmt(x["floor_nats"], ".4f"), fmt(x["unigram_nats"], ".4f"),
                               fmt(x.get("excess_over_floor"), "+.2%"),
                               fmt(x.get("gap_closed"), ".3f")] for x in r["lengths"]}
  print(f"{r['source']} language model, step {r['step']} (held out):")
  print(reporting.format_table(cols, rows, first="eval length"))
  for x in r["lengths"]:
    if "granularities" in x:
      print(f"MatFormer granularities at L={x['length']}, held-out loss: " + ", ".join(
          f"d_ff/{f} {loss:.4f}" for f, loss in x["granularities"].items()))


# ------------------------------------------------------------------------------- tokenized

def _validate_tokenized(config):
  d, m, e = config.data, config.model, config.eval
  require(d.source == "markov", "data.source",
          f"tokenized training (data.tokenizer) reads the markov source, got {d.source!r}")
  try:
    lm_data.check_markov(d.order, d.p, d.q)
  except ValueError as err:
    require(False, "data.order/p/q", str(err))
  require(d.tokenizer in tokenization.KINDS, "data.tokenizer",
          f"unknown tokenizer {d.tokenizer!r}; choose one of {', '.join(tokenization.KINDS)}")
  require(d.tokenizer == "char" or 2 <= d.dictionary <= 65_536, "data.dictionary",
          f"must be in [2, 65536] entries (the 2 symbols included), got {d.dictionary}")
  require(d.contexts > 0, "data.contexts", f"must be positive, got {d.contexts}")
  check_backbone(m)
  require(not m.mlp.granularities and not m.mlp.experts, "model.mlp",
          "MatFormer granularities and EMoE experts are not scored on tokenized sources")
  require(d.length in e.lengths and all(n >= 1 for n in e.lengths), "eval.lengths",
          f"must be block lengths in characters that include data.length={d.length}, got "
          f"{tuple(e.lengths)}")
  if m.positions in TABLES:   # a block of n characters has at most n + 1 input tokens
    require(m.max_len >= max(e.lengths) + 1, "model.max_len",
            f"must cover a block of {max(e.lengths)} characters and its EOS "
            f"({max(e.lengths) + 1} tokens), got {m.max_len}")
  require(e.num_sequences > 0, "eval.num_sequences",
          f"must be positive, got {e.num_sequences}")
  require(e.batch_size > 0, "eval.batch_size", f"must be positive, got {e.batch_size}")


def documents(ids: list, eos: int, chars: int, width: int) -> dict:
  """Encoded blocks of `chars` characters (a token-id array each) as documents: tokens
  [n, width + 1] holding [EOS] ids [EOS] padded with EOS, mask [n, width] over the ids and the
  closing EOS (the predictions a block's probability is the product of), chars [n]."""
  tokens = np.full((len(ids), width + 1), eos, np.int32)
  mask = np.zeros((len(ids), width), np.float32)
  for i, row in enumerate(ids):
    tokens[i, 1:1 + row.size] = row
    mask[i, :row.size + 1] = 1.0
  return {"tokens": tokens, "mask": mask, "chars": np.full(len(ids), chars, np.float32)}


def _build_tokenized(config) -> Task:
  """The training pool is `data.contexts` blocks of `data.length` characters drawn once under
  eval.seed + 1, the same for every training seed; the tokenizer is fit on them concatenated.
  Held-out blocks of each eval.lengths come from eval.seed. A document's width (its input
  tokens) is the longest encoded block of the pool and the held-out sets plus the opening EOS.
  Loss per character = sum over the masked predictions / characters, so the EOS that ends a
  block (its length term) is paid for: a model cannot gain by making tokens long. The report's
  unigram is this tokenizer's token-unigram loss per character (what a model of these tokens
  gets without context); the character unigram h(pi) is beside it."""
  d, m, e = config.data, config.model, config.eval
  blocks = lambda seed, n, length: lm_data.markov_heldout(seed, n, length, d.order, d.p, d.q)
  train_chars = blocks(e.seed + 1, d.contexts, d.length)
  tokenizer = tokenization.fit(d.tokenizer, train_chars.ravel(),
                               2 if d.tokenizer == "char" else d.dictionary, 2)
  train_ids = tokenizer.encode_blocks(train_chars)
  test_ids = {n: tokenizer.encode_blocks(blocks(e.seed, e.num_sequences, n)) for n in e.lengths}
  # Validation made model.max_len cover a block of characters, the most tokens it can have.
  width = 1 + max(ids.size for group in (train_ids, *test_ids.values()) for ids in group)
  token_unigram = {n: tokenization.unigram_of_ids(tokenizer.size, train_ids, ids,
                                                  n * len(ids))["bits_per_char"] * math.log(2)
                   for n, ids in test_ids.items()}
  eos = tokenizer.size
  train = documents(train_ids, eos, d.length, width)
  tests = {n: documents(ids, eos, n, width) for n, ids in test_ids.items()}
  model = LanguageModel(tokenizer.size + 1, m.width, m.depth, m.max_len, block_config(m))
  char_unigram = lm_data.binary_entropy(lm_data.markov_stationary(d.p, d.q))

  sample_batch = pipeline.pool_sampler(config.batch_size)

  def row_nats(params, model_state, batch):
    """Each document's negative log-likelihood in nats, its EOS included."""
    logits = model.apply({"params": params, **model_state}, batch["tokens"][:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:])
    return jnp.sum(losses * batch["mask"], -1)

  def per_char(params, model_state, batch):
    return jnp.sum(row_nats(params, model_state, batch)) / jnp.sum(batch["chars"])

  def loss_fn(params, model_state, batch, step):
    del step
    return per_char(params, model_state, batch), ({}, model_state)

  def eval_step(params, model_state, data, step):
    del step
    return {"loss" if n == str(d.length) else f"loss_L{n}": per_char(params, model_state, b)
            for n, b in data.items()}

  score = jax.jit(row_nats)

  def evaluate(params, model_state, workdir, step):
    rows = []
    for n, test in tests.items():
      nats = np.concatenate([np.asarray(score(params, model_state, batch))[:valid]
                             for batch, valid in pipeline.batches(test, e.batch_size)])
      floor = float(lm_data.markov_position_loss(d.order, d.p, d.q, n).mean())
      source = lm_data.Source(tokenizer.size + 1, floor, token_unigram[n], 1.0)
      rows.append(_row(n, float(nats.sum() / test["chars"].sum()), floor, source))
      del rows[-1]["loss_bits_per_token"]   # every loss here is per character
      # Tokens per character, the EOS not counted (a block's mask covers its ids and one EOS).
      rows[-1]["tokens_per_char"] = float((test["mask"].sum() - len(test["chars"]))
                                          / test["chars"].sum())
    payload = {"step": int(step), "source": d.source, "unit": "character",
               "tokenizer": d.tokenizer, "dictionary": tokenizer.size,
               "vocab_size": tokenizer.size + 1, "train_length": d.length,
               "positions": m.positions, "norm": m.norm, "attention": m.attention.kind,
               "unigram_nats": token_unigram[d.length], "char_unigram_nats": char_unigram,
               "entropy_rate_nats": lm_data.markov_entropy_rate(d.p, d.q), "lengths": rows,
               "curve": _curve(workdir)}
    out = os.path.join(workdir, "eval")
    reporting.write_json(os.path.join(out, "lm.json"), payload)
    plot(os.path.join(out, "lm.png"), payload)
    print(f"{d.tokenizer} tokens, dictionary {tokenizer.size}, losses per character:")
    print_summary(payload)
    return payload

  return Task(model=model, init_inputs=(jnp.zeros((1, width), jnp.int32),),
              train_data=train, sample_batch=sample_batch,
              batch_axes={"tokens": ("batch", None), "mask": ("batch", None),
                          "chars": ("batch",)},
              loss_fn=loss_fn,
              eval_data={str(n): {k: v[:256] for k, v in t.items()} for n, t in tests.items()},
              eval_step=eval_step, evaluate=evaluate)


def _validate_algorithmic(config):
  d, m, e = config.data, config.model, config.eval
  missing = [k for k in ("task", "train_max", "contexts") if k not in d]
  require(not missing, "data", f"source 'algorithmic' needs data.{', data.'.join(missing)} "
          "(see configs/lm_algorithmic.py)")
  require(d.task in algorithmic.TASKS, "data.task",
          f"unknown algorithmic task {d.task!r}; choose one of {', '.join(algorithmic.TASKS)}")
  task = algorithmic.get(d.task)
  require(1 <= d.train_max <= task.max_n, "data.train_max",
          f"must be in [1, {task.max_n}] for {d.task}, got {d.train_max}")
  longest = algorithmic.sequence_length(task, d.train_max)
  require(d.length + 1 >= longest, "data.length",
          f"a context of {d.length} + 1 tokens cannot hold a {d.task} example of size "
          f"{d.train_max} ({longest} tokens)")
  require(d.contexts > 0, "data.contexts", f"must be positive, got {d.contexts}")
  check_backbone(m)
  require(not m.mlp.granularities and not m.mlp.experts, "model.mlp",
          "MatFormer granularities and EMoE experts are not scored on algorithmic tasks")
  require(m.max_len >= d.length, "model.max_len",
          f"must be at least data.length={d.length}, got {m.max_len}")
  require(len(e.lengths) > 0 and all(1 <= n <= task.max_n for n in e.lengths), "eval.lengths",
          f"must be instance sizes in [1, {task.max_n}] for {d.task}, got {tuple(e.lengths)}")
  if m.positions in TABLES:
    tokens = algorithmic.sequence_length(task, max(e.lengths)) - 1
    require(tokens <= m.max_len, "eval.lengths",
            f"a {d.task} example of size {max(e.lengths)} has {tokens} input tokens, more than "
            f"model.max_len={m.max_len} positions {m.positions!r} cover")
  if d.task == "copy_unique":   # its symbols come from max(32, n)
    require(max(e.lengths) <= max(32, d.train_max), "eval.lengths",
            f"copy_unique sizes above {max(32, d.train_max)} hold symbols training never shows")
  require(e.num_sequences > 0, "eval.num_sequences",
          f"must be positive, got {e.num_sequences}")
  require(e.batch_size > 0, "eval.batch_size", f"must be positive, got {e.batch_size}")


def exact_match(logits, tokens, mask):
  """(exact [batch]: every answer token and EOS is the argmax, token accuracy [batch]) of
  teacher-forced logits [batch, T, vocab] against tokens [batch, T + 1] where mask [batch, T].

  Exact match under teacher forcing is greedy decoding's exact match: when every answer
  position's argmax is its target, greedy decoding from the prompt reproduces the answer and
  stops; at the first position where it is not, the decoded answer departs from the target."""
  right = (jnp.argmax(logits, -1) == tokens[:, 1:]) | (mask == 0)
  answer = jnp.maximum(jnp.sum(mask, -1), 1.0)
  return jnp.all(right, -1), (jnp.sum(right * mask, -1) / answer)


def _build_algorithmic(config) -> Task:
  """Training contexts are a pool of `data.contexts` packed rows drawn once from numpy's
  generator seeded by (config.seed, eval.seed + 1), passed to the step as data; the held-out
  examples come from eval.seed, one per row from position 0."""
  d, m, e = config.data, config.model, config.eval
  task = algorithmic.get(d.task)
  model = LanguageModel(algorithmic.VOCAB, m.width, m.depth, m.max_len, block_config(m))
  pool_rng = np.random.default_rng([config.seed, e.seed + 1])
  tokens, mask = algorithmic.packed_pool(task, pool_rng, d.contexts, d.length, d.train_max)

  sample_batch = pipeline.pool_sampler(config.batch_size)

  def scores(params, model_state, batch):
    """(mean answer loss, exact [batch], token accuracy [batch]); in a packed context "exact"
    needs every example of the row right."""
    logits = model.apply({"params": params, **model_state}, batch["tokens"][:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:])
    loss = jnp.sum(losses * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)
    return (loss, *exact_match(logits, batch["tokens"], batch["mask"]))

  def loss_fn(params, model_state, batch, step):
    del step
    loss, _, accuracy = scores(params, model_state, batch)
    return loss, ({"answer_accuracy": jnp.mean(accuracy)}, model_state)

  def test_sets(count):
    rng = np.random.default_rng(e.seed)
    return {str(n): dict(zip(("tokens", "mask"), algorithmic.test_set(task, rng, count, n)))
            for n in e.lengths}

  def eval_step(params, model_state, data, step):
    del step
    out = {}
    for n, batch in data.items():
      loss, exact, _ = scores(params, model_state, batch)
      out.update({f"loss_n{n}": loss, f"exact_n{n}": jnp.mean(exact)})
    return out

  score = jax.jit(scores)

  def evaluate(params, model_state, workdir, step):
    rows = []
    for n, examples in test_sets(e.num_sequences).items():
      exact, accuracy = [], []
      for batch, valid in pipeline.batches(examples, e.batch_size):
        _, batch_exact, batch_accuracy = score(params, model_state, batch)
        exact.append(np.asarray(batch_exact)[:valid])
        accuracy.append(np.asarray(batch_accuracy)[:valid])
      exact, accuracy = np.concatenate(exact), np.concatenate(accuracy)
      rows.append({"n": int(n), "exact_match": float(exact.mean()),
                   "token_accuracy": float(accuracy.mean()), "examples": int(exact.size)})
    payload = {"step": int(step), "task": d.task, "train_max": d.train_max,
               "positions": m.positions, "lengths": rows, "curve": _exact_curve(workdir)}
    out = os.path.join(workdir, "eval")
    reporting.write_json(os.path.join(out, "algorithmic.json"), payload)
    plot_exact(os.path.join(out, "algorithmic.png"), payload)
    print(f"{d.task}, trained on sizes 1..{d.train_max}, {m.positions} positions, step {step}:")
    print(reporting.format_table(["exact match", "token accuracy"], {
        f"n={r['n']}": [f"{r['exact_match']:.3f}", f"{r['token_accuracy']:.3f}"] for r in rows},
        first="size"))
    return payload

  return Task(model=model, init_inputs=(jnp.zeros((1, d.length), jnp.int32),),
              train_data={"tokens": tokens, "mask": mask}, sample_batch=sample_batch,
              batch_axes={"tokens": ("batch", None), "mask": ("batch", None)},
              loss_fn=loss_fn, eval_data=test_sets(min(e.num_sequences, 256)),
              eval_step=eval_step, evaluate=evaluate)


def _exact_curve(workdir) -> dict:
  """Exact match at each size eval_step logged, against the step."""
  records = _eval_records(workdir)
  return {"step": [r["step"] for r in records],
          "exact": {k[len("exact_n"):]: [r[k] for r in records]
                    for k in (records[0] if records else {}) if k.startswith("exact_n")}}


@reporting.plot
def plot_exact(path: str, r: dict):
  fig = reporting.figure(figsize=(6.4, 4.2), dpi=120)
  ax = fig.subplots()
  for n, values in r["curve"]["exact"].items():
    ax.plot(r["curve"]["step"], values, "o-", lw=1.5, label=f"n = {n}")
  ax.set(xlabel="step", ylabel="exact match (held out)", ylim=(-0.03, 1.03),
         title=f"{r['task']}, trained on n <= {r['train_max']}, {r['positions']} positions")
  ax.grid(alpha=0.3)
  if r["curve"]["step"]:   # a run without evaluations during training has no curve
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
