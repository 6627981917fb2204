"""The device mesh: axes (data, fsdp, model) in Auto mode, so linen logical constraints work.

This module owns the mesh: which shape a config asks for, whether it fits the devices and the
batch, and building it. Validation of everything else lives in train/validation.py.
"""
import math

import jax
from jax.sharding import AxisType, Mesh

from substrax.models.sharding import MESH_AXES
from substrax.train.validation import require

# Named layouts for `config.parallelism`. The logical-axis rules are the same for all of them
# (configs/common.py: parameters' `embed` over fsdp, heads/mlp/vocab over model); the mesh shape
# decides which of those shardings are real. -1 takes the remaining devices.
PARALLELISM = {
    "data": (-1, 1, 1),         # parameters replicated, the batch split over every device
    "fsdp": (1, -1, 1),         # parameters and optimizer state sharded over every device
    "tensor": (1, 1, -1),       # heads and mlp split over every device, the batch replicated
    "fsdp_tensor": (1, -1, 2),  # fsdp over half the devices x 2-way tensor parallel
}


def fill(shape, n_devices: int, key: str = "mesh_shape") -> tuple[int, ...]:
  """Fills in the one -1 entry of `shape` and checks it covers exactly `n_devices`."""
  require(isinstance(shape, (tuple, list)) and len(shape) == len(MESH_AXES)
          and all(isinstance(s, int) and not isinstance(s, bool) for s in shape), key,
          f"needs {len(MESH_AXES)} integers for axes {MESH_AXES}, got {shape!r}")
  shape = tuple(shape)
  require(shape.count(-1) <= 1, key, f"at most one entry may be -1, got {shape}")
  require(all(s > 0 or s == -1 for s in shape), key,
          f"entries must be positive or -1, got {shape}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    require(n_devices % known == 0, key,
            f"{shape} does not divide the {n_devices} available devices")
    shape = tuple(n_devices // known if s == -1 else s for s in shape)
  require(math.prod(shape) == n_devices, key,
          f"{shape} uses {math.prod(shape)} devices but {n_devices} are available")
  return shape


def config_shape(config, n_devices: int) -> tuple[int, ...]:
  """The concrete mesh shape of config.mesh_shape, or else of the `config.parallelism` layout,
  checked against the devices and the global batch."""
  require(config.parallelism in PARALLELISM, "parallelism",
          f"unknown layout {config.parallelism!r}; choose one of {', '.join(PARALLELISM)}")
  if config.mesh_shape is None:
    key, shape = f"parallelism={config.parallelism}", PARALLELISM[config.parallelism]
  else:
    require(config.parallelism == "data", "mesh_shape",
            f"set either parallelism (now {config.parallelism!r}) or mesh_shape, not both")
    key, shape = "mesh_shape", config.mesh_shape
  shape = fill(shape, n_devices, key)
  data_shards = shape[0] * shape[1]
  require(config.batch_size % data_shards == 0, "batch_size",
          f"{config.batch_size} does not divide across {data_shards} data shards "
          f"(mesh data x fsdp = {shape[0]} x {shape[1]})")
  return shape


def make_mesh(shape, devices=None) -> Mesh:
  """A mesh of `shape` (one entry may be -1) over `devices` (default: all of them)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(fill(shape, len(devices)), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
