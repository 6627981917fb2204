"""In-context softmax regression against one gradient-descent step, and the Lipschitz constants
of softmax regression's weight and data maps (Li, Song, Xia, Yu, Zhou 2023, arXiv 2304.13276).

Softmax regression: A in R^{n x d}, x in R^d, f(A, x) = softmax(A x) over the n rows,

    L(x) = 1/2 ||f(A, x) - b||^2,   grad L(x) = A^T (diag f - f f^T)(f - b).

A prompt is (A, b) with b = f(A, x*): A has i.i.d. N(0, 1/d) entries and x* = scale * g with
g ~ N(0, I_d), so each logit (A x*)_i is about N(0, scale^2) whatever d. One GD step from x0 = 0
is x1 = -eta grad L(0) = (eta / n) sum_i a_i (b_i - 1/n), since f(A, 0) = 1/n and sum_i b_i = 1.

The in-context model (PromptRegressor) reads the tokens z_i = [a_i, n b_i, 0] (i = 1..n) and a
query token [0, 0, 1] and returns x_hat from one softmax self-attention layer: a linear read-in,
substrax's Attention (kind softmax, non-causal) and a linear read-out at the query token. With
scores that grow with b_j the attention average sum_j w_j a_j carries the products a_j b_j that
GD's x1 is made of, which is why one layer can be compared with one step.

Lipschitz constants, on the set ||A||_2 <= R (operator norm), ||x||_2 <= R:
  weight map x -> f(A, x): J = (diag f - f f^T) A, so ||J||_2 <= ||A||_2 / 2 <= R / 2 (the
    softmax Jacobian's norm is at most 1/2: Gershgorin gives 2 f_i (1 - f_i) <= 1/2);
  data map A -> f(A, x), shifts measured in Frobenius norm: J[dA] = (diag f - f f^T) dA x, whose
    norm is ||diag f - f f^T||_2 ||x||_2 <= R / 2 (the worst dA is rank one, so the operator
    norm for dA gives the same constant).
The paper's bound, as summarised: "Universal bound factor M = n^{1.5} exp(10 R^2), with ||A||,
||x|| <= R; weight shifts (x) and data shifts (A) both move f by <= M ||shift||".

Exact spectral norms are taken with numpy: jaxlib 0.10's batched CPU LAPACK SVD can deadlock
XLA's thread pool (docs/design-notes.md), so jitted code uses power iteration only.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from substrax.models.attention import Attention

# Step sizes of the GD grid search. For small logits grad L(0) is about -x* / (n d), so eta* is
# of order n d (about n d / 2 in the cpu runs); the grid spans that for every preset.
ETAS = np.logspace(-2, 6, 161)
POWER_ITERATIONS = 30
ASCENT_RATE = 0.1   # first ascent step, as a fraction of R


def sample_prompts(key, num: int, n: int, d: int, scale: float) -> dict:
  """num prompts: A [num, n, d], b = f(A, x*) [num, n], x_star [num, d]."""
  key_a, key_x = jax.random.split(key)
  A = jax.random.normal(key_a, (num, n, d)) / jnp.sqrt(d)
  x_star = scale * jax.random.normal(key_x, (num, d))
  return {"A": A, "b": predict(A, x_star), "x_star": x_star}


def fresh_queries(key, prompts: dict) -> jax.Array:
  """A' [num, n, d]: a new matrix of each prompt's task, drawn as the prompts' A."""
  A = prompts["A"]
  return jax.random.normal(key, A.shape) / jnp.sqrt(A.shape[-1])


def predict(A, x):
  """f(A, x) = softmax(A x) over the rows; batched over leading axes."""
  return jax.nn.softmax(jnp.einsum("...nd,...d->...n", A, x), axis=-1)


def loss(A, b, x):
  return 0.5 * jnp.sum((predict(A, x) - b) ** 2, axis=-1)


def grad(A, b, x):
  """A^T (diag f - f f^T)(f - b), batched over leading axes."""
  f = predict(A, x)
  r = f - b
  s_r = f * r - f * jnp.sum(f * r, axis=-1, keepdims=True)
  return jnp.einsum("...nd,...n->...d", A, s_r)


def gd_step(A, b, eta):
  """x1 = x0 - eta grad L(x0) from x0 = 0."""
  return -eta * grad(A, b, jnp.zeros(A.shape[:-2] + A.shape[-1:], A.dtype))


