"""Training in Jupyter shows tqdm's notebook bar (a widget) and no 'IProgress not found' warning: a real
kernel runs a small notebook."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def test_training_in_a_notebook_shows_a_widget_progress_bar_and_no_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "from conftest import mixture_counts\n"
            "from cplmix_explorer.api import CplMixVAE\n"
            "model = CplMixVAE(mixture_counts(n_cells=120, n_genes=40, n_types=3), n_types=3, hidden_dim=16,\n"
            "                  n_hidden_layers=2, batch_size=32)"
        ),
        nbformat.v4.new_code_cell("model.train(steps=10).step"),
    ])
    NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "IProgress not found" not in stderr and "TqdmWarning" not in stderr, stderr
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "tqdm drew no notebook bar"
    assert notebook.cells[1].outputs[-1]["data"]["text/plain"] == "10"
