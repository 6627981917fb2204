"""Pathfinder (Linsley et al. 2018; Long Range Arena): are two markers on the same dashed path?

An S x S uint8 image holds two long paths ("snakes") of dashes ("paddles"), a few short distractor
snakes and two marker blobs of value 255. Label 1: the markers sit on the two ends of one long
path. Label 0: one marker sits on an end of each long path. Both classes draw both long paths and
reserve room for a marker at all four of their ends, so the scene does not depend on the label;
only where the two markers go does. A negative takes the pair of ends (one per long path) whose
distance is nearest to that between the two ends of one long path, so the marker distance alone
says little about the label (best threshold on it: 53% accuracy at 32 px hard, 60% with random
ends).

The rendering keeps the label readable from pixels alone (see `connected`):
  * path pixels have one value in [120, 220] per image (one value for all paths, so intensity
    cannot tell the paths apart); markers are exactly 255; background is 0;
  * a paddle is `paddle_length` 8-connected pixels; consecutive paddles are at Chebyshev distance
    <= 2 (a gap of at most one pixel);
  * pixels of different paths (markers included) are at Chebyshev distance >= 3.
So a flood fill whose neighbours are the pixels within Chebyshev distance 2 follows a path across
its gaps but never jumps to another path.

Snakes grow paddle by paddle, each turn drawn from [-MAX_TURN, MAX_TURN], backtracking out of dead
ends and restarting when stuck (the scene too, if a long snake does not fit). A distractor that
finds no room is left out (about 0.3 of 5 per image at 32 px hard).

Difficulty is the number of paddles per long path, as in LRA: `DIFFICULTIES` gives it for the 32 px
reference image. Other sizes scale the geometry with s = size / 32:
  paddle_length    2 + round(log2 s), at least 2       (32: 2, 64: 3, 128: 4 px)
  contour_length   round(c32 * 3 s / (paddle_length + 1)): a path spans the same fraction of the
                   image at every size; below 32 px times s once more, as the free area shrinks
                   faster than a path                  (hard: 16: 4, 32: 14, 64: 21, 128: 34)
  distractors      contour_length // 3 paddles each; 20 // (c32 // 3) of them at 32 px as in LRA,
                   scaled so distractor ink per unit area stays the same (hard: 5, 9, 17 at 32-128)
  marker_radius    1.5 + round(log2 s) / 2, at least 1.5 (32: 3x3 square, 64: 13 px, 128: 21 px)
"""
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import sys
from collections import deque

import numpy as np

from substrax.data import cache

DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}
SPLITS = ("train", "val", "test")
MARKER = 255
PATH_INTENSITY = (120, 220)   # inclusive range of the per-image path value
GAP = 1                       # blank samples between paddles; the flood fill relies on <= 1
SEPARATION = 3                # min Chebyshev distance between pixels of different paths
MAX_TURN = math.pi / 4        # max heading change between paddles: smooth, no reversals
# Below 16 px every difficulty is the shortest path, 3 paddles; below 12 px no scene fits.
MIN_SIZE = 16
_VERSION = 1                  # part of cache names; bump when the rendering changes
_CHUNK = 5000                 # images per worker task in build_splits
_CANDIDATES = 12              # turns tried per paddle (and start pixels per snake)
_TRIES = 8                    # fresh starts before a snake is given up
_BACKTRACKS = 10              # dead ends one snake may back out of
_RESTARTS = 100               # fresh scenes before generation gives up


@dataclasses.dataclass(frozen=True)
class Params:
  """Geometry of one image size and difficulty; see the module docstring."""
  size: int
  contour_length: int
  paddle_length: int
  distractor_length: int
  num_distractors: int
  marker_radius: float


