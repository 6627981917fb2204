import numpy as np
import pytest

from substrax.data import algorithmic, rasp, rasp_programs
from substrax.data.algorithmic import BOS, EOS, SEP, TASKS, encode
from substrax.data.rasp import S

PROGRAMS = rasp_programs.PROGRAMS


def _teacher_forced(program, task, prompt):
  """The answer greedy decoding gives, from one causal run on [BOS] prompt [SEP] answer [EOS]:
  if every prediction from SEP to the last answer symbol is the next token, decoding writes
  exactly that answer (and then EOS); otherwise None."""
  seq = encode(prompt, task.solve(prompt))
  start = len(prompt) + 1   # SEP
  pred = rasp.predict(program, seq)
  if pred[start:-1].tolist() != seq[start + 1:]:
    return None
  return [t - S for t in seq[start + 1:-1]]


def _passes(program, task, n, samples, seed):
  rng = np.random.default_rng(seed)
  for _ in range(samples):
    prompt = task.sample(rng, n)
    answer = _teacher_forced(program, task, prompt)
    if answer is None or not task.check(prompt, answer):
      return False
  return True


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_passes_checker_at_every_length_to_100(name):
  task = TASKS[name]
  failed = [n for n in range(1, min(100, task.max_n) + 1)
            if not _passes(PROGRAMS[name], task, n, samples=3, seed=n)]
  assert not failed, f"{name} fails at n = {failed}"


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_generate_equals_teacher_forcing(name):
  task, rng = TASKS[name], np.random.default_rng(1)
  for n in range(1, 13):
    prompt = task.sample(rng, n)
    answer = rasp.generate(PROGRAMS[name], encode(prompt), max_new=4 * n + 8)
    assert answer == _teacher_forced(PROGRAMS[name], task, prompt)
    assert task.check(prompt, answer)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_are_causal(name):
  task, rng = TASKS[name], np.random.default_rng(2)
  for _ in range(3):
    prompt = task.sample(rng, int(rng.integers(2, 10)))
    seq = np.array(encode(prompt, task.solve(prompt)))
    t = int(rng.integers(0, len(seq) - 1))
    changed = seq.copy()
    changed[t + 1:] = rng.integers(0, algorithmic.VOCAB, len(seq) - t - 1)
    np.testing.assert_array_equal(rasp.predict(PROGRAMS[name], seq)[:t + 1],
                                  rasp.predict(PROGRAMS[name], changed)[:t + 1])


def test_table_and_lengths():
  assert set(rasp_programs.RASP_L) == set(TASKS)
  assert {t for t, has in rasp_programs.RASP_L.items() if has} == set(PROGRAMS)
  for t in ("reverse", "copy_repeat", "parity", "add_forward", "add_reverse"):
    assert not rasp_programs.RASP_L[t]
  assert {t: rasp_programs.program_length(t) for t in PROGRAMS} == rasp_programs.LENGTH


# ------------------------------------------------------------------ primitives and library

X = np.array([BOS, 7, 5, 7, SEP, 9])   # tokens


def test_select_is_causal_and_compares_key_with_query():
  sel = rasp.select(X, X, "==")
  assert not np.triu(sel, 1).any()
  np.testing.assert_array_equal(sel[3], [0, 1, 0, 1, 0, 0])   # both 7s, up to position 3
  np.testing.assert_array_equal(rasp.select(X, X, "<")[3], [1, 0, 1, 0, 0, 0])   # key < 7
  np.testing.assert_array_equal(rasp.select(X, X, "true").sum(1), [1, 2, 3, 4, 5, 6])


