"""Video world models: FluidWorld and its parameter-matched Transformer and ConvLSTM.

Training windows of `data.window + 1` frames are cut at a random offset from 20-frame videos:
Moving MNIST drawn on device each step from the 4,000 training digits, or Gray-Scott videos
simulated once, cached and kept on device (data/pipeline.py draws them by epoch). The loss is
FluidWorld's teacher-forced window loss (models/video.py). Non-learned collections (FluidWorld's
'bio': fatigue health and Hebbian gain) are the TrainState's model_state; training updates them,
as FluidWorld's code does, while evaluation only reads them.

Held out: the fixed, digit-disjoint Moving MNIST test set (or the Gray-Scott test split). The
evaluator rolls each model out from `eval.context` frames for `eval.horizon` frames with latent
and/or re-encode feedback and reports it next to the zero, copy-last and context-mean predictors
(train/analysis/video_metrics.py), with latent statistics of the encoder features.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from substrax.data import cache, pipeline
from substrax.data import video as video_data
from substrax.models import attention, fluid, video
from substrax.models.convlstm import ConvLSTMWorld
from substrax.models.fluid import FluidConfig, FluidWorld
from substrax.models.video_transformer import VideoTransformer
from substrax.train.analysis import reporting, video_metrics as vm
from substrax.train.tasks import Task
from substrax.train.validation import check_attention, check_layers, require

DATASETS = ("moving_mnist", "grayscott")
MODELS = ("fluid", "transformer", "convlstm")
FRAMES = video_data.FRAMES      # every video has 20 frames
SHOWN_STEPS = (1, 5, 10)        # rollout steps printed after evaluation


def _positive_ints(value) -> bool:
  """A tuple (a list after a JSON round trip) of positive ints; a flag typo can give strings."""
  return isinstance(value, (tuple, list)) and all(isinstance(v, int) and v > 0 for v in value)


def validate(config):
  d, m, e, f = config.data, config.model, config.eval, config.model.fluid
  require(d.name in DATASETS, "data.name",
          f"unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}")
  # The Gaussian SSIM window is 11 px; Moving MNIST frames are pooled from the 64 px canvas.
  require(d.size >= 11, "data.size", f"must be at least 11 (the SSIM window), got {d.size}")
  if d.name == "moving_mnist":
    require(video_data.CANVAS % d.size == 0, "data.size",
            f"must divide {video_data.CANVAS} (frames are pooled from it), got {d.size}")
    require(d.num_digits > 0, "data.num_digits", f"must be positive, got {d.num_digits}")
    require(d.test_seed >= 0, "data.test_seed", f"must be >= 0, got {d.test_seed}")
  else:
    require(len(d.sizes) == 2 and _positive_ints(d.sizes), "data.sizes",
            f"needs two positive integer split sizes (train, test), got {tuple(d.sizes)}")
    require(d.sizes[0] >= config.batch_size, "data.sizes",
            f"{d.sizes[0]} training videos are fewer than batch_size={config.batch_size}")
    require(d.seed >= 0, "data.seed", f"must be >= 0, got {d.seed}")
    names = tuple(video_data.REGIMES)
    require(len(d.regimes) > 0 and all(r in names for r in d.regimes)
            and len(set(d.regimes)) == len(d.regimes), "data.regimes",
            f"must be distinct names from {names}, got {tuple(d.regimes)}")
    require(e.num_sequences <= d.sizes[1], "eval.num_sequences",
            f"{e.num_sequences} exceeds the {d.sizes[1]} test videos (data.sizes[1])")
  require(d.channels > 0, "data.channels", f"must be positive, got {d.channels}")
  require(1 <= d.window < FRAMES, "data.window", f"must be in [1, {FRAMES - 1}], got {d.window}")

  require(m.name in MODELS, "model.name",
          f"unknown model {m.name!r}; choose one of {', '.join(MODELS)}")
  require(m.dim > 0, "model.dim", f"must be positive, got {m.dim}")
  require(m.patch > 0 and m.patch & (m.patch - 1) == 0 and d.size % m.patch == 0, "model.patch",
          f"must be a power of 2 dividing data.size={d.size}, got {m.patch}")
  # GroupNorm(8) runs on decoder_mid and on decoder_mid // 2 channels.
  require(m.decoder_mid > 0 and m.decoder_mid % 16 == 0, "model.decoder_mid",
          f"must be a positive multiple of 16, got {m.decoder_mid}")
  require(m.state_grad in video.STATE_GRADS, "model.state_grad",
          f"unknown mode {m.state_grad!r}; choose one of {', '.join(video.STATE_GRADS)}")
  if m.name == "fluid":
    grid = d.size // m.patch
    # The local memory pools the latent grid to 4x4 and the adaptive-stop probe to 8x8.
    require(all(grid % min(g, grid) == 0 for g in (fluid.LOCAL_GRID, 8)), "model.patch",
            f"the {grid}x{grid} latent grid cannot be pooled to 4x4 and 8x8")
    for key in ("num_layers", "layer_steps", "belief_steps"):
      require(f[key] > 0, f"model.fluid.{key}", f"must be positive, got {f[key]}")
    for key in ("dilations", "belief_dilations"):
      require(len(f[key]) > 0 and _positive_ints(f[key]), f"model.fluid.{key}",
              f"must be positive integers, got {tuple(f[key])}")
    for key in ("dt_clip", "belief_dt_clip"):
      clip = f[key]
      pair = len(clip) == 2 and all(isinstance(x, (int, float)) for x in clip)
      require(pair and 0 < clip[0] <= clip[1], f"model.fluid.{key}",
              f"needs two numbers 0 < low <= high, got {tuple(clip)}")
    require(f.unroll >= 0, "model.fluid.unroll", f"must be >= 0, got {f.unroll}")
    for key, allowed in (("boundary", fluid.BOUNDARIES), ("adaptive", fluid.ADAPTIVE),
                         ("combine", fluid.COMBINES)):
      require(f[key] in allowed, f"model.fluid.{key}",
              f"unknown value {f[key]!r}; choose one of {', '.join(allowed)}")
  elif m.name == "transformer":
    t = m.transformer
    require(t.num_heads > 0 and m.dim % t.num_heads == 0, "model.transformer.num_heads",
            f"{t.num_heads} heads do not divide model.dim={m.dim}")
    for key in ("depth", "temporal_depth", "ffn"):
      require(t[key] > 0, f"model.transformer.{key}", f"must be positive, got {t[key]}")
    check_attention(m.attention)
    check_layers(t, "model.transformer")
  else:
    c = m.convlstm
    require(c.enc_mid > 0 and c.enc_groups > 0 and c.enc_mid % c.enc_groups == 0,
            "model.convlstm.enc_groups",
            f"{c.enc_groups} groups do not divide enc_mid={c.enc_mid}")
    require(m.dim % 8 == 0, "model.dim", f"the ConvLSTM's GroupNorm(8) needs a multiple of 8, "
            f"got {m.dim}")
    for key in ("hidden", "kernel"):
      require(c[key] > 0, f"model.convlstm.{key}", f"must be positive, got {c[key]}")

  loss = config.loss
  require(loss.recon in video.RECON_LOSSES, "loss.recon",
          f"unknown loss {loss.recon!r}; choose one of {', '.join(video.RECON_LOSSES)}")
  for key in ("recon_weight", "pred_weight", "var_weight", "grad_weight", "alive_weight"):
    require(loss[key] >= 0, f"loss.{key}", f"must be >= 0, got {loss[key]}")

  require(e.context > 0 and e.horizon > 0 and e.context + e.horizon <= FRAMES, "eval.context",
          f"context + horizon must fit in {FRAMES} frames, got {e.context} + {e.horizon}")
  require(len(e.feedback) > 0 and all(fb in video.FEEDBACKS for fb in e.feedback),
          "eval.feedback",
          f"must be a non-empty subset of {video.FEEDBACKS}, got {tuple(e.feedback)}")
  for key in ("num_sequences", "batch_size", "held_out_windows", "latent_sequences",
              "bootstrap"):
    require(e[key] > 0, f"eval.{key}", f"must be positive, got {e[key]}")


def _tuples(block) -> dict:
  """A config block as module fields; JSON round trips turn tuples into lists."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in block.items()}


