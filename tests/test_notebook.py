"""docs/tutorial.ipynb: it runs top to bottom (quick settings), and its committed outputs are current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _runner():
    spec = importlib.util.spec_from_file_location("run_tutorial", DOCS / "run_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_tutorial = _runner()


def _outputs(nb, output_type: str) -> list:
    return [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.output_type == output_type
    ]


def test_notebook_runs_top_to_bottom_quick():
    """Every cell runs (a cell error raises CellExecutionError, naming the cell); the pictures appear."""
    nb = run_tutorial.execute(quick=True, timeout=110)
    assert nb.metadata["minidiff"]["quick"] is True
    assert not _outputs(nb, "error")
    pictures = [
        o for o in _outputs(nb, "display_data") + _outputs(nb, "execute_result") if "image/png" in o.data
    ]
    assert len(pictures) >= 10, f"{len(pictures)} pictures"
    text = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
    assert "the hand-written loop gives the pipeline's images: True" in text


def test_committed_notebook_came_from_its_code_cells():
    """The outputs in the repository were made by these code cells, run in order, in a full run:
    after editing a code cell, `make notebook` re-runs it (about 3 minutes)."""
    nb = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    stamp = nb.metadata.get("minidiff", {})
    assert stamp.get("code_sha256") == run_tutorial.code_digest(nb), (
        "docs/tutorial.ipynb's code cells changed since its outputs were made: run `make notebook`"
    )
    assert stamp.get("quick") is False, "the committed notebook comes from a quick run: run `make notebook`"
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1))
    assert not _outputs(nb, "error")
    assert all(cell.outputs for cell in code_cells), "every code cell shows something"


def test_code_digest_sees_a_changed_cell():
    nb = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    before = run_tutorial.code_digest(nb)
    next(cell for cell in nb.cells if cell.cell_type == "code").source += "\n# edited"
    assert run_tutorial.code_digest(nb) != before
