"""Tokenizers over any stream of integer symbols 0..alphabet-1, and the token-unigram loss.

  char: the identity (one token per symbol).
  lzw:  a greedy LZW dictionary built on a training stream; encoding is greedy longest match.
  bpe:  byte-pair encoding, trained and applied by the Hugging Face `tokenizers` library.

Why: on a k-th-order switching chain a unigram model over characters is stuck at h(pi), the
entropy of the symbol marginal, while a unigram model over the tokens of a large enough
dictionary approaches the entropy rate: the dictionary carries the context the unigram model
lacks. unigram_bits_per_char measures that loss end to end (per block, with its end-of-block
token), so dictionaries of different sizes and kinds compare in bits per character.
"""
import dataclasses
import functools

import numpy as np

KINDS = ("char", "lzw", "bpe")
# Symbol i is the character chr(BPE_BASE + i) for the Hugging Face tokenizer: the CJK block
# onwards, one code point each below the surrogates, so alphabets up to BPE_MAX_ALPHABET fit.
BPE_BASE = 0x4E00
BPE_MAX_ALPHABET = 0xD800 - BPE_BASE
# BPE trains on the stream cut into chunks of this many symbols: the trainer's cost grows with
# the length of its longest "word". Merges never cross a chunk boundary in training (encoding
# has no chunks).
BPE_CHUNK = 1000


def _as_symbols(symbols, alphabet: int, ndim: int, what: str = "symbol") -> np.ndarray:
  """symbols as an int32 array of `ndim` dimensions; ValueError on other shapes, non-integers
  or a value outside 0..alphabet-1."""
  arr = np.asarray(symbols)
  if arr.ndim != ndim:
    raise ValueError(f"expected a {ndim}-D array of {what}s, got shape {arr.shape}")
  if arr.size == 0:
    return arr.astype(np.int32)
  if arr.dtype.kind not in "biu":
    raise ValueError(f"{what}s must be integers, got dtype {arr.dtype}")
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0 or hi >= alphabet:
    bad = lo if lo < 0 else hi
    raise ValueError(f"{what} {bad} is outside 0..{alphabet - 1}")
  return arr.astype(np.int32)


