"""Token sources of autoregressive language modelling: two synthetic processes with known loss
floors, and byte-level text (local files or TFDS).

  Markov: a k-th-order switching chain on {0, 1}; x_n depends only on x_{n-k}.
  HMM:    a random stationary hidden Markov model, S states, V symbols.
  Text:   UTF-8 bytes (vocab 256), documents concatenated, each followed by SEPARATOR.

The synthetic samplers run on device inside jit and take their parameters as array arguments,
so a trainer passes them in as data and one compiled step serves every setting. The loss floors
(nats per token) are closed forms for the Markov chain and the exact forward algorithm in
float64 for the HMM.
"""
import dataclasses
import itertools
import pathlib
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from substrax.data import DataError, one_line
from substrax.data import tfds as tfds_lra

BYTE_VOCAB = 256
# Byte 0 ends every document: it never occurs in ordinary text, so a packed window shows the
# model where one document stops and the next starts.
SEPARATOR = 0
HELDOUT_EVERY = 10   # document i is held out when i % 10 == 9
TFDS_NAMES = ("tiny_shakespeare", "lm1b")
TFDS_HELDOUT = {"tiny_shakespeare": "validation", "lm1b": "test"}


@dataclasses.dataclass(frozen=True)
class Source:
  """What a trainer reports a token source's loss against (all losses in nats per token)."""
  vocab_size: int
  floor: float | None       # the best achievable loss; None where unknown (text)
  unigram: float            # the loss of predicting every token from the marginal alone
  chars_per_token: float    # UTF-8 characters per token: bits/char = loss / ln 2 / this


def _entropy(probs, axis=-1) -> np.ndarray:
  """Shannon entropy in nats, with 0 log 0 = 0."""
  probs = np.asarray(probs, np.float64)
  logs = np.log(np.where(probs > 0, probs, 1.0))
  return -(probs * logs).sum(axis)


def binary_entropy(p) -> float:
  return float(_entropy([p, 1 - p]))


# ---------------------------------------------------------------------------------- Markov

def check_markov(order: int, p: float, q: float):
  """ValueError unless order >= 1, p and q are probabilities and the chain can move (p + q > 0,
  else its stationary law is undefined)."""
  if order < 1:
    raise ValueError(f"order must be at least 1, got {order}")
  if not (0 <= p <= 1 and 0 <= q <= 1 and p + q > 0):
    raise ValueError(f"p and q must lie in [0, 1] with p + q > 0, got p={p}, q={q}")


def markov_stationary(p: float, q: float) -> float:
  """pi1 = P(x = 1) = p / (p + q): the flow 0 -> 1 (pi0 p) balances 1 -> 0 (pi1 q)."""
  return p / (p + q)


def markov_entropy_rate(p: float, q: float) -> float:
  """pi0 H(p) + pi1 H(q): the entropy of x_n given x_{n-k}, whatever the order k."""
  pi1 = markov_stationary(p, q)
  return (1 - pi1) * binary_entropy(p) + pi1 * binary_entropy(q)


def markov_position_loss(order: int, p: float, q: float, length: int) -> np.ndarray:
  """The Bayes loss at each position [length]: H(pi1) before position `order` (those tokens
  are i.i.d. from the stationary law), the entropy rate from there on."""
  check_markov(order, p, q)
  pos = np.arange(length)
  return np.where(pos < order, binary_entropy(markov_stationary(p, q)),
                  markov_entropy_rate(p, q))


def markov_source(order: int, p: float, q: float) -> Source:
  """The floor is the entropy rate: exact at positions >= order, a lower bound before."""
  check_markov(order, p, q)
  return Source(2, markov_entropy_rate(p, q), binary_entropy(markov_stationary(p, q)), 1.0)


