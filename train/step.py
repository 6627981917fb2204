"""The pure train step: (state, batch) -> (state, metrics)."""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array   # number of optimizer updates applied
  params: Any
  opt_state: Any
  # The model's non-learned collections (e.g. FluidWorld's 'bio' state); {} for most models.
  # They live in the state so checkpoints carry them and resumes stay exact.
  model_state: Any


def init_state(rng, *, model, inputs, tx) -> TrainState:
  """Parameters keep their logical-partitioning boxes here; the trainer unboxes after sharding."""
  variables = dict(model.init(rng, *inputs))
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=variables)


def train_step(state: TrainState, batch, *, loss_fn: Callable, tx: optax.GradientTransformation,
               schedule: optax.Schedule):
  """One AdamW update. `loss_fn(params, model_state, batch, step) -> (loss, (aux_metrics,
  model_state))`; the step lets a model derive per-step randomness (e.g. Performer's feature
  redraws) purely."""
  (loss, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.model_state, batch, state.step)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "learning_rate": schedule(state.step), **aux}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                    model_state=model_state), metrics
