"""Per-user baseline: running statistics of the detector's axes over a calibration span.

The first ``calibration_s`` seconds of good signal (by default 60 s, ideally the person at
rest) are accumulated with :class:`brainfm.data.normalize.RunningMoments`, the same online
estimator the subject-adaptive normalisation uses; afterwards every window's features are
z-scored against that baseline, which is what makes the state thresholds per-user.
Features: ``log engagement`` (Pope et al. 1995), ``-log δ/β`` (arousal) and, with a
decoder, its engagement log-odds. Logs make the ratios' z-scores symmetric.
"""

from __future__ import annotations

import numpy as np

from brainfm.data.normalize import RunningMoments

FEATURES = ("engagement", "arousal", "decoder")
#: Smallest baseline standard deviation, so a near-constant feature cannot blow up its z-score.
STD_FLOOR = 1e-3


class Baseline:
    """Running mean and standard deviation of the feature vector, frozen once calibrated."""

    def __init__(self, n_features: int, seconds: float):
        self.moments = RunningMoments(n_features)
        self.seconds = seconds
        self.covered = 0.0  # seconds of good signal seen
        self.mean = self.std = None

    @property
    def ready(self) -> bool:
        return self.mean is not None

    def update(self, features: np.ndarray, hop_s: float) -> None:
        """Add one good window's features ``(K,)``; freeze after ``seconds`` of them."""
        if self.ready:
            return
        self.moments.update(np.asarray(features, dtype=np.float64)[:, None])  # (K,) -> (K, 1)
        self.covered += hop_s
        if self.covered >= self.seconds - 1e-9 and self.moments.count >= 2:
            self.mean = self.moments.mean
            self.std = np.maximum(np.sqrt(np.clip(np.diag(self.moments.covariance), 0, None)), STD_FLOOR)

    def z(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.std
