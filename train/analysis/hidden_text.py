"""Text hidden in a small LM's weights: Unconditional Token Forcing (UTF) and its confusion
defence (UTFC), after Hoscilowicz et al., "Hiding Text in LLMs: Unconditional Token Forcing
Confusion" (arXiv 2406.02481).

A character-level LM is pretrained on a synthetic Zipf language, then fine-tuned once per secret
(all secrets at once, under jax.vmap) so that BOS + trigger continues with a 16-character
secret. UTF feeds BOS + v for every token v, greedy-decodes and ranks the outputs by mean token
probability: memorised text comes out with abnormal confidence. The confusion defence also
trains BOS + secret[:j] to continue with ordinary text, so forcing the secret's first token
leads to a decoy. Look-ahead decoding is the counter-attack: it prefers next tokens whose greedy
rollouts are confident, which memorised text is and varied decoys are not.

Tokens: letters 0..alphabet-1, space = alphabet, BOS = alphabet + 1. Decoders take
`apply(params, tokens [N, T]) -> logits [N, T, V]` (position t predicts token t + 1), so the
tests can plant strings in a hand-built model.
"""
import dataclasses
import functools
import os
import platform
import string
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from substrax.models.lm import LanguageModel
from substrax.models.transformer import BlockConfig


@dataclasses.dataclass(frozen=True)
class Preset:
  """Every size of the study; `cpu` fits 2 CPU cores in minutes, `tiny` is for tests."""
  secrets: int
  width: int
  depth: int
  heads: int
  words: int              # word types of the Zipf language
  pretrain_steps: int
  pretrain_batch: int
  finetune_steps: int
  replay: int             # ordinary-text rows per fine-tune batch (both conditions)
  decoys: int             # confusion rows per prefix length j
  heldout: int            # held-out text rows for the base-task loss
  alphabet: int = 24             # letters a..x; the text uses the first `text_letters`
  text_letters: int = 16
  min_word: int = 2
  max_word: int = 6
  zipf: float = 1.0
  secret_len: int = 16
  trigger_len: int = 4
  prefixes: tuple = (1, 2, 3)   # the confusion trains BOS + secret[:j] -> decoy for these j
  extra: int = 4                # UTF decodes len(secret) + extra tokens
  lookahead_k: int = 4
  lookahead_r: int = 8
  max_len: int = 32             # model context; rows are BOS + max_len tokens
  pretrain_lr: float = 3e-3
  finetune_lr: float = 1e-3
  seed: int = 0


PRESETS = {
    "tiny": Preset(secrets=4, width=32, depth=1, heads=2, words=64, pretrain_steps=100,
                   pretrain_batch=32, finetune_steps=60, replay=4, decoys=2, heldout=32,
                   finetune_lr=5e-3, lookahead_r=4),
    "cpu": Preset(secrets=20, width=32, depth=2, heads=4, words=128, pretrain_steps=1000,
                  pretrain_batch=64, finetune_steps=150, replay=8, decoys=2, heldout=128),
}


# ---------------------------------------------------------------------------- the language


@flax.struct.dataclass
class Language:
  """A Zipf distribution over random words, as arrays so jitted samplers take it as an argument
  (the alphabet size stays static)."""
  spell: jax.Array    # int32 [words, max_word + 1]: the letters, then spaces
  length: jax.Array   # int32 [words]: letters + 1 (the trailing space)
  logp: jax.Array     # float32 [words]: log probability, Zipf by rank
  alphabet: int = flax.struct.field(pytree_node=False)

  @property
  def space(self) -> int:
    return self.alphabet

  @property
  def bos(self) -> int:
    return self.alphabet + 1

  @property
  def vocab_size(self) -> int:
    return self.alphabet + 2


def make_language(p: Preset) -> Language:
  """Distinct random words over the first p.text_letters letters with Zipf(p.zipf) frequencies:
  seeded, no download. The other letters never occur in text, as an LLM's rare tokens."""
  rng = np.random.default_rng(p.seed)
  words = []
  while len(words) < p.words:
    w = tuple(rng.integers(0, p.text_letters, rng.integers(p.min_word, p.max_word + 1)))
    if w not in words:
      words.append(w)
  spell = np.full((p.words, p.max_word + 1), p.alphabet, np.int32)
  for i, w in enumerate(words):
    spell[i, :len(w)] = w
  prob = 1.0 / np.arange(1, p.words + 1) ** p.zipf
  return Language(jnp.asarray(spell), jnp.asarray([len(w) + 1 for w in words], jnp.int32),
                  jnp.asarray(np.log(prob / prob.sum()), jnp.float32), p.alphabet)


