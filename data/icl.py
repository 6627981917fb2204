"""In-context learning prompts: function classes, input covariances and Garg's curriculum.

Everything here is a pure function of a PRNG key (and the step, for the curriculum), so prompts
are sampled on device inside jit and a resumed run sees exactly the data it would have seen.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

FUNCTION_CLASSES = ("linear", "sparse_linear", "noisy_linear", "linear_classification",
                    "relu_2nn", "decision_tree")
COVARIANCES = ("isotropic", "skewed")
RELU_HIDDEN = 100   # Garg et al.'s 2-layer ReLU net width
TREE_DEPTH = 4


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static description of a prompt distribution."""
  function_class: str
  n_dims: int
  n_points: int
  covariance: str = "isotropic"
  noise_std: float = 0.0
  sparsity: int = 3
  dims_start: int | None = None   # curriculum; None means start at n_dims
  dims_inc: int = 1
  points_start: int | None = None
  points_inc: int = 2
  interval: int = 2000

  @classmethod
  def from_config(cls, data) -> "Spec":
    cur = data.curriculum
    return cls(data.function_class, data.n_dims, data.n_points, data.covariance, data.noise_std,
               data.sparsity, cur.dims_start, cur.dims_inc, cur.points_start, cur.points_inc,
               cur.interval)

  @property
  def is_classification(self) -> bool:
    return self.function_class == "linear_classification"

  @property
  def metric(self) -> str:
    """Name of the per-prefix error reported by evaluators."""
    if self.is_classification:
      return "error_rate"
    return f"squared_error/{self.normalizer_name}"

  @property
  def normalizer_name(self) -> str:
    return {"sparse_linear": "s", "decision_tree": "1"}.get(self.function_class, "d")

  @property
  def normalizer(self) -> float:
    """Garg et al.'s normalisation: the zero predictor scores about 1."""
    return {"d": self.n_dims, "s": self.sparsity, "1": 1}[self.normalizer_name]


def curriculum(spec: Spec, step):
  """(active dims, active points) at `step`: grow by *_inc every `interval` steps."""
  def grow(start, inc, end):
    if start is None:
      return jnp.int32(end)
    return jnp.minimum(start + inc * (step // spec.interval), end).astype(jnp.int32)
  return (grow(spec.dims_start, spec.dims_inc, spec.n_dims),
          grow(spec.points_start, spec.points_inc, spec.n_points))


def covariance_root(spec: Spec):
  """S with x = z S, z ~ N(0, I): identity, or a fixed random rotation with eigenvalues 1/i.

  The skewed case follows Garg et al.: Cov(x) = S^T S has eigenvalues proportional to 1/i^2,
  rescaled so that E|x|^2 = d as in the isotropic case.
  """
  d = spec.n_dims
  if spec.covariance == "isotropic":
    return jnp.eye(d)
  eig = 1.0 / jnp.arange(1, d + 1)
  eig = eig * math.sqrt(d) / jnp.linalg.norm(eig)
  u, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (d, d)))
  return (u * eig) @ u.T


def _weights(key, shape, dims_active):
  w = jax.random.normal(key, shape)
  return w * (jnp.arange(shape[-1]) < dims_active)


def _targets(spec: Spec, key, xs, dims_active):
  """y for every x in each prompt of xs [B, n, d]."""
  b, _, d = xs.shape
  kw, kn = jax.random.split(key)
  fc = spec.function_class
  if fc in ("linear", "noisy_linear", "linear_classification"):
    y = jnp.einsum("bnd,bd->bn", xs, _weights(kw, (b, d), dims_active))
    if fc == "noisy_linear":
      y = y + spec.noise_std * jax.random.normal(kn, y.shape)
    return jnp.sign(y) if fc == "linear_classification" else y
  if fc == "sparse_linear":
    # Keep `sparsity` coordinates, chosen uniformly among the active ones.
    scores = jax.random.uniform(kn, (b, d)) - 2.0 * (jnp.arange(d) >= dims_active)
    kth = jax.lax.top_k(scores, spec.sparsity)[0][:, -1:]
    w = jax.random.normal(kw, (b, d)) * (scores >= kth)
    return jnp.einsum("bnd,bd->bn", xs, w)
  if fc == "relu_2nn":
    k1, k2 = jax.random.split(kw)
    w1 = jax.random.normal(k1, (b, d, RELU_HIDDEN))
    w2 = jax.random.normal(k2, (b, RELU_HIDDEN))
    h = jax.nn.relu(jnp.einsum("bnd,bdh->bnh", xs, w1))
    return jnp.einsum("bnh,bh->bn", h, w2) * math.sqrt(2 / RELU_HIDDEN)
  if fc == "decision_tree":
    # A complete depth-4 tree: internal node j splits on x[coord_j] > 0; leaves ~ N(0, 1).
    n_internal = 2**TREE_DEPTH - 1
    coords = jax.random.randint(kn, (b, n_internal), 0, dims_active)
    leaves = jax.random.normal(kw, (b, n_internal + 1))
    node = jnp.zeros(xs.shape[:2], jnp.int32)
    for _ in range(TREE_DEPTH):
      c = jnp.take_along_axis(coords, node, axis=1)
      right = jnp.take_along_axis(xs, c[..., None], axis=2)[..., 0] > 0
      node = 2 * node + 1 + right
    return jnp.take_along_axis(leaves, node - n_internal, axis=1)
  raise ValueError(f"unknown function class {fc!r}")


def sample(spec: Spec, key, batch_size: int, dims_active=None):
  """Draws `batch_size` prompts: {'xs': [B, n, d], 'ys': [B, n]} (float32).

  Coordinates at or beyond `dims_active` are zero (Garg's curriculum truncation).
  """
  dims_active = spec.n_dims if dims_active is None else dims_active
  kx, ky = jax.random.split(key)
  z = jax.random.normal(kx, (batch_size, spec.n_points, spec.n_dims))
  xs = (z @ covariance_root(spec)) * (jnp.arange(spec.n_dims) < dims_active)
  return {"xs": xs, "ys": _targets(spec, ky, xs, dims_active)}
