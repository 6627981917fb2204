"""Fake CPU devices for the in-process tests, set before JAX initialises its backends: eight,
or SUBSTRAX_TEST_DEVICES. Tests marked `mesh` need the eight (layouts, sharded checkpoints,
per-device bytes, a task's evaluation inside the training mesh) and skip with any other
count. `make test` runs the rest on one device, where a tiny run's program is not partitioned
eight ways and its checkpoint is not sliced per replica (Orbax compiles one eager slice per
array shape), and the `mesh` tests on eight in a second pytest at the same time: the video, LRA, bandit, ICL-claim, attention,
surgery, probe and LM test files took 296 s at -n 2 on one device (550 s of CPU) and 372 s on
eight (688 s of CPU).

Five settings cut compile time, the suite's main cost (XLA compiling small programs in every
test and every substrax-* subprocess):

- one persistent compilation cache for the session, so each program compiles once (the xdist
  workers and their subprocesses inherit its directory through the environment);
- LLVM optimisation level 0 for the CPU code (XLA_FLAGS in `cli_env` for subprocesses too):
  the tiny ICL run took 12.7 s of CPU instead of 27.3 s and printed the same errors;
- XLA:CPU's older loop emitters instead of its MLIR fusion emitters, which compile these small
  programs faster: a cold tiny ICL run took 9 s of CPU instead of 13.5 s, and 36 test files
  (all but test_integrity, test_scale_out and test_trainer) 871 s instead of 1,227 s at -n 0,
  with the same printed tables and the same losses to float32 rounding (relative differences
  under 3e-7); a few runtime-bound tests (the 100 MNIST steps) are slightly slower;
- each program's LLVM module compiled whole (--xla_cpu_parallel_codegen_split_count=1) rather
  than split for parallel codegen, which two workers on two cores cannot use: a cold tiny ICL
  run took 12.1-12.3 s of CPU instead of 13.2-13.6 s, tests/test_scan.py 32.2 s instead of 34.4 s;
- MLIR locations without Python tracebacks (JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS=0): building
  them took 28 s of the suite's CPU, profiled with py-spy; they only annotate IR dumps.
The programs compute the same functions; benchmarks keep the defaults.
"""
import os
import sys
import tempfile

import pytest

FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                "--xla_cpu_parallel_codegen_split_count=1")
MESH_DEVICES = 8
DEVICES = int(os.environ.get("SUBSTRAX_TEST_DEVICES", MESH_DEVICES))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={DEVICES} {FAST_COMPILE}").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:   # set once, by pytest's main process
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="substrax-tests-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", DEVICES)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICL_CONFIG = os.path.join(REPO, "configs", "icl_linear.py")


def pytest_configure(config):
  config.addinivalue_line("markers", f"mesh: needs {MESH_DEVICES} devices in the test process")


def pytest_collection_modifyitems(config, items):
  if DEVICES == MESH_DEVICES:
    return
  skip = pytest.mark.skip(reason=f"needs {MESH_DEVICES} devices; SUBSTRAX_TEST_DEVICES={DEVICES}")
  for item in items:
    if item.get_closest_marker("mesh"):
      item.add_marker(skip)


def experiment_config(name: str, preset: str = "tiny", **overrides):
  """configs/<name>.py's preset, with dotted-key overrides such as model.width=32."""
  import importlib
  config = importlib.import_module(f"substrax.configs.{name}").get_config(preset)
  config.update_from_flattened_dict(overrides)
  return config


def icl_config(preset: str = "tiny", **overrides):
  return experiment_config("icl_linear", preset, **overrides)


