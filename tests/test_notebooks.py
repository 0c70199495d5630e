"""The notebooks run top to bottom on CPU against the real data (offline), as users run them."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ALL_NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: Notebooks executed by a test file of their own, with their own checks (run once, not twice).
OWN_TEST = {"05_fmri.ipynb": "tests/test_fmri_notebook.py", "04_attention_state.ipynb": "tests/test_attention_notebook.py"}
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.name not in OWN_TEST]


def test_the_demos_are_all_there():
    assert [p.name for p in ALL_NOTEBOOKS] == [
        "01_quickstart_decoding.ipynb", "02_new_subject_reset_tuning.ipynb", "03_motor_imagery.ipynb",
        "05_fmri.ipynb",
    ]
    root = Path(__file__).resolve().parent.parent
    assert all((root / test).is_file() for test in OWN_TEST.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_NB_EPOCHS", "2")  # the notebooks' own default is 4
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "every demo draws at least one figure"