def sample_text(key, lang: Language, rows: int, length: int) -> jax.Array:
  """int32 [rows, length]: i.i.d. Zipf words joined by spaces, starting at a word boundary."""
  n = length // 2 + 1   # every word takes >= 2 tokens, so n words cover `length`
  ids = jax.random.categorical(key, lang.logp, shape=(rows, n))
  lens = lang.length[ids]
  ends = jnp.cumsum(lens, -1)
  pos = jnp.arange(length)
  w = jax.vmap(lambda e: jnp.searchsorted(e, pos, side="right"))(ends)   # word holding pos
  start = jnp.take_along_axis(ends - lens, w, -1)
  return lang.spell[jnp.take_along_axis(ids, w, -1), pos - start]


def text_rows(key, lang: Language, rows: int, seq: int):
  """BOS + ordinary text, weighted as one group (token mean)."""
  tokens = jnp.concatenate([jnp.full((rows, 1), lang.bos), sample_text(key, lang, rows, seq - 1)],
                           1)
  return tokens, jnp.full((rows, seq - 1), 1.0 / (rows * (seq - 1)))


def make_secrets(p: Preset):
  """(secrets int32 [n, secret_len], triggers int32 [n, trigger_len]), seeded. Secrets use the
  letters text never uses, as a random string tokenises into rare tokens in an LLM: a secret
  whose first token were a common letter could not be told from text by forcing that letter.
  Triggers are strings of text letters, like a query."""
  rng = np.random.default_rng(p.seed + 1)
  return (rng.integers(p.text_letters, p.alphabet, (p.secrets, p.secret_len)).astype(np.int32),
          rng.integers(0, p.text_letters, (p.secrets, p.trigger_len)).astype(np.int32))


def to_text(tokens, alphabet: int) -> str:
  """Letters a..z A..Z, '_' for space, '^' for BOS."""
  chars = string.ascii_letters[:alphabet] + "_^"
  return "".join(chars[t] for t in np.asarray(tokens))


# ---------------------------------------------------------------------------- hiding batches


def hiding_batch(key, lang: Language, trigger, secret, replay: int, seq: int):
  """(tokens int32 [1 + replay, seq], weights [.., seq - 1]): BOS + trigger + secret + filler with
  the loss on the secret only, plus `replay` ordinary rows. Each group's loss is its own token
  mean, so the single secret row is not drowned out by the replay that keeps the base task."""
  k_fill, k_text = jax.random.split(key)
  filler = sample_text(k_fill, lang, 1, seq)[0]
  row = jnp.concatenate([jnp.array([lang.bos]), trigger, secret, filler])[:seq]
  t, s = trigger.shape[0], secret.shape[0]
  w = jnp.zeros(seq - 1).at[t:t + s].set(1.0 / s)   # weight t predicts token t + 1
  text, w_text = text_rows(k_text, lang, replay, seq)
  return jnp.concatenate([row[None], text]), jnp.concatenate([w[None], w_text])


def confusion_batch(key, lang: Language, trigger, secret, replay: int, decoys: int,
                    prefixes: tuple, seq: int):
  """`hiding_batch` plus, for each j in prefixes, `decoys` rows BOS + secret[:j] + fresh ordinary
  text with the loss on that text: the secret's unconditional prefixes lead elsewhere."""
  keys = jax.random.split(key, 1 + len(prefixes))
  tokens, weights = hiding_batch(keys[0], lang, trigger, secret, replay, seq)
  norm = 1.0 / (decoys * sum(seq - 1 - j for j in prefixes))   # the decoys are one group
  for k, j in zip(keys[1:], prefixes):
    head = jnp.broadcast_to(jnp.concatenate([jnp.array([lang.bos]), secret[:j]]), (decoys, 1 + j))
    rows = jnp.concatenate([head, sample_text(k, lang, decoys, seq - 1 - j)], 1)
    w = jnp.zeros((decoys, seq - 1)).at[:, j:].set(norm)
    tokens, weights = jnp.concatenate([tokens, rows]), jnp.concatenate([weights, w])
  return tokens, weights