def make_model(config):
  d, m = config.data, config.model
  shared = dict(channels=d.channels, dim=m.dim, patch=m.patch, decoder_mid=m.decoder_mid)
  if m.name == "fluid":
    return FluidWorld(**shared, config=FluidConfig(**_tuples(m.fluid)))
  if m.name == "transformer":
    return VideoTransformer(**shared, **_tuples(m.transformer),
                            attention=attention.layer_kwargs(m.attention))
  return ConvLSTMWorld(**shared, **_tuples(m.convlstm))


def to_frames(videos, channels: int):
  """uint8 or float videos [..., 1] -> float32 in [0, 1], the grey channel repeated."""
  if videos.dtype == jnp.uint8:
    videos = videos.astype(jnp.float32) / 255
  return jnp.repeat(videos, channels, axis=-1) if channels > 1 else videos


def cut_windows(key, videos, length: int):
  """One window of `length` frames per video [B, T, ...], at a uniform random offset."""
  starts = jax.random.randint(key, (videos.shape[0],), 0, videos.shape[1] - length + 1)
  return jax.vmap(lambda v, s: lax.dynamic_slice_in_dim(v, s, length))(videos, starts)


def make_source(config):
  """(train_data, sample_videos, held_out, test_videos): sample_videos(train_data, key, step) ->
  the step's [B, 20, H, W, 1] training videos (jittable); held_out(n) and test_videos(n) -> the
  first n test videos, on device (uint8 or float) and as numpy float32."""
  d = config.data
  if d.name == "moving_mnist":
    test_digits = jnp.asarray(video_data.digit_images("test"))
    draw = lambda key, digits, n: video_data.sample_moving_mnist(
        key, digits, n, num_digits=d.num_digits, size=d.size)

    def sample_videos(train, key, step):
      del step  # fresh videos every step: the key already depends on it
      return draw(key, train["digits"], config.batch_size)

    def held_out(n):
      # Equal to the first n sequences of moving_mnist_test_set (sequence i depends on (seed, i)).
      return draw(jax.random.key(d.test_seed), test_digits, n)

    def test_videos(n):
      return video_data.moving_mnist_test_set(n, d.test_seed, num_digits=d.num_digits,
                                              size=d.size)
    return {"digits": video_data.digit_images("train")}, sample_videos, held_out, test_videos

  splits = video_data.build_gray_scott(cache.resolve(d.cache_dir), sizes=tuple(d.sizes),
                                       size=d.size, seed=d.seed, regimes=tuple(d.regimes),
                                       dtype=np.uint8)
  test = splits["test"]["frames"]
  order_key = jax.random.fold_in(jax.random.key(config.seed), 2)

  def sample_videos(train, key, step):
    del key  # the epoch permutation decides which videos come next
    videos = train["videos"]   # uint8 on device: 41 MB for 2,000 at 32 px
    return videos[pipeline.epoch_indices(order_key, step, config.batch_size, len(videos))]

  return ({"videos": splits["train"]["frames"]}, sample_videos, lambda n: jnp.asarray(test[:n]),
          lambda n: test[:n].astype(np.float32) / 255)


