"""In-context regression: prompts from substrax.data.icl, the ICL transformer or LSA, Garg-style
error curves against the algorithm baselines, and the claims of train/analysis/icl_claims.py."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from substrax.data import icl as icl_data
from substrax.models import attention, baselines, transformer
from substrax.models import icl as icl_models
from substrax.train import matformer, mesh as mesh_lib
from substrax.train.analysis import icl_claims, probes, reporting
from substrax.train.tasks import Task
from substrax.train.validation import check_backbone, require

MODELS = ("transformer", "lsa")


def spec_is_classification(d) -> bool:
  return d.function_class == "linear_classification"
LOSS_ON = ("all", "last")   # every prefix (Garg) or only the last query (von Oswald, Ahn)


def validate(config):
  d, m, cur = config.data, config.model, config.data.curriculum
  require(d.function_class in icl_data.FUNCTION_CLASSES, "data.function_class",
          f"unknown function class {d.function_class!r}; choose one of "
          f"{', '.join(icl_data.FUNCTION_CLASSES)}")
  require(d.covariance in icl_data.COVARIANCES, "data.covariance",
          f"unknown covariance {d.covariance!r}; choose one of {', '.join(icl_data.COVARIANCES)}")
  require(d.weight_covariance in icl_data.WEIGHT_COVARIANCES, "data.weight_covariance",
          f"unknown value {d.weight_covariance!r}; choose one of "
          f"{', '.join(icl_data.WEIGHT_COVARIANCES)}")
  if d.covariance == "spectrum":
    require(d.spectrum is not None and len(d.spectrum) == d.n_dims
            and all(v > 0 for v in d.spectrum), "data.spectrum",
            f"needs n_dims={d.n_dims} positive eigenvalues, got {d.spectrum}")
  if d.function_class == "mixture":
    allowed = [f for f in icl_data.FUNCTION_CLASSES if f not in ("mixture",
                                                                  "heteroscedastic_linear")]
    require(len(d.mixture) > 0 and set(d.mixture) <= set(allowed), "data.mixture",
            f"must be names from {allowed}, got {tuple(d.mixture)}")
  require(0 <= d.noise_min <= d.noise_max, "data.noise_min",
          f"needs 0 <= noise_min <= noise_max, got {d.noise_min}, {d.noise_max}")
  require(d.n_tasks >= 0, "data.n_tasks", f"must be >= 0 (0 = infinite), got {d.n_tasks}")
  require(d.n_dims > 0, "data.n_dims", f"must be positive, got {d.n_dims}")
  require(d.n_points > 0, "data.n_points", f"must be positive, got {d.n_points}")
  require(d.noise_std >= 0, "data.noise_std", f"must be >= 0, got {d.noise_std}")
  require(0 < d.sparsity <= d.n_dims, "data.sparsity",
          f"must be in [1, n_dims={d.n_dims}], got {d.sparsity}")
  for key, start, end in (("dims_start", cur.dims_start, d.n_dims),
                          ("points_start", cur.points_start, d.n_points)):
    require(start is None or 0 < start <= end, f"data.curriculum.{key}",
            f"must be in [1, {end}], got {start}")
  if d.function_class == "sparse_linear" and cur.dims_start is not None:
    require(d.sparsity <= cur.dims_start, "data.sparsity",
            f"{d.sparsity} exceeds curriculum.dims_start={cur.dims_start}")
  require(cur.interval > 0, "data.curriculum.interval", f"must be positive, got {cur.interval}")
  require(d.loss_on in LOSS_ON, "data.loss_on",
          f"unknown value {d.loss_on!r}; choose one of {', '.join(LOSS_ON)}")
  require(m.name in MODELS, "model.name",
          f"unknown model {m.name!r}; choose one of {', '.join(MODELS)}")
  if m.name == "transformer":
    check_backbone(m)
    require(m.encoding in icl_models.ENCODINGS, "model.encoding",
            f"unknown encoding {m.encoding!r}; choose one of {', '.join(icl_models.ENCODINGS)}")
    require(m.head in icl_models.HEADS, "model.head",
            f"unknown head {m.head!r}; choose one of {', '.join(icl_models.HEADS)}")
    require(m.head == "mean" or not spec_is_classification(d), "model.head",
            "a Gaussian head needs a regression function class")
  else:
    require(m.lsa.num_layers > 0, "model.lsa.num_layers",
            f"must be positive, got {m.lsa.num_layers}")
  e = config.eval
  require(set(e.claims) <= set(icl_claims.CLAIMS), "eval.claims",
          f"must be names from {icl_claims.CLAIMS}, got {tuple(e.claims)}")
  require("uncertainty" not in e.claims or (m.name == "transformer" and m.head == "gaussian"),
          "eval.claims", "uncertainty needs model.head='gaussian' (a transformer)")
  require("uncertainty" not in e.claims or d.function_class in ("linear", "noisy_linear"),
          "eval.claims", "uncertainty compares with the Bayes predictive of (noisy) linear data")
  require("selection" not in e.claims or d.function_class == "mixture", "eval.claims",
          "selection scores a model trained on data.function_class='mixture'")
  require("probes" not in e.claims or m.name == "transformer", "eval.claims",
          "probes read a transformer's residual stream; model.name is 'lsa'")
  require("probes" not in e.claims or not m.get("scan", False), "eval.claims",
          "probes read each of block_0, block_1, ...; model.scan stacks them: set it False")
  require(not e.claims or m.name != "transformer" or not m.mlp.experts, "eval.claims",
          "the claims analyse dense models (their controls re-initialise parameters only); "
          "run them without model.mlp.experts")
  require("ood" not in e.claims or not (d.function_class == "linear_classification"
                                        or d.n_dims < 2), "eval.claims",
          "the OOD suite scores squared error with n_dims >= 2")
  probe_steps = e.get("probe_steps", probes.MLP["steps"])   # absent from older runs' config.json
  require(probe_steps > 0, "eval.probe_steps", f"must be positive, got {probe_steps}")
  require(e.num_prompts > 0 and e.batch_size > 0, "eval.num_prompts/batch_size",
          f"must be positive, got {e.num_prompts}, {e.batch_size}")
  require(1 <= e.knn_k <= d.n_points, "eval.knn_k", f"must be in [1, n_points], got {e.knn_k}")


def make_model(config):
  m = config.model
  if m.name == "lsa":
    return icl_models.LSA(n_dims=config.data.n_dims, num_layers=m.lsa.num_layers,
                          init_scale=m.lsa.init_scale)
  return icl_models.ICLTransformer(
      n_points=config.data.n_points, width=m.width, depth=m.depth,
      block=transformer.block_config(m), encoding=m.encoding, head=m.head)


def pointwise_loss(spec: icl_data.Spec, preds, ys):
  """Squared error for regression; logistic loss on the margin for +-1 labels."""
  if spec.is_classification:
    return jax.nn.softplus(-preds * ys)
  return (preds - ys) ** 2


def pointwise_error(spec: icl_data.Spec, preds, ys):
  """The reported metric per prompt and prefix: normalised squared error or 0/1 error."""
  if spec.is_classification:
    return (jnp.sign(preds) != ys).astype(jnp.float32)
  return (preds - ys) ** 2 / spec.normalizer


def build(config) -> Task:
  spec = icl_data.Spec.from_config(config.data)
  model = make_model(config)
  e = config.eval
  n, d = spec.n_points, spec.n_dims

  def sample_batch(data, key, step):
    del data  # prompts are drawn afresh from the key
    dims, points = icl_data.curriculum(spec, step)
    prompts = icl_data.sample(spec, key, config.batch_size, dims)
    batch = {"xs": prompts["xs"], "ys": prompts["ys"]}   # not the mixture's family id etc.
    # Curriculum over points: later positions are sampled but carry no loss.
    batch["weights"] = jnp.broadcast_to(jnp.arange(n) < points, (config.batch_size, n))
    return batch

  gaussian = config.model.name == "transformer" and config.model.head == "gaussian"
  feature_key = jax.random.fold_in(jax.random.key(config.seed), 2)
  init_inputs = (jnp.zeros((1, n, d)), jnp.zeros((1, n)))

  m = config.model
  uniform_units = matformer.uniform_units(m) if m.name == "transformer" else {1: None}

  def predict(variables, step, xs, ys, method="__call__", units=None):
    """`variables`: {"params": ..., **model_state}; `units`: MatFormer's per-layer MLP units."""
    rngs = attention.feature_rngs(feature_key, step, config.model.attention.redraw_every)
    kwargs = {} if units is None else {"units": units}   # LSA has no MLP
    return model.apply(variables, xs, ys, rngs=rngs, method=method, **kwargs)

  def loss_at(params, model_state, batch, step, units):
    run = functools.partial(predict, {"params": params, **model_state}, step, units=units)
    if gaussian:
      # Separate objectives (Liu et al. 2024): squared error for the mean, the Gaussian NLL
      # for the variance with the mean held fixed. Under the joint NLL the variance head
      # explains every error away and the mean never leaves 0 (measured: error/d 1.11 at
      # k=10 after 12k steps, the zero predictor's).
      mean, var = run(batch["xs"], batch["ys"], "distribution")
      resid = batch["ys"] - mean
      nll = 0.5 * (jnp.log(var) + lax.stop_gradient(resid) ** 2 / var)
      w = batch["weights"].astype(jnp.float32)
      return jnp.sum((resid ** 2 + nll) * w) / jnp.sum(w), ({}, model_state)
    if config.data.loss_on == "last":   # one query per prompt, after n - 1 pairs
      preds = run(batch["xs"], batch["ys"], "predict_last")
      return jnp.mean(pointwise_loss(spec, preds, batch["ys"][:, -1])), ({}, model_state)
    preds = run(batch["xs"], batch["ys"])
    w = batch["weights"].astype(jnp.float32)
    return jnp.sum(pointwise_loss(spec, preds, batch["ys"]) * w) / jnp.sum(w), ({}, model_state)

  eval_prompts = icl_data.sample(spec, jax.random.key(e.seed), min(e.num_prompts, 512))
  eval_prompts = {"xs": eval_prompts["xs"], "ys": eval_prompts["ys"]}

  def eval_step(params, model_state, prompts, step):
    out = {}
    for f, units in uniform_units.items():   # MatFormer: each granularity (1: the full model)
      preds = predict({"params": params, **model_state}, step, prompts["xs"], prompts["ys"],
                      units=units)
      err = pointwise_error(spec, preds, prompts["ys"]).mean(0)
      suffix = "" if f == 1 else f"_g{f}"
      out.update({f"loss{suffix}": pointwise_loss(spec, preds, prompts["ys"]).mean(),
                  f"error_k{n - 1}{suffix}": err[-1], f"error_k{d}{suffix}": err[min(d, n - 1)]})
    return out

  def errors_of(predict):
    """jit((params, xs, ys) -> errors [batch, n]) for a predictor (params, xs, ys) -> predictions."""
    def errors(params, xs, ys):
      return pointwise_error(spec, predict(params, xs, ys), ys)
    return jax.jit(errors)

  def on_one_device(fn):
    """Baselines run on a one-device mesh: spread over the training mesh, the batched LAPACK
    SVD behind least squares runs on every device at once and can deadlock XLA:CPU's thread
    pool (docs/design-notes.md, pitfalls)."""
    device = jax.devices()[0]

    def run(params, xs, ys):
      with jax.set_mesh(mesh_lib.make_mesh((1, 1, 1), [device])):
        return fn(params, xs, ys)
    return run

  # The model's "params" are (variables, step): the step picks Performer's feature draw. A
  # MatFormer adds each smaller granularity as a model of its own, <name>_g<factor>.
  name = config.model.name
  models = {name if f == 1 else f"{name}_g{f}": units for f, units in uniform_units.items()}
  predictors = {k: lambda variables_step, xs, ys, units=units: predict(*variables_step, xs, ys,
                                                                       units=units)
                for k, units in models.items()}
  baseline_fns = baselines.baseline_fns(
      ridge_alpha=e.ridge_alpha, lasso_alpha=e.lasso_alpha, knn_k=e.knn_k,
      gd_steps_n=e.gd_steps, noise_var=spec.noise_std**2)
  predictors.update({k: lambda _, xs, ys, fn=fn: fn(xs, ys) for k, fn in baseline_fns.items()})
  error_fns = {k: errors_of(p) if k in models else on_one_device(errors_of(p))
               for k, p in predictors.items()}

  def evaluate(params, model_state, workdir, step):
    variables = {"params": params, **model_state}
    payload = evaluate_prompts(
        config, spec, {k: functools.partial(fn, (variables, step) if k in models else None)
                       for k, fn in error_fns.items()}, workdir, step)
    predict_all = functools.partial(predict, variables, step)
    payload["claims"] = icl_claims.run_claims(
        e.claims, model=model, params=params,
        # Inside the training mesh the batch dimension must split over every device.
        init_params=lambda key: nn.meta.unbox(model.init(key, *(
            jnp.repeat(x, jax.device_count(), 0) for x in init_inputs)))["params"],
        predict=predict_all,
        predict_last=functools.partial(predict, variables, step, method="predict_last"),
        distribution=functools.partial(predict, variables, step, method="distribution"),
        predictors={name: predict_all, **baseline_fns}, spec=spec, eval_config=e,
        lsa_layers=config.model.lsa.num_layers if config.model.name == "lsa" else 0,
        key=jax.random.fold_in(jax.random.key(e.seed), 1), workdir=workdir, step=step)
    return payload

  return Task(model=model, init_inputs=init_inputs, train_data={}, sample_batch=sample_batch,
              batch_axes={"xs": ("batch", None, None), "ys": ("batch", None),
                          "weights": ("batch", None)},
              loss_fn=matformer.summed_loss(loss_at, uniform_units), eval_data=eval_prompts,
              eval_step=eval_step, evaluate=evaluate)


