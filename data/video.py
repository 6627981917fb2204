"""Video datasets for world models: Moving MNIST, Gray-Scott reaction-diffusion, TFDS readers.

All videos are [N, T, H, W, C], float32 in [0, 1] (uint8 on request).

Moving MNIST follows Srivastava et al. (2015) as coded in OpenSTL's `MovingMNIST`: two 28x28
digits on a 64x64 canvas, 20 frames, each digit starting at a uniform position with a uniform
direction and moving 0.1 of the free range (3.6 px) per frame, bouncing off the borders; digits
combine by max. The digits are real MNIST images from `substrax.data.digits`, split by image:
training sequences use only the 4,000 'train' digits and the fixed test set only the 1,000 'test'
digits. The test set is ours (seeded), not the official `mnist_test_seq.npy`. The 32x32 variant
is the 64x64 video average-pooled 2x2.

Gray-Scott videos are simulated here (explicit Euler, periodic 5-point Laplacian) in five pattern
regimes, with the v field as the grey image; splits are generated once and cached as .npz.

The TFDS readers convert prepared `moving_mnist` and `ucf101` datasets, read with
`tfds.data_source` (no TensorFlow needed, see `tf_free_video_features`), to the same layout.

Example:
  digits = jnp.asarray(digit_images("train"))
  video = sample_moving_mnist(jax.random.fold_in(key, step), digits, 16, size=32)  # jittable
  test = moving_mnist_test_set(size=32)       # numpy [1000, 20, 32, 32, 1], seed 0
  gs = build_gray_scott("/tmp/gs_cache")      # {"train": {"frames", "regime"}, "test": ...}
"""
import contextlib
import functools
import hashlib
import importlib.util
import os
import sys
import time
import types
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from substrax.data import cache
from substrax.data import digits as mnist
from substrax.data import tfds as tfds_lra

FRAMES = 20
CANVAS = 64
DIGIT = 28
STEP = 0.1   # OpenSTL's step_length_: a fraction of the free range CANVAS - DIGIT per frame
DTYPES = (np.float32, np.uint8)


def _check_int(name, value, low=1):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_dtype(dtype):
  try:
    ok = np.dtype(dtype) in [np.dtype(d) for d in DTYPES]
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(f"dtype must be float32 or uint8, got {dtype!r}")
  return np.dtype(dtype)


def _to_dtype(video: np.ndarray, dtype) -> np.ndarray:
  """float [0, 1] video to float32, or to uint8 by rounding."""
  if np.dtype(dtype) == np.uint8:
    return np.round(np.asarray(video, np.float32) * 255).astype(np.uint8)
  return np.asarray(video, np.float32)