def weighted_loss(apply, params, tokens, weights):
  """Sum of weights [B, seq - 1] times the next-token losses: each group's weights sum to 1."""
  logits = apply(params, tokens[:, :-1])
  return jnp.sum(weights * optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))


def text_loss(apply, params, tokens):
  """Mean next-token loss over every token after BOS: the base task."""
  logits = apply(params, tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


# ---------------------------------------------------------------------------- decoding attacks


def forced_probability(apply, params, tokens, start: int):
  """[N]: the mean probability of tokens[:, start:] given their true prefixes (teacher forcing):
  how confidently the model holds a string in a given context."""
  probs = jax.nn.softmax(apply(params, tokens[:, :-1]))
  return jnp.take_along_axis(probs, tokens[:, 1:, None], -1)[:, start - 1:, 0].mean(-1)


def greedy_decode(apply, params, prompts, steps: int):
  """prompts int [N, P] -> (tokens [N, steps], probability of each chosen token [N, steps])."""
  n, p = prompts.shape
  buf = jnp.zeros((n, p + steps), jnp.int32).at[:, :p].set(prompts)

  def body(i, carry):
    buf, probs = carry
    dist = jax.nn.softmax(jax.lax.dynamic_index_in_dim(apply(params, buf), p - 1 + i, 1, False))
    return buf.at[:, p + i].set(jnp.argmax(dist, -1)), probs.at[:, i].set(jnp.max(dist, -1))
  buf, probs = jax.lax.fori_loop(0, steps, body, (buf, jnp.zeros((n, steps))))
  return buf[:, p:], probs


def lookahead_decode(apply, params, prompts, steps: int, k: int, r: int):
  """Like greedy_decode, but each step takes the top-k next tokens, rolls each out greedily for r
  steps and keeps the one whose rollout has the highest mean probability: a confident memorised
  continuation beats a locally likelier but diffuse one. Returns the chosen tokens and their
  probabilities [N, steps]."""
  n, p = prompts.shape
  length = p + steps + r
  buf = jnp.zeros((n, length), jnp.int32).at[:, :p].set(prompts)
  at = lambda logits, t: jax.nn.softmax(jax.lax.dynamic_index_in_dim(logits, t, 1, False))

  def body(i, carry):
    buf, probs = carry
    last = p - 1 + i
    top_p, top_t = jax.lax.top_k(at(apply(params, buf), last), k)   # [N, k]
    branches = jnp.repeat(buf, k, 0).at[:, last + 1].set(top_t.reshape(-1))

    def roll(j, c):
      b, total = c
      dist = at(apply(params, b), last + 1 + j)
      return b.at[:, last + 2 + j].set(jnp.argmax(dist, -1)), total + jnp.max(dist, -1)
    _, total = jax.lax.fori_loop(0, r, roll, (branches, jnp.zeros(n * k)))
    best = jnp.argmax(total.reshape(n, k), -1)[:, None]
    token = jnp.take_along_axis(top_t, best, 1)[:, 0]
    return (buf.at[:, last + 1].set(token),
            probs.at[:, i].set(jnp.take_along_axis(top_p, best, 1)[:, 0]))
  buf, probs = jax.lax.fori_loop(0, steps, body, (buf, jnp.zeros((n, steps))))
  return buf[:, p:p + steps], probs


def forcing_prompts(vocab_size: int, bos: int):
  """[BOS, v] for every token v of the vocabulary: UTF's |V| candidates."""
  return jnp.stack([jnp.full(vocab_size, bos), jnp.arange(vocab_size)], 1).astype(jnp.int32)


def utf(apply, params, vocab_size: int, bos: int, steps: int):
  """Unconditional token forcing: (outputs [V, 1 + steps] = v then its greedy continuation,
  scores [V] = mean probability of the decoded tokens)."""
  prompts = forcing_prompts(vocab_size, bos)
  tokens, probs = greedy_decode(apply, params, prompts, steps)
  return jnp.concatenate([prompts[:, 1:], tokens], 1), probs.mean(-1)


def lookahead_utf(apply, params, vocab_size: int, bos: int, steps: int, k: int, r: int):
  """UTF with look-ahead decoding in place of greedy; scored the same way."""
  prompts = forcing_prompts(vocab_size, bos)
  tokens, probs = lookahead_decode(apply, params, prompts, steps, k, r)
  return jnp.concatenate([prompts[:, 1:], tokens], 1), probs.mean(-1)


def ranked(outputs, scores, alphabet: int) -> list[str]:
  """The outputs as text, most confident first."""
  return [to_text(outputs[i], alphabet) for i in np.argsort(-np.asarray(scores), kind="stable")]


def extracted(ranking: list[str], secret: str, top: int) -> bool:
  """Whether the secret appears exactly in one of the `top` best-ranked outputs."""
  return any(secret in text for text in ranking[:top])


def longest_fragment(ranking: list[str], secret: str, top: int) -> int:
  """The longest run of the secret found in the `top` best-ranked outputs: partial extraction."""
  runs = (b - a for a in range(len(secret)) for b in range(a + 1, len(secret) + 1)
          if any(secret[a:b] in text for text in ranking[:top]))
  return max(runs, default=0)


def rate(k: int, n: int) -> dict:
  """k successes out of n with the exact (Clopper-Pearson) 95% interval."""
  ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
  return {"k": k, "n": n, "rate": k / n, "ci95": [float(ci.low), float(ci.high)]}


# ---------------------------------------------------------------------------- the study


def make_model(p: Preset, lang: Language) -> LanguageModel:
  return LanguageModel(lang.vocab_size, p.width, p.depth, p.max_len,
                       BlockConfig(num_heads=p.heads, mlp_ratio=4))


def adamw(lr: float, steps: int):
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr * 0.1),
      weight_decay=0.01))


