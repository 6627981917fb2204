"""The notebooks run top to bottom on the tiny presets, and their jupytext pairs are in sync."""
import json
import os
import signal
import subprocess
import sys
import time

import jupytext
import nbformat
import numpy as np
from nbclient import NotebookClient

from conftest import REPO, cli_env
from substrax.configs import lm_hmm
from substrax.data import lm
from substrax.train.analysis import probes

import pytest

NOTEBOOK = os.path.join(REPO, "notebooks", "icl_quickstart.ipynb")
PROBES = os.path.join(REPO, "notebooks", "icl_probes.ipynb")
SCALING = os.path.join(REPO, "notebooks", "scaling_laws.ipynb")


@pytest.mark.parametrize("path", [NOTEBOOK, PROBES, SCALING])
def test_ipynb_matches_its_jupytext_pair(path):
  paired = jupytext.read(path.replace(".ipynb", ".py"))
  stored = nbformat.read(path, as_version=4)
  assert [c.source for c in paired.cells] == [c.source for c in stored.cells]


def execute(path, env, monkeypatch):
  for key, value in cli_env(1, env).items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  return text, images


def test_quickstart_runs_on_the_tiny_preset(tmp_path, monkeypatch):
  text, images = execute(NOTEBOOK, {"SUBSTRAX_PRESET": "tiny",
                                    "SUBSTRAX_WORKDIR": str(tmp_path / "run")}, monkeypatch)
  assert "transformer error at k=10" in text
  assert len(images) == 2


def test_icl_probes_runs_on_the_tiny_preset(tmp_path, monkeypatch):
  text, images = execute(PROBES, {"SUBSTRAX_PRESET": "tiny", "SUBSTRAX_RUNS": str(tmp_path)},
                         monkeypatch)
  assert "sensitivity cosine" in text and "| standard |" in text
  # The hand-made construction is one GD step to float precision.
  line = next(l for l in text.splitlines() if l.startswith("max |LSA - one GD step|"))
  assert float(line.rsplit(" ", 1)[1]) < 1e-4
  assert len(images) == 3
  with open(tmp_path / "icl_probes_tiny" / "eval" / "probes.json") as f:
    records = json.load(f)["probes"]
  assert {r["target"] for r in records} == set(probes.TARGETS)
  assert {r["kind"] for r in records} == set(probes.KINDS)
  assert all(np.isfinite(r[k]) for r in records for k in ("r2", "r2_untrained", "r2_shuffled"))


def test_scaling_laws_refits_a_tiny_study(tmp_path, monkeypatch):
  """The tiny preset of benchmarks/scaling_laws.py trains 4 sizes; Ctrl-C keeps the sizes
  already trained and a rerun completes the study; the notebook refits it."""
  command = [sys.executable, "scaling_laws.py", "--preset=tiny", f"--root={tmp_path}"]
  benchmarks = os.path.join(REPO, "benchmarks")
  bad = subprocess.run(command + ["--held_out=2"], capture_output=True, text=True,
                       timeout=300, cwd=benchmarks, env=cli_env(1))
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      "scaling_laws.py: --held_out must leave at least 3 of the 4 sizes to fit, got 2"]
  first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=benchmarks, env=cli_env(1))
  saved = tmp_path / "scaling_laws.json"
  while not saved.exists() and first.poll() is None:   # the first size is written
    time.sleep(0.1)
  first.send_signal(signal.SIGINT)
  _, err = first.communicate(timeout=300)
  assert first.returncode == 130 and len(err.strip().splitlines()) == 1, err
  assert "interrupted (SIGINT)" in err
  kept = [m["name"] for m in json.load(open(saved))["models"]]
  assert 1 <= len(kept) < 4
  run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=benchmarks,
                       env=cli_env(1))
  assert run.returncode == 0, run.stderr
  assert all(f"{name}: done already" in run.stdout for name in kept)
  other = subprocess.run(command[:2] + ["--preset=cpu", f"--root={tmp_path}"],
                         capture_output=True, text=True, timeout=300, cwd=benchmarks,
                         env=cli_env(1))
  assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
  assert "holds a study with other settings" in other.stderr
  study = json.load(open(saved))
  assert [m["name"] for m in study["models"]] == ["w8d1", "w8d2", "w16d1", "w16d2"]
  assert study["fit"]["prediction"]["name"] == "w16d2"
  # The Bayes loss is the forward algorithm's on the very held-out tokens the models score.
  source = study["source"]
  params = lm.hmm_params(source["seed"], source["states"], source["symbols"],
                         source["concentration"])
  tokens = lm.hmm_heldout(lm_hmm.get_config("tiny").eval.seed, params,
                          study["heldout_sequences"], study["sequence_length"] + 1)
  bayes = lm.hmm_token_losses(params, tokens)[:, 1:]
  assert study["bayes_nats"] == pytest.approx(bayes.mean(), rel=1e-12)
  assert len(study["models"][0]["sequence_losses"]) == len(tokens)
  text, images = execute(SCALING, {"SUBSTRAX_STUDY": str(tmp_path / "scaling_laws.json"),
                                    "SUBSTRAX_REPS": "100"}, monkeypatch)
  assert "| w16d2 |" in text and "predicted" in text
  assert len(images) == 1