def build(config) -> Task:
  d, m, e = config.data, config.model, config.eval
  model = make_model(config)
  loss_cfg = video.LossConfig(**config.loss.to_dict())
  train_data, sample_videos, held_out_videos, test_videos = make_source(config)
  length = d.window + 1

  def sample_batch(train, key, step):
    videos = sample_videos(train, jax.random.fold_in(key, 0), step)
    return {"frames": to_frames(cut_windows(jax.random.fold_in(key, 1), videos, length),
                                d.channels)}

  def variables(params, model_state):
    return {"params": params, **model_state}

  def window(params, model_state, frames, train):
    return video.window_loss(model, variables(params, model_state), frames, loss=loss_cfg,
                             state_grad=m.state_grad, train=train, update_bio=train,
                             remat=m.remat)

  def loss_fn(params, model_state, batch, step):
    del step
    return window(params, model_state, batch["frames"], True)   # updates model_state

  # Fixed windows of the first held-out videos, at offsets from the eval seed.
  held_out = {"frames": to_frames(cut_windows(
      jax.random.key(e.seed), held_out_videos(e.held_out_windows), length), d.channels)}

  def eval_step(params, model_state, held_out, step):
    del step
    loss, (metrics, _) = window(params, model_state, held_out["frames"], False)
    metrics.pop("loss_per_step")
    return {"loss": loss, **metrics}

  def rollout_fn(feedback):
    return jax.jit(lambda p, s, ctx: video.rollout(model, variables(p, s), ctx, e.horizon,
                                                   feedback=feedback))

  rollouts = {fb: rollout_fn(fb) for fb in e.feedback}
  encode = jax.jit(lambda p, s, x: model.apply(variables(p, s), x, False, method="encode"))

  def evaluate(params, model_state, workdir, step):
    videos = test_videos(e.num_sequences)
    frames = {fb: [] for fb in e.feedback}
    diags = {fb: {"latent_rms": [], "state_rms": []} for fb in e.feedback}
    for batch, n in pipeline.batches({"x": videos[:, :e.context]}, e.batch_size):
      context = to_frames(jnp.asarray(batch["x"]), d.channels)
      for fb, fn in rollouts.items():
        out, diag = jax.device_get(fn(params, model_state, context))
        frames[fb].append(out[:n])
        for k in diags[fb]:
          diags[fb][k].append(diag[k][:n])
    features, aux = [], []
    for batch, n in pipeline.batches({"x": videos[:e.latent_sequences, 0]}, e.batch_size):
      z, a = jax.device_get(encode(params, model_state, to_frames(jnp.asarray(batch["x"]),
                                                                  d.channels)))
      features.append(z[:n])
      aux.append(jax.tree.map(lambda x: x[:n] if np.ndim(x) else x, a))
    predictions = {f"{m.name}_{fb}": np.concatenate(v) for fb, v in frames.items()}
    diagnostics = {f"{m.name}_{fb}": {k: np.concatenate(v).mean(0).tolist()
                                      for k, v in curves.items()}
                   for fb, curves in diags.items()}
    # On the host: the test set need not fit on the device next to the model.
    videos = np.repeat(videos, d.channels, axis=-1) if d.channels > 1 else videos
    return evaluate_rollouts(config, videos, predictions, diagnostics,
                             np.concatenate(features), aux,
                             sum(x.size for x in jax.tree.leaves(params)), workdir, step)

  example = jnp.zeros((1, d.size, d.size, d.channels), jnp.float32)
  return Task(model=model, init_inputs=(example,), train_data=train_data,
              sample_batch=sample_batch, batch_axes={"frames": ("batch", None, None, None, None)},
              loss_fn=loss_fn, eval_data=held_out, eval_step=eval_step, evaluate=evaluate)


