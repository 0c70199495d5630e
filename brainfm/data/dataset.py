"""Window datasets over a shard store.

Three ways to cut a store into samples, all yielding the same sample dict::

    {"x": float32 tensor (C, T) in physical units, "spec": SensorSpec,
     "recording": str, "subject": str, "start": int (sample), "label": int (optional)}

* :class:`FixedWindows` — map-style, fixed length and stride, optional recording-level
  labels (e.g. EEGMAT rest vs arithmetic from the BIDS ``task``).
* :class:`EventWindows` — map-style, event-locked labelled windows.
* :class:`ShuffledWindows` — iterable, for pretraining: visits chunk-aligned blocks in
  random order, reads each block with one store call (the next ``read_ahead`` blocks in
  flight on reader threads), and mixes windows through a shuffle buffer, instead of one
  random seek per window.

The map-style sets implement ``__getitems__``: a DataLoader with a batch size hands them a
whole batch of indices, and the chunks the batch needs are read concurrently
(:func:`brainfm.data.store.prefetch`) before the windows are cut.

Channels without a known position are dropped by default (``positioned_only``): the
sensor tokenizer cannot embed them. Recordings left with no channel are skipped.

:class:`FixedWindows` and :class:`ShuffledWindows` take ``reject``
(:class:`~brainfm.data.artifacts.RejectionCriteria`): each recording is read once when the
dataset is built, windows that break a rule are left out of every epoch, and the counts per
recording and rule are kept in ``rejections`` (and logged).

Every dataset has a ``normalizer`` slot (default ``None``): a
:class:`~brainfm.data.normalize.SubjectNormalizer` set there normalises each window with its
subject's statistics as the window is read (:class:`brainfm.data.datamodule.DecodingDataModule`
sets the same one on its train, validation and test sets).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, default_collate, get_worker_info

from brainfm.data.artifacts import RejectionCounts, RejectionCriteria, summarize, window_codes
from brainfm.data.shard_codec import read_pool
from brainfm.data.store import Recording, ShardStore, prefetch
from brainfm.signal import SensorSpec, collate_sensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntityLabels:
    """Recording-level labels from a BIDS entity, e.g. ``EntityLabels("task", {"rest": 0, "arithmetic": 1})``.

    Recordings whose entity value is not in ``mapping`` are left out.
    """

    entity: str
    mapping: Mapping[str, int]

    def __call__(self, entry: Mapping[str, Any]) -> int | None:
        return self.mapping.get(entry.get(self.entity))

    @property
    def classes(self) -> list[str]:
        return [k for k, _ in sorted(self.mapping.items(), key=lambda kv: kv[1])]


class _StoreWindows:
    """Shared plumbing: recording selection, channel picking, sample assembly."""

    def __init__(
        self,
        store: ShardStore | str,
        recordings: Sequence[str] | None = None,
        channel_types: Sequence[str] | None = None,
        positioned_only: bool = True,
        targets: str | None = None,
    ):
        self.store = store if isinstance(store, ShardStore) else ShardStore(store)
        self.targets = targets
        #: Optional per-subject normalisation, ``normalizer(subject, x)`` (see the module docstring).
        self.normalizer = None
        self._target_tables: dict[int, torch.Tensor] = {}
        ids = list(recordings) if recordings is not None else self.store.recording_ids
        self.channel_types = tuple(channel_types) if channel_types else None
        self.positioned_only = positioned_only
        self.recordings: list[str] = []
        self._picks: list[np.ndarray] = []
        #: Per recording, its sensors after channel picking (what the model sees).
        self.specs: list[SensorSpec] = []
        for rid in ids:
            recording = self.store.recording(rid)
            spec = recording.spec
            # channels conversion flagged (flat in the source, extreme spikes): never read
            keep = recording.usable.copy()
            if self.channel_types:
                keep &= np.isin(spec.ch_types, self.channel_types)
            if positioned_only:
                keep &= spec.has_positions
            if not keep.any():
                log.info("skipping %s: no channel left after picking", rid)
                continue
            picks = np.flatnonzero(keep)
            self.recordings.append(rid)
            self._picks.append(picks)
            self.specs.append(spec if keep.all() else spec.pick(picks))
        sfreqs = {s.sfreq for s in self.specs}
        if len(sfreqs) > 1:
            raise ValueError(f"recordings have different sampling rates {sorted(sfreqs)}")
        self.sfreq = sfreqs.pop() if sfreqs else float(self.store.preset["sfreq"])
        #: Per recording id, the windows checked and rejected by ``reject`` (empty without it).
        self.rejections: dict[str, RejectionCounts] = {}

    def _rejection_codes(self, i: int, starts: np.ndarray, window: int, criteria: RejectionCriteria) -> np.ndarray:
        """Rejection codes ``(W,)`` of recording ``i``'s windows at ``starts`` (one full read),
        counted in :attr:`rejections`."""
        rid = self.recordings[i]
        codes = window_codes(self.signal(i), starts, window, criteria, self.specs[i].ch_types, self.sfreq,
                             self._recording(i).attrs.get("line_freq"))
        counts = self.rejections.setdefault(rid, RejectionCounts())
        counts.add(codes)
        if codes.any():
            log.info("%s: rejected %d of %d windows (%s)", rid, counts.rejected, counts.windows,
                     ", ".join(f"{k} {v}" for k, v in counts.as_dict().items() if k not in ("windows", "rejected")))
        return codes

    def _log_rejections(self) -> None:
        if self.rejections:
            total = summarize(self.rejections)
            log.info("artifact rejection over %d recordings: %d of %d windows rejected (amplitude %d, flat %d, "
                     "line %d)", len(self.rejections), total.rejected, total.windows, total.amplitude, total.flat,
                     total.line)

    @property
    def subjects(self) -> list[str]:
        """Per recording, its subject."""
        return [self.store.entry(rid)["subject"] for rid in self.recordings]

    def _recording(self, i: int) -> Recording:
        return self.store.recording(self.recordings[i])

    def signal(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Recording ``i``'s picked channels from sample ``start`` to ``stop`` (C, n), unnormalised."""
        block = self._recording(i).read(start, stop)
        picks = self._picks[i]
        return block if len(picks) == block.shape[0] else block[picks]

    def _check_targets(self, window: int, stride: int) -> None:
        """Precomputed targets (``targets=key``) must match these windows exactly."""
        if self.targets is None:
            return
        entry = self.store.target_set(self.targets)
        t_window = int(round(entry["window_s"] * self.sfreq))
        self._target_stride = int(round(entry["stride_s"] * self.sfreq))
        if t_window != window or stride % self._target_stride:
            raise ValueError(
                f"target set {self.targets!r} is for {entry['window_s']} s windows every {entry['stride_s']} s; "
                "use that window and a multiple of that stride"
            )
        picks = (entry["positioned_only"], tuple(entry["channel_types"]) if entry["channel_types"] else None)
        if picks != (self.positioned_only, self.channel_types):
            raise ValueError(f"target set {self.targets!r} was computed with other channel picks")
        covered = entry.get("recordings")
        uncovered = [rid for rid in self.recordings if covered is not None and rid not in covered]
        if uncovered:
            raise ValueError(f"target set {self.targets!r} has no targets for {len(uncovered)} recording(s): "
                             f"{', '.join(uncovered[:5])}; exclude their subjects or compute targets on the fly")

    def use_targets(self, key: str | None) -> None:
        """Read precomputed target set ``key`` (None: none) from now on, checked against these windows."""
        self.targets = key
        self._target_tables.clear()
        self._check_targets(self.window, self.stride)

    def _target_row(self, i: int, start: int) -> torch.Tensor:
        table = self._target_tables.get(i)
        if table is None:
            table = self._target_tables[i] = self._recording(i).read_targets(self.targets)  # (n_windows, K)
        return table[start // self._target_stride]

    def _sample(self, i: int, block: np.ndarray, start: int, label: int | None) -> dict[str, Any]:
        picks = self._picks[i]
        x = block if len(picks) == block.shape[0] else block[picks]
        entry = self.store.entry(self.recordings[i])
        if self.normalizer is not None:
            x = self.normalizer(entry["subject"], x)
        sample = {
            "x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            "spec": self.specs[i],
            "recording": self.recordings[i],
            "subject": entry["subject"],
            "start": int(start),
        }
        if label is not None:
            sample["label"] = int(label)
        if self.targets is not None:
            sample["targets"] = self._target_row(i, start)
        return sample


class _MapWindows(_StoreWindows, Dataset):
    """Map-style windows ``(rec_index[k], starts[k], window)``: batched reads for DataLoaders."""

    rec_index: np.ndarray
    starts: np.ndarray
    window: int

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Windows ``indices`` (a DataLoader batch), their missing chunks read concurrently first."""
        ks = [int(k) for k in indices]
        prefetch((self._recording(int(self.rec_index[k])), int(self.starts[k]), int(self.starts[k]) + self.window)
                 for k in ks)
        return [self[k] for k in ks]


class FixedWindows(_MapWindows):
    """Fixed-length windows with a stride, optionally labelled per recording.

    Parameters
    ----------
    store : ShardStore or str
        The store or its URL.
    window_s, stride_s : float
        Window length and stride in seconds (stride defaults to the window length).
    recordings : sequence of str, optional
        Recording ids to use (default: all).
    labels : callable, optional
        Maps a manifest entry to an int label or None (recording left out), e.g.
        :class:`EntityLabels`.
    channel_types : sequence of str, optional
        Keep only these channel types.
    positioned_only : bool
        Drop channels without a known position.
    spans : mapping of str to (float, float), optional
        Per recording id, the time range ``[start_s, stop_s)`` windows must lie in (for
        example the calibration and test parts of :func:`brainfm.data.splits.calibration_spans`).
        Recordings not in the mapping use their whole length.
    reject : RejectionCriteria, optional
        Leave out windows that break an artifact rule (:mod:`brainfm.data.artifacts`).
    """

    def __init__(self, store, window_s: float, stride_s: float | None = None, recordings=None,
                 labels=None, channel_types=None, positioned_only: bool = True, targets: str | None = None,
                 spans: Mapping[str, tuple[float, float]] | None = None, reject: RejectionCriteria | None = None):
        super().__init__(store, recordings, channel_types, positioned_only, targets)
        self.window = _samples(window_s, self.sfreq, "window")
        self.stride = _samples(stride_s or window_s, self.sfreq, "stride")
        self._check_targets(self.window, self.stride)
        rec_idx, starts, labs = [], [], []
        for i, rid in enumerate(self.recordings):
            entry = self.store.entry(rid)
            label = labels(entry) if labels is not None else None
            if labels is not None and label is None:
                continue
            lo, hi = 0, entry["n_samples"]
            if spans is not None and rid in spans:
                # ceil/floor: a window never starts before its span or ends after it
                lo = max(lo, int(np.ceil(spans[rid][0] * self.sfreq - 1e-6)))
                hi = min(hi, int(np.floor(spans[rid][1] * self.sfreq + 1e-6)))
            s = np.arange(lo, hi - self.window + 1, self.stride)
            if reject is not None:
                s = s[self._rejection_codes(i, s, self.window, reject) == 0]
            rec_idx.append(np.full(len(s), i))
            starts.append(s)
            labs.append(np.full(len(s), -1 if label is None else label))
        self.rec_index = np.concatenate(rec_idx) if rec_idx else np.zeros(0, dtype=np.int64)
        self.starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self.labels = np.concatenate(labs) if labs else np.zeros(0, dtype=np.int64)
        self.labelled = labels is not None
        self._log_rejections()

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, start = int(self.rec_index[k]), int(self.starts[k])
        block = self._recording(i).read(start, start + self.window)
        return self._sample(i, block, start, int(self.labels[k]) if self.labelled else None)


class EventWindows(_MapWindows):
    """Event-locked windows ``[onset + tmin, onset + tmax)`` labelled by event label.

    Parameters
    ----------
    event_id : mapping of str to int
        Event labels to use and their class index; other events are ignored.
    tmin, tmax : float
        Window bounds in seconds relative to event onset. Windows that would leave the
        recording are dropped.
    """

    def __init__(self, store, event_id: Mapping[str, int], tmin: float, tmax: float,
                 recordings=None, channel_types=None, positioned_only: bool = True):
        super().__init__(store, recordings, channel_types, positioned_only)
        if tmax <= tmin:
            raise ValueError(f"tmax ({tmax}) must be after tmin ({tmin})")
        self.event_id = dict(event_id)
        self.window = _samples(tmax - tmin, self.sfreq, "window")
        rec_idx, starts, labs = [], [], []
        for i, rid in enumerate(self.recordings):
            ev = self.store.recording(rid).events
            n = self.store.entry(rid)["n_samples"]
            for onset, label in zip(ev.onset, ev.label):
                if label not in self.event_id:
                    continue
                start = int(round((onset + tmin) * self.sfreq))
                if 0 <= start and start + self.window <= n:
                    rec_idx.append(i), starts.append(start), labs.append(self.event_id[label])
        self.rec_index = np.asarray(rec_idx, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.labels = np.asarray(labs, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, start = int(self.rec_index[k]), int(self.starts[k])
        block = self._recording(i).read(start, start + self.window)
        return self._sample(i, block, start, int(self.labels[k]))


class ShuffledWindows(_StoreWindows, IterableDataset):
    """Random windows for pretraining, read block by block through a shuffle buffer.

    The windows of one epoch are exactly those of :class:`FixedWindows` with the same
    window and stride. They are grouped into blocks of about ``block_s`` seconds,
    aligned to the store's time chunks. Each epoch visits the blocks in a seeded
    random order, split across DataLoader workers (and distributed ranks), reads each
    block with one call and pushes its windows into a buffer of ``buffer_size`` from
    which windows leave in random order.

    In one process (any number of DataLoader workers) an epoch yields every window
    exactly once. Under DDP each rank yields exactly ``len(self)`` windows — its
    blocks' windows, topped up from a reshuffled pass when its blocks hold fewer — so
    that all ranks run the same number of steps.

    With ``reject`` (:class:`~brainfm.data.artifacts.RejectionCriteria`) every recording is
    read once at construction and the windows that break a rule are skipped in every epoch.

    ``read_ahead`` blocks beyond the one being cut are read on the process's reader threads
    (:func:`brainfm.data.shard_codec.read_pool`), so reads overlap each other and the
    consumer: on object storage, that is what hides request latency. 0 reads in line.
    """

    def __init__(self, store, window_s: float, stride_s: float | None = None, recordings=None,
                 channel_types=None, positioned_only: bool = True, block_s: float = 60.0,
                 buffer_size: int = 512, seed: int = 0, targets: str | None = None,
                 reject: RejectionCriteria | None = None, read_ahead: int = 4):
        super().__init__(store, recordings, channel_types, positioned_only, targets)
        self.read_ahead = read_ahead
        self.window = _samples(window_s, self.sfreq, "window")
        self.stride = _samples(stride_s or window_s, self.sfreq, "stride")
        self._check_targets(self.window, self.stride)
        self.buffer_size = buffer_size
        self.seed = seed
        self.epoch = 0
        blocks = []  # (recording index, first window start, last window start + 1)
        for i, rid in enumerate(self.recordings):
            rec = self._recording(i)
            span = max(rec.chunk, int(math.ceil(block_s * self.sfreq / rec.chunk)) * rec.chunk)
            last = rec.n_samples - self.window
            for lo in range(0, last + 1, span):
                first = -(-lo // self.stride) * self.stride
                if first <= min(lo + span - 1, last):
                    blocks.append((i, first, min(lo + span, last + 1)))
        self.blocks = np.asarray(blocks, dtype=np.int64).reshape(-1, 3)
        #: Per recording index, the sorted starts of rejected windows.
        self._rejected: dict[int, np.ndarray] = {}
        if reject is not None:
            for i in range(len(self.recordings)):
                starts = np.arange(0, self._recording(i).n_samples - self.window + 1, self.stride)
                codes = self._rejection_codes(i, starts, self.window, reject)
                if codes.any():
                    self._rejected[i] = starts[codes != 0]
            self._log_rejections()
        n_rejected = sum(len(v) for v in self._rejected.values())
        self._n_windows = int(sum(len(range(a, b, self.stride)) for _, a, b in self.blocks)) - n_rejected

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose order the next iteration uses.

        Each iteration advances the epoch by itself, also inside DataLoader workers
        as long as they are persistent (``persistent_workers=True``); call this to
        jump, e.g. after resuming.
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return self._n_windows // _world()[1]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = _world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, self.epoch = self.epoch, self.epoch + 1
        out_rng = np.random.default_rng([self.seed, epoch, rank, wid])
        windows = self._windows(epoch, rank * nw + wid, world * nw)
        if world > 1:
            # Under DDP every rank must yield the same number of windows, or the last
            # collective of the epoch hangs: take exactly an equal share, wrapping around.
            share = len(self) // nw + (1 if wid < len(self) % nw else 0)
            windows = _take_cycling(windows, lambda k: self._windows(epoch + 1000 * (k + 1), rank * nw + wid, world * nw), share)
        buffer: list[dict[str, Any]] = []
        for sample in windows:
            buffer.append(sample)
            if len(buffer) >= self.buffer_size:
                yield buffer.pop(int(out_rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(out_rng.integers(len(buffer))))

    def _windows(self, epoch: int, shard: int, n_shards: int) -> Iterator[dict[str, Any]]:
        """Windows of this shard's blocks, block by block (one read per block)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        # split between workers or ranks, the other blocks of a shard are mostly another's:
        # decode only this block's chunks, not the whole shard around it
        whole_group = n_shards == 1
        for i, first, stop, block in self._blocks_read_ahead(order[shard::n_shards], whole_group=whole_group):
            rejected = self._rejected.get(i)
            for start in range(first, stop, self.stride):
                if rejected is not None and _contains(rejected, start):
                    continue
                off = start - first
                yield self._sample(i, block[:, off : off + self.window], start, None)

    def _blocks_read_ahead(self, order: np.ndarray, whole_group: bool = True
                           ) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """``(recording index, first start, stop, signal)`` of blocks ``order``, in that order,
        with up to :attr:`read_ahead` further blocks being read meanwhile (``whole_group``:
        :meth:`Recording.read`'s)."""
        pending: deque = deque()
        todo = iter(order)

        def submit(b: int) -> None:
            i, first, stop = (int(v) for v in self.blocks[b])
            rec = self._recording(i)
            if self.read_ahead > 0:
                pending.append((i, first, stop, read_pool().submit(rec.read, first, stop - 1 + self.window,
                                                                    whole_group=whole_group)))
            else:
                pending.append((i, first, stop, rec.read(first, stop - 1 + self.window, whole_group=whole_group)))

        for b in todo:
            submit(int(b))
            if len(pending) > self.read_ahead:
                break
        while pending:
            i, first, stop, block = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                submit(int(nxt))
            yield i, first, stop, block if isinstance(block, np.ndarray) else block.result()


def _contains(sorted_values: np.ndarray, value: int) -> bool:
    k = int(np.searchsorted(sorted_values, value))
    return k < len(sorted_values) and int(sorted_values[k]) == value


def _take_cycling(first: Iterator, more, n: int) -> Iterator:
    """Exactly ``n`` items: ``first``, then ``more(0)``, ``more(1)``, ... as needed."""
    k, source, taken = 0, first, 0
    while taken < n:
        got = False
        for item in source:
            got = True
            yield item
            taken += 1
            if taken == n:
                return
        if not got and k > 0:
            raise RuntimeError("a distributed shard has no windows at all")
        source, k = more(k), k + 1


def _samples(seconds: float, sfreq: float, what: str) -> int:
    n = int(round(seconds * sfreq))
    if n <= 0:
        raise ValueError(f"{what} of {seconds} s is shorter than one sample at {sfreq} Hz")
    return n


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def collate_windows(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch, padding the channel axis (mask True = real channel).

    Returns ``x`` (B, C_max, T), ``channel_mask`` (B, C_max), ``sensor_geometry``
    (B, C_max, 6), ``sensor_type`` (B, C_max), ``sfreq``, ``recording``, ``subject``,
    ``start`` and, when every sample has them, ``label`` (B,) and precomputed
    neurodynamics ``targets`` (B, K).
    """
    if not samples:
        raise ValueError("empty batch")
    lengths = {s["x"].shape[1] for s in samples}
    if len(lengths) > 1:
        raise ValueError(f"windows of different lengths in one batch: {sorted(lengths)}")
    specs = [s["spec"] for s in samples]
    sfreqs = {s.sfreq for s in specs}
    if len(sfreqs) > 1:
        raise ValueError(f"windows of different sampling rates in one batch: {sorted(sfreqs)}")
    batch: dict[str, Any] = collate_sensors(specs)
    c_max = batch["channel_mask"].shape[1]
    # default_collate stacks straight into shared memory inside a DataLoader worker, so the
    # batch reaches the main process without a second copy (torch.stack would make one)
    batch["x"] = default_collate([_padded(s["x"], c_max) for s in samples])  # (B, C_max, T), zero-padded
    batch["sfreq"] = sfreqs.pop()
    for key in ("recording", "subject"):
        batch[key] = [s[key] for s in samples]
    batch["start"] = torch.tensor([s["start"] for s in samples])
    if all("label" in s for s in samples):
        batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    if all("targets" in s for s in samples):
        batch["targets"] = default_collate([s["targets"] for s in samples])  # (B, K)
    return batch


def _padded(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` (C, T) zero-padded to (channels, T) along the channel axis."""
    if x.shape[0] > channels:
        raise ValueError(f"a window has {x.shape[0]} channels, more than its spec's {channels}")
    return x if x.shape[0] == channels else torch.nn.functional.pad(x, (0, 0, 0, channels - x.shape[0]))