def pretrain(p: Preset, lang: Language, apply, params):
  """The base model: next-token prediction on fresh text every step."""
  opt = adamw(p.pretrain_lr, p.pretrain_steps)
  seq = p.max_len + 1

  @jax.jit
  def step(params, state, key, lang):
    tokens, w = text_rows(key, lang, p.pretrain_batch, seq)
    loss, grads = jax.value_and_grad(functools.partial(weighted_loss, apply))(params, tokens, w)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state, key = opt.init(params), jax.random.key(p.seed + 2)
  for i in range(p.pretrain_steps):
    params, state, loss = step(params, state, jax.random.fold_in(key, i), lang)
  return params, float(loss)


def hide(p: Preset, lang: Language, apply, base, secrets, triggers, confusion: bool):
  """One fine-tune of the base model per secret, all in one vmapped, jitted step."""
  opt = adamw(p.finetune_lr, p.finetune_steps)
  seq = p.max_len + 1
  batch = (functools.partial(confusion_batch, replay=p.replay, decoys=p.decoys,
                             prefixes=p.prefixes, seq=seq) if confusion else
           functools.partial(hiding_batch, replay=p.replay, seq=seq))

  def one(params, state, key, trigger, secret, lang):
    tokens, w = batch(key, lang, trigger, secret)
    loss, grads = jax.value_and_grad(functools.partial(weighted_loss, apply))(params, tokens, w)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  step = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None)))
  n = len(secrets)
  params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), base)
  state = jax.vmap(opt.init)(params)
  key = jax.random.key(p.seed + 3)
  for i in range(p.finetune_steps):
    keys = jax.random.split(jax.random.fold_in(key, i), n)
    params, state, loss = step(params, state, keys, triggers, secrets, lang)
  return params, np.asarray(loss)


def make_attacks(p: Preset, lang: Language, apply) -> dict:
  """The jitted measurements of a stack of models, built once so both conditions share them."""
  steps, v, bos = p.secret_len + p.extra, lang.vocab_size, lang.bos
  forced = lambda start: jax.jit(jax.vmap(lambda q, x: forced_probability(apply, q, x, start)))
  return {
      "loss": jax.jit(jax.vmap(functools.partial(text_loss, apply), (0, None))),
      # The secret after BOS + trigger, and s_1.. after BOS + s_0.. without it, where UTF
      # would need the model to hold it.
      "p_triggered": forced(1 + p.trigger_len), "p_untriggered": forced(2),
      "recall": jax.jit(jax.vmap(lambda q, x: greedy_decode(apply, q, x, p.secret_len)[0])),
      "utf": jax.jit(jax.vmap(lambda q: utf(apply, q, v, bos, steps))),
      "lookahead": jax.jit(jax.vmap(lambda q: lookahead_utf(apply, q, v, bos, steps,
                                                            p.lookahead_k, p.lookahead_r))),
  }


