import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.data import DataError, cache, icl, listops


@pytest.mark.parametrize("fc", icl.FUNCTION_CLASSES)
def test_shapes_determinism_and_truncation(fc):
  spec = icl.Spec(fc, n_dims=6, n_points=9, noise_std=0.5, sparsity=2)
  a = icl.sample(spec, jax.random.key(3), 32, dims_active=4)
  b = icl.sample(spec, jax.random.key(3), 32, dims_active=4)
  c = icl.sample(spec, jax.random.key(4), 32, dims_active=4)
  assert a["xs"].shape == (32, 9, 6) and a["ys"].shape == (32, 9)
  np.testing.assert_array_equal(a["ys"], b["ys"])
  assert not np.array_equal(a["ys"], c["ys"])
  np.testing.assert_array_equal(a["xs"][..., 4:], 0.0)
  assert np.all(np.isfinite(a["ys"]))


def test_classification_labels_are_signs():
  ys = icl.sample(icl.Spec("linear_classification", 5, 11), jax.random.key(0), 64)["ys"]
  assert set(np.unique(ys)) <= {-1.0, 1.0}


def test_sparse_linear_uses_exactly_s_coordinates():
  spec = icl.Spec("sparse_linear", n_dims=8, n_points=40, sparsity=3)
  b = icl.sample(spec, jax.random.key(1), 16)
  w = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(b["xs"], b["ys"])])
  assert np.all((np.abs(w) > 1e-4).sum(-1) == 3)


def test_skewed_covariance_spectrum_and_scale():
  spec = icl.Spec("linear", n_dims=5, n_points=50, covariance="skewed")
  x = np.asarray(icl.sample(spec, jax.random.key(0), 4000)["xs"]).reshape(-1, 5)
  eig = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
  np.testing.assert_allclose(eig / eig[0], 1 / np.arange(1, 6) ** 2, rtol=0.08)
  np.testing.assert_allclose(np.mean(np.sum(x**2, -1)), 5.0, rtol=0.03)


def test_curriculum_schedule():
  spec = icl.Spec("linear", n_dims=20, n_points=41, dims_start=5, points_start=11, interval=2000)
  for step, dims, points in [(0, 5, 11), (1999, 5, 11), (2000, 6, 13), (30000, 20, 41),
                             (10**6, 20, 41)]:
    d, p = icl.curriculum(spec, jnp.int32(step))
    assert (int(d), int(p)) == (dims, points), step
  assert tuple(map(int, icl.curriculum(icl.Spec("linear", 5, 11), 0))) == (5, 11)


# ------------------------------------------------------------------------- the dataset cache

LISTOPS = dict(sizes=(8, 2, 2), min_length=10, max_length=40)


def test_cache_dir_resolves_config_then_environment_then_home(monkeypatch):
  monkeypatch.setenv("SUBSTRAX_DATA", "/data/sx")
  assert cache.resolve("~/mine") == os.path.expanduser("~/mine")
  assert cache.resolve("") == "/data/sx"
  monkeypatch.delenv("SUBSTRAX_DATA")
  assert cache.resolve("") == os.path.expanduser("~/.cache/substrax")


def _flip_array_bytes(b):
  """Inverts 8 bytes of the first array's data: the zip's CRC check fails on reading."""
  i = b.index(b"\x93NUMPY") + 128   # past the .npy header
  return b[:i] + bytes(x ^ 0xFF for x in b[i:i + 8]) + b[i + 8:]


@pytest.mark.parametrize("damage", [
    lambda b: b[:len(b) // 2],   # a crash or a full disk mid-write
    lambda b: b"",
    lambda b: b[:-30],           # the zip directory cut short
    _flip_array_bytes,           # a bad copy
])
def test_unreadable_cache_file_is_rebuilt_with_one_warning(tmp_path, capsys, damage):
  first = listops.build_splits(str(tmp_path), **LISTOPS)
  capsys.readouterr()
  path = next(str(p) for p in tmp_path.iterdir() if p.name.endswith("_val.npz"))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(damage(data))
  again = listops.build_splits(str(tmp_path), **LISTOPS)
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and err[1].startswith("listops: generated"), err
  assert err[0].startswith(f"substrax: warning: the cache file {path} is unreadable (")
  assert err[0].endswith("); it is rebuilt")
  for split in first:
    for k in first[split]:
      np.testing.assert_array_equal(first[split][k], again[split][k])
  with np.load(path) as f:   # readable again, with the same arrays
    np.testing.assert_array_equal(f["tokens"], first["val"]["tokens"])
  listops.build_splits(str(tmp_path), **LISTOPS)
  assert capsys.readouterr().err == ""


def test_cache_dir_that_is_a_file_is_one_data_error(tmp_path):
  path = tmp_path / "cache"
  path.write_text("not a directory")
  where = re.escape(str(path))
  with pytest.raises(DataError, match=f"^data.cache_dir: {where} is a file") as err:
    listops.build_splits(str(path), **LISTOPS)
  assert "\n" not in str(err.value)
  with pytest.raises(DataError, match=f"^data.cache_dir: cannot write to {where}/sub "):
    listops.build_splits(str(path / "sub"), **LISTOPS)


def test_cache_write_failure_is_one_data_error_and_leaves_nothing(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(np, "savez", full)
  with pytest.raises(DataError, match="^data.cache_dir: cannot write .*No space left"):
    cache.load_or_build(str(tmp_path / "x.npz"), lambda: {"a": np.zeros(3)})
  assert os.listdir(tmp_path) == []
