"""Linear and MLP probes of an in-context-regression transformer's residual stream, with controls.

At the token x_{k+1} (index 2k) the model has seen k pairs and must predict y_{k+1}. We probe the
hidden state there, at every layer, for quantities an algorithm would hold after those k pairs:
the task vector w, the moments X^T y and X^T X, least squares and one GD step. A probe's R^2 only
means something next to controls (docs/icl-probes.md): the same probe on an untrained model's
states, and on targets shuffled across training prompts. `gap` is the real R^2 minus the best
control.

Batched CPU LAPACK kernels (pinv's SVD, eigh) run alone and are waited for: in jaxlib 0.10 they
can deadlock XLA:CPU's thread pool when anything runs beside them (docs/design-notes.md).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from substrax.data import icl
from substrax.models.transformer import Block
from substrax.train.analysis.reporting import figure, plot

TARGETS = ("w", "xty", "xtx", "w_ols", "w_gd")
KINDS = ("linear", "mlp")
RIDGE_ALPHAS = np.logspace(-4, 3, 8)   # ridge penalty per training row, on standardised features
TEST_FRACTION = 0.25
VAL_FRACTION = 0.2                     # of the train rows, for the MLP's early stopping
CHUNK = 256                            # prompts per forward pass when collecting states
MLP = dict(hidden=128, steps=500, lr=3e-3)


def _alone(fn):
  """fn jitted, started only once its inputs are ready and waited for (see the module doc)."""
  jitted = jax.jit(fn)

  def run(*args):
    return jax.block_until_ready(jitted(*jax.block_until_ready(args)))
  return run


_pinv = _alone(jnp.linalg.pinv)
_eigh = _alone(jnp.linalg.eigh)


# ---------------------------------------------------------------------------------------------
# Hidden states and targets

def _is_residual(module, method_name):
  return method_name == "__call__" and (isinstance(module, Block) or module.name == "read_in")


def hidden_states(model, params, xs, ys):
  """Residual stream [L+1, B, 2n-1, width]: the read-in output, then the output of each block.

  Layer 0 omits the position embedding, a per-token constant that no probe at a fixed token can
  see; layer L precedes the final norm.
  """
  _, state = model.apply({"params": params}, xs, ys, capture_intermediates=_is_residual)
  inter = state["intermediates"]
  blocks = [inter["backbone"][f"block_{i}"]["__call__"][0] for i in range(model.depth)]
  return jnp.stack([inter["read_in"]["__call__"][0], *blocks])


def _states_fn(model, tokens):
  """Jitted (params, xs, ys) -> states [L+1, B, len(tokens), width] at the given tokens, CHUNK
  prompts per forward pass so that long prompts and many of them fit in memory."""
  tokens = np.asarray(tokens)

  def one(params, x, y):
    return hidden_states(model, params, x[None], y[None])[:, 0, tokens]

  @jax.jit
  def run(params, xs, ys):
    out = jax.lax.map(lambda xy: one(params, *xy), (xs, ys), batch_size=CHUNK)
    return jnp.moveaxis(out, 0, 1)
  return run


@jax.jit
def _moments(x, y):
  rows, cols = np.triu_indices(x.shape[-1])
  return jnp.einsum("bkd,bk->bd", x, y), jnp.einsum("bkd,bke->bde", x, x)[:, rows, cols]


def probe_targets(xs, ys, k: int, *, eta: float, w=None):
  """Targets from the first k pairs of each prompt, each [B, K]: X^T y, the upper triangle of
  X^T X (row-major, diagonal included), the minimum-norm least-squares fit and one GD step
  from 0 with step eta on (1/2k)|Xw - y|^2; plus the given task vectors w [B, d] as 'w'."""
  x, y = xs[:, :k], ys[:, :k]
  xty, xtx = _moments(x, y)
  out = {"xty": xty, "xtx": xtx, "w_ols": jnp.einsum("bdk,bk->bd", _pinv(x), y),
         "w_gd": (eta / k) * xty}
  if w is not None:
    out["w"] = jnp.asarray(w)
  return out


def _check_w_recoverable(spec: icl.Spec):
  if spec.function_class not in ("linear", "sparse_linear") or spec.n_points < spec.n_dims:
    raise ValueError(f"target 'w' needs w=[num_prompts, {spec.n_dims}] for {spec.function_class} "
                     f"prompts with n={spec.n_points}, d={spec.n_dims}")


def _recover_w(xs, ys):
  """w from the whole prompt by least squares: exact for noiseless linear data with n >= d."""
  return jnp.einsum("bdn,bn->bd", _pinv(xs), ys)


# ---------------------------------------------------------------------------------------------
# Probes. Features [..., N, D] and targets [..., N, K]; leading dims broadcast, so one call fits
# a probe per layer and per control.

def r2_score(y_true, y_pred):
  """R^2 per target dimension [..., K]: 1 - SSE / SST over the rows."""
  sse = jnp.sum((y_true - y_pred) ** 2, axis=-2)
  sst = jnp.sum((y_true - y_true.mean(-2, keepdims=True)) ** 2, axis=-2)
  return 1 - sse / sst


def _standardise(train, *others):
  mean, std = train.mean(-2, keepdims=True), train.std(-2, keepdims=True) + 1e-6
  return [(a - mean) / std for a in (train, *others)], mean, std


@jax.jit
def _ridge_moments(f_train, y_train, f_test):
  (z, z_test), _, _ = _standardise(f_train, f_test)
  y_mean = y_train.mean(-2, keepdims=True)
  zty = jnp.einsum("...nd,...nk->...dk", z, y_train - y_mean)
  return z, z_test, y_mean, zty, jnp.einsum("...nd,...ne->...de", z, z)


@jax.jit
def _ridge_predict(z, z_test, y_train, y_mean, zty, s, v):
  """Test predictions with alpha chosen by exact leave-one-out error, from the hat-matrix
  diagonal in the Gram eigenbasis (one alpha at a time to bound memory)."""
  n = z.shape[-2]
  zv = jnp.einsum("...nd,...de->...ne", z, v)
  vty = jnp.einsum("...de,...dk->...ek", v, zty)
  sst = jnp.sum((y_train - y_mean) ** 2, axis=-2)

  def loo_error(lam):
    shrink = 1 / (s + lam)
    fitted = jnp.einsum("...ne,...e,...ek->...nk", zv, shrink, vty) + y_mean
    hat = jnp.einsum("...ne,...e->...n", zv ** 2, shrink) + 1 / n   # 1/n: the intercept
    press = jnp.sum(((y_train - fitted) / (1 - hat[..., None])) ** 2, axis=-2)
    return jnp.mean(press / sst, axis=-1)

  lams = jnp.asarray(RIDGE_ALPHAS, z.dtype) * n
  lam = lams[jnp.argmin(jax.lax.map(loo_error, lams), axis=0)]
  coef = jnp.einsum("...de,...e,...ek->...dk", v, 1 / (s + lam[..., None]), vty)
  return jnp.einsum("...nd,...dk->...nk", z_test, coef) + y_mean, lam / n


def fit_linear_probe(f_train, y_train, f_test, y_test):
  """Ridge regression on features standardised on the train rows, alpha from RIDGE_ALPHAS by
  leave-one-out error; returns test {'r2', 'r2_per_target', 'alpha'}."""
  z, z_test, y_mean, zty, gram = _ridge_moments(f_train, y_train, f_test)
  s, v = _eigh(gram)
  pred, alpha = _ridge_predict(z, z_test, y_train, y_mean, zty, s, v)
  per_target = r2_score(y_test, pred)
  return {"r2": per_target.mean(-1), "r2_per_target": per_target, "alpha": alpha}


def _mlp_predict(z, y, z_test, key, *, hidden, steps, lr):
  """One GELU hidden layer trained full-batch with Adam on standardised z and y, keeping the
  step with the lowest loss on the last VAL_FRACTION of the rows: without it, a few hundred
  steps overfit a few thousand prompts and R^2 goes negative even where a signal exists."""
  n_fit = z.shape[0] - int(round(z.shape[0] * VAL_FRACTION))
  (z_fit, z_val), (y_fit, y_val) = jnp.split(z, [n_fit]), jnp.split(y, [n_fit])
  # Zero read-out: step 0 predicts the mean (R^2 = 0), the fallback when nothing is learnable.
  params = {"w1": jax.random.normal(key, (z.shape[-1], hidden)) / np.sqrt(z.shape[-1]),
            "b1": jnp.zeros(hidden), "w2": jnp.zeros((hidden, y.shape[-1])),
            "b2": jnp.zeros(y.shape[-1])}

  def apply(p, a):
    return jax.nn.gelu(a @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

  def loss(p, a, b):
    return jnp.mean((apply(p, a) - b) ** 2)

  opt = optax.adam(lr)

  def step(carry, _):
    p, state, best, best_loss = carry
    updates, state = opt.update(jax.grad(loss)(p, z_fit, y_fit), state)
    p = optax.apply_updates(p, updates)
    val = loss(p, z_val, y_val)
    best = jax.tree.map(lambda new, old: jnp.where(val < best_loss, new, old), p, best)
    return (p, state, best, jnp.minimum(val, best_loss)), None

  init = (params, opt.init(params), params, loss(params, z_val, y_val))
  (_, _, best, _), _ = jax.lax.scan(step, init, None, length=steps)
  return apply(best, z_test)


@functools.partial(jax.jit, static_argnames=("hidden", "steps"))
def fit_mlp_probe(f_train, y_train, f_test, y_test, key, *, hidden=MLP["hidden"],
                  steps=MLP["steps"], lr=MLP["lr"]):
  """1-hidden-layer MLP probe, early-stopped on a validation slice of the train rows; features
  and targets standardised on the train rows. Returns test {'r2', 'r2_per_target'}."""
  (z, z_test), _, _ = _standardise(f_train, f_test)
  (y,), y_mean, y_std = _standardise(y_train)
  fit = jnp.vectorize(functools.partial(_mlp_predict, key=key, hidden=hidden, steps=steps, lr=lr),
                      signature="(n,d),(n,k),(m,d)->(m,k)")
  per_target = r2_score(y_test, fit(z, y, z_test) * y_std + y_mean)
  return {"r2": per_target.mean(-1), "r2_per_target": per_target}


# ---------------------------------------------------------------------------------------------
# Report

def probe_report(model, params, untrained_params, spec: icl.Spec, key, *, num_prompts: int,
                 positions, targets=TARGETS, eta: float, w=None,
                 mlp_steps: int = MLP["steps"]) -> dict:
  """Probes every layer at tokens 2k (k in positions, 1 <= k < n) for each target and probe kind.

  Prompts are icl.sample(spec, key, num_prompts); w [num_prompts, d] are their task vectors, or
  None to recover them by least squares (noiseless linear data). The last TEST_FRACTION of the
  prompts is held out; each MLP probe takes mlp_steps Adam steps, early-stopped within them.
  Returns JSON-ready {'config': ..., 'probes': [one record per target, kind, layer and k]}.
  """
  positions, targets = [int(k) for k in positions], list(targets)
  if not all(1 <= k < spec.n_points for k in positions):
    raise ValueError(f"positions must lie in [1, {spec.n_points - 1}], got {positions}")
  if unknown := set(targets) - set(TARGETS):
    raise ValueError(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
  w_given = w is not None
  if w_given and np.shape(w) != (num_prompts, spec.n_dims):
    raise ValueError(f"w has shape {np.shape(w)}, expected {(num_prompts, spec.n_dims)}")
  if "w" in targets and not w_given:
    _check_w_recoverable(spec)
  batch = jax.jit(icl.sample, static_argnums=(0, 2))(spec, key, num_prompts)
  xs, ys = batch["xs"], batch["ys"]
  if "w" in targets and not w_given:
    w = _recover_w(xs, ys)
  states_fn = _states_fn(model, [2 * k for k in positions])
  real, untrained = states_fn(params, xs, ys), states_fn(untrained_params, xs, ys)
  feats = jnp.stack([real, untrained, real])          # [real, untrained, shuffled] x [L+1, ...]
  n_train = num_prompts - int(round(num_prompts * TEST_FRACTION))
  k_shuffle, k_mlp = jax.random.split(jax.random.fold_in(key, 1))
  perm = jax.random.permutation(k_shuffle, n_train)
  records = []
  for p, k in enumerate(positions):
    values = probe_targets(xs, ys, k, eta=eta, w=w if "w" in targets else None)
    f_train, f_test = feats[:, :, :n_train, p], feats[:, :, n_train:, p]
    for name in targets:
      y_train, y_test = values[name][:n_train], values[name][n_train:]
      y_train = jnp.stack([y_train, y_train, y_train[perm]])[:, None]
      fits = {"linear": fit_linear_probe(f_train, y_train, f_test, y_test),
              "mlp": fit_mlp_probe(f_train, y_train, f_test, y_test, k_mlp, steps=mlp_steps)}
      for kind, fit in fits.items():
        r2, per_target = np.asarray(fit["r2"]), np.asarray(fit["r2_per_target"])
        for layer in range(r2.shape[1]):
          real_r2, untrained_r2, shuffled_r2 = (float(v) for v in r2[:, layer])
          records.append({"target": name, "kind": kind, "layer": layer, "k": k, "token": 2 * k,
                          "r2": real_r2, "r2_untrained": untrained_r2, "r2_shuffled": shuffled_r2,
                          "gap": real_r2 - max(untrained_r2, shuffled_r2),
                          "r2_per_target": per_target[0, layer].tolist()})
  config = {"spec": dataclasses.asdict(spec), "num_prompts": num_prompts, "num_train": n_train,
            "num_test": num_prompts - n_train, "positions": positions, "targets": targets,
            "eta": eta, "layers": int(feats.shape[1]), "w_given": w_given,
            "mlp": dict(MLP, steps=mlp_steps), "ridge_alphas": RIDGE_ALPHAS.tolist()}
  return {"config": config, "probes": records}


def _at(report, k):
  """Records at position k (default: the last one probed), keyed by (target, kind, layer)."""
  k = report["config"]["positions"][-1] if k is None else k
  return k, {(r["target"], r["kind"], r["layer"]): r for r in report["probes"] if r["k"] == k}


def format_probe_table(report, k: int | None = None) -> str:
  """Markdown table at position k: one row per target and layer, test R^2 of each probe kind
  on the trained model, its two controls, and the gap to the better control."""
  k, at = _at(report, k)
  cols = [f"{kind} {c}" for kind in KINDS for c in ("R²", "untrained", "shuffled", "gap")]
  lines = [f"Probe R² at token {2 * k} (after k={k} pairs); layer 0 = read-in", "",
           "| target | layer | " + " | ".join(cols) + " |", "|---|---:" + "|---:" * len(cols) + "|"]
  for target in report["config"]["targets"]:
    for layer in range(report["config"]["layers"]):
      cells = [f"{at[target, kind, layer][key]:.3f}" for kind in KINDS
               for key in ("r2", "r2_untrained", "r2_shuffled", "gap")]
      lines.append(f"| {target} | {layer} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


@plot
def plot_probes(path: str, report, k: int | None = None):
  """R^2 against layer at position k, one panel per target: each probe kind on the trained
  model (solid), the untrained model (dashed) and shuffled targets (dotted)."""
  k, at = _at(report, k)
  targets, layers = report["config"]["targets"], np.arange(report["config"]["layers"])
  fig = figure(figsize=(3.2 * len(targets) + 1.6, 3.2), dpi=120)
  axes = np.atleast_1d(fig.subplots(1, len(targets), sharey=True))
  styles = {"r2": "-", "r2_untrained": "--", "r2_shuffled": ":"}
  for ax, target in zip(axes, targets):
    for color, kind in zip(("C0", "C1"), KINDS):
      for key, ls in styles.items():
        ax.plot(layers, [at[target, kind, l][key] for l in layers], ls=ls, color=color, marker=".",
                label=f"{kind} {key[3:] or 'trained'}")
    ax.set(title=target, xlabel="layer", xticks=layers)
    ax.axhline(0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
  axes[0].set(ylabel=f"test R² at token {2 * k} (clipped)", ylim=(-0.25, 1.05))
  axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
  fig.tight_layout()
  fig.savefig(path)
