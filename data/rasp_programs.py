"""RASP-L programs (see `substrax.data.rasp`) for the algorithmic tasks of
`substrax.data.algorithmic`: each maps the tokens `[BOS] prompt [SEP] answer [EOS]` to the next
token at every position, and greedy decoding from `[BOS] prompt [SEP]` gives the answer.

`RASP_L[task]`: whether this file provides a RASP-L program for the task. `LENGTH[task]`: the
program's length, its primitive calls (select, aggregate, tok_map, seq_map; a `sel_width` adds
3 to its select, a `shift_right` is 4) in one run, pre-registered here and checked by
tests/test_rasp.py against `program_length(task)`, which counts them. The tasks without a
program need index arithmetic (reverse: position n - i; copy_repeat: the token after my last
copy's source, when tokens repeat; addition without hints: the digit pairs i apart) or a
sequential state that no fixed number of layers holds (parity without its scratchpad).

Counts (from `sel_width`) are values, not indices, so maps on them are allowed: dyck2 subtracts
two counts (the depth), double_histogram two others, most_frequent packs count and rank.
"""
import numpy as np

from substrax.data import algorithmic
from substrax.data.algorithmic import BOS, BRACKETS, HINT0, LABEL_F, LABEL_P, LABEL_T, PLUS, SEP
from substrax.data.rasp import (EOS, S, aggregate, aligned, calls, full, indices, parts,
                                sel_width, select, seen, seq_map, shift_right, tok_map)

RASP_L = {
    "count": True, "mode": True, "sort": True, "reverse": False, "copy_unique": True,
    "copy_repeat": False, "histogram": True, "double_histogram": True, "most_frequent": True,
    "dyck1": True, "dyck2": True, "parity": False, "parity_scratchpad": True,
    "add_forward": False, "add_forward_hints": True, "add_reverse": False,
    "add_reverse_hints": True,
}
LENGTH = {
    "count": 11, "mode": 15, "sort": 20, "copy_unique": 13, "histogram": 22,
    "double_histogram": 37, "most_frequent": 97, "dyck1": 23, "dyck2": 37,
    "parity_scratchpad": 18, "add_forward_hints": 40, "add_reverse_hints": 30,
}

NONE = -10 ** 9   # a key or query value that matches nothing


def _keep(x, flag, other=-1):
  """x where flag, else `other`: a key that only flagged positions can match."""
  return seq_map(x, flag, lambda v, f: v if f else other)


def count(x):
  """[a, b] -> a .. b: the prompt's min and max are a and b; then count up to b."""
  bos, after_sep, prompt = parts(x)
  in_prompt = select(prompt, full(x, 1), "==")
  a, b = aggregate(in_prompt, x, "min"), aggregate(in_prompt, x, "max")
  nxt = seq_map(x, a, lambda t, a: a if t == SEP else t + 1)
  return seq_map(nxt, seq_map(x, b, lambda t, b: t == b), lambda n, end: EOS if end else n)


def _so_far(x, bos, prompt):
  """At a prompt symbol, how often it occurred up to here (0 off the prompt)."""
  return _keep(sel_width(select(x, x, "=="), bos), prompt, 0)


def mode(x):
  """The symbol whose running count reaches the largest value (the mode is unique)."""
  bos, after_sep, prompt = parts(x)
  so_far = _so_far(x, bos, prompt)
  top = aggregate(select(prompt, full(x, 1), "=="), so_far, "max")
  the_mode = aggregate(select(so_far, top, "=="), x, "max")
  return seq_map(x, the_mode, lambda t, m: m if t == SEP else EOS)


def sort(x):
  """Repeat the last output while it was output fewer times than it occurs in the prompt,
  else the smallest prompt symbol above it (EOS if none). SEP is below every symbol."""
  bos, after_sep, prompt = parts(x)
  in_prompt = _keep(x, prompt)
  in_answer = seq_map(x, after_sep, lambda t, a: t if a and t != SEP else -1)
  occurs = sel_width(select(in_prompt, x, "=="), bos)
  output = sel_width(select(in_answer, x, "=="), bos)
  again = _keep(x, seq_map(output, occurs, lambda o, c: o < c))
  above = aggregate(select(in_prompt, x, ">"), in_prompt, "min", default=EOS)
  return seq_map(again, above, lambda a, b: a if a >= 0 else b)