@jax.jit
def step_losses(A, b, etas):
  """Mean L(x1) over the prompts for each eta [etas]; x1 is linear in eta, so one gradient."""
  g = gd_step(A, b, 1.0)
  return jax.vmap(lambda eta: jnp.mean(loss(A, b, eta * g)))(etas)


def best_step(prompts: dict) -> tuple[float, np.ndarray]:
  """eta* of the ETAS grid that minimises the mean L(x1) over `prompts`, and the grid's losses.
  An eta* at either end of the grid means the grid is too narrow."""
  losses = np.asarray(step_losses(prompts["A"], prompts["b"], jnp.asarray(ETAS)))
  i = int(np.argmin(losses))
  if i in (0, len(ETAS) - 1):
    raise ValueError(f"best_step: eta* = {ETAS[i]:g} is at the end of the grid")
  return float(ETAS[i]), losses


# ------------------------------------------------------------------------- in-context model

def prompt_tokens(A, b):
  """[..., n + 1, d + 2]: z_i = [a_i, n b_i, 0], then the query [0, 0, 1]. b_i is about 1/n, so
  n b_i puts the label column on the scale of a_i's entries (the read-in is linear either way)."""
  n = A.shape[-2]
  pairs = jnp.concatenate([A, n * b[..., None], jnp.zeros_like(b[..., None])], axis=-1)
  query = jnp.zeros(A.shape[:-2] + (1, A.shape[-1] + 2), A.dtype).at[..., -1].set(1.0)
  return jnp.concatenate([pairs, query], axis=-2)


class PromptRegressor(nn.Module):
  """x_hat [batch, d] from a prompt (A [batch, n, d], b [batch, n]): read-in, one softmax
  self-attention layer, read-out at the query token; no MLP, norm or residual (a residual would
  only add the query token's constant embedding, a bias of the read-out)."""
  width: int = 32
  num_heads: int = 4
  head_dim: int = 8

  @nn.compact
  def __call__(self, A, b):
    h = nn.Dense(self.width, name="read_in")(prompt_tokens(A, b))
    # Prompts are a few dozen tokens: the dense XLA form on every backend.
    h = Attention(num_heads=self.num_heads, head_dim=self.head_dim, kind="softmax",
                  causal=False, impl="xla", name="attention")(h)
    return nn.Dense(A.shape[-1], name="read_out")(h[:, -1])


def init_params(model: PromptRegressor, key, n: int, d: int):
  A, b = jnp.zeros((1, n, d)), jnp.full((1, n), 1.0 / n)
  return nn.meta.unbox(model.init(key, A, b))["params"]


def train(model: PromptRegressor, params, key, *, n: int, d: int, scale: float, steps: int,
          batch: int, learning_rate: float):
  """Adam on mean L(x_hat) over `batch` fresh prompts per step (fold_in(key, step)). A linear
  warmup over the first tenth (without it one seed in three stalled above GD's loss at n = 16),
  then a cosine decay to zero. Returns (params, losses [steps])."""
  tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, learning_rate, steps // 10, steps))

  def objective(params, prompts):
    x_hat = model.apply({"params": params}, prompts["A"], prompts["b"])
    return jnp.mean(loss(prompts["A"], prompts["b"], x_hat))

  def body(carry, step):
    params, opt_state = carry
    prompts = sample_prompts(jax.random.fold_in(key, step), batch, n, d, scale)
    value, grads = jax.value_and_grad(objective)(params, prompts)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
  return params, losses


# ------------------------------------------------------------------------------ comparison

def _cosine(u, v):
  return jnp.sum(u * v, -1) / (jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1))


def gd_metrics(prompts: dict, queries, x1) -> dict:
  """Per-prompt figures of GD's x1 alone [num]: its error on the fresh A', losses of x1 and of
  x0 = 0, its cosine to x*, and the shift ||f(A, x1) - f(A, 0)|| it makes."""
  A, b, x_star = prompts["A"], prompts["b"], prompts["x_star"]
  zero = jnp.zeros_like(x1)
  return {"error_gd": jnp.linalg.norm(predict(queries, x1) - predict(queries, x_star), axis=-1),
          "loss_gd": loss(A, b, x1), "loss_zero": loss(A, b, zero),
          "x_star_cosine_gd": _cosine(x1, x_star),
          "shift_gd": jnp.linalg.norm(predict(A, x1) - predict(A, zero), axis=-1)}