def avg_pool(video, factor: int):
  """Averages factor x factor pixel blocks of [..., H, W, C]; numpy or jax arrays."""
  *lead, h, w, c = video.shape
  return video.reshape(*lead, h // factor, factor, w // factor, factor, c).mean((-4, -2))


# ------------------------------------------------------------------------------ Moving MNIST


def digit_images(split: str) -> np.ndarray:
  """MNIST digits uint8 [n, 28, 28] of 'train' (4,000) or 'test' (1,000); disjoint images."""
  return mnist.split(split)[0]


def _check_moving(digits_shape, frames, num_digits, size, step):
  if len(digits_shape) != 3 or digits_shape[1:] != (DIGIT, DIGIT) or digits_shape[0] < 1:
    raise ValueError(f"digits must be [n, {DIGIT}, {DIGIT}] with n >= 1, got {digits_shape}")
  _check_int("frames", frames)
  _check_int("num_digits", num_digits)
  _check_int("size", size)
  if CANVAS % size:
    raise ValueError(f"size must divide {CANVAS} (frames are pooled from {CANVAS}), got {size}")
  if not 0 < step <= 1:
    raise ValueError(f"step must be in (0, 1], got {step!r}")


def _trajectory(key, frames: int, num_digits: int, step: float):
  """Top-left corners in [0, 1]^2 as (y, x), float32 [frames, num_digits, 2].

  OpenSTL's walk: move first, then any coordinate at or past a border is clamped to it and its
  velocity reversed, so frame 0 is already one step from the drawn start.
  """
  k_pos, k_dir = jax.random.split(key)
  pos = jax.random.uniform(k_pos, (num_digits, 2))
  theta = jax.random.uniform(k_dir, (num_digits,), maxval=2 * jnp.pi)
  vel = jnp.stack([jnp.sin(theta), jnp.cos(theta)], -1)

  def move(carry, _):
    pos, vel = carry
    pos = pos + step * vel
    vel = jnp.where((pos <= 0) | (pos >= 1), -vel, vel)
    pos = jnp.clip(pos, 0, 1)
    return (pos, vel), pos

  return jax.lax.scan(move, (pos, vel), length=frames)[1]


def _layers(key, digits, frames: int, num_digits: int, step: float):
  """Each digit drawn alone on its own canvas: float32 [frames, num_digits, 64, 64] in [0, 1]."""
  k_idx, k_path = jax.random.split(key)
  images = digits[jax.random.randint(k_idx, (num_digits,), 0, digits.shape[0])]
  images = images.astype(jnp.float32) / 255
  corner = jnp.floor(_trajectory(k_path, frames, num_digits, step) * (CANVAS - DIGIT))
  # Canvas pixel p shows digit pixel p - corner where that exists: a masked gather, which
  # batches plainly under vmap (a dynamic_update_slice there would turn into a scatter).
  offset = jnp.arange(CANVAS) - corner.astype(jnp.int32)[..., None]   # [T, D, 2, CANVAS]
  inside = (offset >= 0) & (offset < DIGIT)
  offset = jnp.clip(offset, 0, DIGIT - 1)

  def draw(image, off, ok):   # one digit in one frame
    return image[off[0][:, None], off[1][None, :]] * (ok[0][:, None] & ok[1][None, :])

  return jax.vmap(jax.vmap(draw), in_axes=(None, 0, 0))(images, offset, inside)


def _moving_mnist(key, digits, frames, num_digits, step, size):
  video = _layers(key, digits, frames, num_digits, step).max(1)[..., None]
  return video if size == CANVAS else avg_pool(video, CANVAS // size)


def _sequence_keys(key, n: int):
  # fold_in per index: sequence i depends on (key, i) only, whatever n or the chunking.
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))


@functools.partial(jax.jit, static_argnames=("frames", "num_digits", "size", "step"))
def _draw(keys, digits, *, frames, num_digits, size, step):
  return jax.vmap(lambda k: _moving_mnist(k, digits, frames, num_digits, step, size))(keys)


def sample_moving_mnist(key, digits, batch: int, *, frames: int = FRAMES, num_digits: int = 2,
                        size: int = CANVAS, step: float = STEP):
  """Moving MNIST videos float32 [batch, frames, size, size, 1] in [0, 1], drawn on device.

  Jittable (batch and the keyword arguments are static).

  Args:
    key: a PRNG key; for training pass fold_in(key, step) so batches are a function of the step.
    digits: uint8 [n, 28, 28] digit images, e.g. digit_images("train"); keep them on device.
    batch: number of sequences.
    frames: frames per sequence (20 in the protocol).
    num_digits: digits per sequence (2 in the protocol).
    size: 64, or a divisor of 64 for a pooled variant (32: Moving-MNIST-32).
    step: per-frame move as a fraction of the free range (0.1 in the protocol).
  """
  _check_int("batch", batch)
  _check_moving(digits.shape, frames, num_digits, size, step)
  return _draw(_sequence_keys(key, batch), digits, frames=frames, num_digits=num_digits,
               size=size, step=step)


def moving_mnist_test_set(num: int = 1000, seed: int = 0, *, frames: int = FRAMES,
                          num_digits: int = 2, size: int = CANVAS, split: str = "test",
                          dtype=np.float32, chunk: int = 100) -> np.ndarray:
  """The fixed evaluation set [num, frames, size, size, 1] from the split's digits only.

  Sequence i is a pure function of (seed, i): equal to
  sample_moving_mnist(jax.random.key(seed), digit_images(split), num)[i].
  """
  _check_int("num", num)
  _check_int("seed", seed, low=0)
  _check_int("chunk", chunk)
  dtype = _check_dtype(dtype)
  digits = jnp.asarray(digit_images(split))
  _check_moving(digits.shape, frames, num_digits, size, STEP)
  keys = _sequence_keys(jax.random.key(seed), num)
  chunk = min(chunk, num)
  out = np.empty((num, frames, size, size, 1), dtype)
  for start in range(0, num, chunk):
    n = min(chunk, num - start)
    part = keys[np.arange(start, start + chunk) % num]   # padded: one shape, one compile
    video = _draw(part, digits, frames=frames, num_digits=num_digits, size=size, step=STEP)
    out[start:start + n] = _to_dtype(video[:n], dtype)
  return out


