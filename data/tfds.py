"""Long Range Arena Image and Text tasks from TFDS, read without TensorFlow.

The datasets must already be prepared in ArrayRecord format; `load` opens them with
`tfds.data_source`, which needs only `tensorflow-datasets` and `array_record`, and returns
plain numpy arrays:

  Image: CIFAR-10 in greyscale, 1024 pixel tokens in 0..255, 10 classes
         (LRA: train[:90%] to train, train[90%:] to validate, test to test).
  Text:  IMDB reviews as UTF-8 bytes, token = byte + 1 so that 0 is padding, 2 classes.
"""
import contextlib
import inspect
import itertools
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from substrax.data import DataError, one_line

IMAGE_VOCAB = 256
IMAGE_CLASSES = 10
IMAGE_LENGTH = 32 * 32
TEXT_VOCAB = 257   # 256 byte values shifted up by one, plus padding 0
TEXT_CLASSES = 2

NAMES = ("cifar10", "imdb_reviews")
CHUNK = 4096   # records per numpy step: bounds the float temporaries to a few tens of MB

# ITU-R BT.601 luma weights as used by tf.image.rgb_to_grayscale, which LRA applied.
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)


@contextlib.contextmanager
def removed_scratch():
  """Inside it, the temporary directories TFDS makes land in one that is removed on leaving.
  A builder of a dataset that data_dir does not hold yet looks for its metadata on GCS through
  `DatasetInfo.initialize_from_bucket`, which makes a directory with `tempfile.mkdtemp` before
  it checks whether there is anything to copy, and never removes it (tensorflow-datasets 4.9):
  every such builder left an empty /tmp/tmp*tfds."""
  with tempfile.TemporaryDirectory(prefix="substrax-tfds-") as scratch:
    saved, tempfile.tempdir = tempfile.tempdir, scratch
    try:
      yield
    finally:
      tempfile.tempdir = saved


@contextlib.contextmanager
def read_errors(name: str, split: str, data_dir: str | None):
  """Turns a failure to read or convert a prepared dataset's records into one DataError line."""
  where = data_dir or "the default TFDS data_dir"
  try:
    yield
  except (KeyError, ValueError, TypeError) as e:
    raise DataError(f"TFDS dataset {name!r} split {split!r} in {where}: its records do not "
                    f"have the expected schema ({one_line(e)})") from e
  except (RuntimeError, OSError) as e:
    # ArrayRecord reports a missing, truncated or corrupt shard as a RuntimeError.
    raise DataError(f"TFDS dataset {name!r} split {split!r} in {where}: its files cannot be "
                    f"read ({one_line(e)}); prepare it again") from e


def _chunks(records: Iterable, size: int = CHUNK) -> Iterator[list]:
  it = iter(records)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


def grey(rgb: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] RGB to uint8 [...] luma, bit for bit as tf.image.rgb_to_grayscale.

  TF works in float32: x / 255, weighted sum, then scales by 255.5 and truncates (its
  convert_image_dtype). This is not plain rounding, e.g. pure green gives 149, not 150;
  we follow TF so tokens match the LRA pipeline.
  """
  x = rgb.astype(np.float32) * np.float32(1 / 255)
  return (x @ _LUMA * np.float32(255.5)).astype(np.uint8)


def cifar10_grey(records: Iterable[Mapping]) -> dict[str, np.ndarray]:
  """CIFAR-10 records {"image": uint8 [32, 32, 3], "label": int} to LRA Image arrays.

  Returns tokens uint8 [n, 1024] (row-major pixels) and labels int32 [n].
  """
  tokens, labels = [np.zeros((0, IMAGE_LENGTH), np.uint8)], [np.zeros((0,), np.int32)]
  for chunk in _chunks(records):
    rgb = np.stack([np.asarray(r["image"], np.uint8) for r in chunk])
    if rgb.shape[1:] != (32, 32, 3):
      raise ValueError(f"expected CIFAR images of shape (32, 32, 3), got {rgb.shape[1:]}")
    tokens.append(grey(rgb).reshape(len(chunk), IMAGE_LENGTH))
    labels.append(np.array([r["label"] for r in chunk], np.int32))
  return dict(tokens=np.concatenate(tokens), labels=np.concatenate(labels))


def imdb_bytes(records: Iterable[Mapping], max_length: int) -> dict[str, np.ndarray]:
  """IMDB records {"text": bytes or str, "label": int} to LRA Text arrays.

  Returns tokens int32 [n, max_length] (byte + 1, truncated, padded with 0 at the end),
  lengths int32 [n] (tokens before the padding) and labels int32 [n].
  """
  if max_length < 1:
    raise ValueError(f"max_length must be positive, got {max_length}")
  tokens, lengths = [np.zeros((0, max_length), np.int32)], [np.zeros((0,), np.int32)]
  labels = [np.zeros((0,), np.int32)]
  for chunk in _chunks(records):
    toks = np.zeros((len(chunk), max_length), np.int32)
    lens = np.zeros(len(chunk), np.int32)
    for i, r in enumerate(chunk):
      text = r["text"]
      text = text.encode("utf-8") if isinstance(text, str) else bytes(text)
      b = np.frombuffer(text, np.uint8)[:max_length]
      toks[i, :len(b)] = b.astype(np.int32) + 1
      lens[i] = len(b)
    tokens.append(toks)
    lengths.append(lens)
    labels.append(np.array([r["label"] for r in chunk], np.int32))
  return dict(tokens=np.concatenate(tokens), lengths=np.concatenate(lengths),
              labels=np.concatenate(labels))


def _records(source) -> Iterator:
  """Yields a random-access source's records in order, a batch of reads at a time."""
  n = len(source)
  get_many = getattr(source, "__getitems__", None)   # ArrayRecord reads batches faster
  for start in range(0, n, CHUNK):
    idx = list(range(start, min(start + CHUNK, n)))
    yield from get_many(idx) if get_many else (source[i] for i in idx)


