"""Language-modelling sources: the samplers' laws, the exact loss floors, text and TFDS streams."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from substrax.data import DataError
from substrax.data import lm

P, Q = 0.2, 0.3   # pi1 = 0.4; H(p) and H(q) differ, so swapped weights would show


def _entropy(probs):
  probs = np.asarray(probs, np.float64)
  return float(-(probs * np.log(probs)).sum())


def _markov(order, batch=256, length=1024, seed=0):
  return lm.markov_heldout(seed, batch, length, order, P, Q)


def _after(x, lag, given):
  """The tokens x_n whose x_{n-lag} equals `given`, pooled over the batch."""
  return x[:, lag:][x[:, :-lag] == given]


def _close(estimate, expected, se, sigmas=5):
  assert abs(estimate - expected) < sigmas * se, (estimate, expected, se)


# ---------------------------------------------------------------------------------- Markov

@pytest.mark.parametrize("order", [1, 3])
def test_markov_follows_its_transition_law(order):
  x = _markov(order)
  assert x.shape == (256, 1024) and x.dtype == np.int32 and set(np.unique(x)) == {0, 1}
  # Given x_{n-k}, the outcomes are independent draws, so the binomial error is exact.
  ones = _after(x, order, 0)
  _close(ones.mean(), P, math.sqrt(P * (1 - P) / ones.size))
  zeros = 1 - _after(x, order, 1)
  _close(zeros.mean(), Q, math.sqrt(Q * (1 - Q) / zeros.size))
  # The first k tokens, across independent sequences, already have the stationary law.
  pi1 = lm.markov_stationary(P, Q)
  _close(x[:, :order].mean(), pi1, math.sqrt(pi1 * (1 - pi1) / x[:, :order].size))


def test_third_order_chain_ignores_the_previous_two_tokens():
  x = _markov(3)
  pi1 = lm.markov_stationary(P, Q)
  for lag in (1, 2):
    for given in (0, 1):
      after = _after(x, lag, given)
      # Neighbouring tokens are correlated, so allow twice the i.i.d. error; a first-order
      # chain would give P = 0.2 or 0.7 here instead of pi1 = 0.4.
      _close(after.mean(), pi1, 2 * math.sqrt(pi1 * (1 - pi1) / after.size))


def test_markov_entropy_rate_matches_the_plug_in_estimate():
  x = _markov(3)
  prev, cur = x[:, :-3].ravel(), x[:, 3:].ravel()
  plug_in = sum((prev == a).mean() * _entropy([cur[prev == a].mean(), 1 - cur[prev == a].mean()])
                for a in (0, 1))
  rate = lm.markov_entropy_rate(P, Q)
  assert rate == pytest.approx(0.6 * _entropy([P, 1 - P]) + 0.4 * _entropy([Q, 1 - Q]))
  assert abs(plug_in - rate) < 0.005   # swapping pi0 and pi1 would be off by 0.022
  source = lm.markov_source(3, P, Q)
  assert source == lm.Source(2, rate, _entropy([0.4, 0.6]), 1.0)
  np.testing.assert_allclose(lm.markov_position_loss(3, P, Q, 5),
                             [source.unigram] * 3 + [rate] * 2)
  # A first-order chain is an HMM whose states are its symbols: the forward algorithm's loss
  # is then exactly -log P(x_n | x_{n-1}), whose mean estimates the same rate.
  chain = dict(initial=np.array([0.6, 0.4]), transition=np.array([[1 - P, P], [Q, 1 - Q]]),
               emission=np.eye(2))
  x1 = _markov(1, batch=64)
  losses = lm.hmm_token_losses(chain, x1)
  np.testing.assert_allclose(losses[:, 1:], -np.log(chain["transition"][x1[:, :-1], x1[:, 1:]]))
  assert abs(losses[:, 1:].mean() - rate) < 0.01


def test_markov_arguments_are_checked():
  for order, p, q in [(0, P, Q), (1, 1.5, Q), (1, 0.0, 0.0), (1, -0.1, Q)]:
    with pytest.raises(ValueError):
      lm.markov_source(order, p, q)


# ------------------------------------------------------------------------------------- HMM

def test_hmm_params_are_stochastic_stationary_and_seeded():
  params = lm.hmm_params(0, 4, 6, 0.5)
  assert params["initial"].shape == (4,) and params["transition"].shape == (4, 4)
  assert params["emission"].shape == (4, 6)
  for k in ("initial", "transition", "emission"):
    np.testing.assert_allclose(params[k].sum(-1), 1.0)
  np.testing.assert_allclose(params["initial"] @ params["transition"], params["initial"],
                             atol=1e-12)
  again, other = lm.hmm_params(0, 4, 6, 0.5), lm.hmm_params(1, 4, 6, 0.5)
  assert all(np.array_equal(params[k], again[k]) for k in params)
  assert not np.array_equal(params["transition"], other["transition"])


def test_forward_algorithm_equals_enumerating_every_state_path():
  params = lm.hmm_params(3, 2, 3, 1.0)
  init, trans, emit = params["initial"], params["transition"], params["emission"]

  def brute(x):   # p(x) summed over all 2^len(x) state paths
    total = 0.0
    for path in itertools.product(range(2), repeat=len(x)):
      p = init[path[0]] * emit[path[0], x[0]]
      for t in range(1, len(x)):
        p *= trans[path[t - 1], path[t]] * emit[path[t], x[t]]
      total += p
    return total

  seqs = np.array(list(itertools.product(range(3), repeat=4)))
  losses = lm.hmm_token_losses(params, seqs)
  for t in range(1, 5):   # every prefix: the chain rule sums the per-token losses
    want = [-math.log(brute(x[:t])) for x in seqs]
    np.testing.assert_allclose(losses[:, :t].sum(1), want, rtol=1e-12)
  assert sum(brute(x) for x in seqs) == pytest.approx(1.0)
  assert lm.hmm_bayes_loss(params, seqs) == pytest.approx(losses.mean())


def test_hmm_sampler_has_the_stationary_symbol_and_pair_laws():
  params = lm.hmm_params(1, 3, 4, 0.5)
  x = lm.hmm_heldout(0, params, 2048, 32)
  assert x.shape == (2048, 32) and x.dtype == np.int32
  onehot = np.eye(4)[x]
  # Sequences are independent: their per-sequence frequencies give honest standard errors.
  per_seq = onehot.mean(1)
  marginal = params["initial"] @ params["emission"]
  se = per_seq.std(0) / math.sqrt(len(x)) + 1e-4
  assert np.all(np.abs(per_seq.mean(0) - marginal) < 5 * se), (per_seq.mean(0), marginal)
  # Consecutive pairs test the transition matrix's orientation too: pi_i B_ia T_ij B_jb.
  pairs = np.einsum("nta,ntb->nab", onehot[:, :-1], onehot[:, 1:]) / 31
  want = (params["initial"][:, None] * params["emission"]).T @ params["transition"] @ \
      params["emission"]
  se = pairs.std(0) / math.sqrt(len(x)) + 1e-4
  assert np.all(np.abs(pairs.mean(0) - want) < 5 * se), (pairs.mean(0), want)


def test_bayes_loss_beats_the_unigram_loss_on_sampled_data():
  params = lm.hmm_params(0, 4, 8, 0.1)
  x = lm.hmm_heldout(0, params, 256, 64)
  unigram = lm.hmm_unigram(params)
  marginal = params["initial"] @ params["emission"]
  assert -np.log(marginal[x]).mean() == pytest.approx(unigram, abs=0.05)
  source = lm.hmm_source(params, x)
  assert source.vocab_size == 8 and source.unigram == unigram and source.chars_per_token == 1.0
  assert source.floor < unigram - 0.2 and lm.hmm_bayes_loss(params, x) < unigram - 0.2
  assert source.floor == pytest.approx(lm.hmm_token_losses(params, x)[:, 1:].mean())
  # No other model predicts better, e.g. one with the time-reversed transition counts.
  flipped = params["transition"].T / params["transition"].T.sum(1, keepdims=True)
  assert lm.hmm_bayes_loss(dict(params, transition=flipped), x) > source.floor + 0.2


def test_one_state_hmm_loss_is_its_unigram_entropy():
  params = lm.hmm_params(4, 1, 5, 1.0)
  emit = params["emission"][0]
  assert params["transition"].tolist() == [[1.0]] and params["initial"].tolist() == [1.0]
  assert lm.hmm_unigram(params) == pytest.approx(_entropy(emit))
  x = lm.hmm_heldout(0, params, 128, 64)
  losses = lm.hmm_token_losses(params, x)
  np.testing.assert_allclose(losses, -np.log(emit[x]))   # no context helps
  _close(losses.mean(), _entropy(emit), losses.std() / math.sqrt(losses.size))


# -------------------------------------------------------------------------------- samplers

def test_samplers_are_jittable_with_parameters_as_arguments():
  traces = []

  def markov(key, p, q):
    traces.append("markov")
    return lm.sample_markov(key, 8, 10, 3, p, q)

  def hmm(key, params):
    traces.append("hmm")
    return lm.sample_hmm(key, params, 8, 10)

  def windows(key, stream):
    traces.append("windows")
    return lm.sample_windows(key, stream, 8, 10)

  markov, hmm, windows = jax.jit(markov), jax.jit(hmm), jax.jit(windows)
  key, other = jax.random.key(0), jax.random.key(1)
  a, b = lm.hmm_params(0, 3, 5, 1.0), lm.hmm_params(1, 3, 5, 1.0)
  stream, stream2 = np.arange(100, dtype=np.uint8), np.arange(100, 200, dtype=np.uint8)
  # New values of the same shapes reuse the compiled program: nothing is a baked-in constant.
  for f, args, args2 in [(markov, (0.1, 0.2), (0.9, 0.8)), (hmm, (a,), (b,)),
                         (windows, (stream,), (stream2,))]:
    out = f(key, *args)
    assert out.shape[0] == 8 and out.dtype == jnp.int32
    np.testing.assert_array_equal(out, f(key, *args))          # a function of the key
    assert not np.array_equal(out, f(other, *args))
    assert not np.array_equal(out, f(key, *args2))             # and of the parameters
  assert sorted(traces) == ["hmm", "markov", "windows"]
  plain = jax.jit(lm.sample_hmm, static_argnames=("batch", "length"))
  np.testing.assert_array_equal(plain(key, a, batch=8, length=10), hmm(key, a))


def test_windows_are_contiguous_and_cover_the_stream():
  stream = np.arange(20, dtype=np.int32)
  w = np.asarray(lm.sample_windows(jax.random.key(0), stream, 2000, 5))
  assert w.shape == (2000, 6) and w.dtype == np.int32
  assert np.all(np.diff(w, axis=1) == 1)
  assert set(w[:, 0]) == set(range(15))   # every start, the last one ending at the last token
  with pytest.raises(ValueError, match="window"):
    lm.sample_windows(jax.random.key(0), stream, 2, 20)


# ------------------------------------------------------------------------------------ text

def _write(path, data: bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def test_text_folder_splits_by_document(tmp_path):
  docs = [f"doc {i}\n".encode() for i in range(12)]
  for i, d in enumerate(docs):   # nested folders; sorted paths give the document order
    _write(tmp_path / f"{'sub' if i >= 6 else 'top'}" / f"{i:02d}.txt", d)
  _write(tmp_path / "notes.md", b"not a document")
  _write(tmp_path / "top" / "blank.txt", b" \n")   # whitespace-only: dropped
  corpus = lm.load_text(tmp_path)
  # Sorted: sub/06..11 then top/00..05; the 10th of these (index 9) is held out.
  order = docs[6:] + docs[:6]
  assert corpus.heldout.tobytes() == order[9] + b"\0"
  assert corpus.train.tobytes() == b"".join(d + b"\0" for d in order[:9] + order[10:])
  assert corpus.train.dtype == corpus.heldout.dtype == np.uint8
  assert np.count_nonzero(corpus.train == lm.SEPARATOR) == 11
  again = lm.load_text(str(tmp_path))
  assert again.train.tobytes() == corpus.train.tobytes()
  assert again.heldout.tobytes() == corpus.heldout.tobytes()
  assert corpus.source == lm.Source(256, None, corpus.unigram, 1.0)


def test_single_file_splits_into_paragraphs_and_counts_characters(tmp_path):
  path = tmp_path / "book.txt"
  _write(path, "\nfirst line\n  indented\r\n\r\n\n caf\u00e9\u00e9\n".encode())
  corpus = lm.load_text(path)
  assert corpus.train.tobytes() == b"first line\n  indented\0"
  # " caf" + two 2-byte e-acutes + separator: 7 characters in 9 bytes.
  assert corpus.heldout.tobytes() == " caf\u00e9\u00e9\0".encode()
  assert corpus.chars_per_token == pytest.approx(7 / 9)
  counts = np.bincount(corpus.train, minlength=256) + 1.0
  want = -np.log(counts / counts.sum())[corpus.heldout].mean()
  assert corpus.unigram == pytest.approx(want)
  # Unseen held-out bytes (the e-acute's) cost log(n + 256) each, and stay finite.
  unseen = math.log(corpus.train.size + 256)
  assert unseen * 4 / 9 < corpus.unigram < unseen


@pytest.mark.parametrize("files, says", [
    ({"a.txt": b"one paragraph\nno blank line\n"}, "single document"),
    ({"a.txt": b"only\n", "b.txt": b"\n\n"}, "single document"),
    ({"a.txt": b"", "sub/b.txt": b"  \n"}, "no text"),
    ({"a.md": b"x\n\ny", "b.csv": b"1,2"}, "no .txt files"),
    ({}, "no .txt files"),
])
def test_unusable_text_is_one_data_error_naming_the_path(tmp_path, files, says):
  for name, data in files.items():
    _write(tmp_path / name, data)
  root = tmp_path if len(files) != 1 else tmp_path / next(iter(files))
  with pytest.raises(DataError, match=says) as err:
    lm.load_text(root)
  assert str(root) in str(err.value) and "\n" not in str(err.value)


def test_missing_or_non_text_path_is_a_data_error(tmp_path):
  for path, says in [(tmp_path / "nowhere", "no such file"), (tmp_path / "a.md", ".txt file")]:
    if path.suffix:
      _write(path, b"a\n\nb")
    with pytest.raises(DataError, match=says) as err:
      lm.load_text(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------ TFDS

SHAKESPEARE = {"train": "First Citizen:\nBefore we proceed.\n", "validation": "All: caf\u00e9\n",
               "test": "Speak.\n"}
SENTENCES = {"train": [f"train sentence {i} ." for i in range(5)],
             "test": [f"test sentence \u00e9 {i} ." for i in range(3)]}


@pytest.fixture(scope="module")
def lm_tfds_dir(tmp_path_factory):
  """tiny_shakespeare and lm1b prepared in ArrayRecord format from the registered builders with
  only the example generators replaced, as conftest's tfds_dir; no TensorFlow or network."""
  tfds = pytest.importorskip("tensorflow_datasets")
  shakespeare_cls, lm1b_cls = tfds.builder_cls("tiny_shakespeare"), tfds.builder_cls("lm1b")

  class FakeShakespeare(shakespeare_cls, skip_registration=True):
    name = "tiny_shakespeare"
    pkg_dir_path = shakespeare_cls._get_pkg_dir_path()

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples([text]) for split, text in SHAKESPEARE.items()}

    def _generate_examples(self, texts):
      for i, text in enumerate(texts):
        yield i, {"text": text}

  class FakeLm1b(lm1b_cls, skip_registration=True):
    name = "lm1b"
    pkg_dir_path = lm1b_cls._get_pkg_dir_path()

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(texts) for split, texts in SENTENCES.items()}

    def _generate_examples(self, texts):
      for i, text in enumerate(texts):
        yield i, {"text": text}

  path = tmp_path_factory.mktemp("lm_tfds")
  from substrax.data.tfds import removed_scratch
  with removed_scratch():   # TFDS's temporary directories
    for cls in (FakeShakespeare, FakeLm1b):
      cls(data_dir=str(path), file_format="array_record").download_and_prepare()
  return str(path)


