"""The notebooks run top to bottom on CPU against the real data (offline), as users run them.

The decoding demos 01-03 and the fMRI demo 05 are committed with the outputs of ``python notebooks/regenerate.py``
(their full default epochs); here they run in fast mode (``BRAINFM_NB_EPOCHS=2``) without
being written back.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
ALL_NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Notebooks executed by a test file of their own, with their own checks (run once, not twice).
OWN_TEST = {"05_fmri.ipynb": "tests/test_fmri_notebook.py", "04_attention_state.ipynb": "tests/test_attention_notebook.py"}
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.name not in OWN_TEST]
#: The demos that notebooks/regenerate.py re-executes and that are committed with outputs.
DEMOS = ("01_quickstart_decoding.ipynb", "02_new_subject_reset_tuning.ipynb", "03_motor_imagery.ipynb",
         "05_fmri.ipynb")
#: Lightning's info lines, which notebooks/_demo.py silences.
NOISE = ("GPU available:", "💡 Tip", "Seed set to")


def _code(book) -> list:
    return [c for c in book.cells if c.cell_type == "code"]


def _images(book) -> list:
    return [o for c in _code(book) for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def test_the_demos_are_all_there():
    names = [p.name for p in ALL_NOTEBOOKS]
    assert set(DEMOS) | {"04_attention_state.ipynb"} <= set(names)
    root = NOTEBOOK_DIR.parent
    assert all((root / test).is_file() for test in OWN_TEST.values())
    spec = importlib.util.spec_from_file_location("regenerate", NOTEBOOK_DIR / "regenerate.py")
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)  # notebooks/ is not a package
    assert tuple(regenerate.DEMOS) == DEMOS


@pytest.mark.parametrize("name", DEMOS)
def test_demo_is_committed_with_its_outputs_and_no_workarounds(name):
    """Every code cell ran (in order, without errors) and there are figures, so the notebook reads on
    the web; no warning filters in the notebook itself (they live in notebooks/_demo.py)."""
    book = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    counts = [c.get("execution_count") for c in _code(book)]
    assert all(counts) and counts == sorted(counts), f"{name}: not executed top to bottom: {counts}"
    assert not [o for c in _code(book) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert _images(book)
    assert not [c for c in _code(book) if "filterwarnings" in c.source]
    assert book.cells[0].cell_type == "markdown" and "notebooks/regenerate.py" in book.cells[0].source
    outputs = [o for c in _code(book) for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("name") == "stderr"], "brainfm's info lines belong on stdout (_demo.quiet)"
    text = " ".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                    + str(o.get("data", {}).get("text/html", "")) for o in outputs)
    machine_paths = re.findall(r"(?<![\w.~-])/(?:root|home|work|tmp|Users|var|mnt|private)/\S+", text)
    assert not machine_paths, f"an output shows a path of the machine that ran it: {machine_paths[:3]}"
    assert not [c for c in book.cells if "execution" in c.metadata], "timing metadata (notebooks/regenerate.py drops it)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINFM_NB_EPOCHS", "2")  # fast mode; the notebooks' own defaults are larger
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The demos import notebooks/_demo.py, as Jupyter started in notebooks/ finds it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOK_DIR), os.environ.get("PYTHONPATH")])))
    book = nbformat.read(path, as_version=4)
    for cell in _code(book):
        cell.outputs, cell.execution_count = [], None  # judge this run's outputs, not the committed ones
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in _code(book) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert _images(book), "every demo draws at least one figure"
    text = "".join(o.get("text", "") for c in _code(book) for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert not [line for line in NOISE if line in text], "Lightning's info lines bury the notebook's own output"