def open_source(name: str, split: str, data_dir: str | None, *, needs: str = "TensorFlow"):
  """tfds.data_source(name, split) that never downloads, with one clear error when the dataset
  is not prepared in data_dir. `needs` names what preparing it takes besides the network."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError("reading TFDS datasets needs tensorflow-datasets and array_record: "
                      "pip install 'substrax[tfds]'") from e
  # TFDS warns about each empty version folder it meets: the error below says it once.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  where = data_dir or "the default TFDS data_dir"
  with removed_scratch():
    try:
      # download=False: fetching here would need the network and usually TensorFlow.
      return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
      # TFDS reports a missing dataset as NotImplementedError, KeyError, ... depending on
      # data_dir; ask the builder directly so that other errors (a bad split) pass through.
      try:
        builder = tfds.builder(name, data_dir=data_dir)
      except Exception as info_error:   # e.g. a truncated dataset_info.json
        raise DataError(f"TFDS dataset {name!r} in {where} cannot be opened "
                        f"({one_line(info_error)}); prepare it again") from info_error
      if builder.is_prepared():
        raise
      raise DataError(
          f"TFDS dataset {name!r} is not prepared in {where} (looked in {builder.data_dir}); "
          f"prepare it on a machine with network and {needs} with `tfds build {name} "
          f"--file_format=array_record --data_dir=...`, then copy the data_dir here") from e
    finally:
      absl_logger.setLevel(level)


def load(name: str, split: str, data_dir: str | None = None, *,
         max_length: int | None = None) -> dict[str, np.ndarray]:
  """Reads a prepared TFDS dataset into LRA arrays; never downloads.

  Args:
    name: "cifar10" (LRA Image) or "imdb_reviews" (LRA Text).
    split: a TFDS split string, e.g. "train[:90%]", "train[90%:]" or "test".
    data_dir: the TFDS data dir; None means TFDS's default ($TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    max_length: text length in bytes, for imdb_reviews only (LRA: 1000, papers: 4000).

  Returns:
    `cifar10_grey`'s or `imdb_bytes`'s dict of numpy arrays.
  """
  if name not in NAMES:
    raise ValueError(f"unknown dataset {name!r}; expected one of {NAMES}")
  if (name == "imdb_reviews") != (max_length is not None):
    raise ValueError("max_length is required for imdb_reviews and not accepted for cifar10")
  records = _records(open_source(name, split, data_dir))
  with read_errors(name, split, data_dir):
    if name == "cifar10":
      return cifar10_grey(records)
    return imdb_bytes(records, max_length)


def write_prepared(name: str, data_dir: str, splits: Mapping[str, Sequence[Mapping]]) -> None:
  """Writes `splits` ({split: records in `load`'s input schema}) into data_dir as the prepared
  TFDS dataset `name`, in ArrayRecord format, offline and without TensorFlow.

  The registered builder writes them with only its example generator replaced, so names,
  versions and features on disk are the real dataset's: what a dry run or a compile check of
  an LRA Image or Text config needs when the real data cannot be fetched.
  """
  if name not in NAMES:
    raise ValueError(f"unknown dataset {name!r}; expected one of {NAMES}")
  try:
    import tensorflow_datasets as tfds
    from etils import epath
    from PIL import Image
  except ImportError as e:
    raise ImportError("writing TFDS datasets needs tensorflow-datasets, array_record and "
                      "pillow: pip install 'substrax[tfds]'") from e
  registered, dataset = tfds.builder_cls(name), name

  def example(split: str, i: int, record: Mapping) -> dict:
    if name == "imdb_reviews":
      return dict(record)
    # TFDS encodes a numpy image with TensorFlow, a PIL image with PIL.
    return dict(record, id=f"{split}_{i}", image=Image.fromarray(np.asarray(record["image"])))

  class Records(registered, skip_registration=True):
    # TFDS reads checksums, README and citations beside the real builder's code.
    name, code_path = dataset, epath.Path(inspect.getfile(registered))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
      for i, record in enumerate(splits[split]):
        yield i, example(split, i, record)

  with removed_scratch():
    builder = Records(data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():   # TFDS would keep the old records and ignore `splits`
    raise ValueError(f"TFDS dataset {name!r} is already prepared in {data_dir}; write to an "
                     "empty data_dir")
  builder.download_and_prepare()


def random_records(name: str, n: int, seed: int = 0, *, text_bytes: int = 1000) -> list[dict]:
  """n records of random content in `name`'s schema: uniform pixels or printable bytes
  (text_bytes per review) and labels cycling through the classes."""
  rng = np.random.default_rng(seed)
  if name == "cifar10":
    return [{"image": rng.integers(0, 256, (32, 32, 3), np.uint8), "label": i % IMAGE_CLASSES}
            for i in range(n)]
  if name == "imdb_reviews":
    return [{"text": rng.integers(32, 127, text_bytes, np.uint8).tobytes(),
             "label": i % TEXT_CLASSES} for i in range(n)]
  raise ValueError(f"unknown dataset {name!r}; expected one of {NAMES}")