def model_metrics(prompts: dict, queries, x_hat, x1) -> dict:
  """Per-prompt figures of a model's x_hat [num], next to GD's x1: (a) cos(x_hat, x1); (b) the
  cosine between f - 1/n of each on the fresh A' and on the prompt's own A; (c) its error
  ||f(A', x_hat) - f(A', x*)|| and loss L(x_hat); its cosine to x* and its shift of f."""
  A, b, x_star = prompts["A"], prompts["b"], prompts["x_star"]
  n = A.shape[-2]
  centred = lambda M, x: predict(M, x) - 1.0 / n
  return {"x_cosine": _cosine(x_hat, x1),
          "prediction_cosine_fresh": _cosine(centred(queries, x_hat), centred(queries, x1)),
          "prediction_cosine_prompt": _cosine(centred(A, x_hat), centred(A, x1)),
          "error_model": jnp.linalg.norm(predict(queries, x_hat) - predict(queries, x_star),
                                         axis=-1),
          "loss_model": loss(A, b, x_hat), "x_star_cosine_model": _cosine(x_hat, x_star),
          "shift_model": jnp.linalg.norm(predict(A, x_hat) - predict(A, jnp.zeros_like(x_hat)),
                                         axis=-1)}


def shift_bounds(A: np.ndarray, x: np.ndarray) -> dict:
  """For the shift 0 -> x of the weight map at each prompt's A: the analytic bound ||A||_2 / 2 ||x||
  and log10 of the paper's M ||x||, R = max(||A||_2, ||x||) (the smallest set holding A, 0, x)."""
  norm_a = spectral_norm(A)
  norm_x = np.linalg.norm(np.asarray(x, np.float64), axis=-1)
  radius = np.maximum(norm_a, norm_x)
  return {"analytic_bound": norm_a / 2 * norm_x,
          "log10_paper_bound": log10_paper_bound(A.shape[-2], radius) + np.log10(norm_x)}


# ------------------------------------------------------------------------ Lipschitz constants

def paper_bound(n: int, radius):
  """M = n^1.5 exp(10 R^2) (the summary's form of the paper's bound)."""
  return n ** 1.5 * np.exp(10 * np.asarray(radius, np.float64) ** 2)


def log10_paper_bound(n: int, radius):
  return 1.5 * np.log10(n) + 10 * np.asarray(radius, np.float64) ** 2 / np.log(10)


def weight_jacobian(A, x):
  """d f(A, x) / d x [n, d] by autodiff (not the closed form it is tested against)."""
  return jax.jacfwd(lambda x: predict(A, x))(x)


def data_jacobian(A, x):
  """d f(A, x) / d A as a matrix [n, n d]: its norm is the constant for Frobenius shifts."""
  n, d = A.shape
  return jax.jacfwd(lambda A: predict(A, x))(A).reshape(n, n * d)


JACOBIANS = {"weight": weight_jacobian, "data": data_jacobian}


def _linearised(which: str, A, x):
  """(the map of the shifted argument, the point): x -> f(A, x) at x, or A -> f(A, x) at A."""
  if which == "weight":
    return (lambda x: predict(A, x)), x
  return (lambda A: predict(A, x)), A


def _top_right_vector(fn, point, v):
  """Power iteration on J^T J from v (J the Jacobian of fn at point, applied matrix-free by
  jvp and vjp): J's top right singular vector, approximately, shaped like point."""
  _, pullback = jax.vjp(fn, point)

  def body(v, _):
    w = pullback(jax.jvp(fn, (point,), (v,))[1])[0]
    return w / jnp.linalg.norm(w), None
  return jax.lax.scan(body, v, length=POWER_ITERATIONS)[0]


def _retract(A, x, radius):
  """Back into the set: x and A rescaled when over R (A's norm by power iteration; the exact
  projection of the final points is numpy's, in project)."""
  v = _top_right_vector(lambda v: A @ v, jnp.zeros(A.shape[-1]), jnp.ones(A.shape[-1]))
  norm_a = jnp.linalg.norm(A @ v)
  return (A * jnp.minimum(1.0, radius / norm_a),
          x * jnp.minimum(1.0, radius / jnp.linalg.norm(x)))


