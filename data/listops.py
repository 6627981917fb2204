"""ListOps (Long Range Arena, Tay et al. 2021), regenerated offline and deterministic by seed.

An example is a prefix expression over the digits 0-9 with the operators MIN, MAX, MED (median,
floored) and SM (sum modulo 10), e.g. `( [MAX 2 9 ( [MIN 4 7 ] ) 0 ] )` -> 9. Trees follow LRA's
generator; the model sees LRA's tokens: parentheses removed and `]` replaced by `X`.

Example:
  splits = build_splits("/tmp/listops_cache")
  splits["train"]["tokens"]   # uint8 [96000, 2000], 0-padded
"""
import argparse
import functools
import hashlib
import os
import random
import sys
import time

import numpy as np

from substrax.data import DataError, cache

OPERATORS = ("MIN", "MAX", "MED", "SM")
VALUE_P = 0.25    # LRA's name; a node is a leaf when its draw exceeds this
CLOSE = "X"       # what LRA's input pipeline turns `]` into
VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + ("[MAX", "[MIN", "[MED", "[SM", CLOSE)
VOCAB_SIZE = len(VOCAB)
NUM_CLASSES = 10
PAD_ID = 0
CACHE_VERSION = 1   # bump whenever the generator's output for a given seed changes
MIN_LENGTH = 4      # tokens of the smallest tree, `[OP d d X`

_IDS = {symbol: i for i, symbol in enumerate(VOCAB) if i != PAD_ID}


class _TooLong(Exception):
  """Abandons a tree as soon as it outgrows the token budget."""


def _grow(rng, depth, max_depth, max_args, count, limit, force_op=False):
  """One node of LRA's random tree; `count[0]` tracks the tokens emitted so far."""
  if depth < max_depth and (force_op or rng.random() <= VALUE_P):
    count[0] += 2   # `[OP` and its closing `X`, counted up front to abort sooner
    if count[0] > limit:
      raise _TooLong
    op = rng.choice(OPERATORS)
    children = tuple([_grow(rng, depth + 1, max_depth, max_args, count, limit)
                      for _ in range(rng.randint(2, max_args))])
    return (op, children)
  count[0] += 1
  if count[0] > limit:
    raise _TooLong
  return rng.randrange(10)


def generate_tree(rng, depth=1, max_depth=10, max_args=10):
  """A random tree: an int leaf or (op, children); the root is always an operator.

  LRA draws the root like any other node, but only keeps long trees, so forcing an operator at
  the root changes nothing about the trees that survive and skips the hopeless leaves.
  """
  return _grow(rng, depth, max_depth, max_args, [0], float("inf"), force_op=True)


