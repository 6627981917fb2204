"""Transformer Programs (Friedman, Wettig and Chen, NeurIPS 2023): a transformer whose residual
stream is a list of disentangled variables, trained with Gumbel-softmax, then discretised and
decompiled into a Python program that computes exactly what the discrete model computes.

The stream holds categorical variables, one-hot over `card` values (the token, with BOS =
vocab; the position; one variable written by every categorical head and every MLP), and
numerical variables in [0, 1] (`ones`: 0 at BOS, 1 elsewhere; one per numerical head). Every
choice is a logit vector relaxed by Gumbel-softmax at temperature tau (`soft`) or its argmax
(`hard`, the discretised model):

- a head picks one categorical variable for its query, one for its key, and a value: a
  categorical variable (categorical heads) or a numerical one (numerical heads);
- its predicate is a card x card matrix whose row a picks the one key value that query value a
  matches: query position i matches key position j when key_j == predicate(query_i);
- a categorical head attends to the closest matching position j >= 1 (j <= i when causal),
  ties to the left, and to BOS (position 0) when none matches; it copies that position's value;
- a numerical head averages its numerical value over BOS and every matching position;
- an MLP picks two categorical variables (possibly the same) and is a lookup table from the
  pair of their values to a new categorical variable;
- the classifier is linear in the final stream (one weight row per value of each categorical
  variable, one per numerical variable, scaled by `num_scale`).

Soft attention has the same definition: key j >= 1 scores 2 T s_ij - rank_ij, where s_ij in
[0, 1] is the relaxed match and rank_ij = 2 |i - j| - [j < i] orders the keys by closeness,
BOS scores 1, and categorical heads take softmax(score / tau) (hard: the argmax), so as tau -> 0
the soft forward becomes the hard one. Layer l's heads read the variables written before it;
its MLPs also read its categorical heads' outputs.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e9   # the score of a key a query may not see


@dataclasses.dataclass(frozen=True)
class ProgramConfig:
  vocab: int            # input symbols 0 .. vocab - 1; BOS is the token `vocab`
  length: int           # positions, BOS included
  classes: int          # output labels 0 .. classes - 1
  layers: int = 2
  cat_heads: int = 2    # categorical heads per layer
  num_heads: int = 2    # numerical heads per layer
  mlps: int = 1         # MLPs per layer
  causal: bool = False
  # The classifier's numerical weights are num_scale * their parameters: a count read as
  # c / (c + 1) needs weights of hundreds to separate c = 4 from c = 5, which Adam's bounded
  # steps reach only after many thousands of steps at scale 1.
  num_scale: float = 1.0

  @property
  def card(self) -> int:
    """The number of values of every categorical variable."""
    return max(self.vocab + 1, self.length)


def layout(cfg: ProgramConfig) -> list[dict]:
  """Per layer, the names of what it reads and writes: `cat`/`num` (the variables its heads
  read), `mlp_in` (what its MLPs read) and the names of its heads and MLPs; a last entry holds
  the variables the classifier reads. The forward pass and the decompiler share this order."""
  cat, num, out = ["token", "position"], ["ones"], []
  for l in range(cfg.layers):
    attn = [f"attn_{l}_{h}" for h in range(cfg.cat_heads)]
    nums = [f"num_attn_{l}_{h}" for h in range(cfg.num_heads)]
    mlps = [f"mlp_{l}_{m}" for m in range(cfg.mlps)]
    out.append(dict(cat=list(cat), num=list(num), mlp_in=cat + attn, attn=attn, nums=nums,
                    mlps=mlps))
    cat, num = cat + attn + mlps, num + nums
  out.append(dict(cat=cat, num=num))
  return out


def param_shapes(cfg: ProgramConfig) -> dict:
  """{name: shape} of every parameter; logits everywhere except the classifier."""
  d, shapes = cfg.card, {}
  for l, lay in enumerate(layout(cfg)[:-1]):
    nc, nn_, nm = len(lay["cat"]), len(lay["num"]), len(lay["mlp_in"])
    for name in lay["attn"] + lay["nums"]:
      shapes.update({f"{name}/q": (nc,), f"{name}/k": (nc,), f"{name}/predicate": (d, d),
                     f"{name}/v": (nn_ if name.startswith("num") else nc,)})
    for name in lay["mlps"]:
      shapes.update({f"{name}/a": (nm,), f"{name}/b": (nm,), f"{name}/table": (d, d, d)})
  final = layout(cfg)[-1]
  shapes.update({"classifier/cat": (len(final["cat"]), d, cfg.classes),
                 "classifier/num": (len(final["num"]), cfg.classes),
                 "classifier/bias": (cfg.classes,)})
  return shapes


def choices(params, tau, key=None, hard=False) -> dict:
  """Every logit tensor as weights over its last axis: one-hot argmaxes when hard, else
  softmax((logits + Gumbel noise) / tau), without noise when key is None."""
  out = {}
  for i, (name, logits) in enumerate(sorted(params.items())):
    if name.startswith("classifier"):
      out[name] = logits
    elif hard:
      out[name] = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=logits.dtype)
    else:
      if key is not None:
        logits = logits + jax.random.gumbel(jax.random.fold_in(key, i), logits.shape,
                                            logits.dtype)
      out[name] = jax.nn.softmax(logits / tau, -1)
  return out


def forward(params, tokens, cfg: ProgramConfig, tau=1.0, key=None, hard=False):
  """tokens int [batch, T] (BOS first) -> logits [batch, T, classes]. `hard`: the discretised
  model, which computes in the parameters' dtype (float64 under jax.enable_x64)."""
  w = choices(params, tau, key, hard)
  dtype = params["classifier/bias"].dtype
  b, t = tokens.shape
  d = cfg.card
  pos = jnp.arange(t)
  cat = {"token": jax.nn.one_hot(tokens, d, dtype=dtype),
         "position": jnp.broadcast_to(jax.nn.one_hot(pos, d, dtype=dtype), (b, t, d))}
  num = {"ones": jnp.broadcast_to((pos > 0).astype(dtype), (b, t))}
  visible = (pos[None, :] >= 1) & ((pos[None, :] <= pos[:, None]) if cfg.causal else True)
  rank = 2 * jnp.abs(pos[:, None] - pos[None, :]) - (pos[None, :] < pos[:, None])
  mix = lambda names, weights: jnp.einsum("n...,n->...", jnp.stack([
      (cat | num)[n] for n in names]), weights)

  def match(name, names):
    """s [batch, T (query), T (key)]: how far key j's value is the predicate's image of query
    i's value (0 or 1 when hard), 0 where the query may not see the key."""
    q, k = mix(names, w[f"{name}/q"]), mix(names, w[f"{name}/k"])
    s = jnp.einsum("bia,ac,bjc->bij", q, w[f"{name}/predicate"], k)
    return jnp.where(visible, s, 0)

  for lay in layout(cfg)[:-1]:
    new = {}
    for name in lay["attn"]:
      score = jnp.where(visible, 2 * t * match(name, lay["cat"]) - rank, NEG)
      score = score.at[:, :, 0].set(1)   # BOS: below every match, above every non-match
      attn = (jax.nn.one_hot(jnp.argmax(score, -1), t, dtype=dtype) if hard
              else jax.nn.softmax(score / tau, -1))
      new[name] = jnp.einsum("bij,bjd->bid", attn, mix(lay["cat"], w[f"{name}/v"]))
    for name in lay["nums"]:
      weight = match(name, lay["cat"]).at[:, :, 0].set(1)   # BOS is always averaged in
      value = jnp.einsum("bij,bj->bi", weight, mix(lay["num"], w[f"{name}/v"]))
      num[name] = value / jnp.sum(weight, -1)
    cat.update(new)
    for name in lay["mlps"]:
      x, y = mix(lay["mlp_in"], w[f"{name}/a"]), mix(lay["mlp_in"], w[f"{name}/b"])
      new[name] = jnp.einsum("bta,btc,ace->bte", x, y, w[f"{name}/table"])
    cat.update(new)
  final = layout(cfg)[-1]
  return (jnp.einsum("btnd,ndc->btc", jnp.stack([cat[n] for n in final["cat"]], 2),
                     w["classifier/cat"])
          + jnp.einsum("nbt,nc->btc", jnp.stack([num[n] for n in final["num"]]),
                       cfg.num_scale * w["classifier/num"]) + w["classifier/bias"])


