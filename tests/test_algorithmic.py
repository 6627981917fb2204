"""The algorithmic tasks (data/algorithmic.py) and their language-model form (task lm, source
algorithmic): generators against checkers, packing, the answer-only loss mask, exact match
against greedy decoding, and a tiny run end to end."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cli

from substrax.configs import lm_algorithmic, lm_markov
from substrax.data import algorithmic
from substrax.models.lm import LanguageModel
from substrax.models.transformer import BlockConfig
from substrax.train import trainer
from substrax.train.errors import ConfigError
from substrax.train.tasks import lm


@pytest.mark.parametrize("name", list(algorithmic.TASKS))
def test_every_generated_answer_passes_its_checker_and_a_changed_one_fails(name):
  task = algorithmic.get(name)
  rng = np.random.default_rng(0)
  for n in range(1, min(100, task.max_n) + 1):
    prompt = task.sample(rng, n)
    answer = task.solve(prompt)
    assert all(0 <= s < algorithmic.SYMBOLS for s in prompt + answer)
    assert task.check(prompt, answer), (n, prompt, answer)
    for i in {0, len(answer) - 1, int(rng.integers(len(answer)))}:
      wrong = list(answer)
      wrong[i] = (wrong[i] + 1) % algorithmic.SYMBOLS
      assert not task.check(prompt, wrong), (n, prompt, wrong)
    assert not task.check(prompt, answer + answer[-1:])


def test_the_checkers_know_the_definitions():
  get = algorithmic.get
  assert get("count").solve([5, 8]) == [5, 6, 7, 8]
  assert get("sort").check([3, 1, 3], [1, 3, 3]) and not get("sort").check([3, 1, 3], [1, 3])
  assert get("histogram").solve([2, 5, 2, 2]) == [3, 1, 3, 3]
  assert get("double_histogram").solve([2, 5, 2, 7]) == [1, 2, 1, 2]
  assert get("most_frequent").solve([4, 1, 1, 4, 6]) == [4, 1, 6]
  t, p, f = algorithmic.LABEL_T, algorithmic.LABEL_P, algorithmic.LABEL_F
  assert get("dyck1").solve([0, 1, 1, 0]) == [p, t, f, f]
  assert get("dyck2").solve([0, 2, 3, 1, 2, 1]) == [p, p, p, t, p, f]
  assert get("parity_scratchpad").solve([1, 1, 0, 1]) == [1, 0, 0, 1]
  plus = algorithmic.PLUS
  assert get("add_forward").solve([4, 7, plus, 5, 6]) == [1, 0, 3]   # 47 + 56 = 103
  assert get("add_reverse").solve([4, 7, plus, 5, 6]) == [3, 0, 1]
  h = algorithmic.HINT0 + 3   # offset 3: hints name significance 1 and 0
  prompt = [h + 1, 4, h, 7, plus, h + 1, 5, h, 6]
  assert get("add_reverse_hints").solve(prompt) == [h, 3, h + 1, 0, h + 2, 1]
  assert get("add_forward_hints").check(prompt, [h + 2, 1, h + 1, 0, h, 3])
  assert not get("add_forward_hints").check(prompt, [h + 2, 1, h, 0, h + 1, 3])


def _segments(row, mask):
  """(prompt, answer, answer mask ok) of each BOS ... EOS example packed in a context row."""
  out, start = [], 0
  shift = len(algorithmic.SPECIALS)
  while start < len(row) and row[start] == algorithmic.BOS:
    sep = start + list(row[start:]).index(algorithmic.SEP)
    end = sep + list(row[sep:]).index(algorithmic.EOS)
    prompt = [int(t) - shift for t in row[start + 1:sep]]
    answer = [int(t) - shift for t in row[sep + 1:end]]
    # Targets tokens[1:]: SEP (index sep) predicts the first answer symbol, ..., EOS is the
    # last target; nothing else of the example is scored.
    expected = np.zeros(end - start, np.float32)
    expected[sep - start:] = 1
    out.append((prompt, answer, np.array_equal(mask[start:end], expected)))
    start = end + 1
  return out, start


@pytest.mark.parametrize("name", ["count", "most_frequent", "add_forward_hints"])
def test_packed_contexts_hold_whole_checked_examples_scored_on_their_answers(name):
  task = algorithmic.get(name)
  tokens, mask = algorithmic.packed_pool(task, np.random.default_rng(1), 40, 96, 6)
  assert tokens.shape == (40, 97) and mask.shape == (40, 96)
  sizes = []
  for row, row_mask in zip(tokens, mask):
    examples, end = _segments(row, row_mask)
    assert len(examples) >= 1
    assert (row[end:] == algorithmic.PAD).all() and (row_mask[end:] == 0).all()
    for prompt, answer, mask_ok in examples:
      assert mask_ok and task.check(prompt, answer)
      sizes.append(len(answer))
  assert len(set(sizes)) > 2   # sizes vary


def test_a_context_too_short_for_the_largest_size_is_refused():
  with pytest.raises(ValueError, match="cannot hold"):
    algorithmic.packed_pool(algorithmic.get("sort"), np.random.default_rng(0), 4, 16, 8)


def test_teacher_forced_exact_match_is_greedy_decoding():
  """A random model's own greedy continuation scores exact match 1; the same sequence with one
  answer token changed scores 0, and so does any other answer."""
  model = LanguageModel(algorithmic.VOCAB, 32, 2, 32, BlockConfig(num_heads=2))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  task = algorithmic.get("sort")
  tokens, mask = algorithmic.test_set(task, np.random.default_rng(0), 6, 5)
  sep = 7   # BOS, 5 symbols, SEP
  # Greedy decoding, a full forward pass per token on a fixed-width buffer: position t of a
  # causal model does not see the unfilled positions after it.
  logits_of = jax.jit(lambda seqs: model.apply(params, seqs))
  own = tokens.copy()
  own[:, sep:] = algorithmic.PAD
  for t in range(sep - 1, tokens.shape[1] - 1):
    own[:, t + 1] = np.argmax(np.asarray(logits_of(jnp.asarray(own[:, :-1])))[:, t], -1)
  changed = own.copy()
  changed[:, sep + 2] = (changed[:, sep + 2] + 1) % algorithmic.VOCAB
  for batch in (own, tokens, changed):
    exact, accuracy = jax.jit(lm.exact_match)(logits_of(jnp.asarray(batch[:, :-1])),
                                              jnp.asarray(batch), jnp.asarray(mask))
    if batch is own:
      assert np.asarray(exact).all() and np.allclose(accuracy, 1.0)
    elif batch is changed:
      assert not np.asarray(exact).any()
    else:
      np.testing.assert_array_equal(exact, (own == tokens).all(1))


@pytest.mark.parametrize("changes, key", [
    ({"data.task": "addition"}, "data.task"),
    ({"data.train_max": 0}, "data.train_max"),
    ({"data.length": 6}, "data.length"),             # count of 4: 9 tokens
    ({"eval.lengths": (4, 40)}, "eval.lengths"),       # learned positions cover 32
    ({"eval.lengths": (4, 200)}, "eval.lengths"),      # count's symbols end at 128
    ({"model.mlp.granularities": (2, 1)}, "model.mlp"),
    ({"eval.batch_size": 0}, "eval.batch_size"),
    ({"data.task": "copy_unique", "data.length": 96, "model.max_len": 96,
      "eval.lengths": (4, 40)}, "eval.lengths"),       # symbols above 32 never trained
])
def test_config_errors_name_the_key(changes, key):
  config = lm_algorithmic.get_config("tiny")
  config.update_from_flattened_dict(changes)
  with pytest.raises(ConfigError, match=f"^{key}: "):
    trainer.validate(config)


def test_another_lm_config_switched_to_algorithmic_names_the_missing_keys():
  config = lm_markov.get_config("tiny")
  config.data.source = "algorithmic"
  with pytest.raises(ConfigError, match="^data: source 'algorithmic' needs data.task, "
                     "data.train_max, data.contexts"):
    trainer.validate(config)


def test_a_tiny_run_writes_exact_match_per_size(tmp_path):
  workdir = tmp_path / "run"
  run = cli("substrax-train", "--config=lm_algorithmic:tiny", f"--workdir={workdir}",
            "--config.data.task=copy_unique", "--config.model.positions=rope",
            "--config.eval.lengths=(2,4,6)")
  assert run.returncode == 0, run.stderr
  report = json.loads((workdir / "eval" / "algorithmic.json").read_text())
  assert [r["n"] for r in report["lengths"]] == [2, 4, 6]
  assert all(r["examples"] == 64 and 0 <= r["exact_match"] <= r["token_accuracy"] <= 1
             for r in report["lengths"])
  assert report["curve"]["step"] == [10, 20] and set(report["curve"]["exact"]) == {"2", "4", "6"}
  assert (workdir / "eval" / "algorithmic.png").stat().st_size > 0
  assert "copy_unique, trained on sizes 1..4, rope positions" in run.stdout
  bad = cli("substrax-train", "--config=lm_algorithmic:tiny", f"--workdir={tmp_path / 'bad'}",
            "--config.data.task=sorting")
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
  assert "data.task" in bad.stderr