def test_tiny_shakespeare_is_train_against_validation(lm_tfds_dir):
  corpus = lm.load_tfds("tiny_shakespeare", lm_tfds_dir)
  assert corpus.train.tobytes() == SHAKESPEARE["train"].encode() + b"\0"
  assert corpus.heldout.tobytes() == SHAKESPEARE["validation"].encode() + b"\0"
  assert corpus.chars_per_token == pytest.approx(11 / 12)   # "All: café\n" + separator


def test_lm1b_reads_at_most_max_records_per_split(lm_tfds_dir):
  def documents(stream):
    return stream.tobytes().split(b"\0")[:-1]

  whole = lm.load_tfds("lm1b", lm_tfds_dir)
  assert sorted(documents(whole.train)) == [s.encode() for s in SENTENCES["train"]]
  assert sorted(documents(whole.heldout)) == [s.encode() for s in SENTENCES["test"]]
  capped = lm.load_tfds("lm1b", lm_tfds_dir, max_records=2)
  assert len(documents(capped.train)) == len(documents(capped.heldout)) == 2
  assert set(documents(capped.train)) <= set(documents(whole.train))


def test_tfds_errors(lm_tfds_dir, tmp_path):
  with pytest.raises(DataError) as err:
    lm.load_tfds("lm1b", str(tmp_path))
  message = str(err.value)
  assert "lm1b" in message and str(tmp_path) in message and "tfds build" in message
  assert "\n" not in message
  with pytest.raises(ValueError, match="unknown dataset"):
    lm.load_tfds("wikitext", lm_tfds_dir)
  with pytest.raises(ValueError, match="max_records"):
    lm.load_tfds("lm1b", lm_tfds_dir, max_records=0)


