"""Deterministic subject splits: fixed lists, leave-one-subject-out, k-fold.

Splits are always over *subjects*, never windows, so no subject's data is on both
sides (the leak behind many irreproducible EEG results). Every function is a pure
function of its inputs (and seed): the same call gives the same split everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class SubjectSplit:
    """Train/validation/test subject lists (disjoint)."""

    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            object.__setattr__(self, part, tuple(getattr(self, part)))
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for s in getattr(self, part):
                if s in seen:
                    raise ValueError(f"subject {s!r} is in both {seen[s]} and {part}")
                seen[s] = part

    def part(self, name: str) -> tuple[str, ...]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split part must be train, val or test, not {name!r}")
        return getattr(self, name)


def eegmat_cbramod(prefix: str = "eegmat") -> SubjectSplit:
    """CBraMod's EEGMAT protocol: subjects 0–27 train, 28–31 validation, 32–35 test."""
    ids = [f"{prefix}{i:02d}" for i in range(36)]
    return SubjectSplit(ids[:28], ids[28:32], ids[32:], name="eegmat-cbramod")


def leave_one_subject_out(subjects: Sequence[str], n_val: int = 0, seed: int = 0) -> Iterator[SubjectSplit]:
    """One split per subject (sorted order) with that subject as the test set.

    ``n_val`` other subjects, drawn with ``seed`` per fold, form the validation set.
    """
    subjects = sorted(set(subjects))
    for k, test in enumerate(subjects):
        rest = [s for s in subjects if s != test]
        rng = np.random.default_rng([seed, k])
        val = sorted(rng.choice(rest, size=n_val, replace=False).tolist()) if n_val else []
        train = [s for s in rest if s not in val]
        yield SubjectSplit(train, val, (test,), name=f"loso-{test}")


def kfold_subjects(subjects: Sequence[str], k: int, seed: int = 0) -> list[SubjectSplit]:
    """``k`` folds over subjects shuffled with ``seed``; fold ``i`` tests on part ``i``."""
    subjects = sorted(set(subjects))
    if not 2 <= k <= len(subjects):
        raise ValueError(f"k must be between 2 and the number of subjects ({len(subjects)}), got {k}")
    order = np.random.default_rng(seed).permutation(len(subjects))
    parts = np.array_split(np.asarray(subjects)[order], k)
    return [
        SubjectSplit(
            sorted(s for j, p in enumerate(parts) if j != i for s in p.tolist()),
            (),
            sorted(parts[i].tolist()),
            name=f"kfold{k}-{i}",
        )
        for i in range(k)
    ]


def random_split(subjects: Sequence[str], val: float = 0.1, test: float = 0.0, seed: int = 0) -> SubjectSplit:
    """Shuffle subjects with ``seed`` and cut fractions for validation and test (≥1 each if > 0)."""
    subjects = sorted(set(subjects))
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n_test = max(1, round(test * len(order))) if test > 0 else 0
    n_val = max(1, round(val * len(order))) if val > 0 else 0
    if n_test + n_val >= len(order):
        raise ValueError(f"{len(order)} subjects cannot fill val={val} and test={test}")
    return SubjectSplit(
        sorted(order[n_test + n_val :]), sorted(order[n_test : n_test + n_val]), sorted(order[:n_test]),
        name=f"random-{seed}",
    )


def calibration_spans(
    durations: Mapping[str, float], seconds: float, test_after: float | None = None
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """Split one subject's labelled recordings in time: calibration first, test after.

    The within-subject protocol of few-shot decoding and reset-tuning: a new subject gives
    ``seconds`` of labelled data at the start of each recording, and everything after it
    is the test set. Every recording gives the same fraction of its length, so the
    seconds are shared between classes in proportion to how much of each class the
    subject has (EEGMAT: 180 s rest, 60 s arithmetic, so 60 s of calibration is 45 s of
    rest and 15 s of arithmetic) and calibration and test keep the same class balance.
    Calibration and test never overlap in time.

    Parameters
    ----------
    durations : mapping of recording id to duration in seconds
        The subject's labelled recordings.
    seconds : float
        Total calibration time; must leave test data in every class.
    test_after : float, optional
        Start the test part after this much calibration time instead of ``seconds``
        (``>= seconds``), so runs with different amounts of calibration are scored on
        the same test windows.

    Returns
    -------
    calibration, test : dict of recording id to (start_s, stop_s)
    """
    if seconds <= 0:
        raise ValueError(f"calibration seconds must be > 0, got {seconds}")
    total = sum(durations.values())
    test_after = seconds if test_after is None else test_after
    if test_after < seconds:
        raise ValueError(f"test_after ({test_after}) must be >= seconds ({seconds})")
    if test_after >= total:
        raise ValueError(f"{test_after} s of calibration leaves no test data (the subject has {total:.1f} s)")
    calib, test = {}, {}
    for rid, dur in sorted(durations.items()):
        calib[rid] = (0.0, seconds / total * dur)
        test[rid] = (test_after / total * dur, dur)
    return calib, test
