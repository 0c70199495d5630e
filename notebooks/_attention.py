"""Set-up and scoring helpers of ``04_attention_state.ipynb`` (not part of the installed package).

Importing this module quiets what would otherwise clutter the notebook's output:

* tqdm's ``IProgress not found`` warning (``brainfm.deploy`` imports ``tqdm.auto``, which looks
  for ipywidgets inside a Jupyter kernel; no progress bar is drawn in this notebook);
* liblsl's own log lines on stderr (start-up INFO, and a benign "re-connecting" when the demo
  stops its player): ``LSLAPICFG`` points liblsl at ``notebooks/lsl_api.cfg`` (log level -3)
  unless it is already set. It must be imported before the first LSL call.

The notebook imports it as ``_attention``: Jupyter started in ``notebooks/`` finds it, and
``tests/test_attention_notebook.py`` puts ``notebooks/`` on the path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message="IProgress not found")
os.environ.setdefault("LSLAPICFG", str(Path(__file__).resolve().with_name("lsl_api.cfg")))

ENGAGED = ("Focused", "Hyperfocused")


def scored_windows(t: np.ndarray, switch: float, calibration_s: float,
                   window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the windows scored against the labels: rest after the baseline span, and
    arithmetic windows that lie entirely after the switch (as ``benchmarks/bench_attention.py``)."""
    return (t >= calibration_s + window_s) & (t <= switch), t - window_s >= switch


def switch_delay(t: np.ndarray, engaged: np.ndarray, switch: float, hold_s: float = 5.0, hop_s: float = 0.5):
    """Seconds from the switch to the first window after which the state stays engaged for ``hold_s``
    (None: never)."""
    hold = int(round(hold_s / hop_s))
    for i in np.flatnonzero(t > switch):
        if i + hold <= len(t) and engaged[i:i + hold].all():
            return float(t[i] - switch)
    return None