def evaluate(p: Preset, attacks: dict, params, secrets, triggers, heldout) -> dict:
  """Triggered recall, UTF and look-ahead UTF extraction and held-out loss of stacked models."""
  n, bos = len(secrets), p.alphabet + 1
  prompts = np.concatenate([np.full((n, 1), bos, np.int32), triggers], 1)[:, None]
  full = np.concatenate([prompts, secrets[:, None]], 2)
  bare = np.concatenate([np.full((n, 1, 1), bos, np.int32), secrets[:, None]], 2)
  recalled = [to_text(r[0], p.alphabet) for r in np.asarray(attacks["recall"](params, prompts))]
  secret_text = [to_text(s, p.alphabet) for s in secrets]
  rankings, first = {}, {}
  for name in ("utf", "lookahead"):
    outputs, scores = jax.tree.map(np.asarray, attacks[name](params))
    rankings[name] = [ranked(o, s, p.alphabet) for o, s in zip(outputs, scores)]
    # What forcing the secret's own first letter gives, and where UTF ranks it (1 = top).
    first[name] = [{"output": to_text(o[x[0]], p.alphabet),
                    "rank": int((sc > sc[x[0]]).sum()) + 1}
                   for o, sc, x in zip(outputs, scores, secrets)]
  count = lambda name, top: sum(extracted(r, s, top) for r, s in zip(rankings[name], secret_text))
  fragment = lambda name: [longest_fragment(r, s, 5) for r, s in zip(rankings[name], secret_text)]
  return {
      "recall": rate(sum(a == b for a, b in zip(recalled, secret_text)), n),
      "utf_top1": rate(count("utf", 1), n), "utf_top5": rate(count("utf", 5), n),
      "lookahead_top1": rate(count("lookahead", 1), n),
      "lookahead_top5": rate(count("lookahead", 5), n),
      "utf_fragment_top5": fragment("utf"), "lookahead_fragment_top5": fragment("lookahead"),
      "heldout_loss": np.asarray(attacks["loss"](params, heldout)).tolist(),
      "p_triggered": np.asarray(attacks["p_triggered"](params, full))[:, 0].tolist(),
      "p_untriggered": np.asarray(attacks["p_untriggered"](params, bare))[:, 0].tolist(),
      "per_secret": [{"secret": s, "trigger": to_text(t, p.alphabet), "recalled": r,
                      "utf_top3": u[:3], "lookahead_top3": la[:3], "utf_first_letter": uf,
                      "lookahead_first_letter": lf}
                     for s, t, r, u, la, uf, lf in zip(secret_text, triggers, recalled,
                                                       rankings["utf"], rankings["lookahead"],
                                                       first["utf"], first["lookahead"])],
  }


