"""model.scan and model.remat (models/transformer.py): a scanned stack computes the unrolled
function from the same per-layer parameters, remat policies change no loss or gradient, the
stacked axis shards over no mesh axis, validation refuses layers that are not identical, and a
run directory keeps its layout (real substrax-train processes)."""
import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import cli, experiment_config, icl_config
from substrax.configs import common
from substrax.models.transformer import BlockConfig, Transformer
from substrax.models.video_transformer import VideoTransformer
from substrax.train import trainer
from substrax.train.errors import ConfigError

DEPTH = 2


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def stack(params, prefix="block", name="blocks", depth=DEPTH):
  """An unrolled tree's prefix_0 .. prefix_{depth-1} as one tree with a leading layer axis."""
  out = {k: v for k, v in params.items() if not k.startswith(f"{prefix}_")}
  out[name] = jax.tree.map(lambda *a: jnp.stack(a), *[params[f"{prefix}_{i}"]
                                                       for i in range(depth)])
  return out


def close(a, b):
  """float32 agreement up to rounding: the two layouts compile to different programs."""
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), a, b)


def test_scanned_transformer_computes_the_unrolled_function_and_gradients():
  block = BlockConfig(num_heads=2, attention={"kind": "softmax", "impl": "xla"})
  x = jax.random.normal(jax.random.key(1), (2, 7, 16))
  mask = jnp.arange(7) < jnp.array([[7], [5]])   # a padded sequence
  target = jax.random.normal(jax.random.key(2), (2, 7, 16))
  unrolled = Transformer(16, DEPTH, 8, block, causal=False)
  params = nn.unbox(jax.jit(unrolled.init)(jax.random.key(0), x, mask))["params"]

  def loss_and_grads(scan, policy, p):
    model = Transformer(16, DEPTH, 8, dataclasses.replace(block, scan=scan, remat=policy),
                        causal=False)
    loss = lambda p: jnp.mean((model.apply({"params": p}, x, mask) - target) ** 2)
    return jax.jit(jax.value_and_grad(loss))(p)

  loss, grads = loss_and_grads(False, "none", params)
  # Scan alone, remat alone, and the two together.
  for scan, policy in ((True, "none"), (False, "full"), (True, "full"), (True, "dots")):
    other_loss, other_grads = loss_and_grads(scan, policy, stack(params) if scan else params)
    close(other_loss, loss)
    close(other_grads, stack(grads) if scan else grads)
  shapes = jax.eval_shape(Transformer(16, DEPTH, 8, dataclasses.replace(block, scan=True)).init,
                          jax.random.key(0), x)
  assert nn.unbox(shapes)["params"]["blocks"]["mlp"]["fc"]["kernel"].shape == (DEPTH, 16, 64)


def test_scanned_video_transformer_computes_the_unrolled_function():
  kw = dict(channels=1, dim=16, patch=2, decoder_mid=16, num_heads=2, depth=DEPTH,
            temporal_depth=2, ffn=32)
  frames = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))

  def encode_and_step(model, frames):   # every parameter: the encoder's and the temporal's
    z, _ = model.encode(frames)
    return model.step(jnp.ones_like(z), z)[0]

  unrolled = VideoTransformer(**kw)
  init = jax.jit(functools.partial(unrolled.init, method=encode_and_step))
  params = nn.unbox(init(jax.random.key(0), frames))["params"]
  run = lambda model, p: jax.jit(lambda p: model.apply({"params": p}, frames,
                                                       method=encode_and_step))(p)
  stacked = stack(stack(params), "temporal_block", "temporal_blocks", 2)
  close(run(VideoTransformer(**kw, scan=True, remat="full"), stacked), run(unrolled, params))


def test_stacked_layer_axis_is_sharded_over_no_mesh_axis():
  # Flax leaves a name without a rule unsharded, so configs recorded before the 'layers'
  # rule existed shard the same way.
  kernel = lambda exp: exp.abstract_state.params["backbone"]["blocks"]["mlp"]["fc"]["kernel"]
  for rules in (common.LOGICAL_AXIS_RULES, common.LOGICAL_AXIS_RULES[:-1]):
    config = icl_config(**{"model.scan": True, "parallelism": "fsdp"})
    config.logical_axis_rules = rules
    exp = trainer.setup(config)
    assert kernel(exp).sharding.spec == P(None, "fsdp", "model")
    assert kernel(exp).shape == (2, 32, 128)


