"""Eight fake CPU devices for every test, set before JAX initialises its backends."""
import os
import sys

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICL_CONFIG = os.path.join(REPO, "configs", "icl_linear.py")


def icl_config(preset: str = "tiny", **overrides):
  from substrax.configs import icl_linear
  config = icl_linear.get_config(preset)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def cli(name: str, *args, devices: int = 1, timeout: float = 300, env=None):
  """Runs a substrax console script in a fresh process with `devices` CPU devices."""
  import subprocess
  full_env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                  JAX_NUM_CPU_DEVICES=str(devices), **(env or {}))
  exe = os.path.join(os.path.dirname(sys.executable), name)
  return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                        env=full_env, cwd=REPO)


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / "run")
