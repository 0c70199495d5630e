"""``brainfm convert``: a BIDS dataset to a shard store, in parallel with Dask.

The driver (this process) discovers recordings, checksums their sources and skips
those already in the store with the same checksum and preset hash. The rest are
converted by Dask workers (a :class:`~distributed.LocalCluster` by default, or an
existing cluster given by its scheduler address), each writing its recording
atomically (:func:`brainfm.data.store.write_recording`). As they finish, the driver
adds them to the manifest and rewrites it atomically (at most once a second, and at the
end), so a run killed at any point leaves a valid store that the next run completes.

Failures (unreadable or truncated files, NaNs, no usable channels) are collected in a
JSON report under ``STORE/reports/``; the other recordings still convert.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from brainfm.data import store as shard
from brainfm.pipelines import bids_io
from brainfm.pipelines.presets import Preset, get_preset
from brainfm.pipelines.preprocess import preprocess, to_physical_units
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
    seconds: float = 0.0
    workers: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def convert_recording(bids_root: str, fpath: str, store_url: str, preset: Preset, checksum: str) -> dict[str, Any]:
    """Convert one recording (runs in a worker). Returns a result dict, never raises."""
    import mne  # noqa: PLC0415 - imported in the worker process

    mne.set_log_level("ERROR")
    bids_path = mne_bids_path(fpath, bids_root)
    source = str(fpath)
    try:
        source = bids_io.safe_relative(Path(fpath), Path(bids_root))
        bids_io.source_files(bids_path)  # again here: the files may have changed since the driver's check
        raw, messages = bids_io.read_raw(bids_path)
        raw, filters = preprocess(raw, preset)
        loc = bids_io.head_loc(raw.info)
        loc, fallback = bids_io.fill_from_montage(raw, loc)
        data, units = to_physical_units(raw)
        spec = SensorSpec(raw.ch_names, raw.get_channel_types(), loc, raw.info["sfreq"], units)
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
        }
        extra = {
            "bads": list(raw.info["bads"]),
            "coil_types": [int(ch["coil_type"]) for ch in raw.info["chs"]],
        }
        entry = shard.write_recording(
            store_url,
            bids_io.recording_id(bids_path),
            data,
            spec,
            attrs,
            events=bids_io.read_events(raw),
            chunk_seconds=preset.chunk_seconds,
            extra_channel_attrs=extra,
        )
        return {"ok": True, "id": bids_io.recording_id(bids_path), "entry": entry, "warnings": messages}
    except Exception as err:  # noqa: BLE001 - reported, the run goes on
        msg = str(err) if isinstance(err, bids_io.ConversionError) else f"{type(err).__name__}: {err}"
        return {"ok": False, "id": bids_io.recording_id(bids_path), "source": source, "error": msg}


def mne_bids_path(fpath: str, bids_root: str):
    """The BIDSPath of a data file (entities parsed from its name) under ``bids_root``."""
    from mne_bids import get_bids_path_from_fname  # noqa: PLC0415

    path = get_bids_path_from_fname(fpath, check=False)
    return path.update(root=bids_root, check=False)


def _client(workers: int, scheduler: str | None):
    import dask  # noqa: PLC0415
    from distributed import Client, LocalCluster  # noqa: PLC0415

    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        return Client(scheduler), None
    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which returns every freed
    # buffer to the OS; MNE's filters allocate and free large arrays per recording, and
    # the page faults made conversion 1.5x slower (measured, bench_convert.py).
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster


def _run(todo, bids_root: str, store_url: str, preset: Preset, workers: int, scheduler: str | None):
    """Yield conversion results as they finish: in this process for one local worker
    (no cluster to start), else on a Dask cluster."""
    if not todo:
        return
    if workers == 1 and scheduler is None:
        for fpath, checksum in todo:
            yield convert_recording(bids_root, fpath, store_url, preset, checksum)
        return
    from distributed import as_completed  # noqa: PLC0415

    client, cluster = _client(workers, scheduler)
    try:
        futures = [client.submit(convert_recording, bids_root, f, store_url, preset, c, pure=False) for f, c in todo]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def convert(
    bids_root: str | Path,
    store_url: str | Path,
    preset: str | Preset = "eeg-fm",
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    limit: Callable[[Any], bool] | None = None,
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
        Worker processes of the local cluster (default: CPU count, at most the
        number of recordings to convert). With 1, recordings are converted in this
        process and no cluster is started. Ignored with ``scheduler``.
    scheduler : str, optional
        Address of an existing Dask scheduler to use instead of a LocalCluster.
    progress : bool
        Show a progress bar.
    limit : callable, optional
        Keep only the BIDS paths for which it returns True.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    t0 = time.perf_counter()
    preset = get_preset(preset)
    bids_root, store_url = str(Path(bids_root).resolve()), str(store_url)
    manifest = shard.read_manifest(store_url)
    if manifest is None:
        manifest = shard.new_manifest(preset.to_dict(), preset.hash)
    elif manifest["preset_hash"] != preset.hash:
        raise ValueError(
            f"store {store_url} was built with preset {manifest['preset'].get('name')!r} "
            f"(hash {manifest['preset_hash']}); convert with that preset or into a new store"
        )
    shard.remove_stale_temporaries(store_url)

    report = ConversionReport(bids_root, store_url, preset.name, preset.hash)
    todo: list[tuple[str, str]] = []
    for path in (p for p in bids_io.discover(bids_root) if limit is None or limit(p)):
        rid = bids_io.recording_id(path)
        try:
            checksum = bids_io.source_checksum(path)
        except bids_io.ConversionError as err:  # a file outside the dataset: refused, never read
            report.failed.append({"id": rid, "source": str(path.fpath), "error": str(err)})
            log.error("refused %s: %s", path.fpath, err)
            continue
        done = manifest["recordings"].get(rid)
        if done and done["source_sha256"] == checksum and done["preset_hash"] == preset.hash:
            report.skipped.append(rid)
            continue
        if done:  # stale: unlist before rewriting, so readers never see a half-replaced group
            del manifest["recordings"][rid]
        todo.append((str(path.fpath), checksum))
    shard.commit(store_url, manifest)

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    report.workers = 0 if not todo else n_workers
    bar = tqdm(total=len(todo), desc="convert", unit="rec", disable=not progress or not todo)
    # The manifest is rewritten whole, so commit at most once per COMMIT_EVERY_S (and at
    # the end) instead of once per recording, which would be quadratic in dataset size.
    # A kill loses at most that much listing; those recordings are simply converted again.
    last_commit = float("-inf")
    for result in _run(todo, bids_root, store_url, preset, n_workers, scheduler):
        if result["ok"]:
            manifest["recordings"][result["id"]] = result["entry"]
            if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                shard.commit(store_url, manifest)
                last_commit = time.monotonic()
            report.converted.append(result["id"])
            if result["warnings"]:
                report.warnings[result["id"]] = result["warnings"]
        else:
            report.failed.append({k: result[k] for k in ("id", "source", "error")})
            log.error("failed %s: %s", result["source"], result["error"])
        bar.update()
    bar.close()
    shard.commit(store_url, manifest)
    report.converted.sort()
    report.seconds = time.perf_counter() - t0
    _write_report(store_url, report)
    return report


def _write_report(store_url: str, report: ConversionReport) -> None:
    fs, root = shard.store_fs(store_url)
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{int((time.time() % 1) * 1e6):06d}"
    fs.makedirs(f"{root}/reports", exist_ok=True)
    fs.pipe_file(f"{root}/reports/convert-{stamp}.json", json.dumps(report.to_dict(), indent=1).encode())

