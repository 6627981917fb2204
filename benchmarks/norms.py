"""Pre-LN against Pre-RMSNorm and Pre-CRMSNorm (Jiang et al. 2023): language-model speed and
the conversions' float32 error.

  python benchmarks/norms.py                                   # width 256, depth 4, L 256, B 8
  python benchmarks/norms.py --width=1024 --depth=12 --heads=16 --length=1024 --dtype=bfloat16

Variants of models/lm.LanguageModel, all with learned positions and softmax attention:
  layernorm      norm='layernorm' (the baseline)
  rms_zero_mean  norm='rmsnorm', zero_mean=True: trains exactly as layernorm from the same
                 params, and pays for centring every writer in every step
  rms            norm='rmsnorm', zero_mean=False: the inference form, weights centred once
                 (models/norm_conversion.to_rms)
  crms           norm='crmsnorm': residual width - 1 (to_crms)

Each is timed as a jitted forward pass (logits) and a jitted AdamW train step (next-token
cross-entropy; params and optimiser state donated), compiled ahead of time (compile time
reported apart), then after --warmup untimed calls the median of --reps calls
(block_until_ready). The variants take turns within each repetition, so a drift in machine
speed falls on all alike. speedup = baseline time / time (> 1: faster than layernorm).

The conversion check converts a layernorm model with a random, non-trivial affine (scales
1 + 0.3 N(0, 1), biases 0.1 N(0, 1), embeddings shifted by 0.1) and reports max |logits -
layernorm logits| in float32 (float64 gives ~1e-15: tests/test_norms.py), and that over
max |logits|.
"""
import json
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from substrax.models import norm_conversion
from substrax.models.lm import LanguageModel
from substrax.models.transformer import BlockConfig

BASELINE = "layernorm"
VARIANTS = {  # name: (norm, zero_mean, conversion of the layernorm params)
    "layernorm": ("layernorm", False, None),
    "rms_zero_mean": ("rmsnorm", True, None),
    "rms": ("rmsnorm", False, norm_conversion.to_rms),
    "crms": ("crmsnorm", False, norm_conversion.to_crms),
}

flags.DEFINE_integer("width", 256, "Model width d (crms: residual width d - 1).")
flags.DEFINE_integer("depth", 4, "Blocks.")
flags.DEFINE_integer("heads", 4, "Attention heads (head_dim = width / heads).")
flags.DEFINE_integer("vocab", 256, "Vocabulary size.")
flags.DEFINE_integer("length", 256, "Sequence length.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_string("dtype", "float32", "Compute dtype (params and norms stay float32).")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to time, of {list(VARIANTS)}; "
                  f"{BASELINE} always runs.")
flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
flags.DEFINE_integer("reps", 10, "Timed calls per variant and pass (median).")
FLAGS = flags.FLAGS


def make_model(norm, zero_mean):
  return LanguageModel(FLAGS.vocab, FLAGS.width, FLAGS.depth, FLAGS.length,
                       BlockConfig(FLAGS.heads, norm=norm, zero_mean=zero_mean,
                                   dtype=jnp.dtype(FLAGS.dtype)))


def perturbed_params(key, tokens):
  """Layernorm params with a random affine, so that the conversions have something to fold."""
  params = nn.meta.unbox(make_model("layernorm", False).init(key, tokens))["params"]
  flat = flax.traverse_util.flatten_dict(params)
  for i, (path, value) in enumerate(sorted(flat.items())):
    noise = jax.random.normal(jax.random.fold_in(key, i), value.shape, value.dtype)
    if path[-1] == "scale":
      flat[path] = value + 0.3 * noise
    elif "bias" in path[-1]:
      flat[path] = value + 0.1 * noise
    elif path[-1] in ("embed", "pos_embedding"):
      flat[path] = value + 0.1
  return flax.traverse_util.unflatten_dict(flat)


def compiled(fn, *args, donate=()):
  """fn jitted and compiled for args, and the seconds that took."""
  t = time.perf_counter()
  out = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  return out, time.perf_counter() - t


