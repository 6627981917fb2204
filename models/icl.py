"""In-context regression models: the transformer with Garg et al.'s read-in/read-out, and LSA.

ICLTransformer: a prompt (x_1, y_1, ..., x_n, y_n) becomes 2n - 1 tokens (the last y is never
needed), read out at the n x-positions, so one causal forward pass predicts y_{k+1} from the
first k pairs for every k. Three read-in encodings (ENCODINGS):
  interleaved  x_i, then (y_i, 0, ..., 0) in d dims                       (Garg et al. 2022)
  flagged      (0, x_i), then (y_i, 0, ..., 0) in d + 1 dims: y in its own channel (Akyurek)
  concat       (x_i, 0), then (x_i, y_i) in d + 1 dims: the (x, y) pair tokens of von Oswald
               et al., each query token (x_k, 0) seeing the pairs before it
LSA: linear self-attention layers on concatenated tokens, parameterised by the merged matrices.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from substrax.models.sharding import param_init
from substrax.models.transformer import BlockConfig, Transformer

ENCODINGS = ("interleaved", "flagged", "concat")
HEADS = ("mean", "gaussian")


def interleave(xs, ys):
  """[B, n, d], [B, n] -> [B, 2n, d] tokens x_1, (y_1, 0, ..., 0), x_2, ..."""
  y_tokens = jnp.zeros_like(xs).at[..., 0].set(ys)
  b, n, d = xs.shape
  return jnp.stack([xs, y_tokens], axis=2).reshape(b, 2 * n, d)


def encode(xs, ys, encoding: str):
  """The 2n - 1 read-in tokens of a prompt; the predictions are read at the even positions."""
  if encoding == "interleaved":
    return interleave(xs, ys)[:, :-1]
  pad = jnp.zeros_like(ys)[..., None]
  if encoding == "flagged":
    first, second = jnp.concatenate([pad, xs], -1), jnp.concatenate([ys[..., None], 0 * xs], -1)
  elif encoding == "concat":
    first, second = jnp.concatenate([xs, pad], -1), jnp.concatenate([xs, ys[..., None]], -1)
  else:
    raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
  b, n, d = first.shape
  return jnp.stack([first, second], axis=2).reshape(b, 2 * n, d)[:, :-1]


class ICLTransformer(nn.Module):
  """Entry k of the output predicts y_{k+1} from the first k pairs. head 'gaussian' adds a
  predictive variance (trained with the Gaussian NLL): `distribution` returns (mean, var)."""
  n_points: int
  width: int
  depth: int
  block: BlockConfig
  encoding: str = "interleaved"
  head: str = "mean"          # or "gaussian"

  def setup(self):
    # PyTorch's nn.Linear default, as in Garg et al.'s read-in/read-out: with GPT-2's 0.02 the
    # x signal drowns under the position embeddings and training stalls on a long plateau.
    init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    self.read_in = nn.Dense(self.width, dtype=self.block.dtype,
                            kernel_init=param_init(init, None, "embed"),
                            bias_init=param_init(nn.initializers.zeros, "embed"))
    self.backbone = Transformer(self.width, self.depth, max_len=2 * self.n_points - 1,
                                block=self.block, causal=True)
    self.read_out = nn.Dense(2 if self.head == "gaussian" else 1, dtype=jnp.float32,
                             kernel_init=param_init(init, "embed", None),
                             bias_init=param_init(nn.initializers.zeros, None))

  def _outputs(self, xs, ys, units):
    h = self.backbone(self.read_in(encode(xs, ys, self.encoding)), units=units)
    return self.read_out(h[:, ::2])

  def __call__(self, xs, ys, units=None):
    """Predictions [B, n] (the predictive mean). `units`: each layer's MLP units (MatFormer)."""
    return self._outputs(xs, ys, units)[..., 0]

  def distribution(self, xs, ys, units=None):
    """(mean, variance) [B, n] each; the variance head is softplus, floored at 1e-4."""
    out = self._outputs(xs, ys, units)
    return out[..., 0], jax.nn.softplus(out[..., 1]) + 1e-4

  def predict_last(self, xs, ys, units=None):
    """[B] predictions of y_n from the first n - 1 pairs."""
    return self(xs, ys, units)[:, -1]


