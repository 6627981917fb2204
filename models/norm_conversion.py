"""Pre-LN -> Pre-RMSNorm -> Pre-CRMSNorm parameter conversion (Jiang et al. 2023, arXiv 2305.14858).

Pure functions on the `params` collection of a models/lm.LanguageModel (plain or boxed arrays;
plain nested dicts come back). Every residual-stream vector of a Pre-LN model is read only
through a LayerNorm, and LN(x) = LN(x - mean(x)), so the mean of the stream is dead weight:

  fold_affine     folds each norm's scale g and bias b into the linear layer that reads it,
                  W' = diag(g) W, c' = c + b W (qkv reads norm_attn, mlp/fc norm_mlp, head
                  norm_final) and leaves the norms at scale 1, bias 0.
  centre_writers  replaces everything that writes to the stream (embed rows, pos_embedding
                  rows, attn out_kernel/out_bias, mlp/proj kernel/bias) by its zero-mean
                  projection over the output (feature) axis. Then the stream is zero-mean and
                  LN(x) = RMS(x), eps included.
  to_rms          fold_affine, then centre_writers: params of the same model with
                  norm='rmsnorm' (zero_mean False or True) that give the same logits.
  to_crms         to_rms, then the d - 1 free coordinates: params of norm='crmsnorm'.

The two steps touch disjoint parameters (norms and readers; writers), so they commute. For
norm='rmsnorm' centring alone would do, since Norm keeps its affine: RMS(x) g + b = LN(x) g + b
on a zero-mean stream. The fold is what CRMS needs: its reader rule (to_crms) holds only where
the normalised vector the reader sees is zero-mean, which a non-uniform scale or any bias
breaks. (Adam trajectories are another matter: folding g into W changes the parameterisation,
so a folded model trains differently from the unfolded one; it computes the same function.)

Positions: learned (a parameter, centred here), none, rope, alibi, rpe and urpe (inside
attention, never on the stream) convert exactly. The sinusoidal table is not a parameter, so
no parameter tree can centre it: to_rms params reproduce a sinusoidal LN model only under
norm='rmsnorm' with zero_mean=True (which centres the table; centring the already-centred
writers again changes nothing), and to_crms does not apply at all, since a crmsnorm backbone
draws a different, (d - 1)-wide table.
"""
import functools

import flax
import flax.linen as nn
import jax.numpy as jnp

from substrax.models import transformer
from substrax.models.norms import centre

# (norm, path of the reader in the block, its kernel and bias names)
_BLOCK_READERS = (("norm_attn", ("attn",), "qkv_kernel", "qkv_bias"),
                  ("norm_mlp", ("mlp", "fc"), "kernel", "bias"))


def _copy(params):
  """A plain nested-dict copy, with every box (nn.LogicallyPartitioned) unboxed."""
  return flax.core.unfreeze(nn.meta.unbox(params))


def _per_layer(convert):
  """Lets `convert` read layers by name in a scanned model too: the stacked 'blocks' tree
  (model.scan, leaves [depth, ...]) is split into block_0, block_1, ... and stacked back."""
  @functools.wraps(convert)
  def wrapped(params):
    params = _copy(params)
    backbone = params["backbone"]
    if "blocks" not in backbone:
      return convert(params)
    layers = transformer.unstack_layers(backbone.pop("blocks"))
    backbone.update({f"block_{i}": layer for i, layer in enumerate(layers)})
    params = convert(params)
    params["backbone"]["blocks"] = transformer.stack_layers(
        [params["backbone"].pop(f"block_{i}") for i in range(len(layers))])
    return params
  return wrapped


def _blocks(params):
  """The blocks' parameter dicts in order block_0, block_1, ..."""
  backbone = params["backbone"]
  depth = sum(name.startswith("block_") for name in backbone)
  return [backbone[f"block_{i}"] for i in range(depth)]


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def _readers(params):
  """(norm dict, reader dict, kernel name, bias name) for every norm: the layer that reads it.
  Every reader's kernel has the stream as its first axis, so one rule serves all three."""
  for block in _blocks(params):
    for norm, path, kernel, bias in _BLOCK_READERS:
      yield block[norm], _get(block, path), kernel, bias
  yield params["backbone"]["norm_final"], params["head"], "kernel", "bias"


def _writers(params):
  """(dict, name) of every array that writes to the stream; the stream is the last axis of
  each (embed [vocab, d], pos_embedding [max_len, d], out_kernel [H, hd, d], out_bias [d],
  proj kernel [hidden, d], proj bias [d])."""
  yield params, "embed"
  if "pos_embedding" in params["backbone"]:
    yield params["backbone"], "pos_embedding"
  for block in _blocks(params):
    yield block["attn"], "out_kernel"
    yield block["attn"], "out_bias"
    yield block["mlp"]["proj"], "kernel"
    yield block["mlp"]["proj"], "bias"


@_per_layer
def fold_affine(params):
  """Each norm's (scale g, bias b) folded into its reader; the norms become scale 1, bias 0.

  reader(n g + b) = (n g + b) W + c = n (diag(g) W) + (b W + c), with n the normalised stream,
  for a kernel W of any shape [d, ...] and a bias c of shape W.shape[1:].
  """
  params = _copy(params)
  for norm, reader, kernel, bias in _readers(params):
    w, g, b = reader[kernel], norm["scale"], norm["bias"]
    reader[kernel] = w * g.reshape((-1,) + (1,) * (w.ndim - 1))
    reader[bias] = reader[bias] + jnp.tensordot(b, w, axes=1)
    norm["scale"], norm["bias"] = jnp.ones_like(g), jnp.zeros_like(b)
  return params


@_per_layer
def centre_writers(params):
  """Every stream writer replaced by its zero-mean projection over the stream axis, so that
  every residual-stream vector is zero-mean. This leaves a Pre-LN model's logits unchanged
  (LN ignores the stream's mean) and is the projection a zero_mean model applies on the fly."""
  params = _copy(params)
  for tree, name in _writers(params):
    tree[name] = centre(tree[name])
  return params


@_per_layer
def to_rms(params):
  """Pre-LN params -> params of the same LanguageModel with norm='rmsnorm' and the same logits
  (zero_mean=False suffices: the stored writers are centred). Norms end at scale 1, bias 0."""
  return centre_writers(fold_affine(params))


@_per_layer
def to_crms(params):
  """Pre-LN (or to_rms) params -> params of the LanguageModel with norm='crmsnorm', residual
  width d - 1, and the same logits.

  On the zero-mean stream x in R^d the CRMS model keeps x[:-1] (x_d = -sum_{i<d} x_i): writers
  drop their last output coordinate, and a reader of the normalised stream n (scale 1, bias 0,
  so n is zero-mean too) computes n W = sum_{i<d} n_i (W_i - W_d), i.e. W' = W[:-1] - W[-1:].
  """
  params = to_rms(params)
  for tree, name in _writers(params):
    tree[name] = tree[name][..., :-1]
  for norm, reader, kernel, _ in _readers(params):
    w = reader[kernel]
    reader[kernel] = w[:-1] - w[-1:]
    norm["scale"], norm["bias"] = norm["scale"][:-1], norm["bias"][:-1]
  return params
