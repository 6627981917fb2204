"""Single-layer universal approximation (Gumaan 2025, arXiv 2507.10581), checked on a CPU.

  python benchmarks/universality.py                               # both parts, ~3-6 min on 2 cores
  python benchmarks/universality.py --hidden=16,64,256,1024,4096 --seeds=0,1,2 --steps=4000

The claim: one self-attention layer followed by one position-wise ReLU/GELU FFN approximates any
continuous sequence-to-sequence map on a compact set. The model here is the repo's backbone at
depth 1 (models/transformer.Transformer: norm -> attention -> residual -> norm -> GELU MLP ->
residual -> final norm), bidirectional, between a position-wise linear read-in (R^d -> width) and
read-out (width -> R^d_out). Nothing else mixes positions.

(a) Without positions the claim cannot hold for general maps. With `positions='none'` every piece
is position-wise except attention, which is equivariant, so the model is permutation-equivariant:
f(pi X) = pi f(X). This is checked numerically: max |f(pi X) - pi f(X)| over random permutations
at perturbed random weights (float32 and float64) and at the
trained weights, against the same weights with a learned position table. Such an f cannot fit
the cyclic shift y_i = x_{i+1 mod n}. The best it can do:

  Let x_1..x_n be i.i.d. N(0, I_d), S the multiset {x_1..x_n} and n >= 2. For any permutation pi
  that fixes i, equivariance gives f(pi X)_i = f(X)_i, so f(X)_i is a function g_i(x_i, S) of the
  token and the multiset. For any such g_i the squared error of position i is at least
  E || x_{i+1} - E[x_{i+1} | x_i, S] ||^2. Given S the ordering is uniformly random (the tokens are
  exchangeable and a.s. distinct), so given x_i = s, x_{i+1} is uniform on the other n - 1 tokens:
      E[x_{i+1} | x_i, S] = (sum(S) - x_i) / (n - 1),
  the mean of the other tokens, (n mean(X) - x_i) / (n - 1). This is itself an equivariant map
  (uniform attention gives mean(X), the residual gives x_i), so the bound is attained. Its error
  per coordinate is
      x_{i+1} - (1/(n-1)) sum_{j!=i} x_j = (1 - 1/(n-1)) x_{i+1} - (1/(n-1)) sum_{j!=i,i+1} x_j,
      variance (n-2)^2/(n-1)^2 + (n-2)/(n-1)^2 = (n-2)/(n-1) = 1 - 1/(n-1).
  So the best MSE per coordinate of any permutation-equivariant map is exactly 1 - 1/(n-1): 6/7 =
  0.857 at n = 8, against 1 for predicting 0 and 0 for the shift itself. For n = 2 the bound is 0
  (the other token is determined by the multiset). The script prints the trained positions='none'
  model's test MSE beside this bound, the empirical MSE of the optimal estimator on the same test
  set, and the same model trained with learned positions (a control: it is not bound).

(b) With learned positions, the test MSE on a fixed smooth target should fall as the FFN widens.
Target: y = W2 tanh(W1 vec(X) + b1), X [n, d] i.i.d. N(0, 1), W1, b1 ~ N(0, gain^2 / (n d)) so
the tanh is neither linear nor saturated, reshaped to [n, d_out]; each output coordinate is then
centred and scaled to unit variance (statistics from 2^16 fresh draws), so predicting 0 scores 1.
Fixed train and test sets (--train_size, --test_size). The FFN hidden width sweeps --hidden
(hidden = mlp_ratio * width, so each must be a multiple of --width); heads, width, optimiser
(AdamW, warmup-cosine, clip 1; train/optim.py), steps and batch are the same for every width.
A least-squares linear map of vec(X) to vec(Y) fitted on the train set is printed as a reference
(the part of the target a linear model gets). Whether the curve is monotone is reported as
measured, per seed and for the mean.

Writes --out/universality.json (everything printed) and --out/universality.png (train and test
MSE against the FFN width), and prints markdown tables with the machine and the wall times.
"""
import json
import math
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from matplotlib.figure import Figure

from substrax.models.transformer import BlockConfig, Transformer
from substrax.train import optim as optim_lib