def copy_unique(x):
  """Induction head: the prompt symbol whose predecessor is my token (SEP asks for BOS's)."""
  bos, after_sep, prompt = parts(x)
  follows = _keep(shift_right(x), prompt)
  return aggregate(select(follows, tok_map(x, lambda t: BOS if t == SEP else t), "=="), x, "max",
                   default=EOS)


def histogram(x):
  """The aligned prompt symbol's count in the prompt."""
  bos, after_sep, prompt = parts(x)
  token = aligned(bos, after_sep, prompt, x, default=-1)
  n = sel_width(select(_keep(x, prompt), token, "=="), bos)
  return seq_map(token, n, lambda t, n: EOS if t < 0 else n + S)


def double_histogram(x):
  """Symbols whose count is >= c each have one prompt position where their running count is c;
  so the symbols with count exactly c are (positions at c) - (positions at c + 1)."""
  bos, after_sep, prompt = parts(x)
  so_far = _so_far(x, bos, prompt)
  token = aligned(bos, after_sep, prompt, x, default=-1)
  c = sel_width(select(_keep(x, prompt), token, "=="), bos)
  at_least = sel_width(select(so_far, c, "=="), bos)
  more = sel_width(select(so_far, tok_map(c, lambda c: c + 1), "=="), bos)
  exactly = seq_map(at_least, more, lambda a, b: a - b)
  return seq_map(token, exactly, lambda t, e: EOS if t < 0 else e + S)


def most_frequent(x):
  """Over the 8 symbols (a fixed alphabet, so a fixed number of heads): score = count * 16 +
  (15 - rank of first occurrence); output the best score below the last output's."""
  bos, after_sep, prompt = parts(x)
  in_prompt = _keep(x, prompt)
  first = seq_map(x, _so_far(x, bos, prompt), lambda t, c: t if c == 1 else -1)
  rank = sel_width(select(first, full(x, 0), ">="), bos)   # distinct symbols so far

  def score(token):
    n = sel_width(select(in_prompt, token, "=="), bos)
    r = aggregate(select(first, token, "=="), rank, "max")
    return seq_map(n, r, lambda n, r: n * 16 + 15 - r if n else -1)

  last = seq_map(x, score(x), lambda t, s: 10 ** 9 if t == SEP else s)
  best = full(x, -1)
  for symbol in range(8):
    below = seq_map(score(full(x, symbol + S)), last,
                    lambda s, l, symbol=symbol: s * 8 + symbol if 0 <= s < l else -1)
    best = seq_map(best, below, max)
  return tok_map(best, lambda b: EOS if b < 0 else b % 8 + S)


def _label(broken, balanced):
  return S + (LABEL_F if broken else LABEL_T if balanced else LABEL_P)


def dyck1(x):
  """Valid so far iff every prompt prefix has at least half openers (a running mean)."""
  bos, after_sep, prompt = parts(x)
  opener = tok_map(x, lambda t: t == BRACKETS["dyck1"][0][0] + S)
  share = aggregate(select(prompt, full(x, 1), "=="), opener, "mean")
  broken = seen(x, seq_map(share, prompt, lambda s, p: int(p and s < 0.5)))
  label = seq_map(broken, share, lambda b, s: _label(b, s == 0.5))
  return aligned(bos, after_sep, prompt, label, default=EOS)


def dyck2(x):
  """A closer matches the last opener whose depth after it equals the depth before the closer
  (depth = openers - closers so far); broken from the first closer that does not match."""
  bos, after_sep, prompt = parts(x)
  openers = {o + S for o, _ in BRACKETS["dyck2"]}
  closers = {c + S: o + S for o, c in BRACKETS["dyck2"]}
  opening = seq_map(x, prompt, lambda t, p: int(p and t in openers))
  closing = seq_map(x, prompt, lambda t, p: int(p and t in closers))
  ones = full(x, 1)
  depth = seq_map(sel_width(select(opening, ones, "=="), bos),
                  sel_width(select(closing, ones, "=="), bos), lambda o, c: o - c)
  before = seq_map(depth, closing, lambda d, c: d + 1 if c else NONE)
  i = indices(x)
  match = aggregate(select(_keep(depth, opening, NONE - 1), before, "=="), i, "max", default=-1)
  partner = aggregate(select(i, match, "=="), x, "max", default=-1)
  bad = seq_map(x, partner, lambda t, p: int(t in closers and closers[t] != p))
  label = seq_map(seen(x, bad), depth, lambda b, d: _label(b, d == 0))
  return aligned(bos, after_sep, prompt, label, default=EOS)


