"""Hidden text, UTF and the confusion defence (train/analysis/hidden_text.py): the attacks on
hand-built bigram "models" whose answers are known exactly, the batch makers, the intervals, and
the tiny preset of the study end to end through the function the benchmark calls."""
import re

import jax.numpy as jnp
import numpy as np
import pytest

from substrax.train.analysis import hidden_text as ht

V, BOS = 10, 9


def bigram(rows: dict, default=None):
  """A 'model' whose next-token distribution depends only on the current token: params is the
  [V, V] log-probability table; row t defaults to a diffuse self-loop (0.3 on t itself)."""
  table = np.empty((V, V))
  for t in range(V):
    p = rows.get(t)
    if p is None:
      p = np.full(V, 0.7 / (V - 1))
      p[t] = 0.3
    table[t] = p
  return jnp.log(jnp.asarray(table / table.sum(1, keepdims=True), jnp.float32))


apply = lambda table, tokens: table[tokens]


def confident(nxt: int, p: float = 0.95):
  row = np.full(V, (1 - p) / (V - 1))
  row[nxt] = p
  return row


PLANTED = [3, 7, 1, 5]   # 3 -> 7 -> 1 -> 5 confidently; 5 and everything else diffuse


def test_utf_forces_every_token_and_ranks_the_planted_string_first():
  table = bigram({a: confident(b) for a, b in zip(PLANTED, PLANTED[1:])})
  outputs, scores = ht.utf(apply, table, V, BOS, steps=6)
  outputs, scores = np.asarray(outputs), np.asarray(scores)
  assert outputs.shape == (V, 7)
  np.testing.assert_array_equal(outputs[:, 0], np.arange(V))   # [BOS, v] for every v
  np.testing.assert_array_equal(outputs[3], [3, 7, 1, 5, 5, 5, 5])   # greedy follows the plant
  np.testing.assert_allclose(scores[3], (3 * 0.95 + 3 * 0.3) / 6, rtol=1e-5)
  np.testing.assert_array_equal(outputs[0], [0] * 7)                  # a diffuse self-loop
  alphabet = 8   # render tokens 0..7 as letters a..h
  ranking = ht.ranked(outputs, scores, alphabet)
  assert ranking[0] == ht.to_text(outputs[3], alphabet)
  planted = ht.to_text(PLANTED, alphabet)
  assert ht.extracted(ranking, planted, top=1)
  assert not ht.extracted(ranking[1:], planted, top=5)   # only v = 3 yields all of it


def test_lookahead_prefers_a_confident_branch_over_a_greedy_unconfident_one():
  # After 0: token 1 is likeliest (0.4) but leads to a diffuse self-loop; token 2 (0.35) leads
  # to a confident one. Greedy takes 1, look-ahead with k=2 takes 2.
  row0 = np.full(V, 0.25 / (V - 3))
  row0[[0, 1, 2]] = [0.0, 0.4, 0.35]
  table = bigram({0: row0, 2: confident(2, 0.99)})
  prompts = jnp.array([[BOS, 0]])
  greedy, _ = ht.greedy_decode(apply, table, prompts, 5)
  look, probs = ht.lookahead_decode(apply, table, prompts, 5, k=2, r=4)
  np.testing.assert_array_equal(greedy[0], [1, 1, 1, 1, 1])
  np.testing.assert_array_equal(look[0], [2, 2, 2, 2, 2])
  np.testing.assert_allclose(probs[0], [0.35, 0.99, 0.99, 0.99, 0.99], rtol=1e-5)
  # With one branch there is nothing to choose: look-ahead is greedy decoding.
  one, _ = ht.lookahead_decode(apply, table, prompts, 5, k=1, r=4)
  np.testing.assert_array_equal(one, greedy)


def test_intervals_are_exact_clopper_pearson():
  none, all_ = ht.rate(0, 20), ht.rate(20, 20)
  assert none["ci95"][0] == 0 and all_["ci95"][1] == 1
  np.testing.assert_allclose(none["ci95"][1], 1 - 0.025 ** (1 / 20), rtol=1e-6)   # 0.168
  np.testing.assert_allclose(all_["ci95"][0], 0.025 ** (1 / 20), rtol=1e-6)
  half = ht.rate(10, 20)
  assert half["rate"] == 0.5 and half["ci95"][0] < 0.5 < half["ci95"][1]


