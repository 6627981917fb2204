"""AdamW with gradient clipping and a warmup-cosine learning-rate schedule."""
import optax


def make_schedule(optim, num_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate, warmup_steps=optim.warmup_steps,
      decay_steps=num_steps, end_value=optim.learning_rate * optim.end_lr_fraction)


def make_optimizer(optim, schedule: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
