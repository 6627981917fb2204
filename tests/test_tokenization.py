"""Tokenizers over integer symbols: exact round trips, the LZW dictionary by hand, the size knobs,
and the token-unigram loss against the switching chain's closed forms."""
import math

import numpy as np
import pytest

from substrax.data import lm
from substrax.data import tokenization as tk

P = Q = 0.8   # pi1 = 0.5, so the character unigram costs exactly 1 bit


@pytest.fixture(scope="module")
def markov():
  """Order-4 switching chain: train and test blocks of 10,000 symbols under different seeds."""
  return (lm.markov_heldout(11, 20, 10_000, 4, P, Q), lm.markov_heldout(12, 20, 10_000, 4, P, Q))


@pytest.fixture(scope="module")
def streams():
  """name -> (alphabet, training stream, a stream not seen in fitting)."""
  rng = np.random.default_rng(0)
  return {"random": (5, rng.integers(0, 5, 20_000), rng.integers(0, 5, 3_000)),
          "markov": (2, lm.markov_heldout(1, 4, 5_000, 4, P, Q).ravel(),
                     lm.markov_heldout(2, 1, 3_000, 4, P, Q).ravel())}


CASES = [("char", 0)] + [(kind, extra) for kind in ("lzw", "bpe") for extra in (0, 14, 250)]


@pytest.mark.parametrize("name", ["random", "markov"])
@pytest.mark.parametrize("kind, extra", CASES)
def test_decode_inverts_encode_on_seen_and_unseen_streams(streams, kind, extra, name):
  alphabet, train, unseen = streams[name]
  tok = tk.fit(kind, train, alphabet + extra, alphabet)
  assert tok.size == alphabet + extra and tok.kind == kind and tok.alphabet == alphabet
  for stream in (train, unseen, unseen[:1], unseen[7:20]):
    ids = tok.encode(stream)
    assert ids.dtype == np.int32 and ids.ndim == 1 and 0 <= ids.min() and ids.max() < tok.size
    back = tok.decode(ids)
    assert back.dtype == np.int32 and np.array_equal(back, stream)
    assert tok.piece_lengths()[ids].sum() == stream.size
  if extra:   # longer pieces: fewer tokens than symbols
    assert tok.encode(unseen).size < unseen.size
  blocks = unseen[:2_400].reshape(8, 300)
  for row, ids in zip(blocks, tok.encode_blocks(blocks), strict=True):
    assert np.array_equal(ids, tok.encode(row))
  assert tok.encode([]).size == 0 and tok.decode([]).size == 0
  # The fields alone rebuild the same tokenizer (bpe carries its trained HF tokenizer as JSON).
  again = tk.Tokenizer(tok.kind, tok.alphabet, tok.pieces, tok.hf_json)
  assert again == tok and np.array_equal(again.encode(unseen), tok.encode(unseen))


