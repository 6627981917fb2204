"""Batches from a finite dataset held on device, as a pure function of (key, step).

Datasets of the LRA scale fit in accelerator memory as uint8 (ListOps 96K x 2000 tokens is 192 MB),
so the trainer keeps them there and draws each step's batch inside the jitted step: no host input
pipeline, and a resumed run sees exactly the batches it would have seen.
"""
import jax
import jax.numpy as jnp
import numpy as np


def epoch_indices(key, step, batch_size: int, num_examples: int):
  """Indices of step `step`'s batch: each epoch is a fresh permutation, without replacement.

  The remainder of an epoch that does not fill a batch is dropped, as in most trainers.
  """
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size: {batch_size} exceeds the {num_examples} training examples")
  epoch, within = jnp.divmod(step, steps_per_epoch)
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return jax.lax.dynamic_slice_in_dim(perm, within * batch_size, batch_size)


def pool_sampler(batch_size: int):
  """sample_batch for a pool of rows passed as data: rows drawn uniformly with replacement."""
  def sample_batch(data, key, step):
    del step  # the key already depends on the step
    rows = jax.random.randint(key, (batch_size,), 0, len(next(iter(data.values()))))
    return take(data, rows)
  return sample_batch


def take(arrays: dict, indices) -> dict:
  return {name: x[indices] for name, x in arrays.items()}


def batches(arrays: dict, batch_size: int):
  """Host-side iteration over a split in order, the last batch padded by repetition.

  Yields (batch, num_valid) so evaluators can drop the padding; fixed shapes avoid recompiles.
  """
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    yield take(arrays, idx), min(batch_size, n - start)
