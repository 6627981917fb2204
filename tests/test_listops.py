import os
import random

import numpy as np
import pytest

from substrax.data import DataError, listops

SMALL = dict(min_length=20, max_length=200)


@pytest.fixture(scope="module")
def small():
  return listops.generate(300, seed=0, **SMALL)


def test_vocab():
  assert listops.VOCAB_SIZE == len(listops.VOCAB) == 16
  assert listops.VOCAB[0] == "<pad>"
  assert listops.VOCAB[1:11] == tuple("0123456789")
  assert listops.VOCAB[11:] == ("[MAX", "[MIN", "[MED", "[SM", "X")
  assert set(listops.OPERATORS) == {"MIN", "MAX", "MED", "SM"}


@pytest.mark.parametrize("source, value", [
    ("( [MAX 2 9 ( [MIN 4 7 ] ) 0 ] )", 9),
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 5 [MAX 1 8 ] 3 ]", 3),
    ("[MED 1 2 4 9 ]", 3),        # even count: median 3.0
    ("[MED 1 2 ]", 1),            # median 1.5 floors to 1
    ("[MED 7 0 9 ]", 7),
    ("[SM 9 8 7 ]", 4),           # 24 % 10
    ("[SM [MAX 9 1 ] [MED 5 6 ] 3 ]", 7),   # 9 + 5 + 3 = 17
    ("4", 4),
])
def test_hand_written_values(source, value):
  assert listops.reference_value(source) == value


def test_evaluate_hand_written_trees():
  tree = ("MAX", (2, 9, ("MIN", (4, 7)), 0))
  assert listops.to_string(tree) == "( [MAX 2 9 ( [MIN 4 7 ] ) 0 ] )"
  assert listops.evaluate(tree) == 9
  assert listops.evaluate(("MED", (1, 2, 4, 9))) == 3
  assert listops.evaluate(("MED", (1, 2))) == 1
  assert listops.evaluate(("SM", (9, 8, 7))) == 4


def test_median_matches_numpy():
  rng = random.Random(1)
  for _ in range(500):
    values = [rng.randrange(10) for _ in range(rng.randint(2, 10))]
    assert listops.evaluate(("MED", tuple(values))) == int(np.median(values))


@pytest.mark.parametrize("source", ["[MAX 1 2", "[MAX ]", "1 2", "[MAX 1 ] ]", "[FOO 1 ]", ""])
def test_reference_rejects_malformed(source):
  with pytest.raises(ValueError):
    listops.reference_value(source)


def test_tree_labels_match_reference():
  rng = random.Random(7)
  for _ in range(300):
    tree = listops.generate_tree(rng, max_depth=6)
    assert isinstance(tree, tuple)   # the root is always an operator
    source = listops.to_string(tree)
    assert listops.evaluate(tree) == listops.reference_value(source)


def test_generated_labels_match_reference(small):
  for row, n, label in zip(small["tokens"], small["lengths"], small["labels"]):
    assert listops.reference_value(listops.decode(row[:n])) == label


def test_tokenize():
  ids = listops.tokenize("( [MAX 2 9 ( [MIN 4 7 ] ) 0 ] )")
  assert [listops.VOCAB[i] for i in ids] == ["[MAX", "2", "9", "[MIN", "4", "7", "X", "0", "X"]
  assert ids == [11, 3, 10, 12, 5, 8, 15, 1, 15]
  with pytest.raises(ValueError):
    listops.tokenize("[MAX 1 A ]")


def test_generated_arrays(small):
  tokens, lengths, labels = small["tokens"], small["lengths"], small["labels"]
  assert tokens.shape == (300, 200) and tokens.dtype == np.uint8
  assert lengths.dtype == np.int32 and labels.dtype == np.int32
  assert np.all((lengths >= 20) & (lengths <= 200))
  assert np.all((labels >= 0) & (labels < listops.NUM_CLASSES))
  assert tokens.max() < listops.VOCAB_SIZE
  pos = np.arange(tokens.shape[1])
  np.testing.assert_array_equal(tokens != 0, pos < lengths[:, None])   # 0 only as padding
  assert np.all(np.isin(tokens[:, 0], [11, 12, 13, 14]))   # root operator first
  assert np.all(tokens[np.arange(300), lengths - 1] == 15)   # and its `X` last
  assert len({row.tobytes() for row in tokens}) == 300   # unique


def test_decode_round_trips():
  # decode() gives LRA symbols; with `X` back to `]` it is a source string again.
  data = listops.generate(20, seed=3, **SMALL)
  for row, n in zip(data["tokens"], data["lengths"]):
    source = listops.decode(row[:n])
    assert listops.tokenize(source.replace("X", "]")) == row[:n].tolist()


def test_deterministic_per_seed(small):
  again = listops.generate(300, seed=0, **SMALL)
  other = listops.generate(300, seed=1, **SMALL)
  for k in small:
    np.testing.assert_array_equal(small[k], again[k])
  assert not np.array_equal(small["tokens"], other["tokens"])


def test_uniqueness_in_a_narrow_window():
  # Only 4 ops x 100 digit pairs = 400 trees of 4 tokens exist, so duplicates are frequent.
  data = listops.generate(150, seed=0, min_length=4, max_length=4, max_args=2)
  assert len({row.tobytes() for row in data["tokens"]}) == 150
  with pytest.raises(DataError, match="no new example"):
    listops.generate(401, seed=0, min_length=4, max_length=4, max_args=2, max_failures=20_000)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n=-1), "n"),
    (dict(min_length=300, max_length=200), "min_length"),
    (dict(min_length=0), "min_length"),
    (dict(max_length=3, min_length=1), "max_length"),
    (dict(max_depth=1), "max_depth"),
    (dict(max_args=1), "max_args"),
    (dict(max_depth=2, max_args=3, min_length=10, max_length=20), "min_length"),
])
def test_bad_arguments(kwargs, name):
  args = dict(n=5, seed=0, **SMALL)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    listops.generate(**args)


def test_build_splits_disjoint_and_cached(tmp_path, monkeypatch, capsys):
  kw = dict(sizes=(40, 10, 10), seed=0, **SMALL)
  splits = listops.build_splits(str(tmp_path), **kw)
  assert "generated 60 examples" in capsys.readouterr().err
  assert [len(splits[s]["labels"]) for s in ("train", "val", "test")] == [40, 10, 10]
  rows = [{r.tobytes() for r in splits[s]["tokens"]} for s in ("train", "val", "test")]
  assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 3 and not any(f.startswith(".tmp") for f in files)

  def fail(*args, **kwargs):
    raise AssertionError("regenerated despite the cache")
  monkeypatch.setattr(listops, "generate", fail)
  again = listops.build_splits(str(tmp_path), **kw)
  for s in splits:
    for k in splits[s]:
      np.testing.assert_array_equal(splits[s][k], again[s][k])
  assert capsys.readouterr().err == ""
  monkeypatch.undo()

  # Any parameter change gets its own files instead of reusing these.
  listops.build_splits(str(tmp_path), **dict(kw, seed=1))
  listops.build_splits(str(tmp_path), **dict(kw, max_depth=8))
  assert len(os.listdir(tmp_path)) == 9


def test_build_splits_bad_sizes(tmp_path):
  with pytest.raises(ValueError, match="sizes"):
    listops.build_splits(str(tmp_path), sizes=(10, 5))
  with pytest.raises(ValueError, match="sizes"):
    listops.build_splits(str(tmp_path), sizes=(10, -1, 5))
