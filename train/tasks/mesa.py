"""Mesa-optimisation (Zheng et al. 2024): does a linear attention layer trained autoregressively
on x_{t+1} = W x_t run one step of gradient descent on the in-context least-squares objective?

Data: substrax.data.icl.sample_ar (W Haar-orthogonal per sequence, x_1 ~ N(0, s^2 I)). Model:
one linear causal self-attention layer on tokens e_t = (x_t, x_{t-1}) (x_0 = 0), trained on the
teacher-forced next-token MSE at every position. The evaluator reads the model's implicit
W_hat_t (the linear map it applies to x_t) and compares it with one GD step from 0 on
sum_{i<t} |x_{i+1} - W x_i|^2 (step fitted), with the OLS solution and with the true W.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from substrax.data import icl as icl_data
from substrax.train.analysis import reporting
from substrax.train.tasks import Task
from substrax.train.validation import require


def validate(config):
  d, m, e = config.data, config.model, config.eval
  require(d.n_dims > 0, "data.n_dims", f"must be positive, got {d.n_dims}")
  # The comparisons start at t = 2 tokens (one context pair) and need a target x_{t+1}.
  require(d.length >= 3, "data.length", f"must be at least 3, got {d.length}")
  require(d.init_scale > 0, "data.init_scale", f"must be positive, got {d.init_scale}")
  require(m.init_scale > 0, "model.init_scale", f"must be positive, got {m.init_scale}")
  require(e.num_sequences > 0, "eval.num_sequences",
          f"must be positive, got {e.num_sequences}")


class MesaAttention(nn.Module):
  """One linear causal self-attention layer in the merged parametrisation (Ahn et al.; Zheng et
  al. 2024), without softmax: the prediction of x_{t+1} at position t is

      y_t = W_PV (1/t) sum_{i<=t} e_i e_i^T W_KQ q_t,   e_i = (x_i, x_{i-1}),  q_t = e_t.

  Zheng et al. embed (0, x_t, x_{t-1}) and read the prediction off the zero block; only the
  rows of W_PV that write that block reach the output, so W_PV here is those rows, [d, 2d].
  With W_PV = [I 0] and W_KQ = [[0 0] [eta I 0]], y_t = (eta/t) sum_{i<=t} x_i x_{i-1}^T x_t:
  one GD step from W = 0 (see `gd_weights`).
  """
  n_dims: int
  init_scale: float

  def setup(self):
    d, init = self.n_dims, nn.initializers.normal(self.init_scale)
    self.w_kq = self.param("w_kq", init, (2 * d, 2 * d))
    self.w_pv = self.param("w_pv", init, (d, 2 * d))

  def __call__(self, xs):
    """[B, L, d] -> predictions of x_{t+1} at every position, [B, L, d]."""
    return self.predict(xs, xs)

  def predict(self, xs, queries):
    """As __call__, but the x_t slot of each query token comes from `queries` [B, L, d]: the
    keys and values keep x_t as data, so d y_t / d queries_t is the map applied to x_t."""
    prev = jnp.pad(xs, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    tokens = jnp.concatenate([xs, prev], -1)
    q = jnp.concatenate([queries, prev], -1)
    n = xs.shape[1]
    scores = jnp.einsum("bic,ce,bte->bti", tokens, self.w_kq, q)
    scores = jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores, 0.0)
    scores = scores / jnp.arange(1, n + 1, dtype=xs.dtype)[:, None]
    return jnp.einsum("bti,bic,oc->bto", scores, tokens, self.w_pv)


def gd_weights(n_dims: int, eta: float = 1.0) -> dict:
  """MesaAttention params whose prediction at t is W_GD x_t, W_GD = (eta/t) sum_{i<t}
  x_{i+1} x_i^T: one GD step from 0 on (1/2) sum_{i<t} |x_{i+1} - W x_i|^2, step eta/t."""
  d = n_dims
  return {"w_kq": jnp.zeros((2 * d, 2 * d)).at[d:, :d].set(eta * jnp.eye(d)),
          "w_pv": jnp.zeros((d, 2 * d)).at[:, :d].set(jnp.eye(d))}


def implicit_weights(predict, xs):
  """W_hat [B, L, d, d]: d y_t / d x_t through the query slot, exact for a model linear in it.

  One forward-mode Jacobian w.r.t. a shift v added to every query at once: y_t sees only its
  own query, so block t of d y / d v is d y_t / d q_t. `predict(xs, queries)` as the model's.
  """
  return jax.jacfwd(lambda v: predict(xs, xs + v))(jnp.zeros(xs.shape[-1], xs.dtype))


def _cosine(a, b):
  """Per-sequence cosine of flattened matrices [N, d, d]."""
  num = np.einsum("nij,nij->n", a, b)
  return num / np.maximum(np.linalg.norm(a, axis=(1, 2)) * np.linalg.norm(b, axis=(1, 2)),
                          1e-30)


def _compare(a, ref):
  """Mean cosine and relative Frobenius error |a - ref| / |ref| over sequences."""
  rel = np.linalg.norm(a - ref, axis=(1, 2)) / np.maximum(np.linalg.norm(ref, axis=(1, 2)),
                                                          1e-30)
  return float(_cosine(a, ref).mean()), float(rel.mean())


def _mse(pred, target):
  return float(np.mean((pred - target) ** 2))


def analyse(xs, preds, w_model, w_true) -> dict:
  """Per position t = 2..L-1 (tokens seen; the target is x_{t+1}): the model's implicit W
  against one GD step (step fitted to the model), OLS on the context and the true W, and the
  prediction MSE (per coordinate) of each predictor and of W_hat x_t alone. Plain float64 numpy
  on the host: the batched pseudo-inverses stay off the training mesh (LAPACK deadlock,
  docs/design-notes.md).

  xs [N, L, d], preds [N, L, d] (the model's predictions of x_{t+1}), w_model [N, L, d, d],
  w_true [N, d, d].
  """
  xs, preds, w_model, w_true = (np.asarray(a, np.float64) for a in (xs, preds, w_model, w_true))
  n_pos = xs.shape[1]
  # gd_dir[:, t-2] = sum_{i<t} x_{i+1} x_i^T: minus the gradient at W = 0 after t tokens.
  gd_dir = np.cumsum(np.einsum("nia,nib->niab", xs[:, 1:], xs[:, :-1]), axis=1)
  pairs = ("model_vs_gd", "model_vs_ols", "model_vs_true", "gd_vs_true", "ols_vs_true")
  align = {k: {"cosine": [], "rel_error": []} for k in pairs}
  mse = {k: [] for k in ("model", "model_implicit_w", "gd", "gd_best", "ols", "copy_last")}
  ts, etas = list(range(2, n_pos)), []
  for t in ts:
    x_t, target, w_hat, s = xs[:, t - 1], xs[:, t], w_model[:, t - 1], gd_dir[:, t - 2]
    # One step size for all sequences at this t, by least squares on the matrices.
    eta = np.sum(w_hat * s) / np.sum(s * s)
    w_gd = eta * s
    # Minimum-norm OLS; rtol absorbs the float32 rounding of the simulated sequences.
    w_ols = np.swapaxes(np.linalg.pinv(xs[:, :t - 1], rtol=1e-6) @ xs[:, 1:t], 1, 2)
    for key, (a, ref) in zip(pairs, ((w_hat, w_gd), (w_hat, w_ols), (w_hat, w_true),
                                     (w_gd, w_true), (w_ols, w_true))):
      cos, rel = _compare(a, ref)
      align[key]["cosine"].append(cos)
      align[key]["rel_error"].append(rel)
    s_x = np.einsum("nij,nj->ni", s, x_t)
    eta_best = np.sum(s_x * target) / np.sum(s_x * s_x)   # the GD step with the least MSE
    mse["model"].append(_mse(preds[:, t - 1], target))
    # W_hat x_t alone: what the model's x_{t-1} query slot adds beyond its implicit W.
    mse["model_implicit_w"].append(_mse(np.einsum("nij,nj->ni", w_hat, x_t), target))
    mse["gd"].append(_mse(eta * s_x, target))
    mse["gd_best"].append(_mse(eta_best * s_x, target))
    mse["ols"].append(_mse(np.einsum("nij,nj->ni", w_ols, x_t), target))
    mse["copy_last"].append(_mse(x_t, target))
    etas.append(float(eta))
  return {"t": ts, "eta_gd": etas, "alignment": align, "mse": mse}


def build(config) -> Task:
  d, m, e = config.data, config.model, config.eval
  model = MesaAttention(n_dims=d.n_dims, init_scale=m.init_scale)
  sample = lambda key, n: icl_data.sample_ar(key, n, d.n_dims, d.length,
                                             init_scale=d.init_scale)

  def sample_batch(data, key, step):
    del data, step  # fresh sequences every step: the key already depends on the step
    return {"xs": sample(key, config.batch_size)["xs"]}

  def mse_per_position(params, xs):
    preds = model.apply({"params": params}, xs)[:, :-1]   # the last has no target
    return jnp.mean((preds - xs[:, 1:]) ** 2, axis=(0, 2))

  def loss_fn(params, model_state, batch, step):
    del step
    return jnp.mean(mse_per_position(params, batch["xs"])), ({}, model_state)

  held_out = {"xs": sample(jax.random.key(e.seed), min(e.num_sequences, 512))["xs"]}

  def eval_step(params, model_state, held_out, step):
    del model_state, step
    per_position = mse_per_position(params, held_out["xs"])
    return {"loss": jnp.mean(per_position), "mse_last": per_position[-1]}

  @jax.jit
  def probe(params):
    data = sample(jax.random.fold_in(jax.random.key(e.seed), 1), e.num_sequences)
    predict = lambda xs, queries: model.apply({"params": params}, xs, queries, method="predict")
    return (data["xs"], data["W"], predict(data["xs"], data["xs"]),
            implicit_weights(predict, data["xs"]))

  def evaluate(params, model_state, workdir, step):
    del model_state
    xs, w_true, preds, w_model = jax.device_get(probe(params))
    payload = {"step": int(step), "n_dims": d.n_dims, "length": d.length,
               "num_sequences": e.num_sequences, **analyse(xs, preds, w_model, w_true)}
    ref = gd_weights(d.n_dims)
    payload["weights_cosine_with_gd_construction"] = {
        k: float(_cosine(np.asarray(params[k])[None], np.asarray(ref[k])[None])[0])
        for k in ref}
    # Frobenius norms of the blocks (rows: key slot x_i / x_{i-1}; columns: query slot x_t /
    # x_{t-1}): GD uses only w_kq[1][0] and w_pv[0].
    w_kq, w_pv, n = np.asarray(params["w_kq"]), np.asarray(params["w_pv"]), d.n_dims
    payload["weight_block_norms"] = {
        "w_kq": [[float(np.linalg.norm(w_kq[i:i + n, j:j + n])) for j in (0, n)] for i in (0, n)],
        "w_pv": [float(np.linalg.norm(w_pv[:, j:j + n])) for j in (0, n)]}
    out = os.path.join(workdir, "eval")
    reporting.write_json(os.path.join(out, "mesa.json"), payload)
    plot(os.path.join(out, "mesa.png"), payload)
    print_summary(payload)
    return payload

  return Task(model=model, init_inputs=(jnp.zeros((1, d.length, d.n_dims)),), train_data={},
              sample_batch=sample_batch, batch_axes={"xs": ("batch", None, None)},
              loss_fn=loss_fn, eval_data=held_out, eval_step=eval_step, evaluate=evaluate)


@reporting.plot
def plot(path: str, r: dict):
  fig = reporting.figure(figsize=(11, 4.2), dpi=120)
  left, right = fig.subplots(1, 2)
  for key, style in (("model_vs_gd", "-"), ("model_vs_ols", "-"), ("model_vs_true", "-"),
                     ("gd_vs_true", ":"), ("ols_vs_true", ":")):
    left.plot(r["t"], r["alignment"][key]["cosine"], ls=style, lw=2 if style == "-" else 1.3,
              label=key.replace("_", " "))
  left.axvline(r["n_dims"] + 1, color="grey", lw=0.8, alpha=0.5)   # OLS is exact from here
  left.set(xlabel="tokens seen t", ylabel="cosine of W matrices", ylim=(-0.05, 1.05),
           title=f"implicit W, d={r['n_dims']}, step {r['step']}")
  for key, values in r["mse"].items():
    right.plot(r["t"], values, lw=2.5 if key == "model" else 1.3,
               ls="-" if key == "model" else "--", label=key)
  # Linear axis: OLS is exact (MSE ~1e-13) from t = d + 1 and would flatten a log scale.
  right.set(xlabel="tokens seen t", ylabel="MSE of $x_{t+1}$ per coordinate", ylim=(0, None),
            title="next-token prediction")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)


def print_summary(r: dict):
  d, last = r["n_dims"], r["t"][-1]
  shown = sorted({t for t in (2, d, d + 1, 2 * d, last) if 2 <= t <= last})
  idx = [r["t"].index(t) for t in shown]
  cols = [f"t={t}" for t in shown]
  print(f"implicit W of the model (mean over {r['num_sequences']} sequences, step {r['step']}):")
  rows = {}
  for key, v in r["alignment"].items():
    rows[f"cos {key}"] = [v["cosine"][i] for i in idx]
    rows[f"relerr {key}"] = [v["rel_error"][i] for i in idx]
  rows["eta_gd * t"] = [r["eta_gd"][i] * t for i, t in zip(idx, shown)]
  print(reporting.format_table(cols, rows, first="quantity"))
  print("MSE of x_{t+1} per coordinate:")
  print(reporting.format_table(cols, {k: [v[i] for i in idx] for k, v in r["mse"].items()},
                               first="predictor"))
  print("weight cosine with the GD construction:",
        {k: round(v, 3) for k, v in r["weights_cosine_with_gd_construction"].items()},
        "block norms:", np.round(r["weight_block_norms"]["w_kq"], 3).tolist(),
        np.round(r["weight_block_norms"]["w_pv"], 3).tolist())
