"""Re-execute the decoding demos in place with their full default settings, so that the outputs
committed with them (scores, figures) are real.

One command regenerates the decoding demos 01-03 and the fMRI demo 05 (a few minutes each on a
2-core CPU)::

    python notebooks/regenerate.py
    python notebooks/regenerate.py 03_motor_imagery.ipynb   # or only some

Each notebook runs in a fresh kernel with an emptied ``runs/notebooks/<notebook>/`` (git-ignored)
as its working directory, so the run folders it prints are the same on every regeneration,
``notebooks/`` on the path (for ``_demo``) and ``BRAINFM_NB_EPOCHS`` unset, so the notebook's
own default epochs apply. Cells carry no timing metadata, so a regeneration diffs only where
the outputs changed. ``tests/test_notebooks.py`` executes the same notebooks
in fast mode without writing them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEMOS = ("01_quickstart_decoding.ipynb", "02_new_subject_reset_tuning.ipynb", "03_motor_imagery.ipynb",
         "05_fmri.ipynb")


def kernel_env() -> None:
    """Environment the kernels inherit: ``_demo`` importable, inline figures, default epochs."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.pop("BRAINFM_NB_EPOCHS", None)


def execute(path: Path, workdir: Path, timeout: int = 3600) -> float:
    """Execute ``path`` top to bottom and write it back with its outputs; seconds taken."""
    book = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(book, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    for cell in book.cells:
        cell.metadata.pop("execution", None)  # an earlier run's timestamps; nbclient keeps them without timing
    nbformat.write(book, path)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", default=list(DEMOS), help="notebook file names under notebooks/")
    args = ap.parse_args()
    kernel_env()
    unknown = [name for name in args.notebooks if Path(name).name not in DEMOS]
    if unknown:
        ap.error(f"not a demo notebook: {', '.join(unknown)} (choose from {', '.join(DEMOS)})")
    for name in args.notebooks:
        workdir = ROOT / "runs" / "notebooks" / Path(name).stem
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh run: version_0 folders, nothing left from the last
        workdir.mkdir(parents=True)
        seconds = execute(HERE / Path(name).name, workdir)
        print(f"{name}: executed in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
