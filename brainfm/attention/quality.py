"""The signal-quality gate: a window the indices cannot be trusted on becomes ``signal-bad``.

Checked on the *unfiltered* window in µV (what the amplifier delivered, before any band-pass
or notch hides the problem), per channel:

``nan``
    any non-finite sample (a dropped packet, a NaN burst): the whole window is bad.
``flat``
    standard deviation below ``flat_uv`` (a disconnected or saturated-to-constant lead).
``clipped``
    more than ``clip_fraction`` of the samples sit at the channel's own extreme value
    (flat tops of an amplifier at its rails), or any sample beyond ``max_abs_uv``.
``line-noise``
    power within ±1 Hz of the line frequency above ``line_ratio`` times the 1-45 Hz power
    (an unplugged reference or a high-impedance electrode picking up the mains).

A window is bad when any sample is non-finite, or when the bad channels exceed
``max_bad_fraction`` of the montage; otherwise its bad channels are left out of the indices.
``no-data`` (a stream that stopped) is decided by the live runner from the clock, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import welch

REASONS = ("nan", "flat", "clipped", "line-noise", "no-data")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the gate (µV, fractions, Hz); see the module docstring."""

    flat_uv: float = 0.5
    clip_fraction: float = 0.05
    max_abs_uv: float = 1500.0
    line_freq: float = 50.0
    line_ratio: float = 1.0
    max_bad_fraction: float = 0.5


@dataclass(frozen=True)
class Quality:
    """The gate's verdict on one window."""

    ok: bool
    reasons: tuple[str, ...] = ()
    bad_channels: tuple[str, ...] = ()
    usable: np.ndarray = field(default=None, repr=False)  # (C,) bool

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reasons": list(self.reasons), "bad_channels": list(self.bad_channels)}


def no_data() -> Quality:
    return Quality(False, ("no-data",))


def assess(x: np.ndarray, sfreq: float, ch_names, config: QualityConfig = QualityConfig()) -> Quality:
    """Gate one unfiltered window ``x`` (C, T) in µV sampled at ``sfreq``."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        return Quality(False, ("nan",), (), np.zeros(x.shape[0], dtype=bool))
    flat = x.std(axis=1) < config.flat_uv
    peak = np.abs(x).max(axis=1, keepdims=True)  # (C, 1)
    at_rail = (np.abs(x) >= peak * (1 - 1e-6)).mean(axis=1) > config.clip_fraction
    clipped = (at_rail & ~flat) | (peak[:, 0] > config.max_abs_uv)
    freqs, psd = welch(x, fs=sfreq, nperseg=min(x.shape[1], int(sfreq * 2)))  # (C, F)
    line = (np.abs(freqs - config.line_freq) <= 1.0)
    band = (freqs >= 1.0) & (freqs < 45.0)
    noisy = np.zeros(x.shape[0], dtype=bool)
    if line.any() and config.line_freq < sfreq / 2:
        noisy = psd[:, line].sum(1) > config.line_ratio * np.maximum(psd[:, band].sum(1), 1e-30)
    bad = flat | clipped | noisy
    reasons = tuple(r for r, m in (("flat", flat), ("clipped", clipped), ("line-noise", noisy)) if m.any())
    names = tuple(n for n, b in zip(ch_names, bad) if b)
    ok = bad.mean() <= config.max_bad_fraction and not bad.all()
    return Quality(bool(ok), reasons, names, ~bad)
