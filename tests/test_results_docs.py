"""``docs/results.*`` are what ``benchmarks/regenerate_results.py`` writes from the committed
runs logs: no number in them was typed in or left behind by an older run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:e-?\d+)?")  # signed: +0.000 and -0.000 are one value


def _undated(text: str) -> str:
    return re.sub(r"\d{4}-\d{2}-\d{2}", "DATE", text)  # a refresh stamps some sections with today's date


def _same_to_the_last_digit(a: str, b: str) -> bool:
    """Equal text and counts, and every decimal within one unit of its last printed digit
    (another CPU's SIMD summation may round a mean the other way)."""
    if NUMBER.split(a) != NUMBER.split(b):
        return False
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        if x != y:  # counts and p-values in e-notation must match; decimals may move by one last digit
            if "." not in x or "." not in y or "e" in x + y:
                return False
            if abs(float(x) - float(y)) > 1.01 * 10.0 ** -len(x.split(".")[1]):
                return False
    return True


def test_results_are_regenerated_from_the_committed_runs_logs(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    out = subprocess.run([sys.executable, "benchmarks/regenerate_results.py", "--docs", str(docs)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for command in ("--section recipe", "--section calibration", "bench_label_efficiency.py --from-runs",
                    "bench_loso.py --from-runs", "results_summary.py"):
        assert command in out.stdout  # every logged section was rewritten, none skipped
    committed, regenerated = (_undated((d / "results.md").read_text()) for d in (ROOT / "docs", docs))
    assert _same_to_the_last_digit(regenerated, committed), \
        "docs/results.md is out of date: run python benchmarks/regenerate_results.py"


def test_numbers_may_differ_only_in_their_last_digit():
    assert _same_to_the_last_digit("0.912 ± 0.017 (p = 0.039)", "0.913 ± 0.017 (p = 0.039)")
    assert not _same_to_the_last_digit("0.912 ± 0.017", "0.915 ± 0.017")
    assert not _same_to_the_last_digit("0.912 over 36", "0.912 over 35")
    assert not _same_to_the_last_digit("met", "missed")
    assert _same_to_the_last_digit("+0.000 (mean -0.000)", "-0.000 (mean +0.000)")


def test_dry_run_lists_every_benchmark_behind_the_document():
    out = subprocess.run([sys.executable, "benchmarks/regenerate_results.py", "--rerun", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for script in ("bench_decoding.py", "probe_eegmat.py", "bench_alignment.py", "bench_label_efficiency.py",
                   "bench_loso.py", "bench_fmri.py", "pretrain_report.py", "results_summary.py"):
        assert script in out.stdout
