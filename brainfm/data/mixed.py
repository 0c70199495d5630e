"""Mixed-modality pretraining data: EEG, MEG and BOLD windows in one batch.

Joint pretraining on fMRI, EEG and MEG (Brain-OF, 2026; BrainLM, Caro et al., ICLR 2024 and
Brain-JEPA, Dong et al., NeurIPS 2024 for parcels as tokens) needs batches whose windows come
from recordings at very different rates: EEG/MEG stored at the model's rate (200 Hz), BOLD at
1/TR (0.5-1 Hz, a different TR per dataset). What they share is the **patch**: a token is 1 s
of EEG/MEG or ``k`` volumes of BOLD. So every window here has the same number of patches
``S``:

* an EEG or MEG source (a store at the model's rate) gives windows of ``S · patch_seconds``;
* a BOLD source (channels of type ``bold``) gives windows of ``S · k`` volumes, each
  ``k``-volume patch linearly interpolated to the model's ``P`` samples
  (:func:`bold_to_patches`; first and last volume on the patch's first and last sample) and
  its :class:`~brainfm.signal.SensorSpec` relabelled at the model's rate. BOLD recordings
  at different TRs become separate groups, since a window dataset holds one rate.

:class:`MixedBatchSampler` draws a fixed number of windows from each source into every batch,
and :class:`MixedDataModule` wires it up as a :class:`~brainfm.data.datamodule.BrainDataModule`:
batches are those of :func:`~brainfm.data.dataset.collate_windows` (channels padded, the
sensor tensors carry each channel's type and position), so
:class:`brainfm.tasks.PretrainModule` trains on them unchanged. Its ``loss_balance='type'``
keeps the 150 BOLD channels of a window from outweighing the 19 of an EEG window.

The wrappers leave the window datasets of :mod:`brainfm.data.dataset` as they are: they read
through them (the same channel picks, normalisers and artifact rules) and only change rate.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from brainfm.data.datamodule import BrainDataModule
from brainfm.data.dataset import FixedWindows, _world, collate_windows
from brainfm.data.store import ShardStore
from brainfm.data.summary import DataSummary
from brainfm.signal import SensorSpec


def bold_to_patches(x: torch.Tensor, k: int, patch_size: int) -> torch.Tensor:
    """``(..., S·k)`` volumes -> ``(..., S·P)`` samples: each ``k``-volume patch linearly
    interpolated to ``patch_size`` samples (its first and last volume on its first and last
    sample)."""
    *lead, t = x.shape
    if t % k:
        raise ValueError(f"{t} volumes are not a whole number of {k}-volume patches")
    s = t // k
    flat = x.reshape(-1, 1, k)  # (N*S, 1, k)
    up = F.interpolate(flat, size=patch_size, mode="linear", align_corners=True)  # (N*S, 1, P)
    return up.reshape(*lead, s * patch_size)  # (..., S*P)


def at_rate(spec: SensorSpec, sfreq: float) -> SensorSpec:
    """``spec`` relabelled at ``sfreq`` (the signal was resampled per patch)."""
    return SensorSpec(spec.ch_names, spec.ch_types, spec.loc, sfreq, spec.units)


class BoldPatchWindows(Dataset):
    """A BOLD window dataset served at the model's rate.

    Parameters
    ----------
    windows : FixedWindows
        Windows of ``S · k`` volumes of BOLD recordings (one TR).
    k : int
        Volumes per patch.
    patch_size : int
        Model samples per patch.
    sfreq : float
        The model's sampling rate, which the relabelled specs carry.
    """

    def __init__(self, windows: FixedWindows, k: int, patch_size: int, sfreq: float) -> None:
        if windows.window % k:
            raise ValueError(f"BOLD windows of {windows.window} volumes are not whole {k}-volume patches")
        self.windows, self.k, self.patch_size = windows, k, patch_size
        self.sfreq = sfreq
        self.specs = [at_rate(s, sfreq) for s in windows.specs]
        self.recordings = windows.recordings
        self.window = windows.window // k * patch_size  # samples at the model's rate
        self._spec_of = dict(zip(windows.recordings, self.specs))  # by id: survives pickling to workers

    @property
    def subjects(self) -> list[str]:
        return self.windows.subjects

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.windows[i])
        sample["x"] = bold_to_patches(sample["x"], self.k, self.patch_size)  # (C, S*k) -> (C, S*P)
        sample["spec"] = self._spec_of[sample["recording"]]
        return sample


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of ``per_batch[i]`` windows from source ``i`` of a :class:`ConcatDataset`.

    Each source is shuffled (seeded by ``seed`` and the epoch, which Lightning sets through
    :meth:`set_epoch`); an epoch ends when the source that lasts longest in batches
    (``len_i // per_batch_i``) has been seen once, the others reshuffled and cycled meanwhile.
    Under DDP every rank draws the same batches and keeps every ``world``-th one.
    """

    def __init__(self, lengths: Sequence[int], per_batch: Sequence[int], seed: int = 0, fixed: bool = False) -> None:
        if len(lengths) != len(per_batch) or not lengths:
            raise ValueError(f"{len(per_batch)} per-batch counts for {len(lengths)} sources")
        empty = [i for i, (n, p) in enumerate(zip(lengths, per_batch)) if p > 0 and n == 0]
        if empty:
            raise ValueError(f"source(s) {empty} have no window but are asked for some in every batch")
        self.lengths, self.per_batch, self.seed, self.epoch, self.fixed = list(lengths), list(per_batch), seed, 0, fixed
        self.offsets = np.r_[0, np.cumsum(self.lengths)[:-1]]

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (a no-op for a ``fixed`` sampler: validation draws stay put)."""
        if not self.fixed:
            self.epoch = epoch

    def _total(self) -> int:
        return max(max(n // p for n, p in zip(self.lengths, self.per_batch) if p > 0), 1)

    def __len__(self) -> int:
        rank, world = _world()
        return len(range(rank, self._total(), world))

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = _world()
        rng = np.random.default_rng([self.seed, self.epoch])
        streams = [self._stream(rng, i) for i in range(len(self.lengths))]
        for b in range(self._total()):
            batch = [int(next(streams[i])) for i, p in enumerate(self.per_batch) for _ in range(p)]
            if b % world == rank:
                yield batch

    def _stream(self, rng: np.random.Generator, i: int) -> Iterator[int]:
        while True:
            yield from self.offsets[i] + rng.permutation(self.lengths[i])


#: Modalities a recording can count as (its channel types decide, :func:`modality`).
MODALITIES = ("eeg", "meg", "bold")


def modality(ch_type_counts: dict[str, int]) -> str:
    """``bold`` when every channel is BOLD, ``meg`` when any is a magnetometer or gradiometer
    (MEG recordings often carry EEG too), else ``eeg`` (EEG and intracranial EEG)."""
    types = set(ch_type_counts)
    if types == {"bold"}:
        return "bold"
    return "meg" if types & {"mag", "grad"} else "eeg"


class MixedDataModule(BrainDataModule):
    """Pretraining windows from several stores, EEG, MEG and BOLD, mixed in every batch.

    Parameters
    ----------
    stores : list of str
        Store URLs. A recording's modality is :func:`modality` of its channel types; EEG/MEG
        must be stored at ``sfreq``, BOLD at any TR. Recordings without positions are left out.
    per_batch : dict of str to int
        Windows per batch from each modality, e.g. ``{"eeg": 4, "meg": 2, "bold": 2}``. BOLD
        windows are split evenly over the TR groups.
    n_patches : int
        Patches per window (``S``).
    volumes_per_patch : int
        BOLD volumes per patch (``k``).
    sfreq, patch_seconds : float
        The model's rate and patch duration (``ModelConfig.sfreq``, ``patch_seconds``).
    stride_patches : int, optional
        Window stride in patches (default ``n_patches``: no overlap).
    recordings : list of str, optional
        Recording ids to use (default: every recording of every store).
    val_recordings : list of str, optional
        Recording ids held out of training and served, mixed the same way with a fixed draw,
        as the validation set (none by default).
    channel_types : list of str, optional
        Keep only these channel types in EEG/MEG recordings.
    num_workers, seed : int
        DataLoader workers and the sampler's seed.
    """

    def __init__(self, stores: list[str], per_batch: dict[str, int], n_patches: int = 4, volumes_per_patch: int = 4,
                 sfreq: float = 200.0, patch_seconds: float = 1.0, stride_patches: int | None = None,
                 recordings: list[str] | None = None, val_recordings: list[str] | None = None,
                 channel_types: list[str] | None = None, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        unknown = set(per_batch) - set(MODALITIES)
        if unknown or min(per_batch.values(), default=0) < 0 or sum(per_batch.values()) < 1:
            raise ValueError(f"per_batch maps modalities {MODALITIES} to window counts with a positive total, "
                             f"got {per_batch}")
        self.save_hyperparameters()
        self.train_set: ConcatDataset | None = None
        self.val_set: ConcatDataset | None = None

    @property
    def patch_size(self) -> int:
        return int(round(self.hparams.sfreq * self.hparams.patch_seconds))

    def _groups(self, store: ShardStore, ids: set[str] | None, exclude: set[str]) -> dict[str, dict[float, list[str]]]:
        """Per modality, per sampling rate, the recording ids of ``store`` to use."""
        out: dict[str, dict[float, list[str]]] = {}
        for rid in store.recording_ids:
            if (ids is not None and rid not in ids) or rid in exclude:
                continue
            entry = store.entry(rid)
            if entry.get("positions") == "none":  # e.g. an ROI table without centroids: no sensor to place
                continue
            kind = modality(entry["ch_type_counts"])
            out.setdefault(kind, {}).setdefault(float(entry["sfreq"]), []).append(rid)
        return out

    def _sources(self, ids: set[str] | None, exclude: set[str]) -> tuple[list[Dataset], list[int]]:
        """Window datasets and their windows per batch, for the recordings ``ids`` minus ``exclude``."""
        hp = self.hparams
        s, stride = hp.n_patches, hp.stride_patches or hp.n_patches
        per_kind: dict[str, list[Dataset]] = {k: [] for k in MODALITIES}
        for url in hp.stores:
            store = ShardStore(url)
            if not len(store):
                raise ValueError(f"store {store.url} holds no recordings; convert a dataset into it first")
            for kind, by_rate in self._groups(store, ids, exclude).items():
                if not hp.per_batch.get(kind):
                    continue
                for rate, rids in sorted(by_rate.items()):
                    if kind == "bold":
                        span = hp.volumes_per_patch / rate  # seconds per patch
                        w = FixedWindows(store, s * span, stride * span, recordings=rids)
                        per_kind[kind].append(BoldPatchWindows(w, hp.volumes_per_patch, self.patch_size, hp.sfreq))
                        continue
                    if abs(rate - hp.sfreq) > 1e-6:
                        raise ValueError(f"{store.url}: {kind.upper()} recordings at {rate:g} Hz ({rids[0]}, ...), "
                                         f"the model runs at {hp.sfreq:g} Hz; convert them with a preset at the "
                                         "model's rate")
                    per_kind[kind].append(FixedWindows(store, s * hp.patch_seconds, stride * hp.patch_seconds,
                                                       recordings=rids, channel_types=hp.channel_types))
        sources, counts = [], []
        for kind, n in hp.per_batch.items():
            group = [g for g in per_kind[kind] if len(g)]
            if n and not group:
                raise ValueError(f"per_batch asks for {n} {kind} window(s) per batch, but the stores {hp.stores} hold "
                                 f"no usable {kind} window of {s} patches")
            sources += group
            counts += [n // len(group) + (i < n % len(group)) for i in range(len(group))] if n else []
        return sources, counts

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        ids = set(hp.recordings) if hp.recordings is not None else None
        val = set(hp.val_recordings or ())
        sources, counts = self._sources(ids, val)
        self.train_set = ConcatDataset(sources)
        self.sampler = MixedBatchSampler([len(d) for d in sources], counts, seed=hp.seed)
        if val:
            val_sources, val_counts = self._sources(val, set())
            self.val_set = ConcatDataset(val_sources)
            self.val_sampler = MixedBatchSampler([len(d) for d in val_sources], val_counts, seed=hp.seed + 1,
                                                 fixed=True)
        specs = [sp for d in sources for sp in d.specs]
        subjects = [sub for d in sources for sub in d.subjects]
        self._summary = DataSummary(float(hp.sfreq), hp.n_patches * hp.patch_seconds, tuple(specs), tuple(subjects),
                                    n_windows=len(self.train_set))

    def statistics_windows(self) -> ConcatDataset:
        return self.train_set

    def train_dataloader(self) -> DataLoader:
        w = self.hparams.num_workers
        return DataLoader(self.train_set, batch_sampler=self.sampler, collate_fn=collate_windows, num_workers=w,
                          persistent_workers=w > 0)

    def val_dataloader(self) -> DataLoader | list:
        """The held-out recordings, the same draw every epoch (``[]`` without ``val_recordings``)."""
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_sampler=self.val_sampler, collate_fn=collate_windows)


__all__ = ["MODALITIES", "BoldPatchWindows", "MixedBatchSampler", "MixedDataModule", "at_rate", "bold_to_patches",
           "modality"]
