"""Datasets: generated (ListOps, Pathfinder, Gray-Scott, in-context tasks) or read (TFDS)."""


class DataError(Exception):
  """A dataset that cannot be read, built or found; the message is one line naming the dataset,
  file or directory (the CLIs print it and exit with status 2)."""


def one_line(e: BaseException) -> str:
  """`Type: first line of the message`, to quote a library's error inside a DataError."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__