def cli_env(devices: int = 1, env=None) -> dict:
  """The environment of a substrax-* subprocess with `devices` CPU devices."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
              f"{FAST_COMPILE}", JAX_NUM_CPU_DEVICES=str(devices), **(env or {}))


def cli(name: str, *args, devices: int = 1, timeout: float = 300, env=None):
  """Runs a substrax console script in a fresh process with `devices` CPU devices."""
  import subprocess
  exe = os.path.join(os.path.dirname(sys.executable), name)
  return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                        env=cli_env(devices, env), cwd=REPO)


@pytest.fixture
def spawn():
  """Starts substrax console scripts in the background (for signals and races); any still
  running when the test ends, passed or failed, is killed."""
  import subprocess
  procs = []

  def start(name: str, *args, devices: int = 1):
    exe = os.path.join(os.path.dirname(sys.executable), name)
    procs.append(subprocess.Popen([exe, *args], env=cli_env(devices), cwd=REPO, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs[-1]
  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """`substrax-train --config=icl_linear:tiny` (20 steps on one device), once per session (per
  xdist worker): (workdir, completed process). Its outputs, its losses as the one-device
  reference and its checkpoint are shared, so a test may read it or run substrax-eval on it
  (which rewrites only eval/) but never train it further; copy it to change it."""
  workdir = str(tmp_path_factory.mktemp("tiny") / "run")
  run = cli("substrax-train", f"--config={ICL_CONFIG}:tiny", f"--workdir={workdir}")
  assert run.returncode == 0, run.stderr
  return workdir, run


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / "run")


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """Prepares tiny cifar10 and imdb_reviews in ArrayRecord format, without TF or network."""
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("PIL.Image")
  from substrax.data import tfds
  path = str(tmp_path_factory.mktemp("tfds"))
  tfds.write_prepared("cifar10", path, {"train": tfds.random_records("cifar10", 20, 0),
                                        "test": tfds.random_records("cifar10", 5, 1)})
  imdb = lambda n: [{"text": "h\u00e9 " * (i % 3 + 1), "label": i % 2} for i in range(n)]
  tfds.write_prepared("imdb_reviews", path, {"train": imdb(18), "test": imdb(8)})
  return path


def moving_mnist_records(n, seed=0):
  """TFDS moving_mnist records: {"image_sequence": uint8 [20, 64, 64, 1]}, random pixels."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return [{"image_sequence": rng.integers(0, 256, (20, 64, 64, 1), np.uint8)} for _ in range(n)]


def ucf101_records(lengths, seed=0, height=12, width=16):
  """TFDS ucf101 records {"video": uint8 [T, H, W, 3], "label"}; frame t of video i is flat,
  colour (10 t + i, 2 i, 255 - t), so JPEG stores it almost exactly."""
  import numpy as np
  out = []
  for i, length in enumerate(lengths):
    colour = np.stack([10 * np.arange(length) + i, np.full(length, 2 * i),
                       255 - np.arange(length)], -1).astype(np.uint8)
    video = np.broadcast_to(colour[:, None, None, :], (length, height, width, 3)).copy()
    out.append({"video": video, "label": (seed * 7 + i) % 101})
  return out


@pytest.fixture(scope="session")
def video_tfds_dir(tmp_path_factory):
  """Prepares tiny moving_mnist and ucf101 (config ucf101_1) in ArrayRecord format, offline.

  As in `tfds_dir`, the registered builders with only the example generators replaced; frames
  are passed as PIL images so that PIL, not TensorFlow, encodes them.
  """
  import importlib.util
  import types

  import numpy as np
  tfds = pytest.importorskip("tensorflow_datasets")
  pil = pytest.importorskip("PIL.Image")
  import tensorflow_datasets.video  # noqa: F401  registers the video builders (no TF needed)
  mnist_cls, ucf_cls = tfds.builder_cls("moving_mnist"), tfds.builder_cls("ucf101")

  def frames(video):
    return [pil.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in video]

  class FakeMovingMnist(mnist_cls, skip_registration=True):
    name = "moving_mnist"

    def _split_generators(self, dl_manager):
      return {"test": self._generate_examples()}

    def _generate_examples(self):
      for i, r in enumerate(moving_mnist_records(3)):
        yield i, {"image_sequence": frames(r["image_sequence"])}

  class FakeUcf101(ucf_cls, skip_registration=True):
    name = "ucf101"

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples((25, 7, 12), 0),
              "test": self._generate_examples((10,), 1)}

    def _generate_examples(self, lengths, seed):
      for i, r in enumerate(ucf101_records(lengths, seed)):
        yield f"v{i}", {"video": frames(r["video"]), "label": r["label"]}

  path = tmp_path_factory.mktemp("video_tfds")
  # Writing features.json also asks TensorFlow for dtypes (feature.tf_dtype); without it,
  # answer with numpy as tf_free_video_features does for Video.
  from tensorflow_datasets.core.features import feature
  from substrax.data.tfds import removed_scratch
  from substrax.data.video import tf_free_video_features
  saved = feature.tf
  if importlib.util.find_spec("tensorflow") is None:
    feature.tf = types.SimpleNamespace(dtypes=types.SimpleNamespace(as_dtype=np.dtype))
  try:
    with tf_free_video_features(), removed_scratch():
      FakeMovingMnist(data_dir=str(path), file_format="array_record").download_and_prepare()
      FakeUcf101(config="ucf101_1", data_dir=str(path),
                 file_format="array_record").download_and_prepare()
  finally:
    feature.tf = saved
  return str(path)


@pytest.fixture(scope="module")
def float64():
  """jax_enable_x64 for one module (`pytestmark = pytest.mark.usefixtures("float64")`), then
  back to float32 for the rest of the suite."""
  import jax
  previous = jax.config.read("jax_enable_x64")
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
