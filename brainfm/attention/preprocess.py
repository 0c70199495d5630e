"""The two preprocessing chains: offline zero-phase and live causal.

Both band-pass 0.3-75 Hz (capped at 0.45 × the sampling rate) and notch the line frequency
and its harmonics below the low-pass, like the ``eeg-fm`` conversion preset
(:mod:`brainfm.pipelines.presets`), at the source rate; windows are resampled to the model
rate afterwards (:func:`resample_window`).

``zero_phase``
    MNE's FIR filters applied forward and backward over the whole recording (no phase
    distortion, but every sample depends on future samples): what conversion does, and what
    ``brainfm detect`` uses by default.
``causal``
    :class:`CausalChain`: Butterworth band-pass (order 2 per edge) and IIR notches
    (Q = 30) as second-order sections run forward only, with their state carried from chunk
    to chunk, so a live stream filtered chunk by chunk equals the same samples filtered at
    once. Non-finite samples are held at the channel's last finite value before they reach
    the filter (a NaN would poison the IIR state for good); the quality gate still sees them.

The cost of the causal chain against the zero-phase one is measured in ``docs/attention.md``.
"""

from __future__ import annotations

import math

import mne
import numpy as np
from scipy.signal import butter, iirnotch, resample_poly, sosfilt, sosfilt_zi, tf2sos

CHAINS = ("zero-phase", "causal", "none")
L_FREQ = 0.3
H_FREQ = 75.0


def band_edges(sfreq: float, l_freq: float = L_FREQ, h_freq: float = H_FREQ) -> tuple[float, float]:
    return l_freq, min(h_freq, 0.45 * sfreq)


def notch_freqs(sfreq: float, line_freq: float | None, h_freq: float) -> list[float]:
    if not line_freq:
        return []
    return [f for f in np.arange(line_freq, h_freq + 1e-9, line_freq) if f < 0.5 * sfreq - 1]


def hold_nonfinite(x: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
    """``x`` (C, n) with each non-finite sample replaced by its channel's last finite value
    (``last`` (C,) before the first sample; zero if not given)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    x = x.copy()
    prev = np.zeros(x.shape[0]) if last is None else last.copy()
    for t in np.flatnonzero(bad.any(axis=0)):  # only columns that hold non-finite samples
        if t > 0:
            prev = np.where(bad[:, t - 1], prev, x[:, t - 1])
        x[bad[:, t], t] = prev[bad[:, t]]
    return x


def zero_phase(x: np.ndarray, sfreq: float, line_freq: float | None = 50.0) -> np.ndarray:
    """Offline chain on a whole recording ``(C, N)`` in µV: MNE FIR band-pass and notch, zero phase
    (non-finite samples held first, as the causal chain does)."""
    l_freq, h_freq = band_edges(sfreq)
    x = hold_nonfinite(np.asarray(x, dtype=np.float64))
    y = mne.filter.filter_data(x, sfreq, l_freq, h_freq, verbose="error")
    freqs = notch_freqs(sfreq, line_freq, h_freq)
    if freqs:
        y = mne.filter.notch_filter(y, sfreq, freqs, verbose="error")
    return y


class CausalChain:
    """Forward-only band-pass + notch over a multichannel stream, chunk by chunk.

    Parameters
    ----------
    sfreq : float
        Source sampling rate (Hz).
    n_channels : int
    line_freq : float or None
        Mains frequency (50 or 60 Hz); None skips the notch.
    """

    def __init__(self, sfreq: float, n_channels: int, line_freq: float | None = 50.0):
        l_freq, h_freq = band_edges(sfreq)
        sos = [butter(2, [l_freq, h_freq], btype="bandpass", fs=sfreq, output="sos")]
        for f in notch_freqs(sfreq, line_freq, h_freq):
            b, a = iirnotch(f, 30.0, fs=sfreq)
            sos.append(tf2sos(b, a))
        self.sos = np.concatenate(sos)  # (n_sections, 6)
        self.n_channels = n_channels
        self._zi: np.ndarray | None = None  # (n_sections, C, 2)
        self._last = np.zeros(n_channels)

    def reset(self) -> None:
        self._zi = None

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Filter the next ``(C, n)`` samples (µV); returns ``(C, n)``."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape[1] == 0:
            return chunk
        chunk = hold_nonfinite(chunk, self._last)
        self._last = chunk[:, -1].copy()
        if self._zi is None:  # start in steady state for the first sample: no step transient
            zi = sosfilt_zi(self.sos)  # (n_sections, 2)
            self._zi = zi[:, None, :] * chunk[None, :, :1]  # (n_sections, C, 2)
        y, self._zi = sosfilt(self.sos, chunk, axis=1, zi=self._zi)
        return y


def resample_window(x: np.ndarray, sfreq: float, target: float) -> np.ndarray:
    """Polyphase resampling of one window ``(C, T)`` from ``sfreq`` to ``target`` Hz."""
    if abs(sfreq - target) < 1e-9:
        return np.asarray(x)
    frac = math.gcd(int(round(sfreq * 1000)), int(round(target * 1000)))
    up, down = int(round(target * 1000)) // frac, int(round(sfreq * 1000)) // frac
    return resample_poly(x, up, down, axis=-1)


__all__ = ["CHAINS", "CausalChain", "band_edges", "hold_nonfinite", "notch_freqs", "resample_window", "zero_phase"]
