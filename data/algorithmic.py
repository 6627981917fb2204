"""Algorithmic tasks of the length-generalization and Transformer Programs studies, each with an
exact generator, an answer checker and a length control.

A task maps a prompt (a list of symbols) to an answer (a list of symbols). Symbols are ints in
[0, SYMBOLS); as language-model tokens they follow the four specials:

  [BOS] prompt [SEP] answer [EOS]      token = symbol + len(SPECIALS), padded with PAD

`n` is the size of an instance: the number of values counted (count), of digits per operand
(addition), of items otherwise. Tasks (Zhou et al. 2024; Friedman et al. 2023):

  count               [a, b], b = a + n - 1               -> a, a+1, ..., b
  mode                n tokens of 8, a unique mode         -> [the mode]
  sort                n tokens of 32, repeats allowed      -> the tokens in ascending order
  reverse             n tokens of 16                       -> the tokens in reverse order
  copy_unique         n distinct tokens of max(32, n)      -> the same tokens
  copy_repeat         n tokens of 4                        -> the same tokens
  histogram           n tokens of 8                        -> per token, its count in the prompt
  double_histogram    n tokens of 8                        -> per token, how many distinct
                                                              tokens share its count
  most_frequent       n tokens of 8                        -> the distinct tokens by count,
                                                              most frequent first, ties by
                                                              first occurrence
  dyck1, dyck2        n brackets of 1 or 2 kinds           -> per prefix, T (balanced), P (a
                                                              valid prefix, not balanced) or F
  parity              n bits                               -> [their xor]
  parity_scratchpad   n bits                               -> the running xor (last = answer)
  add_{forward,reverse}[_hints]
                      two n-digit numbers (most significant digit first, joined by PLUS)
                                                           -> their n + 1 digit sum, most
                                                              (forward) or least (reverse)
                                                              significant digit first

With index hints every digit of the operands and of the sum is preceded by a hint symbol naming
its significance k: HINT0 + offset + k, with the offset drawn per example so that training at
short lengths still sees every hint symbol.
"""
import dataclasses
from typing import Callable

import numpy as np

SPECIALS = ("PAD", "BOS", "SEP", "EOS")
PAD, BOS, SEP, EOS = range(4)
SYMBOLS = 128
VOCAB = len(SPECIALS) + SYMBOLS
# Symbols of the structured tasks.
PLUS = 10                  # addition: digits are 0..9
HINT0 = 11                 # addition: hint symbols HINT0 .. SYMBOLS - 1
HINTS = SYMBOLS - HINT0
BRACKETS = {"dyck1": ((0, 1),), "dyck2": ((0, 1), (2, 3))}   # (open, close) symbol pairs
LABEL_T, LABEL_P, LABEL_F = 4, 5, 6   # Dyck labels, after every bracket symbol


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  sample: Callable[[np.random.Generator, int], list]   # (rng, n) -> prompt
  solve: Callable[[list], list]                        # prompt -> the answer
  check: Callable[[list, list], bool]                  # (prompt, answer) -> correct?
  max_n: int                                           # the largest n the symbols allow
  # The longest answer of size n, where answers of one size differ in length; else None.
  longest_answer: Callable[[int], int] | None = None


# ------------------------------------------------------------------------------- solvers

def _count_solve(prompt):
  a, b = prompt
  return list(range(a, b + 1))


def _mode_solve(prompt):
  values, counts = np.unique(prompt, return_counts=True)
  return [int(values[np.argmax(counts)])]


def _histogram_solve(prompt):
  return [prompt.count(x) for x in prompt]


def _double_histogram_solve(prompt):
  counts = {x: prompt.count(x) for x in prompt}
  return [sum(1 for c in counts.values() if c == counts[x]) for x in prompt]


def _most_frequent_solve(prompt):
  distinct = list(dict.fromkeys(prompt))   # first-occurrence order; sorted() is stable
  return sorted(distinct, key=lambda x: -prompt.count(x))


def _dyck_solve(kind):
  pairs = BRACKETS[kind]
  opener = {c: o for o, c in pairs}

  def solve(prompt):
    stack, labels, broken = [], [], False
    for x in prompt:
      if not broken:
        if x in opener:
          broken = not stack or stack.pop() != opener[x]
        else:
          stack.append(x)
      labels.append(LABEL_F if broken else LABEL_P if stack else LABEL_T)
    return labels
  return solve


def _parity_scratchpad_solve(prompt):
  return [int(v) for v in np.cumsum(prompt) % 2]


def _operands(prompt, hints):
  """(a digits, b digits, hint offset) of an addition prompt, most significant first."""
  if hints:
    n = (len(prompt) - 1) // 4
    a, b = prompt[1:2 * n:2], prompt[2 * n + 2::2]
    return a, b, prompt[2 * n - 2] - HINT0
  n = (len(prompt) - 1) // 2
  return prompt[:n], prompt[n + 1:], 0


