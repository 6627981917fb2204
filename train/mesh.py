"""The device mesh: axes (data, fsdp, model) in Auto mode, so linen logical constraints work."""
import jax
from jax.sharding import AxisType, Mesh

from substrax.models.sharding import MESH_AXES
from substrax.train.validation import resolve_mesh_shape


def make_mesh(mesh_shape, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)
