"""Band-limited analytic signals through one FFT, batched over windows, channels and bands.

Band-pass filter and Hilbert transform are fused in the frequency domain: with
``X = rfft(x)`` over the whole window, the analytic signal of band ``[lo, hi)`` is

.. math:: z_b = \\mathrm{ifft}(h \\cdot 1_{lo \\le f < hi} \\cdot X), \\qquad
          h = 1 \\text{ at DC and Nyquist}, \\; 2 \\text{ at } 0 < f < f_s/2,
          \\; 0 \\text{ at negative frequencies},

i.e. an ideal (brick-wall), zero-phase band-pass followed by the FFT Hilbert
transform that ``scipy.signal.hilbert`` computes. ``Re z_b`` is the band-passed signal,
``angle(z_b)`` its instantaneous phase and ``|z_b|`` its amplitude envelope.

Why brick-wall: it costs one forward FFT for all bands and one inverse FFT per band,
has no phase distortion and no transition band to tune, and is exactly reproducible in
numpy (:mod:`brainfm.targets.reference`). Its costs: the filter is circular (the window
is treated as periodic, so the wrap-around step between its last and first samples
rings into the edges) and the sharp edges give sinc ringing in time. For 5-s windows and
bands of a few Hz both effects are confined to a fraction of a second at the window ends.
"""

from __future__ import annotations

import torch

from brainfm.targets.bands import Bands, as_bands


def hilbert_weights(n_times: int, sfreq: float, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Weights ``(n_bands, n_times // 2 + 1)`` on ``rfft`` bins: band mask times ``h``.

    Parameters
    ----------
    n_times : int
        Window length in samples.
    sfreq : float
        Sampling rate in Hz.
    lo, hi : Tensor, shape (n_bands,)
        Band edges in Hz (half-open ``[lo, hi)``).
    """
    n_freqs = n_times // 2 + 1
    freqs = torch.arange(n_freqs, dtype=lo.dtype, device=lo.device) * (sfreq / n_times)
    h = torch.full((n_freqs,), 2.0, dtype=lo.dtype, device=lo.device)
    h[0] = 1.0
    if n_times % 2 == 0:
        h[-1] = 1.0  # Nyquist bin is its own mirror
    inband = (freqs[None, :] >= lo[:, None]) & (freqs[None, :] < hi[:, None])  # (nb, F)
    return inband.to(lo.dtype) * h


def band_analytic(x: torch.Tensor, sfreq: float, bands: Bands | dict | None = None) -> torch.Tensor:
    """Analytic signal of ``x`` in each band (brick-wall band-pass + FFT Hilbert).

    Parameters
    ----------
    x : Tensor, shape (..., T)
        Real signal, e.g. ``(B, C, T)``.
    sfreq : float
        Sampling rate in Hz.
    bands : Bands, dict or None
        Bands; ``None`` uses the defaults.

    Returns
    -------
    Tensor, complex, shape (..., n_bands, T)
        ``z_b(t)``; phase ``z.angle()``, amplitude envelope ``z.abs()``.
    """
    bands = as_bands(bands)
    n_times = x.shape[-1]
    real = x.dtype if x.is_floating_point() else torch.float32
    lo = torch.tensor([e[0] for e in bands.edges.values()], dtype=real, device=x.device)
    hi = torch.tensor([e[1] for e in bands.edges.values()], dtype=real, device=x.device)
    w = hilbert_weights(n_times, sfreq, lo, hi)  # (nb, F)
    spec = torch.fft.rfft(x.to(real), dim=-1)  # (..., F)
    spec = spec.unsqueeze(-2) * w  # (..., nb, F)
    # ifft with n=T zero-fills the negative-frequency half: the one-sided analytic spectrum.
    return torch.fft.ifft(spec, n=n_times, dim=-1)  # (..., nb, T)
