"""The data side of the data–model handshake: one typed summary of what a DataModule serves.

After ``setup`` every brainfm DataModule exposes a :class:`DataSummary` (its ``summary``
property), in the spirit of litgpt's ``DataModule.connect``: a task reads the sampling
rate, window, sensor layouts, subjects and class counts from it, never from a dataset's
attributes. :class:`brainfm.tasks.BrainTask` checks it against the model once
(:meth:`brainfm.models.ModelConfig.for_signal` for each montage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainfm.data.dataset import EventWindows, FixedWindows, ShuffledWindows
from brainfm.signal import SensorSpec


@dataclass(frozen=True)
class DataSummary:
    """What the training windows of a DataModule are.

    Parameters
    ----------
    sfreq : float
        Sampling rate (Hz) of every window.
    window_s : float
        Window length in seconds (a whole number of samples at ``sfreq``).
    specs : tuple of SensorSpec
        Per training recording, its sensors after channel picking (parallel to ``subjects``).
    subjects : tuple of str
        Per training recording, its subject.
    class_counts : tuple of int, optional
        Training windows per class (labelled data only).
    target_set : str, optional
        Key of the precomputed target set the batches carry, if any.
    n_windows : int, optional
        Training windows (None for an iterable dataset of unknown length).
    normalization : dict, optional
        Subject-adaptive normalisation of the windows, if any
        (:meth:`brainfm.data.normalize.SubjectNormalizer.describe`: method, source, seconds,
        subjects).
    """

    sfreq: float
    window_s: float
    specs: tuple[SensorSpec, ...]
    subjects: tuple[str, ...]
    class_counts: tuple[int, ...] | None = None
    target_set: str | None = None
    n_windows: int | None = None
    normalization: dict | None = None

    def __post_init__(self) -> None:
        if len(self.specs) != len(self.subjects):
            raise ValueError(f"{len(self.specs)} specs for {len(self.subjects)} subjects")
        bad = sorted({s.sfreq for s in self.specs if abs(s.sfreq - self.sfreq) > 1e-6})
        if bad:
            raise ValueError(f"recordings at {bad} Hz in data summarised at {self.sfreq:g} Hz")

    @classmethod
    def of(cls, windows: FixedWindows | EventWindows | ShuffledWindows, class_counts=None,
           target_set: str | None = None, normalization: dict | None = None) -> "DataSummary":
        """The summary of a window dataset (:class:`~brainfm.data.FixedWindows`, ...)."""
        counts = None if class_counts is None else tuple(int(n) for n in np.asarray(class_counts))
        return cls(windows.sfreq, windows.window / windows.sfreq, tuple(windows.specs), tuple(windows.subjects),
                   counts, target_set, len(windows), normalization)

    @property
    def montages(self) -> tuple[SensorSpec, ...]:
        """The distinct sensor layouts, in order of first appearance."""
        return tuple(dict.fromkeys(self.specs))

    @property
    def n_channels(self) -> int:
        """Channels of the widest montage (the padded channel axis of a batch)."""
        return max((s.n_channels for s in self.specs), default=0)

    @property
    def n_classes(self) -> int | None:
        return None if self.class_counts is None else len(self.class_counts)

    def subject_channels(self) -> dict[str, int]:
        """Channels per subject (for subject-specific layers); one montage size per subject."""
        out: dict[str, int] = {}
        for subject, spec in zip(self.subjects, self.specs):
            if out.setdefault(subject, spec.n_channels) != spec.n_channels:
                raise ValueError(f"subject {subject!r} has recordings with different channel counts")
        return out
