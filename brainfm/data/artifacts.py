"""Window-level artifact rejection: amplitude, flat-channel and line-noise rules.

A window is rejected when any of its channels breaks a rule:

``amplitude``
    the channel's peak absolute deviation from its window mean exceeds the type's
    ``max_amplitude``. The EEG default is CBraMod's rule, 100 uV: its pretraining keeps
    only segments whose absolute amplitude stays under 100 uV (Wang et al., ICLR 2025).
    The MEG defaults (4000 fT, 4000 fT/cm) are MNE's customary epoch rejection levels
    (``reject=dict(mag=4e-12, grad=4000e-13)`` in the MNE tutorials).
``flat``
    the channel's peak-to-peak range is below the type's ``min_ptp`` (MNE's customary
    ``flat`` levels: 1 uV, 1 fT, 1 fT/cm): a disconnected or saturated channel.
``line``
    more than ``max_line_ratio`` of the channel's power (DC excluded) lies within
    ``line_width_hz`` of the recording's mains frequency or its harmonics: line noise the
    conversion's notch did not remove (or a store converted without one).

Channels conversion flagged as unusable never reach these rules (the window datasets
drop them). Types without a threshold are not checked by that rule. The rules run on
the stored signal in physical units (:data:`brainfm.signal.UNITS`), before any
per-subject normalisation.

Counts are kept per recording (:class:`RejectionCounts`) so a run can log how much of
each recording it dropped and why.

References
----------
.. [cbramod] Wang, J. et al. (2025). CBraMod: A Criss-Cross Brain Foundation Model for
   EEG Decoding. ICLR 2025. https://arxiv.org/abs/2412.07236
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

#: Bits of a window's rejection code, one per rule.
AMPLITUDE, FLAT, LINE = 1, 2, 4
RULES: dict[str, int] = {"amplitude": AMPLITUDE, "flat": FLAT, "line": LINE}

#: Peak absolute deviation (physical units) above which a window is rejected.
DEFAULT_MAX_AMPLITUDE: dict[str, float] = {"eeg": 100.0, "mag": 4000.0, "grad": 4000.0}
#: Peak-to-peak range below which a channel counts as flat.
DEFAULT_MIN_PTP: dict[str, float] = {"eeg": 1.0, "mag": 1.0, "grad": 1.0}

#: Windows whose spectra are computed at once (bounds the memory of the line-noise rule).
_FFT_BATCH = 64


@dataclass(frozen=True)
class RejectionCriteria:
    """The rules of the module docstring, with their thresholds.

    Parameters
    ----------
    max_amplitude : dict of str to float
        Per channel type, the largest allowed ``max |x - mean(x)|`` in a window (physical
        units). An empty dict turns the rule off.
    min_ptp : dict of str to float
        Per channel type, the smallest allowed peak-to-peak range. Empty: off.
    max_line_ratio : float or None
        Largest allowed fraction of a channel's power near the mains frequency and its
        harmonics; None turns the rule off. Recordings without a known mains frequency
        are not checked by it.
    line_width_hz : float
        Half-width of the band around each harmonic.
    """

    max_amplitude: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_AMPLITUDE))
    min_ptp: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_PTP))
    max_line_ratio: float | None = 0.5
    line_width_hz: float = 1.0

    def __post_init__(self) -> None:
        for key in ("max_amplitude", "min_ptp"):
            table = dict(getattr(self, key))
            bad = {t: v for t, v in table.items() if not (np.isfinite(v) and v > 0)}
            if bad:
                raise ValueError(f"{key} thresholds must be positive and finite, got {bad}")
            object.__setattr__(self, key, table)
        if self.max_line_ratio is not None and not 0.0 < self.max_line_ratio <= 1.0:
            raise ValueError(f"max_line_ratio must be in (0, 1] or None, got {self.max_line_ratio}")
        if self.line_width_hz <= 0:
            raise ValueError(f"line_width_hz must be positive, got {self.line_width_hz}")

    @classmethod
    def resolve(cls, value: "RejectionCriteria | Mapping[str, Any] | bool | None") -> "RejectionCriteria | None":
        """A config value -> criteria: None/False = no rejection, True or ``{}`` = the defaults,
        a dict = those fields over the defaults."""
        if value is None or value is False:
            return None
        if isinstance(value, RejectionCriteria):
            return value
        if value is True:
            return cls()
        unknown = set(value) - {"max_amplitude", "min_ptp", "max_line_ratio", "line_width_hz"}
        if unknown:
            raise ValueError(f"unknown rejection settings {sorted(unknown)}; known: max_amplitude, min_ptp, "
                             "max_line_ratio, line_width_hz")
        return cls(**value)

    def codes(self, windows: np.ndarray, ch_types: Sequence[str], sfreq: float,
              line_freq: float | None = None) -> np.ndarray:
        """Rejection code of each window: ``(W, C, T)`` -> ``(W,)`` int (0 = kept; else an OR
        of :data:`AMPLITUDE`, :data:`FLAT`, :data:`LINE`)."""
        if windows.ndim != 3 or windows.shape[1] != len(ch_types):
            raise ValueError(f"windows must be (W, {len(ch_types)}, T), got {windows.shape}")
        types = np.asarray(ch_types)
        code = np.zeros(windows.shape[0], dtype=np.int64)
        if not windows.shape[0]:
            return code
        lo, hi = windows.min(axis=2), windows.max(axis=2)  # (W, C)
        if self.max_amplitude:
            mean = windows.mean(axis=2, dtype=np.float64)  # (W, C)
            peak = np.maximum(hi - mean, mean - lo)  # (W, C), max |x - mean|
            limit = _per_channel(self.max_amplitude, types, np.inf)  # (C,)
            code |= np.where((peak > limit).any(axis=1), AMPLITUDE, 0)
        if self.min_ptp:
            limit = _per_channel(self.min_ptp, types, -np.inf)
            code |= np.where((hi - lo < limit).any(axis=1), FLAT, 0)
        if self.max_line_ratio is not None and line_freq:
            ratio = line_power_ratio(windows, sfreq, float(line_freq), self.line_width_hz)  # (W, C)
            code |= np.where((ratio > self.max_line_ratio).any(axis=1), LINE, 0)
        return code


def _per_channel(table: Mapping[str, float], types: np.ndarray, missing: float) -> np.ndarray:
    """Per-channel threshold ``(C,)`` from a per-type table (``missing`` where a type has none)."""
    return np.array([table.get(str(t), missing) for t in types], dtype=np.float64)


def line_power_ratio(windows: np.ndarray, sfreq: float, line_freq: float, width_hz: float = 1.0) -> np.ndarray:
    """Fraction of each channel's power (DC excluded) within ``width_hz`` of ``line_freq``
    and its harmonics below Nyquist: ``(W, C, T)`` -> ``(W, C)``; 0 for a constant channel."""
    n = windows.shape[-1]
    freqs = np.fft.rfftfreq(n, 1.0 / sfreq)  # (F,)
    harmonics = np.arange(line_freq, sfreq / 2.0 + width_hz, line_freq)
    near = (np.abs(freqs[:, None] - harmonics[None, :]) <= width_hz).any(axis=1) & (freqs > 0)  # (F,)
    out = np.zeros(windows.shape[:2])
    for a in range(0, windows.shape[0], _FFT_BATCH):
        power = np.abs(np.fft.rfft(windows[a : a + _FFT_BATCH], axis=-1)) ** 2  # (w, C, F)
        total = power[..., 1:].sum(axis=-1)  # (w, C)
        line = power[..., near].sum(axis=-1)
        out[a : a + _FFT_BATCH] = np.divide(line, total, out=np.zeros_like(line), where=total > 0)
    return out


@dataclass
class RejectionCounts:
    """Windows of one recording seen and rejected, in total and per rule (a window that
    breaks two rules counts under both)."""

    windows: int = 0
    rejected: int = 0
    amplitude: int = 0
    flat: int = 0
    line: int = 0

    def add(self, codes: np.ndarray) -> None:
        self.windows += int(codes.size)
        self.rejected += int((codes != 0).sum())
        for name, bit in RULES.items():
            setattr(self, name, getattr(self, name) + int(((codes & bit) != 0).sum()))

    def as_dict(self) -> dict[str, int]:
        return {"windows": self.windows, "rejected": self.rejected, "amplitude": self.amplitude,
                "flat": self.flat, "line": self.line}


def window_codes(signal: np.ndarray, starts: np.ndarray, window: int, criteria: RejectionCriteria,
                 ch_types: Sequence[str], sfreq: float, line_freq: float | None) -> np.ndarray:
    """Rejection codes ``(W,)`` of the windows ``signal[:, s : s + window]`` of one recording
    (``signal`` ``(C, n)``, ``starts`` ``(W,)``)."""
    starts = np.asarray(starts, dtype=np.int64)
    codes = np.zeros(len(starts), dtype=np.int64)
    if not len(starts):
        return codes
    view = np.lib.stride_tricks.sliding_window_view(signal, window, axis=1)  # (C, n - window + 1, window)
    for a in range(0, len(starts), 4 * _FFT_BATCH):  # bounded copies when windows overlap
        windows = view[:, starts[a : a + 4 * _FFT_BATCH]].transpose(1, 0, 2)  # (w, C, window)
        codes[a : a + 4 * _FFT_BATCH] = criteria.codes(windows, ch_types, sfreq, line_freq)
    return codes


def summarize(counts: Mapping[str, RejectionCounts]) -> RejectionCounts:
    """The totals over recordings."""
    total = RejectionCounts()
    for c in counts.values():
        for key, value in c.as_dict().items():
            setattr(total, key, getattr(total, key) + value)
    return total
