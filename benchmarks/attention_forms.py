"""The tiny ICL step's attention core written three ways: forward plus backward, ms per call.

  python benchmarks/attention_forms.py                 # the cpu preset's shape
  python benchmarks/attention_forms.py --batch=8 --length=81

Forms, all softmax(q k^T / sqrt(d)) v under a causal mask, gradients to q, k and v:
  einsum     the model's own (models/attention/softmax.py dense_softmax): [b, l, h, d] einsums
  heads_first  q, k, v transposed to [b, h, l, d] first, then batched matmuls over (b, h)
  broadcast  scores as a broadcast product summed over d, the output as one summed over keys:
             no dot at all, one fused reduction each
Each form is timed --rounds times, interleaved, and the table shows the median over rounds of
each round's median of --reps calls, as a ratio to einsum. Measure on an otherwise idle host.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import study
from substrax.models.attention.softmax import allowed_keys, dense_softmax
from substrax.models.kernels.reference import masked_softmax

flags.DEFINE_integer("batch", 64, "Prompts per batch (the cpu preset's 64).")
flags.DEFINE_integer("length", 21, "Tokens (the cpu preset's 2 x 11 - 1).")
flags.DEFINE_integer("heads", 2, "Heads.")
flags.DEFINE_integer("head_dim", 32, "Dimension per head (width 64 / 2 heads).")
flags.DEFINE_integer("reps", 200, "Calls per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
FLAGS = flags.FLAGS


def heads_first(q, k, v, allowed):
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  s = jnp.einsum("bhqd,bhkd->bhqk", q * q.shape[-1] ** -0.5, k)
  return jnp.einsum("bhqk,bhkd->bhqd", masked_softmax(s, allowed), v).transpose(0, 2, 1, 3)


def broadcast(q, k, v, allowed):
  s = jnp.sum((q * q.shape[-1] ** -0.5)[:, :, None] * k[:, None], -1)   # [b, q, k, h]
  p = jnp.moveaxis(masked_softmax(jnp.moveaxis(s, 3, 1), allowed), 1, 3)
  return jnp.sum(p[..., None] * v[:, None], 2)                          # [b, q, h, d]


FORMS = {"einsum": dense_softmax, "heads_first": heads_first, "broadcast": broadcast}


def main(argv):
  del argv
  shape = (FLAGS.batch, FLAGS.length, FLAGS.heads, FLAGS.head_dim)
  q, k, v, cotangent = (jax.random.normal(key, shape) for key in jax.random.split(
      jax.random.key(0), 4))
  allowed = allowed_keys(FLAGS.length, causal=True)
  steps, diffs = {}, {}
  for name, form in FORMS.items():
    loss = lambda q, k, v, form=form: jnp.sum(form(q, k, v, allowed) * cotangent)
    steps[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    diffs[name] = float(jnp.abs(form(q, k, v, allowed) - dense_softmax(q, k, v, allowed)).max())
  rounds = {name: [] for name in FORMS}
  for _ in range(FLAGS.rounds):
    for name, step in steps.items():
      rounds[name].append(study.median_seconds(step, q, k, v, reps=FLAGS.reps) * 1e3)
  base = np.median(rounds["einsum"])
  print(f"attention core, forward + backward, q/k/v {list(shape)} float32, "
        f"{jax.devices()[0].device_kind}")
  print("| form | ms per call (median of rounds) | rounds | vs einsum | max abs diff |")
  print("|---|---|---|---|---|")
  for name, ms in rounds.items():
    print(f"| {name} | {np.median(ms):.3f} | {' / '.join(f'{m:.3f}' for m in ms)} | "
          f"{np.median(ms) / base:.2f}x | {diffs[name]:.1e} |")


if __name__ == "__main__":
  app.run(main)
