"""Straightforward numpy/scipy references for the targets, shared by tests and benchmarks.

Written for clarity, one channel or one pair at a time, with no code shared with the
torch implementations: band-pass by zeroing FFT bins outside the band (``numpy.fft``),
analytic signal by ``scipy.signal.hilbert``, PLV by an explicit loop over pairs (Lachaux
et al. 1999), and Tort et al.'s (2010) modulation index by an explicit loop over phase
bins. Welch PSD, sample entropy and Hjorth parameters are checked against MNE and
antropy directly, so they have no reference here.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import hilbert


def bandpass_fft(x: np.ndarray, sfreq: float, lo: float, hi: float) -> np.ndarray:
    """Ideal band-pass of ``x`` (..., T) keeping the bins ``lo <= f < hi``."""
    spec = np.fft.rfft(x, axis=-1)
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / sfreq)
    spec[..., ~((freqs >= lo) & (freqs < hi))] = 0.0
    return np.fft.irfft(spec, n=x.shape[-1], axis=-1)


def plv_reference(x: np.ndarray, sfreq: float, lo: float, hi: float) -> np.ndarray:
    """PLV over time between all channel pairs of one window ``x`` (C, T): ``(C, C)``."""
    phase = np.angle(hilbert(bandpass_fft(np.asarray(x, dtype=np.float64), sfreq, lo, hi), axis=-1))
    n_ch = x.shape[0]
    plv = np.ones((n_ch, n_ch))
    for i in range(n_ch):
        for j in range(i + 1, n_ch):
            plv[i, j] = plv[j, i] = np.abs(np.mean(np.exp(1j * (phase[i] - phase[j]))))
    return plv


def modulation_index_reference(
    x: np.ndarray, sfreq: float, phase_band: tuple[float, float], amp_band: tuple[float, float], n_bins: int = 18
) -> float:
    """Tort's modulation index of one channel ``x`` (T,)."""
    x = np.asarray(x, dtype=np.float64)
    phase = np.angle(hilbert(bandpass_fft(x, sfreq, *phase_band)))
    amp = np.abs(hilbert(bandpass_fft(x, sfreq, *amp_band)))
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    mean_amp = np.zeros(n_bins)
    for k in range(n_bins):
        upper = phase <= edges[k + 1] if k == n_bins - 1 else phase < edges[k + 1]
        sel = (phase >= edges[k]) & upper
        mean_amp[k] = amp[sel].mean() if sel.any() else 0.0
    p = mean_amp / mean_amp.sum()
    nz = p > 0
    entropy = -np.sum(p[nz] * np.log(p[nz]))
    return float((np.log(n_bins) - entropy) / np.log(n_bins))
