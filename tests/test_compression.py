"""models/compression.py: the quantization error bounds, the int4 and 2-bit packings, the 2:4
pattern and fit of the dense x sparse product, exact full-rank SVD, and bytes on disk against
the accounting formulas. numpy only, no training: a few seconds.
"""
import zipfile

import numpy as np
import pytest

from substrax.models import compression as C


def _blocky(rng, size, block):
  """Values whose magnitude changes by orders of magnitude from block to block, so that one
  scale per tensor would not meet the per-block bounds."""
  mags = 10.0 ** rng.uniform(-3, 2, size=-(-size // block))
  return (rng.normal(size=size) * np.repeat(mags, block)[:size]).astype(np.float32)


def test_int16_is_as_precise_as_float16():
  rng = np.random.default_rng(0)
  w = _blocky(rng, 1000, 64)                # 1000 = 15 blocks of 64 and a padded one of 40
  q, s = C.quantize(w, 16, 64)
  w_hat = C.dequantize(q, s, w.shape)
  err = np.abs(w_hat - w)
  blocks = np.pad(w, (0, -w.size % 64)).reshape(-1, 64)
  block_err = np.pad(err, (0, -w.size % 64)).reshape(-1, 64).max(axis=1)
  assert np.all(block_err <= np.abs(blocks).max(axis=1) * 2.0 ** -11)
  fp16_err = np.abs(w.astype(np.float16).astype(np.float32) - w)
  assert err.max() <= fp16_err.max()


def test_int8_error_is_at_most_half_a_step():
  rng = np.random.default_rng(1)
  w = _blocky(rng, 777, 64)
  q, s = C.quantize(w, 8, 64)
  assert q.dtype == np.int8 and q.shape == (13, 64) and s.shape == (13,)
  assert np.all(np.abs(q).max(axis=1) == 127)        # each block's largest value hits the end
  step = np.repeat(s, 64)[:w.size]
  err = np.abs(C.dequantize(q, s, w.shape) - w)
  assert np.all(err <= step / 2 * (1 + 1e-5))
  assert np.max(err / step) > 0.45                   # and the bound is nearly attained


def test_int4_packing_round_trips():
  rng = np.random.default_rng(2)
  q = rng.integers(-8, 8, size=101).astype(np.int8)  # odd: the last byte is half used
  packed = C.pack_int4(q)
  assert packed.dtype == np.uint8 and packed.size == 51
  np.testing.assert_array_equal(C.unpack_int4(packed, q.size), q)
  q4, _ = C.quantize(rng.normal(size=(9, 7)), 4, 32)
  assert np.abs(q4).max() == 7
  np.testing.assert_array_equal(C.unpack_int4(C.pack_int4(q4), q4.size).reshape(q4.shape), q4)
  idx = rng.integers(0, 4, size=103).astype(np.uint8)
  np.testing.assert_array_equal(C.unpack_2bit(C.pack_2bit(idx), idx.size), idx)
  assert C.pack_2bit(idx).size == 26


def test_block_padding_and_per_tensor():
  w = np.arange(1, 71, dtype=np.float32).reshape(7, 10)   # 70 = 64 + a last block of 6
  q, s = C.quantize(w, 8, 64)
  assert q.shape == (2, 64)
  np.testing.assert_allclose(s, [64 / 127, 70 / 127], rtol=1e-7)   # the padding adds nothing
  np.testing.assert_array_equal(q[1, 6:], 0)
  w_hat = C.dequantize(q, s, w.shape)
  assert w_hat.shape == (7, 10) and np.abs(w_hat - w).max() <= 70 / 127 / 2 * (1 + 1e-6)
  q, s = C.quantize(w, 4, None)
  assert q.shape == (1, 70) and s.shape == (1,) and s[0] == np.float32(70 / 7)
  zeros, scale = C.quantize(np.zeros((3, 5)), 8, 4)   # all-zero blocks: scale 0, values 0
  assert np.all(scale == 0) and np.all(C.dequantize(zeros, scale, (3, 5)) == 0)


def test_svd_at_full_rank_is_exact():
  w = np.random.default_rng(3).normal(size=(20, 30))
  u, v = C.svd_factor(w, 20)
  assert np.linalg.norm(u.astype(np.float64) @ v - w) / np.linalg.norm(w) < 1e-6
  u, v = C.svd_factor(w, 10)
  assert np.linalg.norm(u.astype(np.float64) @ v - w) / np.linalg.norm(w) > 0.3


def test_ds_keeps_two_of_every_four():
  w = np.random.default_rng(4).normal(size=(48, 64))
  d, values, index = C.ds_factor(w, 16, iters=5)
  assert d.shape == (48, 16) and values.shape == index.shape == (4, 2, 64)
  assert index.max() <= 3 and np.all(index[:, 0] < index[:, 1])
  s = C.ds_dense(values, index)
  assert np.all((s.reshape(4, 4, 64) != 0).sum(axis=1) <= 2)
  # and D S is the least-squares fit: a dense rank-16 truncation is better, a rank-8 one worse
  err = np.linalg.norm(w - d.astype(np.float64) @ s) / np.linalg.norm(w)
  rank = lambda r: np.linalg.norm(w - np.float64(C.svd_factor(w, r)[0]) @ C.svd_factor(w, r)[1])
  assert rank(16) / np.linalg.norm(w) < err < rank(8) / np.linalg.norm(w)


def test_ds_steps_are_least_squares():
  """The kept values of S are each column's least squares on its support; D is least squares
  given S (the residual is orthogonal to the rows of S)."""
  rng = np.random.default_rng(8)
  w, d = rng.normal(size=(32, 40)), rng.normal(size=(32, 8))
  index = np.sort(np.argsort(rng.random((2, 4, 40)), axis=1)[:, :2], axis=1)
  values = C._refit(d, w, index)
  rows = C._rows(index)
  for j in range(40):
    np.testing.assert_allclose(values[:, :, j].reshape(-1),
                               np.linalg.lstsq(d[:, rows[j]], w[:, j], rcond=None)[0], atol=1e-9)
  d, values, index = C.ds_factor(w, 8, iters=4)
  s = C.ds_dense(values, index)
  residual = w - d.astype(np.float64) @ s
  assert np.abs(residual @ s.T).max() < 1e-4 * np.abs(w @ s.T).max()


def test_ds_recovers_a_planted_product_that_svd_cannot():
  """W = D0 S0 exactly, S0 random 2:4, D0 orthogonal atoms of distinct norms (so that the SVD
  start already points at them; from a generic D0 the fit stalls: see ds_factor)."""
  rng = np.random.default_rng(5)
  m, n, k = 64, 256, 8
  d0 = np.linalg.qr(rng.normal(size=(m, k)))[0] * 2.0 ** (-np.arange(k) / 2)
  index = np.sort(np.argsort(rng.random((k // 4, 4, n)), axis=1)[:, :2], axis=1)
  w = d0 @ C.ds_dense(rng.normal(size=(k // 4, 2, n)), index)
  d, values, idx = C.ds_factor(w, k)
  err = np.linalg.norm(w - d.astype(np.float64) @ C.ds_dense(values, idx)) / np.linalg.norm(w)
  assert err < 1e-3
  budget = C.ds_bytes(m, n, k)
  r = budget // (4 * (m + n))
  assert C.svd_bytes(m, n, r) <= budget < C.svd_bytes(m, n, r + 1) and r < k
  u, v = C.svd_factor(w, r)
  assert np.linalg.norm(w - u.astype(np.float64) @ v) / np.linalg.norm(w) > 0.1


def _params(rng):
  return {"embed": rng.normal(size=(50, 24)),
          "block": {"qkv_kernel": rng.normal(size=(24, 3, 2, 8)),
                    "qkv_bias": rng.normal(size=(3, 2, 8)),
                    "out_kernel": rng.normal(size=(2, 8, 24)),
                    "bias": rng.normal(size=(24,))},
          "read_out": {"kernel": rng.normal(size=(24, 1)), "bias": rng.normal(size=(1,))}}


@pytest.mark.parametrize("make", [
    lambda p: C.float32_tree(p),
    lambda p: C.quantize_tree(p, 4, 32),
    lambda p: C.quantize_tree(p, 8, 64),
    lambda p: C.quantize_tree(p, 4, None),
    lambda p: C.factorize_tree(p, "svd", 2.0),
    lambda p: C.factorize_tree(p, "ds", 2.0, iters=3),
], ids=["float32", "int4-b32", "int8-b64", "int4-tensor", "svd-2x", "ds-2x"])
def test_bytes_on_disk_match_the_accounting(tmp_path, make):
  params = _params(np.random.default_rng(6))
  compressed = make(params)
  size = C.save(compressed, str(tmp_path / "c.npz"))
  predicted = sum(C.record_bytes(r) for r in compressed.values())
  payload, members = 0, 0
  with zipfile.ZipFile(tmp_path / "c.npz") as z:
    for info in z.infolist():   # each member: an .npy header, then the array's bytes
      with z.open(info) as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        np.lib.format.read_array_header_1_0(f)
        payload += info.file_size - f.tell()
      members += info.file_size + 2 * len(info.filename)
  meta_bytes = np.load(tmp_path / "c.npz")[C.META].size
  assert payload == predicted + meta_bytes   # the formulas count every byte of every array
  assert 0 < size - members <= 100 * len(z.infolist()) + 100   # zip entries, no more
  loaded = C.load(str(tmp_path / "c.npz"))
  for path, rec in compressed.items():
    np.testing.assert_array_equal(C.reconstruct(loaded[path]), C.reconstruct(rec))
  flat = C._flat(params)
  for path, rec in compressed.items():
    assert C.reconstruct(rec).shape == flat[path].shape
    if path.endswith("bias"):   # qkv_bias too, though it has 3 axes
      assert rec["kind"] == "float32"
    m, n = C.matrix_shape(flat[path].shape) if flat[path].ndim > 1 else (0, 0)
    if rec["kind"] in ("svd", "ds"):   # within the 2x budget of that matrix
      assert C.record_bytes(rec) <= 4 * m * n / 2
    if rec["kind"] == "ds":   # the dense factor on the shorter side
      assert rec["transposed"] == (m > n) and rec["d"].shape[0] == min(m, n)
    if path == "read_out/kernel" and rec["kind"] != "int":   # too small to factorise at 2x
      assert rec["kind"] == "float32"
  assert C.matrix_shape((24, 3, 2, 8)) == (24, 48) and C.matrix_shape((2, 8, 24)) == (16, 24)


def test_weight_error_aggregates_over_compressed_matrices():
  params = _params(np.random.default_rng(7))
  assert C.weight_error(params, C.float32_tree(params))["matrices"] == 0
  e8, e4 = (C.weight_error(params, C.quantize_tree(params, b, 64)) for b in (8, 4))
  assert e8["matrices"] == e4["matrices"] == 4
  assert 0 < e8["aggregate"] < 0.01 < e4["aggregate"] < 0.2
  svd = C.factorize_tree(params, "svd", 2.0)
  flat, out = C._flat(params), C.decompress(svd)
  num = sum(np.sum((flat[p] - C._flat(out)[p]) ** 2) for p in flat if svd[p]["kind"] == "svd")
  den = sum(np.sum(flat[p] ** 2) for p in flat if svd[p]["kind"] == "svd")
  assert C.weight_error(params, svd)["aggregate"] == pytest.approx(np.sqrt(num / den), rel=1e-5)
  assert out["block"]["bias"].dtype == np.float32 and out["block"]["qkv_kernel"].shape == (
      24, 3, 2, 8)


def test_scanned_layers_compress_one_layer_at_a_time(tmp_path):
  # model.scan stacks the layers ([depth, ...] leaves under 'blocks'): each layer is its own
  # matrix, exactly as the unrolled model's block_<i>, and the stack comes back whole.
  rng = np.random.default_rng(0)
  layers = [{"attn": {"qkv_kernel": rng.normal(size=(16, 3, 2, 8)).astype(np.float32)},
             "norm": {"scale": rng.normal(size=16).astype(np.float32)}} for _ in range(3)]
  embed = rng.normal(size=(10, 16)).astype(np.float32)
  unrolled = {"embed": embed, "backbone": {f"block_{i}": l for i, l in enumerate(layers)}}
  stacked = {"embed": embed, "backbone": {"blocks": {
      "attn": {"qkv_kernel": np.stack([l["attn"]["qkv_kernel"] for l in layers])},
      "norm": {"scale": np.stack([l["norm"]["scale"] for l in layers])}}}}
  for make in (lambda p: C.factorize_tree(p, "svd", 0.5), lambda p: C.quantize_tree(p, 4, 32)):
    flat, per_layer = make(stacked), make(unrolled)
    assert sorted(flat) == ["backbone/blocks/0/attn/qkv_kernel", "backbone/blocks/0/norm/scale",
                            "backbone/blocks/1/attn/qkv_kernel", "backbone/blocks/1/norm/scale",
                            "backbone/blocks/2/attn/qkv_kernel", "backbone/blocks/2/norm/scale",
                            "embed"]
    for i in range(3):
      np.testing.assert_array_equal(
          C.reconstruct(flat[f"backbone/blocks/{i}/attn/qkv_kernel"]),
          C.reconstruct(per_layer[f"backbone/block_{i}/attn/qkv_kernel"]))
    C.save(flat, str(tmp_path / "c.npz"))
    back = C.decompress(C.load(str(tmp_path / "c.npz")))
    assert back["backbone"]["blocks"]["attn"]["qkv_kernel"].shape == (3, 16, 3, 2, 8)
    np.testing.assert_array_equal(back["backbone"]["blocks"]["norm"]["scale"],
                                  stacked["backbone"]["blocks"]["norm"]["scale"])
    np.testing.assert_array_equal(back["backbone"]["blocks"]["attn"]["qkv_kernel"][2],
                                  C.reconstruct(per_layer["backbone/block_2/attn/qkv_kernel"]))
