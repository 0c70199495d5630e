"""``brainfm convert``: a BIDS dataset to a shard store, in parallel.

The driver (this process) discovers recordings, checksums their sources and skips
those already in the store with the same checksum and preset hash. The rest are
converted in a local process pool (forked workers, see :func:`_pool_context`; one worker
converts in this process), or on an existing Dask cluster given by its scheduler address,
each writing its recording
atomically (:func:`brainfm.data.store_write.write_recording`). As they finish, the driver
adds them to the manifest and rewrites it atomically (at most once a second, and at the
end), so a run killed at any point leaves a valid store that the next run completes.

The run holds the store's writer lock (:func:`brainfm.data.store_lock.store_lock`) throughout, so
a second run into the same store waits or fails naming the first, and the start-up cleanup of
temporaries never touches a live run's. Before skipping a recording it checks that the stored
files exist with their sizes (``verify=True``: their SHA-256), and re-makes it otherwise.

Failures (unreadable files, bad sidecars, NaNs, no usable channels, non-physical amplitudes,
two sources for one recording id) are collected in a JSON report under ``STORE/reports/``; the
other recordings still convert. Every MNE and mne-bids warning (a truncated file, channels.tsv
rows that do not match the data, unknown channel types) is kept in the report and in the
recording's ``quality.warnings``.

BIDS ``func`` (fMRI) runs convert through the same driver when the preset is an
:class:`~brainfm.pipelines.presets.FmriPreset` (``kind == "fmri"``): discovery, checksums and
the per-run conversion then come from :mod:`brainfm.pipelines.bids_func`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from brainfm.data import store as shard
from brainfm.data.store_lock import store_lock
from brainfm.data.store_verify import verify_recording
from brainfm.data.store_write import (check_new_store, commit, drop_stale_target_sets, manifest_for_preset,
                                      remove_stale_temporaries, write_recording)
from brainfm.pipelines import bids_func, bids_io
from brainfm.pipelines.presets import FmriPreset, Preset, get_preset
from brainfm.pipelines.preprocess import preprocess, quality_flags, to_physical_units
from brainfm.signal import SensorSpec

log = logging.getLogger(__name__)
#: Minimum seconds between two manifest rewrites during a conversion.
COMMIT_EVERY_S = 1.0


@dataclass
class ConversionReport:
    """What a conversion run did; written as JSON into the store."""

    bids_root: str
    store: str
    preset: str
    preset_hash: str
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    #: Up-to-date recordings re-made, and why (files missing or changed).
    remade: dict[str, list[str]] = field(default_factory=dict)
    #: Recordings unlisted and deleted: source gone with ``prune``, or group gone.
    removed: list[str] = field(default_factory=list)
    #: Recordings whose source is no longer in the dataset, kept (``prune`` removes them).
    orphaned: list[str] = field(default_factory=list)
    #: Target sets unlisted because recordings were added, re-made or removed.
    dropped_target_sets: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def convert_recording(bids_root: str, fpath: str, store_url: str, preset: Preset, checksum: str) -> dict[str, Any]:
    """Convert one recording (runs in a worker). Returns a result dict, never raises.

    Every warning MNE and mne-bids raise while reading and preprocessing is kept
    (:func:`bids_io.captured_warnings`) in the result, the report and the recording's
    ``quality.warnings``, with those of the quality checks (:func:`quality_flags`).
    """
    if isinstance(preset, FmriPreset):
        return bids_func.convert_func_recording(bids_root, fpath, store_url, preset, checksum)
    import mne  # noqa: PLC0415 - imported in the worker process

    mne.set_log_level("WARNING")
    bids_path = mne_bids_path(fpath, bids_root)
    source = str(fpath)
    try:
        source = bids_io.safe_relative(Path(fpath), Path(bids_root))
        bids_io.source_files(bids_path)  # again here: the files may have changed since the driver's check
        raw, messages = bids_io.read_raw(bids_path)
        with bids_io.captured_warnings() as more:
            raw, filters, found = preprocess(raw, preset)
            loc = bids_io.head_loc(raw.info)
            loc, fallback = bids_io.fill_from_montage(raw, loc)
        data, units = to_physical_units(raw)
        types = raw.get_channel_types()
        flags = quality_flags(data, list(raw.ch_names), types, found["flat"])
        messages = sorted(set(messages) | set(more))
        if (unread := bids_io.unread_electrodes(bids_path, fallback)) is not None:
            messages.append(unread)
        for reason in ("flat", "spikes"):
            names = sorted(n for n, r in flags.items() if reason in r)
            if names:
                messages.append(f"{len(names)} channel(s) flagged {reason}: {', '.join(names[:10])}")
        spec = SensorSpec(raw.ch_names, types, loc, raw.info["sfreq"], units)
        attrs = {
            **bids_io.entities(bids_path),
            "source": source,
            "source_sha256": checksum,
            "preset_hash": preset.hash,
            "positions": bids_io.positions_label(loc, fallback),
            "position_fallback": fallback,
            "filters": filters,
            "line_freq": filters["line_freq"],
            "first_time": float(raw.first_time),
            # MEG positions are in head coordinates only when the file has a device-to-head transform
            "meg_frame": "head" if raw.info["dev_head_t"] is not None else "device",
            "dropped_channels": found["dropped"],
        }
        extra = {
            "bads": list(raw.info["bads"]),
            "coil_types": [int(ch["coil_type"]) for ch in raw.info["chs"]],
        }
        entry = write_recording(
            store_url,
            bids_io.recording_id(bids_path),
            data,
            spec,
            attrs,
            events=bids_io.read_events(raw),
            chunk_seconds=preset.chunk_seconds,
            extra_channel_attrs=extra,
            quality={"flags": flags, "warnings": messages},
        )
        return {"ok": True, "id": bids_io.recording_id(bids_path), "entry": entry, "warnings": messages}
    except Exception as err:  # noqa: BLE001 - reported, the run goes on
        msg = str(err) if isinstance(err, bids_io.ConversionError) else f"{type(err).__name__}: {bids_io.short(err)}"
        return {"ok": False, "id": bids_io.recording_id(bids_path), "source": source, "error": msg}


def _discover(bids_root: str, preset: Preset | FmriPreset) -> list:
    """The recordings a preset converts: BOLD runs for fMRI presets, else EEG/MEG/iEEG."""
    return bids_func.discover(bids_root) if isinstance(preset, FmriPreset) else bids_io.discover(bids_root)


def _recording_id(path) -> str:
    return path.recording_id if isinstance(path, bids_func.FuncPath) else bids_io.recording_id(path)


def _checksum(path, preset: Preset | FmriPreset) -> str:
    if isinstance(path, bids_func.FuncPath):
        return bids_func.source_checksum(path, preset)
    return bids_io.source_checksum(path)


def mne_bids_path(fpath: str, bids_root: str):
    """The BIDSPath of a data file (entities parsed from its name) under ``bids_root``."""
    from mne_bids import get_bids_path_from_fname  # noqa: PLC0415

    path = get_bids_path_from_fname(fpath, check=False)
    return path.update(root=bids_root, check=False)


def _dask_client(scheduler: str):
    from distributed import Client  # noqa: PLC0415

    logging.getLogger("distributed").setLevel(logging.WARNING)
    return Client(scheduler)


def _run(todo, bids_root: str, store_url: str, preset: Preset, workers: int, scheduler: str | None):
    """Yield conversion results as they finish: on a Dask cluster when ``scheduler`` names one,
    in this process for one local worker, else in a local process pool."""
    if not todo:
        return
    if scheduler is not None:
        yield from _run_dask(todo, bids_root, store_url, preset, scheduler)
    elif workers == 1:
        for fpath, checksum in todo:
            yield convert_recording(bids_root, fpath, store_url, preset, checksum)
    else:
        yield from _run_pool(todo, bids_root, store_url, preset, workers)


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux when this process runs no other Python thread, else ``forkserver``.

    Forked workers start with MNE, mne-bids and zarr already imported. On the 2-core CI
    machine, 288 EEGMAT recordings (``bench_convert.py --copies 4``, one-off timings) took
    16.9-17.4 s with two forked workers, 23.7-24.4 s with two spawned ones (each re-imports the
    stack and warms its caches), 28.5 s on a two-worker Dask ``LocalCluster`` and 27.3-29.6 s
    in one process; the benchmark's reported run, on a busier machine, 32.8 s -> 24.6 s
    (``docs/benchmarks.md``).
    Forking a process that runs other threads can deadlock, so then a forkserver is used.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")


def _pool_worker_init() -> None:
    """Workers leave Ctrl-C to the driver (which stops between recordings) and run one thread each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "torch" in sys.modules:  # a forked copy of an OpenMP pool is not safe to reuse, and cores are taken
        sys.modules["torch"].set_num_threads(1)