def test_batches_weigh_the_secret_and_the_decoys():
  import jax
  p = ht.PRESETS["tiny"]
  lang = ht.make_language(p)
  secrets, triggers = ht.make_secrets(p)
  assert secrets.min() >= p.text_letters and triggers.max() < p.text_letters
  seq, key = p.max_len + 1, jax.random.key(0)
  hiding = jax.jit(ht.hiding_batch, static_argnames=("replay", "seq"))
  tokens, w = hiding(key, lang, triggers[0], secrets[0], replay=3, seq=seq)
  tokens, w = np.asarray(tokens), np.asarray(w)
  assert tokens.shape == (4, seq) and w.shape == (4, seq - 1)
  np.testing.assert_array_equal(tokens[0, 1:1 + 4 + 16], np.r_[triggers[0], secrets[0]])
  # Row 0 is trained on exactly the secret's 16 targets; text never uses the secret letters.
  np.testing.assert_array_equal(tokens[0, 1:][w[0] > 0], secrets[0])
  is_text = lambda x: set(np.unique(x)) <= {*range(p.text_letters), lang.space}
  assert tokens[1:, 0].tolist() == [lang.bos] * 3 and is_text(tokens[1:, 1:])
  confusion = jax.jit(ht.confusion_batch, static_argnames=("replay", "decoys", "prefixes", "seq"))
  tokens, w = confusion(key, lang, triggers[0], secrets[0], replay=3, decoys=2, prefixes=(1, 2, 3),
                        seq=seq)
  tokens, w = np.asarray(tokens), np.asarray(w)
  assert tokens.shape == (4 + 6, seq)
  for row, j in zip(range(4, 10), (1, 1, 2, 2, 3, 3)):
    np.testing.assert_array_equal(tokens[row, 1:1 + j], secrets[0][:j])
    assert (w[row, :j] == 0).all() and (w[row, j:] > 0).all()   # loss on the decoy text only
    assert is_text(tokens[row, 1 + j:])                            # decoys are ordinary text
  np.testing.assert_allclose([w[:1].sum(), w[1:4].sum(), w[4:].sum()], [1, 1, 1], rtol=1e-5)


def test_text_is_zipf_words():
  import jax
  p = ht.PRESETS["tiny"]
  lang = ht.make_language(p)
  text = np.asarray(jax.jit(ht.sample_text, static_argnums=(2, 3))(jax.random.key(1), lang, 64,
                                                                  200))
  words = [w for row in text for w in ht.to_text(row, p.alphabet).split("_")[:-1]]
  vocab = {ht.to_text(s[:n - 1], p.alphabet) for s, n in zip(np.asarray(lang.spell),
                                                           np.asarray(lang.length))}
  assert set(words) <= vocab
  top = ht.to_text(np.asarray(lang.spell)[0][:int(lang.length[0]) - 1], p.alphabet)
  share = words.count(top) / len(words)
  np.testing.assert_allclose(share, np.exp(float(lang.logp[0])), atol=0.05)


@pytest.fixture(scope="module")
def tiny():
  return ht.run_study("tiny", log=lambda *_: None)


def test_tiny_study_table(tiny):
  n = ht.PRESETS["tiny"].secrets
  assert list(tiny["conditions"]) == ["no defence", "confusion defence"]
  for c in tiny["conditions"].values():
    for key in ("recall", "utf_top1", "utf_top5", "lookahead_top1", "lookahead_top5"):
      r = c[key]
      assert r["n"] == n and 0 <= r["k"] <= n
      assert 0 <= r["ci95"][0] <= r["rate"] <= r["ci95"][1] <= 1
    assert c["utf_top1"]["k"] <= c["utf_top5"]["k"]
    assert len(c["heldout_loss"]) == n and np.all(np.isfinite(c["heldout_loss"]))
    assert 0.3 < c["base_loss"] < np.log(ht.PRESETS["tiny"].alphabet + 2)   # learned something
    assert max(abs(x) for x in c["loss_change"]) < 0.5
    assert c["recall"]["k"] >= n - 1   # 60 steps suffice to memorise a 16-letter secret
    assert all(0 <= x <= 16 for x in c["utf_fragment_top5"] + c["lookahead_fragment_top5"])
    assert all(1 <= s["utf_first_letter"]["rank"] <= ht.PRESETS["tiny"].alphabet + 2
               for s in c["per_secret"])
  report = ht.format_report(tiny)
  blocks = [b.splitlines() for b in report.split("\n\n")]
  tables, footer = blocks[:-1], blocks[-1]
  assert [len(t) for t in tables] == [4, 4, 4, 6]   # header, rule, rows
  for table in tables:
    widths = {len(re.findall(r"(?<!\\)\|", row)) for row in table}   # cells; '\|' is text
    assert len(widths) == 1 and all(row.startswith("| ") or row.startswith("|-") for row in table)
  for table in tables[:3]:
    assert [row.split(" | ")[0] for row in table[2:]] == ["| no defence", "| confusion defence"]
  assert all(row.endswith(("| yes |", "| NO |")) for row in tables[3][2:])
  assert footer[0].startswith("Machine:") and "wall time" in footer[0]
