"""Welch power spectral density and band power, batched over windows and channels.

:func:`welch_psd` is Welch's averaged modified periodogram (Welch 1967): the signal is
cut into segments of ``n_per_seg`` samples that overlap by ``n_overlap``, each segment
has its mean removed (``detrend='constant'``), is tapered by a periodic window, zero-
padded to ``n_fft`` and Fourier transformed; the one-sided power spectral densities
are averaged over segments. Scaling is ``'density'`` (units², per Hz), exactly as
``scipy.signal.welch`` / :func:`mne.time_frequency.psd_array_welch` compute it, so the
two agree to float32 rounding on the same ``n_fft``, ``n_overlap`` and ``window``.
Note that MNE's default window is Hamming and its default overlap is 0; brainfm's
defaults are Hann and 50 % overlap.

Band power integrates the PSD over a band by the rectangle rule: the sum of the bins
``lo <= f < hi`` times the bin width ``sfreq / n_fft``.

References
----------
Welch, P. D. (1967). The use of fast Fourier transform for the estimation of power
spectra. IEEE Transactions on Audio and Electroacoustics, 15(2), 70-73.
"""

from __future__ import annotations

import math

import torch

from brainfm.targets.bands import Bands, as_bands

_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "boxcar": lambda n, **kw: torch.ones(n, **{k: v for k, v in kw.items() if k != "periodic"}),
}


def welch_psd(
    x: torch.Tensor,
    sfreq: float,
    n_fft: int = 256,
    n_overlap: int | None = None,
    n_per_seg: int | None = None,
    window: str = "hann",
    fmin: float = 0.0,
    fmax: float = math.inf,
    remove_dc: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Welch PSD of ``x`` along its last axis (Welch 1967).

    Parameters
    ----------
    x : Tensor, shape (..., T)
        Real signal, e.g. ``(B, C, T)`` in µV.
    sfreq : float
        Sampling rate in Hz.
    n_fft : int
        FFT length; sets the frequency resolution ``sfreq / n_fft``.
    n_overlap : int or None
        Samples shared by consecutive segments; ``None`` means 50 % of ``n_per_seg``.
    n_per_seg : int or None
        Segment length, at most ``n_fft`` (zero-padded to it); ``None`` means ``n_fft``.
    window : {'hann', 'hamming', 'boxcar'}
        Periodic taper, as ``scipy.signal.get_window`` builds it.
    fmin, fmax : float
        Keep the frequencies ``fmin <= f <= fmax`` (MNE's convention).
    remove_dc : bool
        Subtract each segment's mean before tapering (``detrend='constant'``).

    Returns
    -------
    psd : Tensor, shape (..., F)
        One-sided PSD in ``x``'s units squared per Hz (µV²/Hz for µV input).
    freqs : Tensor, shape (F,)
        Bin frequencies in Hz.
    """
    n_times = x.shape[-1]
    n_per_seg = n_fft if n_per_seg is None else min(int(n_per_seg), n_fft)
    if n_per_seg > n_times:
        raise ValueError(f"n_per_seg={n_per_seg} is longer than the signal ({n_times} samples)")
    n_overlap = n_per_seg // 2 if n_overlap is None else int(n_overlap)
    if not 0 <= n_overlap < n_per_seg:
        raise ValueError(f"need 0 <= n_overlap < n_per_seg, got {n_overlap} and {n_per_seg}")
    if window not in _WINDOWS:
        raise ValueError(f"window must be one of {sorted(_WINDOWS)}, got {window!r}")
    step = n_per_seg - n_overlap

    seg = x.unfold(-1, n_per_seg, step)  # (..., S, n_per_seg); trailing samples dropped like scipy
    if remove_dc:
        seg = seg - seg.mean(-1, keepdim=True)
    win = _WINDOWS[window](n_per_seg, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.fft.rfft(seg * win, n=n_fft)  # (..., S, n_fft // 2 + 1)
    power = spec.real.square() + spec.imag.square()
    psd = power.mean(-2) / (sfreq * win.square().sum())  # (..., F)
    # One-sided: double every bin except DC and (for even n_fft) Nyquist.
    stop = None if n_fft % 2 else -1
    psd = torch.cat([psd[..., :1], 2.0 * psd[..., 1:stop], psd[..., stop:] if stop else psd[..., :0]], dim=-1)

    freqs = torch.arange(n_fft // 2 + 1, dtype=x.dtype, device=x.device) * (sfreq / n_fft)
    keep = (freqs >= fmin) & (freqs <= fmax)
    if not bool(keep.any()):
        raise ValueError(f"no frequencies between fmin={fmin} and fmax={fmax}")
    return psd[..., keep], freqs[keep]


def band_power(psd: torch.Tensor, freqs: torch.Tensor, bands: Bands | dict | None = None) -> torch.Tensor:
    """Absolute power per band by summing PSD bins ``lo <= f < hi`` times the bin width.

    Parameters
    ----------
    psd : Tensor, shape (..., F)
        Output of :func:`welch_psd`.
    freqs : Tensor, shape (F,)
        Bin frequencies (evenly spaced).
    bands : Bands, dict or None
        Bands to integrate; ``None`` uses the defaults.

    Returns
    -------
    Tensor, shape (..., n_bands)
        Band power in the PSD's units times Hz (µV² for µV input).
    """
    bands = as_bands(bands)
    df = (freqs[1] - freqs[0]) if freqs.numel() > 1 else freqs.new_ones(())
    masks = bands.masks(freqs).to(psd.dtype)  # (nb, F)
    return (psd @ masks.T) * df  # (..., F) @ (F, nb) -> (..., nb)


def total_power(psd: torch.Tensor, freqs: torch.Tensor, bands: Bands | dict | None = None) -> torch.Tensor:
    """Power over ``bands.total`` (1-45 Hz by default), shape ``(...,)``."""
    bands = as_bands(bands)
    df = (freqs[1] - freqs[0]) if freqs.numel() > 1 else freqs.new_ones(())
    return (psd * bands.total_mask(freqs).to(psd.dtype)).sum(-1) * df


def relative_band_power(psd: torch.Tensor, freqs: torch.Tensor, bands: Bands | dict | None = None) -> torch.Tensor:
    """Band power over total power in ``bands.total``, per channel, shape ``(..., n_bands)``.

    With the default bands, which tile 1-45 Hz, the relative powers of a channel sum
    to one. A flat (all-zero) channel gives ``nan``.
    """
    bands = as_bands(bands)
    return band_power(psd, freqs, bands) / total_power(psd, freqs, bands).unsqueeze(-1)


def log_band_power(psd: torch.Tensor, freqs: torch.Tensor, bands: Bands | dict | None = None) -> torch.Tensor:
    """Natural log of absolute band power (``log µV²`` for µV input), shape ``(..., n_bands)``.

    Power is floored at the smallest normal float of its dtype, so a flat channel
    gives a large negative number rather than ``-inf``.
    """
    bp = band_power(psd, freqs, bands)
    return bp.clamp_min(torch.finfo(bp.dtype).tiny).log()
