"""Drawing a few real windows: for statistics (target normalisation) and for calibration.

Two ways to pick ``n`` of a dataset's windows, each over every recording:

* :func:`evenly_spaced` — deterministic, spread evenly over the dataset (statistics such as
  the neurodynamics target normalisation of :class:`brainfm.tasks.PretrainModule`);
* :func:`calibration_windows` — a seeded random subset (post-training quantization,
  :mod:`brainfm.deploy`).

Both come back as DataLoaders of :func:`brainfm.data.collate_windows` batches, in order.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from brainfm.data.dataset import FixedWindows, collate_windows
from brainfm.data.store import ShardStore


def evenly_spaced(n_total: int, n: int) -> list[int]:
    """Up to ``n`` distinct indices spread evenly over ``range(n_total)``, first and last included."""
    n = min(n_total, n)
    if n <= 0:
        return []
    return torch.linspace(0, n_total - 1, n).round().long().unique().tolist()


def window_loader(windows: Dataset, indices: Sequence[int], batch_size: int = 64) -> DataLoader:
    """Batches of the windows at ``indices``, in that order (no shuffling, no workers)."""
    return DataLoader(Subset(windows, list(indices)), batch_size=batch_size, shuffle=False,
                      collate_fn=collate_windows)


def calibration_windows(store: str | ShardStore, n_windows: int = 256, window_s: float = 5.0,
                        subjects: Sequence[str] | None = None, channel_types: Sequence[str] | None = None,
                        seed: int = 0, **entities: Any) -> tuple[FixedWindows, list[int]]:
    """Up to ``n_windows`` unlabelled windows of a store: the dataset and the chosen indices.

    Windows are fixed-length (stride = length) from the recordings of ``subjects`` (default:
    every subject) whose BIDS entities match ``entities`` (e.g. ``task="rest"``); when there
    are more than ``n_windows``, a seeded random subset spread over all recordings is used.
    Calibrate on training subjects: the statistics then describe data the model was fitted to.
    """
    shard_store = store if isinstance(store, ShardStore) else ShardStore(store)
    recordings = shard_store.select(subjects, **entities)
    if not recordings:
        raise ValueError(f"no recordings for subjects={list(subjects) if subjects else 'all'} {entities or ''} "
                         f"in {shard_store.url}; subjects there: {', '.join(shard_store.subjects())}")
    ds = FixedWindows(shard_store, window_s, recordings=recordings, channel_types=channel_types)
    if len(ds) == 0:
        raise ValueError(f"no {window_s:g}-s windows in the selected recordings of {shard_store.url}")
    idx = np.arange(len(ds))
    if len(ds) > n_windows:
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), n_windows, replace=False))
    return ds, idx.tolist()


def calibration_batches(store: str | ShardStore, n_windows: int = 256, window_s: float = 5.0,
                        subjects: Sequence[str] | None = None, channel_types: Sequence[str] | None = None,
                        batch_size: int = 32, seed: int = 0, **entities: Any) -> DataLoader:
    """Batches of :func:`calibration_windows` (see there), for :func:`brainfm.deploy.calibrate`.

    Returns
    -------
    torch.utils.data.DataLoader
        Batches of :func:`brainfm.data.collate_windows`.
    """
    ds, idx = calibration_windows(store, n_windows, window_s, subjects, channel_types, seed, **entities)
    return window_loader(ds, idx, batch_size)
