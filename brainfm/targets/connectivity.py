"""Phase-locking value between all channel pairs, over time within each window.

For channels ``i, j`` with instantaneous phases ``φ_i(t), φ_j(t)`` in a band
(Lachaux et al. 1999)

.. math:: \\mathrm{PLV}_{ij} = \\Big| \\frac{1}{T} \\sum_t e^{i(φ_i(t) - φ_j(t))} \\Big|,

computed for all pairs at once as a batched complex matrix product
``|u u^H| / T`` with unit phasors ``u = z / |z|`` of shape ``(B, C, T)``. Phases come
from :func:`brainfm.targets.filters.band_analytic` (brick-wall band-pass + FFT Hilbert).

Lachaux et al. average over trials at each time point; here, as in
``mne_connectivity.spectral_connectivity_time``, the average runs over the samples of
one window, which is what a per-window target needs.

Summary (:func:`plv_summary`), a fixed-length vector per band that depends neither on
the order nor on the number of channels (real channels only):

* ``mean``: mean PLV over the ordered off-diagonal pairs ``i != j``;
* ``std``: standard deviation of PLV over those pairs;
* ``strength_std``: standard deviation over channels of the node strength
  ``s_i = mean_{j != i} PLV_ij``. (The mean node strength equals ``mean`` exactly, so
  it is not repeated.)

References
----------
Lachaux, J.-P., Rodriguez, E., Martinerie, J., & Varela, F. J. (1999). Measuring phase
synchrony in brain signals. Human Brain Mapping, 8(4), 194-208.
"""

from __future__ import annotations

import torch

from brainfm.targets.bands import Bands, full_mask, masked_mean, masked_std
from brainfm.targets.filters import band_analytic

#: Names of the per-band PLV summary statistics, in output order.
PLV_STATS: tuple[str, ...] = ("mean", "std", "strength_std")


def unit_phasors(z: torch.Tensor, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``z / |z|`` with masked channels (and zero-amplitude samples) set to 0.

    Parameters
    ----------
    z : Tensor, complex, shape (B, C, ..., T)
        Analytic signals.
    channel_mask : Tensor of bool, shape (B, C), or None
        True for real channels.
    """
    mag = z.abs()
    u = z / mag.clamp_min(torch.finfo(mag.dtype).tiny)
    u = torch.where(mag > 0, u, torch.zeros((), dtype=u.dtype, device=u.device))
    if channel_mask is not None:
        shape = channel_mask.shape + (1,) * (z.dim() - 2)
        u = torch.where(channel_mask.reshape(shape), u, torch.zeros((), dtype=u.dtype, device=u.device))
    return u


def plv_from_phasors(u: torch.Tensor) -> torch.Tensor:
    """All-pairs PLV from unit phasors ``u`` of shape ``(..., C, T)``: ``(..., C, C)``."""
    return (u @ u.conj().transpose(-1, -2)).abs() / u.shape[-1]  # (..., C, T) @ (..., T, C)


def phase_locking_value(
    x: torch.Tensor,
    sfreq: float,
    bands: Bands | dict | None = None,
    channel_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Phase-locking value between all channel pairs in each band (Lachaux et al. 1999).

    Parameters
    ----------
    x : Tensor, shape (B, C, T)
        Signals.
    sfreq : float
        Sampling rate in Hz.
    bands : Bands, dict or None
        Bands; ``None`` uses the defaults.
    channel_mask : Tensor of bool, shape (B, C), or None
        True for real channels; rows and columns of padded channels are 0.

    Returns
    -------
    Tensor, shape (B, n_bands, C, C)
        Symmetric, ones on the diagonal of real channels, values in [0, 1].
    """
    z = band_analytic(x, sfreq, bands)  # (B, C, nb, T)
    u = unit_phasors(z, channel_mask).transpose(1, 2)  # (B, nb, C, T)
    return plv_from_phasors(u)  # (B, nb, C, C)


def plv_summary(plv: torch.Tensor, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Order- and count-invariant summary of PLV matrices (see module docstring).

    Parameters
    ----------
    plv : Tensor, shape (B, n_bands, C, C)
        Output of :func:`phase_locking_value`.
    channel_mask : Tensor of bool, shape (B, C), or None
        True for real channels.

    Returns
    -------
    Tensor, shape (B, n_bands, 3)
        ``mean``, ``std`` and ``strength_std`` per band (:data:`PLV_STATS`). ``nan``
        when a window has fewer than two real channels.
    """
    b, _, c, _ = plv.shape
    real = full_mask(plv[:, 0], channel_mask)  # (B, C)
    eye = torch.eye(c, dtype=torch.bool, device=plv.device)
    pair = (real[:, :, None] & real[:, None, :] & ~eye)[:, None]  # (B, 1, C, C)
    flat = plv.flatten(-2)  # (B, nb, C*C)
    mean = masked_mean(flat, pair.flatten(-2))
    std = masked_std(flat, pair.flatten(-2))
    strength = masked_mean(plv, pair, dim=-1)  # (B, nb, C): mean PLV to the other real channels
    strength_std = masked_std(strength, real[:, None, :])
    return torch.stack([mean, std, strength_std], dim=-1)  # (B, nb, 3)
