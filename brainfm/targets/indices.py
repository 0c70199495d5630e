"""Derived spectral indices of attention and arousal, per window.

All three are built from *relative* band power (band / total 1-45 Hz power, per channel,
see :func:`brainfm.targets.spectral.relative_band_power`), averaged over the real
channels first, so each channel weighs the same whatever its amplitude, and the result
does not depend on channel order or count. (Ratios of channel-averaged relative power
equal ratios of summed power when all channels have the same total power; Pope et al.
1995 summed absolute power over Cz, Pz, P3 and P4.)

* ``theta_beta_ratio``: ``<θ> / <β>``.
* ``engagement_index``: ``<β> / (<α> + <θ>)`` (Pope et al. 1995).
* ``posterior_alpha``: ``<α>`` over posterior channels, those whose position has
  ``y < 0`` in MNE head coordinates (behind the ear-to-ear line); all real channels
  when a window has no posterior channel or no geometry is given. Unknown (``nan``)
  positions never count as posterior.

References
----------
Pope, A. T., Bogart, E. H., & Bartolome, D. S. (1995). Biocybernetic system evaluates
indices of operator engagement in automated task. Biological Psychology, 40(1-2),
187-195.
"""

from __future__ import annotations

import torch

from brainfm.targets.bands import Bands, as_bands, full_mask, masked_mean


def _pooled(rel: torch.Tensor, bands: Bands, name: str, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(rel[..., bands.index(name)], mask)  # (B, C) -> (B,)


def theta_beta_ratio(rel: torch.Tensor, bands: Bands | dict | None = None, channel_mask=None) -> torch.Tensor:
    """θ/β ratio of channel-averaged relative power.

    Parameters
    ----------
    rel : Tensor, shape (B, C, n_bands)
        Relative band power.
    bands : Bands, dict or None
        The bands ``rel`` was computed with; must name ``theta`` and ``beta``.
    channel_mask : Tensor of bool, shape (B, C), or None
        True for real channels.

    Returns
    -------
    Tensor, shape (B,)
    """
    bands, mask = as_bands(bands), full_mask(rel, channel_mask)
    return _pooled(rel, bands, "theta", mask) / _pooled(rel, bands, "beta", mask)


def engagement_index(rel: torch.Tensor, bands: Bands | dict | None = None, channel_mask=None) -> torch.Tensor:
    """Engagement index β / (α + θ) of channel-averaged relative power (Pope et al. 1995).

    Parameters and return as :func:`theta_beta_ratio`; ``bands`` must name ``theta``,
    ``alpha`` and ``beta``.
    """
    bands, mask = as_bands(bands), full_mask(rel, channel_mask)
    alpha_theta = _pooled(rel, bands, "alpha", mask) + _pooled(rel, bands, "theta", mask)
    return _pooled(rel, bands, "beta", mask) / alpha_theta


def posterior_mask(sensor_geometry: torch.Tensor | None, channel_mask: torch.Tensor) -> torch.Tensor:
    """Real channels with ``y < 0`` (head coordinates); all real channels where there are none.

    Parameters
    ----------
    sensor_geometry : Tensor, shape (B, C, >=3), or None
        Positions in the first three columns (``x, y, z``; orientation may follow).
    channel_mask : Tensor of bool, shape (B, C)
        True for real channels.
    """
    if sensor_geometry is None:
        return channel_mask
    y = sensor_geometry[..., 1].to(channel_mask.device)
    posterior = channel_mask & (y < 0)  # nan < 0 is False: unknown positions never count
    has_any = posterior.any(-1, keepdim=True)  # (B, 1)
    return torch.where(has_any, posterior, channel_mask)


def posterior_alpha(
    rel: torch.Tensor,
    sensor_geometry: torch.Tensor | None,
    bands: Bands | dict | None = None,
    channel_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative α power averaged over posterior channels, shape ``(B,)``.

    Parameters
    ----------
    rel : Tensor, shape (B, C, n_bands)
        Relative band power; ``bands`` must name ``alpha``.
    sensor_geometry : Tensor, shape (B, C, 6), or None
        Positions (first three columns) in head coordinates.
    bands : Bands, dict or None
        The bands ``rel`` was computed with.
    channel_mask : Tensor of bool, shape (B, C), or None
        True for real channels.
    """
    bands = as_bands(bands)
    mask = posterior_mask(sensor_geometry, full_mask(rel, channel_mask))
    return _pooled(rel, bands, "alpha", mask)