class LSA(nn.Module):
  """Linear self-attention on concatenated tokens (von Oswald et al. 2023; Ahn et al. 2023).

  Context token j is e_j = (x_j, y_j) in R^{d+1}; the query is (x_q, 0). Each layer adds
      e_i += W_PV (1/k) sum_{j<k} e_j e_j^T W_KQ e_i
  to every token, with keys and values from the k context tokens only (never the query), and
  the prediction is minus the query's y-slot: with W_KQ = [[G, 0], [0, 0]] and
  W_PV = [[0, 0], [0, -1]], one layer is one preconditioned GD step from w = 0,
  y_hat = x_q^T G (1/k) sum_j y_j x_j (see `gd_weights`). The merged matrices are the
  parameters, so the step a trained model runs is read straight off its weights.

  Like ICLTransformer, entry k of the output predicts y_k from the first k pairs; every prefix
  is its own context (so deeper models cost O(n) forwards, nothing at these sizes).
  """
  n_dims: int
  num_layers: int = 1
  init_scale: float = 0.02   # small random init, as von Oswald's (0.002 / layers at d = 10)

  def setup(self):
    d, init = self.n_dims + 1, nn.initializers.normal(self.init_scale)
    self.w_kq = [self.param(f"w_kq_{i}", init, (d, d)) for i in range(self.num_layers)]
    self.w_pv = [self.param(f"w_pv_{i}", init, (d, d)) for i in range(self.num_layers)]

  def __call__(self, xs, ys):
    """[B, n, d], [B, n] -> [B, n]: every prefix."""
    return self.predict(xs, ys, jnp.arange(xs.shape[1]))

  def predict_last(self, xs, ys):
    """[B, n] -> [B]: y_n from the first n - 1 pairs only (the cost of one prefix)."""
    return self.predict(xs, ys, jnp.array([xs.shape[1] - 1]))[:, 0]

  def predict(self, xs, ys, ks):
    """Predictions [B, len(ks)] for the prefixes of lengths ks (static shape)."""
    e = jnp.concatenate([xs, ys[..., None]], -1)                       # [B, n, d+1]
    n = xs.shape[1]
    # Prefix k: context e_0..e_{k-1}, query (x_k, 0). tokens [B, K, n+1, d+1]: the n context
    # slots (zero beyond k) and the query last; `keys` marks the context slots.
    mask = (jnp.arange(n)[None, :] < ks[:, None]).astype(xs.dtype)      # [K, j]
    query = jnp.concatenate([xs[:, ks], jnp.zeros_like(ys[:, ks])[..., None]], -1)
    tokens = jnp.concatenate([e[:, None] * mask[None, :, :, None], query[:, :, None]], 2)
    keys = jnp.concatenate([mask, jnp.zeros_like(mask[:, :1])], -1)[None, :, :, None]
    count = jnp.maximum(mask.sum(-1), 1.0)[None, :, None, None]        # k, at least 1
    for w_kq, w_pv in zip(self.w_kq, self.w_pv):
      ctx = tokens * keys
      moment = jnp.einsum("bknc,bkne->bkce", ctx, ctx) / count          # (1/k) sum e_j e_j^T
      tokens = tokens + jnp.einsum("bkce,bkne->bknc", w_pv @ moment @ w_kq, tokens)
    return -tokens[:, :, -1, -1]


def gd_weights(n_dims: int, eta: float = 1.0, *, preconditioner=None, num_layers: int = 1,
               gamma: float = 0.0) -> dict:
  """LSA params that run `num_layers` steps of GD from w = 0 on (1/2k) sum_j (w.x_j - y_j)^2,
  each with step matrix eta * preconditioner (identity by default): context y-slots carry the
  residuals y_j - w.x_j and the query's carries -w.x_q. gamma > 0 also transforms every x by
  (I - gamma (1/k) X^T X) per layer: von Oswald's GD++."""
  d = n_dims
  g = jnp.eye(d) if preconditioner is None else jnp.asarray(preconditioner, jnp.float32)
  w_kq = jnp.zeros((d + 1, d + 1)).at[:d, :d].set(eta * g)
  w_pv = jnp.zeros((d + 1, d + 1)).at[d, d].set(-1.0)
  if gamma:   # GD++: x_i += W_PV,x S (eta I) x_i = -gamma S x_i, S = (1/k) X^T X
    if preconditioner is not None:
      raise ValueError("GD++ (gamma > 0) is defined with the identity preconditioner")
    w_pv = w_pv.at[:d, :d].set(-gamma / eta * jnp.eye(d))
  return {f"{name}_{layer}": w for layer in range(num_layers)
          for name, w in (("w_kq", w_kq), ("w_pv", w_pv))}