def test_aggregate_reductions_and_default():
  sel = rasp.select(X, X, "==")
  values = np.array([0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(rasp.aggregate(sel, values, "mean"), [0, 1, 2, 2, 4, 5])
  none = rasp.select(X, rasp.full(X, 99), "==")
  np.testing.assert_array_equal(rasp.aggregate(none, values, "max", default=-1), [-1] * 6)
  lower = rasp.select(X, X, "<")
  np.testing.assert_array_equal(rasp.aggregate(lower, values, "max", default=-1),
                                [-1, 0, 0, 2, 0, 4])
  np.testing.assert_array_equal(rasp.aggregate(lower, values, "min", default=-1),
                                [-1, 0, 0, 0, 0, 0])
  assert rasp.kqv(X, X, values, "==", "max")[3] == 3


def test_counting_trick():
  bos = rasp.tok_map(X, lambda t: int(t == BOS))
  # Mean of is-BOS over the selected positions plus BOS is 1 / (count + 1).
  sel = rasp.select(X, X, "==")
  np.testing.assert_array_equal(rasp.sel_width(sel, bos), [0, 1, 1, 2, 1, 1])
  np.testing.assert_array_equal(rasp.sel_width(rasp.select(X, X, "true"), bos),
                                [0, 1, 2, 3, 4, 5])
  long = np.array([BOS] + [6] * 300)   # exact far beyond the lengths tested
  assert rasp.sel_width(rasp.select(long, long, "=="), (long == BOS).astype(int))[-1] == 300


def test_library():
  np.testing.assert_array_equal(rasp.shift_right(X, default=-1), [-1, BOS, 7, 5, 7, SEP])
  np.testing.assert_array_equal(rasp.seen(X, (X == SEP).astype(int)), [0, 0, 0, 0, 1, 1])
  bos, after_sep, prompt = rasp.parts(X)
  np.testing.assert_array_equal(bos, [1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(after_sep, [0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(prompt, [0, 1, 1, 1, 0, 0])
  # SEP gets the first prompt symbol, the first answer position the second.
  got = rasp.aligned(bos, after_sep, prompt, X, default=-1)
  assert got[4:].tolist() == [7, 5]
  x = np.array([BOS, 7, SEP, 8, 9])
  bos, after_sep, prompt = rasp.parts(x)
  assert rasp.aligned(bos, after_sep, prompt, x, default=-1)[2:].tolist() == [7, -1, -1]


def test_maps_are_tables_and_refuse_indices():
  assert rasp.seq_map(X, X, lambda a, b: a * 10 + b).tolist() == (X * 11).tolist()
  assert rasp.tok_map(X, lambda t: t + 1).tolist() == (X + 1).tolist()
  i = rasp.indices(X)
  with pytest.raises(TypeError):
    rasp.tok_map(i, lambda j: j + 1)
  previous = rasp.aggregate(rasp.select(i, i, "<"), i, "max", default=-1)
  with pytest.raises(TypeError):   # aggregated indices are still indices
    rasp.seq_map(previous, X, lambda j, t: j - 1)
  rasp.select(i, previous, "==")   # comparing them is allowed


def test_calls_counts_primitives():
  program = lambda x: rasp.tok_map(rasp.kqv(x, x, x, "==", "max"), lambda t: t)
  assert rasp.calls(program, X) == 3


def test_generate_stops_at_eos():
  program = lambda x: rasp.tok_map(x, lambda t: EOS if t == S + 2 else S + 2)
  assert rasp.generate(program, [BOS, S, SEP], max_new=10) == [2]


# ------------------------------------------------------------------ the test can fail

def _sort_without_repeats(x):
  """sort, but always the next larger symbol: wrong once the prompt repeats a symbol."""
  bos, after_sep, prompt = rasp.parts(x)
  in_prompt = rasp.seq_map(x, prompt, lambda t, p: t if p else -1)
  return rasp.aggregate(rasp.select(in_prompt, x, ">"), in_prompt, "min", default=EOS)


def _count_from_a_plus_1(x):
  return rasp.seq_map(PROGRAMS["count"](x), x, lambda p, t: p + 1 if t == SEP else p)


def test_wrong_programs_fail():
  sort, count = TASKS["sort"], TASKS["count"]
  assert _passes(_sort_without_repeats, sort, 1, samples=3, seed=0)
  assert not _passes(_sort_without_repeats, sort, 40, samples=3, seed=0)
  assert not _passes(_count_from_a_plus_1, count, 5, samples=3, seed=0)
  # The checker, not only teacher forcing, rejects the wrong answer.
  assert not sort.check([3, 3, 1], [1, 3])
  assert rasp.generate(_sort_without_repeats, encode([3, 3, 1]), max_new=10) == [1, 3]