def parity_scratchpad(x):
  """Next running xor = my running xor (0 at SEP) xor the aligned prompt bit."""
  bos, after_sep, prompt = parts(x)
  bit = aligned(bos, after_sep, prompt, x, default=-1)
  mine = tok_map(x, lambda t: t - S if t >= S else 0)
  return seq_map(bit, mine, lambda b, m: EOS if b < 0 else ((b - S) ^ m) + S)


def _addition(x):
  """Shared by both hinted additions: flags, the hint before each prompt digit, and the sum of
  the two operand digits of significance h (the mean of the two digits after hint h, x2)."""
  bos, after_sep, prompt = parts(x)
  digit = seq_map(x, prompt, lambda t, p: int(p and S <= t < S + 10))
  hint = seq_map(x, prompt, lambda t, p: int(p and t >= S + HINT0))
  prev = shift_right(x)
  hint_of = _keep(prev, digit)
  value = tok_map(x, lambda t: t - S)
  pair_sum = lambda h: tok_map(aggregate(select(hint_of, h, "=="), value, "mean"),
                               lambda m: round(2 * m))
  in_hints = select(hint, full(x, 1), "==")
  low, high = aggregate(in_hints, x, "min"), aggregate(in_hints, x, "max")
  return after_sep, hint_of, prev, pair_sum, low, high


def add_reverse_hints(x):
  """Least significant first: at hint h_k write (a_k + b_k + carry) % 10, the carry being
  1 iff the digit written last is below a_{k-1} + b_{k-1}; after a digit write the next hint."""
  after_sep, hint_of, prev, pair_sum, low, high = _addition(x)
  carry = seq_map(prev, pair_sum(tok_map(x, lambda t: t - 1)),
                  lambda p, u: int(S <= p < S + 10 and p - S < u))
  digit = seq_map(pair_sum(x), carry, lambda u, c: (u + c) % 10 + S)
  next_hint = seq_map(prev, high, lambda p, h: EOS if p > h else p + 1)
  return _hinted_answer(x, low, digit, next_hint)


def _hinted_answer(x, first_hint, digit, next_hint):
  """SEP -> the first hint; a hint -> its sum digit; a digit -> the next hint (or EOS)."""
  at_hint = seq_map(x, digit, lambda t, d: d if t >= S + HINT0 else -1)
  at_sep = seq_map(x, first_hint, lambda t, h: h if t == SEP else -1)
  known = seq_map(at_hint, at_sep, max)
  return seq_map(known, next_hint, lambda k, n: k if k >= 0 else n)


def add_forward_hints(x):
  """Most significant first: the carry into h_k comes from the highest lower significance whose
  digit pair does not sum to 9 (carry iff that pair sums to >= 10). Pair sums sit at the second
  operand's digits, which see both digits of their significance."""
  after_sep, hint_of, prev, pair_sum, low, high = _addition(x)
  second = seq_map(hint_of, seen(x, tok_map(x, lambda t: int(t == PLUS + S))),
                   lambda h, s: h if s and h >= 0 else -1)   # hint of a second-operand digit
  sums = _keep(pair_sum(prev), tok_map(second, lambda h: h >= 0))
  decisive = seq_map(second, sums, lambda h, u: h if h >= 0 and u != 9 else -NONE)
  below = aggregate(select(decisive, x, "<"), decisive, "max", default=NONE)
  carry = tok_map(aggregate(select(second, below, "=="), sums, "max"), lambda u: int(u >= 10))
  here = aggregate(select(second, x, "=="), sums, "max")
  digit = seq_map(here, carry, lambda u, c: (u + c) % 10 + S)
  next_hint = seq_map(prev, low, lambda p, l: EOS if p == l else p - 1)
  return _hinted_answer(x, tok_map(high, lambda h: h + 1), digit, next_hint)


PROGRAMS = {name: globals()[name] for name, has in RASP_L.items() if has}


def program_length(task: str) -> int:
  """Primitive calls of the task's program in one run (the same on every input)."""
  rng = np.random.default_rng(0)
  prompt = algorithmic.TASKS[task].sample(rng, 3)
  return calls(PROGRAMS[task], algorithmic.encode(prompt, algorithmic.TASKS[task].solve(prompt)))
