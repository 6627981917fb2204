"""LRA Image/Text adapters, and `load` through a real `tfds.data_source` on tiny datasets."""
import glob
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

from substrax.data import DataError
from substrax.data import tfds as lra


def test_grey_matches_tf_on_known_pixels():
  # tf.image.rgb_to_grayscale: floor(luma / 255 * 255.5) in float32.
  rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                  [10, 200, 30]], np.uint8)
  np.testing.assert_array_equal(lra.grey(rgb), [0, 255, 76, 149, 29, 124])


def test_cifar10_grey_shapes_dtypes_and_order(monkeypatch):
  monkeypatch.setattr(lra, "CHUNK", 3)   # several chunks, the last one partial
  records = lra.random_records("cifar10", 7)
  out = lra.cifar10_grey(records)
  assert out["tokens"].shape == (7, 1024) and out["tokens"].dtype == np.uint8
  assert out["labels"].dtype == np.int32
  np.testing.assert_array_equal(out["labels"], [0, 1, 2, 3, 4, 5, 6])
  # Row-major flattening: token 32 * row + col is pixel (row, col).
  np.testing.assert_array_equal(out["tokens"][5].reshape(32, 32), lra.grey(records[5]["image"]))
  # A source without __getitems__ (a list) is read one index at a time, in the same order.
  again = lra.cifar10_grey(lra._records(records))
  np.testing.assert_array_equal(again["tokens"], out["tokens"])
  empty = lra.cifar10_grey([])
  assert empty["tokens"].shape == (0, 1024) and empty["labels"].shape == (0,)