@pytest.mark.parametrize("name,overrides,fragment", [
    ("icl_linear", {"model.remat": "some"}, "model.remat: unknown policy 'some'; choose one of "
     "none, full, dots"),
    ("lm_hmm", {"model.mlp.hidden": (64, 32), "model.depth": 2},
     "model.scan: needs identical layers, but model.mlp.hidden gives them widths (64, 32)"),
    ("lm_hmm", {"model.mlp.granularities": (2, 1)},
     "model.scan: cannot be combined with model.mlp.granularities"),
    ("icl_linear", {"model.mlp.experts": 4, "model.mlp.top_k": 2},
     "model.scan: cannot be combined with model.mlp.experts"),
    ("icl_linear", {"eval.claims": ("probes",)}, "eval.claims: probes read each of block_0"),
    ("fluid_mmnist", {"model.name": "transformer", "model.transformer.remat": "all"},
     "model.transformer.remat: unknown policy 'all'"),
])
def test_validation_refuses_what_a_scan_cannot_run(name, overrides, fragment):
  scan = "fluid" not in name
  config = experiment_config(name, **({"model.scan": True} if scan else {}), **overrides)
  with pytest.raises(ConfigError, match="^" + fragment.replace("(", r"\(").replace(")", r"\)")):
    trainer.validate(config)


def test_presets_scan_only_deep_gpu_models():
  cases = {("icl_linear", "tiny"): False, ("icl_linear", "cpu"): False,
           ("icl_linear", "gpu"): True, ("icl_linear", "pod"): True,
           ("lra_listops", "gpu"): True, ("lra_image", "gpu"): False,
           ("lm_hmm", "cpu"): False, ("lm_hmm", "gpu"): True, ("bandit", "gpu"): True}
  for (name, preset), scan in cases.items():
    m = experiment_config(name, preset).model
    assert (m.scan, m.remat) == (scan, "none"), (name, preset)
  video = experiment_config("fluid_mmnist", "gpu").model.transformer
  assert (video.scan, video.remat) == (False, "none")


# ---------------------------------------------------------------------------------------------
# The run directory: remat is resumable, scan is another layout


# The cheapest complete run with a transformer backbone (an lm run scores 64 short sequences).
TINY = ["--config=lm_markov:tiny", "--config.model.depth=2", "--config.num_steps=10",
        "--config.plots=False"]


def one_line(run, status, *fragments):
  out = run.stderr.strip().splitlines()
  assert run.returncode == status and len(out) == 1, run.stderr
  assert all(f in out[0] for f in fragments), run.stderr


def test_a_rerun_may_change_remat_but_not_scan(tmp_path):
  workdir = str(tmp_path / "run")
  run = cli("substrax-train", *TINY, f"--workdir={workdir}")
  assert run.returncode == 0, run.stderr
  # Recorded before the keys existed: the same experiment as scan False and remat none.
  path = os.path.join(workdir, "config.json")
  recorded = json.load(open(path))
  for key in ("scan", "remat"):
    del recorded["model"][key]
  json.dump(recorded, open(path, "w"))
  one_line(cli("substrax-train", *TINY, "--config.model.scan=True", f"--workdir={workdir}"), 2,
           "model.scan: false in the run, true now (the checkpoints store one stacked 'blocks'")
  run = cli("substrax-train", *TINY[:2], "--config.num_steps=12", "--config.plots=False",
            "--config.model.remat=full", f"--workdir={workdir}")
  assert run.returncode == 0, run.stderr
  assert "resuming from the checkpoint at step 10" in run.stderr
  assert json.load(open(path))["model"]["remat"] == "full"
  os.remove(path)   # nothing to compare with: the checkpoint's layout names the change
  one_line(cli("substrax-train", *TINY, "--config.model.scan=True", f"--workdir={workdir}"), 2,
           "checkpoint at step 12", "written by another model: it stores the layers unrolled as "
           "block_0, block_1, ...; this config's model stacks the layers in one scanned 'blocks' "
           "tree")
