"""A small RASP-L interpreter in numpy (after Zhou et al., ICLR 2024, "What Algorithms can
Transformers Learn? A Study in Length Generalization"; written from the definitions).

RASP (Weiss et al. 2021) is a language whose programs map onto transformers: a value is one
number per sequence position (a numpy array [T]); an MLP is an elementwise map of values
(`tok_map`, `seq_map`); an attention layer is a `select` (which key positions each query
position attends to, by comparing a key value with a query value) followed by an `aggregate`
(the mean, max or min of a value over the selected keys).

RASP-L is the restriction that Zhou et al. conjecture transformers learn in a way that
generalizes to longer inputs:

- causal: every selector is masked to key position <= query position, so a program is a
  next-token predictor and its prediction at t depends on tokens[:t + 1] only;
- no index arithmetic: `indices` (and anything aggregated from them) may only be compared with
  another value inside a select predicate, never passed to tok_map / seq_map (no `i + 1`,
  `n - i`). Here such values carry the `Index` array type and the maps refuse it. Counts, token
  values and hint symbols are ordinary values and may be mapped. The guard is therefore looser
  than the intent: a count of positions (sel_width over "is in the prompt") is a position
  re-derived, and arithmetic on it passes (a reverse written that way runs correctly here);
- maps are lookup tables over the values that occur (what an MLP can store), and predicates
  are the comparisons ==, !=, <, <=, >, >= (key OP query) or "true".

Counting (`sel_width`): attention can average but not count. Add the BOS position (position 0,
token BOS) to a selector and average an is-BOS indicator over it: with w other positions
selected the mean is 1 / (w + 1), and a tok_map turns that into w. Programs here assume one
example per sequence, starting with BOS: `[BOS] prompt [SEP] answer [EOS]`.

`predict(program, tokens)` runs a program (the next token at every position) and counts the
primitive calls, which gives a program's length (`calls`); `generate` decodes greedily.
"""
import numpy as np

from substrax.data.algorithmic import BOS, EOS, SEP, SPECIALS

S = len(SPECIALS)   # token = symbol + S

_calls = [0]   # primitive calls (select, aggregate, tok_map, seq_map) since the last reset


class Index(np.ndarray):
  """A value derived from positions: it may be compared in a select, never mapped."""


def _count():
  _calls[0] += 1


# ------------------------------------------------------------------------------ primitives

def indices(x) -> Index:
  return np.arange(len(x)).view(Index)


def full(x, c) -> np.ndarray:
  return np.full(len(x), c)


def _table(f, *values):
  """f applied once per distinct (tuple of) value(s): an MLP is a lookup table."""
  if any(isinstance(v, Index) for v in values):
    raise TypeError("RASP-L: no arithmetic on indices (compare them in a select instead)")
  _count()
  tables = [np.unique(np.asarray(v), return_inverse=True) for v in values]
  code = np.zeros(len(values[0]), np.int64)
  for distinct, inverse in tables:   # one code per distinct tuple of values
    code = code * len(distinct) + inverse.reshape(-1)
  _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
  rows = zip(*[distinct[inv[first]].tolist() for distinct, inv in tables])
  return np.array([f(*row) for row in rows])[inverse.reshape(-1)]


def tok_map(x, f) -> np.ndarray:
  return _table(f, x)


def seq_map(x, y, f) -> np.ndarray:
  return _table(f, x, y)


_PREDICATES = {
    "==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
    ">": np.greater, ">=": np.greater_equal,
    "true": lambda k, q: np.ones(np.broadcast_shapes(k.shape, q.shape), bool),
}


def select(keys, queries, predicate) -> np.ndarray:
  """[T_query, T_key] booleans: predicate(key, query), and always key position <= query."""
  _count()
  keys, queries = np.asarray(keys), np.asarray(queries)
  sel = _PREDICATES[predicate](keys[None, :], queries[:, None])
  return sel & np.tri(len(queries), len(keys), dtype=bool)


def aggregate(sel, values, reduction="mean", default=0):
  """Mean / max / min of `values` over each query's selected keys; `default` where none."""
  _count()
  index = isinstance(values, Index)
  v = np.asarray(values)
  if reduction == "mean":
    width = sel.sum(1)
    out = (sel @ v.astype(float)) / np.maximum(width, 1)
  elif reduction in ("max", "min"):
    fill = v.min() if reduction == "max" else v.max()   # never beats a selected value
    out = getattr(np.where(sel, v[None, :], fill), reduction)(1)
  else:
    raise ValueError(f"unknown reduction {reduction!r}")
  out = np.where(sel.any(1), out, default)
  return out.view(Index) if index else out


def kqv(keys, queries, values, predicate, reduction="mean", default=0):
  return aggregate(select(keys, queries, predicate), values, reduction, default)


# -------------------------------------------------------------------------------- library

def sel_width(sel, bos):
  """How many non-BOS keys each query selects (`bos`: 1 at the BOS position, else 0)."""
  with_bos = sel | select(bos, full(bos, 1), "==")
  return tok_map(aggregate(with_bos, bos, "mean"), lambda f: round(1 / f) - 1 if f else 0)


def seen(x, flag):
  """1 where `flag` was 1 at this or an earlier position (a running max)."""
  return aggregate(select(x, x, "true"), flag, "max")


def shift_right(x, default=-1):
  """The value at the previous position, without index arithmetic: the largest index below
  mine (max over keys with index < mine), then the key whose index equals it."""
  i = indices(x)
  previous = aggregate(select(i, i, "<"), i, "max", default=-1)
  return aggregate(select(i, previous, "=="), x, "max", default)


def parts(x):
  """(bos, after_sep, prompt) flags: BOS; SEP or later; a prompt symbol (before SEP)."""
  bos = tok_map(x, lambda t: int(t == BOS))
  after_sep = seen(x, tok_map(x, lambda t: int(t == SEP)))
  prompt = seq_map(x, after_sep, lambda t, a: int(t >= S and not a))
  return bos, after_sep, prompt


def aligned(bos, after_sep, prompt, values, default):
  """At SEP and the answer: `values` at the i-th prompt symbol where the next token is the i-th
  answer symbol (SEP gets the first), `default` past the prompt's end. Both sides count their
  positions (prompt symbols so far; positions since SEP) and a select matches the counts."""
  ones = full(prompt, 1)
  rank = seq_map(sel_width(select(prompt, ones, "=="), bos), prompt, lambda r, p: r if p else 0)
  step = sel_width(select(after_sep, ones, "=="), bos)   # 1 at SEP, 2 after one answer symbol
  return aggregate(select(rank, step, "=="), values, "max", default)


# ------------------------------------------------------------------------------ running

def predict(program, tokens) -> np.ndarray:
  """The program's next token at every position, as ints [T]."""
  return np.asarray(program(np.asarray(tokens, dtype=np.int64)), dtype=np.int64)


def calls(program, tokens) -> int:
  """Primitive calls (select, aggregate, tok_map, seq_map) in one run: the program's length."""
  _calls[0] = 0
  predict(program, tokens)
  return _calls[0]


def generate(program, prompt_tokens, max_new) -> list:
  """Greedy decoding from `prompt_tokens` (ending in SEP) until EOS: the answer symbols."""
  seq = list(prompt_tokens)
  out = []
  for _ in range(max_new):
    nxt = int(predict(program, seq)[-1])
    if nxt == EOS:
      break
    out.append(nxt - S)
    seq.append(nxt)
  return out
