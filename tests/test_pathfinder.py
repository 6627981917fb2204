import os

import numpy as np
import pytest

from substrax.data import pathfinder


@pytest.fixture(scope="module")
def hard32():
  return pathfinder.generate(200, 0)


def test_labels_match_flood_fill(hard32):
  got = [pathfinder.connected(image) for image in hard32["images"]]
  np.testing.assert_array_equal(np.array(got, np.int32), hard32["labels"])


@pytest.mark.parametrize("size,difficulty,n", [(32, "easy", 40), (32, "intermediate", 20),
                                               (64, "hard", 16), (16, "hard", 20)])
def test_labels_match_flood_fill_other_settings(size, difficulty, n):
  batch = pathfinder.generate(n, 1, size=size, difficulty=difficulty)
  assert batch["images"].shape == (n, size, size)
  for image, label in zip(batch["images"], batch["labels"]):
    assert pathfinder.connected(image) == bool(label)


def test_image_format(hard32):
  images, labels = hard32["images"], hard32["labels"]
  assert images.dtype == np.uint8 and images.shape == (200, 32, 32)
  assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1}
  # Nothing on the 1 px border: every path and marker lies inside it.
  assert not images[:, [0, -1]].any() and not images[:, :, [0, -1]].any()
  for image in images:
    pathfinder.connected(image)   # raises unless there are exactly two 255 blobs
    assert (image == 255).sum() == 2 * 9   # two 3x3 markers at 32 px
    values = np.unique(image[(image > 0) & (image < 255)])
    assert len(values) == 1 and 120 <= values[0] <= 220   # one path value per image


def test_classes_balanced(hard32):
  assert hard32["labels"].sum() == 100
  odd = pathfinder.generate(51, 3, difficulty="easy")["labels"]
  assert odd.sum() == 25 and abs(odd.mean() - 0.5) <= 0.02


def test_deterministic_per_seed():
  a, b, c = (pathfinder.generate(12, s, difficulty="easy") for s in (5, 5, 6))
  for key in ("images", "labels"):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["images"], c["images"])


def test_scaled_parameters():
  assert pathfinder.DIFFICULTIES == {"easy": 6, "intermediate": 9, "hard": 14}
  geometry = {s: pathfinder.scene_params(s) for s in (16, 32, 64, 128)}
  assert [g.contour_length for g in geometry.values()] == [4, 14, 21, 34]
  assert [g.paddle_length for g in geometry.values()] == [2, 2, 3, 4]
  assert geometry[32].distractor_length == 4 and geometry[32].num_distractors == 5
  assert pathfinder.scene_params(32, contour_length=9) == pathfinder.scene_params(
      32, "intermediate")


def _blob(image, y, x):
  image[y - 1:y + 2, x - 1:x + 2] = 255


def test_connected_follows_dashes_across_one_pixel_gaps():
  image = np.zeros((12, 24), np.uint8)
  _blob(image, 5, 2)
  for x in (5, 8, 11, 14, 17):   # 2 px dashes, 1 px gaps, also next to both markers
    image[5, x:x + 2] = 150
  _blob(image, 5, 21)
  assert pathfinder.connected(image)
  diagonal = np.zeros((16, 16), np.uint8)
  _blob(diagonal, 2, 2)
  for i in (5, 8):
    diagonal[i, i] = diagonal[i + 1, i + 1] = 150
  _blob(diagonal, 12, 12)
  assert pathfinder.connected(diagonal)
  image[5, 14:16] = 0   # a 4 px hole cuts the path
  assert not pathfinder.connected(image)


@pytest.mark.parametrize("row_b,joined", [(5, False), (4, True)])
def test_connected_needs_paths_closer_than_three_pixels(row_b, joined):
  image = np.zeros((10, 22), np.uint8)
  _blob(image, 2, 2)
  image[2, 4:13] = 150   # path A
  image[row_b, 6:17] = 150   # path B, overlapping A's columns 3 rows (or 2) below it
  _blob(image, row_b, 18)
  assert pathfinder.connected(image) == joined


def test_connected_rejects_other_marker_counts():
  image = np.zeros((12, 12), np.uint8)
  _blob(image, 3, 3)
  with pytest.raises(ValueError, match="two marker blobs"):
    pathfinder.connected(image)
  _blob(image, 8, 8)
  image[1, 10] = 255
  with pytest.raises(ValueError, match="two marker blobs"):
    pathfinder.connected(image)


def test_build_splits_caches(tmp_path, capsys, monkeypatch):
  kwargs = dict(sizes=(20, 10, 12), seed=1, difficulty="easy")
  first = pathfinder.build_splits(str(tmp_path), **kwargs)
  assert len(capsys.readouterr().err.strip().splitlines()) == 3   # one line per split
  names = sorted(os.listdir(tmp_path))
  assert len(names) == 3 and all(n.endswith(".npz") and "easy" in n and "seed1" in n
                                 for n in names)
  assert first["train"]["images"].shape == (20, 32, 32)
  assert [first[s]["labels"].sum() for s in pathfinder.SPLITS] == [10, 5, 6]
  assert not np.array_equal(first["train"]["images"][:10], first["val"]["images"])

  def no_rendering(*args):
    raise AssertionError("generated again instead of loading the cache")
  monkeypatch.setattr(pathfinder, "_render_chunks", no_rendering)
  again = pathfinder.build_splits(str(tmp_path), **kwargs)
  assert capsys.readouterr().err == ""
  for split in pathfinder.SPLITS:
    for key in ("images", "labels"):
      np.testing.assert_array_equal(first[split][key], again[split][key])


def test_build_splits_same_with_worker_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(pathfinder, "_CHUNK", 8)   # several chunks per split
  kwargs = dict(sizes=(19, 4, 4), seed=2, difficulty="easy")
  one = pathfinder.build_splits(str(tmp_path / "one"), workers=1, **kwargs)
  two = pathfinder.build_splits(str(tmp_path / "two"), workers=2, **kwargs)
  for split in pathfinder.SPLITS:
    np.testing.assert_array_equal(one[split]["images"], two[split]["images"])
  assert one["train"]["labels"].sum() == 9


@pytest.mark.parametrize("kwargs,name", [
    (dict(n=1), "n"),
    (dict(difficulty="impossible"), "difficulty"),
    (dict(size=15), "size"),
    (dict(contour_length=2), "contour_length"),
    (dict(seed=-1), "seed"),
])
def test_generate_bad_arguments(kwargs, name):
  args = dict(n=4, seed=0) | kwargs
  with pytest.raises(ValueError, match=name):
    pathfinder.generate(args.pop("n"), args.pop("seed"), **args)


@pytest.mark.parametrize("kwargs,name", [
    (dict(sizes=(10, 1, 10)), "sizes"),
    (dict(sizes=(10, 10)), "sizes"),
    (dict(seed=-1), "seed"),
    (dict(workers=0), "workers"),
    (dict(difficulty="x"), "difficulty"),
])
def test_build_splits_bad_arguments(tmp_path, kwargs, name):
  with pytest.raises(ValueError, match=name):
    pathfinder.build_splits(str(tmp_path), **kwargs)
  assert not os.listdir(tmp_path)
