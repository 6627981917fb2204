"""Post-training compression of a parameter tree, and the bytes it takes on disk.

Pure numpy functions on a run's `params` (nested dicts of numpy or jax arrays). Every param
with ndim >= 2 (kernels and embeddings) is a matrix to compress; biases (1-D, and attention's
qkv_bias, which is (3, heads, head_dim)) and norm scales always stay float32. Three methods:

  blockwise quantization (BCT-style)  w is flattened (last axis fastest), cut into blocks of
      `block` values (the last one zero-padded), and each block stores one float32 scale
      s = max|w_block| / (2^(b-1) - 1) and the integers q = clip(round(w / s), +-(2^(b-1) - 1)),
      b in {4, 8, 16}; w^ = s q, so |w - w^| <= s / 2. int4 goes to disk two per byte.
  dense x sparse (DSFormer, Chand et al. 2023, arXiv 2312.13211)  W (m x n) ~ D S with D dense
      m x k and S k x n 2:4 sparse: in each column of S, every group of 4 consecutive rows holds
      at most 2 nonzeros. The paper's abstract: "the product of a small dense and a
      semi-structured sparse matrix". (Not a sum U V + S: an additive 2:4 S alone holds half
      of W's entries, so it could never compress beyond 2x.) Fitted by alternating least squares from the truncated SVD
      (D = U_k Sigma_k, so the first S = V_k^T); see `ds_factor` for the steps and for where
      the fit stalls.
  truncated SVD  W ~ (U_r Sigma_r)(V_r^T), the baseline at the same bytes.

A param with more than 2 axes is factorised as the matrix `matrix_shape` picks (input x
output for the attention kernels here) and reshaped back. DS puts its dense factor on the
shorter side (it fits W^T = D S, so W = S^T D^T, when W is taller than wide): each unit of k
costs 4 bytes per row of D and ~2.1 per column of S, so that orientation affords the larger k.

Bytes: a compression ratio rho of a matrix means a budget of 4 m n / rho bytes (float32 is the
reference). SVD at rank r stores 4 r (m + n) bytes; DS at inner size k (a multiple of 4) stores
D (4 m k), the k n / 2 values of S (float32, 2 k n) and a 2-bit position per value (k n / 8);
r and k are the largest that fit the budget. A matrix where no r >= 1 or k >= 4 fits stays
float32 and counts as such. `save` writes one .npz (no zip compression) holding exactly these
arrays plus a small JSON index, and returns its size from the file system.
"""
import json
import os

import flax
import jax
import numpy as np

from substrax.models import transformer

BITS = (4, 8, 16)
META = "__meta__"   # the .npz member holding the JSON index (kind, shape, bits per param)


# ---------------------------------------------------------------------------------------------
# Blockwise quantization


def qmax(bits: int) -> int:
  return 2 ** (bits - 1) - 1


def quantize(w, bits: int, block: int | None):
  """(q, scales): q int8 (bits 4, 8) or int16 (bits 16) of shape (blocks, block), scales float32
  (blocks,). block=None: one block, the whole tensor (per-tensor quantization)."""
  assert bits in BITS, bits
  flat = np.asarray(w, np.float32).reshape(-1)
  block = block or flat.size
  pad = -flat.size % block
  blocks = np.pad(flat, (0, pad)).reshape(-1, block).astype(np.float64)
  scales = (np.abs(blocks).max(axis=1) / qmax(bits)).astype(np.float32)
  safe = np.where(scales > 0, scales, 1).astype(np.float64)   # an all-zero block: q = 0
  q = np.clip(np.rint(blocks / safe[:, None]), -qmax(bits), qmax(bits))
  return q.astype(np.int16 if bits == 16 else np.int8), scales


def dequantize(q, scales, shape):
  """float32 w^ = s q, the padding dropped, in `shape`."""
  w = np.asarray(q, np.float32) * np.asarray(scales, np.float32)[:, None]
  return w.reshape(-1)[:int(np.prod(shape))].reshape(shape)


def pack_int4(q):
  """Signed 4-bit values (in [-8, 7]) two per byte: element 2i in the low nibble."""
  nibbles = np.asarray(q, np.int8).reshape(-1).astype(np.uint8) & 0xF
  nibbles = np.pad(nibbles, (0, nibbles.size % 2))
  return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, size: int):
  nibbles = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1)[:size].astype(np.int8)
  return (nibbles ^ 8) - 8   # sign-extends the nibble


def pack_2bit(idx):
  """Values in 0..3, four per byte: element 4i in the lowest two bits."""
  idx = np.asarray(idx, np.uint8).reshape(-1)
  idx = np.pad(idx, (0, -idx.size % 4)).reshape(-1, 4)
  return (idx[:, 0] | idx[:, 1] << 2 | idx[:, 2] << 4 | idx[:, 3] << 6).astype(np.uint8)


