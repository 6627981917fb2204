"""Metric sinks: metrics.jsonl always, TensorBoard events through tensorboardX.

Only process 0 writes. The file reads as one uninterrupted run: on resume, records past the
restored step are dropped, and so is a partial last line left by a crash mid-write. A file
deleted or replaced while the run writes it is recreated, and the lost records are reported.
"""
import json
import os

import jax
import numpy as np
from tensorboardX import SummaryWriter

from substrax.train.errors import StorageError, reason

FILENAME = "metrics.jsonl"


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def _parse(lines: list[str]) -> tuple[list[dict], int]:
  """(records, number of unreadable lines) of metrics.jsonl's lines."""
  records, bad = [], 0
  for line in lines:
    try:
      records.append(json.loads(line))
    except ValueError:
      bad += 1
  return records, bad


class MetricWriter:

  def __init__(self, workdir: str, resume_step: int, warn):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, FILENAME)
    self.warn = warn
    if not self.enabled:
      return
    try:
      self._repair(resume_step)
      self._open()
      # purge_step hides TensorBoard's own records past the resumed step.
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step)
    except OSError as e:
      raise StorageError(f"cannot write {self.path} ({reason(e)})") from None

  def _repair(self, step: int):
    """Keeps the whole records up to `step`."""
    if not os.path.exists(self.path):
      if step > 0:
        self.warn(f"warning: {self.path} was missing; it is recreated, and the records of "
                  f"steps 1-{step} are lost")
      return
    with open(self.path) as f:
      lines = [line for line in f.read().split("\n") if line.strip()]
    records, bad = _parse(lines)
    if bad:
      self.warn(f"warning: dropped {bad} unreadable line(s) of {self.path} (a crash mid-write)")
    keep = [r for r in records if r["step"] <= step]
    if len(keep) < len(records):
      self.warn(f"warning: dropped {len(records) - len(keep)} record(s) of {self.path} after "
                f"step {step}, where the run resumes")
    if bad or len(keep) < len(records):
      with open(self.path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
      os.replace(self.path + ".tmp", self.path)

  def _open(self):
    self._file = open(self.path, "a")

  def write(self, step: int, split: str, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    try:
      if not self._same_file():
        self.warn(f"warning: {self.path} was deleted or replaced during the run; it is "
                  f"recreated at step {step}, and the earlier records in it are lost")
        self._file.close()
        self._open()
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError as e:
      raise StorageError(f"cannot write {self.path} ({reason(e)})") from None
    for k, v in record.items():
      if k not in ("step", "split") and isinstance(v, (int, float)):
        self._tb.add_scalar(f"{split}/{k}", v, step)

  def _same_file(self) -> bool:
    try:
      return os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino
    except FileNotFoundError:
      return False

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


def read_jsonl(path: str, split: str | None = None) -> list[dict]:
  with open(path) as f:
    records, _ = _parse([line for line in f if line.strip()])
  return [r for r in records if split is None or r["split"] == split]
