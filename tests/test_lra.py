"""LRA: the encoder classifier, on-device batching, the task on every dataset, config errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment_config
from substrax.data import digits, pipeline
from substrax.models import attention
from substrax.models.classifier import Classifier
from substrax.models.transformer import BlockConfig
from substrax.train import trainer
from substrax.train.tasks import lra
from substrax.train.errors import ConfigError


def test_epoch_indices_are_permutations_without_replacement():
  key, n, b = jax.random.key(0), 40, 8
  steps = [np.asarray(pipeline.epoch_indices(key, s, b, n)) for s in range(10)]
  for epoch in range(2):
    seen = np.concatenate(steps[5 * epoch:5 * epoch + 5])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  assert not np.array_equal(steps[0], steps[5])   # each epoch is a fresh order
  jitted = jax.jit(pipeline.epoch_indices, static_argnums=(2, 3))
  np.testing.assert_array_equal(jitted(key, jnp.int32(7), b, n), steps[7])


def test_batches_cover_a_split_once_with_fixed_shapes():
  arrays = {"x": np.arange(10)}
  got = [(np.asarray(b["x"]), n) for b, n in pipeline.batches(arrays, 4)]
  assert [n for _, n in got] == [4, 4, 2]
  assert all(b.shape == (4,) for b, _ in got)
  np.testing.assert_array_equal(np.concatenate([b[:n] for b, n in got]), np.arange(10))


# Every kind with CLS pooling, and masked mean pooling once: pooling does not depend on the kind.
@pytest.mark.parametrize("kind, pool", [(k, "cls") for k in attention.KINDS] +
                         [("linformer", "mean")])
def test_padding_never_changes_the_logits(kind, pool):
  """Appending padding (token 0, masked) leaves every kind's prediction unchanged."""
  block = BlockConfig(num_heads=2, mlp_ratio=2,
                      attention=dict(kind=kind, window=4, num_features=32, low_rank=8))
  model = Classifier(vocab_size=16, num_classes=3, max_len=24, width=32, depth=2, block=block,
                     pool=pool)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 1, 16)
  padded = jnp.pad(tokens, ((0, 0), (0, 8)))
  params = jax.jit(model.init)(jax.random.key(0), padded, padded != 0)
  apply = jax.jit(model.apply)
  short = apply(params, tokens, tokens != 0)
  long = apply(params, padded, padded != 0)
  np.testing.assert_allclose(long, short, atol=1e-5, rtol=1e-5)


def test_mnist_split_is_disjoint_and_balanced():
  train_x, train_y = digits.split("train")
  test_x, test_y = digits.split("test")
  assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28)
  assert np.all(np.bincount(test_y) == 100) and np.all(np.bincount(train_y) == 400)
  train_rows = {x.tobytes() for x in train_x}
  assert not any(x.tobytes() in train_rows for x in test_x)


def test_downsample_average_pools():
  tokens = np.arange(16, dtype=np.uint8).reshape(1, 16)    # one 4x4 image
  out = lra.downsample({"s": {"tokens": tokens, "labels": np.zeros(1)}}, 2)["s"]["tokens"]
  np.testing.assert_array_equal(out, [[np.round(2.5), np.round(4.5), np.round(10.5),
                                       np.round(12.5)]])


def _train(name, workdir, **overrides):
  config = experiment_config(name, "tiny", **overrides)
  trainer.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "eval", f"lra_{config.data.name}.json")) as f:
    result = json.load(f)
  assert os.path.exists(os.path.join(workdir, "eval", f"lra_{config.data.name}.png"))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any(l["split"] == "eval" and 0 <= l["accuracy"] <= 1 for l in lines)
  assert all(np.isfinite(l["loss"]) for l in lines)
  return config, result


def test_listops_trains_and_reports_against_the_majority_class(tmp_path):
  config, result = _train("lra_listops", str(tmp_path / "run"),
                          **{"data.cache_dir": str(tmp_path / "cache")})
  assert result["task"] == "listops" and result["step"] == config.num_steps
  assert result["test_examples"] == config.data.sizes[2]
  assert 0 <= result["test_accuracy"] <= 1 and 0 < result["test_majority_accuracy"] < 1
  assert np.sum(result["test_confusion"]) == config.data.sizes[2]


def test_pathfinder_trains_with_linear_attention_and_dropout(tmp_path):
  _, result = _train("lra_pathfinder", str(tmp_path / "run"),
                     **{"data.cache_dir": str(tmp_path / "cache"),
                        "model.attention.kind": "linear", "model.dropout": 0.1})
  assert result["length"] == 16 * 16 and result["test_majority_accuracy"] == 0.5


def test_mnist_learns_past_chance(tmp_path):
  """100 steps on 7x7 digits: the held-out loss falls and accuracy clears the 10% majority."""
  workdir = str(tmp_path / "run")
  _, result = _train("lra_image", workdir, num_steps=100, batch_size=32,
                     **{"optim.learning_rate": 3e-3})
  assert result["length"] == 49
  assert result["test_accuracy"] > 0.15 > 0.1 == result["test_majority_accuracy"]
  evals = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [l["loss"] for l in evals if l["split"] == "eval"]
  assert losses[-1] < 0.97 * losses[0]


def test_text_and_cifar10_through_tfds(tmp_path, tfds_dir):
  _, text = _train("lra_text", str(tmp_path / "text"), **{"data.data_dir": tfds_dir,
                                                         "batch_size": 8})
  assert text["length"] == 64 and text["test_examples"] == 8
  _, image = _train("lra_image", str(tmp_path / "image"), batch_size=8,
                    **{"data.name": "cifar10", "data.data_dir": tfds_dir, "data.downsample": 4})
  assert image["length"] == 64 and image["val_examples"] == 2


@pytest.mark.parametrize("name, key, value, message", [
    ("lra_listops", "data.name", "cifar100", "data.name: unknown dataset"),
    ("lra_listops", "data.min_length", 100, "data.min_length: must be in"),
    ("lra_listops", "data.sizes", (10, 0, 5), "data.sizes: needs three split sizes"),
    ("lra_listops", "data.sizes", (10.5, 5, 5), "data.sizes: needs three split sizes"),
    ("lra_listops", "data.sizes", ("a", "b", "c"), "data.sizes: needs three split sizes"),
    ("lra_listops", "data.max_length", 2, "data.max_length: must be at least 4"),
    ("lra_pathfinder", "data.difficulty", "extreme", "data.difficulty: unknown difficulty"),
    ("lra_pathfinder", "data.image_size", 4, "data.image_size: must be at least 16"),
    ("lra_pathfinder", "data.image_size", 15, "data.image_size: must be at least 16"),
    ("lra_pathfinder", "data.sizes", (64, 1, 32), "data.sizes: .* integers >= 2"),
    ("lra_pathfinder", "data.seed", -1, "data.seed: must be >= 0"),
    ("lra_image", "data.downsample", 3, "data.downsample: must be a positive divisor"),
    ("lra_image", "model.pool", "max", "model.pool: unknown pool"),
    ("lra_image", "model.dropout", 1.0, "model.dropout: must be in"),
])
def test_bad_configs_name_the_key(name, key, value, message):
  config = experiment_config(name, "tiny", **{key: value})
  with pytest.raises(ConfigError, match=message):
    lra.validate(config)
