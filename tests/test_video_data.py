"""Moving MNIST, Gray-Scott videos and the TFDS video readers (data/video.py)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment_config, moving_mnist_records, ucf101_records
from substrax.data import DataError
from substrax.data import video as V
from substrax.train.errors import ConfigError
from substrax.train.tasks import video as video_task


@pytest.fixture(scope="module")
def train_digits():
  return jnp.asarray(V.digit_images("train"))


def crops(images):
  """The bounding box of each image's non-zero pixels, as bytes: identifies a digit wherever
  it is drawn on the canvas."""
  out = set()
  for image in images:
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    out.add(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].tobytes())
  return out


# ------------------------------------------------------------------------------ Moving MNIST


def test_moving_mnist_shapes_dtypes_ranges(train_digits):
  key = jax.random.key(3)
  x64 = np.asarray(V.sample_moving_mnist(key, train_digits, 4))
  x32 = np.asarray(V.sample_moving_mnist(key, train_digits, 4, size=32))
  assert x64.shape == (4, 20, 64, 64, 1) and x32.shape == (4, 20, 32, 32, 1)
  assert x64.dtype == x32.dtype == np.float32
  assert x64.min() == 0 and x64.max() <= 1 and x64.max() > 0.9
  # The 32 px variant is the 64 px video average-pooled 2x2.
  np.testing.assert_allclose(x32, V.avg_pool(x64, 2), atol=1e-6)
  # Pixels are digit values / 255 (max of two digits), so uint8 storage is exact at 64 px.
  test = V.moving_mnist_test_set(4, seed=5, num_digits=1, dtype=np.uint8)
  assert test.dtype == np.uint8 and test.shape == (4, 20, 64, 64, 1)
  np.testing.assert_array_equal(
      test, np.round(V.moving_mnist_test_set(4, seed=5, num_digits=1) * 255))


def test_moving_mnist_deterministic_and_seeded(train_digits):
  draw = lambda seed: np.asarray(V.sample_moving_mnist(jax.random.key(seed), train_digits, 4,
                                                      size=32))
  np.testing.assert_array_equal(draw(0), draw(0))
  assert np.abs(draw(0) - draw(1)).mean() > 0.01
  # Jittable with a per-step key, as the trainer uses it.
  step_batch = jax.jit(lambda step: V.sample_moving_mnist(
      jax.random.fold_in(jax.random.key(0), step), train_digits, 4, size=32))
  np.testing.assert_array_equal(step_batch(7), step_batch(7))
  assert not np.array_equal(step_batch(7), step_batch(8))
  # The fixed test set: sequence i depends on (seed, i) only, not on num or the chunking.
  test = V.moving_mnist_test_set(4, size=32)
  np.testing.assert_array_equal(test, V.moving_mnist_test_set(4, size=32, chunk=2))
  np.testing.assert_array_equal(test[:2], V.moving_mnist_test_set(2, size=32))
  assert np.abs(test - V.moving_mnist_test_set(4, seed=1, size=32)).mean() > 0.01
  test_digits = jnp.asarray(V.digit_images("test"))
  np.testing.assert_array_equal(test, V.sample_moving_mnist(jax.random.key(0), test_digits, 4,
                                                            size=32))


def test_digit_splits_are_disjoint_and_respected(train_digits):
  train_crops, test_crops = crops(V.digit_images("train")), crops(V.digit_images("test"))
  assert len(train_crops) == 4000 and len(test_crops) == 1000
  assert not train_crops & test_crops
  # With one digit per video every frame shows one whole digit: read it back off the canvas.
  test = V.moving_mnist_test_set(4, seed=2, num_digits=1, dtype=np.uint8)[..., 0]
  seen = crops(test.reshape(-1, 64, 64))
  assert seen <= test_crops and not seen & train_crops
  train = V.sample_moving_mnist(jax.random.key(2), train_digits, 4, num_digits=1)
  seen = crops(np.round(np.asarray(train) * 255).astype(np.uint8).reshape(-1, 64, 64))
  assert seen <= train_crops and not seen & test_crops


def test_digits_stay_inside_the_canvas_and_bounce(train_digits):
  # Each digit drawn alone keeps all of its ink in every frame: nothing is cut at a border.
  layers_of = jax.jit(V._layers, static_argnums=(2, 3, 4))
  frames_of = jax.jit(V._moving_mnist, static_argnums=(2, 3, 4, 5))
  for seed in range(2):
    key = jax.random.fold_in(jax.random.key(9), seed)
    layers = np.asarray(layers_of(key, train_digits, 60, 2, V.STEP))   # [T, D, 64, 64]
    mass = layers.sum((2, 3))
    np.testing.assert_allclose(mass, np.broadcast_to(mass[:1], mass.shape), rtol=1e-5)
    idx = jax.random.randint(jax.random.split(key)[0], (2,), 0, train_digits.shape[0])
    np.testing.assert_allclose(mass[0], np.asarray(train_digits[idx]).sum((1, 2)) / 255,
                               rtol=1e-5)
    # The frame is the max of the layers.
    frame = frames_of(key, train_digits, 60, 2, V.STEP, 64)[..., 0]
    np.testing.assert_array_equal(frame, layers.max(1))
  # The walk: inside [0, 1], speed `step` except where a border clamps, and over 60 frames
  # (6 canvas widths) every digit bounces at least once.
  path = np.asarray(V._trajectory(jax.random.key(4), 60, 8, V.STEP))   # [T, D, 2]
  assert path.min() >= 0 and path.max() <= 1
  move = np.diff(path, axis=0)
  free = (path[1:] > 0) & (path[1:] < 1) & (path[:-1] > 0) & (path[:-1] < 1)
  speed = np.linalg.norm(move, axis=-1)
  both_free = free.all(-1)
  np.testing.assert_allclose(speed[both_free], V.STEP, rtol=1e-4)
  assert (np.abs(move) <= V.STEP + 1e-6).all()
  flips = (np.sign(move[1:]) != np.sign(move[:-1])) & (move[:-1] != 0)
  assert flips.any(0).any(-1).all()


def test_moving_mnist_bad_arguments(train_digits):
  key = jax.random.key(0)
  for kwargs, name in [(dict(size=48), "size"), (dict(frames=0), "frames"),
                       (dict(num_digits=0), "num_digits"), (dict(step=0.0), "step")]:
    with pytest.raises(ValueError, match=name):
      V.sample_moving_mnist(key, train_digits, 2, **kwargs)
  with pytest.raises(ValueError, match="batch"):
    V.sample_moving_mnist(key, train_digits, 0)
  with pytest.raises(ValueError, match="digits"):
    V.sample_moving_mnist(key, train_digits[:, :20], 2)
  with pytest.raises(ValueError, match="dtype"):
    V.moving_mnist_test_set(2, dtype=np.float64)
  with pytest.raises(ValueError, match="num"):
    V.moving_mnist_test_set(0)
  with pytest.raises(ValueError, match="split"):
    V.moving_mnist_test_set(2, split="validation")


# ------------------------------------------------------------------------------- Gray-Scott


@pytest.fixture(scope="module")
def gray_scott():
  """Two videos per regime at 32 px, as the cached splits make them."""
  return V.gray_scott_split(10, 0, "train", size=32)


def simulate(feed, kill, stride, seed=0):
  """One float video [20, 32, 32, 1] before quantisation, through the batched compiled path."""
  keys = jax.random.key(seed)[None]
  return V._gray_scott_batch(keys, feed, kill, stride, V.GS_BURN_IN, size=32, frames=20)[0]


def test_gray_scott_deterministic_finite_in_range(gray_scott):
  again = V.gray_scott_split(10, 0, "train", size=32)
  np.testing.assert_array_equal(gray_scott["frames"], again["frames"])
  np.testing.assert_array_equal(gray_scott["regime"], np.arange(10) % 5)
  assert gray_scott["frames"].shape == (10, 20, 32, 32, 1)
  other = V.gray_scott_split(5, 1, "train", size=32)["frames"]
  test = V.gray_scott_split(5, 0, "test", size=32)["frames"]
  assert not np.array_equal(other, gray_scott["frames"][:5])
  assert not np.array_equal(test, gray_scott["frames"][:5])
  # The float simulation before quantisation: finite, in [0, 1], and the clip rarely binds.
  for name, (feed, kill, stride) in V.REGIMES.items():
    x = np.asarray(simulate(feed, kill, stride, seed=1))
    assert x.shape == (20, 32, 32, 1) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1, name
    assert (x == 1).mean() < 1e-3 and x.max() > 0.5, name   # alive, and barely clipped


def test_gray_scott_motion_and_regimes(gray_scott):
  x = gray_scott["frames"].astype(np.float32) / 255
  change = np.abs(np.diff(x, axis=1)).mean((1, 2, 3, 4))   # mean |frame difference| per video
  per_regime = {name: change[gray_scott["regime"] == r].mean() for r, name in
                enumerate(V.REGIMES)}
  print(f"\ngray-scott 32px mean |dframe| {change.mean():.4f}:",
        " ".join(f"{k}={v:.4f}" for k, v in per_regime.items()))
  assert 0.015 <= change.mean() <= 0.05
  assert all(0.01 <= v <= 0.05 for v in per_regime.values()), per_regime
  # Regimes differ: one initial state evolves into clearly different videos under each (F, k).
  videos = [np.asarray(simulate(feed, kill, 40)) for feed, kill, _ in V.REGIMES.values()]
  for i in range(len(videos)):
    for j in range(i):
      assert np.abs(videos[i][-1] - videos[j][-1]).mean() > 0.05, (i, j)


def test_gray_scott_cache_reuse_and_atomic_write(tmp_path, monkeypatch):
  # 32 px and 20 frames, two videos per regime and split: the shapes other tests compiled.
  args = dict(sizes=(4, 4), burn_in=10, regimes=("spots", "waves"))
  first = V.build_gray_scott(tmp_path, **args)
  files = os.listdir(tmp_path)
  assert len(files) == 1 and not files[0].startswith(".tmp_")
  for part in ("n4-4", "size32", "seed0", "t20", "burn10", "spots-waves"):
    assert part in files[0]
  assert first["train"]["frames"].shape == (4, 20, 32, 32, 1)
  assert first["test"]["frames"].dtype == np.float32
  np.testing.assert_array_equal(first["train"]["regime"], [0, 1, 0, 1])
  # A second call reads the file and simulates nothing.
  monkeypatch.setattr(V, "gray_scott_split", lambda *a, **k: pytest.fail("simulated again"))
  again = V.build_gray_scott(tmp_path, **args, dtype=np.uint8)
  np.testing.assert_array_equal(again["train"]["frames"],
                                np.round(first["train"]["frames"] * 255))
  monkeypatch.undo()
  # Any other argument is another file; a write that fails leaves nothing behind.
  monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
  with pytest.raises(DataError, match="data.cache_dir: cannot write .*disk full"):
    V.build_gray_scott(tmp_path, **dict(args, seed=1))
  assert os.listdir(tmp_path) == files


def test_gray_scott_bad_arguments(tmp_path):
  for kwargs, name in [(dict(sizes=(5,)), "sizes"), (dict(size=2), "size"),
                       (dict(regimes=("spots", "lava")), "regimes"),
                       (dict(regimes=()), "regimes"), (dict(dtype=np.int32), "dtype"),
                       (dict(burn_in=-1), "burn_in"), (dict(seed=-1), "seed"),
                       (dict(frames=0), "frames")]:
    with pytest.raises(ValueError, match=name):
      V.build_gray_scott(tmp_path, **kwargs)
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------- TFDS


def test_area_resize():
  rng = np.random.default_rng(0)
  video = rng.random((2, 3, 12, 18, 3)).astype(np.float32)
  np.testing.assert_allclose(V.area_resize(video, (6, 9)), V.avg_pool(video, 2), atol=1e-6)
  # Non-integer factors: each output pixel averages its footprint; the mean is preserved.
  out = V.area_resize(video, (8, 12))   # 1.5x in both directions
  assert out.shape == (2, 3, 8, 12, 3)
  np.testing.assert_allclose(out.mean((2, 3)), video.mean((2, 3)), atol=1e-5)
  want = (video[0, 0, 0, 0] + 0.5 * video[0, 0, 0, 1] + 0.5 * video[0, 0, 1, 0]
          + 0.25 * video[0, 0, 1, 1]) / 2.25
  np.testing.assert_allclose(out[0, 0, 0, 0], want, atol=1e-6)
  np.testing.assert_allclose(V.area_resize(np.full((5, 7, 1), 0.3, np.float32), 3), 0.3,
                             atol=1e-6)
  assert V.area_resize(video, (12, 18)) is video


def test_moving_mnist_records():
  records = moving_mnist_records(3)
  raw = np.stack([r["image_sequence"] for r in records])
  x = V.moving_mnist_records(records)
  assert x.shape == (3, 20, 64, 64, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x * 255, raw, atol=1e-4)
  np.testing.assert_array_equal(V.moving_mnist_records(records, dtype=np.uint8), raw)
  small = V.moving_mnist_records(records, size=32)
  np.testing.assert_allclose(small, V.avg_pool(raw / 255, 2), atol=1e-6)
  assert V.moving_mnist_records([], size=32).shape == (0, 20, 32, 32, 1)
  with pytest.raises(ValueError, match="image_sequence"):
    V.moving_mnist_records([{"image_sequence": np.zeros((20, 64, 64, 3), np.uint8)}])


def test_ucf101_records_windows():
  records = ucf101_records((25, 7, 12))
  out = V.ucf101_records(records, frames=5)
  # Non-overlapping clips: 25 frames give 5, 7 give 1, 12 give 2.
  assert out["frames"].shape == (8, 5, 12, 16, 3) and out["frames"].dtype == np.float32
  np.testing.assert_array_equal(out["video"], [0] * 5 + [1] + [2] * 2)
  np.testing.assert_array_equal(out["label"], [0] * 5 + [1] + [2] * 2)
  # Frame t of video i has red 10 t + i: clip 1 of video 0 starts at frame 5.
  np.testing.assert_allclose(out["frames"][1, :, 0, 0, 0] * 255, [50, 60, 70, 80, 90])
  strided = V.ucf101_records(records, frames=3, hop=4, frame_step=2, size=4, dtype=np.uint8)
  # Spans of 5 frames every 4: video 0 (25) has 6 clips, video 1 (7) 1, video 2 (12) 2.
  assert strided["frames"].shape == (9, 3, 4, 4, 3) and strided["frames"].dtype == np.uint8
  np.testing.assert_array_equal(strided["frames"][1, :, 2, 3, 0], [40, 60, 80])
  assert V.ucf101_records(records, frames=30)["frames"].shape == (0, 30, 0, 0, 3)
  for kwargs, name in [(dict(frames=0), "frames"), (dict(hop=0), "hop"),
                       (dict(frame_step=0), "frame_step"), (dict(dtype=np.int8), "dtype")]:
    with pytest.raises(ValueError, match=name):
      V.ucf101_records(records, **kwargs)
  with pytest.raises(ValueError, match="size="):
    V.ucf101_records(records + ucf101_records((6,), height=8), frames=5)


def test_load_tfds_through_data_source(video_tfds_dir):
  x = V.load_tfds("moving_mnist", "test", video_tfds_dir)
  assert x.shape == (3, 20, 64, 64, 1) and x.dtype == np.float32
  # PNG is lossless; the prepared files are shuffled, so compare as sets.
  want = {r["image_sequence"].tobytes() for r in moving_mnist_records(3)}
  assert {np.round(v * 255).astype(np.uint8).tobytes() for v in x} == want
  assert V.load_tfds("moving_mnist", "test", video_tfds_dir, size=32).shape == (3, 20, 32, 32, 1)
  clips = V.load_tfds("ucf101/ucf101_1", "train", video_tfds_dir, frames=5)
  assert clips["frames"].shape == (8, 5, 12, 16, 3)
  assert sorted(clips["label"]) == [0] * 5 + [1] + [2] * 2
  # JPEG keeps flat colours to within a few levels; red is 10 t + video index.
  first = clips["frames"][clips["label"] == 1][0]
  np.testing.assert_allclose(first[:, 0, 0, 0] * 255, [1, 11, 21, 31, 41], atol=3)
  test = V.load_tfds("ucf101/ucf101_1", "test", video_tfds_dir, frames=10, size=6)
  assert test["frames"].shape == (1, 10, 6, 6, 3) and list(test["label"]) == [7]


def test_load_tfds_errors(video_tfds_dir, tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="name"):
    V.load_tfds("kinetics", "test")
  with pytest.raises(ValueError, match="ucf101 only"):
    V.load_tfds("moving_mnist", "test", video_tfds_dir, frames=10)
  with pytest.raises(DataError) as err:
    V.load_tfds("moving_mnist", "test", str(tmp_path))
  message = str(err.value)
  assert "moving_mnist" in message and str(tmp_path) in message and "tfds build" in message
  assert "\n" not in message
  with pytest.raises(ValueError, match="split"):   # a prepared dataset's errors pass through
    V.load_tfds("moving_mnist", "train", video_tfds_dir)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'substrax\[tfds\]'"):
    V.load_tfds("ucf101", "test", str(tmp_path))


# ------------------------------------------------------- config values the data and models need

@pytest.mark.parametrize("name, key, value", [
    ("fluid_grayscott", "model.fluid.dt_clip", (0.1,)),
    ("fluid_grayscott", "model.fluid.belief_dt_clip", (0.1, 0.2, 0.3)),
    ("fluid_grayscott", "model.fluid.dt_clip", ("a", "b")),     # a flag typo
    ("fluid_grayscott", "model.fluid.dt_clip", (0.2, 0.1)),
    ("fluid_grayscott", "model.fluid.dilations", (1, "a")),
    ("fluid_grayscott", "model.fluid.dilations", (1.5, 2)),
    ("fluid_grayscott", "model.fluid.unroll", -1),
    ("fluid_grayscott", "data.sizes", (20, "a")),
    ("fluid_grayscott", "data.sizes", (20.5, 10)),
    ("fluid_grayscott", "data.regimes", ("spots", "spots")),
    ("fluid_grayscott", "data.regimes", (["spots"],)),          # unhashable: no TypeError
    ("fluid_grayscott", "data.seed", -1),
    ("fluid_grayscott", "eval.feedback", (["latent"],)),
    ("fluid_mmnist", "data.test_seed", -1),
])
def test_bad_video_config_is_one_line_naming_the_key(name, key, value):
  config = experiment_config(name, "tiny", **{key: value})
  with pytest.raises(ConfigError, match=f"^{key}:") as err:
    video_task.validate(config)
  assert "\n" not in str(err.value)