@functools.partial(jax.jit, static_argnames=("which", "steps"))
def ascend(which: str, A, x, radius, steps: int):
  """Projected gradient ascent on ||J(A, x) v|| with v J's top right singular vector (held
  fixed in each gradient, which makes it the gradient of the spectral norm), from each of the
  starts A [s, n, d], x [s, d]; normalised steps of ASCENT_RATE R, decaying linearly. Returns the
  starts' best points along the way."""
  def value(A, x, v):
    fn, point = _linearised(which, A, x)
    return jnp.linalg.norm(jax.jvp(fn, (point,), (v,))[1])

  def one(A, x):
    def body(carry, t):
      A, x, v, best = carry
      v = jax.lax.stop_gradient(_top_right_vector(*_linearised(which, A, x), v))
      norm, (g_a, g_x) = jax.value_and_grad(value, argnums=(0, 1))(A, x, v)
      best = jax.tree.map(lambda new, old: jnp.where(norm > best[0], new, old), (norm, A, x),
                          best)
      size = ASCENT_RATE * radius * (1.0 - t / steps)
      A = A + size * g_a / (jnp.linalg.norm(g_a) + 1e-12)
      x = x + size * g_x / (jnp.linalg.norm(g_x) + 1e-12)
      return (*_retract(A, x, radius), v, best), None

    v0 = jnp.ones_like(_linearised(which, A, x)[1])
    start = (A, x, v0 / jnp.linalg.norm(v0), (jnp.zeros(()), A, x))
    (A, x, v, best), _ = jax.lax.scan(body, start, jnp.arange(steps))
    return best[1], best[2]

  return jax.vmap(one)(A, x)


def spectral_norm(M) -> np.ndarray:
  """Largest singular value of each matrix [..., p, q] (numpy, float64), as the root of the top
  eigenvalue of the smaller Gram matrix: numpy's SVD of the data map's wide 64 x 512 Jacobians
  took 20-30 s for 512 of them here, the Gram route 0.2 s."""
  M = np.asarray(M, np.float64)
  gram = M @ np.swapaxes(M, -1, -2) if M.shape[-2] <= M.shape[-1] else np.swapaxes(M, -1, -2) @ M
  return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[..., -1], 0.0))


def project(A: np.ndarray, x: np.ndarray, radius: float):
  """Exact projection (numpy): A's singular values clipped at R, x rescaled to ||x|| <= R."""
  u, s, vt = np.linalg.svd(np.asarray(A, np.float64), full_matrices=False)
  A = np.einsum("...ik,...k,...kj->...ij", u, np.minimum(s, radius), vt)
  x = np.asarray(x, np.float64)
  norm_x = np.linalg.norm(x, axis=-1, keepdims=True)
  return A, x * np.minimum(1.0, radius / np.maximum(norm_x, 1e-30))


@functools.partial(jax.jit, static_argnames="which")
def _jacobians(which: str, A, x):
  return jax.vmap(JACOBIANS[which])(A, x)


def jacobian_norms(which: str, A, x) -> np.ndarray:
  """Exact ||J(A, x)||_2 for each point [s] (autodiff Jacobians, numpy eigenvalues of J J^T)."""
  jac = _jacobians(which, jnp.asarray(A, jnp.float32), jnp.asarray(x, jnp.float32))
  return spectral_norm(jac)


def random_points(key, num: int, n: int, d: int, radius: float):
  """num points of the set: Gaussian directions at radii uniform in [0, R], half of them on the
  boundary (where a Jacobian's norm is largest: it grows with both ||A|| and ||x||)."""
  key_a, key_x, key_r = jax.random.split(key, 3)
  A = np.asarray(jax.random.normal(key_a, (num, n, d)), np.float64)
  x = np.asarray(jax.random.normal(key_x, (num, d)), np.float64)
  radii = np.asarray(jax.random.uniform(key_r, (2, num)), np.float64) * radius
  radii[:, : num // 2] = radius
  A *= (radii[0] / spectral_norm(A))[:, None, None]
  x *= (radii[1] / np.linalg.norm(x, axis=-1))[:, None]
  return A, x


def lipschitz_estimate(which: str, key, n: int, d: int, radius: float, *, points: int,
                       starts: int, steps: int) -> dict:
  """The sup of ||J||_2 over the set, from below: the largest norm at `points` random points,
  then at the best `starts` of them after `steps` of projected ascent (exactly projected
  back and re-measured with numpy, so both figures are norms at feasible points)."""
  A, x = random_points(key, points, n, d, radius)
  norms = jacobian_norms(which, A, x)
  top = np.argsort(norms)[-starts:]
  A_up, x_up = ascend(which, jnp.asarray(A[top], jnp.float32), jnp.asarray(x[top], jnp.float32),
                      float(radius), steps)
  refined = jacobian_norms(which, *project(A_up, x_up, radius))
  return {"random": float(norms.max()), "refined": float(max(norms.max(), refined.max()))}
