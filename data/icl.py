"""In-context learning prompts: function classes, input covariances and Garg's curriculum.

Everything here is a pure function of a PRNG key (and the step, for the curriculum), so prompts
are sampled on device inside jit and a resumed run sees exactly the data it would have seen.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

FUNCTION_CLASSES = ("linear", "sparse_linear", "noisy_linear", "linear_classification",
                    "relu_2nn", "decision_tree", "heteroscedastic_linear", "mixture")
# Dense w ~ N(0, I) or N(0, Cov(x)^-1), optionally from a finite pool; y = x.w (+ noise / sign).
LINEAR_CLASSES = ("linear", "noisy_linear", "linear_classification", "heteroscedastic_linear")
COVARIANCES = ("isotropic", "skewed", "spectrum")
WEIGHT_COVARIANCES = ("isotropic", "inverse")
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
  spectrum: tuple[float, ...] | None = None   # eigenvalues of Cov(x) for covariance="spectrum"
  weight_covariance: str = "isotropic"
  noise_min: float = 0.0   # per-prompt noise std range of heteroscedastic_linear
  noise_max: float = 1.0
  n_tasks: int = 0         # size of the pool of w (Raventós et al.); 0 means a fresh w per prompt
  pool_seed: int = 0
  mixture: tuple[str, ...] = ("linear", "sparse_linear", "relu_2nn")

  @classmethod
  def from_config(cls, data) -> "Spec":
    cur = data.curriculum
    spectrum = data.get("spectrum", None)
    return cls(data.function_class, data.n_dims, data.n_points, data.covariance, data.noise_std,
               data.sparsity, cur.dims_start, cur.dims_inc, cur.points_start, cur.points_inc,
               cur.interval,
               spectrum=None if spectrum is None else tuple(float(v) for v in spectrum),
               weight_covariance=data.get("weight_covariance", "isotropic"),
               noise_min=data.get("noise_min", 0.0), noise_max=data.get("noise_max", 1.0),
               n_tasks=data.get("n_tasks", 0), pool_seed=data.get("pool_seed", 0),
               mixture=tuple(data.get("mixture", cls.mixture)))

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


def _covariance_function(spec: Spec, fn):
  """U diag(fn(s)) U^T, where x = z U diag(s) U^T with z ~ N(0, I) and U a fixed rotation.

  The rotation comes from a fixed key, so every prompt, run and evaluator shares one Cov(x).
  """
  d = spec.n_dims
  if spec.covariance == "isotropic":
    return jnp.eye(d)
  if spec.covariance == "skewed":
    s = 1.0 / jnp.arange(1, d + 1)
    s = s * math.sqrt(d) / jnp.linalg.norm(s)
  else:
    s = jnp.sqrt(jnp.asarray(spec.spectrum, jnp.float32))
  u, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (d, d)))
  return (u * fn(s)) @ u.T


def covariance_root(spec: Spec):
  """S with x = z S, z ~ N(0, I): identity, or a fixed random rotation with the given scales.

  The skewed case follows Garg et al.: Cov(x) = S^T S has eigenvalues proportional to 1/i^2,
  rescaled so that E|x|^2 = d as in the isotropic case. The spectrum case has Cov(x) =
  U diag(spectrum) U^T as given, not rescaled, so closed forms can use it directly.
  """
  return _covariance_function(spec, lambda s: s)


def covariance_matrix(spec: Spec):
  """Cov(x) [d, d] (before curriculum truncation), for closed forms such as Ahn's Gamma*."""
  return _covariance_function(spec, jnp.square)


def _dense_weights(spec: Spec, key, batch_size: int, dims_active):
  """w [B, d] of the linear classes: N(0, I), or N(0, Cov(x)^-1) for weight_covariance="inverse".

  With a finite pool, task i is drawn from fold_in(pool key, i): the cost does not grow with
  n_tasks and the pool is the same in every run with the same pool_seed.
  """
  d = spec.n_dims
  if spec.n_tasks:
    pool = jax.random.key(spec.pool_seed)
    ids = jax.random.randint(key, (batch_size,), 0, spec.n_tasks)
    w = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(pool, i), (d,)))(ids)
  else:
    w = jax.random.normal(key, (batch_size, d))
  if spec.weight_covariance == "inverse":
    # Ahn et al.'s generator: whitened tasks, so the optimal 1-layer preconditioner is Cov(x)^-1.
    w = w @ _covariance_function(spec, jnp.reciprocal)
  return w * (jnp.arange(d) < dims_active)


