"""``benchmarks/results_summary.py``: the targets table at the top of docs/results.md is what
the committed sections say (a section regenerated without the summary fails here), and its
per-seed LOSO means and status rules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import results_summary as rs  # noqa: E402 - benchmarks/ is not a package


def test_committed_targets_section_matches_the_sections_it_summarises():
    sections = json.loads((ROOT / "docs" / "results.json").read_text())["sections"]
    expected = [dict(zip(("target", "measured", "status", "section"), r)) for r in rs.rows(sections)]
    assert sections["targets"]["rows"] == expected, "run `python benchmarks/results_summary.py`"
    assert sections["targets"]["markdown"].strip() == rs.markdown(rs.rows(sections)).strip()


def test_loso_per_seed_means_and_status():
    run = lambda subject, seed, ba: {"subject": subject, "method": rs.LOSO, "normalize": "align",  # noqa: E731
                                     "seed": seed, "balanced_accuracy": ba}
    section = {"runs": [run(f"s{i}", 0, 0.875) for i in range(36)],
               "incomplete": {"runs": [run("s0", 1, 0.7), run("s1", 1, 0.9)]}}
    per_seed = rs.loso_per_seed(section)[(rs.LOSO, "align")]
    assert per_seed == {0: (0.875, 36), 1: (0.8, 2)}
    assert rs._seeds_text(per_seed) == "seed 0: 0.875; seed 1: 0.800 (2 of 36 folds)"
    assert rs._seeds_status(per_seed, 0.85) == "missed at a seed"
    assert rs._seeds_status({0: (0.9, 36)}, 0.85) == "met at each seed so far (1 of 3 complete)"
    assert rs._seeds_status({s: (0.9, 36) for s in range(3)}, 0.85) == "**met**"


def test_spreads_apart():
    assert rs._apart([0.9, 0.01], [0.8, 0.02])
    assert not rs._apart([0.9, 0.05], [0.85, 0.02])


def test_gain_verdict_names_what_fails():
    assert rs._gain_verdict(0.031, [0.969, 0.004], [0.938, 0.001], 3) == "**met**"
    assert rs._gain_verdict(0.02, [0.96, 0.0], [0.94, 0.0], 1) == "above by < 0.03, one seed, no spread"
    assert rs._gain_verdict(0.02, [0.96, 0.001], [0.94, 0.001], 3) == "above by < 0.03, spreads apart"
    assert rs._gain_verdict(0.04, [0.90, 0.03], [0.86, 0.03], 3) == "above by ≥ 0.03, spreads overlap"
    assert rs._gain_verdict(-0.01, [0.85, 0.01], [0.86, 0.01], 3) == "missed"
    assert rs._gain_verdict(0.05, [0.95, 0.0], [0.90, 0.0], 1) == "above by ≥ 0.03, one seed, no spread"


def test_notebook_03_status_calls_a_gap_under_0_01_a_tie_either_way():
    line = ("Target (brainfm at least matches CSP + LDA): {} it. brainfm frozen + LR: {} against CSP + LDA {} mean "
            "balanced accuracy over 3 split seeds × 5 folds; per seed brainfm is higher at 1, equal at 1, lower at 1.")
    assert rs.notebook_status(line.format("meets", 0.648, 0.647)) == "met, as a tie (3 split seeds × 5 folds, one subject)"
    assert rs.notebook_status(line.format("misses", 0.642, 0.647)) == "missed, as a tie (3 split seeds × 5 folds, one subject)"
    assert rs.notebook_status(line.format("meets", 0.700, 0.647)) == "**met**"
    assert rs.notebook_status(line.format("misses", 0.600, 0.647)) == "missed"
    with pytest.raises(ValueError, match="no longer reads"):
        rs.notebook_status("Target (brainfm at least matches CSP + LDA): meets it.")
