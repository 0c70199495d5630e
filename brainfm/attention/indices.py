"""Spectral indices of one window, the interpretable side of the attention detector.

Built on :mod:`brainfm.targets` (Welch PSD, relative band power over 1-45 Hz, channel
pooling over real channels), for a batch of windows ``(B, C, T)`` in µV:

=================  =================================  ==========================================
name               formula                            reading
=================  =================================  ==========================================
``engagement``     β / (α + θ)                        task engagement (Pope et al. 1995)
``theta_beta``     θ / β                              inattention / low vigilance (Lubar 1991)
``frontal_theta``  relative θ over frontal channels   working-memory load (Gevins et al. 1997)
``alpha_theta``    α / θ                              drops at drowsiness onset (alpha drop-out)
``slowing``        (δ + θ) / (α + β)                  EEG slowing: drowsiness and sleep
``delta_beta``     δ / β                              slow-to-fast ratio: sleep pressure
``posterior_alpha``relative α over posterior channels eyes closed / idling (Berger 1929)
=================  =================================  ==========================================

The drowsiness proxy of the arousal axis is ``delta_beta``, not (θ + α) / β: the latter is the
reciprocal of the engagement index, so an engagement × arousal plane built on both would be
one line. Nor ``slowing`` or ``alpha_theta``: on EEGMAT, mental arithmetic itself blocks α and
raises frontal θ, so both moved towards "drowsy" during the task in most test subjects
(``docs/attention.md``); δ/β leaves α and θ out and still separates sleep from wakefulness. Frontal channels are those with ``y > 0`` in head coordinates (in front of the
ear-to-ear line), posterior ones ``y < 0`` (:func:`brainfm.targets.posterior_mask`); both fall
back to all real channels when a montage has none or no positions.

References
----------
Pope, A. T., Bogart, E. H., & Bartolome, D. S. (1995). Biocybernetic system evaluates indices
of operator engagement in automated task. Biological Psychology, 40(1-2), 187-195.
Lubar, J. F. (1991). Discourse on the development of EEG diagnostics and biofeedback for
attention-deficit/hyperactivity disorders. Biofeedback and Self-Regulation, 16(3), 201-225.
Gevins, A., Smith, M. E., McEvoy, L., & Yu, D. (1997). High-resolution EEG mapping of cortical
activation related to working memory. Cerebral Cortex, 7(4), 374-385.
"""

from __future__ import annotations

import torch

from brainfm.targets import DEFAULT_BANDS, Bands, masked_mean, posterior_mask, relative_band_power, welch_psd

INDEX_NAMES = ("engagement", "theta_beta", "frontal_theta", "alpha_theta", "slowing", "delta_beta", "posterior_alpha")
BANDS = Bands(DEFAULT_BANDS)


def frontal_mask(sensor_geometry: torch.Tensor | None, channel_mask: torch.Tensor) -> torch.Tensor:
    """Real channels with ``y > 0`` (head coordinates); all real channels where there are none."""
    if sensor_geometry is None:
        return channel_mask
    frontal = channel_mask & (sensor_geometry[..., 1].to(channel_mask.device) > 0)  # NaN > 0 is False
    return torch.where(frontal.any(-1, keepdim=True), frontal, channel_mask)


def window_indices(x: torch.Tensor, sfreq: float, sensor_geometry: torch.Tensor | None = None,
                   channel_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The :data:`INDEX_NAMES` of each window.

    Parameters
    ----------
    x : Tensor, shape (B, C, T)
        Band-passed EEG in µV.
    sfreq : float
        Sampling rate (Hz).
    sensor_geometry : Tensor, shape (B, C, >=3), or None
        Positions in head coordinates (metres).
    channel_mask : Tensor of bool, shape (B, C), or None
        True for channels to use (the quality gate leaves flat or clipped ones out).

    Returns
    -------
    dict of str to Tensor, each shape (B,)
    """
    n_fft = int(2 ** round(torch.log2(torch.tensor(sfreq * 1.28)).item()))  # ~0.8 Hz bins (256 at 200 Hz)
    psd, freqs = welch_psd(x.float(), sfreq, n_fft=min(n_fft, x.shape[-1]))
    rel = relative_band_power(psd, freqs, BANDS)  # (B, C, n_bands)
    mask = torch.ones(rel.shape[:2], dtype=torch.bool) if channel_mask is None else channel_mask
    mask = mask & torch.isfinite(rel).all(-1)

    def pooled(band: str, where: torch.Tensor = mask) -> torch.Tensor:
        return masked_mean(rel[..., BANDS.index(band)], where)  # (B, C) -> (B,)

    delta, theta, alpha, beta = (pooled(b) for b in ("delta", "theta", "alpha", "beta"))
    return {
        "engagement": beta / (alpha + theta),
        "theta_beta": theta / beta,
        "frontal_theta": pooled("theta", frontal_mask(sensor_geometry, mask)),
        "alpha_theta": alpha / theta,
        "slowing": (delta + theta) / (alpha + beta),
        "delta_beta": delta / beta,
        "posterior_alpha": pooled("alpha", posterior_mask(sensor_geometry, mask)),
    }