def test_imdb_bytes_offset_truncation_padding(monkeypatch):
  monkeypatch.setattr(lra, "CHUNK", 2)
  records = [{"text": b"ab", "label": 1}, {"text": "h\u00e9", "label": 0},
             {"text": b"\x00\xff" * 4, "label": 1}, {"text": b"", "label": 0}]
  out = lra.imdb_bytes(records, max_length=5)
  assert out["tokens"].shape == (4, 5) and out["tokens"].dtype == np.int32
  np.testing.assert_array_equal(out["tokens"], [[98, 99, 0, 0, 0],
                                                [105, 0xC3 + 1, 0xA9 + 1, 0, 0],
                                                [1, 256, 1, 256, 1],
                                                [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["lengths"], [2, 3, 5, 0])
  np.testing.assert_array_equal(out["labels"], [1, 0, 1, 0])
  assert out["lengths"].dtype == out["labels"].dtype == np.int32
  assert out["tokens"].max() < lra.TEXT_VOCAB


def test_load_without_tfds_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)   # makes the import fail
  with pytest.raises(ImportError, match=r"pip install 'substrax\[tfds\]'"):
    lra.load("cifar10", "test", "/nowhere")


def test_load_checks_arguments():
  with pytest.raises(ValueError, match="unknown dataset"):
    lra.load("mnist", "test")
  with pytest.raises(ValueError, match="max_length"):
    lra.load("imdb_reviews", "test")


def test_load_cifar10_through_data_source(tfds_dir):
  train = lra.load("cifar10", "train[:90%]", tfds_dir)
  val = lra.load("cifar10", "train[90%:]", tfds_dir)
  test = lra.load("cifar10", "test", tfds_dir)
  assert train["tokens"].shape == (18, 1024) and val["tokens"].shape == (2, 1024)
  assert test["tokens"].shape == (5, 1024) and train["tokens"].dtype == np.uint8
  # The prepared files are shuffled; compare as a set of (label, image) pairs.
  want = lra.cifar10_grey(lra.random_records("cifar10", 20))
  got = {(l, t.tobytes()) for l, t in zip(np.r_[train["labels"], val["labels"]],
                                          np.r_[train["tokens"], val["tokens"]])}
  assert got == {(l, t.tobytes()) for l, t in zip(want["labels"], want["tokens"])}


def test_load_imdb_through_data_source(tfds_dir):
  out = lra.load("imdb_reviews", "train", tfds_dir, max_length=7)
  assert out["tokens"].shape == (18, 7) and out["tokens"].dtype == np.int32
  # "hé " is 4 bytes; 1, 2 and 3 repeats give 4, 8 and 12 bytes before truncation.
  assert sorted(out["lengths"]) == [4] * 6 + [7] * 12
  row = out["tokens"][np.argmin(out["lengths"])]
  np.testing.assert_array_equal(row, [ord("h") + 1, 0xC3 + 1, 0xA9 + 1, ord(" ") + 1, 0, 0, 0])
  assert sorted(out["labels"]) == [0] * 9 + [1] * 9


@pytest.fixture
def scratch(tmp_path_factory, monkeypatch):
  """An empty directory that Python's temporary files go to: what TFDS leaves there."""
  path = tmp_path_factory.mktemp("scratch")
  monkeypatch.setattr(tempfile, "tempdir", str(path))
  return path


def test_random_stand_ins_load_as_the_real_schema(tmp_path, scratch):
  # What compile_presets.py compiles the LRA Text and Image presets on, offline.
  for name in lra.NAMES:
    lra.write_prepared(name, str(tmp_path), {
        "train": lra.random_records(name, 12, 0, text_bytes=9),
        "test": lra.random_records(name, 3, 1, text_bytes=9)})
  text = lra.load("imdb_reviews", "train", str(tmp_path), max_length=16)
  assert text["tokens"].shape == (12, 16) and set(text["lengths"]) == {9}
  assert text["tokens"][:, :9].min() >= 33 and not text["tokens"][:, 9:].any()
  image = lra.load("cifar10", "test", str(tmp_path))
  assert image["tokens"].shape == (3, 1024) and image["tokens"].std() > 30
  assert sorted(image["labels"]) == [0, 1, 2]
  with pytest.raises(ValueError, match="unknown dataset"):
    lra.random_records("mnist", 1)
  with pytest.raises(ValueError, match="already prepared"):   # never a silent no-op
    lra.write_prepared("cifar10", str(tmp_path), {"train": lra.random_records("cifar10", 2)})
  assert os.listdir(scratch) == []   # no empty directory per new builder (TFDS 4.9 leaves one)


def test_load_missing_dataset_is_one_clear_error(tfds_dir, tmp_path, scratch):
  with pytest.raises(DataError) as err:
    lra.load("imdb_reviews", "test", str(tmp_path), max_length=10)
  message = str(err.value)
  assert "imdb_reviews" in message and str(tmp_path) in message and "tfds build" in message
  assert "\n" not in message
  assert os.listdir(scratch) == []
  with pytest.raises(ValueError, match="split"):   # a prepared dataset's errors pass through
    lra.load("cifar10", "validation", tfds_dir)


def _truncate(path, size):
  with open(path, "r+b") as f:
    f.truncate(size)


@pytest.mark.parametrize("damage, says", [
    (lambda shard, info: os.remove(shard), "its files cannot be read"),
    (lambda shard, info: _truncate(shard, 3000), "its files cannot be read"),
    (lambda shard, info: _truncate(shard, os.path.getsize(shard) // 2), "cannot be read"),
    (lambda shard, info: _truncate(info, 100), "cannot be opened"),
    (lambda shard, info: os.remove(info), "is not prepared"),
])
def test_half_built_dataset_is_one_data_error(tfds_dir, tmp_path, damage, says):
  data_dir = str(tmp_path / "tfds")
  shutil.copytree(tfds_dir, data_dir)   # the fixture's copy is shared by other tests
  version = os.path.join(data_dir, "cifar10", "3.0.2")
  damage(glob.glob(os.path.join(version, "cifar10-train.array_record-*"))[0],
         os.path.join(version, "dataset_info.json"))
  with pytest.raises(DataError, match=says) as err:
    lra.load("cifar10", "train", data_dir)
  message = str(err.value)
  assert message.startswith("TFDS dataset 'cifar10'") and data_dir in message
  assert "\n" not in message