class TransformerProgram(nn.Module):
  """The parameters of a Transformer Program and its forward pass (see `forward`)."""
  cfg: ProgramConfig

  @nn.compact
  def __call__(self, tokens, tau=1.0, key=None, hard=False):
    params = {name: self.param(name, nn.initializers.normal(1.0), shape)
              for name, shape in param_shapes(self.cfg).items()}
    return forward(params, tokens, self.cfg, tau, key, hard)


def discrete_predict(params, tokens, cfg: ProgramConfig) -> np.ndarray:
  """The discretised model's labels int [batch, T], computed in float64 so that the
  decompiled program (Python floats) reproduces its classifier's argmax exactly."""
  with jax.enable_x64(True):
    p64 = {k: jnp.asarray(np.asarray(v, np.float64)) for k, v in params.items()}
    logits = jax.jit(lambda p, x: forward(p, x, cfg, hard=True))(p64, jnp.asarray(tokens))
    return np.asarray(jnp.argmax(logits, -1))


# ------------------------------------------------------------------------------ decompiler

HELPERS = '''
def select_closest(queries, keys, predicate):
  """Per query position i: the closest position j >= 1 (j <= i when CAUSAL) with
  predicate(queries[i], keys[j]), ties to the left; 0 (BOS) when none matches."""
  out = []
  for i, q in enumerate(queries):
    js = [j for j in range(1, len(keys)) if (not CAUSAL or j <= i) and predicate(q, keys[j])]
    out.append(min(js, key=lambda j: (abs(i - j), j)) if js else 0)
  return out


def aggregate(selected, values):
  """The value at each query's selected position."""
  return [values[j] for j in selected]


def select_mean(queries, keys, predicate, values):
  """Per query position i: the mean of values over BOS and every position j >= 1 (j <= i when
  CAUSAL) with predicate(queries[i], keys[j])."""
  out = []
  for i, q in enumerate(queries):
    js = [0] + [j for j in range(1, len(keys))
                if (not CAUSAL or j <= i) and predicate(q, keys[j])]
    out.append(sum(values[j] for j in js) / len(js))
  return out
'''