def latent_metrics(features, aux) -> dict:
  """Channel statistics of encoder features [N, h, w, d] (rows = every position)."""
  # Plain numpy in, one computation at a time: the SVDs stay off the training mesh (see the
  # LAPACK deadlock in docs/design-notes.md).
  features = np.asarray(features, np.float32)
  out = {"effective_rank": float(vm.effective_rank(features)),
         "participation_ratio": float(vm.participation_ratio(features)),
         "spatial_variation": float(vm.spatial_variation(features)),
         "dead_channels": int(vm.dead_channels(features)),
         "channels": int(features.shape[-1]), "sequences": int(features.shape[0])}
  if aux and "steps_used" in aux[0]:   # FluidWorld's eval-time adaptive PDE steps per layer
    out["steps_used_per_layer"] = np.concatenate([a["steps_used"] for a in aux]).mean(0).tolist()
    out["energy"] = float(np.mean([a["energy"] for a in aux]))
  return out


def evaluate_rollouts(config, videos, predictions, diagnostics, features, aux, num_params,
                      workdir, step):
  """Scores rollouts against the trivial predictors; writes eval/video_<data>.json and .png
  (per-step curves), _frames.png (one test sequence) and _per_sequence.npz (each predictor's
  per-sequence, per-step MSE and its rollout of sequence 0, for paired comparisons of runs on
  the same test set: benchmarks/fluid_table.py), and prints a short table."""
  d, e = config.data, config.eval
  context = videos[:, :e.context]
  target = videos[:, e.context:e.context + e.horizon]
  trivial = {k: np.asarray(v) for k, v in vm.trivial_predictions(context, e.horizon).items()}
  everything = {**predictions, **trivial}
  report = vm.rollout_report(target, everything, n_boot=e.bootstrap)
  payload = {"data": d.name, "model": config.model.name, "seed": int(config.seed),
             "step": int(step), "num_params": int(num_params), "context": int(e.context),
             "horizon": int(e.horizon), "feedback": list(e.feedback),
             "rollout": report, "latent": latent_metrics(features, aux),
             "diagnostics": diagnostics}
  name = f"video_{d.name}"
  out = os.path.join(workdir, "eval")
  reporting.write_json(os.path.join(out, f"{name}.json"), payload)
  vm.plot_rollout_curves(
      os.path.join(out, f"{name}.png"), report,
      title=f"{d.name} {d.size}px, {config.model.name} ({num_params:,} params), step {step}: "
            f"{e.context} context -> {e.horizon} predicted, {len(videos)} test sequences")
  np.savez_compressed(
      os.path.join(out, f"{name}_per_sequence.npz"), context=context[0], target=target[0],
      **{f"mse_px/{k}": np.asarray(vm.mse_px(v, target)) for k, v in everything.items()},
      **{f"frames/{k}": np.asarray(v[0]) for k, v in everything.items()})
  vm.plot_frame_strip(os.path.join(out, f"{name}_frames.png"), context[0], target[0],
                      {k: v[0] for k, v in {**predictions, "copy_last": trivial["copy_last"]}
                       .items()})
  print(format_summary(payload))
  return payload