# ------------------------------------------------------------------------------- Gray-Scott

# Diffusion in pixel units. Pearson (1993) used Du=2e-5, Dv=1e-5 on a 2.5-wide box of 256
# cells, i.e. 0.2097 and 0.105 per pixel; we halve them so the pattern wavelength (~10 px)
# leaves several features in a 32 px frame. Explicit Euler is stable for dt * 4 * Du <= 1.
GS_DIFFUSION = (0.105, 0.0525)
GS_DT = 1.0
GS_BURN_IN = 200
GS_V_SCALE = 0.5       # the grey image is clip(v / 0.5, 0, 1): v rarely leaves [0, 0.5]
GS_SEED_AREA = 160     # one seed square per 160 pixels (6 at 32 px, 25 at 64 px)
GS_SEED_SIDE = (3, 6)  # square sides in pixels, inclusive
GS_CACHE_VERSION = 1   # bump whenever the simulation's output for given arguments changes
GS_SPLITS = ("train", "test")

# name: (F, k, frame stride in solver steps). (F, k) from the literature, with Pearson's class
# where Munafo's xmorphia map (mrob.com/pub/comp/xmorphia) assigns one. The strides are ours,
# measured so each regime's mean |frame difference| is about 0.02-0.035 at 32 px. Except for the
# waves, the patterns grow from the seeds until they fill the frame and then barely move, so
# that mean saturates near 0.02 whatever the stride: the motion sits in the first frames.
REGIMES = {
    "spots": (0.030, 0.062, 60),      # "Solitons" preset of pmneila/jsexp: spots that divide
    "worms": (0.046, 0.061, 80),      # Pearson theta (xmorphia F460-k610): growing worms
    "mazes": (0.029, 0.057, 40),      # "Mazes" preset of pmneila/jsexp: labyrinth
    "waves": (0.022, 0.051, 15),      # Pearson gamma (xmorphia F220-k510): oscillating waves
    "mitosis": (0.0367, 0.0649, 120),  # Karl Sims' "mitosis" (karlsims.com/rd.html)
}


def _laplacian(x):
  """Periodic 5-point Laplacian of [..., H, W] by shifts (7-24x faster than a conv on CPU)."""
  return (jnp.roll(x, 1, -1) + jnp.roll(x, -1, -1) + jnp.roll(x, 1, -2) + jnp.roll(x, -1, -2)
          - 4 * x)


def _gs_step(state, feed, kill):
  u, v = state
  uvv = u * v * v
  du, dv = GS_DIFFUSION
  return (u + GS_DT * (du * _laplacian(u) - uvv + feed * (1 - u)),
          v + GS_DT * (dv * _laplacian(v) + uvv - (feed + kill) * v))