def unpack_2bit(packed, size: int):
  shifts = np.array([0, 2, 4, 6], np.uint8)
  return ((packed[:, None] >> shifts) & 3).reshape(-1)[:size].astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Factorizations


def matrix_shape(shape) -> tuple[int, int]:
  """The 2-D view of a kernel: the split of its axes into rows x columns that is closest to
  square, the earlier split on a tie. For the DenseGeneral kernels here that is input x output:
  qkv (d, 3, h, hd) -> d x 3 h hd, out (h, hd, d) -> h hd x d."""
  splits = [(int(np.prod(shape[:i])), int(np.prod(shape[i:]))) for i in range(1, len(shape))]
  return min(splits, key=lambda mn: abs(np.log(mn[0] / mn[1])))


def svd_bytes(m: int, n: int, r: int) -> int:
  return 4 * r * (m + n)


def ds_bytes(m: int, n: int, k: int) -> int:
  return 4 * m * k + 4 * (k * n // 2) + -(-(k * n // 2) // 4)


def svd_rank(m: int, n: int, ratio: float) -> int:
  """The largest rank whose factors fit 4 m n / ratio bytes (0: none fits)."""
  return int(m * n / ratio // (m + n))


def ds_inner(m: int, n: int, ratio: float) -> int:
  """The largest multiple of 4 as inner size k whose D and 2:4 S fit 4 m n / ratio bytes."""
  k = 4 * int(4 * m * n / ratio // (4 * (4 * m + 2.125 * n)))
  while k > 0 and ds_bytes(m, n, k) > 4 * m * n / ratio:
    k -= 4
  return k


def svd_factor(w, r: int):
  """(U_r Sigma_r, V_r^T) in float32: the best rank-r approximation (Eckart-Young)."""
  u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
  return (u[:, :r] * s[:r]).astype(np.float32), vt[:r].astype(np.float32)


def _rows(index):
  """(n, k/2) row of S of each kept value, from the (k/4, 2, n) positions within groups."""
  groups = index.shape[0]
  return (index + 4 * np.arange(groups)[:, None, None]).reshape(2 * groups, -1).T


def ds_dense(values, index):
  """The k x n 2:4 matrix S from its values and positions, both (k/4, 2, n)."""
  groups, _, n = values.shape
  s = np.zeros((4 * groups, n), np.float64)
  s[_rows(index), np.arange(n)[:, None]] = np.asarray(values, np.float64).reshape(-1, n).T
  return s


def _top2(s):
  """Positions (k/4, 2, n), ascending, of the 2 largest |s| in each group of 4 rows."""
  k, n = s.shape
  order = np.argsort(-np.abs(s.reshape(k // 4, 4, n)), axis=1, kind="stable")[:, :2]
  return np.sort(order, axis=1).astype(np.uint8)


def _refit(d, w, index):
  """Values of S on a fixed 2:4 support: per column j, least squares of w_j on the k/2 kept
  columns of D, solved for all columns at once from D^T D and D^T W (batched, float64)."""
  rows = _rows(index)                                         # (n, k/2)
  gram, rhs = d.T @ d, d.T @ w
  n, half = rows.shape
  g = gram[rows[:, :, None], rows[:, None, :]]                # (n, k/2, k/2)
  ridge = 1e-12 * max(np.trace(gram) / gram.shape[0], np.finfo(np.float64).tiny)
  b = rhs[rows, np.arange(n)[:, None]]                        # (n, k/2)
  x = np.linalg.solve(g + ridge * np.eye(half), b[..., None])[..., 0]
  return x.T.reshape(-1, 2, n)


def ds_factor(w, k: int, iters: int = 30):
  """(D float32 m x k, values float32 (k/4, 2, n), index uint8 (k/4, 2, n)): W ~ D S, S 2:4.

  D starts as U_k Sigma_k (random columns of scale 1e-3 sigma_1 past the rank of W, so that
  every least-squares step sees a full-rank D). Each iteration: S = argmin ||W - D S|| (lstsq),
  projected onto 2:4 by keeping the 2 largest |S| of each group of 4, its kept values refitted
  by least squares on their support; then D = argmin ||W - D S|| given S (lstsq). The iterate
  with the smallest ||W - D S||_F is returned.

  Where the fit stalls: the support comes from the projected dense solution, so the fit
  needs a start whose span is already aligned with the sparse atoms. A planted W = D0 S0 with
  orthogonal atoms of distinct norms is recovered to rounding; with a generic random D0 and
  k >= 8 the fit settles at 15-25% relative error (a local minimum, not the planted one).
  """
  w = np.asarray(w, np.float64)
  m, n = w.shape
  u, sigma, _ = np.linalg.svd(w, full_matrices=False)
  r = min(k, sigma.size)
  d = np.random.default_rng(0).normal(size=(m, k)) * 1e-3 * max(sigma[0], 1e-30)
  d[:, :r] = u[:, :r] * sigma[:r]
  best, best_err = None, np.inf
  for _ in range(iters):
    index = _top2(np.linalg.lstsq(d, w, rcond=None)[0])
    values = _refit(d, w, index)
    s = ds_dense(values, index)
    d = np.linalg.lstsq(s.T, w.T, rcond=None)[0].T
    err = np.linalg.norm(w - d @ s)
    if err < best_err:
      best, best_err = (d, values, index), err
    if best_err <= 1e-12 * np.linalg.norm(w):
      break
  d, values, index = best
  return d.astype(np.float32), values.astype(np.float32), index


# ---------------------------------------------------------------------------------------------
# Parameter trees
#
# The compressed form: {path: record}, path "a/b/kernel" of the flattened params, record one of
#   {"kind": "float32", "w": array}
#   {"kind": "int", "bits": b, "shape": shape, "q": (blocks, block) ints, "scales": (blocks,)}
#   {"kind": "svd", "shape": shape, "u": m x r, "v": r x n}
#   {"kind": "ds", "shape": shape, "transposed": bool, "d": m x k, "values": (k/4, 2, n),
#    "index": (k/4, 2, n)}   (m x n is the matrix or, transposed, its transpose)


# model.scan stacks a backbone's layers in one tree, leaves [depth, ...]: each layer's slice is
# compressed as its own matrix, at path ".../blocks/<i>/...", as an unrolled model's would be.
def _per_layer(tree, split: bool):
  """Every transformer.STACKS subtree of `tree` as {"0": layer 0, "1": ...} (split), or such
  per-layer dicts stacked back (not split)."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for name, sub in tree.items():
    if name not in transformer.STACKS:
      out[name] = _per_layer(sub, split)
    elif split:
      out[name] = {str(i): layer for i, layer in enumerate(transformer.unstack_layers(sub))}
    else:
      out[name] = transformer.stack_layers([sub[str(i)] for i in range(len(sub))])
  return out


def _flat(params) -> dict:
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(
      _per_layer(flax.core.unfreeze(params), split=True), sep="/").items()}


def is_matrix(path: str, w) -> bool:
  """Compressed: ndim >= 2 and not a bias."""
  return w.ndim >= 2 and not path.rsplit("/", 1)[-1].endswith("bias")


def _float32(w) -> dict:
  return {"kind": "float32", "w": np.asarray(w, np.float32)}


def float32_tree(params) -> dict:
  """The uncompressed reference: every param as float32."""
  return {path: _float32(w) for path, w in _flat(params).items()}


def quantize_tree(params, bits: int, block: int | None) -> dict:
  """Every matrix quantized (block None: per tensor); biases and norms float32."""
  out = {}
  for path, w in _flat(params).items():
    if not is_matrix(path, w):
      out[path] = _float32(w)
      continue
    q, scales = quantize(w, bits, block)
    out[path] = {"kind": "int", "bits": bits, "shape": w.shape, "q": q, "scales": scales}
  return out


def factorize_tree(params, method: str, ratio: float, iters: int = 30) -> dict:
  """Every matrix as `method` ("svd" or "ds") at `ratio` of its float32 bytes, where a
  factorization fits (see the module docstring); the rest float32."""
  out = {}
  for path, w in _flat(params).items():
    if not is_matrix(path, w):
      out[path] = _float32(w)
      continue
    m, n = matrix_shape(w.shape)
    mat = w.reshape(m, n)
    transposed = m > n   # DS: the dense factor on the shorter side
    if method == "svd" and (r := svd_rank(m, n, ratio)) >= 1:
      u, v = svd_factor(mat, r)
      out[path] = {"kind": "svd", "shape": w.shape, "u": u, "v": v}
    elif method == "ds" and (k := ds_inner(*sorted((m, n)), ratio)) >= 4:
      d, values, index = ds_factor(mat.T if transposed else mat, k, iters)
      out[path] = {"kind": "ds", "shape": w.shape, "transposed": transposed, "d": d,
                   "values": values, "index": index}
    else:
      assert method in ("svd", "ds"), method
      out[path] = _float32(w)
  return out


def reconstruct(record) -> np.ndarray:
  """The float32 param a record stands for."""
  kind = record["kind"]
  if kind == "float32":
    return record["w"]
  if kind == "int":
    return dequantize(record["q"], record["scales"], record["shape"])
  if kind == "svd":
    w = record["u"].astype(np.float64) @ record["v"]
  else:
    w = record["d"].astype(np.float64) @ ds_dense(record["values"], record["index"])
    w = w.T if record["transposed"] else w
  return w.astype(np.float32).reshape(record["shape"])


def decompress(compressed: dict) -> dict:
  """Nested float32 params, the tree the model was trained with (scanned layers restacked)."""
  tree = flax.traverse_util.unflatten_dict(
      {path: reconstruct(rec) for path, rec in compressed.items()}, sep="/")
  return jax.tree.map(np.asarray, _per_layer(tree, split=False))


def record_bytes(record) -> int:
  """Bytes of a record's arrays as `save` stores them, by the accounting formulas."""
  kind = record["kind"]
  if kind == "float32":
    return 4 * record["w"].size
  if kind == "int":
    values = record["q"].size
    ints = -(-values // 2) if record["bits"] == 4 else values * record["bits"] // 8
    return ints + 4 * record["scales"].size
  if kind == "svd":
    (m, r), n = record["u"].shape, record["v"].shape[1]
    return svd_bytes(m, n, r)
  (m, k), n = record["d"].shape, record["values"].shape[2]
  return ds_bytes(m, n, k)


def _disk_arrays(record) -> dict:
  """The arrays a record writes: int4 packed two per byte, DS positions four per byte."""
  kind = record["kind"]
  if kind == "int" and record["bits"] == 4:
    return {"q": pack_int4(record["q"]), "scales": record["scales"]}
  if kind == "ds":
    return {"d": record["d"], "values": record["values"], "index": pack_2bit(record["index"])}
  return {name: v for name, v in record.items() if isinstance(v, np.ndarray)}


def _meta(record) -> dict:
  meta = {"kind": record["kind"]}
  if record["kind"] != "float32":
    meta["shape"] = [int(x) for x in record["shape"]]
  if record["kind"] == "int":
    meta.update(bits=record["bits"], block=int(record["q"].shape[1]))
  if record["kind"] == "ds":
    meta["transposed"] = bool(record["transposed"])
  return meta


def save(compressed: dict, path: str) -> int:
  """Writes one uncompressed .npz (members 'param/path|array' and a JSON index); returns its
  size in bytes on disk."""
  arrays = {f"{p}|{name}": a for p, rec in compressed.items()
            for name, a in _disk_arrays(rec).items()}
  meta = json.dumps({p: _meta(rec) for p, rec in compressed.items()}, separators=(",", ":"))
  arrays[META] = np.frombuffer(meta.encode(), np.uint8)
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return os.path.getsize(path)


def load(path: str) -> dict:
  """The compressed form `save` wrote."""
  with np.load(path) as z:
    meta = json.loads(z[META].tobytes())
    out = {}
    for p, info in meta.items():
      get = lambda name: z[f"{p}|{name}"]
      kind = info["kind"]
      if kind == "float32":
        out[p] = {"kind": kind, "w": get("w")}
        continue
      rec = {"kind": kind, "shape": tuple(info["shape"])}
      if kind == "int":
        scales = get("scales")
        q = get("q")
        if info["bits"] == 4:
          q = unpack_int4(q, scales.size * info["block"])
        rec.update(bits=info["bits"], q=q.reshape(scales.size, info["block"]), scales=scales)
      elif kind == "svd":
        rec.update(u=get("u"), v=get("v"))
      else:
        values = get("values")
        index = unpack_2bit(get("index"), values.size).reshape(values.shape)
        rec.update(transposed=info["transposed"], d=get("d"), values=values, index=index)
      out[p] = rec
  return out


def weight_error(params, compressed: dict) -> dict:
  """Relative Frobenius error ||W - W^|| / ||W|| over the matrices that were compressed (not
  stored as float32): aggregate sqrt(sum ||dW||^2 / sum ||W||^2), median per matrix, count."""
  flat = _flat(params)
  num, den, rel = 0.0, 0.0, []
  for path, rec in compressed.items():
    if rec["kind"] == "float32":
      continue
    w = flat[path].astype(np.float64)
    dw2 = float(np.sum((w - reconstruct(rec)) ** 2))
    w2 = float(np.sum(w ** 2))
    num, den = num + dw2, den + w2
    rel.append(np.sqrt(dw2 / w2) if w2 > 0 else 0.0)
  return {"aggregate": float(np.sqrt(num / den)) if den > 0 else 0.0,
          "median": float(np.median(rel)) if rel else 0.0, "matrices": len(rel)}

