"""Phase-amplitude coupling: Tort's modulation index, batched over windows and channels.

For a phase band (e.g. theta) and an amplitude band (e.g. gamma) of the same channel
(Tort et al. 2010):

1. phase ``φ(t)`` of the phase band and envelope ``A(t)`` of the amplitude band, from
   :func:`brainfm.targets.filters.band_analytic`;
2. ``N`` equal phase bins over ``[-π, π)`` (18 by default, 20° each); the mean
   amplitude per bin ``<A>_k`` is a scatter-add of ``A`` by bin index divided by the
   bin counts (batched, no loop);
3. ``P_k = <A>_k / Σ_k <A>_k``, entropy ``H(P) = -Σ_k P_k log P_k``;
4. ``MI = (log N - H(P)) / log N``, the normalised Kullback-Leibler distance of ``P``
   from the uniform distribution: 0 for no coupling, up to 1.

Empty bins (possible only for very short windows) contribute ``<A>_k = 0`` and
``0 log 0 = 0``.

References
----------
Tort, A. B. L., Komorowski, R., Eichenbaum, H., & Kopell, N. (2010). Measuring
phase-amplitude coupling between neuronal oscillations of different frequencies.
Journal of Neurophysiology, 104(2), 1195-1210.
"""

from __future__ import annotations

import math

import torch

from brainfm.targets.bands import Bands, as_bands
from brainfm.targets.filters import band_analytic


def modulation_index_from(phase: torch.Tensor, amplitude: torch.Tensor, n_bins: int = 18) -> torch.Tensor:
    """Tort's modulation index from a phase and an amplitude time series.

    Parameters
    ----------
    phase : Tensor, shape (..., T)
        Instantaneous phase in radians, in ``[-π, π]``.
    amplitude : Tensor, shape (..., T)
        Amplitude envelope (non-negative).
    n_bins : int
        Number of phase bins ``N``.

    Returns
    -------
    Tensor, shape (...)
        Modulation index in ``[0, 1]``; ``nan`` when the amplitude is zero throughout.
    """
    width = 2 * math.pi / n_bins
    idx = ((phase + math.pi) / width).floor().long().clamp_(0, n_bins - 1)  # (..., T), φ = π joins the last bin
    shape = amplitude.shape[:-1] + (n_bins,)
    sums = amplitude.new_zeros(shape).scatter_add_(-1, idx, amplitude)  # (..., N)
    counts = amplitude.new_zeros(shape).scatter_add_(-1, idx, torch.ones_like(amplitude))
    mean_amp = sums / counts.clamp_min(1.0)
    p = mean_amp / mean_amp.sum(-1, keepdim=True)  # (..., N)
    plogp = torch.where(p > 0, p * p.clamp_min(torch.finfo(p.dtype).tiny).log(), torch.zeros_like(p))
    entropy = -plogp.sum(-1)
    log_n = math.log(n_bins)
    return (log_n - entropy) / log_n


def modulation_index(
    x: torch.Tensor,
    sfreq: float,
    pairs: tuple[tuple[str, str], ...] = (("theta", "gamma"), ("alpha", "gamma")),
    bands: Bands | dict | None = None,
    n_bins: int = 18,
) -> torch.Tensor:
    """Phase-amplitude coupling of each channel by Tort's modulation index (Tort et al. 2010).

    Parameters
    ----------
    x : Tensor, shape (B, C, T)
        Signals.
    sfreq : float
        Sampling rate in Hz.
    pairs : tuple of (str, str)
        ``(phase band, amplitude band)`` names, looked up in ``bands``.
    bands : Bands, dict or None
        Bands; ``None`` uses the defaults.
    n_bins : int
        Number of phase bins (18 in Tort et al. 2010).

    Returns
    -------
    Tensor, shape (B, C, n_pairs)
        Modulation index per channel and pair.
    """
    bands = as_bands(bands)
    used = list(dict.fromkeys(name for pair in pairs for name in pair))
    sub = Bands(edges={name: bands[name] for name in used}, total=bands.total)
    z = band_analytic(x, sfreq, sub)  # (B, C, nu, T)
    ph = torch.stack([z[..., used.index(p), :].angle() for p, _ in pairs], dim=-2)  # (B, C, P, T)
    amp = torch.stack([z[..., used.index(a), :].abs() for _, a in pairs], dim=-2)  # (B, C, P, T)
    return modulation_index_from(ph, amp, n_bins)  # (B, C, P)