def _gs_init(key, size: int):
  """Pearson's start: u = 1, v = 0 except squares of (u, v) = (0.5, 0.25), and +-1% noise.

  Pearson used one central square; random squares make every video different.
  """
  k_at, k_side, k_noise = jax.random.split(key, 3)
  squares = max(1, size * size // GS_SEED_AREA)
  corner = jax.random.randint(k_at, (squares, 2), 0, size)
  side = jax.random.randint(k_side, (squares, 1), GS_SEED_SIDE[0], GS_SEED_SIDE[1] + 1)
  grid = jnp.arange(size)
  rows = (grid - corner[:, :1]) % size < side   # [squares, size], wrapping around the torus
  cols = (grid - corner[:, 1:]) % size < side
  seeded = (rows[:, :, None] & cols[:, None, :]).any(0)
  noise = 0.01 * jax.random.uniform(k_noise, (2, size, size), minval=-1, maxval=1)
  return jnp.where(seeded, 0.5, 1.0) + noise[0], jnp.where(seeded, 0.25, 0.0) + noise[1]


def simulate_gray_scott(key, feed, kill, stride, *, size: int, frames: int = FRAMES,
                        burn_in=GS_BURN_IN):
  """One Gray-Scott video float32 [frames, size, size, 1] in [0, 1]; jittable.

  Random seeds, burn_in solver steps, then a frame of v every stride steps. feed, kill, stride
  and burn_in may be traced, so one compiled function serves every regime.
  """
  step = lambda _, s: _gs_step(s, feed, kill)
  state = jax.lax.fori_loop(0, burn_in, step, _gs_init(key, size))

  def frame(state, _):
    state = jax.lax.fori_loop(0, stride, step, state)
    return state, state[1]

  v = jax.lax.scan(frame, state, length=frames)[1]
  return jnp.clip(v / GS_V_SCALE, 0, 1)[..., None]


@functools.partial(jax.jit, static_argnames=("size", "frames"))
def _gray_scott_batch(keys, feed, kill, stride, burn_in, *, size, frames):
  run = lambda k: simulate_gray_scott(k, feed, kill, stride, size=size, frames=frames,
                                      burn_in=burn_in)
  return jax.vmap(run)(keys)


def _gs_keys(seed: int, split: str, n: int):
  return _sequence_keys(jax.random.fold_in(jax.random.key(seed), GS_SPLITS.index(split)), n)


def _check_gray_scott(size, seed, frames, burn_in, regimes) -> tuple[str, ...]:
  _check_int("size", size, low=4)
  _check_int("seed", seed, low=0)
  _check_int("frames", frames)
  _check_int("burn_in", burn_in, low=0)
  regimes = tuple(regimes)
  unknown = [r for r in regimes if r not in REGIMES]
  if not regimes or unknown or len(set(regimes)) != len(regimes):
    raise ValueError(f"regimes must be distinct names from {tuple(REGIMES)}, got {regimes}")
  return regimes


def gray_scott_split(num: int, seed: int, split: str, *, size: int = 32, frames: int = FRAMES,
                     burn_in: int = GS_BURN_IN, regimes=tuple(REGIMES),
                     chunk: int = 200) -> dict[str, np.ndarray]:
  """Simulates one split: frames uint8 [num, frames, size, size, 1] and regime int32 [num].

  Sequence i has regime regimes[i % len(regimes)] and a key that depends on (seed, split, i)
  only, so train and test never share initial conditions.
  """
  _check_int("num", num)
  _check_int("chunk", chunk)
  regimes = _check_gray_scott(size, seed, frames, burn_in, regimes)
  regime = np.arange(num, dtype=np.int32) % len(regimes)
  keys = _gs_keys(seed, split, num)
  out = np.empty((num, frames, size, size, 1), np.uint8)
  for r, name in enumerate(regimes):
    feed, kill, stride = REGIMES[name]
    idx = np.flatnonzero(regime == r)
    if not len(idx):
      continue
    width = min(chunk, len(idx))
    for start in range(0, len(idx), width):
      part = idx[start:start + width]
      padded = np.resize(part, width)   # the last chunk repeats some: one shape, one compile
      video = _gray_scott_batch(keys[padded], feed, kill, stride, burn_in, size=size,
                                frames=frames)
      out[part] = _to_dtype(video[:len(part)], np.uint8)
  return dict(frames=out, regime=regime)


def _gs_cache_path(cache_dir, sizes, size, seed, frames, burn_in, regimes):
  # Everything that shapes the output goes into the digest; the readable part is for people.
  physics = (GS_DIFFUSION, GS_DT, GS_V_SCALE, GS_SEED_AREA, GS_SEED_SIDE,
             [(name, REGIMES[name]) for name in regimes])
  digest = hashlib.sha1(repr(physics).encode()).hexdigest()[:10]
  stem = (f"gray_scott_v{GS_CACHE_VERSION}_n{sizes[0]}-{sizes[1]}_size{size}_seed{seed}"
          f"_t{frames}_burn{burn_in}_{'-'.join(regimes)}_{digest}")
  return os.path.join(cache_dir, stem + ".npz")


def build_gray_scott(cache_dir, *, sizes=(2000, 200), size: int = 32, seed: int = 0,
                     frames: int = FRAMES, burn_in: int = GS_BURN_IN, regimes=tuple(REGIMES),
                     dtype=np.float32) -> dict[str, dict[str, np.ndarray]]:
  """{"train", "test"} Gray-Scott splits, simulated once and cached as one uint8 .npz.

  Each split holds frames [n, frames, size, size, 1] (float32 in [0, 1], or uint8) and regime
  int32 [n], an index into `regimes` (names from REGIMES), balanced by cycling.
  """
  sizes = tuple(sizes)
  if len(sizes) != 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
    raise ValueError(f"sizes must be two positive ints (train, test), got {sizes}")
  regimes = _check_gray_scott(size, seed, frames, burn_in, regimes)
  dtype = _check_dtype(dtype)

  def simulate():
    start = time.time()
    arrays = {}
    for split, n in zip(GS_SPLITS, sizes):
      for key, value in gray_scott_split(n, seed, split, size=size, frames=frames,
                                         burn_in=burn_in, regimes=regimes).items():
        arrays[f"{split}_{key}"] = value
    print(f"gray_scott: simulated {sum(sizes)} videos at {size}px in {time.time() - start:.1f}s",
          file=sys.stderr)
    return arrays
  arrays = cache.load_or_build(
      _gs_cache_path(cache_dir, sizes, size, seed, frames, burn_in, regimes), simulate)
  out = {}
  for split in GS_SPLITS:
    video = arrays[f"{split}_frames"]
    if dtype == np.float32:
      video = video.astype(np.float32) / 255
    out[split] = dict(frames=video, regime=arrays[f"{split}_regime"])
  return out


# ------------------------------------------------------------------------------------- TFDS

TFDS_NAMES = ("moving_mnist", "ucf101")


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights averaging each output cell's footprint (area resampling)."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  cells = np.arange(n_in)
  overlap = (np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells))
  return (np.clip(overlap, 0, None) * (n_out / n_in)).astype(np.float32)


