"""``docs/scale.md``'s table is what ``benchmarks/scale_plan.py`` prints from its measured inputs
(issue #15 item 7): a new measurement changes a constant there, and this test fails until the doc
is updated with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scale_doc_table_is_the_scripts_output():
    printed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_plan.py"), "--hours", "25000", "2500",
                              "--cores", "16", "64"], capture_output=True, text=True, check=True).stdout.strip()
    assert printed.splitlines()[0].startswith("| corpus (h of EEG) |")
    assert printed in (ROOT / "docs" / "scale.md").read_text(), "run benchmarks/scale_plan.py and update docs/scale.md"
