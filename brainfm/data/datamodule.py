"""LightningDataModules for pretraining and for labelled decoding.

Both take plain arguments so that LightningCLI can fill them from YAML, and both derive
from :class:`BrainDataModule`: after ``setup`` they expose one typed
:class:`~brainfm.data.summary.DataSummary` (``summary``) and draw statistics windows
(:meth:`BrainDataModule.statistics_batches`), which is all a task reads from its data.
``store`` is a store URL; ``brainfm fit`` resolves a ``null`` store in a config to the
bundled sample store (built on first use), so this layer never imports the conversion
pipelines. Batches are the dicts of :func:`brainfm.data.dataset.collate_windows`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from brainfm.data.artifacts import RejectionCounts, RejectionCriteria
from brainfm.data.dataset import EntityLabels, EventWindows, FixedWindows, ShuffledWindows, collate_windows
from brainfm.data.normalize import SubjectNormalizer, check_method, fit_normalizer, normalization_entry
from brainfm.data.sampling import EpochWindows, evenly_spaced, window_loader
from brainfm.data.splits import SubjectSplit, calibration_spans, eegmat_cbramod, random_split
from brainfm.data.store import ShardStore
from brainfm.data.summary import DataSummary

log = logging.getLogger(__name__)

#: Named subject splits usable from configs.
NAMED_SPLITS = {"eegmat-cbramod": eegmat_cbramod}


def _open_store(store: str | None) -> ShardStore:
    if store is None:
        raise ValueError("no store given: pass a store URL (`brainfm fit` resolves store: null to the sample "
                         "store; in Python, brainfm.pipelines.sample.sample_store() builds it)")
    shard_store = ShardStore(store)
    if not len(shard_store):
        raise ValueError(f"store {shard_store.url} holds no recordings: nothing to train on; "
                         "convert a dataset into it first (brainfm convert BIDS_ROOT STORE)")
    return shard_store


def check_subjects(store: ShardStore, subjects: Sequence[str], role: str) -> None:
    """Fail when none of ``subjects`` (``role``: e.g. ``val_subjects``) is in ``store``; log a
    warning when some are missing (a named split on a partial store, e.g. the small sample)."""
    present = set(store.subjects())
    missing = [s for s in subjects if s not in present]
    if subjects and len(missing) == len(subjects):
        asked = ", ".join(subjects[:4]) + (f" and {len(subjects) - 4} more" if len(subjects) > 4 else "")
        held = sorted(present)
        raise ValueError(f"{role} ({asked}): none is in store {store.url}; its {len(held)} subjects are "
                         f"{', '.join(held[:12])}{' ...' if len(held) > 12 else ''}")
    if missing:
        log.warning("%s: %d of %d not in store %s (%s); using the other %d", role, len(missing), len(subjects),
                    store.url, ", ".join(missing), len(subjects) - len(missing))


def check_windows(windows, role: str, window_s: float) -> None:
    """Fail when a dataset that should feed training or validation has no window."""
    if len(windows) == 0:
        longest = max((windows.store.entry(r)["n_samples"] / windows.sfreq for r in windows.recordings), default=0.0)
        raise ValueError(
            f"no {role} windows: {len(windows.recordings)} recording(s) selected in {windows.store.url}, the longest "
            f"{longest:.1f} s, for {window_s:g}-s windows; use shorter windows or other subjects")


def _loader(dataset, batch_size: int, num_workers: int, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_windows,
        persistent_workers=num_workers > 0,
        pin_memory=False,
        drop_last=drop_last,
    )


def _attach_normalizer(parts: Iterable[Any], hp: Any) -> SubjectNormalizer | None:
    """Fit the subject normaliser of ``hp.normalize`` (None: off) on every part's subjects and
    give it to each part, so train, validation and test windows are normalised alike."""
    if check_method(hp.normalize, hp.stats_source) is None:
        return None
    parts = [ds for ds in parts if ds is not None]
    normalizer = fit_normalizer(parts, hp.normalize, hp.stats_source, hp.stats_seconds)
    for ds in parts:
        ds.normalizer = normalizer
    return normalizer


def _match_target_set(store: ShardStore, hp: Any, recordings: Sequence[str]) -> str | None:
    """The key of a precomputed target set for these windows, default picks and normalisation
    that covers ``recordings``, if any."""
    wanted = normalization_entry(hp.normalize, hp.stats_source, hp.stats_seconds)
    for key, entry in sorted(store.target_sets.items()):
        stride = hp.stride_s or hp.window_s
        covered = entry.get("recordings")
        if (entry["window_s"], entry["positioned_only"], entry["channel_types"]) == (hp.window_s, True, hp.channel_types) \
                and abs(stride / entry["stride_s"] - round(stride / entry["stride_s"])) < 1e-9 \
                and entry.get("normalization") == wanted and (covered is None or set(recordings) <= set(covered)):
            return key
    return None


def _check_target_normalization(store: ShardStore, key: str, hp: Any) -> None:
    """A named target set must have been computed from windows normalised as these are."""
    have = store.target_set(key).get("normalization")
    wanted = normalization_entry(hp.normalize, hp.stats_source, hp.stats_seconds)
    if have != wanted:
        raise ValueError(f"target set {key!r} holds targets of windows normalised as {have} (None: as stored), "
                         f"but these windows are normalised as {wanted}; use target_set 'auto' or null, or "
                         "precompute a matching set (brainfm convert --targets ... --targets-normalize)")


class ResumableLoader(DataLoader):
    """A DataLoader over :class:`ShuffledWindows` or :class:`EpochWindows` that Lightning can
    resume mid-epoch (it saves :meth:`state_dict` in the checkpoint and restores it).

    Its state is the epoch being iterated and the batches already consumed; restoring it
    resumes that epoch's (seeded) order after those batches, so a resumed run sees exactly
    the windows the interrupted one had not seen yet. An :class:`EpochWindows` skips them
    without reading; a :class:`ShuffledWindows` replays and drops them.

    Lightning fetches one batch ahead of the training step. So that a checkpoint counts
    only the batches trained on, :class:`PretrainDataModule` calls :meth:`consumed` for each
    training batch and the state then counts those; without such calls, every batch
    yielded counts.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The dataset advances its epoch on each iteration, in the main process or in
        # each persistent worker; this counter mirrors it from the main process.
        self._next_epoch = self.dataset.epoch
        self._epoch, self._yielded, self._skip, self._resume_at = self._next_epoch, 0, 0, 0
        self._consumed, self._counting = 0, False  # batches trained on, once a consumer reports them

    def __iter__(self):
        self._epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        offset, self._resume_at = self._resume_at, 0
        skip, self._skip = self._skip, 0
        if isinstance(self.dataset, EpochWindows):
            # A fresh worker (not persistent, or the first epoch) copies this state; persistent
            # workers advance their own copies in step.
            self.dataset.resume(self._epoch, offset)
        self._yielded = self._consumed = offset
        for k, batch in enumerate(super().__iter__(), start=offset):
            self._yielded = k + 1
            if k >= skip:
                yield batch

    def consumed(self) -> None:
        """Count one more batch as trained on (called from the training loop's batch hook)."""
        self._consumed, self._counting = self._consumed + 1, True

    def state_dict(self) -> dict[str, int]:
        batches = self._consumed if self._counting else self._yielded
        return {"epoch": self._epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self._iterator is not None:
            raise RuntimeError("restore a ResumableLoader before iterating it")
        epoch, batches = state["epoch"], state["batches"]
        if batches >= len(self):  # saved after the epoch's last batch: the next epoch starts afresh
            epoch, batches = epoch + 1, 0
        self._next_epoch = epoch
        if isinstance(self.dataset, EpochWindows):
            self._resume_at = batches
        else:
            self.dataset.set_epoch(epoch)
            self._skip = batches


class BrainDataModule(L.LightningDataModule):
    """What every brainfm DataModule offers a task after ``setup``.

    Subclasses set ``self._summary`` in ``setup`` and implement :meth:`statistics_windows`.
    """

    _summary: DataSummary | None = None

    @property
    def summary(self) -> DataSummary:
        """The :class:`DataSummary` of the training windows (after ``setup``)."""
        if self._summary is None:
            raise RuntimeError(f"{type(self).__name__}.summary is only known after setup()")
        return self._summary

    @property
    def sfreq(self) -> float:
        """Sampling rate of the windows (after ``setup``)."""
        return self.summary.sfreq

    def statistics_windows(self) -> FixedWindows | EventWindows:
        """Map-style training windows from which :meth:`statistics_batches` draws."""
        raise NotImplementedError

    def statistics_batches(self, n_windows: int, batch_size: int = 64) -> DataLoader:
        """Up to ``n_windows`` training windows spread evenly over the training set, in order
        (for statistics such as the neurodynamics target normalisation)."""
        windows = self.statistics_windows()
        return window_loader(windows, evenly_spaced(len(windows), n_windows), batch_size)


class PretrainDataModule(BrainDataModule):
    """Unlabelled windows from every recording, split by subject.

    Parameters
    ----------
    store : str
        Store URL (``null`` in a config: ``brainfm fit`` resolves it to the sample store).
    window_s, stride_s : float
        Window length and stride (seconds).
    batch_size, num_workers : int
        DataLoader settings (workers are persistent). Training batches come from
        :class:`~brainfm.data.sampling.EpochWindows`: under DDP every training window is
        seen once per epoch across ranks, in full batches, except fewer than ranks x
        ``batch_size`` windows left out of each epoch (a different tail each epoch).
    val_subjects : list of str, optional
        Validation subjects; default: a seeded random ``val_fraction`` of subjects.
    exclude_subjects : list of str, optional
        Subjects never used for training or validation (e.g. the test subjects of a
        downstream protocol).
    test_subjects : list of str, optional
        Subjects of ``brainfm test`` (default: the validation subjects).
    channel_types : list of str, optional
        Keep only these channel types.
    buffer_size, block_s : int, float
        Shuffle-buffer size (windows) and read-block length (seconds).
    seed : int
        Seed of the subject split and the window order.
    target_set : str, optional
        Key of a precomputed target set in the store (``brainfm convert --targets``);
        batches then carry ``targets`` and the neurodynamics objective reads them
        instead of computing them. ``"auto"`` picks the set whose window, stride and
        normalisation match and that covers every recording the loaders read, if the
        store has one, and otherwise leaves targets to be computed on the fly.
    reject : dict or bool, optional
        Window-level artifact rejection (:mod:`brainfm.data.artifacts`) for training,
        validation and test windows: ``true`` or ``{}`` for the defaults (CBraMod's 100 uV
        for EEG, flat channels, line noise), a dict of
        :class:`~brainfm.data.artifacts.RejectionCriteria` fields to change them, null for
        none. Counts per recording are logged and kept in ``rejections``.
    window_log : str, optional
        Directory where each rank appends, per training batch it trains on, one JSON line
        ``{"epoch", "batch", "rank", "time", "windows": [[recording, start], ...]}`` to
        ``windows.rank{R}.jsonl`` (an audit of who saw which window; see
        ``tests/test_distributed.py``).
    normalize : {None, 'zscore', 'align'}
        Subject-adaptive normalisation of every window, as :class:`DecodingDataModule` does
        (:mod:`brainfm.data.normalize`; Euclidean alignment: He & Wu 2019), so that an
        encoder is pretrained on the same kind of signal its decoders are fine-tuned on.
        Each subject's statistics come from its own recordings, unlabelled
        (``stats_source``: ``session`` or its first ``stats_seconds``: ``calibration``).
        A precomputed target set records how its windows were normalised (``brainfm convert
        --targets ... --targets-normalize``): ``target_set: auto`` picks only a set normalised
        as these windows are (else targets are computed on the fly), and a named set that was
        normalised otherwise is refused.
    """

    def __init__(
        self,
        store: str | None = None,
        window_s: float = 5.0,
        stride_s: float | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_subjects: list[str] | None = None,
        val_fraction: float = 0.1,
        exclude_subjects: list[str] | None = None,
        test_subjects: list[str] | None = None,
        channel_types: list[str] | None = None,
        buffer_size: int = 512,
        block_s: float = 60.0,
        seed: int = 0,
        target_set: str | None = None,
        reject: dict[str, Any] | bool | None = None,
        window_log: str | None = None,
        normalize: str | None = None,
        stats_source: str = "session",
        stats_seconds: float = 60.0,
    ):
        super().__init__()
        self.criteria = RejectionCriteria.resolve(reject)  # validate at construction
        check_method(normalize, stats_source)
        self.save_hyperparameters()
        #: The subject normaliser of every part (after ``setup``; None without ``normalize``).
        self.normalizer: SubjectNormalizer | None = None
        self.store_url = store
        self.train_set: ShuffledWindows | None = None
        self.val_set: FixedWindows | None = None
        self.test_set: FixedWindows | None = None
        self._train_loader: ResumableLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        store = _open_store(self.store_url)
        subjects = [s for s in store.subjects() if s not in set(hp.exclude_subjects or ())]
        if hp.val_subjects is not None:
            check_subjects(store, hp.val_subjects, "val_subjects")
            split = SubjectSplit([s for s in subjects if s not in hp.val_subjects], hp.val_subjects)
        else:
            split = random_split(subjects, val=hp.val_fraction, seed=hp.seed)
        test = hp.test_subjects if hp.test_subjects is not None else split.val
        common = dict(channel_types=hp.channel_types, reject=self.criteria)
        self.split = split
        self.train_set = ShuffledWindows(
            store, hp.window_s, hp.stride_s, recordings=store.select(split.train),
            block_s=hp.block_s, buffer_size=hp.buffer_size, seed=hp.seed, **common,
        )
        self.val_set = FixedWindows(store, hp.window_s, hp.stride_s, recordings=store.select(split.val), **common)
        check_windows(self.train_set, "training", hp.window_s)
        if split.val:
            check_windows(self.val_set, "validation", hp.window_s)
        self.test_set = FixedWindows(store, hp.window_s, hp.stride_s, recordings=store.select(test), **common)
        parts = (self.train_set, self.val_set, self.test_set)
        self.target_set = hp.target_set
        if self.target_set == "auto":  # the recordings the loaders read (picking leaves some out)
            self.target_set = _match_target_set(store, hp, [rid for ds in parts for rid in ds.recordings])
        elif self.target_set is not None:
            _check_target_normalization(store, self.target_set, hp)
        for ds in parts:
            ds.use_targets(self.target_set)
        self.normalizer = _attach_normalizer(parts, hp)
        self._summary = DataSummary.of(self.train_set, target_set=self.target_set,
                                       normalization=self.normalizer and self.normalizer.describe())

    @property
    def rejections(self) -> dict[str, RejectionCounts]:
        """Per recording id, windows checked and rejected by ``reject`` (after ``setup``)."""
        out: dict[str, RejectionCounts] = {}
        for ds in (self.train_set, self.val_set, self.test_set):
            if ds is not None:
                out.update(ds.rejections)  # val and test may share recordings: the same counts
        return out

    def statistics_windows(self) -> FixedWindows:
        """The training windows as :class:`FixedWindows` (same window, stride, picks, targets and
        artifact rejection)."""
        hp = self.hparams
        windows = FixedWindows(self.train_set.store, hp.window_s, hp.stride_s, recordings=self.train_set.recordings,
                               channel_types=hp.channel_types, targets=self.target_set, reject=self.criteria)
        windows.normalizer = self.normalizer
        return windows

    def _rank(self) -> tuple[int, int]:
        """(rank, world size) of the trainer, or of torch.distributed without one."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def train_dataloader(self) -> DataLoader:
        w, bs = self.hparams.num_workers, self.hparams.batch_size
        rank, world = self._rank()
        self._train_loader = ResumableLoader(
            EpochWindows(self.train_set, bs, rank, world), batch_size=bs, num_workers=w,
            collate_fn=collate_windows, persistent_workers=w > 0, drop_last=True,
        )
        return self._train_loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count each training batch as consumed (for mid-epoch checkpoints) and log its windows."""
        loader = self._train_loader
        if loader is None or self.trainer is None or not self.trainer.training:
            return batch
        loader.consumed()
        if self.hparams.window_log:
            rank, _ = self._rank()
            state = loader.state_dict()
            line = {"epoch": state["epoch"], "batch": state["batches"] - 1, "rank": rank, "time": time.time(),
                    "windows": [[r, int(s)] for r, s in zip(batch["recording"], batch["start"].tolist())]}
            path = Path(self.hparams.window_log) / f"windows.rank{rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        return batch

    def val_dataloader(self) -> DataLoader:
        return _loader(self.val_set, self.hparams.batch_size, self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return _loader(self.test_set, self.hparams.batch_size, self.hparams.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class DecodingDataModule(BrainDataModule):
    """Labelled windows for fine-tuning and evaluation, split by subject.

    Labels come either from a BIDS entity per recording (``label_entity`` +
    ``label_map``, e.g. ``task`` → ``{"rest": 0, "arithmetic": 1}`` for EEGMAT) with
    fixed windows, or from events (``event_id`` with ``tmin``/``tmax``).

    Parameters
    ----------
    store : str
        Store URL (``null`` in a config: ``brainfm fit`` resolves it to the sample store).
    split : str or dict
        A name from :data:`NAMED_SPLITS` or ``{"train": [...], "val": [...], "test": [...]}``.
    adapt_subjects : list of str, optional
        Calibration mode (reset-tuning, within-subject few-shot): the split is replaced by
        these subjects' own data, cut in time by :func:`brainfm.data.splits.calibration_spans`.
        ``train`` is the first ``adapt_seconds`` of each subject (windows every
        ``adapt_stride_s``), ``test`` is the rest (windows every ``stride_s``), and there
        is no validation set.
    adapt_seconds : float
        Labelled seconds per subject in calibration mode.
    adapt_stride_s : float
        Stride of the calibration windows (overlapping windows make the most of a few
        seconds; test windows never overlap calibration ones).
    adapt_test_after_s : float, optional
        Test only on data after this many calibration seconds (default
        ``adapt_seconds``), to score several calibration amounts on the same windows.
    normalize : {None, 'zscore', 'align'}
        Subject-adaptive normalisation (:mod:`brainfm.data.normalize`): per-subject channel
        z-scoring, or z-scoring plus Euclidean alignment (He & Wu 2019). Every subject of
        every part gets its own statistics from its own unlabelled signal, and the same
        normaliser is applied to train, validation and test windows (``normalizer``).
    stats_source : {'session', 'calibration'}
        ``session``: all of the subject's signal (transductive); ``calibration``: its first
        ``stats_seconds`` (the spans of :func:`~brainfm.data.splits.calibration_spans`).
    stats_seconds : float
        Calibration length of ``stats_source='calibration'``.
    """

    def __init__(
        self,
        store: str | None = None,
        split: str | dict[str, list[str]] = "eegmat-cbramod",
        window_s: float = 5.0,
        stride_s: float | None = None,
        label_entity: str | None = "task",
        label_map: dict[str, int] | None = None,
        event_id: dict[str, int] | None = None,
        tmin: float = 0.0,
        tmax: float | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        channel_types: list[str] | None = None,
        adapt_subjects: list[str] | None = None,
        adapt_seconds: float = 60.0,
        adapt_stride_s: float = 1.0,
        adapt_test_after_s: float | None = None,
        normalize: str | None = None,
        stats_source: str = "session",
        stats_seconds: float = 60.0,
    ):
        super().__init__()
        check_method(normalize, stats_source)
        self.save_hyperparameters()
        self.sets: dict[str, Any] = {}
        #: The subject normaliser shared by every part (after ``setup``; None without ``normalize``).
        self.normalizer: SubjectNormalizer | None = None

    def _split(self) -> SubjectSplit:
        split = self.hparams.split
        if isinstance(split, str):
            if split not in NAMED_SPLITS:
                raise ValueError(f"unknown split {split!r}; named splits: {', '.join(NAMED_SPLITS)}")
            return NAMED_SPLITS[split]()
        return SubjectSplit(split.get("train", ()), split.get("val", ()), split.get("test", ()))

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        hp = self.hparams
        store = _open_store(hp.store)
        if hp.adapt_subjects:
            self._setup_calibration(store)
            return
        self.split = self._split()
        check_subjects(store, self.split.train, "train subjects")
        if self.split.val:
            check_subjects(store, self.split.val, "val subjects")
        for part in ("train", "val", "test"):
            recordings = store.select(self.split.part(part))
            if hp.event_id is not None:
                if hp.tmax is None:
                    raise ValueError("event-locked windows need tmax")
                ds = EventWindows(store, hp.event_id, hp.tmin, hp.tmax, recordings, hp.channel_types)
            else:
                if not hp.label_map:
                    raise ValueError("give label_map (with label_entity) or event_id")
                labels = EntityLabels(hp.label_entity, hp.label_map)
                ds = FixedWindows(store, hp.window_s, hp.stride_s, recordings, labels, hp.channel_types)
            self.sets[part] = ds
        check_windows(self.sets["train"], "training", hp.window_s)
        if self.split.val:
            check_windows(self.sets["val"], "validation", hp.window_s)
        self._summarize()

    def _setup_calibration(self, store: ShardStore) -> None:
        hp = self.hparams
        if hp.event_id is not None or not hp.label_map:
            raise ValueError("calibration mode (adapt_subjects) needs recording-level labels (label_map)")
        labels = EntityLabels(hp.label_entity, hp.label_map)
        recordings = [r for r in store.select(hp.adapt_subjects) if labels(store.entry(r)) is not None]
        missing = sorted(set(hp.adapt_subjects) - {store.entry(r)["subject"] for r in recordings})
        if missing:
            raise ValueError(f"no labelled recordings for adapt_subjects {missing} in {store.url}")
        calib, test = {}, {}
        for subject in hp.adapt_subjects:
            durations = {r: store.entry(r)["n_samples"] / store.entry(r)["sfreq"]
                         for r in recordings if store.entry(r)["subject"] == subject}
            c, t = calibration_spans(durations, hp.adapt_seconds, hp.adapt_test_after_s)
            calib.update(c), test.update(t)
        self.split = SubjectSplit((), (), tuple(hp.adapt_subjects), name=f"calibration-{hp.adapt_seconds:g}s")
        self.sets["train"] = FixedWindows(store, hp.window_s, hp.adapt_stride_s, recordings, labels,
                                          hp.channel_types, spans=calib)
        self.sets["val"] = None
        self.sets["test"] = FixedWindows(store, hp.window_s, hp.stride_s, recordings, labels,
                                         hp.channel_types, spans=test)
        check_windows(self.sets["train"], "calibration", hp.window_s)
        self._summarize()

    def _summarize(self) -> None:
        hp = self.hparams
        self.normalizer = _attach_normalizer(self.sets.values(), hp)
        self._summary = DataSummary.of(self.sets["train"], class_counts=self.class_counts("train"),
                                       normalization=self.normalizer and self.normalizer.describe())

    def statistics_windows(self) -> FixedWindows | EventWindows:
        return self.sets["train"]

    def subject_channels(self, part: str = "train") -> dict[str, int]:
        """Channels per subject in ``part`` (for subject-specific layers); one montage per subject."""
        return DataSummary.of(self.sets[part]).subject_channels()

    @property
    def n_classes(self) -> int:
        mapping: Mapping[str, int] = self.hparams.event_id or self.hparams.label_map
        return len(set(mapping.values()))

    def class_counts(self, part: str = "train") -> np.ndarray:
        """Windows per class in ``part`` — for class weights or a weighted sampler."""
        return np.bincount(self.sets[part].labels, minlength=self.n_classes)

    def train_dataloader(self) -> DataLoader:
        return _loader(self.sets["train"], self.hparams.batch_size, self.hparams.num_workers, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.sets["val"] is None or not len(self.sets["val"]):
            return []  # calibration mode and splits without validation subjects: no validation loop
        return _loader(self.sets["val"], self.hparams.batch_size, self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return _loader(self.sets["test"], self.hparams.batch_size, self.hparams.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


__all__: Sequence[str] = ["BrainDataModule", "DecodingDataModule", "PretrainDataModule", "NAMED_SPLITS"]
