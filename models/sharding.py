"""The one sharding vocabulary that models and the trainer share.

Models name every parameter dimension and constrain activations with logical axis names;
`config.logical_axis_rules` maps those names to the mesh axes ('data', 'fsdp', 'model').
"""
import flax.linen as nn

MESH_AXES = ("data", "fsdp", "model")
# The leading axis of a scanned stack's parameters (models/transformer.py `scanned`): every
# device holds every layer, so it maps to no mesh axis.
LAYERS = "layers"


def param_init(init, *names):
  """Wraps an initializer so the parameter carries its logical axis names."""
  return nn.with_logical_partitioning(init, names)


def constrain(x, *names):
  """Constrains an activation's sharding by logical names (a no-op without rules)."""
  return nn.with_logical_constraint(x, names)