def scene_params(size: int = 32, difficulty: str = "hard",
                 contour_length: int | None = None) -> Params:
  """Derived geometry; `contour_length` replaces the difficulty's 32 px reference value."""
  if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
    raise ValueError(f"size must be an int >= {MIN_SIZE}, got {size!r}")
  if contour_length is None:
    if difficulty not in DIFFICULTIES:
      raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    c32 = DIFFICULTIES[difficulty]
  else:
    if not isinstance(contour_length, (int, np.integer)) or contour_length < 3:
      raise ValueError(f"contour_length must be an int >= 3, got {contour_length!r}")
    c32 = int(contour_length)
  octave = round(math.log2(size / 32))
  paddle = max(2, 2 + octave)
  contour = max(3, round(c32 * 3 * size / 32 / (paddle + 1) * min(1.0, size / 32)))
  distractor = max(1, contour // 3)
  # Distractor ink (paddles * step) per unit area held at its 32 px value.
  d32 = max(1, c32 // 3)
  ink32 = (20 // d32) * d32 * 3
  count = max(1, round(ink32 * (size / 32) ** 2 / (distractor * (paddle + 1))))
  return Params(int(size), contour, paddle, distractor, count, 1.5 + max(0, octave) / 2)


def _disc(radius: float) -> np.ndarray:
  """(dy, dx) offsets of a filled disc: radius 1.5 is a 3x3 square."""
  r = int(radius)
  d = np.mgrid[-r:r + 1, -r:r + 1].reshape(2, -1).T
  return d[(d ** 2).sum(1) <= radius ** 2]


class _Uniform:
  """Uniform [0, 1) floats drawn from `rng` in blocks: scalar draws from a Generator are slow."""

  def __init__(self, rng, block: int = 4096):
    self.rng, self.block, self.buffer = rng, block, []

  def __call__(self) -> float:
    if not self.buffer:
      self.buffer = self.rng.random(self.block).tolist()
    return self.buffer.pop()


_FREE = 1 << 30
_BLOCKED = -2   # below any "own paddle" value, so the test in `grow` rejects it for every paddle


class _Canvas:
  """Occupancy of one scene in a flat Python list with a blocked margin around the drawable area.

  Snakes are grown one pixel at a time in plain Python: a paddle has only a few pixels, where
  numpy's per-call overhead would dominate. Pixels are flat indices into the padded map, so a
  lookup needs no bounds check: the margin is wider than any step a candidate paddle or marker
  can take past the drawable area, which is the image less a 1 px border.
  """

  def __init__(self, p: Params, uniform: _Uniform):
    self.p, self.uniform = p, uniform
    self.pad = pad = p.paddle_length + GAP + int(p.marker_radius) + SEPARATION
    self.width = w = p.size + 2 * pad
    self.blob = (_disc(p.marker_radius) @ (w, 1)).tolist()
    d = SEPARATION - 1
    self.near = (np.mgrid[-d:d + 1, -d:d + 1].reshape(2, -1).T @ (w, 1)).tolist()
    owner = np.full((w, w), _BLOCKED)
    owner[pad + 1:pad + p.size - 1, pad + 1:pad + p.size - 1] = _FREE
    # Per pixel: _BLOCKED (margin, other paths and their surroundings), _FREE, or while a snake
    # grows, the earliest of its paddles within reach.
    self.owner = owner.ravel().tolist()

  def reserve(self, pixels):
    """Blocks every pixel closer than SEPARATION (Chebyshev) to `pixels`."""
    owner, near = self.owner, self.near
    for q in pixels:
      for o in near:
        owner[q + o] = _BLOCKED

  def yx(self, pixels) -> np.ndarray:
    """Image coordinates [..., 2] of flat pixels."""
    return np.stack(np.divmod(np.asarray(pixels), self.width), -1) - self.pad

  def _start(self, marked: bool):
    """A random free pixel (with room for a marker if `marked`), or None."""
    p, u, owner, w = self.p, self.uniform, self.owner, self.width
    for _ in range(_CANDIDATES):
      y, x = (self.pad + 1 + int(u() * (p.size - 2)) for _ in range(2))
      q = y * w + x
      if owner[q] == _FREE and not (marked and any(owner[q + b] == _BLOCKED for b in self.blob)):
        return y, x
    return None

  def grow(self, paddles: int, marked: bool):
    """Grows one snake paddle by paddle in the free space; None if it gets stuck.

    Each paddle tries up to _CANDIDATES random turns in [-MAX_TURN, MAX_TURN] and keeps the first
    that fits; at a dead end it backtracks (at most _BACKTRACKS times) to the previous paddle's
    next try, so snakes bend away from walls and other paths. A snake keeps the separation from
    its own paddles two or more back, so it never touches itself.

    A paddle is sampled once per step along its heading, the step scaled so its larger
    coordinate moves by exactly 1: samples round to distinct 8-connected pixels, and the GAP
    skipped samples leave consecutive paddles at Chebyshev distance <= GAP + 1.

    Returns:
      (flat path pixels, flat pixels of the marker blobs at its two ends or None).
    """
    start = self._start(marked)
    if start is None:
      return None
    p, u, owner, w, near = self.p, self.uniform, self.owner, self.width, self.near
    n = p.paddle_length
    sy, sx = start[0] + u() - 0.5, start[1] + u() - 0.5
    min_end = 2 * int(p.marker_radius) + SEPARATION   # the markers must be separate blobs
    chosen = []   # per paddle: heading, step, last sample, pixels, owner entries it changed
    left = []     # tries left at each paddle
    backtracks = 0
    while len(chosen) < paddles:
      k = len(chosen)
      if len(left) == k:
        left.append(_CANDIDATES)
      found = None
      while found is None and left[k]:
        left[k] -= 1
        if k == 0:
          heading, y0, x0 = 2 * math.pi * u(), sy, sx
        else:
          heading, pdy, pdx, py, px = chosen[-1][:5]
          heading += MAX_TURN * (2 * u() - 1)
        dy, dx = math.sin(heading), math.cos(heading)
        scale = max(abs(dy), abs(dx))
        dy, dx = dy / scale, dx / scale
        if k:   # GAP skipped samples along the previous heading, then one along the new one
          y0, x0 = py + GAP * pdy + dy, px + GAP * pdx + dx
        pixels = []
        for t in range(n):
          q = math.floor(y0 + t * dy + 0.5) * w + math.floor(x0 + t * dx + 0.5)
          if owner[q] <= k - 2:
            break
          pixels.append(q)
        else:
          if marked and k == paddles - 1:
            end = pixels[-1]
            first = chosen[0][5][0]
            if (any(owner[end + b] == _BLOCKED for b in self.blob) or
                max(abs(end // w - first // w), abs(end % w - first % w)) < min_end):
              continue
          found = (heading, dy, dx, y0 + (n - 1) * dy, x0 + (n - 1) * dx, pixels)
      if found is not None:
        changed = []
        for q in found[5]:
          for o in near:
            r = q + o
            if owner[r] > k:
              changed.append((r, owner[r]))
              owner[r] = k
        chosen.append(found + (changed,))
        continue
      left.pop()   # dead end: back to the previous paddle's next try
      backtracks += 1
      if not chosen or backtracks > _BACKTRACKS:
        break
      for r, old in reversed(chosen.pop()[6]):
        owner[r] = old
    for step in reversed(chosen):   # the snake's own marks are only for its own growth
      for r, old in reversed(step[6]):
        owner[r] = old
    if len(chosen) < paddles:
      return None
    path = [q for step in chosen for q in step[5]]
    if not marked:
      return path, None
    return path, [[q + b for b in self.blob] for q in (path[0], path[-1])]

  def place(self, paddles: int, marked: bool):
    """`grow` with up to _TRIES fresh starts; reserves the snake's room."""
    for _ in range(_TRIES):
      snake = self.grow(paddles, marked)
      if snake is not None:
        path, blobs = snake
        self.reserve(path + [q for blob in blobs or [] for q in blob])
        return snake
    return None


def _render(p: Params, u: _Uniform, label: bool) -> np.ndarray:
  """One image; the scene is drawn before the label is used."""
  for _ in range(_RESTARTS):
    canvas = _Canvas(p, u)
    snakes = [canvas.place(p.contour_length, marked=True) for _ in range(2)]
    if None in snakes:
      continue
    paths = [path for path, _ in snakes]
    for _ in range(p.num_distractors):
      # A distractor that does not fit is left out; the count never depends on the label.
      d = canvas.place(p.distractor_length, marked=False)
      if d is not None:
        paths.append(d[0])
    image = np.zeros((p.size, p.size), np.uint8)
    y, x = canvas.yx([q for path in paths for q in path]).T
    low, high = PATH_INTENSITY
    image[y, x] = low + int(u() * (high - low + 1))
    a = int(u() * 2)   # which long snake carries both markers (label 1) or the first one
    if label:
      blobs = snakes[a][1]
    else:
      # Of the four pairs of ends (one per snake), the one whose distance is closest to that
      # between snake a's own ends: marker distance then says little about the label.
      ends = [canvas.yx([path[0], path[-1]]) for path, _ in snakes]
      own = np.abs(ends[a][0] - ends[a][1]).max()
      cross = np.abs(ends[a][:, None] - ends[1 - a][None]).max(-1)
      ties = np.reshape([u() for _ in range(4)], (2, 2))   # < 1: breaks ties only
      i, j = np.unravel_index(np.argmin(np.abs(cross - own) + ties), (2, 2))
      blobs = [snakes[a][1][i], snakes[1 - a][1][j]]
    y, x = canvas.yx(blobs).reshape(-1, 2).T
    image[y, x] = MARKER
    return image
  raise RuntimeError(f"pathfinder: no scene fits after {_RESTARTS} tries with {p}")


def _check_n(n, name="n"):
  if not isinstance(n, (int, np.integer)) or n < 2:
    raise ValueError(f"{name} must be an int >= 2, got {n!r}")


def _balanced_labels(rng, n: int) -> np.ndarray:
  return rng.permutation(np.arange(n) < n // 2).astype(np.int32)


def _render_all(p: Params, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  u = _Uniform(rng)
  return np.stack([_render(p, u, bool(y)) for y in labels])


def generate(n: int, seed, *, size: int = 32, difficulty: str = "hard",
             contour_length: int | None = None) -> dict:
  """n images and labels; exactly n // 2 positives in shuffled order, deterministic per seed.

  Args:
    n: number of images, >= 2.
    seed: anything `np.random.default_rng` takes (an int >= 0 or a sequence of them).
    size: image side in pixels, >= 16.
    difficulty: "easy", "intermediate" or "hard" (6, 9, 14 paddles at 32 px).
    contour_length: paddles per long path at 32 px, instead of `difficulty`.

  Returns:
    dict(images=uint8 [n, size, size], labels=int32 [n]); label 1 means connected.
  """
  p = scene_params(size, difficulty, contour_length)
  _check_n(n)
  try:
    rng = np.random.default_rng(seed)
  except (TypeError, ValueError) as e:
    raise ValueError(f"seed must be an int >= 0 or a sequence of them, got {seed!r}") from e
  labels = _balanced_labels(rng, n)
  return dict(images=_render_all(p, labels, rng), labels=labels)


def _flood(mask: np.ndarray, seeds, radius: int) -> np.ndarray:
  """Pixels of `mask` reachable from `seeds` in steps of Chebyshev distance <= radius."""
  h, w = mask.shape
  reached = np.zeros_like(mask, dtype=bool)
  todo = deque()
  for y, x in seeds:
    if mask[y, x] and not reached[y, x]:
      reached[y, x] = True
      todo.append((y, x))
  while todo:
    y, x = todo.popleft()
    for yy in range(max(0, y - radius), min(h, y + radius + 1)):
      for xx in range(max(0, x - radius), min(w, x + radius + 1)):
        if mask[yy, xx] and not reached[yy, xx]:
          reached[yy, xx] = True
          todo.append((yy, xx))
  return reached


def connected(image) -> bool:
  """Whether the two 255 blobs of `image` are joined by non-zero pixels at gaps of <= 1 pixel.

  Uses only the pixels: marker blobs are the 8-connected components of pixels == 255; the fill
  moves between non-zero pixels at Chebyshev distance <= 2.
  """
  image = np.asarray(image)
  if image.ndim != 2:
    raise ValueError(f"image must be 2-D, got shape {image.shape}")
  marker = image == MARKER
  blobs, seen = [], np.zeros_like(marker)
  for y, x in zip(*np.nonzero(marker)):
    if not seen[y, x]:
      blob = _flood(marker, [(y, x)], 1)
      seen |= blob
      blobs.append(blob)
  if len(blobs) != 2:
    raise ValueError(f"image must have exactly two marker blobs (== {MARKER}), found {len(blobs)}")
  reached = _flood(image > 0, zip(*np.nonzero(blobs[0])), 2)
  return bool((reached & blobs[1]).any())


def _cache_name(split: str, n: int, seed: int, size: int, c32: int, tag: str) -> str:
  return f"pathfinder_v{_VERSION}_{split}_n{n}_size{size}_{tag}_c{c32}_seed{seed}.npz"


def _render_chunks(p: Params, labels: np.ndarray, seed: int, split_index: int,
                   workers: int) -> np.ndarray:
  """Chunk i is drawn from seed (seed, split, i), so the output does not depend on `workers`."""
  jobs = [(p, labels[i:i + _CHUNK], np.random.default_rng((seed, split_index, i // _CHUNK)))
          for i in range(0, len(labels), _CHUNK)]
  if workers <= 1 or len(jobs) == 1:
    return np.concatenate([_render_all(*job) for job in jobs])
  # spawn, not fork: the parent may already run JAX's threads.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    return np.concatenate(list(pool.map(_render_all, *zip(*jobs))))


def build_splits(cache_dir: str, *, sizes=(160000, 20000, 20000), seed: int = 0, size: int = 32,
                 difficulty: str = "hard", contour_length: int | None = None,
                 workers: int = 2) -> dict:
  """Train/val/test sets cached as .npz in `cache_dir`; generated (one stderr line) if missing.

  Each split has its own seeds, (seed, split) for the labels and (seed, split, chunk) for each
  chunk of _CHUNK images, so the result does not depend on `workers`. Workers are spawned
  processes: a script that calls this with more than one chunk per split needs the usual
  `if __name__ == "__main__":` guard.

  Returns:
    {"train", "val", "test"} -> dict(images=uint8 [n, size, size], labels=int32 [n]).
  """
  p = scene_params(size, difficulty, contour_length)
  if len(sizes) != len(SPLITS):
    raise ValueError(f"sizes must give {len(SPLITS)} split sizes, got {sizes!r}")
  for i, n in enumerate(sizes):
    _check_n(n, f"sizes[{i}]")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be an int >= 0, got {seed!r}")
  if not isinstance(workers, (int, np.integer)) or workers < 1:
    raise ValueError(f"workers must be an int >= 1, got {workers!r}")
  tag, c32 = ((difficulty, DIFFICULTIES[difficulty]) if contour_length is None
              else ("custom", contour_length))
  out = {}
  for index, (split, n) in enumerate(zip(SPLITS, sizes)):
    path = os.path.join(cache_dir, _cache_name(split, n, seed, size, c32, tag))

    def render():
      print(f"pathfinder: generating {split}: {n} images, {size} px, {tag} "
            f"({p.contour_length} paddles) -> {path}", file=sys.stderr, flush=True)
      labels = _balanced_labels(np.random.default_rng((seed, index)), n)
      return dict(images=_render_chunks(p, labels, seed, index, workers), labels=labels)
    out[split] = cache.load_or_build(path, render)
  return out