def build(name, params, tokens, opt):
  """The variant's compiled forward and train step, their inputs, and compile times."""
  norm, zero_mean, convert = VARIANTS[name]
  model = make_model(norm, zero_mean)
  # A copy each: the train step donates its params, which must not be another variant's.
  params = convert(params) if convert else jax.tree.map(jnp.copy, params)

  def forward(p, x):
    return model.apply({"params": p}, x)

  def train_step(p, state, batch):
    def loss_fn(p):
      logits = model.apply({"params": p}, batch[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  fwd, fwd_s = compiled(forward, params, tokens[:, :-1])
  step, step_s = compiled(train_step, params, opt.init(params), tokens, donate=(0, 1))
  return {"forward": fwd, "train_step": step, "params": params, "state": opt.init(params),
          "compile_s": fwd_s + step_s}


def time_call(v, which, tokens):
  """Seconds of one call; the train step carries its params and state on."""
  t = time.perf_counter()
  if which == "forward":
    v["forward"](v["params"], tokens[:, :-1]).block_until_ready()
  else:
    v["params"], v["state"], loss = v["train_step"](v["params"], v["state"], tokens)
    loss.block_until_ready()
  return time.perf_counter() - t


def conversion_errors(params, tokens):
  """{variant: (max |logits - layernorm logits|, that / max |layernorm logits|)}."""
  x = tokens[:, :-1]
  ref = jax.jit(make_model("layernorm", False).apply)({"params": params}, x)
  out = {}
  for name, (norm, zero_mean, convert) in VARIANTS.items():
    if name != BASELINE:
      logits = jax.jit(make_model(norm, zero_mean).apply)(
          {"params": convert(params) if convert else params}, x)
      err = float(jnp.abs(logits - ref).max())
      out[name] = (err, err / float(jnp.abs(ref).max()))
  return out


def main(argv):
  del argv
  names = list(dict.fromkeys([BASELINE, *FLAGS.variants]))
  if not set(names) <= set(VARIANTS):
    raise app.UsageError(f"--variants must be among {list(VARIANTS)}")
  key = jax.random.key(0)
  tokens = jax.random.randint(key, (FLAGS.batch, FLAGS.length + 1), 0, FLAGS.vocab)
  params = perturbed_params(key, tokens[:, :-1])
  print(f"LanguageModel width={FLAGS.width} depth={FLAGS.depth} heads={FLAGS.heads} "
        f"vocab={FLAGS.vocab}, batch {FLAGS.batch} x length {FLAGS.length}, {FLAGS.dtype} on "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__})")
  errors = conversion_errors(params, tokens)
  opt = optax.adamw(1e-4, weight_decay=0.01)
  built = {n: build(n, params, tokens, opt) for n in names}
  times = {n: {"forward": [], "train_step": []} for n in names}
  for rep in range(FLAGS.warmup + FLAGS.reps):
    for which in ("forward", "train_step"):
      for n in names:
        took = time_call(built[n], which, tokens)
        if rep >= FLAGS.warmup:
          times[n][which].append(took)
  ms = {n: {w: float(np.median(t)) * 1e3 for w, t in times[n].items()} for n in names}
  base = ms[BASELINE]
  print(f"median of {FLAGS.reps} after {FLAGS.warmup} warm-up calls; speedup = {BASELINE} "
        f"time / time; conversion error: float32 max |logits - {BASELINE} logits| "
        f"(relative to max |logits|)")
  print(f"{'variant':<15}{'fwd_ms':>9}{'speedup':>9}{'step_ms':>9}{'speedup':>9}"
        f"{'compile_s':>10}  {'conversion error':<20}")
  for n in names:
    err = (f"{errors[n][0]:.2e} ({errors[n][1]:.1e})" if n in errors else "(baseline)")
    print(f"{n:<15}{ms[n]['forward']:9.2f}{base['forward'] / ms[n]['forward']:9.3f}"
          f"{ms[n]['train_step']:9.2f}{base['train_step'] / ms[n]['train_step']:9.3f}"
          f"{built[n]['compile_s']:10.1f}  {err:<20}")
  result = {"device_kind": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "flags": {f: FLAGS[f].value for f in ("width", "depth", "heads", "vocab", "length",
                                                   "batch", "dtype", "warmup", "reps")},
            "ms": ms, "compile_s": {n: built[n]["compile_s"] for n in names},
            "conversion_max_abs": {n: e[0] for n, e in errors.items()},
            "conversion_rel": {n: e[1] for n, e in errors.items()}}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
