"""The mesa-optimisation task: the GD construction and the implicit-W probe, config errors, and
a tiny training run whose implicit W moves towards one GD step."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import experiment_config
from substrax.data import icl as icl_data
from substrax.train import trainer
from substrax.train.metrics import read_jsonl
from substrax.train.tasks import mesa
from substrax.train.errors import ConfigError


def test_gd_construction_predicts_one_gd_step_and_the_probe_reads_it():
  d, length, eta = 4, 9, 0.7
  data = icl_data.sample_ar(jax.random.key(0), 6, d, length)
  xs = data["xs"]
  model = mesa.MesaAttention(n_dims=d, init_scale=0.02)
  variables = {"params": mesa.gd_weights(d, eta)}
  predict = lambda a, q: model.apply(variables, a, q, method="predict")
  preds = np.asarray(model.apply(variables, xs))
  w_hat = np.asarray(mesa.implicit_weights(predict, xs))
  x = np.asarray(xs, np.float64)
  for t in range(1, length + 1):   # t tokens seen; W_GD = (eta/t) sum_{i<t} x_{i+1} x_i^T
    w_gd = eta / t * np.einsum("nia,nib->nab", x[:, 1:t], x[:, :t - 1])
    np.testing.assert_allclose(w_hat[:, t - 1], w_gd, atol=1e-5)
    np.testing.assert_allclose(preds[:, t - 1], np.einsum("nab,nb->na", w_gd, x[:, t - 1]),
                               atol=1e-5)
  r = mesa.analyse(xs, preds, w_hat, data["W"])
  np.testing.assert_allclose(r["alignment"]["model_vs_gd"]["cosine"], 1.0, atol=1e-5)
  np.testing.assert_allclose(r["alignment"]["model_vs_gd"]["rel_error"], 0.0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(r["eta_gd"]) * np.asarray(r["t"]), eta, rtol=1e-4)
  np.testing.assert_allclose(r["mse"]["model"], r["mse"]["gd"], rtol=1e-4)
  np.testing.assert_allclose(r["mse"]["model_implicit_w"], r["mse"]["model"], rtol=1e-4)
  # Noise-free: OLS recovers W once the context has d pairs (d + 1 tokens).
  i = r["t"].index(d + 1)
  assert min(r["alignment"]["ols_vs_true"]["cosine"][i:]) > 0.999
  assert max(r["mse"]["ols"][i:]) < 1e-6


def test_tiny_trains_and_its_implicit_w_moves_to_one_gd_step(workdir, tmp_path, capsys):
  config = experiment_config("icl_mesa", "tiny")
  trainer.train_and_evaluate(config, workdir)
  train = read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")
  assert train[-1]["loss"] < 0.8 * train[0]["loss"]
  with open(os.path.join(workdir, "eval", "mesa.json")) as f:
    trained = json.load(f)
  assert os.path.exists(os.path.join(workdir, "eval", "mesa.png"))
  n_t = config.data.length - 2   # t = 2 .. length - 1
  assert trained["t"] == list(range(2, config.data.length)) and len(trained["eta_gd"]) == n_t
  assert set(trained["alignment"]) == {"model_vs_gd", "model_vs_ols", "model_vs_true",
                                       "gd_vs_true", "ols_vs_true"}
  assert all(len(v["cosine"]) == len(v["rel_error"]) == n_t
             for v in trained["alignment"].values())
  assert set(trained["mse"]) == {"model", "model_implicit_w", "gd", "gd_best", "ols",
                                 "copy_last"}
  assert set(trained["weights_cosine_with_gd_construction"]) == {"w_kq", "w_pv"}
  assert np.shape(trained["weight_block_norms"]["w_kq"]) == (2, 2)
  assert "implicit W of the model" in capsys.readouterr().out

  exp = trainer.setup(config)   # the same evaluation of the untrained initialisation
  with exp.activate():
    untrained = exp.task.evaluate(exp.init().params, {}, str(tmp_path / "init"), 0)
  cos_trained = np.mean(trained["alignment"]["model_vs_gd"]["cosine"])
  cos_untrained = np.mean(untrained["alignment"]["model_vs_gd"]["cosine"])
  assert cos_trained > 0.9 and cos_trained > cos_untrained + 0.3, (cos_trained, cos_untrained)
  assert trained["mse"]["model"][-1] < untrained["mse"]["model"][-1]


@pytest.mark.parametrize("key, value", [
    ("data.n_dims", 0), ("data.length", 2), ("data.init_scale", 0.0),
    ("model.init_scale", -0.1), ("eval.num_sequences", 0)])
def test_bad_config_names_the_key(key, value):
  config = experiment_config("icl_mesa", "tiny", **{key: value})
  with pytest.raises(ConfigError, match=f"^{key}:"):
    trainer.setup(config)
