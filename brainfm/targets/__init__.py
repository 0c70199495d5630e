"""Neurodynamics targets in batched torch: band power, phase locking, phase-amplitude
coupling, complexity and derived indices of windows ``(B, C, T)``.

Every function runs on any device, has no Python loop over windows or channels, and
respects a ``(B, C)`` channel mask. :func:`compute_targets` assembles the fixed-length
target vector of each window; :class:`TargetNormalizer` z-scores it with statistics
fitted over a training store. Numpy references for tests and benchmarks live in
:mod:`brainfm.targets.reference` (not imported here).
"""

from brainfm.targets.bands import DEFAULT_BANDS, Bands, masked_mean, masked_std
from brainfm.targets.complexity import hjorth_params, sample_entropy
from brainfm.targets.connectivity import PLV_STATS, phase_locking_value, plv_summary
from brainfm.targets.coupling import modulation_index, modulation_index_from
from brainfm.targets.filters import band_analytic
from brainfm.targets.indices import engagement_index, posterior_alpha, posterior_mask, theta_beta_ratio
from brainfm.targets.normalizer import TargetNormalizer
from brainfm.targets.spectral import band_power, log_band_power, relative_band_power, total_power, welch_psd
from brainfm.targets.vector import FEATURES, TargetSpec, compute_targets, target_names

__all__ = [
    "DEFAULT_BANDS", "FEATURES", "PLV_STATS", "Bands", "TargetNormalizer", "TargetSpec", "band_analytic",
    "band_power", "compute_targets", "engagement_index", "hjorth_params", "log_band_power", "masked_mean",
    "masked_std", "modulation_index", "modulation_index_from", "phase_locking_value", "plv_summary",
    "posterior_alpha", "posterior_mask", "relative_band_power", "sample_entropy", "target_names",
    "theta_beta_ratio", "total_power", "welch_psd",
]