def _digits_value(digits):
  return int("".join(map(str, digits))) if digits else 0


def _add_solve(reverse, hints):
  def solve(prompt):
    a, b, offset = _operands(prompt, hints)
    n = len(a)
    total = _digits_value(a) + _digits_value(b)
    digits = [int(c) for c in str(total).zfill(n + 1)]   # most significant first
    ks = list(range(n, -1, -1))
    if reverse:
      digits, ks = digits[::-1], ks[::-1]
    if not hints:
      return digits
    return [s for k, d in zip(ks, digits) for s in (HINT0 + offset + k, d)]
  return solve


# ------------------------------------------------------------------------------- samplers

def _tokens(alphabet):
  return lambda rng, n: rng.integers(0, alphabet, n).tolist()


def _count_sample(rng, n):
  a = int(rng.integers(0, SYMBOLS - n + 1))
  return [a, a + n - 1]


def _mode_sample(rng, n):
  while True:   # resample ties: the answer must be unique
    prompt = rng.integers(0, 8, n).tolist()
    counts = np.bincount(prompt)
    if np.sum(counts == counts.max()) == 1:
      return prompt


def _unique_sample(rng, n):
  # From 32 symbols while they suffice: each is then seen often enough in training that the
  # copying circuit, not the embeddings, is what a small model has to learn.
  return rng.permutation(max(32, n))[:n].tolist()


def _dyck_sample(kind):
  pairs = BRACKETS[kind]

  def sample(rng, n):
    """Half the prompts are random strings (nearly all invalid after a few brackets); the other
    half never close a bracket that is not open, so T and P labels are common too."""
    if rng.random() < 0.5:
      return [int(rng.choice([s for p in pairs for s in p])) for _ in range(n)]
    stack, out = [], []
    for _ in range(n):
      if stack and rng.random() < 0.5:
        out.append(pairs[stack.pop()][1])
      else:
        stack.append(int(rng.integers(len(pairs))))
        out.append(pairs[stack[-1]][0])
    return out
  return sample


def _add_sample(hints):
  def sample(rng, n):
    a, b = rng.integers(0, 10, n).tolist(), rng.integers(0, 10, n).tolist()
    if not hints:
      return a + [PLUS] + b
    offset = int(rng.integers(0, HINTS - n))   # hints HINT0 + offset + (0 .. n) are symbols
    hinted = lambda ds: [s for k, d in zip(range(n - 1, -1, -1), ds)
                         for s in (HINT0 + offset + k, d)]
    return hinted(a) + [PLUS] + hinted(b)
  return sample


# ------------------------------------------------------------------------------- checkers

def _sort_check(prompt, answer):
  return answer == sorted(answer) and sorted(prompt) == sorted(answer)


def _count_check(prompt, answer):
  a, b = prompt
  return (len(answer) == b - a + 1 and answer[:1] == [a]
          and all(y - x == 1 for x, y in zip(answer, answer[1:])))


def _mode_check(prompt, answer):
  return len(answer) == 1 and all(prompt.count(answer[0]) > prompt.count(x)
                                  for x in set(prompt) - {answer[0]})


def _parity_check(prompt, answer):
  return answer == [sum(prompt) % 2]


def _parity_scratchpad_check(prompt, answer):
  return (len(answer) == len(prompt) and answer[-1:] == [sum(prompt) % 2]
          and all(y == (x + p) % 2 for x, y, p in zip([0] + answer, answer, prompt)))


def _add_check(reverse, hints):
  def check(prompt, answer):
    a, b, offset = _operands(prompt, hints)
    n = len(a)
    if hints:
      ks = list(range(n + 1)) if reverse else list(range(n, -1, -1))
      if answer[::2] != [HINT0 + offset + k for k in ks]:
        return False
      answer = answer[1::2]
    if len(answer) != n + 1 or any(not 0 <= d <= 9 for d in answer):
      return False
    return _digits_value(answer[::-1] if reverse else answer) == (
        _digits_value(a) + _digits_value(b))
  return check


def _equals(solve):
  """For tasks whose answer is a definition rather than a search: the definition itself."""
  return lambda prompt, answer: answer == solve(prompt)


def _task(name, sample, solve, check=None, max_n=100, longest_answer=None):
  return Task(name, sample, solve, check or _equals(solve), max_n, longest_answer)


