"""Frequency bands and masked pooling shared by every target module.

A :class:`Bands` object names the canonical EEG rhythms and their edges in Hz. Every
band is a half-open interval ``[lo, hi)``, so adjacent bands never share a frequency
bin and the default bands exactly tile the relative-power range 1-45 Hz.

Pooling helpers reduce a per-channel feature ``(..., C)`` over the *real* channels
given by a boolean ``channel_mask``; padded channels are removed with
``torch.where`` (never by multiplying with zero, since ``nan * 0`` is ``nan``), so
whatever a padded channel holds cannot reach the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Canonical EEG bands in Hz: delta, theta, alpha, beta, gamma.
DEFAULT_BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 45.0),
}


@dataclass(frozen=True)
class Bands:
    """Named frequency bands, each a half-open interval ``[lo, hi)`` in Hz.

    Parameters
    ----------
    edges : dict of str to (float, float)
        Band name to ``(lo, hi)`` in Hz, ``0 <= lo < hi``. Defaults to
        :data:`DEFAULT_BANDS` (delta 1-4, theta 4-8, alpha 8-13, beta 13-30,
        gamma 30-45 Hz).
    total : (float, float) or None
        Range whose power is the denominator of relative band power. ``None``
        (default) spans the bands: ``(min lo, max hi)``, i.e. 1-45 Hz.
    """

    edges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_BANDS))
    total: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.edges:
            raise ValueError("Bands needs at least one band")
        edges = {str(k): (float(lo), float(hi)) for k, (lo, hi) in self.edges.items()}
        for name, (lo, hi) in edges.items():
            if not 0.0 <= lo < hi:
                raise ValueError(f"band {name!r} needs 0 <= lo < hi, got ({lo}, {hi})")
        object.__setattr__(self, "edges", edges)
        total = self.total
        if total is None:
            total = (min(lo for lo, _ in edges.values()), max(hi for _, hi in edges.values()))
        total = (float(total[0]), float(total[1]))
        if not 0.0 <= total[0] < total[1]:
            raise ValueError(f"total range needs 0 <= lo < hi, got {total}")
        object.__setattr__(self, "total", total)

    @property
    def names(self) -> list[str]:
        """Band names in definition order."""
        return list(self.edges)

    def __len__(self) -> int:
        return len(self.edges)

    def __getitem__(self, name: str) -> tuple[float, float]:
        try:
            return self.edges[name]
        except KeyError:
            raise KeyError(f"no band {name!r}; bands are {', '.join(self.edges)}") from None

    def index(self, name: str) -> int:
        """Position of band ``name`` along the band axis of the outputs."""
        self[name]  # noqa: B018  (clear error for unknown names)
        return self.names.index(name)

    def masks(self, freqs: torch.Tensor) -> torch.Tensor:
        """Boolean ``(n_bands, F)`` membership of each frequency bin in each band."""
        lo = torch.tensor([e[0] for e in self.edges.values()], dtype=freqs.dtype, device=freqs.device)
        hi = torch.tensor([e[1] for e in self.edges.values()], dtype=freqs.dtype, device=freqs.device)
        return (freqs[None, :] >= lo[:, None]) & (freqs[None, :] < hi[:, None])  # (nb, F)

    def total_mask(self, freqs: torch.Tensor) -> torch.Tensor:
        """Boolean ``(F,)`` membership of each bin in the relative-power range."""
        return (freqs >= self.total[0]) & (freqs < self.total[1])


def as_bands(bands: Bands | dict | None) -> Bands:
    """Coerce ``None`` (defaults), a ``{name: (lo, hi)}`` dict or a :class:`Bands`."""
    if bands is None:
        return Bands()
    if isinstance(bands, Bands):
        return bands
    return Bands(edges=dict(bands))


def full_mask(x: torch.Tensor, channel_mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, C)`` bool mask of real channels; all True when ``channel_mask`` is None."""
    if channel_mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if channel_mask.shape != x.shape[:2]:
        raise ValueError(f"channel_mask must be (B, C) = {tuple(x.shape[:2])}, got {tuple(channel_mask.shape)}")
    return channel_mask.to(device=x.device, dtype=torch.bool)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1, finite_only: bool = False) -> torch.Tensor:
    """Mean of ``values`` over ``dim`` where ``mask`` is True.

    Parameters
    ----------
    values : Tensor
        Any shape; ``mask`` must broadcast to it.
    mask : Tensor of bool
        True where an entry counts.
    dim : int
        Axis to reduce.
    finite_only : bool
        Also skip non-finite entries (``nan``/``inf``, e.g. the sample entropy of a flat
        channel). A reduction with no counted entry returns ``nan``.
    """
    mask = mask.expand_as(values)
    if finite_only:
        mask = mask & torch.isfinite(values)
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim)
    count = mask.sum(dim).to(values.dtype)
    return total / count  # 0 / 0 -> nan: nothing to pool


def masked_std(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Population standard deviation (``ddof=0``) over ``dim`` where ``mask`` is True."""
    mask = mask.expand_as(values)
    mean = masked_mean(values, mask, dim).unsqueeze(dim)
    dev = torch.where(mask, values - mean, torch.zeros((), dtype=values.dtype, device=values.device))
    return (masked_mean(dev * dev, mask, dim)).sqrt()
