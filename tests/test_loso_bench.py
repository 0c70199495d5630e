"""``benchmarks/bench_loso.py``: deterministic folds, and a resumed runs log never mixing
epoch settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from brainfm.models import BrainEncoder, ModelConfig, save_encoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_loso as bl  # noqa: E402 - benchmarks/ is not a package


def test_folds_are_disjoint_and_cover_every_subject():
    for k in range(len(bl.SUBJECTS)):
        split = bl.fold_split(k)
        assert split["test"] == [bl.SUBJECTS[k]] and len(split["val"]) == bl.N_VAL
        assert sorted(split["train"] + split["val"] + split["test"]) == sorted(bl.SUBJECTS)
    assert bl.fold_split(35)["val"] == ["eegmat00", "eegmat01", "eegmat02", "eegmat03"]  # cyclic


def _row(method: str, epochs: int | None, seed: int | None = 0) -> dict:
    row = {"subject": "eegmat00", "method": method, "normalize": "align", "seed": seed}
    return row | ({"epochs": epochs} if epochs is not None else {})


def test_resume_refuses_rows_of_other_epochs():
    eegnet = bl.eegnet_method(0.1)
    rows = [_row(eegnet, 10), _row("brainfm from scratch", 8), _row("brainfm from scratch", None)]
    bl.check_epochs(rows, epochs=8, eegnet_epochs=10)  # same settings, and rows that predate the field
    with pytest.raises(SystemExit, match="trained for 10 epochs, not 20"):
        bl.check_epochs(rows, epochs=8, eegnet_epochs=20)
    assert bl.logged_epochs(rows, "braindecode EEGNet", 99) == 10
    assert bl.logged_epochs(rows[2:], "brainfm", 8) == 8  # no field logged: the default
    with pytest.raises(SystemExit, match="different epochs"):
        bl.logged_epochs([_row(eegnet, 10), _row(eegnet, 20)], "braindecode EEGNet", 10)


def test_paired_comparison_averages_seeds_within_subject():
    a, b = ("A", "align"), ("B", "align")
    rows = []
    for i in range(6):
        rows += [{"subject": f"s{i}", "method": "A", "normalize": "align", "seed": seed, "balanced_accuracy": 0.75 + 0.125 * seed}
                 for seed in (0, 1)]  # subject mean 0.8125
        rows.append({"subject": f"s{i}", "method": "B", "normalize": "align", "seed": None,
                     "balanced_accuracy": 0.8125 if i == 0 else 0.6875})
    q = bl.paired(rows, a, b)
    assert q["subjects"] == 6 and (q["wins"], q["ties"], q["losses"]) == (5, 1, 0)
    assert q["mean_difference"] == pytest.approx(5 * 0.125 / 6)
    assert 0 < q["wilcoxon_p"] < 0.1
    assert bl.paired(rows[:9], a, b) is None  # fewer than 5 shared subjects


def test_subject_figure_is_written(tmp_path):
    rows = [{"subject": s, "method": bl.BRAINFM, "normalize": "align", "seed": 0, "balanced_accuracy": 0.5 + i / 100}
            for i, s in enumerate(bl.SUBJECTS)]
    rows.append({"subject": "eegmat03", "method": "log band power + LR", "normalize": "align", "seed": None,
                 "balanced_accuracy": 0.7})
    path = tmp_path / "figures" / "loso.png"
    bl.plot_subjects(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretrained_rows_only_on_held_out_folds_and_paired_with_scratch():
    chosen = bl.fold_encoders([Path(bl.RECIPE_ENCODER)], bl.SUBJECTS)
    bl.check_held_out(chosen, list(range(28, 36)))  # the shipped recipes never trained on 28-35
    with pytest.raises(SystemExit, match="pretrained on eegmat05"):
        bl.check_held_out(chosen, [5, 30])
    pretrained = bl.variant_method("pretrained-tokens", "aligned pretraining")
    reset = f"{pretrained}, reset-tuned 60 s"
    assert bl.scratch_counterpart(reset) == f"{bl.BRAINFM}, reset-tuned 60 s"
    assert bl.scratch_counterpart(bl.VARIANTS["pretrained-equal-lr"]) == bl.VARIANTS["scratch"]
    assert bl.scratch_counterpart(bl.variant_method("hybrid", "x")) == bl.VARIANTS["scratch-hybrid"]
    assert bl.scratch_counterpart(bl.BRAINFM) is None

    def row(method, subject, seed, acc):
        return {"subject": subject, "method": method, "normalize": "align", "seed": seed, "balanced_accuracy": acc}

    rows = [row(pretrained, "eegmat30", 1, 0.9), row(bl.BRAINFM, "eegmat30", 1, 0.8),
            row(pretrained, "eegmat31", 1, 0.7), row(bl.BRAINFM, "eegmat31", 1, 0.7),
            row(pretrained, "eegmat30", 2, 0.6), row(bl.BRAINFM, "eegmat30", 2, 0.7),
            row(pretrained, "eegmat31", 2, 0.6), row(bl.BRAINFM, "eegmat31", 2, 0.6),
            row(pretrained, "eegmat30", 3, 0.9), row(bl.BRAINFM, "eegmat30", 3, 0.5),  # seed 3: one subject so far
            row(pretrained, "eegmat31", 3, 0.9),  # no scratch row for it yet: not paired
            row(bl.BRAINFM, "eegmat00", 1, 0.5)]
    e = bl.pretrained_vs_scratch(rows)[f"{pretrained} | align"]
    assert e["seeds"] == [1, 2] and e["subjects"] == ["eegmat30", "eegmat31"] and e["incomplete_seeds"] == {"3": 1}
    assert e["per_seed"] == pytest.approx({"1": 0.05, "2": -0.05})
    assert (e["wins"], e["ties"], e["losses"]) == (1, 2, 1)
    assert e["wilcoxon_p"] == 1.0  # each subject's seeds cancel out
    assert e["balanced_accuracy"][0] == pytest.approx(0.7)  # seed means 0.8 and 0.6
    assert "30, 31" in "\n".join(bl.pretrained_markdown(bl.pretrained_vs_scratch(rows)))
    with pytest.raises(SystemExit, match="two rows"):
        bl.pretrained_vs_scratch(rows + rows[:1])
    logged = [row(pretrained, "eegmat30", 1, 0.9) | {"encoder_sha256": "aaaa"}]
    bl.check_encoder(logged, [pretrained], {"eegmat30": "aaaa"})
    with pytest.raises(SystemExit, match="eegmat30 from encoder aaaa, not bbbb"):
        bl.check_encoder([r | {"method": reset} for r in logged], [pretrained, bl.BRAINFM], {"eegmat30": "bbbb"})


def test_pretrained_pairs_split_by_encoder_and_drawn(tmp_path):
    """Two encoders, each on its own subjects: the table and the figure give each its own difference."""
    pretrained = bl.variant_method("pretrained-tokens", "half-split aligned pretraining")
    half_a, half_b = (bl.HALF_RECIPES[f"small-10s-aligned-half-{h}"][1][:16] for h in "ab")
    rows = []
    for i, subject in enumerate(bl.SUBJECTS[:6]):
        sha, gain = (half_b, 0.1) if i < 3 else (half_a, -0.2)
        for seed in (0, 1):
            rows += [{"subject": subject, "method": bl.BRAINFM, "normalize": "align", "seed": seed,
                      "balanced_accuracy": 0.6 + i / 20},
                     {"subject": subject, "method": pretrained, "normalize": "align", "seed": seed,
                      "balanced_accuracy": 0.6 + i / 20 + gain, "encoder_sha256": sha}]
    rows.append(rows[-1] | {"method": f"{pretrained}, reset-tuned 60 s"})  # reset rows: tables only
    rows.append(rows[-3] | {"method": f"{bl.BRAINFM}, reset-tuned 60 s"})
    encoders = bl.pretrained_vs_scratch(rows)
    groups = encoders[f"{pretrained} | align"]["by_encoder"]
    assert groups["small-10s-aligned-half-b"]["subjects"] == bl.SUBJECTS[:3]
    assert groups["small-10s-aligned-half-b"]["mean_difference"] == pytest.approx(0.1)
    assert groups["small-10s-aligned-half-a"]["mean_difference"] == pytest.approx(-0.2)
    assert (groups["small-10s-aligned-half-a"]["wins"], groups["small-10s-aligned-half-a"]["losses"]) == (0, 3)
    table = "\n".join(bl.pretrained_markdown(encoders))
    assert f"small-10s-aligned-half-a ({half_a}) | 03, 04, 05 | -0.200 | 0 / 0 / 3 |" in table
    assert bl.trained_method(f"{pretrained}, as trained, after 60 s") == pretrained
    path = tmp_path / bl.PRETRAINED_FIGURE
    bl.plot_pretrained(encoders, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_fold_gets_an_encoder_that_never_read_its_subject(tmp_path):
    """The two-encoder protocol: halves pretrained on disjoint subjects cover every fold, and a
    subject one half only validated on goes to the half that never read it."""
    encoder = BrainEncoder(ModelConfig.from_name("tiny"))
    halves = []
    for name, train, val in (("a", range(0, 16), (16, 17)), ("b", range(18, 34), (34, 35))):
        halves.append(tmp_path / f"half-{name}.safetensors")
        save_encoder(encoder, halves[-1], extra={"train_subjects": [bl.SUBJECTS[i] for i in train],
                                                 "val_subjects": [bl.SUBJECTS[i] for i in val]})
    chosen = bl.fold_encoders(halves, bl.SUBJECTS)
    a, b = halves
    assert [chosen[s] for s in bl.SUBJECTS] == [b] * 18 + [a] * 18  # 16-17 to b, 34-35 to a: never read
    bl.check_held_out(chosen, list(range(36)))
    only_a = bl.fold_encoders([a], bl.SUBJECTS)
    assert only_a["eegmat16"] == a and only_a["eegmat05"] is None  # validated only: allowed when nothing is better
    with pytest.raises(SystemExit, match="every --encoder was pretrained on eegmat05"):
        bl.check_held_out(only_a, [5, 20])
