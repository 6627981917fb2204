"""The notebooks run top to bottom on the tiny presets, and their jupytext pairs are in sync."""
import os

import jupytext
import nbformat
from nbclient import NotebookClient

from conftest import REPO, cli_env

import pytest

NOTEBOOK = os.path.join(REPO, "notebooks", "icl_quickstart.ipynb")
PROBES = os.path.join(REPO, "notebooks", "icl_probes.ipynb")


@pytest.mark.parametrize("path", [NOTEBOOK, PROBES])
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
