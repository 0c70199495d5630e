"""``notebooks/05_fmri.ipynb`` runs top to bottom on CPU against the real fMRI files (offline).

``tests/test_notebooks.py`` also collects every notebook; this test adds the fMRI notebook's own
checks (reset-tuning leaves the shared layers alone, the mixed batch holds EEG and BOLD).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_fmri.ipynb"
#: Lightning's info lines and tqdm's widget warning, which notebooks/_demo.py silences.
NOISE = ("GPU available:", "💡 Tip", "IProgress not found")


def test_fmri_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_NB_EPOCHS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The notebook imports notebooks/_demo.py, as Jupyter started in notebooks/ finds it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOK.parent), os.environ.get("PYTHONPATH")])))
    book = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "unit is wrong" in text and "types [0, 1, 3]" in text
    assert "shared and source layers unchanged by reset-tuning: True" in text
    assert [o for o in outputs if "image/png" in o.get("data", {})]
    assert not [line for line in NOISE if line in text], "warnings and info lines bury the notebook's own output"
