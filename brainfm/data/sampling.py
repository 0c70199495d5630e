"""Which windows are drawn: a few for statistics and calibration, all of them for an epoch.

Two ways to pick ``n`` of a dataset's windows, each over every recording:

* :func:`evenly_spaced` — deterministic, spread evenly over the dataset (statistics such as
  the neurodynamics target normalisation of :class:`brainfm.tasks.PretrainModule`);
* :func:`calibration_windows` — a seeded random subset (post-training quantization,
  :mod:`brainfm.deploy`).

Both come back as DataLoaders of :func:`brainfm.data.collate_windows` batches, in order.

And one way to draw every training window once per epoch, across distributed ranks and
DataLoader workers: :class:`EpochWindows` (the pretraining loader of
:class:`brainfm.data.datamodule.PretrainDataModule`). Its epoch plan, per seed and epoch:

1. the blocks of a :class:`~brainfm.data.dataset.ShuffledWindows` (chunk-aligned runs of
   windows, each read with one store call) are put in a seeded random order, and their
   windows, block after block, make one global sequence of ``N`` windows;
2. rank ``r`` of ``R`` takes the contiguous slice ``[r S, (r + 1) S)`` of it, with
   ``S = floor(N / (R B)) B`` for batch size ``B``: every rank runs the same number of full
   batches (as DDP needs) and no window is repeated. The last ``N - R S`` windows of the
   sequence (fewer than ``R B``; a different set each epoch, :meth:`EpochWindows.dropped`)
   are left out of that epoch — the only windows not seen;
3. within a rank, DataLoader worker ``w`` of ``W`` yields batches ``w, w + W, ...`` (the
   order in which the DataLoader collects them) and reads a contiguous part of the rank's
   slice, so no block is read by two workers; its windows leave through a seeded shuffle
   buffer of ``buffer_size`` windows.

The plan is computed on indices only, so resuming at batch ``k`` of an epoch
(:meth:`EpochWindows.resume`) skips the first ``k`` batches without reading them.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, get_worker_info

from brainfm.data.dataset import FixedWindows, ShuffledWindows, collate_windows
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


class EpochWindows(IterableDataset):
    """The windows of a :class:`~brainfm.data.dataset.ShuffledWindows`, each once per epoch
    across ``world_size`` ranks, in full batches (the plan is in the module docstring).

    Parameters
    ----------
    windows : ShuffledWindows
        Its blocks, stride, artifact rejection, seed and ``buffer_size`` are used; its own
        iteration is not.
    batch_size : int
        Every rank yields ``len(self) = batches * batch_size`` windows.
    rank, world_size : int
        This process's distributed rank and the number of ranks (the trainer's, not read
        from ``torch.distributed``, which DataLoader workers do not share).

    Resuming needs the same store, windows, seed, batch size, world size and number of
    DataLoader workers; :meth:`resume` jumps to a batch of an epoch.
    """

    def __init__(self, windows: ShuffledWindows, batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.windows, self.batch_size, self.rank, self.world_size = windows, batch_size, rank, world_size
        self.epoch, self.skip_batches = 0, 0
        #: Per block of ``windows.blocks``, its windows (rejected ones left out).
        self.counts = np.array([len(self._block_starts(b)) for b in range(len(windows.blocks))], dtype=np.int64)
        self.n_windows = int(self.counts.sum())
        #: Full batches per rank and epoch.
        self.batches = self.n_windows // (world_size * batch_size)
        if self.batches == 0:
            raise ValueError(f"{self.n_windows} training windows cannot fill one batch of {batch_size} on each of "
                             f"{world_size} rank(s); use a smaller batch, fewer ranks or more data")

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose plan the next iteration uses (each iteration then advances it)."""
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next iteration yield ``epoch`` from batch ``batches`` on (skipped unread)."""
        if not 0 <= batches <= self.batches:
            raise ValueError(f"cannot resume at batch {batches} of an epoch of {self.batches} batches per rank")
        self.epoch, self.skip_batches = epoch, batches

    # -- the plan, on indices ----------------------------------------------------------------
    def _block_starts(self, b: int) -> np.ndarray:
        """Window starts of block ``b`` (samples), rejected windows left out."""
        w = self.windows
        i, first, stop = (int(v) for v in w.blocks[b])
        starts = np.arange(first, stop, w.stride, dtype=np.int64)
        rejected = w._rejected.get(i)
        return starts if rejected is None else starts[~np.isin(starts, rejected)]

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.windows.seed, epoch]).permutation(len(self.counts))

    def _span(self, epoch: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Blocks and starts ``(n,), (n,)`` of positions ``[lo, hi)`` of the epoch's global sequence."""
        order = self._order(epoch)
        ends = np.cumsum(self.counts[order])  # (n_blocks,) end position of each block in the sequence
        blocks, starts = [], []
        k = int(np.searchsorted(ends, lo, side="right"))
        while k < len(order) and lo < hi:
            begin = int(ends[k] - self.counts[order[k]])
            s = self._block_starts(int(order[k]))[lo - begin : hi - begin]
            blocks.append(np.full(len(s), order[k], dtype=np.int64)), starts.append(s)
            lo, k = int(ends[k]), k + 1
        if not blocks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(blocks), np.concatenate(starts)

    def _role_batches(self, role: int, n_roles: int) -> int:
        return len(range(role, self.batches, n_roles))

    def plan(self, epoch: int, role: int = 0, n_roles: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Blocks and starts ``(n,), (n,)`` that worker role ``role`` of ``n_roles`` yields in
        ``epoch`` on this rank, in order (its batches ``role, role + n_roles, ...``)."""
        per_rank = self.batches * self.batch_size
        offset = sum(self._role_batches(j, n_roles) for j in range(role)) * self.batch_size
        n = self._role_batches(role, n_roles) * self.batch_size
        lo = self.rank * per_rank + offset
        blocks, starts = self._span(epoch, lo, lo + n)
        # shuffle buffer, on indices: fill to buffer_size, then each new window sends a random one out
        rng = np.random.default_rng([self.windows.seed, epoch, self.rank, role, n_roles])
        buffer: list[int] = []
        out = np.empty(n, dtype=np.int64)
        k = 0
        for p in range(n):
            buffer.append(p)
            if len(buffer) >= self.windows.buffer_size:
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                out[k], k = buffer.pop(), k + 1
        for j in rng.permutation(len(buffer)):
            out[k], k = buffer[j], k + 1
        return blocks[out], starts[out]

    def window_ids(self, epoch: int, num_workers: int = 0) -> list[tuple[str, int]]:
        """This rank's ``(recording, start)`` of ``epoch`` in the order a DataLoader with
        ``num_workers`` workers yields them (batch ``k`` from worker ``k % num_workers``)."""
        n_roles = max(1, num_workers)
        plans = [self.plan(epoch, r, n_roles) for r in range(n_roles)]
        ids = []
        for k in range(self.batches):
            blocks, starts = plans[k % n_roles]
            sl = slice((k // n_roles) * self.batch_size, (k // n_roles + 1) * self.batch_size)
            ids += [(self.windows.recordings[int(self.windows.blocks[b][0])], int(s))
                    for b, s in zip(blocks[sl], starts[sl])]
        return ids

    def dropped(self, epoch: int) -> list[tuple[str, int]]:
        """The ``(recording, start)`` no rank sees in ``epoch`` (the tail of the sequence, < ranks x batch)."""
        blocks, starts = self._span(epoch, self.world_size * len(self), self.n_windows)
        return [(self.windows.recordings[int(self.windows.blocks[b][0])], int(s)) for b, s in zip(blocks, starts)]

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, n_roles = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, self.epoch = self.epoch, self.epoch + 1
        skip, self.skip_batches = self.skip_batches, 0
        # after skipping k batches the DataLoader asks worker 0 first: it plays role k % n_roles
        role = (wid + skip) % n_roles
        blocks, starts = self.plan(epoch, role, n_roles)
        done = len(range(role, skip, n_roles)) * self.batch_size
        blocks, starts = blocks[done:], starts[done:]
        # each block is read once, over the span of this worker's remaining windows in it
        pending: dict[int, list] = {}  # block -> [first start, last start, windows left]
        for b, s in zip(blocks.tolist(), starts.tolist()):
            span = pending.setdefault(b, [s, s, 0])
            span[0], span[1], span[2] = min(span[0], s), max(span[1], s), span[2] + 1
        w, cache = self.windows, {}
        # split between workers or ranks, the other blocks of a shard are mostly another's:
        # decode only this worker's chunks, not the whole shard around them
        whole_group = n_roles * self.world_size == 1
        for b, s in zip(blocks.tolist(), starts.tolist()):
            i = int(w.blocks[b][0])
            if b not in cache:
                first, last, _ = pending[b]
                rec = w._recording(i)
                cache[b] = (first, rec.read(first, last + w.window, whole_group=whole_group))  # (C, n) one read
            first, data = cache[b]
            yield w._sample(i, data[:, s - first : s - first + w.window], s, None)
            pending[b][2] -= 1
            if pending[b][2] == 0:
                del cache[b], pending[b]