flags.DEFINE_string("out", "/tmp/substrax-universality", "Where the JSON and PNG go.")
flags.DEFINE_list("parts", ["a", "b"], "Which parts to run.")
# (a) equivariance and the shift map.
flags.DEFINE_integer("shift_tokens", 8, "(a) Sequence length n.")
flags.DEFINE_integer("shift_dim", 4, "(a) Token dimension d.")
flags.DEFINE_integer("shift_width", 32, "(a) Model width.")
flags.DEFINE_integer("shift_steps", 1500, "(a) Training steps (fresh samples each step).")
flags.DEFINE_integer("shift_batch", 128, "(a) Sequences per step.")
# (b) width sweep on a smooth target.
flags.DEFINE_integer("tokens", 4, "(b) Sequence length n.")
flags.DEFINE_integer("dim", 2, "(b) Input token dimension d.")
flags.DEFINE_integer("dim_out", 2, "(b) Output token dimension.")
flags.DEFINE_integer("target_hidden", 64, "(b) Hidden units of the random tanh target.")
flags.DEFINE_float("target_gain", 2.0, "(b) Std of the target's first-layer pre-activations.")
flags.DEFINE_integer("width", 16, "(b) Model width (residual stream).")
flags.DEFINE_list("hidden", ["16", "64", "256", "1024"],
                  "(b) FFN hidden widths (multiples of --width).")
flags.DEFINE_list("seeds", ["0", "1"], "(b) Training seeds (init and batch order).")
flags.DEFINE_integer("steps", 2000, "(b) Training steps per run.")
flags.DEFINE_integer("batch", 256, "(b) Minibatch size.")
flags.DEFINE_integer("train_size", 8192, "(b) Fixed training sequences.")
flags.DEFINE_integer("test_size", 8192, "(b) Held-out sequences.")
flags.DEFINE_integer("data_seed", 1234, "Draws the target network and the data sets.")
# Shared.
flags.DEFINE_integer("heads", 4, "Attention heads (both parts).")
flags.DEFINE_float("lr", 5e-3, "Peak learning rate (AdamW, warmup-cosine).")
FLAGS = flags.FLAGS


class OneLayer(nn.Module):
  """Linear read-in, the repo's Transformer at depth 1 (bidirectional), linear read-out."""
  width: int
  heads: int
  mlp_ratio: int
  positions: str
  max_len: int
  out_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.width, name="read_in")(x)
    block = BlockConfig(num_heads=self.heads, mlp_ratio=self.mlp_ratio, positions=self.positions,
                        dtype=self.dtype)
    h = Transformer(self.width, 1, self.max_len, block, causal=False, name="backbone")(h)
    return nn.Dense(self.out_dim, name="read_out")(h)


def init_params(model, key, x):
  return nn.meta.unbox(model.init(key, x))["params"]


def optimizer(steps: int):
  o = ml_collections.ConfigDict(dict(learning_rate=FLAGS.lr, warmup_steps=min(100, steps // 10),
                                     end_lr_fraction=0.0, b1=0.9, b2=0.999, weight_decay=0.0,
                                     grad_clip_norm=1.0))
  return optim_lib.make_optimizer(o, optim_lib.make_schedule(o, steps))


def train(model, params, steps: int, sample, opt, chunk: int = 250):
  """AdamW on the MSE; `sample(step)` -> (x, y) is traced into the step, and `chunk` steps run
  as one jitted lax.scan (one dispatch per chunk). Returns the trained params."""
  def one(carry, step):
    params, state = carry
    x, y = sample(step)
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2))(params)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  run = jax.jit(lambda carry, idx: jax.lax.scan(one, carry, idx))
  carry = (params, opt.init(params))
  for start in range(0, steps, chunk):
    carry, _ = run(carry, jnp.arange(start, min(start + chunk, steps)))
  return jax.block_until_ready(carry[0])


def mse(model, params, x, y, batch: int = 4096) -> float:
  """Mean squared error per output coordinate."""
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  total = sum(float(jnp.sum((apply(params, x[i:i + batch]) - y[i:i + batch]) ** 2))
              for i in range(0, len(x), batch))
  return total / y.size


# ------------------------------------------------------------------------------------------ (a)

def equivariance_error(model, params, x, key, perms: int = 16) -> tuple[float, float]:
  """(max |f(pi X) - pi f(X)|, max |f(X)|) over `perms` random permutations of the positions."""
  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  fx = np.asarray(apply(x))
  worst = 0.0
  for k in jax.random.split(key, perms):
    pi = np.asarray(jax.random.permutation(k, x.shape[1]))
    worst = max(worst, float(np.max(np.abs(np.asarray(apply(x[:, pi])) - fx[:, pi]))))
  return worst, float(np.max(np.abs(fx)))


