"""``brainfm import-hdf5``: an HDF5 corpus in the LaBraM layout into a shard store, without MNE
preprocessing.

The layout (one group per recording, a ``(channels, time)`` dataset in µV, channel names and
sampling rate as attributes) is specified and read by :mod:`brainfm.data.hdf5`. The signal is
taken as the producer preprocessed it; what conversion adds is kept:

* **positions** come from the conversion's montage fallback (:func:`bids_io.fill_from_montage`:
  MNE's standard 10-05 montage, names matched case-insensitively), recorded in
  ``position_fallback`` and the manifest's ``positions``. A channel whose name is not in the
  montage fails its recording, naming it, unless ``keep_unpositioned``: then it is kept with
  unknown position, as conversion keeps it (loaders leave it out);
* **quality** follows the store's rules (:func:`quality_flags`: ``flat`` and ``spikes`` flags,
  non-physical amplitudes refused; a file in volts is refused with a hint to pass ``scale=1e6``);
* **provenance**: the recording's ``source`` is ``<file name>::<group>``, ``source_sha256``
  hashes the dataset's bytes and attributes, and the group attribute ``hdf5`` holds the file's
  path, the group and dataset names and all their attributes; ``filters`` holds the producer's
  ``lFreq``/``hFreq``/``rate`` as the file states them (brainfm applied none).

The store's preset (manifest ``preset``, ``name: "hdf5-import"``) is built from the file's rate and
band-pass, so a store holds one rate and band; a group that differs is refused, naming it, and
importing into a store made by another preset (``brainfm convert``) is refused as convert refuses
it. Each recording is written atomically (:func:`brainfm.data.store_write.write_recording`) and listed
only once complete, under the store's writer lock; the manifest is committed at most once a second
and whenever the run stops, so an interrupted or killed import leaves a valid store, and the next
run removes what the dead writer left, skips what is up to date and imports the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import mne
import numpy as np
from tqdm.auto import tqdm

from brainfm.data import store as shard
from brainfm.data.store_lock import store_lock
from brainfm.data.store_verify import verify_recording
from brainfm.data.store_write import (check_new_store, commit, drop_stale_target_sets, manifest_for_preset,
                                      remove_stale_temporaries, write_recording)
from brainfm.data.hdf5 import DATASET, ENTITY_ATTRS, Hdf5Recording, scan
from brainfm.pipelines import bids_io
from brainfm.pipelines.convert import COMMIT_EVERY_S
from brainfm.pipelines.presets import Preset
from brainfm.pipelines.preprocess import quality_flags
from brainfm.signal import SensorSpec

log = logging.getLogger(__name__)
PRESET_NAME = "hdf5-import"


@dataclasses.dataclass
class ImportReport:
    """What an import run did; written as JSON into the store (``reports/import-hdf5-*.json``)."""

    source: str
    store: str
    preset_hash: str = ""
    imported: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    #: ``{"id", "source", "error"}`` per group that was not imported.
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    warnings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    dropped_target_sets: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


def hdf5_preset(rec: Hdf5Recording, chunk_seconds: float = 30.0) -> Preset:
    """The store preset of an import: the file's rate and band-pass, nothing applied by brainfm."""
    band = "" if rec.l_freq is None and rec.h_freq is None else f", {rec.l_freq}-{rec.h_freq} Hz"
    return Preset(PRESET_NAME, sfreq=rec.sfreq, l_freq=rec.l_freq, h_freq=rec.h_freq, notch=None, reference=None,
                  ch_types=("eeg",), resample_first=False, chunk_seconds=chunk_seconds,
                  description=f"imported from HDF5 (LaBraM layout), {rec.sfreq:g} Hz{band} as the file states")


def montage_positions(names: tuple[str, ...], sfreq: float) -> tuple[np.ndarray, dict[str, Any]]:
    """``loc`` rows ``(C, 12)`` of EEG channels by name, through conversion's montage fallback."""
    info = mne.create_info(list(names), sfreq, "eeg")
    probe = mne.io.RawArray(np.zeros((len(names), 1)), info, verbose="error")
    return bids_io.fill_from_montage(probe, bids_io.head_loc(probe.info))


def source_checksum(rec: Hdf5Recording, data: np.ndarray, scale: float) -> str:
    """SHA-256 of a group's samples as stored, its attributes and the scale applied."""
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes())
    meta = {"dtype": str(data.dtype), "shape": list(data.shape), "attrs": rec.attrs, "group_attrs": rec.group_attrs,
            "scale": scale}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _refuse(rec: Hdf5Recording, preset: Preset) -> str | None:
    """Why a group cannot join a store of ``preset`` (another rate or band-pass), or None."""
    mine = (rec.sfreq, rec.l_freq, rec.h_freq)
    if mine != (preset.sfreq, preset.l_freq, preset.h_freq):
        return (f"{rec.where}: rate and band-pass {mine[0]:g} Hz, {mine[1]}-{mine[2]} Hz differ from the store's "
                f"{preset.sfreq:g} Hz, {preset.l_freq}-{preset.h_freq} Hz (a store holds one preset); import it "
                "into another store")
    return None


