"""The cache of generated datasets (ListOps, Pathfinder, Gray-Scott): .npz files in one directory.

Each generator names its files after every argument that shapes the data, so a file is either
the right one or absent. Files are written under a temporary name and renamed, so a reader never
sees half of one; a file that is unreadable anyway (written before that, or a bad copy) is built
again, with a warning.

Example:
  splits = listops.build_splits(cache.resolve(config.data.cache_dir))
"""
import os
import sys
import tempfile
import zipfile

import numpy as np

from substrax.data import DataError, one_line

DEFAULT = "~/.cache/substrax"


def resolve(cache_dir: str = "") -> str:
  """`data.cache_dir`, or else $SUBSTRAX_DATA, or else ~/.cache/substrax."""
  return os.path.expanduser(cache_dir or os.environ.get("SUBSTRAX_DATA", DEFAULT))


def _create(directory: str):
  """Makes `directory` and checks that files can be written there, before any are built."""
  if os.path.isfile(directory):
    raise DataError(f"data.cache_dir: {directory} is a file, not a directory")
  try:
    os.makedirs(directory, exist_ok=True)
    tempfile.TemporaryFile(dir=directory).close()   # os.access misses read-only mounts
  except OSError as e:
    raise DataError(f"data.cache_dir: cannot write to {directory} ({one_line(e)})") from e


def _save(path: str, arrays: dict):
  """Writes an .npz under a temporary name, then renames it: readers never see a partial file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)   # mkstemp makes it owner-only; a cache may be shared
    os.replace(tmp, path)
  except BaseException as e:
    os.unlink(tmp)
    if isinstance(e, OSError):   # e.g. the disk filled up
      raise DataError(f"data.cache_dir: cannot write {path} ({one_line(e)})") from e
    raise


def load_or_build(path: str, build) -> dict[str, np.ndarray]:
  """The arrays cached at `path`; if it is missing or unreadable, build() -> arrays, saved there.

  An unreadable file (truncated by a crash or a full disk, a bad copy) is one warning line on
  stderr and built again; a directory that is a file or read-only is a DataError.
  """
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
      print(f"substrax: warning: the cache file {path} is unreadable ({one_line(e)}); it is "
            "rebuilt", file=sys.stderr, flush=True)
  _create(os.path.dirname(path))
  arrays = build()
  _save(path, arrays)
  return arrays
