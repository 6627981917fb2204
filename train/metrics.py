"""Metric sinks: metrics.jsonl always, TensorBoard events through tensorboardX.

Only process 0 writes. On resume, lines past the restored step are dropped so the file reads as
one uninterrupted run.
"""
import json
import os

import jax
import numpy as np
from tensorboardX import SummaryWriter


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


class MetricWriter:

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    if not self.enabled:
      return
    self._truncate_after(resume_step)
    self._file = open(self.path, "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def _truncate_after(self, step: int):
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(keep)

  def write(self, step: int, split: str, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in record.items():
      if k not in ("step", "split") and isinstance(v, (int, float)):
        self._tb.add_scalar(f"{split}/{k}", v, step)

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


def read_jsonl(path: str, split: str | None = None) -> list[dict]:
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if split is None or r["split"] == split]
