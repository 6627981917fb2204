"""In-context regression algorithms, vectorised over prompts and prefix lengths.

Every function maps xs [B, n, d], ys [B, n] to predictions [B, n] where entry k predicts y_k
from the first k pairs only (k = 0 sees nothing and predicts 0), the convention of the trained
models in substrax.models.icl.

Run each baseline in its own jit and wait for it before starting the next. jaxlib 0.10's CPU
LAPACK kernels (the SVD behind `pinv`, the LU behind `solve`) split their batch over XLA's
intra-op pool and block a pool thread until it is done; two of them at once, or one beside
other work, can take every thread and deadlock (jaxlib 0.11 removed that parallel path).
"""
import functools

import jax
import jax.numpy as jnp


def _prefixes(xs, ys):
  """X [B, k, n, d] and Y [B, k, n]: prompt b truncated to its first k points (rest zero)."""
  n = xs.shape[1]
  mask = (jnp.arange(n)[None, :] < jnp.arange(n)[:, None]).astype(xs.dtype)  # [k, i]
  return xs[:, None] * mask[None, :, :, None], ys[:, None] * mask[None], mask


def _predict(xs, w):
  return jnp.einsum("bkd,bkd->bk", xs, w)


def _moment(X, Y):
  return jnp.einsum("bknd,bkn->bkd", X, Y)  # X^T y per prefix


def least_squares_weights(xs, ys):
  """w [B, n, d] per prefix: minimum-norm least squares (pinv)."""
  X, Y, _ = _prefixes(xs, ys)
  return jnp.einsum("bkdn,bkn->bkd", jnp.linalg.pinv(X), Y)


def least_squares(xs, ys):
  """Minimum-norm least squares, the optimum for noiseless linear data."""
  return _predict(xs, least_squares_weights(xs, ys))


def ridge_weights(xs, ys, alpha: float):
  X, Y, _ = _prefixes(xs, ys)
  gram = jnp.einsum("bknd,bkne->bkde", X, X) + alpha * jnp.eye(xs.shape[-1])
  return jnp.linalg.solve(gram, _moment(X, Y)[..., None])[..., 0]


def ridge(xs, ys, alpha: float):
  return _predict(xs, ridge_weights(xs, ys, alpha))


def averaging(xs, ys):
  """w = mean_i x_i y_i (Garg et al.'s averaging estimator)."""
  X, Y, mask = _prefixes(xs, ys)
  return _predict(xs, _moment(X, Y) / jnp.maximum(mask.sum(-1), 1.0)[:, None])


def gd_optimal_step_weights(xs, ys, noise_var: float = 0.0):
  """w [B, n, d] per prefix: one GD step from w=0 on the mean squared loss, with the optimal
  step k/(k+d+1+sigma^2) for x, w ~ N(0, I)."""
  X, Y, mask = _prefixes(xs, ys)
  k = mask.sum(-1)
  return _moment(X, Y) / (k + xs.shape[-1] + 1 + noise_var)[:, None]


def gd_optimal_step(xs, ys, noise_var: float = 0.0):
  """For x, w ~ N(0, I) its normalised error is (d+1+sigma^2)/(k+d+1+sigma^2) (+ noise)."""
  return _predict(xs, gd_optimal_step_weights(xs, ys, noise_var))


def gd_steps_weights(xs, ys, steps: int):
  """w [B, n, d] per prefix after `steps` steps of steepest descent from w=0 on |Xw - y|^2,
  with exact line search."""
  X, Y, _ = _prefixes(xs, ys)
  w = jnp.zeros(X.shape[:2] + X.shape[-1:], xs.dtype)
  for _ in range(steps):
    g = jnp.einsum("bknd,bkn->bkd", X, jnp.einsum("bknd,bkd->bkn", X, w) - Y)
    xg = jnp.einsum("bknd,bkd->bkn", X, g)
    lr = jnp.sum(g * g, -1) / jnp.maximum(jnp.sum(xg * xg, -1), 1e-30)
    w = w - lr[..., None] * g
  return w


def gd_steps(xs, ys, steps: int):
  return _predict(xs, gd_steps_weights(xs, ys, steps))


def knn(xs, ys, k: int):
  """Mean y of the k nearest earlier points (fewer while fewer exist)."""
  n = xs.shape[1]
  dist = jnp.sum((xs[:, :, None] - xs[:, None]) ** 2, -1)                # [B, query, i]
  earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]
  neg, idx = jax.lax.top_k(jnp.where(earlier, -dist, -jnp.inf), min(k, n))
  valid = jnp.isfinite(neg)
  y = jnp.take_along_axis(jnp.broadcast_to(ys[:, None], dist.shape), idx, axis=-1)
  return jnp.sum(jnp.where(valid, y, 0.0), -1) / jnp.maximum(valid.sum(-1), 1)


def lasso(xs, ys, alpha: float, iters: int = 300):
  """argmin_w 1/(2k)|Xw - y|^2 + alpha |w|_1 by FISTA."""
  X, Y, mask = _prefixes(xs, ys)
  k = jnp.maximum(mask.sum(-1), 1.0)[None, :, None]
  lip = jnp.sum(X * X, axis=(-2, -1))[..., None] / k + 1e-12  # Frobenius bound on the curvature

  def body(_, carry):
    w, z, t = carry
    g = jnp.einsum("bknd,bkn->bkd", X, jnp.einsum("bknd,bkd->bkn", X, z) - Y) / k
    u = z - g / lip
    w_new = jnp.sign(u) * jnp.maximum(jnp.abs(u) - alpha / lip, 0.0)
    t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    return w_new, w_new + (t - 1) / t_new * (w_new - w), t_new

  w0 = jnp.zeros(X.shape[:2] + X.shape[-1:], xs.dtype)
  w, _, _ = jax.lax.fori_loop(0, iters, body, (w0, w0, jnp.float32(1.0)))
  return _predict(xs, w)


def zero(xs, ys):
  return jnp.zeros_like(ys)


def baseline_fns(*, ridge_alpha: float, lasso_alpha: float, knn_k: int, gd_steps_n: int,
                 noise_var: float = 0.0):
  """Every baseline as (xs, ys) -> predictions, keyed by its name in eval JSON and plots."""
  p = functools.partial
  return {
      "least_squares": least_squares,
      "ridge": p(ridge, alpha=ridge_alpha),
      "gd_optimal_step": p(gd_optimal_step, noise_var=noise_var),
      f"gd_{gd_steps_n}_steps": p(gd_steps, steps=gd_steps_n),
      f"{knn_k}nn": p(knn, k=knn_k),
      "averaging": averaging,
      "lasso": p(lasso, alpha=lasso_alpha),
      "zero": zero,
  }