def _median(values):
  """int(np.median(values)) for non-negative ints, without numpy's per-call overhead."""
  s = sorted(values)
  n = len(s)
  return (s[(n - 1) // 2] + s[n // 2]) // 2


def evaluate(tree) -> int:
  """Value of a tree, in 0..9."""
  if isinstance(tree, int):
    return tree
  op, children = tree
  values = [evaluate(c) for c in children]
  if op == "MIN":
    return min(values)
  if op == "MAX":
    return max(values)
  if op == "MED":
    return _median(values)
  if op == "SM":
    return sum(values) % 10
  raise ValueError(f"unknown operator {op!r}")


def to_string(tree) -> str:
  """LRA's TSV `Source` form: every operator subtree wrapped as `( [OP args ... ] )`."""
  if isinstance(tree, int):
    return str(tree)
  op, children = tree
  return " ".join(["(", "[" + op, *(to_string(c) for c in children), "]", ")"])


def _symbols(source: str) -> list[str]:
  """LRA's input pipeline: drop parentheses, `]` -> `X`, split on whitespace."""
  return source.replace("(", " ").replace(")", " ").replace("]", CLOSE).split()


def tokenize(source: str) -> list[int]:
  """Token ids (1..15, no padding) of a source string."""
  try:
    return [_IDS[s] for s in _symbols(source)]
  except KeyError as e:
    raise ValueError(f"unknown ListOps symbol {e.args[0]!r}") from None


def decode(ids) -> str:
  """Space-separated symbols for token ids; padding is dropped."""
  return " ".join(VOCAB[int(i)] for i in ids if int(i) != PAD_ID)


def reference_value(source: str) -> int:
  """Evaluates a source string with a stack machine over its tokens, independently of the tree.

  Kept deliberately separate from `evaluate` (numpy's median, no shared helpers) so that tests
  comparing the two check the generator's labels against what the model actually sees.
  """
  apply = {"[MIN": np.min, "[MAX": np.max, "[MED": np.median, "[SM": lambda v: np.sum(v) % 10}
  stack = []   # open operators: [symbol, argument values]
  result = None
  for s in _symbols(source):
    if result is not None:
      raise ValueError(f"trailing symbols after a complete expression: {source!r}")
    if s in apply:
      stack.append((s, []))
      continue
    if s == CLOSE:
      if not stack or not stack[-1][1]:
        raise ValueError(f"unbalanced or empty operator in {source!r}")
      op, args = stack.pop()
      value = int(apply[op](np.array(args)))
    elif s.isdigit() and len(s) == 1:
      value = int(s)
    else:
      raise ValueError(f"unknown ListOps symbol {s!r}")
    if stack:
      stack[-1][1].append(value)
    else:
      result = value
  if result is None:
    raise ValueError(f"incomplete expression: {source!r}")
  return result


def _max_tokens(max_depth, max_args):
  """Token count of the largest possible tree: full fan-out down to max_depth."""
  ops = sum(max_args ** d for d in range(max_depth - 1))
  return 2 * ops + max_args ** (max_depth - 1)


def _check(min_length, max_length, max_depth, max_args):
  if max_depth < 2:
    raise ValueError(f"max_depth must be >= 2 (the root is an operator), got {max_depth}")
  if max_args < 2:
    raise ValueError(f"max_args must be >= 2, got {max_args}")
  if min_length < 1:
    raise ValueError(f"min_length must be >= 1, got {min_length}")
  if min_length > max_length:
    raise ValueError(f"min_length ({min_length}) must be <= max_length ({max_length})")
  if max_length < MIN_LENGTH:
    raise ValueError(f"max_length must be >= {MIN_LENGTH} (the smallest tree's tokens), "
                     f"got {max_length}")
  if min_length > _max_tokens(max_depth, max_args):
    raise ValueError(f"min_length ({min_length}) exceeds the largest tree possible with "
                     f"max_depth={max_depth}, max_args={max_args}")


def generate(n, seed, *, min_length=500, max_length=2000, max_depth=10, max_args=10,
             max_failures=1_000_000) -> dict:
  """n unique examples with min_length <= token count <= max_length, by rejection sampling.

  Returns {"tokens": uint8 [n, max_length] (0-padded), "lengths": int32 [n], "labels": int32 [n]}.
  Raises DataError after `max_failures` draws in a row without a new example, which happens
  when the length window holds fewer than n distinct trees or almost none of the mass.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  _check(min_length, max_length, max_depth, max_args)
  rng = random.Random(seed)
  tokens = np.zeros((n, max_length), np.uint8)
  lengths = np.zeros(n, np.int32)
  labels = np.zeros(n, np.int32)
  seen = set()   # digests of token bytes; tokens determine the tree, hence the string
  i = failures = 0
  while i < n:
    count = [0]
    try:
      tree = _grow(rng, 1, max_depth, max_args, count, max_length, force_op=True)
    except _TooLong:
      tree = None
    ok = tree is not None and count[0] >= min_length
    if ok:
      ids = tokenize(to_string(tree))
      key = hashlib.blake2b(bytes(ids), digest_size=16).digest()
      ok = key not in seen
    if not ok:
      failures += 1
      if failures >= max_failures:
        raise DataError(f"listops: no new example in {max_failures} draws after {i} of {n}; "
                        f"widen min_length/max_length ({min_length}-{max_length}) or lower n")
      continue
    failures = 0
    seen.add(key)
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
    labels[i] = evaluate(tree)
    i += 1
  return {"tokens": tokens, "lengths": lengths, "labels": labels}


SPLITS = ("train", "val", "test")


def _cache_paths(cache_dir, sizes, seed, min_length, max_length, max_depth, max_args):
  stem = (f"listops_v{CACHE_VERSION}_n{'-'.join(map(str, sizes))}_seed{seed}"
          f"_len{min_length}-{max_length}_depth{max_depth}_args{max_args}")
  return {s: os.path.join(cache_dir, f"{stem}_{s}.npz") for s in SPLITS}


def build_splits(cache_dir, *, sizes=(96000, 2000, 2000), seed=0, min_length=500,
                 max_length=2000, max_depth=10, max_args=10) -> dict[str, dict]:
  """{"train", "val", "test"} splits, generated once and cached as .npz in cache_dir.

  All splits come from one pool of unique examples, cut in order, so they are disjoint.
  """
  sizes = tuple(sizes)
  if len(sizes) != 3 or any(not isinstance(s, (int, np.integer)) or s < 0 for s in sizes):
    raise ValueError(f"sizes must be three non-negative ints (train, val, test), got {sizes}")
  _check(min_length, max_length, max_depth, max_args)
  paths = _cache_paths(cache_dir, sizes, seed, min_length, max_length, max_depth, max_args)

  @functools.cache   # generated once, and only if some split is not cached
  def pool():
    start = time.time()
    data = generate(sum(sizes), seed, min_length=min_length, max_length=max_length,
                    max_depth=max_depth, max_args=max_args)
    print(f"listops: generated {sum(sizes)} examples of {min_length}-{max_length} tokens in "
          f"{time.time() - start:.1f}s", file=sys.stderr)
    return data

  out = {}
  bounds = np.cumsum((0,) + sizes)
  for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
    out[split] = cache.load_or_build(paths[split],
                                     lambda: {k: v[lo:hi] for k, v in pool().items()})
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description="Generate and cache the ListOps splits.")
  parser.add_argument("--cache_dir", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min_length", type=int, default=500)
  parser.add_argument("--max_length", type=int, default=2000)
  args = parser.parse_args(argv)
  splits = build_splits(args.cache_dir, seed=args.seed, min_length=args.min_length,
                        max_length=args.max_length)
  for name, split in splits.items():
    counts = np.bincount(split["labels"], minlength=NUM_CLASSES)
    print(f"{name}: {len(split['labels'])} examples, mean length "
          f"{split['lengths'].mean():.0f}, label counts {counts.tolist()}")


if __name__ == "__main__":
  main()
