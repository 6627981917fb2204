"""The device mesh: axes (data, fsdp, model) in Auto mode, so linen logical constraints work."""
import jax
from jax.sharding import AxisType, Mesh

from substrax.models.sharding import MESH_AXES
from substrax.train.validation import require, resolve_mesh_shape

# Named layouts for `config.parallelism`. The logical-axis rules are the same for all of them
# (configs/common.py: parameters' `embed` over fsdp, heads/mlp/vocab over model); the mesh shape
# decides which of those shardings are real.
PARALLELISM = {
    "data": (-1, 1, 1),         # parameters replicated, the batch split over every device
    "fsdp": (1, -1, 1),         # parameters and optimizer state sharded over every device
    "tensor": (1, 1, -1),       # heads and mlp split over every device, the batch replicated
    "fsdp_tensor": (1, -1, 2),  # fsdp over half the devices x 2-way tensor parallel
}


def mesh_shape(config) -> tuple:
  """config.mesh_shape if set, else the shape of the named `config.parallelism` layout."""
  require(config.parallelism in PARALLELISM, "parallelism",
          f"unknown layout {config.parallelism!r}; choose one of {', '.join(PARALLELISM)}")
  if config.mesh_shape is None:
    return PARALLELISM[config.parallelism]
  require(config.parallelism == "data", "mesh_shape",
          f"set either parallelism (now {config.parallelism!r}) or mesh_shape, not both")
  return tuple(config.mesh_shape)


def make_mesh(shape, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)