def format_summary(payload) -> str:
  report = payload["rollout"]
  shown = [h for h in SHOWN_STEPS if h <= payload["horizon"]]
  cols = [f"mse@{h}" for h in shown] + [f"ssim@{h}" for h in shown]
  width = max(len(n) for n in report["predictors"]) + 2
  lines = [f"{payload['data']} ({payload['model']}, step {payload['step']}): "
           f"{report['n_sequences']} test sequences, {payload['context']} context -> "
           f"{payload['horizon']} predicted frames; per-pixel MSE and Gaussian SSIM",
           f"{'predictor':<{width}}" + "".join(f"{c:>9}" for c in cols)]
  for name, entry in report["predictors"].items():
    mse, ssim = entry["per_step"]["mse_px"]["mean"], entry["per_step"]["ssim_gaussian"]["mean"]
    lines.append(f"{name:<{width}}" + "".join(f"{mse[h - 1]:9.4f}" for h in shown)
                 + "".join(f"{ssim[h - 1]:9.3f}" for h in shown))
  horizons = [f"{name} {entry['coherence_horizon_mse'] or 'never'}"
              for name, entry in report["predictors"].items() if not entry["trivial"]]
  lines.append("coherence horizon (first h whose MSE exceeds zero or copy-last): "
               + ", ".join(horizons))
  latent = payload["latent"]
  lines.append(f"encoder features: effective rank {latent['effective_rank']:.1f} / "
               f"{latent['channels']}, participation ratio {latent['participation_ratio']:.1f}, "
               f"dead channels {latent['dead_channels']}")
  return "\n".join(lines)