def _targets(spec: Spec, key, xs, dims_active):
  """{'ys': y for every x in each prompt of xs [B, n, d]} plus per-prompt extras of the class."""
  b, _, d = xs.shape
  kw, kn = jax.random.split(key)
  fc = spec.function_class
  if fc in LINEAR_CLASSES:
    y = jnp.einsum("bnd,bd->bn", xs, _dense_weights(spec, kw, b, dims_active))
    if fc == "noisy_linear":
      y = y + spec.noise_std * jax.random.normal(kn, y.shape)
    if fc == "heteroscedastic_linear":
      ks, ke = jax.random.split(kn)
      std = jax.random.uniform(ks, (b,), minval=spec.noise_min, maxval=spec.noise_max)
      return {"ys": y + std[:, None] * jax.random.normal(ke, y.shape), "noise_std": std}
    return {"ys": jnp.sign(y) if fc == "linear_classification" else y}
  if fc == "sparse_linear":
    # Keep `sparsity` coordinates, chosen uniformly among the active ones.
    scores = jax.random.uniform(kn, (b, d)) - 2.0 * (jnp.arange(d) >= dims_active)
    kth = jax.lax.top_k(scores, spec.sparsity)[0][:, -1:]
    w = jax.random.normal(kw, (b, d)) * (scores >= kth)
    return {"ys": jnp.einsum("bnd,bd->bn", xs, w)}
  if fc == "relu_2nn":
    k1, k2 = jax.random.split(kw)
    w1 = jax.random.normal(k1, (b, d, RELU_HIDDEN))
    w2 = jax.random.normal(k2, (b, RELU_HIDDEN))
    h = jax.nn.relu(jnp.einsum("bnd,bdh->bnh", xs, w1))
    return {"ys": jnp.einsum("bnh,bh->bn", h, w2) * math.sqrt(2 / RELU_HIDDEN)}
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
    return {"ys": jnp.take_along_axis(leaves, node - n_internal, axis=1)}
  if fc == "mixture":
    # Every family labels every prompt and each prompt keeps its own family's y: static shapes.
    family = jax.random.randint(kn, (b,), 0, len(spec.mixture))
    ys = jnp.stack([
        _targets(dataclasses.replace(spec, function_class=f), jax.random.fold_in(kw, i), xs,
                 dims_active)["ys"] for i, f in enumerate(spec.mixture)])
    return {"ys": jnp.take_along_axis(ys, family[None, :, None], axis=0)[0], "family": family}
  raise ValueError(f"unknown function class {fc!r}")


def sample(spec: Spec, key, batch_size: int, dims_active=None, *, xs=None):
  """Draws `batch_size` prompts: {'xs': [B, n, d], 'ys': [B, n]} (float32).

  Coordinates at or beyond `dims_active` are zero (Garg's curriculum truncation).
  heteroscedastic_linear adds 'noise_std' [B]; mixture adds 'family' [B] (index into
  spec.mixture). Given `xs` [B, n, d], those inputs are labelled instead of fresh ones: the
  functions depend only on `key`, so sample(spec, key, B, xs=T(x)) relabels transformed inputs
  with the same functions as sample(spec, key, B) (out-of-distribution evaluation).
  """
  dims_active = spec.n_dims if dims_active is None else dims_active
  kx, ky = jax.random.split(key)
  if xs is None:
    z = jax.random.normal(kx, (batch_size, spec.n_points, spec.n_dims))
    xs = (z @ covariance_root(spec)) * (jnp.arange(spec.n_dims) < dims_active)
  return {"xs": xs, **_targets(spec, ky, xs, dims_active)}


def sample_ar(key, batch_size: int, n_dims: int, length: int, *, init_scale: float = 1.0):
  """Sequences of the linear dynamical system x_{t+1} = W x_t (Zheng et al. 2024).

  Returns {'xs': [B, length, d], 'W': [B, d, d]}. Each sequence has its own W, uniform on the
  orthogonal group, so |x_t| = |x_1| for every t and long sequences neither vanish nor blow
  up; x_1 ~ N(0, init_scale^2 I). A model trained to predict x_{t+1} from x_1..x_t must infer W
  in context (the mesa-optimisation setting: one GD step on sum_t |x_{t+1} - W x_t|^2).
  """
  kw, kx = jax.random.split(key)
  w = jax.random.orthogonal(kw, n_dims, (batch_size,))
  x1 = init_scale * jax.random.normal(kx, (batch_size, n_dims))

  def step(x, _):
    return jnp.einsum("bij,bj->bi", w, x), x

  _, xs = jax.lax.scan(step, x1, length=length)
  return {"xs": jnp.swapaxes(xs, 0, 1), "W": w}
