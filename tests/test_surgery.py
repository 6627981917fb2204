"""Model surgery: MatFormer's nested MLPs and their extraction (train/matformer.py), EMoE's
experts (models/emoe.py, models/transformer.MLP). Each identity to float precision."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.configs import icl_linear, lm_hmm
from substrax.models import emoe
from substrax.models.lm import LanguageModel
from substrax.models.transformer import MLP, BlockConfig
from substrax.train import matformer, trainer, workdir as workdir_lib
from substrax.train.errors import ConfigError

TOKENS = jax.random.randint(jax.random.key(1), (3, 16), 0, 16)


@jax.jit
def plus_noise(x, key, scale):
  """One compiled program per shape (the trees below repeat shapes), not one per tree."""
  return x + scale * jax.random.normal(key, x.shape)


def noisy_params(model, seed=0):
  """Initial parameters plus noise, so that biases are non-zero and nothing cancels by luck."""
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), TOKENS))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [plus_noise(x, k, 0.05) for x, k in zip(leaves, keys)])


def test_the_mlp_computes_what_nn_dense_does_bit_for_bit():
  """MLP declares its weights itself (to slice them) but applies them with nn.Dense's ops, so
  models trained before MatFormer compute exactly what they did: forward and gradient."""
  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.gelu(nn.Dense(64, name="fc")(x))
      return nn.Dense(x.shape[-1], name="proj")(h)
  x = jax.random.normal(jax.random.key(0), (4, 7, 16))
  mlp = MLP(64, jnp.float32, nn.initializers.normal(0.02))
  params = noisy_params_of(mlp, x)
  loss = lambda module: jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(module.apply({"params": p}, x) ** 3)))(params)
  (a, grad_a), (b, grad_b) = loss(mlp), loss(Reference())
  assert float(a) == float(b)
  for ga, gb in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
    np.testing.assert_array_equal(np.asarray(ga), np.asarray(gb))


def noisy_params_of(module, x):
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(1), x))["params"]
  return jax.tree.map(lambda p: plus_noise(p, jax.random.key(2), 0.1), params)


@pytest.mark.parametrize("block", [BlockConfig(num_heads=2),
                                   BlockConfig(num_heads=2, norm="rmsnorm", zero_mean=True)])
def test_matformer_slicing_equals_masking(block):
  """A prefix of the units (sliced weights) computes the full MLP with the other units'
  pre-activations masked to zero (Scenic's form): gelu(0) = 0, so they add nothing."""
  model = LanguageModel(16, 32, 2, 16, block)   # 128 hidden units per layer
  params = noisy_params(model)
  units = (16, 64)
  masked = jax.jit(lambda p: jax.tree_util.tree_map_with_path(
      lambda path, x: _mask_units(path, x, units), p))(params)
  sliced = jax.jit(functools.partial(model.apply, units=units))({"params": params}, TOKENS)
  apply = jax.jit(model.apply)
  full_masked = apply({"params": masked}, TOKENS)
  assert float(jnp.abs(sliced - full_masked).max()) <= 1e-6
  # The slice changed the output: the test is not comparing the full model with itself.
  assert float(jnp.abs(sliced - apply({"params": params}, TOKENS)).max()) > 1e-3


def _mask_units(path, x, units):
  names = [getattr(k, "key", "") for k in path]
  if "fc" not in names:
    return x
  layer = int(next(n for n in names if n.startswith("block_")).split("_")[1])
  return x.at[..., units[layer]:].set(0.0)   # kernel [width, hidden] and bias [hidden]


def test_an_extracted_submodel_equals_the_full_model_at_its_granularity():
  config = lm_hmm.get_config("tiny")
  config.model.update(depth=2, width=32)
  config.model.mlp.granularities = (4, 2, 1)
  config.checkpoint.directory = "/elsewhere/checkpoints"
  choice = (4, 1)
  sub = matformer.submodel_config(config, choice)
  assert tuple(sub.model.mlp.hidden) == (32, 128) and not sub.model.mlp.granularities
  assert sub.checkpoint.directory is None   # the new run's own, never the source's
  full_exp, sub_exp = trainer.setup(config), trainer.setup(sub)
  tokens = jnp.tile(TOKENS[:1], (jax.device_count(), 1))   # the batch splits over the mesh
  with full_exp.activate():
    state = full_exp.init()
    noise = lambda x: plus_noise(x, jax.random.key(3), 0.05)
    state = state.replace(params=jax.tree.map(noise, state.params),
                          opt_state=jax.tree.map(lambda x: noise(x) if x.ndim else x,
                                                 state.opt_state))
    at_choice = jax.jit(functools.partial(full_exp.task.model.apply,
                                          units=matformer.units(config.model, choice)))(
        {"params": state.params}, tokens)
  with sub_exp.activate():
    small = jax.jit(lambda state: matformer.slice_state(state, sub_exp.abstract_state))(state)
    assert jax.tree.map(jnp.shape, small) == jax.tree.map(jnp.shape, sub_exp.abstract_state)
    extracted = jax.jit(sub_exp.task.model.apply)({"params": small.params}, tokens)
  assert float(jnp.abs(extracted - at_choice).max()) <= 1e-6
  # Adam's moments are cut with the parameters, to their prefixes (the extracted run trains on).
  path = lambda tree: tree["backbone"]["block_0"]["mlp"]["fc"]["kernel"]
  for moment in ("mu", "nu"):
    cut, whole = (path(getattr(s.opt_state[1][0], moment)) for s in (small, state))
    assert cut.shape == (32, 32)
    np.testing.assert_array_equal(np.asarray(cut), np.asarray(whole)[:, :32])


def test_mix_and_match_lists_every_per_layer_choice_and_counts_ffn_parameters():
  m = lm_hmm.get_config("cpu").model
  m.update(depth=2)
  m.mlp.granularities = (8, 4, 2, 1)
  choices = matformer.mix_and_match(m)
  assert len(choices) == 16 and len(set(choices)) == 16
  # width 128, d_ff 512: per layer 2 * 128 * units + units + 128.
  assert matformer.ffn_params(m, (1, 1)) == 2 * (2 * 128 * 512 + 512 + 128)
  assert matformer.ffn_params(m, (8, 1)) == (2 * 128 * 64 + 64 + 128) + (2 * 128 * 512 + 512 + 128)


def test_the_matformer_loss_is_the_sum_over_granularities():
  seen = []

  def loss_at(params, model_state, batch, step, units):
    seen.append(units)
    return jnp.float32(len(seen)), ({"error": jnp.float32(10 * len(seen))}, model_state)
  loss, (aux, _) = matformer.summed_loss(loss_at, {4: (8,), 1: None})({}, {}, None, 0)
  assert seen == [(8,), None] and float(loss) == 3.0
  assert aux == {"loss_g4": 1.0, "error_g4": 10.0, "loss_g1": 2.0, "error_g1": 20.0}


def _experts(block, experts, top_k):
  return dataclasses.replace(block, experts=experts, top_k=top_k)


def initial_emoe(model):
  """model.init's 'emoe' collection, compiled without the parameters' initialisers."""
  return jax.jit(lambda key, x: model.init(key, x)["emoe"])(jax.random.key(0), TOKENS)


def test_emoe_with_every_expert_is_the_dense_model():
  block = BlockConfig(num_heads=2)
  dense = LanguageModel(16, 32, 2, 16, block)
  params = noisy_params(dense)
  moe = LanguageModel(16, 32, 2, 16, _experts(block, 8, 8))
  state = emoe.convert(params, initial_emoe(moe))
  a = jax.jit(dense.apply)({"params": params}, TOKENS)
  b = jax.jit(moe.apply)({"params": params, "emoe": state}, TOKENS)
  assert float(jnp.abs(a - b).max()) <= 1e-5
  fewer = jax.jit(LanguageModel(16, 32, 2, 16, _experts(block, 8, 2)).apply)
  assert float(jnp.abs(fewer({"params": params, "emoe": state}, TOKENS) - a).max()) > 1e-3


def test_emoe_routes_each_token_to_its_top_k_experts_by_mean_key():
  """The MLP's masked dense form equals the sum over each token's chosen experts of
  W2[S_e] gelu(W1[:, S_e]^T x + b1[S_e]), plus b2 once, with experts chosen by gate . x."""
  mlp = MLP(64, jnp.float32, nn.initializers.normal(0.02), experts=4, top_k=2)
  x = jax.random.normal(jax.random.key(0), (5, 8))
  params = noisy_params_of(mlp, x)
  w1, b1 = params["fc"]["kernel"], params["fc"]["bias"]
  w2, b2 = params["proj"]["kernel"], params["proj"]["bias"]
  group = np.random.default_rng(0).permutation(np.arange(64) // 16)
  gate = np.stack([np.asarray(w1)[:, group == e].mean(1) for e in range(4)])
  out = jax.jit(mlp.apply)({"params": params, "emoe": {"group": group, "gate": gate}}, x)
  chosen = [np.argsort(-(gate @ np.asarray(x[t])))[:2] for t in range(len(x))]

  @jax.jit
  def expected(x, w1, b1, w2, b2):
    return [b2 + sum(nn.gelu(x[t] @ w1[:, group == e] + b1[group == e]) @ w2[group == e]
                     for e in chosen[t])
            for t in range(len(x))]
  for t, want in enumerate(expected(x, w1, b1, w2, b2)):
    np.testing.assert_allclose(out[t], want, atol=1e-5)


def test_balanced_kmeans_finds_planted_groups_of_equal_size():
  rng = np.random.default_rng(0)
  centres = 5 * rng.normal(size=(4, 6))
  labels = rng.permutation(np.repeat(np.arange(4), 8))
  points = centres[labels] + 0.1 * rng.normal(size=(32, 6))
  found = emoe.balanced_kmeans(points, 4, seed=1)
  assert np.bincount(found).tolist() == [8, 8, 8, 8]
  # The same partition up to renaming the groups.
  assert len({(a, b) for a, b in zip(labels, found)}) == 4
  with pytest.raises(ValueError, match="do not divide"):
    emoe.balanced_kmeans(points, 5)


def test_converted_experts_are_balanced_and_gated_by_their_mean_raw_key():
  block = _experts(BlockConfig(num_heads=2), 4, 1)
  model = LanguageModel(16, 32, 1, 16, block)
  params = noisy_params(model)
  state = emoe.convert(params, initial_emoe(model))
  group = np.asarray(state["backbone"]["block_0"]["mlp"]["group"])
  gate = np.asarray(state["backbone"]["block_0"]["mlp"]["gate"])
  kernel = np.asarray(params["backbone"]["block_0"]["mlp"]["fc"]["kernel"])
  assert np.bincount(group).tolist() == [32] * 4
  np.testing.assert_allclose(gate[2], kernel[:, group == 2].mean(1), rtol=1e-5)
  assert not np.array_equal(group, np.arange(128) // 32)   # k-means, not the contiguous default


def test_top_k_mass_is_the_share_of_activation_in_the_heaviest_experts():
  acts = np.array([[1.0, 1.0, 0.0, 2.0], [0.0, -3.0, 1.0, 0.0]])
  group = np.array([0, 0, 1, 1])
  # Token 0: experts hold 2 and 2 of 4; token 1: 3 and 1 of 4.
  assert emoe.top_k_mass(acts, group, 2, 1) == pytest.approx((0.5 + 0.75) / 2)
  assert emoe.top_k_mass(acts, group, 2, 2) == pytest.approx(1.0)


@pytest.mark.parametrize("changes, key", [
    ({"granularities": (8, 4, 2)}, "model.mlp.granularities"),     # no full width
    ({"granularities": (3, 1)}, "model.mlp.granularities"),        # 3 does not divide 256
    ({"granularities": (2, 2, 1)}, "model.mlp.granularities"),
    ({"hidden": (64,)}, "model.mlp.hidden"),                       # depth 2
    ({"experts": 6}, "model.mlp.experts"),
    ({"experts": 4, "top_k": 5}, "model.mlp.top_k"),
    ({"top_k": 2}, "model.mlp.top_k"),                             # no experts
    ({"experts": 4, "top_k": 1, "granularities": (2, 1)}, "model.mlp.experts"),
])
def test_mlp_config_errors_name_the_key(changes, key):
  config = icl_linear.get_config("tiny")
  config.model.mlp.update(changes)
  with pytest.raises(ConfigError, match=f"^{key}: "):
    trainer.validate(config)


def test_a_run_recorded_before_model_mlp_existed_is_the_same_experiment():
  config = workdir_lib.as_json(lm_hmm.get_config("tiny"))
  old = {**config, "model": {k: v for k, v in config["model"].items() if k != "mlp"}}
  assert workdir_lib.differences(old, config, training=True) == []
  config["model"]["mlp"]["experts"] = 4
  assert workdir_lib.differences(old, config, training=True) == [
      "model.mlp.experts: 0 in the run, 4 now"]


def test_an_icl_matformer_trains_and_scores_every_granularity():
  config = icl_linear.get_config("tiny")
  config.model.mlp.granularities = (4, 1)
  exp = trainer.setup(config)
  with exp.activate():
    state = exp.init()
    batch = jax.jit(exp.task.sample_batch)(exp.train_data, jax.random.key(0), 0)
    loss, (aux, _) = jax.jit(exp.task.loss_fn)(state.params, state.model_state, batch, 0)
    held_out = exp.eval_step(state.params, state.model_state, exp.eval_data, 0)
  assert float(loss) == pytest.approx(float(aux["loss_g4"] + aux["loss_g1"]), rel=1e-6)
  assert {"loss", "loss_g4", "error_k10_g4"} <= set(held_out)
  assert float(held_out["loss"]) != float(held_out["loss_g4"])


def test_emoe_trains_through_the_trainer_with_its_experts_frozen():
  """The 'emoe' collection rides in TrainState.model_state: the step passes it to the model,
  never changes it, and the parameters still train."""
  config = lm_hmm.get_config("tiny")
  config.model.mlp.update(experts=4, top_k=2)
  exp = trainer.setup(config)
  with exp.activate():
    state = exp.init()
    groups = state.model_state["emoe"]["backbone"]["block_0"]["mlp"]["group"]
    assert np.bincount(np.asarray(groups)).tolist() == [32] * 4   # 128 units, contiguous
    before = jax.tree.map(np.asarray, (state.params, state.model_state))
    for _ in range(2):
      state, metrics = exp.train_step(state, exp.train_data)
    assert np.isfinite(float(metrics["loss"]))
    held_out = exp.eval_step(state.params, state.model_state, exp.eval_data, state.step)
  assert np.isfinite(float(held_out["loss"]))
  jax.tree.map(np.testing.assert_array_equal, before[1], jax.tree.map(np.asarray,
                                                                      state.model_state))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before[0],
                         state.params)
  assert all(jax.tree.leaves(changed))