def perturbed(params, key, scale: float = 0.3):
  """Every parameter plus scale * N(0, 1): non-uniform attention, non-trivial norms."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [v + scale * jax.random.normal(k, v.shape, v.dtype)
                                   for v, k in zip(leaves, keys)])


def part_a() -> dict:
  n, d = FLAGS.shift_tokens, FLAGS.shift_dim
  shift = lambda x: jnp.roll(x, -1, axis=1)        # y_i = x_{i+1 mod n}
  key = jax.random.key(FLAGS.data_seed)
  x_test = jax.random.normal(jax.random.fold_in(key, 1), (16384, n, d))
  y_test = shift(x_test)
  models = {p: OneLayer(FLAGS.shift_width, FLAGS.heads, 4, p, n, d) for p in ("none", "learned")}

  def sample(step):
    x = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 2), step),
                          (FLAGS.shift_batch, n, d))
    return x, shift(x)

  out = {"n": n, "d": d, "width": FLAGS.shift_width, "heads": FLAGS.heads,
         "steps": FLAGS.shift_steps, "batch": FLAGS.shift_batch, "test_size": len(x_test)}
  x_check = x_test[:256]
  params0 = init_params(models["none"], jax.random.key(0), x_check)
  noisy = perturbed(params0, jax.random.key(1))
  out["equivariance_random"] = equivariance_error(models["none"], noisy, x_check,
                                                  jax.random.key(2))
  # The same weights with a learned position table (the table drawn at the same scale) break it.
  noisy_learned = dict(noisy)
  noisy_learned["backbone"] = dict(noisy["backbone"], pos_embedding=0.3 * jax.random.normal(
      jax.random.key(3), (n, FLAGS.shift_width)))
  out["equivariance_random_learned"] = equivariance_error(models["learned"], noisy_learned,
                                                          x_check, jax.random.key(2))
  # The same check in float64: parameters, activations, norms and the softmax.
  with jax.enable_x64(True):
    model64 = OneLayer(FLAGS.shift_width, FLAGS.heads, 4, "none", n, d, dtype=jnp.float64)
    noisy64 = jax.tree.map(lambda v: v.astype(jnp.float64), noisy)
    out["equivariance_random_float64"] = equivariance_error(
        model64, noisy64, x_check.astype(jnp.float64), jax.random.key(2))
  trained, walls = {}, {}
  for p, model in models.items():
    start = time.perf_counter()
    trained[p] = train(model, init_params(model, jax.random.key(0), x_check), FLAGS.shift_steps,
                       sample, optimizer(FLAGS.shift_steps))
    out[f"test_mse_{p}"] = mse(model, trained[p], x_test, y_test)
    walls[p] = time.perf_counter() - start
  out["wall_s"] = walls
  out["equivariance_trained"] = equivariance_error(models["none"], trained["none"], x_check,
                                                   jax.random.key(2))
  # The optimal equivariant estimator, (sum of tokens - x_i) / (n - 1), on the same test set.
  best = (jnp.sum(x_test, axis=1, keepdims=True) - x_test) / (n - 1)
  out["best_equivariant_analytic"] = 1.0 - 1.0 / (n - 1)
  out["best_equivariant_empirical"] = float(jnp.mean((best - y_test) ** 2))
  out["zero_predictor"] = float(jnp.mean(y_test ** 2))
  return out


def report_a(r: dict):
  e, el, et = (r["equivariance_random"], r["equivariance_random_learned"],
               r["equivariance_trained"])
  print(f"\n## (a) Permutation equivariance and the cyclic shift (n={r['n']}, d={r['d']}, "
        f"width {r['width']}, {r['heads']} heads, {r['steps']} steps x {r['batch']})\n")
  print("| weights | positions | max abs f(pi X) - pi f(X) | max abs f(X) |")
  print("|---|---|---|---|")
  e64 = r["equivariance_random_float64"]
  print(f"| random (init + 0.3 N(0,1)), float64 | none | {e64[0]:.2e} | {e64[1]:.2f} |")
  print(f"| random (init + 0.3 N(0,1)) | none | {e[0]:.2e} | {e[1]:.2f} |")
  print(f"| trained on the shift | none | {et[0]:.2e} | {et[1]:.2f} |")
  print(f"| random, + learned table | learned | {el[0]:.2e} | {el[1]:.2f} |")
  word = lambda err: "yes" if err <= 1e-6 else "NO"
  print(f"\nequivariant to <= 1e-6 without positions: float64 {word(e64[0])} ({e64[0]:.1e}); "
        f"float32 {word(max(e[0], et[0]))} (max {max(e[0], et[0]):.1e}, "
        f"{max(e[0] / e[1], et[0] / et[1]):.1e} of max abs f(X))\n")
  print(f"| predictor of y_i = x_(i+1 mod n) | test MSE per coordinate ({r['test_size']} seqs) |")
  print("|---|---|")
  print(f"| predict 0 | {r['zero_predictor']:.4f} |")
  print(f"| best equivariant map, analytic 1 - 1/(n-1) | {r['best_equivariant_analytic']:.4f} |")
  print(f"| best equivariant map (mean of the other tokens), on the test set | "
        f"{r['best_equivariant_empirical']:.4f} |")
  print(f"| 1 attention + 1 FFN, positions none, trained | {r['test_mse_none']:.4f} |")
  print(f"| 1 attention + 1 FFN, positions learned, trained (control) | "
        f"{r['test_mse_learned']:.4f} |")
  print(f"\nwall: none {r['wall_s']['none']:.0f} s, learned {r['wall_s']['learned']:.0f} s")


# ------------------------------------------------------------------------------------------ (b)

def make_target(key, n, d, d_out, hidden, gain):
  """A fixed random tanh network on vec(X), outputs centred and scaled to unit variance."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  w1 = jax.random.normal(k1, (n * d, hidden)) * gain / math.sqrt(n * d)
  b1 = jax.random.normal(k2, (hidden,)) * gain / math.sqrt(n * d)
  w2 = jax.random.normal(k3, (hidden, n * d_out)) / math.sqrt(hidden)
  raw = lambda x: jnp.tanh(x.reshape(len(x), -1) @ w1 + b1) @ w2
  ref = raw(jax.random.normal(k4, (1 << 16, n, d)))
  mean, std = ref.mean(0), ref.std(0)
  return lambda x: ((raw(x) - mean) / std).reshape(len(x), n, d_out)