def sample_markov(key, batch: int, length: int, order: int, p, q):
  """int32 [batch, length] sequences of the switching chain; jittable with batch, length and
  order static and p, q traced.

  If x_{n-k} = 0 then x_n = 1 with probability p, if x_{n-k} = 1 then x_n = 0 with probability
  q; the first k tokens are i.i.d. with P(1) = pi1, so every position has the stationary law.
  The k interleaved subsequences x_r, x_{r+k}, ... are independent first-order chains, so the
  scan advances one block of k tokens per step.
  """
  blocks = -(-length // order)
  k0, k1 = jax.random.split(key)
  first = jax.random.uniform(k0, (batch, order)) < p / (p + q)
  noise = jax.random.uniform(k1, (blocks - 1, batch, order))

  def step(prev, u):
    nxt = jnp.where(prev, u >= q, u < p)
    return nxt, nxt

  _, rest = jax.lax.scan(step, first, noise)
  seq = jnp.concatenate([first[None], rest]).transpose(1, 0, 2).reshape(batch, -1)
  return seq[:, :length].astype(jnp.int32)


def markov_heldout(seed: int, n: int, length: int, order: int, p: float, q: float) -> np.ndarray:
  """A fixed int32 [n, length] evaluation set: sample_markov under jax.random.key(seed). Give it
  a seed that training keys are not derived from."""
  check_markov(order, p, q)
  sample = jax.jit(sample_markov, static_argnames=("batch", "length", "order"))
  return np.asarray(sample(jax.random.key(seed), n, length, order, p, q))


# ------------------------------------------------------------------------------------- HMM

def _stationary(transition: np.ndarray) -> np.ndarray:
  """pi with pi T = pi and sum(pi) = 1, as the least-squares solution of the stacked system."""
  s = transition.shape[0]
  a = np.vstack([transition.T - np.eye(s), np.ones((1, s))])
  b = np.r_[np.zeros(s), 1.0]
  pi = np.linalg.lstsq(a, b, rcond=None)[0]
  pi = np.clip(pi, 0, None)
  return pi / pi.sum()


def hmm_params(seed: int, states: int, symbols: int, concentration: float) -> dict:
  """A random HMM: {'initial' [S], 'transition' [S, S], 'emission' [S, V]}, float64 numpy.

  Transition rows ~ Dir(concentration 1_S), emission rows ~ Dir(concentration 1_V); small
  concentrations give sparse, predictable rows. The initial law is the transition's stationary
  law, so the process is stationary and every position has the symbol marginal pi B.
  """
  if states < 1 or symbols < 1 or concentration <= 0:
    raise ValueError(f"need states, symbols >= 1 and concentration > 0, got {states}, "
                     f"{symbols}, {concentration}")
  rng = np.random.default_rng(seed)
  transition = rng.dirichlet(np.full(states, concentration), states)
  emission = rng.dirichlet(np.full(symbols, concentration), states)
  return dict(initial=_stationary(transition), transition=transition, emission=emission)


def hmm_unigram(params: dict) -> float:
  """The entropy of the stationary symbol marginal pi B."""
  return float(_entropy(params["initial"] @ params["emission"]))


def hmm_token_losses(params: dict, tokens) -> np.ndarray:
  """-log p(x_t | x_<t) float64 [n, L] by the scaled forward algorithm; position 0 is
  predicted from the initial law.

  alpha_t(s) = P(s_t = s | x_<=t); the predictive of x_t is (alpha_{t-1} T) B[:, x_t], and
  renormalising alpha at each step keeps it in range for any length.
  """
  init, trans, emit = (np.asarray(params[k], np.float64)
                       for k in ("initial", "transition", "emission"))
  tokens = np.asarray(tokens)
  losses = np.empty(tokens.shape)
  prior = np.broadcast_to(init, (tokens.shape[0], init.size))
  for t in range(tokens.shape[1]):
    joint = prior * emit[:, tokens[:, t]].T   # P(s_t, x_t | x_<t)
    evidence = joint.sum(1)
    losses[:, t] = -np.log(evidence)
    prior = (joint / evidence[:, None]) @ trans
  return losses


def hmm_bayes_loss(params: dict, tokens) -> float:
  """Mean of hmm_token_losses over all n * L tokens."""
  return float(hmm_token_losses(params, tokens).mean())


def hmm_source(params: dict, heldout) -> Source:
  """The floor is the Bayes loss of next-token prediction on the held-out set: positions 1..L-1,
  since position 0 has no prefix and is never a target."""
  floor = float(hmm_token_losses(params, heldout)[:, 1:].mean())
  return Source(params["emission"].shape[1], floor, hmm_unigram(params), 1.0)


def sample_hmm(key, params: dict, batch: int, length: int):
  """int32 [batch, length] symbol sequences; jittable with batch and length static and the
  params dict (hmm_params' arrays) traced."""
  log_init, log_trans, log_emit = (jnp.log(jnp.asarray(params[k], jnp.float32))
                                   for k in ("initial", "transition", "emission"))
  k0, k1 = jax.random.split(key)

  def step(state, k):
    ke, kt = jax.random.split(k)
    symbol = jax.random.categorical(ke, log_emit[state])
    return jax.random.categorical(kt, log_trans[state]), symbol

  state = jax.random.categorical(k0, log_init, shape=(batch,))
  _, symbols = jax.lax.scan(step, state, jax.random.split(k1, length))
  return symbols.T.astype(jnp.int32)


def hmm_heldout(seed: int, params: dict, n: int, length: int) -> np.ndarray:
  """A fixed int32 [n, length] evaluation set: sample_hmm under jax.random.key(seed). Give it a
  seed that training keys are not derived from."""
  sample = jax.jit(sample_hmm, static_argnames=("batch", "length"))
  return np.asarray(sample(jax.random.key(seed), params, n, length))


# ------------------------------------------------------------------------------------ text

class Corpus(NamedTuple):
  """Byte streams, uint8 (a quarter of int32's memory on device; samplers return int32)."""
  train: np.ndarray
  heldout: np.ndarray
  chars_per_token: float   # UTF-8 characters per byte of the held-out stream
  unigram: float           # held-out bytes under add-one smoothed train byte frequencies

  @property
  def source(self) -> Source:
    return Source(BYTE_VOCAB, None, self.unigram, self.chars_per_token)


def _stream(docs: list[bytes]) -> np.ndarray:
  return np.frombuffer(b"".join(d + bytes([SEPARATOR]) for d in docs), np.uint8)


def utf8_chars(stream: np.ndarray) -> int:
  """Characters in UTF-8 bytes: every byte except continuation bytes 0b10xxxxxx starts one (the
  separator counts as a character, as a newline would)."""
  return int(np.count_nonzero((stream & 0xC0) != 0x80))


def byte_unigram(train: np.ndarray, heldout: np.ndarray) -> float:
  """Cross-entropy of held-out bytes under train byte frequencies with add-one smoothing, so a
  byte unseen in training costs log(n + 256), not infinity."""
  counts = np.bincount(train, minlength=BYTE_VOCAB) + 1.0
  return float(-np.log(counts / counts.sum())[heldout].mean())


def corpus(train_docs: list[bytes], heldout_docs: list[bytes]) -> Corpus:
  """Streams of the two document lists and the held-out stream's statistics."""
  train, heldout = _stream(train_docs), _stream(heldout_docs)
  return Corpus(train, heldout, utf8_chars(heldout) / heldout.size,
                byte_unigram(train, heldout))


def split_documents(docs: list[bytes]) -> tuple[list[bytes], list[bytes]]:
  """(train, held out): every HELDOUT_EVERY-th document held out, the last one if there are
  fewer; needs at least two documents."""
  held = [i % HELDOUT_EVERY == HELDOUT_EVERY - 1 for i in range(len(docs))]
  if not any(held):
    held[-1] = True
  return ([d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h])


def _text_files(path) -> list[pathlib.Path]:
  root = pathlib.Path(path)
  if root.is_dir():
    files = sorted(f for f in root.rglob("*.txt") if f.is_file())
    if not files:
      raise DataError(f"text corpus {path}: the folder holds no .txt files")
    return files
  if root.is_file():
    if root.suffix != ".txt":
      raise DataError(f"text corpus {path}: expected a .txt file or a folder of .txt files")
    return [root]
  raise DataError(f"text corpus {path}: no such file or folder")


def text_documents(path) -> list[bytes]:
  """The documents of a .txt file or a folder of .txt files (recursive, sorted by path).

  Each file is a document; a single file is split into paragraphs at blank lines instead.
  Whitespace-only documents are dropped. Bytes are read as they are: UTF-8 is expected only
  for counting characters.
  """
  files = _text_files(path)
  try:
    texts = [f.read_bytes() for f in files]
  except OSError as e:
    raise DataError(f"text corpus {path}: cannot be read ({one_line(e)})") from e
  if len(texts) == 1:
    texts = [par.strip(b"\r\n") for par in re.split(rb"\n\s*\n", texts[0])]
  return [t for t in texts if t.strip()]


def load_text(path) -> Corpus:
  """Byte-level train and held-out streams of local text; DataError names `path` when there is
  nothing to read or fewer than two documents."""
  docs = text_documents(path)
  if not docs:
    raise DataError(f"text corpus {path}: no text (every file is empty or whitespace)")
  if len(docs) == 1:
    raise DataError(f"text corpus {path}: a single document (one file without blank lines "
                    "between paragraphs), so none can be held out")
  return corpus(*split_documents(docs))


def _tfds_documents(name: str, split: str, data_dir: str | None, max_records: int):
  """The first max_records records' 'text' as bytes."""
  records = tfds_lra._records(tfds_lra.open_source(name, split, data_dir))
  with tfds_lra.read_errors(name, split, data_dir):
    texts = (r["text"] for r in itertools.islice(records, max_records))
    return [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]


def load_tfds(name: str, data_dir: str | None = None, max_records: int = 1_000_000) -> Corpus:
  """Byte-level streams of a prepared TFDS text dataset; never downloads.

  Each record is a document. tiny_shakespeare: train against validation, one record (the whole
  text) each. lm1b: train against test, one sentence per record, at most max_records of each
  split (30M train sentences would take gigabytes); its files are shuffled, so the first
  records are a random subset.
  """
  if name not in TFDS_NAMES:
    raise ValueError(f"unknown dataset {name!r}; expected one of {TFDS_NAMES}")
  if max_records < 1:
    raise ValueError(f"max_records must be positive, got {max_records}")
  return corpus(_tfds_documents(name, "train", data_dir, max_records),
                _tfds_documents(name, TFDS_HELDOUT[name], data_dir, max_records))


# ---------------------------------------------------------------------------------- windows

def sample_windows(key, stream, batch: int, length: int):
  """int32 [batch, length + 1] contiguous windows of a token stream at uniform random starts:
  inputs w[:, :-1], targets w[:, 1:]. Jittable with batch and length static; a window may span
  documents, and the separator marks where."""
  if stream.shape[0] < length + 1:
    raise ValueError(f"a stream of {stream.shape[0]} tokens has no window of {length + 1}")
  starts = jax.random.randint(key, (batch,), 0, stream.shape[0] - length)
  window = lambda s: jax.lax.dynamic_slice_in_dim(stream, s, length + 1)
  return jax.vmap(window)(starts).astype(jnp.int32)
