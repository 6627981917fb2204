"""The experiment configs: one file per task, each with the presets tiny, cpu, gpu and pod."""
import os

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The configs' names (file names without .py), as `--config=NAME:PRESET` takes them."""
  return sorted(f[:-3] for f in os.listdir(DIR)
                if f.endswith(".py") and f not in ("__init__.py", "common.py"))