def evaluate_prompts(config, spec, error_fns, workdir, step):
  """Error per prefix length over held-out prompts, for the model and every baseline.

  Writes eval/icl_<function_class>.json and .png and prints a table. `error_fns` maps each name
  to a jitted (xs, ys) -> errors [batch, n_points]; they run one at a time (see
  models/baselines.py). The prompts are drawn once, fetched to the host and passed to each:
  compiled into every function, the sampler would compile once per predictor.
  """
  e = config.eval
  n_batches = -(-e.num_prompts // e.batch_size)
  sample = jax.jit(icl_data.sample, static_argnums=(0, 2))
  prompts = []
  for i in range(n_batches):
    p = sample(spec, jax.random.fold_in(jax.random.key(e.seed), i), e.batch_size)
    prompts.append(jax.device_get((p["xs"], p["ys"])))
  errors = {name: np.concatenate([jax.device_get(fn(xs, ys)) for xs, ys in prompts])
            [:e.num_prompts] for name, fn in error_fns.items()}
  models = {}
  model = config.model.name
  for name, err in sorted(errors.items(), key=lambda kv: kv[0] != model):
    mean, ci = reporting.bootstrap_mean(err, e.bootstrap)
    models[name] = {"mean": mean.tolist(), "ci95": ci.tolist()}
  ks = list(range(spec.n_points))
  payload = {"function_class": spec.function_class, "n_dims": spec.n_dims, "metric": spec.metric,
             "k": ks, "step": int(step), "num_prompts": int(e.num_prompts), "models": models}
  name = f"icl_{spec.function_class}"
  out = os.path.join(workdir, "eval")
  reporting.write_json(os.path.join(out, f"{name}.json"), payload)
  reporting.plot_curves(
      os.path.join(out, f"{name}.png"), ks, models, highlight=model,
      xlabel="in-context examples k", ylabel=spec.metric.replace("_", " "),
      title=f"{spec.function_class}, d={spec.n_dims}, step {step}",
      ylim=(0, 1.05) if spec.is_classification else (0, 1.25))
  shown = sorted({0, spec.n_dims // 2, spec.n_dims, min(2 * spec.n_dims, spec.n_points - 1),
                  spec.n_points - 1})
  shown = [k for k in shown if k < spec.n_points]
  print(f"{spec.metric} at k in-context examples ({e.num_prompts} prompts):")
  print(reporting.format_table([f"k={k}" for k in shown],
                               {m: [v["mean"][k] for k in shown] for m, v in models.items()}))
  return payload