def _run_pool(todo, bids_root: str, store_url: str, preset: Preset, workers: int):
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_pool_worker_init)
    try:
        futures = [pool.submit(convert_recording, bids_root, f, store_url, preset, c) for f, c in todo]
        for fut in as_completed(futures):
            yield fut.result()
    finally:  # an early stop (Ctrl-C, an error) finishes the recordings in flight, starts no more
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(todo, bids_root: str, store_url: str, preset: Preset, scheduler: str):
    from distributed import as_completed as dask_completed  # noqa: PLC0415

    client = _dask_client(scheduler)
    try:
        futures = [client.submit(convert_recording, bids_root, f, store_url, preset, c, pure=False) for f, c in todo]
        for fut in dask_completed(futures):
            yield fut.result()
    finally:
        client.close()


def convert(
    bids_root: str | Path,
    store_url: str | Path,
    preset: str | Preset = "eeg-fm",
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    limit: Callable[[Any], bool] | None = None,
    prune: bool = False,
    wait: float | None = 0.0,
    verify: bool = False,
) -> ConversionReport:
    """Convert every readable recording of ``bids_root`` into the store at ``store_url``.

    Parameters
    ----------
    bids_root : path
        Root of a BIDS dataset.
    store_url : str or path
        Store location (local path or fsspec URL); created if missing.
    preset : str or Preset
        Preprocessing preset (see :data:`brainfm.pipelines.presets.PRESETS`).
    workers : int, optional
        Local worker processes (default: CPU count, at most the number of recordings to
        convert). With 1, recordings are converted in this process. Ignored with ``scheduler``.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``) to convert on instead of
        local worker processes.
    progress : bool
        Show a progress bar.
    limit : callable, optional
        Keep only the BIDS paths for which it returns True.
    prune : bool
        Remove stored recordings whose source is no longer in the dataset (with ``limit``:
        no longer selected); without it they are kept and reported (``orphaned``).
    wait : float or None
        Seconds to wait for another writer's lock on the store (0: fail at once, None: for ever).
    verify : bool
        Check every up-to-date recording's SHA-256 sums (:func:`brainfm.data.store_verify.verify_store`)
        before skipping it; by default only that its files exist with their sizes.

    Recordings are re-made when their source or the preset changed, when their stored files
    fail the check, or when their group is gone (format-1 recordings that pass are kept). A
    recording whose changed source no longer converts keeps its stored version, listed. Two
    sources that map to one recording id are both refused, and the stored recording is left
    as it is.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    t0 = time.perf_counter()
    preset = get_preset(preset)
    if not Path(bids_root).is_dir():
        raise FileNotFoundError(f"no such folder: {bids_root}")
    bids_root, store_url = str(Path(bids_root).resolve()), str(store_url)
    paths = [p for p in _discover(bids_root, preset) if limit is None or limit(p)]
    check_new_store(store_url)  # before the lock, which would be the first thing written
    with store_lock(store_url, timeout=wait, command="convert"):
        manifest = manifest_for_preset(store_url, preset.to_dict(), preset.hash,
                                       "convert with that preset or into a new store")
        manifest["format_version"] = shard.FORMAT_VERSION
        remove_stale_temporaries(store_url)
        report = ConversionReport(bids_root, store_url, preset.name, preset.hash)
        previous: dict[str, Any] = {}
        todo, doomed = _plan(paths, manifest, store_url, preset, report, prune=prune, verify=verify, previous=previous)
        commit(store_url, manifest)
        fs, _ = shard.store_fs(store_url)
        for group in doomed:  # unlisted first, so no reader ever follows the manifest into a hole
            if fs.exists(group):
                fs.rm(group, recursive=True)

        n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        report.workers = 0 if not todo else n_workers
        bar = tqdm(total=len(todo), desc="convert", unit="rec", disable=not progress or not todo)
        # The manifest is rewritten whole, so commit at most once per COMMIT_EVERY_S (and at
        # the end) instead of once per recording, which would be quadratic in dataset size.
        # A kill loses at most that much listing; those recordings are simply converted again.
        last_commit = float("-inf")
        with _interrupt_between_recordings() as interrupted:
            for result in _run(todo, bids_root, store_url, preset, n_workers, scheduler):
                _record(result, manifest, report, previous, store_url)
                if result["ok"] and time.monotonic() - last_commit >= COMMIT_EVERY_S:
                    commit(store_url, manifest)
                    last_commit = time.monotonic()
                bar.update()
                if interrupted():
                    break
        bar.close()
        commit(store_url, manifest)
    report.converted.sort()
    report.seconds = time.perf_counter() - t0
    _write_report(store_url, report)
    if interrupted():  # after the manifest and the report hold what was done
        raise KeyboardInterrupt
    return report


def _record(result: dict[str, Any], manifest: dict[str, Any], report: ConversionReport,
            previous: dict[str, Any], store_url: str) -> None:
    """Enter one worker result into the manifest (in memory) and the report."""
    if result["ok"]:
        manifest["recordings"][result["id"]] = result["entry"]
        report.converted.append(result["id"])
        if result["warnings"]:
            report.warnings[result["id"]] = result["warnings"]
        return
    failure = {k: result[k] for k in ("id", "source", "error")}
    old = previous.get(result["id"])
    if old is not None and not verify_recording(store_url, result["id"], old, quick=True)[0]:
        # its source changed and no longer converts: keep what was stored, listed
        manifest["recordings"][result["id"]] = old
        failure["error"] += "; the recording stored from the previous source is kept"
    report.failed.append(failure)
    log.error("failed %s: %s", result["source"], result["error"])


@contextlib.contextmanager
def _interrupt_between_recordings():
    """Ctrl-C stops a conversion between recordings; a second Ctrl-C stops it at once.

    An interrupt delivered in the middle of a recording surfaces inside zarr's writer as a
    spurious I/O error on a temporary chunk file, so that recording would be reported as
    failed and the run would exit 1 instead of 130. Yields a function telling whether an
    interrupt is pending. Signal handlers can only be set in the main thread; elsewhere
    interrupts behave as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pending: list[int] = []

    def handler(signum, frame):
        if pending:
            raise KeyboardInterrupt
        pending.append(signum)
        log.info("interrupted: stopping after the current recording (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pending)
    finally:
        signal.signal(signal.SIGINT, previous)


def _plan(paths, manifest: dict[str, Any], store_url: str, preset: Preset, report: ConversionReport,
          prune: bool, verify: bool, previous: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """Decide, under the lock, what to convert; unlist what will be re-made or is gone.

    Fills the report's ``failed`` (refused sources, id collisions), ``remade`` (why an up-to-date
    recording is re-made), ``removed``/``orphaned`` and ``dropped_target_sets``; returns the
    (source, checksum) pairs to convert and the groups to delete once the manifest no longer
    lists them. Entries unlisted because their source changed go into ``previous``.
    """
    by_id: dict[str, list] = {}
    for path in paths:
        by_id.setdefault(_recording_id(path), []).append(path)
    todo: list[tuple[str, str]] = []
    changed: list[str] = []
    for rid, same in sorted(by_id.items()):
        if len(same) > 1:  # two sources, one recording id: neither may replace the other
            names = ", ".join(str(p.fpath) for p in same)
            for path in same:
                report.failed.append({"id": rid, "source": str(path.fpath), "error": (
                    f"{len(same)} source files map to recording id {rid!r} ({names}); keep one of them "
                    "(the stored recording, if any, is left as it is)")})
            log.error("refused %s: %d sources map to it", rid, len(same))
            continue
        path = same[0]
        try:
            checksum = _checksum(path, preset)
        except bids_io.ConversionError as err:  # a file outside the dataset: refused, never read
            report.failed.append({"id": rid, "source": str(path.fpath), "error": str(err)})
            log.error("refused %s: %s", path.fpath, err)
            continue
        done = manifest["recordings"].get(rid)
        if done and done["source_sha256"] == checksum and done["preset_hash"] == preset.hash:
            problems = _stored_problems(store_url, rid, done, verify)
            if not problems:
                report.skipped.append(rid)
                continue
            report.remade[rid] = problems
            log.warning("re-making %s: %s", rid, problems[0])
        if done:  # stale: unlist before rewriting, so readers never see a half-replaced group
            del manifest["recordings"][rid]
            if rid not in report.remade:
                previous[rid] = done
        changed.append(rid)
        todo.append((path if isinstance(path, bids_func.FuncPath) else str(path.fpath), checksum))
    fs, root = shard.store_fs(store_url)
    doomed: list[str] = []
    for rid in sorted(set(manifest["recordings"]) - set(by_id)):
        group = f"{root}/{manifest['recordings'][rid]['path']}"
        if prune or not fs.exists(f"{group}/zarr.json"):
            del manifest["recordings"][rid]
            doomed.append(group)
            report.removed.append(rid)
        else:
            report.orphaned.append(rid)
    report.dropped_target_sets = drop_stale_target_sets(manifest, changed + report.removed)
    return todo, doomed


def _stored_problems(store_url: str, rid: str, entry: dict[str, Any], deep: bool) -> list[str]:
    """Why an up-to-date entry must be re-made: what the store's check finds (format 1: that a
    chunk is missing, or with ``deep`` does not decode)."""
    return verify_recording(store_url, rid, entry, quick=not deep)[0]


def _write_report(store_url: str, report: ConversionReport) -> None:
    fs, root = shard.store_fs(store_url)
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{int((time.time() % 1) * 1e6):06d}"
    fs.makedirs(f"{root}/reports", exist_ok=True)
    fs.pipe_file(f"{root}/reports/convert-{stamp}.json", json.dumps(report.to_dict(), indent=1).encode())

