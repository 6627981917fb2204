"""One substrax-train subprocess per cell of a study (lra_runs.py, fluid_runs.py).

A finished run (its eval JSON written at the last step) is skipped and an interrupted one
resumes from its checkpoint, so rerunning a study's command completes it. Each run's wall time
is saved next to it as wall_time.json for the table scripts.
"""
import json
import os
import subprocess
import sys
import time


def finished(eval_json: str, num_steps: int) -> bool:
  if not os.path.exists(eval_json):
    return False
  with open(eval_json) as f:
    return json.load(f)["step"] == num_steps


def train(label: str, config: str, workdir: str, overrides: dict, preset: str) -> bool:
  """Runs `substrax-train --config=CONFIG:PRESET --workdir=WORKDIR --config.k=v ...`; prints one
  line with the wall time and the run's last output line (or its stderr on failure)."""
  binary = os.path.join(os.path.dirname(sys.executable), "substrax-train")
  args = [binary, f"--config={config}:{preset}", f"--workdir={workdir}",
          "--config.progress_bar=False"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  start = time.perf_counter()
  proc = subprocess.run(args, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    print(f"{label}: FAILED ({proc.returncode})\n{proc.stderr}", flush=True)
    return False
  with open(os.path.join(workdir, "wall_time.json"), "w") as f:
    json.dump({"wall_s": wall, "preset": preset}, f)
  last = proc.stdout.strip().splitlines()
  print(f"{label}: {wall / 60:5.2f} min  {last[-1] if last else ''}", flush=True)
  return True


def read_wall(run_dir: str):
  path = os.path.join(run_dir, "wall_time.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["wall_s"]