def test_lzw_dictionary_of_a_constant_stream():
  tok = tk.fit("lzw", np.zeros(100, np.int32), 8, 2)
  # Parse: 0 | 00 | 000 | 0000 ...: each step's match w is the previous entry, and w + 0 is new.
  assert tok.pieces == ((0,), (1,), (0, 0), (0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0, 0),
                        (0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 0))
  np.testing.assert_array_equal(tok.piece_lengths(), [1, 1, 2, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(tok.encode(np.zeros(10, np.int32)), [7, 3])   # 7 + 3 zeros
  np.testing.assert_array_equal(tok.encode([1, 0, 0, 1, 1]), [1, 2, 1, 1])


def test_lzw_dictionary_and_greedy_encoding_by_hand():
  stream = [0, 1, 0, 1, 1, 0, 1, 1, 1]
  # Parse 0 | 1 | 01 | 10 | 1 | 11 with the entries it adds: 01 (id 2), 10 (3), 011 (4),
  # 101 (5), 11 (6); the last match 11 reaches the end, so nothing follows it.
  want = ((0,), (1,), (0, 1), (1, 0), (0, 1, 1), (1, 0, 1), (1, 1))
  assert tk.fit("lzw", stream, 100, 2).pieces == want   # the stream runs out before 100
  assert tk.fit("lzw", stream, 5, 2).pieces == want[:5]
  tok = tk.fit("lzw", stream, 7, 2)
  # 0 1 1 1 0 1 0 0: longest matches 011 | 101 | 0 | 0 (0111, 1010 and 00 are not entries).
  np.testing.assert_array_equal(tok.encode([0, 1, 1, 1, 0, 1, 0, 0]), [4, 5, 0, 0])
  np.testing.assert_array_equal(tok.decode([6, 2, 0, 5]), [1, 1, 0, 1, 0, 1, 0, 1])
  assert tk.fit("lzw", stream, 2, 2).pieces == ((0,), (1,))


@pytest.mark.parametrize("kind", ["lzw", "bpe"])
@pytest.mark.parametrize("alphabet, size", [(2, 2), (2, 3), (2, 64), (2, 1024), (7, 300)])
def test_dictionary_size_is_the_requested_size(kind, alphabet, size):
  stream = np.random.default_rng(alphabet).integers(0, alphabet, 100_000)
  tok = tk.fit(kind, stream, size, alphabet)
  assert tok.size == len(tok.pieces) == tok.piece_lengths().size == size
  assert len(set(tok.pieces)) == size
  # Both kinds hold every single symbol, under the id of the symbol itself.
  assert tok.pieces[:alphabet] == tuple((i,) for i in range(alphabet))


def test_bad_arguments_are_value_errors():
  stream = np.array([0, 1, 1, 0])
  with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
    tk.fit("wordpiece", stream, 4, 2)
  with pytest.raises(ValueError, match="size=3"):
    tk.fit("char", stream, 3, 2)
  for kind in ("lzw", "bpe"):
    with pytest.raises(ValueError, match="size=1"):
      tk.fit(kind, stream, 1, 2)
    with pytest.raises(ValueError, match="empty"):
      tk.fit(kind, [], 4, 2)
    with pytest.raises(ValueError, match="symbol 2 is outside 0..1"):
      tk.fit(kind, [0, 2], 4, 2)
    with pytest.raises(ValueError, match="symbol -1"):
      tk.fit(kind, [0, -1], 4, 2)
    tok = tk.fit(kind, stream, 3, 2)
    with pytest.raises(ValueError, match="symbol 5"):
      tok.encode([0, 5])
    with pytest.raises(ValueError, match="symbol 5"):
      tok.encode_blocks(np.array([[0, 1], [5, 0]]))
    with pytest.raises(ValueError, match="integers"):
      tok.encode([0.0, 1.0])
    with pytest.raises(ValueError, match="token id 3"):
      tok.decode([3])
  with pytest.raises(ValueError, match="prefix"):
    tk.Tokenizer("lzw", 2, ((0,), (1,), (0, 1, 1)))


def test_unigram_loss_by_hand():
  tok = tk.fit("char", [0, 1], 2, 2)
  # Training tokens 0 0 1 and one EOS: counts 2, 1, 1 of 4, so Q = 3/7, 2/7, 2/7 (add one).
  r = tk.unigram_bits_per_char(tok, np.array([[0, 0, 1]]), np.array([[0, 1], [1, 1]]))
  eos = -2 * math.log2(2 / 7)
  want = -math.log2(3 / 7) - 3 * math.log2(2 / 7) + eos
  assert r["bits_per_char"] == pytest.approx(want / 4)
  assert r["eos_bits_per_char"] == pytest.approx(eos / 4)
  assert r["chars_per_token"] == 1.0 and r["size"] == 2
  # A token absent in training costs log2(total + size + 1) = log2(6) bits, not infinity.
  r = tk.unigram_bits_per_char(tok, np.array([[0, 0]]), np.array([[1]]))
  assert r["bits_per_char"] == pytest.approx(math.log2(6) + math.log2(6 / 2))
  with pytest.raises(ValueError, match="non-empty"):
    tk.unigram_bits_per_char(tok, np.zeros((0, 3), np.int32), np.array([[1]]))


def test_character_unigram_is_one_bit_and_lzw_tokens_approach_the_entropy_rate(markov):
  train, test = markov
  rate = lm.markov_entropy_rate(P, Q) / math.log(2)
  assert rate == pytest.approx(0.7219, abs=1e-4)
  char = tk.unigram_bits_per_char(tk.fit("char", train.ravel(), 2, 2), train, test)
  assert char["bits_per_char"] == pytest.approx(1.0, abs=0.005)
  assert char["eos_bits_per_char"] < 0.002   # log2(~2 * 10^5 / 20) bits per 10^4 characters
  bits = {size: tk.unigram_bits_per_char(tk.fit("lzw", train.ravel(), size, 2), train, test)
          for size in (2, 64, 1024)}
  assert bits[2]["bits_per_char"] == char["bits_per_char"]   # size 2 is the char tokenizer
  assert bits[2]["bits_per_char"] > bits[64]["bits_per_char"] > bits[1024]["bits_per_char"]
  # Well below the unigram's 1 bit, and never below the entropy rate (a unigram over tokens is
  # a sub-probability over blocks, so its cost is at least their entropy).
  assert rate < bits[1024]["bits_per_char"] < 0.9
  assert bits[1024]["chars_per_token"] > 8