def _table(rows, indent="    ") -> str:
  return "[\n" + "".join(f"{indent}{list(map(int, r))},\n" for r in rows) + indent[:-2] + "]"


def decompile(params, cfg: ProgramConfig, title: str = "") -> str:
  """The discretised model as the source of a standalone Python module whose
  `program(tokens)` maps a prompt (symbols 0 .. vocab - 1, no BOS) to the discrete model's
  label at every position, BOS (position 0) included."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  arg = lambda name: np.argmax(p[name], -1)
  lays = layout(cfg)
  src = [f'"""Transformer Program{": " + title if title else ""}, decompiled by substrax.\n\n'
         f"Tokens are symbols 0..{cfg.vocab - 1}; BOS = {cfg.vocab}; {cfg.length} positions; "
         f"categorical variables take values 0..{cfg.card - 1}.\n"
         '`program(tokens)` returns the label at every position (0 is BOS)."""',
         f"BOS = {cfg.vocab}", f"CAUSAL = {cfg.causal}\n", HELPERS.rstrip()]
  body = ["def program(tokens):", "  token = [BOS] + list(tokens)",
          "  position = list(range(len(token)))", "  ones = [0] + [1] * (len(tokens))"]
  for lay in lays[:-1]:
    for name in lay["attn"] + lay["nums"]:
      q, k = (lay["cat"][arg(f"{name}/{r}")] for r in "qk")
      image = {a: int(c) for a, c in enumerate(arg(f"{name}/predicate"))}
      pred = name.replace("attn", "predicate")
      src.append(f"\n\ndef {pred}(q_{q}, k_{k}):\n  return k_{k} == {image}[q_{q}]")
      if name.startswith("num"):
        v = lay["num"][arg(f"{name}/v")]
        body.append(f"  {name} = select_mean({q}, {k}, {pred}, {v})")
      else:
        v = lay["cat"][arg(f"{name}/v")]
        body.append(f"  {name} = aggregate(select_closest({q}, {k}, {pred}), {v})")
    for name in lay["mlps"]:
      a, b = (lay["mlp_in"][arg(f"{name}/{r}")] for r in "ab")
      table = name.upper()
      src.append(f"\n\n{table} = {_table(arg(f'{name}/table'), '  ')}  # [{a}][{b}]")
      body.append(f"  {name} = [{table}[x][y] for x, y in zip({a}, {b})]")
  final = lays[-1]
  weights = {n: p["classifier/cat"][i].tolist() for i, n in enumerate(final["cat"])}
  weights.update({n: (cfg.num_scale * p["classifier/num"][i]).tolist()
                  for i, n in enumerate(final["num"])})
  rows = lambda w: ("[\n" + "".join(f"    {r!r},\n" for r in w) + "  ]" if isinstance(w[0], list)
                    else repr(w))
  src.append("\n\n# Classifier: per categorical variable, a row of class weights per value; per "
             "numerical variable,\n# one row, scaled by its value.\nCLASSIFIER = {\n" + "".join(
                 f"  {n!r}: {rows(w)},\n" for n, w in weights.items()) + "}\n"
             f"BIAS = {p['classifier/bias'].tolist()!r}")
  src.append('''

def classify(cat, num):
  """The argmax of the linear classifier at every position (ties to the first class)."""
  out = []
  for i in range(len(cat["token"])):
    logits = list(BIAS)
    for name, values in cat.items():
      logits = [l + w for l, w in zip(logits, CLASSIFIER[name][values[i]])]
    for name, values in num.items():
      logits = [l + w * values[i] for l, w in zip(logits, CLASSIFIER[name])]
    out.append(max(range(len(logits)), key=lambda c: (logits[c], -c)))
  return out''')
  names = lambda ns: "".join(f"\n      {n!r}: {n}," for n in ns)
  body.append(f"  return classify({{{names(final['cat'])}}}, {{{names(final['num'])}}})")
  src.append("\n\n" + "\n".join(body))
  return "\n".join(src) + "\n"


def load_program(source: str):
  """The `program` function of decompiled source."""
  namespace = {}
  exec(compile(source, "<transformer program>", "exec"), namespace)
  return namespace["program"]
