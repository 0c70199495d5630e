"""The neurodynamics target vector: one fixed-length row of scalars per window.

:func:`compute_targets` turns windows ``(B, C, T)`` into ``(B, K)`` float32 targets
named by :func:`target_names`. Per-channel features are pooled by their mean over the
real channels (non-finite values, e.g. the sample entropy of a flat channel, are
skipped); connectivity enters through its order-invariant summary. Padded channels are
zeroed before anything is computed and masked out of every pooling, so the vector does
not depend on channel order, channel count or what padding holds.

=================  ==========================================  =========================
feature key        entries (default bands)                     pooled as
=================  ==========================================  =========================
``relpow``         ``relpow_<band>``, band / 1-45 Hz power     mean over channels
``logpow``         ``logpow_<band>``, ln band power (µV²)      mean over channels
``hjorth``         ``hjorth_mobility`` (Hz), ``..._complexity`` mean over channels
``sampen``         ``sampen`` (m = 2, r = 0.2 std)             mean over channels
``plv``            ``plv_<stat>_<band>``, stat in mean, std,   :func:`.plv_summary`
                   strength_std
``pac``            ``pac_mi_<phase>_<amp>``, Tort MI           mean over channels
``indices``        ``theta_beta_ratio``, ``engagement_index``, :mod:`.indices`
                   ``posterior_alpha``
=================  ==========================================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from brainfm.targets.bands import Bands, as_bands, full_mask, masked_mean
from brainfm.targets.complexity import hjorth_params, sample_entropy
from brainfm.targets.connectivity import PLV_STATS, plv_from_phasors, plv_summary, unit_phasors
from brainfm.targets.coupling import modulation_index_from
from brainfm.targets.filters import band_analytic
from brainfm.targets.indices import engagement_index, posterior_alpha, theta_beta_ratio
from brainfm.targets.spectral import log_band_power, relative_band_power, welch_psd

#: Feature groups :class:`TargetSpec` can select, in output order.
FEATURES: tuple[str, ...] = ("relpow", "logpow", "hjorth", "sampen", "plv", "pac", "indices")


@dataclass(frozen=True)
class TargetSpec:
    """Which targets to compute, and how.

    Parameters
    ----------
    features : tuple of str
        Feature groups, a subset of :data:`FEATURES`; output follows :data:`FEATURES` order.
    bands : Bands or dict
        Frequency bands (default delta 1-4, theta 4-8, alpha 8-13, beta 13-30,
        gamma 30-45 Hz); ``indices`` needs ``theta``, ``alpha`` and ``beta``.
    pac_pairs : tuple of (str, str)
        ``(phase band, amplitude band)`` pairs for the modulation index.
    pac_bins : int
        Phase bins of the modulation index (18 in Tort et al. 2010).
    welch_seconds : float
        Welch segment (and FFT) length in seconds; capped at the window length.
    welch_overlap : float
        Overlap of consecutive Welch segments, as a fraction in ``[0, 1)``.
    welch_window : str
        Welch taper: ``'hann'``, ``'hamming'`` or ``'boxcar'``.
    sampen_order, sampen_ratio : int, float
        Sample entropy embedding dimension ``m`` and tolerance ``r / std``.
    """

    features: tuple[str, ...] = FEATURES
    bands: Bands = field(default_factory=Bands)
    pac_pairs: tuple[tuple[str, str], ...] = (("theta", "gamma"), ("alpha", "gamma"))
    pac_bins: int = 18
    welch_seconds: float = 2.0
    welch_overlap: float = 0.5
    welch_window: str = "hann"
    sampen_order: int = 2
    sampen_ratio: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", as_bands(self.bands))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "pac_pairs", tuple((str(p), str(a)) for p, a in self.pac_pairs))
        unknown = set(self.features) - set(FEATURES)
        if unknown or not self.features:
            raise ValueError(f"features must be a non-empty subset of {FEATURES}, got {self.features}")
        needed = {n for pair in self.pac_pairs for n in pair} if "pac" in self.features else set()
        if "indices" in self.features:
            needed |= {"theta", "alpha", "beta"}
        missing = needed - set(self.bands.names)
        if missing:
            raise ValueError(f"bands {sorted(missing)} are needed by the selected features but not defined")
        if "pac" in self.features and (not self.pac_pairs or self.pac_bins < 2):
            raise ValueError("pac needs at least one pair and pac_bins >= 2")
        if not 0.0 <= self.welch_overlap < 1.0 or self.welch_seconds <= 0:
            raise ValueError("need welch_seconds > 0 and 0 <= welch_overlap < 1")
        if self.sampen_order < 1 or self.sampen_ratio <= 0:
            raise ValueError("need sampen_order >= 1 and sampen_ratio > 0")


def target_names(spec: TargetSpec | None = None) -> list[str]:
    """Names of the ``K`` columns of :func:`compute_targets` for ``spec``."""
    spec = spec or TargetSpec()
    bands = spec.bands.names
    groups = {
        "relpow": [f"relpow_{b}" for b in bands],
        "logpow": [f"logpow_{b}" for b in bands],
        "hjorth": ["hjorth_mobility", "hjorth_complexity"],
        "sampen": ["sampen"],
        "plv": [f"plv_{s}_{b}" for b in bands for s in PLV_STATS],
        "pac": [f"pac_mi_{p}_{a}" for p, a in spec.pac_pairs],
        "indices": ["theta_beta_ratio", "engagement_index", "posterior_alpha"],
    }
    return [name for f in FEATURES if f in spec.features for name in groups[f]]


@torch.no_grad()
def compute_targets(
    x: torch.Tensor,
    sfreq: float,
    channel_mask: torch.Tensor | None = None,
    sensor_geometry: torch.Tensor | None = None,
    spec: TargetSpec | None = None,
) -> torch.Tensor:
    """Neurodynamics target vector of each window.

    Parameters
    ----------
    x : Tensor, shape (B, C, T)
        Windows in physical units (µV for EEG); any float dtype, any device.
    sfreq : float
        Sampling rate in Hz.
    channel_mask : Tensor of bool, shape (B, C), or None
        True for real channels; ``None`` means all channels are real.
    sensor_geometry : Tensor, shape (B, C, 6), or None
        Positions (first three columns, head coordinates) for ``posterior_alpha``;
        ``None`` pools it over all real channels.
    spec : TargetSpec or None
        What to compute; ``None`` is the default spec.

    Returns
    -------
    Tensor, float32, shape (B, K)
        Columns named by :func:`target_names`.
    """
    spec = spec or TargetSpec()
    if x.dim() != 3:
        raise ValueError(f"x must be (B, C, T), got shape {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    mask = full_mask(x, channel_mask)  # (B, C)
    x = torch.where(mask[..., None], x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))  # (B, C, T)
    bands, feats = spec.bands, spec.features
    out: list[torch.Tensor] = []

    def pool(values: torch.Tensor) -> torch.Tensor:  # (B, C, k) -> (B, k)
        return masked_mean(values, mask[..., None], dim=1, finite_only=True)

    if {"relpow", "logpow", "indices"} & set(feats):
        n_fft = min(round(spec.welch_seconds * sfreq), x.shape[-1])
        psd, freqs = welch_psd(x, sfreq, n_fft=n_fft, n_overlap=int(n_fft * spec.welch_overlap),
                               window=spec.welch_window)  # (B, C, F)
        rel = relative_band_power(psd, freqs, bands)  # (B, C, nb)
        if "relpow" in feats:
            out.append(pool(rel))
        if "logpow" in feats:
            out.append(pool(log_band_power(psd, freqs, bands)))
    if "hjorth" in feats:
        out.append(pool(torch.stack(hjorth_params(x, sfreq), dim=-1)))  # (B, C, 2) -> (B, 2)
    if "sampen" in feats:
        se = x.new_full(mask.shape, float("nan"))  # (B, C); real channels only are computed
        se[mask] = sample_entropy(x[mask], spec.sampen_order, spec.sampen_ratio)  # (n_real, T) -> (n_real,)
        out.append(pool(se[..., None]))
    if {"plv", "pac"} & set(feats):
        z = band_analytic(x, sfreq, bands)  # (B, C, nb, T) complex
        if "plv" in feats:
            u = unit_phasors(z, mask).transpose(1, 2)  # (B, nb, C, T)
            out.append(plv_summary(plv_from_phasors(u), mask).flatten(1))  # (B, nb, 3) -> (B, nb * 3)
        if "pac" in feats:
            ph = torch.stack([z[:, :, bands.index(p)].angle() for p, _ in spec.pac_pairs], dim=2)  # (B, C, P, T)
            amp = torch.stack([z[:, :, bands.index(a)].abs() for _, a in spec.pac_pairs], dim=2)
            out.append(pool(modulation_index_from(ph, amp, spec.pac_bins)))  # (B, C, P) -> (B, P)
    if "indices" in feats:
        out.append(torch.stack([theta_beta_ratio(rel, bands, mask), engagement_index(rel, bands, mask),
                                posterior_alpha(rel, sensor_geometry, bands, mask)], dim=-1))  # (B, 3)
    return torch.cat(out, dim=-1).to(torch.float32)  # (B, K)
