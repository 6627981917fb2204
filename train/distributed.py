"""Multi-process runs: jax.distributed.initialize driven by the config and the environment.

Every process runs the same command. Process i owns its local devices; the mesh spans all of
them, each jitted step runs on every process, and only process 0 writes logs and plots. Orbax
checkpoints are written by all processes together (each saves its own shards).
"""
import os

import jax

from substrax.train.errors import ConfigError
from substrax.train.validation import require

# Environment fallbacks for fields left unset (JAX itself reads $JAX_COORDINATOR_ADDRESS).
ENV = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def initialize(dist) -> None:
  """Calls jax.distributed.initialize once, before any backend is used, if dist.enabled.

  Fields left unset come from the environment and then from JAX's cluster detection (Cloud TPU,
  SLURM, Open MPI, Kubernetes): on a TPU pod slice no field is needed at all.
  """
  if not dist.enabled:
    return
  kwargs = {"coordinator_address": dist.coordinator_address}
  for field, env in ENV.items():
    value = dist[field] if dist[field] is not None else os.environ.get(env)
    try:
      kwargs[field] = None if value is None else int(value)
    except ValueError:
      raise ConfigError(f"distributed.{field}: ${env}={value!r} is not an integer") from None
  if kwargs["num_processes"] is not None:
    require(kwargs["num_processes"] > 0, "distributed.num_processes",
            f"must be positive, got {kwargs['num_processes']}")
    if kwargs["process_id"] is not None:
      require(0 <= kwargs["process_id"] < kwargs["num_processes"], "distributed.process_id",
              f"must be in [0, {kwargs['num_processes']}), got {kwargs['process_id']}")
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:   # no coordinator given and no cluster detected
    raise ConfigError(f"distributed: {e}; set distributed.coordinator_address, "
                      "num_processes and process_id (or $JAX_COORDINATOR_ADDRESS, "
                      "$JAX_NUM_PROCESSES, $JAX_PROCESS_ID)") from None