def _to_text(symbols: np.ndarray) -> str:
  """One character per symbol, through UTF-32 (no Python loop)."""
  return (symbols.astype("<u4") + BPE_BASE).tobytes().decode("utf-32-le")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A dictionary of `size` tokens; token id t stands for the symbols pieces[t].

  For bpe, hf_json is the trained Hugging Face tokenizer (Tokenizer.to_str()): its merges, not
  just its pieces, decide the encoding. char and lzw need only the pieces, so they can be built
  from saved pieces directly.
  """
  kind: str
  alphabet: int
  pieces: tuple[tuple[int, ...], ...]
  hf_json: str | None = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown tokenizer kind {self.kind!r}; expected one of {KINDS}")
    if self.alphabet < 1:
      raise ValueError(f"alphabet must be at least 1, got {self.alphabet}")
    if any(not p or min(p) < 0 or max(p) >= self.alphabet for p in self.pieces):
      raise ValueError(f"every piece must be a non-empty tuple of symbols in "
                       f"0..{self.alphabet - 1}")
    if len(set(self.pieces)) != len(self.pieces):
      raise ValueError("pieces must be distinct")
    singles = tuple((i,) for i in range(self.alphabet))
    if self.kind == "char" and self.pieces != singles:
      raise ValueError("a char tokenizer's pieces are the single symbols 0..alphabet-1")
    if self.kind == "lzw":
      # Greedy longest match walks a trie, which needs every prefix of a piece to be a piece.
      known = set(self.pieces)
      if self.pieces[:self.alphabet] != singles or any(p[:-1] not in known
                                                      for p in self.pieces if len(p) > 1):
        raise ValueError("an lzw dictionary starts with the single symbols 0..alphabet-1 and "
                         "holds every prefix of its pieces")
    if self.kind == "bpe" and self.hf_json is None:
      raise ValueError("a bpe tokenizer needs hf_json, the trained Hugging Face tokenizer")

  @property
  def size(self) -> int:
    return len(self.pieces)

  def piece_lengths(self) -> np.ndarray:
    return self._flat[2].copy()

  def encode(self, symbols) -> np.ndarray:
    """A 1-D stream of symbols -> int32 token ids (an empty stream gives no tokens)."""
    x = _as_symbols(symbols, self.alphabet, 1)
    if self.kind == "char" or x.size == 0:
      return x
    if self.kind == "bpe":
      return np.asarray(self._hf.encode(_to_text(x)).ids, np.int32)
    return self._greedy(x)

  def encode_blocks(self, blocks) -> list[np.ndarray]:
    """Each row of a 2-D array (or each 1-D stream of a list) encoded on its own; bpe encodes
    them in one encode_batch call, several times faster than one encode per block."""
    if isinstance(blocks, np.ndarray) or not isinstance(blocks, (list, tuple)):
      rows = list(_as_symbols(blocks, self.alphabet, 2))
    else:
      rows = [_as_symbols(b, self.alphabet, 1) for b in blocks]
    if self.kind == "bpe":
      encodings = self._hf.encode_batch([_to_text(r) for r in rows])
      return [np.asarray(e.ids, np.int32) for e in encodings]
    return [self.encode(r) for r in rows]

  def decode(self, ids) -> np.ndarray:
    """Token ids -> int32 symbols, the concatenation of their pieces (encode's exact inverse)."""
    ids = _as_symbols(ids, self.size, 1, "token id")
    flat, starts, lengths = self._flat
    lens = lengths[ids]
    offsets = np.cumsum(lens) - lens   # where each token's symbols start in the output
    return flat[np.arange(lens.sum()) + np.repeat(starts[ids] - offsets, lens)]

  # -------------------------------------------------------------------------- internals

  @functools.cached_property
  def _flat(self):
    """(every piece's symbols concatenated, each piece's start, each piece's length)."""
    lengths = np.array([len(p) for p in self.pieces], np.int64)
    flat = np.fromiter((s for p in self.pieces for s in p), np.int32, int(lengths.sum()))
    return flat, np.cumsum(lengths) - lengths, lengths

  @functools.cached_property
  def _trie(self) -> list[dict]:
    """children[t][s]: the id of pieces[t] + (s,); the single symbols are the roots."""
    ids = {p: t for t, p in enumerate(self.pieces)}
    children = [{} for _ in self.pieces]
    for t, p in enumerate(self.pieces[self.alphabet:], self.alphabet):
      children[ids[p[:-1]]][p[-1]] = t
    return children

  def _greedy(self, x: np.ndarray) -> np.ndarray:
    """Greedy longest-prefix match: from each position, walk the trie as far as it goes."""
    children, s, n = self._trie, x.tolist(), x.size
    out, i = [], 0
    while i < n:
      node = s[i]
      i += 1
      kids = children[node]
      while i < n:
        nxt = kids.get(s[i])
        if nxt is None:
          break
        node, kids = nxt, children[nxt]
        i += 1
      out.append(node)
    return np.asarray(out, np.int32)

  @functools.cached_property
  def _hf(self):
    """The Hugging Face tokenizer, checked against pieces (its ids are the token ids)."""
    import tokenizers
    hf = tokenizers.Tokenizer.from_str(self.hf_json)
    vocab = {tuple(ord(c) - BPE_BASE for c in text): t for text, t in hf.get_vocab().items()}
    if vocab != {p: t for t, p in enumerate(self.pieces)}:
      raise ValueError("hf_json's vocabulary differs from pieces")
    return hf


def _lzw_pieces(stream: np.ndarray, size: int, alphabet: int) -> list[tuple[int, ...]]:
  """Parse from the left: take the longest entry w matching here, add w + the next symbol,
  continue right after w; stop once the dictionary holds `size` entries."""
  pieces = [(i,) for i in range(alphabet)]
  children = [{} for _ in range(alphabet)]
  s, n, i = stream.tolist(), stream.size, 0
  while len(pieces) < size and i < n:
    node = s[i]
    i += 1
    kids = children[node]
    while i < n and s[i] in kids:
      node = kids[s[i]]
      kids = children[node]
      i += 1
    if i < n:
      kids[s[i]] = len(pieces)
      pieces.append(pieces[node] + (s[i],))
      children.append({})
  return pieces


def _bpe(stream: np.ndarray, size: int, alphabet: int) -> Tokenizer:
  import tokenizers
  from tokenizers import models, trainers
  if alphabet > BPE_MAX_ALPHABET:
    raise ValueError(f"bpe supports alphabets up to {BPE_MAX_ALPHABET} symbols, got {alphabet}")
  hf = tokenizers.Tokenizer(models.BPE())   # no normalizer, no pre-tokenizer
  trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False, special_tokens=[],
                                initial_alphabet=[chr(BPE_BASE + i) for i in range(alphabet)])
  text = _to_text(stream)
  hf.train_from_iterator((text[i:i + BPE_CHUNK] for i in range(0, len(text), BPE_CHUNK)),
                         trainer=trainer)
  vocab = hf.get_vocab()
  if sorted(vocab.values()) != list(range(len(vocab))):
    raise ValueError(f"the trained vocabulary's ids are not 0..{len(vocab) - 1}")
  pieces = [None] * len(vocab)
  for text, t in vocab.items():
    pieces[t] = tuple(ord(c) - BPE_BASE for c in text)
  return Tokenizer("bpe", alphabet, tuple(pieces), hf.to_str())