def area_resize(video: np.ndarray, size) -> np.ndarray:
  """Resizes float [..., H, W, C] to size (int or (h, w)) by area averaging.

  For integer factors this is average pooling; otherwise each output pixel averages the input
  area it covers, with fractional weights at the edges (OpenCV's INTER_AREA when shrinking).
  """
  h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  _check_int("size", h)
  _check_int("size", w)
  in_h, in_w = video.shape[-3:-1]
  if (h, w) == (in_h, in_w):
    return video
  if in_h % h == 0 and in_w % w == 0 and in_h // h == in_w // w:
    return avg_pool(video, in_h // h)
  return np.einsum("oh,...hwc,pw->...opc", _area_weights(in_h, h), video,
                   _area_weights(in_w, w), optimize=True)


def _convert(video: np.ndarray, size, dtype) -> np.ndarray:
  """uint8 video to dtype (float32 in [0, 1] or uint8), resized when size is given."""
  if size is None:
    return video if dtype == np.uint8 else video.astype(np.float32) / 255
  return _to_dtype(area_resize(video.astype(np.float32) / 255, size), dtype)


def _out_hw(size, shape):
  if size is None:
    return shape
  return (size, size) if isinstance(size, (int, np.integer)) else tuple(size)


def moving_mnist_records(records: Iterable[Mapping], *, size=None,
                         dtype=np.float32) -> np.ndarray:
  """TFDS moving_mnist records {"image_sequence": uint8 [20, 64, 64, 1]} to [n, 20, h, w, 1]."""
  dtype = _check_dtype(dtype)
  parts = [np.zeros((0, FRAMES, *_out_hw(size, (CANVAS, CANVAS)), 1), dtype)]
  for chunk in tfds_lra._chunks(records, 256):
    video = np.stack([np.asarray(r["image_sequence"], np.uint8) for r in chunk])
    if video.ndim != 5 or video.shape[-1] != 1:
      raise ValueError(f"expected image_sequence of shape [T, H, W, 1], got {video.shape[1:]}")
    parts.append(_convert(video, size, dtype))
  return np.concatenate(parts)


def ucf101_records(records: Iterable[Mapping], *, frames: int = FRAMES, hop: int | None = None,
                   frame_step: int = 1, size=None, dtype=np.float32) -> dict[str, np.ndarray]:
  """TFDS ucf101 records {"video": uint8 [T, H, W, 3], "label"} to fixed-length clips.

  Each video gives the clips video[s : s + frames * frame_step : frame_step] for
  s = 0, hop, 2 * hop, ... that fit; hop defaults to frames * frame_step (no overlap). Videos
  too short for one clip give none.

  Returns:
    frames [n, frames, h, w, 3], label int32 [n], and video int32 [n] (the record's position,
    so that clips can be grouped or split by video).
  """
  _check_int("frames", frames)
  _check_int("frame_step", frame_step)
  span = (frames - 1) * frame_step + 1
  hop = frames * frame_step if hop is None else hop
  _check_int("hop", hop)
  dtype = _check_dtype(dtype)
  clips, labels, videos = [], [], []
  hw = None
  for i, record in enumerate(records):
    video = np.asarray(record["video"], np.uint8)
    if video.ndim != 4 or video.shape[-1] != 3:
      raise ValueError(f"expected video of shape [T, H, W, 3], got {video.shape}")
    starts = np.arange(0, len(video) - span + 1, hop)
    if not len(starts):
      continue
    index = starts[:, None] + np.arange(frames) * frame_step
    clip = _convert(video[index], size, dtype)   # [clips, frames, h, w, 3]
    if hw is not None and clip.shape[2:4] != hw:
      raise ValueError(f"videos differ in size ({hw} vs {clip.shape[2:4]}); pass size=")
    hw = clip.shape[2:4]
    clips.append(clip)
    labels.append(np.full(len(clip), record["label"], np.int32))
    videos.append(np.full(len(clip), i, np.int32))
  if not clips:
    return dict(frames=np.zeros((0, frames, *_out_hw(size, (0, 0)), 3), dtype),
                label=np.zeros((0,), np.int32), video=np.zeros((0,), np.int32))
  return dict(frames=np.concatenate(clips), label=np.concatenate(labels),
              video=np.concatenate(videos))


@contextlib.contextmanager
def tf_free_video_features():
  """Lets TFDS build Video features without TensorFlow installed; a no-op when it is.

  tfds 4.9's Video.__init__ calls tf.dtypes.as_dtype only to normalise its dtype argument, so
  merely opening moving_mnist or ucf101 imports TensorFlow, although decoding the stored PNG or
  JPEG frames needs only PIL. For the duration, that module's `tf` answers as_dtype with
  np.dtype, which Video passes on to Image, which accepts numpy dtypes.
  """
  from tensorflow_datasets.core.features import video_feature
  if importlib.util.find_spec("tensorflow") is not None:
    yield
    return
  saved = video_feature.tf
  video_feature.tf = types.SimpleNamespace(dtypes=types.SimpleNamespace(as_dtype=np.dtype))
  try:
    yield
  finally:
    video_feature.tf = saved


def _data_source(name: str, split: str, data_dir: str | None):
  """data/tfds.py's open_source, with TFDS's video features kept away from TensorFlow."""
  try:
    import tensorflow_datasets.video  # noqa: F401  registers moving_mnist and ucf101
  except ImportError as e:
    raise ImportError("reading TFDS datasets needs tensorflow-datasets and array_record: "
                      "pip install 'substrax[tfds]'") from e
  with tf_free_video_features():
    return tfds_lra.open_source(name, split, data_dir,
                                needs="TensorFlow (and ffmpeg for ucf101)")


def load_tfds(name: str, split: str, data_dir: str | None = None, *, size=None,
              dtype=np.float32, **clip_args):
  """Reads a prepared TFDS video dataset; never downloads.

  Args:
    name: "moving_mnist" (only a "test" split: the official 10,000 sequences) or "ucf101",
      optionally with a config, e.g. "ucf101/ucf101_1_256".
    split: a TFDS split string, e.g. "test" or "train[:10%]".
    data_dir: the TFDS data dir; None means TFDS's default.
    size: resize frames to size (int or (h, w)) by area averaging; None keeps them.
    dtype: float32 in [0, 1] (default) or uint8.
    **clip_args: for ucf101 only, `frames`, `hop` and `frame_step` of `ucf101_records`.

  Returns:
    moving_mnist: frames [n, 20, h, w, 1]. ucf101: `ucf101_records`' dict.
  """
  base = name.split("/")[0]
  if base not in TFDS_NAMES:
    raise ValueError(f"name: unknown dataset {name!r}; expected one of {TFDS_NAMES}")
  if base == "moving_mnist" and clip_args:
    raise ValueError(f"{sorted(clip_args)} apply to ucf101 only")
  unknown = set(clip_args) - {"frames", "hop", "frame_step"}
  if unknown:
    raise ValueError(f"unknown arguments {sorted(unknown)}")
  _check_dtype(dtype)
  records = tfds_lra._records(_data_source(name, split, data_dir))
  with tfds_lra.read_errors(name, split, data_dir):
    if base == "moving_mnist":
      return moving_mnist_records(records, size=size, dtype=dtype)
    return ucf101_records(records, size=size, dtype=dtype, **clip_args)
