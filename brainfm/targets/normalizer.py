"""Running z-scoring of target vectors, fitted over a training store.

:class:`TargetNormalizer` accumulates per-target count, mean and sum of squared
deviations in float64 with Chan et al.'s parallel merge of Welford's update, one batch
at a time, so statistics over millions of windows are exact to float64 and independent
of batch size. Non-finite entries are skipped per target. The statistics are buffers:
they move with ``.to(device)`` and round-trip through ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn


class TargetNormalizer(nn.Module):
    """Z-score targets with running statistics.

    Parameters
    ----------
    n_targets : int
        ``K``, the length of the target vector.
    eps : float
        Floor on the standard deviation, so constant targets map to 0, not ``inf``.

    Examples
    --------
    >>> norm = TargetNormalizer(len(target_names(spec)))
    >>> for x, mask, geom in train_windows:
    ...     norm.update(compute_targets(x, sfreq, mask, geom, spec))
    >>> z = norm(compute_targets(x, sfreq, mask, geom, spec))
    """

    def __init__(self, n_targets: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = float(eps)
        self.register_buffer("count", torch.zeros(n_targets, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(n_targets, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(n_targets, dtype=torch.float64))

    @torch.no_grad()
    def update(self, targets: torch.Tensor) -> None:
        """Fold a batch ``(B, K)`` into the statistics (non-finite entries skipped)."""
        t = targets.to(device=self.mean.device, dtype=torch.float64)
        ok = torch.isfinite(t)
        n_b = ok.sum(0).to(torch.float64)  # (K,)
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        mean_b = torch.where(ok, t, zero).sum(0) / n_b.clamp_min(1.0)
        m2_b = torch.where(ok, (t - mean_b).square(), zero).sum(0)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n.clamp_min(1.0)
        self.m2 += m2_b + delta.square() * self.count * n_b / n.clamp_min(1.0)
        self.count.copy_(n)

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation per target, floored at ``eps``, shape ``(K,)``."""
        return (self.m2 / self.count.clamp_min(1.0)).sqrt().clamp_min(self.eps)

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """Z-scored targets ``(targets - mean) / std``, in ``targets``' dtype."""
        return ((targets - self.mean.to(targets.dtype)) / self.std.to(targets.dtype)).to(targets.dtype)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward`: ``z * std + mean``."""
        return (z * self.std.to(z.dtype) + self.mean.to(z.dtype)).to(z.dtype)
