"""Precompute neurodynamics targets into a store (``brainfm convert --targets WINDOW_S``).

For every recording, the target vector (:func:`brainfm.targets.compute_targets`) of each
fixed window is computed here and written through the store's own target-set format
(:func:`brainfm.data.store_write.write_target_table`, :func:`brainfm.data.store_write.add_target_set`;
the format is specified in :mod:`brainfm.data.store`). Windows come from
:class:`~brainfm.data.FixedWindows` with the loader's default channel picking, so a window
dataset with the same window, a stride that is a multiple of the stored one and
``targets=key`` reads exactly the targets it would compute itself.

With ``normalize``, the windows are first normalised per subject with statistics from the
subject's own unlabelled recordings (:func:`brainfm.data.normalize.fit_normalizer`, the same
function and inputs :class:`~brainfm.data.datamodule.PretrainDataModule` uses), so the set
matches a pretraining run with the same ``normalize`` and ``stats_source``. Computing targets
is what limits such a run on a CPU: ``configs/pretrain/small-10s-aligned.yaml`` trained at 6-10
windows/s with targets computed on the fly and at 36 with this set (2-core CPU, 2026-12-01). Subjects whose recordings have several
montages have no per-subject statistics: their recordings get no targets, and the set lists
the recordings it covers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from brainfm.data import store as shard
from brainfm.data.store_lock import store_lock
from brainfm.data.store_write import add_target_set, target_set_key, write_target_table
from brainfm.data.dataset import FixedWindows, collate_windows
from brainfm.data.normalize import fit_normalizer, normalization_entry
from brainfm.targets import TargetSpec, compute_targets, target_names

log = logging.getLogger(__name__)


def has_target_set(store: shard.ShardStore, window_s: float, spec: Any = None, normalization: dict | None = None) -> bool:
    """Whether ``store`` lists the target set of ``spec`` (default: every group) for ``window_s``
    windows, with that ``normalization`` (None: the signal as stored)."""
    spec_dict = json.loads(json.dumps(dataclasses.asdict(spec or TargetSpec())))
    return any(e["window_s"] == window_s and e["spec"] == spec_dict and e.get("normalization") == normalization
               for e in store.target_sets.values())


def precompute_targets(store_url: str, window_s: float, stride_s: float | None = None,
                       spec: Any = None, batch_size: int = 64, progress: bool = True, wait: float | None = 0.0,
                       normalize: str | None = None, stats_source: str = "session",
                       stats_seconds: float = 60.0) -> str:
    """Write the targets of every fixed window of every recording; return the target-set key.

    ``normalize`` (``zscore`` or ``align``), ``stats_source`` and ``stats_seconds``: compute
    them from per-subject normalised windows, as ``PretrainDataModule`` with the same
    arguments feeds them. Holds the store's writer lock (``wait``: as for
    :func:`brainfm.pipelines.convert.convert`).
    """
    if not window_s > 0 or (stride_s is not None and not stride_s > 0):
        raise ValueError(f"target windows need a positive length and stride (got {window_s}, {stride_s})")
    if not 0 < stats_seconds < float("inf"):
        raise ValueError(f"stats_seconds must be a finite number > 0, got {stats_seconds}")
    normalization = normalization_entry(normalize, stats_source, stats_seconds)
    if normalization is not None and stats_source == "running":
        raise ValueError("stats_source='running' is for live use; precomputed targets need 'session' or 'calibration'")
    with store_lock(store_url, timeout=wait, command="convert --targets"):
        return _precompute(store_url, window_s, stride_s, spec, batch_size, progress, normalization)


def _one_montage_recordings(windows: FixedWindows) -> tuple[list[str], list[str]]:
    """(recordings of subjects with one montage, subjects with several)."""
    montages: dict[str, set] = {}
    for subject, spec in zip(windows.subjects, windows.specs):
        montages.setdefault(subject, set()).add(spec)
    several = sorted(s for s, specs in montages.items() if len(specs) > 1)
    return [rid for rid, s in zip(windows.recordings, windows.subjects) if s not in several], several


def _precompute(store_url: str, window_s: float, stride_s: float | None, spec: Any, batch_size: int,
                progress: bool, normalization: dict | None) -> str:
    spec = spec or TargetSpec()
    stride_s = stride_s or window_s
    spec_dict = json.loads(json.dumps(dataclasses.asdict(spec)))
    key = target_set_key(spec_dict, window_s, stride_s, normalization)
    store = shard.ShardStore(store_url)
    windows = FixedWindows(store, window_s, stride_s)  # leaves out recordings without a positioned channel
    if normalization is not None:
        kept, several = _one_montage_recordings(windows)
        if several:
            log.warning("targets: no per-subject statistics for %s (several montages): their recordings get "
                        "no targets", ", ".join(several))
        windows = FixedWindows(store, window_s, stride_s, recordings=kept)
        windows.normalizer = fit_normalizer([windows], normalization["method"], normalization["source"],
                                            60.0 if normalization["seconds"] is None else normalization["seconds"])
    covered = None if set(windows.recordings) == set(store.recording_ids) else windows.recordings
    names = target_names(spec)
    for i, rid in enumerate(tqdm(windows.recordings, desc="targets", unit="rec", disable=not progress)):
        idx = np.flatnonzero(windows.rec_index == i)
        values = np.zeros((len(idx), len(names)), dtype=np.float32)  # (n_windows, K)
        for lo in range(0, len(idx), batch_size):
            batch = collate_windows([windows[int(k)] for k in idx[lo : lo + batch_size]])
            y = compute_targets(batch["x"], windows.sfreq, batch["channel_mask"], batch["sensor_geometry"], spec)
            values[lo : lo + len(y)] = y.float().numpy()
        write_target_table(store, rid, key, values)
    add_target_set(store_url, key, spec=spec_dict, window_s=window_s, stride_s=stride_s, names=names,
                   positioned_only=windows.positioned_only, channel_types=windows.channel_types,
                   normalization=normalization, recordings=covered)
    return key
