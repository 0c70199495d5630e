"""``notebooks/04_attention_state.ipynb`` runs top to bottom on CPU against real EEGMAT files (offline).

``tests/test_notebooks.py`` collects every notebook; this one is executed here instead, with its own
checks: the offline timeline and its plot, the causal chain against the zero-phase one, and a short
live run on a ``PlayerLSL`` replay on loopback that publishes decisions and stops its player.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK = NOTEBOOK_DIR / "04_attention_state.ipynb"


def test_attention_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # the notebook imports notebooks/_attention.py, as Jupyter started in notebooks/ finds it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOK_DIR), os.environ.get("PYTHONPATH")])))
    book = nbformat.read(NOTEBOOK, as_version=4)
    assert not [c for c in book.cells if c.cell_type == "code" and "filterwarnings" in c.source]
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None  # judge this run's outputs, not the committed ones
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "19 EEG channels at 500 Hz" in text and "'EEG A2-A1'" in text  # the derivation is left out
    assert "engaged share: rest" in text and "causal vs zero-phase: same state in" in text
    assert [o for o in outputs if "image/png" in o.get("data", {})]  # the timeline plot
    assert (tmp_path / "timeline.png").is_file()
    live = re.findall(r"^t=\d+\.\d+  (\S+)", text, flags=re.M)  # the live decisions, as published
    assert len(live) >= 4 and set(live) <= {"Focused", "Drifting", "Hyperfocused", "Fatigued", "signal-bad"}
    assert "'windows'" in text
