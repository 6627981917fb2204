"""benchmarks/study.py's train_together: configs trained under one vmap follow their own
learning rates; and the scaling study's count of non-embedding parameters."""
import os
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, experiment_config

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import study  # noqa: E402
from substrax.train.analysis import scaling  # noqa: E402
from substrax.train.tasks import lm  # noqa: E402


def _config(learning_rate, **overrides):
  return experiment_config("lm_hmm", "tiny", num_steps=6, **{"optim.learning_rate":
                                                             learning_rate, **overrides})


def test_a_member_at_twice_the_learning_rate_trains_as_that_config_alone():
  # First in the second run, the 2e-3 config follows its own schedule; second in the first,
  # it follows the 1e-3 schedule scaled by 2. Both runs have one shape: one compile.
  _, pair, curve = study.train_together([_config(1e-3), _config(2e-3)], lm.build, 3, "pair",
                                        evaluate=True)
  _, swapped, _ = study.train_together([_config(2e-3), _config(1e-3)], lm.build, 3, "swapped",
                                       evaluate=True)
  member = lambda states, i: jax.tree.leaves(jax.tree.map(lambda x: np.asarray(x[i]),
                                                          states.params))
  scaled, alone, slow = member(pair, 1), member(swapped, 0), member(pair, 0)
  for a, b in zip(scaled, alone):
    np.testing.assert_allclose(a, b, atol=2e-6)
  # ...and the two learning rates did train differently.
  assert max(float(np.abs(a - c).max()) for a, c in zip(scaled, slow)) > 1e-4
  assert curve["step"] == [3, 6] and curve["loss"].shape == (2, 2)


def test_configs_that_differ_beyond_seed_learning_rate_and_data_are_refused():
  with pytest.raises(ValueError, match="differ only in"):
    study.train_together([_config(1e-3), _config(1e-3, **{"model.width": 16})], lm.build, 3,
                         "mixed")
  with pytest.raises(ValueError, match="positive"):
    study.train_together([_config(0.0)], lm.build, 3, "zero")


def test_non_embedding_parameters_leave_out_the_embedding_head_and_position_table():
  task = lm.build(_config(1e-3))
  params = jax.eval_shape(task.model.init, jax.random.key(0), *task.init_inputs)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                        is_leaf=lambda x: hasattr(x, "value"))
  total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  m, vocab = task.model, task.model.vocab_size
  embedding = vocab * m.width + (m.width * vocab + vocab) + m.max_len * m.width
  assert scaling.non_embedding(params) == total - embedding