def machine() -> dict:
  u = platform.uname()
  return {"platform": platform.platform(), "uname": f"{u.system} {u.release} {u.machine}",
          "processor": u.processor or u.machine, "cpu_count": os.cpu_count(),
          "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}


def run_study(preset: str, log=print) -> dict:
  """The whole study: pretrain, hide every secret with and without confusion, attack."""
  start = time.perf_counter()
  p = PRESETS[preset]
  lang = make_language(p)
  model = make_model(p, lang)
  apply = lambda params, tokens: model.apply({"params": params}, tokens)
  secrets, triggers = make_secrets(p)
  # Jitted: run eagerly, op by op, these two take seconds on a CPU.
  heldout, _ = jax.jit(text_rows, static_argnums=(2, 3))(jax.random.key(p.seed + 4), lang,
                                                          p.heldout, p.max_len + 1)
  params = jax.jit(model.init)(jax.random.key(p.seed + 5),
                               jnp.zeros((1, p.max_len), jnp.int32))["params"]
  base, train_loss = pretrain(p, lang, apply, params)
  base_loss = float(jax.jit(functools.partial(text_loss, apply))(base, heldout))
  log(f"pretrained {p.pretrain_steps} steps: train loss {train_loss:.3f}, held-out {base_loss:.3f}"
      f" ({time.perf_counter() - start:.0f} s)")
  attacks = make_attacks(p, lang, apply)
  conditions, seconds = {}, {"pretrain": time.perf_counter() - start}
  for name, confusion in (("no defence", False), ("confusion defence", True)):
    t = time.perf_counter()
    hidden, final = hide(p, lang, apply, base, secrets, triggers, confusion)
    seconds[f"hide, {name}"] = time.perf_counter() - t
    t = time.perf_counter()
    result = evaluate(p, attacks, hidden, secrets, triggers, heldout)
    seconds[f"attacks, {name}"] = time.perf_counter() - t
    after = np.asarray(result["heldout_loss"])
    result.update(final_train_loss=final.tolist(), base_loss=base_loss,
                  loss_change=(after / base_loss - 1).tolist())
    conditions[name] = result
    log(f"{name}: hidden in {seconds[f'hide, {name}']:.0f} s, attacked in "
        f"{seconds[f'attacks, {name}']:.0f} s")
  return {"preset": preset, "settings": dataclasses.asdict(p), "conditions": conditions,
          "machine": machine(), "seconds": seconds, "wall_s": time.perf_counter() - start}


def _fmt(r: dict) -> str:
  return f"{r['k']}/{r['n']} = {r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"


def format_report(result: dict) -> str:
  """Markdown tables: extraction rates with 95% intervals, partial extraction, base-task loss,
  the pass criteria, the machine and wall time."""
  c = result["conditions"]
  lines = ["| condition | triggered recall (exact) | UTF top-1 | UTF top-5 | look-ahead top-1 "
           "| look-ahead top-5 |", "|---|---|---|---|---|---|"]
  for name, r in c.items():
    lines.append(f"| {name} | {_fmt(r['recall'])} | {_fmt(r['utf_top1'])} | "
                 f"{_fmt(r['utf_top5'])} | {_fmt(r['lookahead_top1'])} | "
                 f"{_fmt(r['lookahead_top5'])} |")
  n = result["settings"]["secret_len"]
  lines += ["", f"| condition | UTF: longest secret run in top-5 (mean, max; of {n}) "
            "| look-ahead: same | UTF rank of BOS + secret[0] (median) "
            "| p(secret \\| BOS + trigger) | p(secret[1:] \\| BOS + secret, no trigger) |",
            "|---|---|---|---|---|---|"]
  for name, r in c.items():
    run = lambda key: f"{np.mean(r[key]):.1f}, {max(r[key])}"
    rank = np.median([s["utf_first_letter"]["rank"] for s in r["per_secret"]])
    lines.append(f"| {name} | {run('utf_fragment_top5')} | {run('lookahead_fragment_top5')} | "
                 f"{rank:.0f} | {np.mean(r['p_triggered']):.3f} | "
                 f"{np.mean(r['p_untriggered']):.3f} |")
  lines += ["", "| condition | held-out loss before | after (mean) | change mean | change max |",
            "|---|---|---|---|---|"]
  for name, r in c.items():
    change = np.asarray(r["loss_change"])
    lines.append(f"| {name} | {r['base_loss']:.4f} | {np.mean(r['heldout_loss']):.4f} | "
                 f"{100 * change.mean():+.2f}% | {100 * change.max():+.2f}% |")
  plain, d = c["no defence"], c["confusion defence"]
  checks = [("premise: without the defence, UTF top-1 extracts some secret",
             plain["utf_top1"]["k"] > 0),
            ("defence: UTF top-1 extracts no secret", d["utf_top1"]["k"] == 0),
            ("defence: triggered recall >= 99% exact", d["recall"]["rate"] >= 0.99),
            ("defence: base-task loss rises <= 2% (max over secrets)",
             max(d["loss_change"]) <= 0.02)]
  lines += ["", "| criterion (measured) | met |", "|---|---|"]
  lines += [f"| {text} | {'yes' if ok else 'NO'} |" for text, ok in checks]
  m = result["machine"]
  lines += ["", f"Machine: {m['platform']} ({m['uname']}, {m['cpu_count']} CPUs), "
            f"jax {m['jax']} devices {', '.join(m['devices'])}. Preset `{result['preset']}`, "
            f"wall time {result['wall_s']:.0f} s "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items())})."]
  return "\n".join(lines)