def part_b() -> dict:
  n, d, d_out, width = FLAGS.tokens, FLAGS.dim, FLAGS.dim_out, FLAGS.width
  hidden = [int(h) for h in FLAGS.hidden]
  bad = [h for h in hidden if h % width]
  if bad:
    raise ValueError(f"--hidden {bad} are not multiples of --width={width}")
  key = jax.random.key(FLAGS.data_seed)
  target = make_target(jax.random.fold_in(key, 10), n, d, d_out, FLAGS.target_hidden,
                       FLAGS.target_gain)
  x_train = jax.random.normal(jax.random.fold_in(key, 11), (FLAGS.train_size, n, d))
  x_test = jax.random.normal(jax.random.fold_in(key, 12), (FLAGS.test_size, n, d))
  y_train, y_test = target(x_train), target(x_test)
  # Linear least squares on the flattened sequence (with a constant), as a reference.
  design = lambda x: np.concatenate([np.asarray(x).reshape(len(x), -1),
                                     np.ones((len(x), 1))], axis=1)
  coef = np.linalg.lstsq(design(x_train), np.asarray(y_train).reshape(len(x_train), -1),
                         rcond=None)[0]
  lin = lambda x, y: float(np.mean((design(x) @ coef - np.asarray(y).reshape(len(x), -1)) ** 2))
  out = {"n": n, "d": d, "d_out": d_out, "width": width, "heads": FLAGS.heads,
         "target_hidden": FLAGS.target_hidden, "target_gain": FLAGS.target_gain,
         "steps": FLAGS.steps, "batch": FLAGS.batch, "lr": FLAGS.lr,
         "train_size": FLAGS.train_size, "test_size": FLAGS.test_size,
         "linear_train_mse": lin(x_train, y_train), "linear_test_mse": lin(x_test, y_test),
         "runs": []}
  for h in hidden:
    for seed in [int(s) for s in FLAGS.seeds]:
      model = OneLayer(width, FLAGS.heads, h // width, "learned", n, d_out)
      order = jax.random.key(1000 + seed)

      def sample(step, order=order):
        idx = jax.random.randint(jax.random.fold_in(order, step), (FLAGS.batch,), 0,
                                 FLAGS.train_size)
        return x_train[idx], y_train[idx]

      start = time.perf_counter()
      params = train(model, init_params(model, jax.random.key(seed), x_train[:2]), FLAGS.steps,
                     sample, optimizer(FLAGS.steps))
      run = {"hidden": h, "seed": seed, "train_mse": mse(model, params, x_train, y_train),
             "test_mse": mse(model, params, x_test, y_test),
             "params": sum(v.size for v in jax.tree.leaves(params)),
             "wall_s": time.perf_counter() - start}
      out["runs"].append(run)
      print(f"  hidden {h:5d} seed {seed}: train {run['train_mse']:.4f} test "
            f"{run['test_mse']:.4f} ({run['wall_s']:.0f} s)", flush=True)
  out["summary"] = summarise(out["runs"], hidden)
  return out


def summarise(runs, hidden) -> dict:
  by = lambda key, h: [r[key] for r in runs if r["hidden"] == h]
  seeds = sorted({r["seed"] for r in runs})
  curve = lambda key, seed=None: [
      float(np.mean(by(key, h))) if seed is None else
      next(r[key] for r in runs if r["hidden"] == h and r["seed"] == seed) for h in hidden]
  mono = lambda c: bool(all(b < a for a, b in zip(c, c[1:])))
  s = {"hidden": hidden, "train_mean": curve("train_mse"), "test_mean": curve("test_mse")}
  s["monotone_train_mean"] = mono(s["train_mean"])
  s["monotone_test_mean"] = mono(s["test_mean"])
  s["monotone_test_per_seed"] = {str(k): mono(curve("test_mse", k)) for k in seeds}
  s["monotone_train_per_seed"] = {str(k): mono(curve("train_mse", k)) for k in seeds}
  return s


def report_b(r: dict):
  s = r["summary"]
  print(f"\n## (b) FFN width sweep, learned positions (n={r['n']}, d={r['d']} -> "
        f"{r['d_out']}, width {r['width']}, {r['heads']} heads, {r['steps']} steps x "
        f"{r['batch']}, {r['train_size']} train / {r['test_size']} test)\n")
  print("| FFN hidden | params | train MSE (per seed) | test MSE (per seed) | test mean |")
  print("|---|---|---|---|---|")
  for h, test in zip(s["hidden"], s["test_mean"]):
    rs = [x for x in r["runs"] if x["hidden"] == h]
    tr = ", ".join(f"{x['train_mse']:.4f}" for x in rs)
    te = ", ".join(f"{x['test_mse']:.4f}" for x in rs)
    print(f"| {h} | {rs[0]['params']} | {tr} | {te} | {test:.4f} |")
  print(f"| linear least squares | {r['n'] * r['d'] + 1} x {r['n'] * r['d_out']} | "
        f"{r['linear_train_mse']:.4f} | {r['linear_test_mse']:.4f} | |")
  print("| predict 0 | 0 | 1 | 1 | |")
  word = lambda b: "yes" if b else "NO"
  print(f"\nmonotone decrease with FFN width: test mean {word(s['monotone_test_mean'])}, "
        f"per seed {s['monotone_test_per_seed']}; train mean {word(s['monotone_train_mean'])}, "
        f"per seed {s['monotone_train_per_seed']}")


def plot(path: str, r: dict):
  fig = Figure(figsize=(6.4, 4.2), dpi=120)
  ax = fig.subplots()
  s = r["summary"]
  for key, colour in (("train", "C0"), ("test", "C1")):
    for x in r["runs"]:
      ax.plot(x["hidden"], x[f"{key}_mse"], "o", color=colour, alpha=0.4, ms=4)
    ax.plot(s["hidden"], s[f"{key}_mean"], "-", color=colour, lw=2, label=f"{key} (mean of seeds)")
  ax.axhline(r["linear_test_mse"], color="grey", ls=":", label="linear least squares, test")
  ax.set(xscale="log", yscale="log", xlabel="FFN hidden width", ylabel="MSE per coordinate",
         title=f"1 attention + 1 FFN, learned positions, n={r['n']}, width {r['width']}")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


def machine() -> dict:
  dev = jax.devices()[0]
  return {"platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "device": f"{dev.platform}: {dev.device_kind}",
          "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}


def main(argv):
  del argv
  os.makedirs(FLAGS.out, exist_ok=True)
  start = time.perf_counter()
  result = {"machine": machine(), "flags": {k: FLAGS[k].value for k in (
      "parts", "shift_tokens", "shift_dim", "shift_width", "shift_steps", "shift_batch",
      "tokens", "dim", "dim_out", "target_hidden", "target_gain", "width", "hidden", "seeds",
      "steps", "batch", "train_size", "test_size", "data_seed", "heads", "lr")}}
  m = result["machine"]
  print(f"machine: {m['device']}, {m['cpu_count']} CPUs, load {m['load_avg_1m']:.1f}, "
        f"jax {m['jax']}, {m['platform']}", flush=True)
  if "a" in FLAGS.parts:
    result["a"] = part_a()
    report_a(result["a"])
  if "b" in FLAGS.parts:
    print("\n(b) training...", flush=True)
    result["b"] = part_b()
    report_b(result["b"])
    plot(os.path.join(FLAGS.out, "universality.png"), result["b"])
  result["wall_s"] = time.perf_counter() - start
  result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
  with open(os.path.join(FLAGS.out, "universality.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(f"\ntotal wall {result['wall_s']:.0f} s; wrote {FLAGS.out}/universality.json and .png")


if __name__ == "__main__":
  app.run(main)