TASKS = {t.name: t for t in [
    _task("count", _count_sample, _count_solve, _count_check, SYMBOLS),
    _task("mode", _mode_sample, _mode_solve, _mode_check),
    _task("sort", _tokens(32), sorted, _sort_check),
    _task("reverse", _tokens(16), lambda p: p[::-1]),
    _task("copy_unique", _unique_sample, list, max_n=SYMBOLS),
    _task("copy_repeat", _tokens(4), list),
    _task("histogram", _tokens(8), _histogram_solve),
    _task("double_histogram", _tokens(8), _double_histogram_solve),
    _task("most_frequent", _tokens(8), _most_frequent_solve,
          longest_answer=lambda n: min(n, 8)),
    _task("dyck1", _dyck_sample("dyck1"), _dyck_solve("dyck1")),
    _task("dyck2", _dyck_sample("dyck2"), _dyck_solve("dyck2")),
    _task("parity", _tokens(2), lambda p: [sum(p) % 2], _parity_check),
    _task("parity_scratchpad", _tokens(2), _parity_scratchpad_solve, _parity_scratchpad_check),
    *[_task(f"add_{order}{'_hints' if hints else ''}", _add_sample(hints),
            _add_solve(order == "reverse", hints), _add_check(order == "reverse", hints),
            HINTS - 1 if hints else 100)
      for order in ("forward", "reverse") for hints in (False, True)],
]}


def get(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown algorithmic task {name!r}; choose one of {', '.join(TASKS)}")
  return TASKS[name]


# ---------------------------------------------------------------------- language-model form

def encode(prompt, answer=()) -> list:
  """[BOS] prompt [SEP] answer [EOS] as tokens; without an answer, the prompt up to SEP."""
  shift = len(SPECIALS)
  tokens = [BOS] + [s + shift for s in prompt] + [SEP]
  return tokens + [s + shift for s in answer] + [EOS] if answer else tokens


def sequence_length(task: Task, n: int) -> int:
  """Tokens of a size-n example, the longest where answer lengths vary: BOS, SEP and EOS
  around the prompt and the answer (a prompt's length depends on n only)."""
  prompt = task.sample(np.random.default_rng(0), n)
  answer = task.longest_answer(n) if task.longest_answer else len(task.solve(prompt))
  return len(prompt) + answer + 3


def examples(task: Task, rng: np.random.Generator, sizes) -> list[tuple[list, list]]:
  """(prompt, answer) for each n in sizes."""
  out = []
  for n in sizes:
    prompt = task.sample(rng, int(n))
    out.append((prompt, task.solve(prompt)))
  return out


def _answer_mask(prompt, answer) -> list:
  """1 where the next token is part of the answer (its symbols and EOS), aligned with the
  targets tokens[1:]: SEP predicts the first answer symbol."""
  return [0] * (len(prompt) + 1) + [1] * (len(answer) + 1)


def packed_pool(task: Task, rng: np.random.Generator, contexts: int, length: int,
                max_n: int) -> tuple[np.ndarray, np.ndarray]:
  """Training contexts of `length` + 1 tokens, each filled with whole examples back to back
  and padded at the end: (tokens int32 [contexts, length + 1], loss mask float32 [contexts,
  length] over the targets tokens[:, 1:]).

  Sizes are drawn uniformly from [1, max_n]; the first example that does not fit ends its row
  and is dropped, so a row's last slot favours small sizes and large sizes are somewhat rarer
  than uniform. Packing puts examples at every offset, so every position of a learned table
  is trained and a length-n example later evaluated at position 0 is not the first the model
  sees there."""
  if sequence_length(task, max_n) > length + 1:
    raise ValueError(f"a context of {length + 1} tokens cannot hold a {task.name} example of "
                     f"size {max_n}")
  tokens = np.full((contexts, length + 1), PAD, np.int32)
  mask = np.zeros((contexts, length), np.float32)
  for row in range(contexts):
    pos = 0
    while True:
      prompt = task.sample(rng, int(rng.integers(1, max_n + 1)))
      answer = task.solve(prompt)
      seq = encode(prompt, answer)
      if pos + len(seq) > length + 1:
        break
      tokens[row, pos:pos + len(seq)] = seq
      mask[row, pos:pos + len(seq) - 1] = _answer_mask(prompt, answer)
      pos += len(seq)
  return tokens, mask


def test_set(task: Task, rng: np.random.Generator, count: int, n: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """`count` size-n examples, one per row from position 0, padded to the longest: (tokens
  int32 [count, T + 1], loss mask float32 [count, T])."""
  pairs = examples(task, rng, [n] * count)
  seqs = [encode(p, a) for p, a in pairs]
  width = max(map(len, seqs))
  tokens = np.full((count, width), PAD, np.int32)
  mask = np.zeros((count, width - 1), np.float32)
  for row, (seq, (p, a)) in enumerate(zip(seqs, pairs)):
    tokens[row, :len(seq)] = seq
    mask[row, :len(seq) - 1] = _answer_mask(p, a)
  return tokens, mask