def fit(kind: str, stream, size: int, alphabet: int) -> Tokenizer:
  """A tokenizer of `size` tokens (the alphabet's single symbols included) fit on a 1-D stream.

  char needs size == alphabet. lzw and bpe stop growing when the stream runs out: a stream too
  short for `size` gives a smaller dictionary (the Tokenizer's size is the real count).
  """
  if kind not in KINDS:
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
  if alphabet < 1:
    raise ValueError(f"alphabet must be at least 1, got {alphabet}")
  stream = _as_symbols(stream, alphabet, 1)
  if stream.size == 0:
    raise ValueError("cannot fit a tokenizer on an empty stream")
  if kind == "char":
    if size != alphabet:
      raise ValueError(f"a char tokenizer's size must equal the alphabet ({alphabet}), "
                       f"got size={size}")
    return Tokenizer("char", alphabet, tuple((i,) for i in range(alphabet)))
  if size < alphabet:
    raise ValueError(f"size must be at least the alphabet ({alphabet}), got size={size}")
  if kind == "lzw":
    return Tokenizer("lzw", alphabet, tuple(_lzw_pieces(stream, size, alphabet)))
  return _bpe(stream, size, alphabet)


def unigram_bits_per_char(tokenizer: Tokenizer, train_blocks, test_blocks) -> dict:
  """The end-to-end loss of a token-unigram model, in bits per character of the test blocks.

  Each block is a document: it is encoded on its own and ends with an end-of-block token (EOS),
  which the model predicts like any token, so a model cannot gain by making tokens long without
  paying for where blocks stop. Q is the maximum-likelihood unigram over the training tokens
  and EOSs with add-one smoothing, Q(t) = (count(t) + 1) / (total + size + 1), so a token never
  seen in training has a finite cost. A test block costs -log2 Q(EOS) - sum_i log2 Q(t_i).

  Returns bits_per_char, eos_bits_per_char (the EOS terms' share of it), chars_per_token (test
  characters per test token, EOS not counted) and size.
  """
  train = tokenizer.encode_blocks(_as_symbols(train_blocks, tokenizer.alphabet, 2))
  test_blocks = _as_symbols(test_blocks, tokenizer.alphabet, 2)
  if not train or not test_blocks.size:
    raise ValueError(f"need non-empty train and test blocks, got shapes "
                     f"{np.shape(train_blocks)} and {test_blocks.shape}")
  return unigram_of_ids(tokenizer.size, train, tokenizer.encode_blocks(test_blocks),
                        test_blocks.size)


def unigram_of_ids(size: int, train: list, test: list, test_chars: int) -> dict:
  """unigram_bits_per_char on blocks already encoded: lists of token-id arrays, one per block,
  from a dictionary of `size` tokens; test_chars, the characters the test blocks hold."""
  counts = np.zeros(size + 1, np.float64)   # index `size` is EOS
  for ids in train:
    counts[:size] += np.bincount(ids, minlength=size)
  counts[size] = len(train)
  log_q = np.log2(counts + 1) - np.log2(counts.sum() + size + 1)
  test_counts = sum(np.bincount(ids, minlength=size) for ids in test)
  eos_bits = -len(test) * log_q[size]
  token_bits = -float(test_counts @ log_q[:size])
  return dict(bits_per_char=float(token_bits + eos_bits) / test_chars,
              eos_bits_per_char=float(eos_bits) / test_chars,
              chars_per_token=test_chars / float(test_counts.sum()), size=size)
