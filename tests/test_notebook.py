"""The tutorial notebook executes from top to bottom and shows what it promises."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_callbacks_on_an_existing_trainer.ipynb"


def test_notebook_executes(tmp_path, monkeypatch):
    repo = str(NOTEBOOK.parents[1])
    monkeypatch.setenv("PYTHONPATH", repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("WANDB_MODE", "offline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert printed.count("energy in object") == 3
    displayed = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(displayed) == 1
    assert list((tmp_path / "runs" / "notebook" / "wandb").glob("offline-run-*"))
