"""``benchmarks/bench_label_efficiency.py``: the labelled-subject draws and the paired summary.

The benchmark's numbers come from real EEGMAT runs (docs/results.md, ``label-efficiency``);
these tests pin what makes them comparable: each seed draws its labelled subjects from the
training part of the split only, reproducibly, and pretrained and scratch rows are paired
by seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_label_efficiency as ble  # noqa: E402 - benchmarks/ is not a package

PRETRAINED, SCRATCH = ble.VARIANTS["pretrained-tokens"], ble.VARIANTS["scratch-tokens"]


def test_draws_are_training_subjects_reproducible_and_vary_with_the_seed():
    train = set(ble.SPLIT.train)
    draws = {seed: ble.train_draw(4, seed) for seed in range(3)}
    for seed, draw in draws.items():
        assert len(set(draw)) == 4 and set(draw) <= train and draw == sorted(draw)
        assert ble.train_draw(4, seed) == draw
        assert not set(draw) & (set(ble.SPLIT.val) | set(ble.SPLIT.test))
    assert len({tuple(d) for d in draws.values()}) > 1
    assert ble.train_draw(len(train), 5) == sorted(train)


def test_summary_pairs_pretrained_and_scratch_by_seed():
    def row(n, method, seed, acc):
        return {"train_subjects": n, "method": method, "normalize": "align", "seed": seed, "balanced_accuracy": acc,
                "kappa": 0.0, "f1_weighted": 0.0, "auroc": 0.5}

    rows = [row(4, PRETRAINED, 0, 0.80), row(4, SCRATCH, 0, 0.70), row(4, PRETRAINED, 1, 0.60),
            row(4, SCRATCH, 1, 0.65), row(4, PRETRAINED, 2, 0.9)]  # seed 2 has no scratch row yet
    summary = ble.summarise(rows)
    assert summary[f"4 | {PRETRAINED}"]["seeds"] == [0, 1, 2]
    paired = summary["4 | pretrained − scratch"]
    assert paired["per_seed"] == pytest.approx({0: 0.10, 1: -0.05})
    assert paired["mean"] == pytest.approx(0.025)
    assert "pretrained − scratch" in ble.markdown(summary, "cmd", "2026-12-01", 8)


def test_a_second_encoder_is_named_and_paired_with_the_same_scratch_rows():
    aligned = ble.variant_method("pretrained-tokens", "aligned pretraining")
    assert aligned == "brainfm pretrained (aligned pretraining) + full fine-tune, label-free token statistics"
    assert ble.variant_method("scratch-tokens", "aligned pretraining") == SCRATCH  # scratch rows are shared
    assert ble.variant_method("hybrid", "aligned pretraining").startswith("brainfm pretrained (aligned pretraining)")

    def row(method, seed, acc):
        return {"train_subjects": 2, "method": method, "normalize": "align", "seed": seed, "balanced_accuracy": acc,
                "kappa": 0.0, "f1_weighted": 0.0, "auroc": 0.5}

    summary = ble.summarise([row(PRETRAINED, 0, 0.7), row(aligned, 0, 0.9), row(SCRATCH, 0, 0.8)])
    assert summary["2 | pretrained − scratch"]["mean"] == pytest.approx(-0.1)
    assert summary["2 | pretrained (aligned pretraining) − scratch"]["mean"] == pytest.approx(0.1)
    assert "| 2 | pretrained (aligned pretraining) | +0.100 |" in ble.markdown(summary, "cmd", "2026-12-01", 8)