# -------------------------------------------- closed forms against counts and enumeration

@pytest.mark.parametrize("p, q", [(0.8, 0.8), (P, Q)])
def test_switching_source_entropy_over_a_million_symbols_matches_the_closed_form(p, q):
  x = lm.markov_heldout(7, 1000, 1000, 4, p, q)
  prev, cur = x[:, :-4].ravel(), x[:, 4:].ravel()   # the pairs (x_{n-4}, x_n)
  counts = np.array([[np.sum((prev == a) & (cur == b)) for b in (0, 1)] for a in (0, 1)])
  joint = counts / counts.sum()
  conditional = _entropy(joint.ravel()) - _entropy(joint.sum(1))   # H(x_n | x_{n-4}) in nats
  rate = lm.markov_entropy_rate(p, q)
  # 0.5% is about 4 standard errors at 10^6 symbols; swapping pi0 and pi1 (P, Q) is 4% off.
  assert abs(conditional / rate - 1) < 0.005, (conditional, rate)


@pytest.mark.parametrize("seed, symbols", [(0, 3), (5, 4)])
def test_forward_losses_equal_brute_force_over_every_state_path(seed, symbols):
  params = lm.hmm_params(seed, states=3, symbols=symbols, concentration=0.7)
  init, trans, emit = params["initial"], params["transition"], params["emission"]
  length = 6

  def prefix_probs(x):
    """P(x_1..x_t) [n, length] for every t: a sum over all 3^t state paths, vectorised."""
    out = np.empty(x.shape)
    for t in range(1, length + 1):
      paths = np.array(list(itertools.product(range(3), repeat=t)))   # [3^t, t]
      p = init[paths[:, 0]] * emit[paths[:, 0]][:, x[:, 0]].T          # [n, 3^t]
      for s in range(1, t):
        p = p * trans[paths[:, s - 1], paths[:, s]] * emit[paths[:, s]][:, x[:, s]].T
      out[:, t - 1] = p.sum(1)
    return out

  every = np.array(list(itertools.product(range(symbols), repeat=length)))   # all V^6
  sampled = lm.hmm_heldout(seed + 1, params, 16, length)
  for x in (every, sampled):
    probs = prefix_probs(x)
    want = -np.log(probs) + np.log(np.c_[np.ones(len(x)), probs[:, :-1]])
    np.testing.assert_allclose(lm.hmm_token_losses(params, x), want, rtol=0, atol=1e-10)
  # Exact expectations over all V^6 sequences: they sum to one, the first token's expected loss
  # is the stationary unigram entropy, and the Bayes loss is the block entropy per token.
  weight = prefix_probs(every)[:, -1]
  assert weight.sum() == pytest.approx(1.0, abs=1e-12)
  losses = lm.hmm_token_losses(params, every)
  assert weight @ losses[:, 0] == pytest.approx(lm.hmm_unigram(params), abs=1e-10)
  block_entropy = -(weight * np.log(weight)).sum()
  assert weight @ losses.mean(1) == pytest.approx(block_entropy / length, abs=1e-10)