def import_recording(rec: Hdf5Recording, store_url: str, preset: Preset, scale: float = 1.0,
                     keep_unpositioned: bool = False, positions: dict | None = None,
                     data: np.ndarray | None = None, checksum: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Import one checked group into the store (atomically); return its manifest entry and warnings.

    Raises :class:`bids_io.ConversionError` naming the file and group when the group cannot be
    stored (unknown channel names, non-finite or non-physical samples). ``positions`` caches
    :func:`montage_positions` per channel list across calls.
    """
    positions = {} if positions is None else positions
    if rec.ch_names not in positions:
        positions[rec.ch_names] = montage_positions(rec.ch_names, rec.sfreq)
    loc, fallback = positions[rec.ch_names]
    if fallback["missing"] and not keep_unpositioned:
        raise bids_io.ConversionError(
            f"{rec.where}: channel(s) {', '.join(fallback['missing'][:10])} have no position in the "
            f"{fallback['montage']} montage; rename them to 10-05 names, or keep them without a position "
            "(--keep-unpositioned)")
    data = rec.read() if data is None else data
    checksum = checksum or source_checksum(rec, data, scale)
    signal = data.astype(np.float32) * np.float32(scale)  # (C, N) µV
    if not np.isfinite(signal).all():
        bad = [rec.ch_names[i] for i in np.flatnonzero(~np.isfinite(signal).all(axis=1))]
        raise bids_io.ConversionError(f"{rec.where}: non-finite samples (NaN/inf) in channels {bad[:10]}")
    flat = [rec.ch_names[i] for i in np.flatnonzero(np.ptp(signal, axis=1) == 0)]
    if len(flat) == len(rec.ch_names):
        raise bids_io.ConversionError(f"{rec.where}: every sample of every channel is constant: no signal to store")
    types = ["eeg"] * len(rec.ch_names)
    try:
        flags = quality_flags(signal, list(rec.ch_names), types, flat)
    except bids_io.ConversionError as err:
        hint = " (in volts? pass --scale 1e6)" if np.median(np.abs(signal)) < 1e-2 else ""
        raise bids_io.ConversionError(f"{rec.where}: {err}; the layout holds µV{hint}") from None
    warnings = [f"{len(names)} channel(s) flagged {reason}: {', '.join(names[:10])}"
                for reason in ("flat", "spikes") if (names := sorted(n for n, r in flags.items() if reason in r))]
    if fallback["missing"]:
        missing = fallback["missing"]
        warnings.append(f"{len(missing)} channel(s) without position: {', '.join(missing[:10])}")
    entities = {k: rec.group_attrs.get(k) for k in ENTITY_ATTRS}
    attrs = {
        **entities,
        "subject": str(entities["subject"]) if entities["subject"] is not None else rec.group,
        "datatype": "eeg",
        "source": f"{Path(rec.file).name}::{rec.group}",
        "source_sha256": checksum,
        "preset_hash": preset.hash,
        "positions": bids_io.positions_label(loc, fallback),
        "position_fallback": fallback,
        "filters": {"sfreq": rec.sfreq, "l_freq": rec.l_freq, "h_freq": rec.h_freq, "notch": None,
                    "line_freq": None, "reference": "as recorded", "applied": "by the HDF5 producer (file attributes)"},
        "line_freq": None,
        "first_time": 0.0,
        "hdf5": {"file": os.path.abspath(rec.file), "group": rec.group, "dataset": rec.dataset, "attrs": rec.attrs,
                 "group_attrs": rec.group_attrs, "scale": scale},
    }
    spec = SensorSpec(rec.ch_names, types, loc, rec.sfreq)
    entry = write_recording(store_url, rec.group, signal, spec, attrs, chunk_seconds=preset.chunk_seconds,
                            quality={"flags": flags, "warnings": warnings})
    return entry, warnings


def import_hdf5(path: str | os.PathLike, store_url: str | os.PathLike, dataset: str = DATASET, scale: float = 1.0,
                keep_unpositioned: bool = False, chunk_seconds: float = 30.0, wait: float | None = 0.0,
                progress: bool = True) -> ImportReport:
    """Import every group of a LaBraM-layout HDF5 file into the store at ``store_url``.

    Parameters
    ----------
    path : path
        The HDF5 file (:mod:`brainfm.data.hdf5` specifies the layout).
    store_url : str or path
        Store location (local path or fsspec URL); created if missing.
    dataset : str
        Name of the signal dataset in each group.
    scale : float
        Factor to µV (``1e6`` for a file in volts).
    keep_unpositioned : bool
        Keep channels whose names have no montage position (unknown position) instead of failing
        their recording.
    chunk_seconds : float
        Time-chunk length of the stored arrays (part of the store's preset).
    wait : float or None
        Seconds to wait for another writer's lock (0: fail at once, None: for ever).
    progress : bool
        Show a progress bar.

    Returns
    -------
    ImportReport
        Groups imported, skipped (up to date: same samples, attributes and preset) and failed,
        each failure naming the file and group. The rest still import when one group fails.

    Raises
    ------
    brainfm.data.hdf5.Hdf5LayoutError
        The file is missing, not HDF5, or holds no group in the layout.
    ValueError
        The store was made with another preset.
    """
    t0 = time.perf_counter()
    path, store_url = str(path), str(store_url)
    recordings, problems = scan(path, dataset)
    report = ImportReport(source=os.path.abspath(path), store=store_url)
    report.failed += [{"id": g, "source": path, "error": msg} for g, msg in problems.items()]
    if not recordings:
        report.seconds = time.perf_counter() - t0
        return report
    preset = hdf5_preset(recordings[0], chunk_seconds)
    report.preset_hash = preset.hash
    check_new_store(store_url)  # before the lock, which would be the first thing written
    with store_lock(store_url, timeout=wait, command="import-hdf5"):
        manifest = manifest_for_preset(
            store_url, preset.to_dict(), preset.hash,
            f"{path} needs {preset.description!r} (hash {preset.hash}); import into a new store")
        remove_stale_temporaries(store_url)
        changed: list[str] = []
        positions: dict = {}
        last_commit = float("-inf")
        try:
            for rec in tqdm(recordings, desc="import-hdf5", unit="rec", disable=not progress):
                if _import_group(rec, store_url, manifest, preset, report, scale, keep_unpositioned, positions):
                    changed.append(rec.group)
                if changed and time.monotonic() - last_commit >= COMMIT_EVERY_S:
                    report.dropped_target_sets += drop_stale_target_sets(manifest, changed)
                    commit(store_url, manifest)
                    last_commit = time.monotonic()
        finally:  # whatever stopped the run, list what was written completely
            report.dropped_target_sets += drop_stale_target_sets(manifest, changed)
            commit(store_url, manifest)
    report.seconds = time.perf_counter() - t0
    _write_report(store_url, report)
    return report


def _import_group(rec: Hdf5Recording, store_url: str, manifest: dict[str, Any], preset: Preset,
                  report: ImportReport, scale: float, keep_unpositioned: bool, positions: dict) -> bool:
    """Import, skip or refuse one group, entering the outcome into the manifest (in memory) and
    the report; True when the store changed."""
    why = _refuse(rec, preset)
    if why:
        report.failed.append({"id": rec.group, "source": rec.file, "error": why})
        return False
    data = rec.read()
    checksum = source_checksum(rec, data, scale)
    done = manifest["recordings"].get(rec.group)
    if done and done.get("source_sha256") == checksum and done.get("preset_hash") == preset.hash \
            and not verify_recording(store_url, rec.group, done, quick=True)[0]:
        report.skipped.append(rec.group)
        return False
    if done:  # stale: unlisted before it is rewritten, so readers never see a half-replaced group
        del manifest["recordings"][rec.group]
        commit(store_url, manifest)
    try:
        entry, warnings = import_recording(rec, store_url, preset, scale, keep_unpositioned, positions,
                                           data=data, checksum=checksum)
    except (bids_io.ConversionError, ValueError) as err:  # e.g. a group name that is no recording id
        message = str(err) if rec.file in str(err) else f"{rec.where}: {err}"
        failure = {"id": rec.group, "source": rec.file, "error": message}
        if done and not verify_recording(store_url, rec.group, done, quick=True)[0]:
            manifest["recordings"][rec.group] = done  # refused before anything was replaced: keep it listed
            failure["error"] += "; the recording stored from the previous version is kept"
        report.failed.append(failure)
        log.error("failed %s: %s", rec.where, err)
        return bool(done) and rec.group not in manifest["recordings"]
    manifest["recordings"][rec.group] = entry
    report.imported.append(rec.group)
    if warnings:
        report.warnings[rec.group] = warnings
    return True


def _write_report(store_url: str, report: ImportReport) -> None:
    fs, root = shard.store_fs(store_url)
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{int((time.time() % 1) * 1e6):06d}"
    fs.makedirs(f"{root}/reports", exist_ok=True)
    fs.pipe_file(f"{root}/reports/import-hdf5-{stamp}.json", json.dumps(report.to_dict(), indent=1).encode())
