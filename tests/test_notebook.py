"""The quickstart notebook runs top to bottom on the tiny preset, and its pair is in sync."""
import os

import jupytext
import nbformat
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "icl_quickstart.ipynb")


def test_ipynb_matches_its_jupytext_pair():
  paired = jupytext.read(NOTEBOOK.replace(".ipynb", ".py"))
  stored = nbformat.read(NOTEBOOK, as_version=4)
  assert [c.source for c in paired.cells] == [c.source for c in stored.cells]


def test_quickstart_runs_on_the_tiny_preset(tmp_path, monkeypatch):
  monkeypatch.setenv("SUBSTRAX_PRESET", "tiny")
  monkeypatch.setenv("SUBSTRAX_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "1")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
  assert "transformer error at k=10" in outputs
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == 2
