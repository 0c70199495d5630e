"""The shard store's one write path: recordings, the manifest, format upgrades and target sets.

What is written is specified in :mod:`brainfm.data.store` ("Writing", "Target sets", "Older
formats"). Every array goes through :func:`_write_atomically` (a ``.tmp-*`` name, renamed when
complete, removed if the writer fails) and becomes visible only when :func:`commit` lists it in
the manifest; callers hold :func:`brainfm.data.store_lock.store_lock`, except
:func:`upgrade_store`, which takes it itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import uuid
from typing import Any, Callable, Iterable, Mapping, Sequence

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem

from brainfm.data.store import (FORMAT, FORMAT_VERSION, LOC_ARRAY_CHANNELS, MANIFEST, READ_AHEAD_BYTES, RECORDINGS,
                                TARGETS_PREFIX, WRITABLE_VERSIONS, Events, ShardStore, StoreError, blosc_codec,
                                encode_signal, read_manifest, store_fs, zarr_store)
from brainfm.data.store_lock import store_lock
from brainfm.data.store_verify import verify_recording
from brainfm.signal import SensorSpec


# -- recordings -------------------------------------------------------------------------
def _jsonable_loc(loc: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in loc]


def write_recording(
    store_url: str,
    recording_id: str,
    data: np.ndarray,
    spec: SensorSpec,
    attrs: Mapping[str, Any],
    events: Events | None = None,
    chunk_seconds: float = 30.0,
    extra_channel_attrs: Mapping[str, Any] | None = None,
    quality: Mapping[str, Any] | None = None,
    format_version: int = FORMAT_VERSION,
    keep_targets: bool = False,
) -> dict[str, Any]:
    """Write one recording atomically and return its manifest entry.

    The group is written under ``recordings/.tmp-<id>-<uuid>``, its files hashed into the
    ``files`` attribute, and renamed to ``recordings/<id>`` only when complete. The caller adds
    the returned entry to the manifest (:func:`commit`); until then readers do not see the
    recording. ``quality`` is ``{"flags": {channel: [reasons]}, "warnings": [...]}``.
    ``format_version`` 3 (the default) shards ``data`` as :func:`shard_samples` says; 2 writes
    one object per chunk (to make a store that older brainfm reads). ``keep_targets`` copies the
    target arrays of the group being replaced into the new one before the rename (for
    :func:`rewrite_recording`, which keeps the signal).
    """
    if format_version not in WRITABLE_VERSIONS:
        raise ValueError(f"format_version {format_version} is not one of {list(WRITABLE_VERSIONS)}")
    if "/" in recording_id or recording_id.startswith("."):
        raise ValueError(f"invalid recording id {recording_id!r}")
    if data.shape != (spec.n_channels, data.shape[1]):
        raise ValueError(f"data shape {data.shape} does not match {spec.n_channels} channels")
    fs, root = store_fs(store_url)
    encoded, scale = encode_signal(data)
    tmp = f"{root}/{RECORDINGS}/.tmp-{recording_id}-{uuid.uuid4().hex[:8]}"
    final = f"{root}/{RECORDINGS}/{recording_id}"
    chunk = max(1, int(round(chunk_seconds * spec.sfreq)))
    events = events or Events(np.zeros(0), np.zeros(0), np.zeros(0, dtype=object))
    quality = {"flags": {k: list(v) for k, v in (quality or {}).get("flags", {}).items()},
               "warnings": list((quality or {}).get("warnings", []))}
    loc_array = spec.n_channels > LOC_ARRAY_CHANNELS
    channels = {
        "names": list(spec.ch_names),
        "types": list(spec.ch_types),
        "units": list(spec.units),
        "loc": {"array": "channel_loc"} if loc_array else _jsonable_loc(spec.loc),
        "scale": [float(s) for s in scale],
        **dict(extra_channel_attrs or {}),
    }
    group_attrs = {
        **dict(attrs),
        "recording_id": recording_id,
        "format_version": format_version,
        "sfreq": spec.sfreq,
        "n_samples": int(data.shape[1]),
        "channels": channels,
        "events": {
            "onset": [float(x) for x in events.onset],
            "duration": [float(x) for x in events.duration],
            "label": [str(x) for x in events.label],
        },
        "quality": quality,
    }
    written: dict[str, Any] = {}

    def write() -> None:
        fs.makedirs(f"{root}/{RECORDINGS}", exist_ok=True)
        group = zarr.open_group(zarr_store(fs, tmp), mode="w", zarr_format=3, attributes=group_attrs)
        inner = (encoded.shape[0], min(chunk, max(1, encoded.shape[1])))
        arr = group.create_array(
            "data",
            shape=encoded.shape,
            chunks=inner,
            shards=(inner[0], shard_samples(inner[0], inner[1])) if format_version >= 3 else None,
            dtype="float16",
            fill_value=np.nan,  # a missing chunk reads as NaN, which the signal never is
            config={"write_empty_chunks": True},  # every chunk of the extent exists
            compressors=blosc_codec(),
        )
        arr[...] = encoded
        files_of = ["data"]
        if loc_array:
            table = group.create_array("channel_loc", shape=spec.loc.shape, chunks=spec.loc.shape, dtype="float64",
                                       compressors=blosc_codec())
            table[...] = spec.loc
            files_of.append("channel_loc")
        if keep_targets and fs.exists(final):
            for old in fs.ls(final, detail=False):
                if _name(old).startswith(TARGETS_PREFIX):
                    fs.copy(old, f"{tmp}/{_name(old)}", recursive=True)
        fs.invalidate_cache()
        group.attrs.update({"files": {k: v for a in files_of for k, v in _file_hashes(fs, tmp, a).items()}})
        written["group_sha256"] = hashlib.sha256(fs.cat_file(f"{tmp}/zarr.json")).hexdigest()
        written["n_chunks"] = -(-encoded.shape[1] // arr.chunks[1]) if encoded.shape[1] else 0
        if format_version >= 3:
            written["n_shards"] = -(-encoded.shape[1] // arr.shards[1]) if encoded.shape[1] else 0

    _write_atomically(fs, tmp, final, write)
    counts: dict[str, int] = {}
    for t in spec.ch_types:
        counts[t] = counts.get(t, 0) + 1
    return {
        "path": f"{RECORDINGS}/{recording_id}",
        **{k: attrs.get(k) for k in ("subject", "session", "task", "run", "datatype",
                                     "source", "source_sha256", "preset_hash", "positions")},
        "n_channels": spec.n_channels,
        "n_samples": int(data.shape[1]),
        "sfreq": spec.sfreq,
        "ch_type_counts": counts,
        "n_events": len(events),
        "format_version": format_version,
        **written,
        "flagged_channels": quality["flags"],
        "n_warnings": len(quality["warnings"]),
    }


#: Group attributes :func:`write_recording` sets itself (the rest are the caller's ``attrs``).
_WRITER_ATTRS = ("recording_id", "format_version", "sfreq", "n_samples", "channels", "events", "quality", "files")
_CHANNEL_ATTRS = ("names", "types", "units", "loc", "scale")


def rewrite_recording(store_url: str, recording_id: str, format_version: int = FORMAT_VERSION) -> dict[str, Any]:
    """Rewrite a listed recording in ``format_version`` from its stored signal, atomically, and
    list the new group in the manifest; return its entry.

    The float16 signal is bit-identical (checked before the manifest changes), as are the
    attributes, events, quality and target arrays. Call it under :func:`store_lock`.
    """
    store = ShardStore(store_url)
    entry = store.entry(recording_id)
    rec = store.recording(recording_id)
    signal = rec.read_all()
    attrs = {k: v for k, v in rec.attrs.items() if k not in _WRITER_ATTRS}
    channels = rec.attrs["channels"]
    new = write_recording(
        store_url, recording_id, signal, rec.spec, attrs, rec.events, chunk_seconds=rec.chunk / rec.sfreq,
        extra_channel_attrs={k: v for k, v in channels.items() if k not in _CHANNEL_ATTRS},
        quality=rec.attrs.get("quality"), format_version=format_version, keep_targets=True,
    )
    again = ShardStore(store_url)  # the manifest still lists the entry; the group is the new one
    if not np.array_equal(again.recording(recording_id).read_all(), signal):
        raise StoreError(f"{store_url}/{entry['path']}: rewritten signal differs from the original")
    manifest = read_manifest(store_url)
    merged = {**entry, **new}
    if format_version < 3:
        merged.pop("n_shards", None)
    manifest["recordings"][recording_id] = merged
    commit(store_url, manifest)
    return merged


def upgrade_store(store_url: str, progress: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """``brainfm convert --upgrade``: rewrite every recording older than :data:`FORMAT_VERSION`
    in the current format (:func:`rewrite_recording`), under the writer's lock.

    Each recording is checked first (:func:`verify_recording`); a damaged one is left as it is
    and reported. Returns ``{recording id: "upgraded" | "damaged: <problems>"}``; recordings
    already current are not listed. ``progress(recording_id, outcome)`` is called for each.
    """
    with store_lock(store_url, command="convert --upgrade"):
        manifest = read_manifest(store_url)
        if manifest is None:
            raise FileNotFoundError(f"{store_url} is not a brainfm store (no {MANIFEST})")
        out: dict[str, str] = {}
        for rid, entry in sorted(manifest["recordings"].items()):
            if entry.get("format_version", 1) >= FORMAT_VERSION:
                continue
            problems, _ = verify_recording(store_url, rid, entry)
            if problems:
                out[rid] = "damaged: " + "; ".join(problems)
            else:
                rewrite_recording(store_url, rid)
                out[rid] = "upgraded"
            if progress is not None:
                progress(rid, out[rid])
        if out:
            manifest = read_manifest(store_url)
            manifest["format_version"] = FORMAT_VERSION
            commit(store_url, manifest)
        return out


def shard_samples(n_channels: int, chunk: int) -> int:
    """Samples per format-3 shard: as many whole chunks as fit in :data:`READ_AHEAD_BYTES`
    decoded (float32), at least one; one shard is what a reader fetches at a time."""
    return chunk * max(1, READ_AHEAD_BYTES // (4 * n_channels * chunk))


def _file_hashes(fs: fsspec.AbstractFileSystem, group: str, array: str) -> dict[str, list]:
    """``{path relative to the group: [bytes, sha256]}`` for every file of ``group/array``."""
    out = {}
    for path in sorted(fs.find(f"{group}/{array}")):
        body = fs.cat_file(path)
        out[path[len(group) + 1:]] = [len(body), hashlib.sha256(body).hexdigest()]
    return out


def _write_atomically(fs: fsspec.AbstractFileSystem, tmp: str, final: str, write: Callable[[], None]) -> None:
    """The store's one write path: ``write()`` fills ``tmp``, which then replaces ``final``.

    A stale, unlisted copy at ``final`` (from an interrupted run) is removed first; if
    anything fails, ``tmp`` is removed and the error propagates.
    """
    try:
        write()
        fs.invalidate_cache()  # Zarr wrote through its own filesystem instance; drop stale listings
        if fs.exists(final):
            fs.rm(final, recursive=True)
        move_tree(fs, tmp, final)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise


def move_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Rename a folder: one atomic rename on local disk; on object stores, which have no
    folders, copy every object then delete the sources (the manifest, not the rename,
    is what makes a recording visible, so this needs no atomicity)."""
    if isinstance(fs, LocalFileSystem):
        fs.mv(src, dst, recursive=True)
        return
    for path in fs.find(src):
        fs.copy(path, dst + path[len(src):])
    fs.rm(src, recursive=True)


# -- the manifest ---------------------------------------------------------------------
def new_manifest(preset: Mapping[str, Any], preset_hash: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": dict(preset),
        "preset_hash": preset_hash,
        "recordings": {},
    }


#: What a folder may hold before its first manifest: a writer's lock and temporaries, and the
#: recordings and reports of a first conversion that was stopped before it committed.
NEW_STORE_ENTRIES = {RECORDINGS, "reports"}


def check_new_store(store_url: str) -> None:
    """Refuse to make a store in a folder that already holds other things (a store is a
    folder of its own: writing one into, say, an output folder would mix the two). Writers call it
    before taking the store's lock, so a refused folder gets nothing, and again under the lock."""
    fs, root = store_fs(store_url)
    if not fs.isdir(root) or read_manifest(store_url) is not None:
        return
    entries = [path.rstrip("/") for path in fs.ls(root, detail=False)]
    other = sorted(name for name in (path.rsplit("/", 1)[-1] for path in entries if path != root)  # S3: the prefix
                   if not name.startswith(".") and name not in NEW_STORE_ENTRIES)
    if other:
        listed = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise ValueError(f"{store_url} is not a brainfm store and is not empty (it holds {listed}); "
                         "give a new or empty folder for the store")


def manifest_for_preset(store_url: str, preset: Mapping[str, Any], preset_hash: str, hint: str) -> dict[str, Any]:
    """The store's manifest, or a new one for ``preset``; a store built with another preset is refused.

    ``hint`` ends the error message: what the writer (``convert``, ``import-hdf5``) suggests instead.
    """
    manifest = read_manifest(store_url)
    if manifest is None:
        check_new_store(store_url)
        return new_manifest(preset, preset_hash)
    if manifest["preset_hash"] != preset_hash:
        raise ValueError(f"store {store_url} was built with preset {manifest['preset'].get('name')!r} "
                         f"(hash {manifest['preset_hash']}); {hint}")
    return manifest


def commit(store_url: str, manifest: Mapping[str, Any]) -> None:
    """Atomically replace the store's manifest (write a temporary file, then rename).

    The temporary file is removed if the write fails (a stray one, from a killed writer, is
    removed by :func:`remove_stale_temporaries`).
    """
    fs, root = store_fs(store_url)
    fs.makedirs(root, exist_ok=True)
    tmp = f"{root}/.{MANIFEST}.{uuid.uuid4().hex[:8]}"
    try:
        fs.pipe_file(tmp, json.dumps(manifest, indent=1, sort_keys=True).encode())
        fs.mv(tmp, f"{root}/{MANIFEST}")
    except BaseException:
        with contextlib.suppress(OSError):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise


def remove_stale_temporaries(store_url: str) -> list[str]:
    """Delete what interrupted writers left: ``.tmp-*`` groups, ``.tmp-targets-*`` arrays inside
    groups and ``.manifest.json.*`` files; return their paths.

    Call it only while holding :func:`store_lock`, so no live writer's temporaries are touched.
    """
    fs, root = store_fs(store_url)
    fs.invalidate_cache()

    def names(folder: str) -> list[str]:
        try:
            return fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []

    base = f"{root}/{RECORDINGS}"
    stale = [p for p in names(root) if _name(p).startswith(f".{MANIFEST}.")]
    for group in names(base):
        if _name(group).startswith(".tmp-"):
            stale.append(group)
        elif fs.isdir(group):
            stale += [p for p in names(group) if _name(p).startswith(".tmp-")]
    for p in stale:
        fs.rm(p, recursive=True)
    return stale


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def drop_stale_target_sets(manifest: dict[str, Any], changed: Iterable[str]) -> list[str]:
    """Unlist every target set once a recording was added or re-made (its group has no array
    for the set); return the keys dropped."""
    if not list(changed) or not manifest.get("targets"):
        return []
    dropped = sorted(manifest.pop("targets"))
    return dropped


# -- target sets ----------------------------------------------------------------------
def target_set_key(spec: Mapping[str, Any], window_s: float, stride_s: float,
                   normalization: Mapping[str, Any] | None = None) -> str:
    """The key of a target set: a hash of its target spec (as JSON), window, stride and, for
    targets of normalised windows, the normalisation (sets of raw windows keep their old keys)."""
    fields = {"spec": spec, "window_s": window_s, "stride_s": stride_s}
    if normalization is not None:
        fields["normalization"] = dict(normalization)
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def write_target_table(store: ShardStore, recording_id: str, key: str, values: np.ndarray) -> None:
    """Write one recording's ``(n_windows, K)`` targets of set ``key``, atomically.

    Readers see it only once :func:`add_target_set` lists the set in the manifest.
    """
    fs, root = store_fs(store.url)
    group_path = f"{root}/{store.entry(recording_id)['path']}"
    tmp = f"{group_path}/.tmp-{TARGETS_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
    values = np.asarray(values, dtype=np.float32)

    def write() -> None:
        arr = zarr.create_array(zarr_store(fs, tmp), shape=values.shape, dtype="float32",
                                chunks=(max(1, len(values)), values.shape[1]), zarr_format=3)
        arr[...] = values

    _write_atomically(fs, tmp, f"{group_path}/{TARGETS_PREFIX}{key}", write)


def add_target_set(store_url: str, key: str, *, spec: Mapping[str, Any], window_s: float, stride_s: float,
                   names: Sequence[str], positioned_only: bool = True,
                   channel_types: Sequence[str] | None = None, normalization: Mapping[str, Any] | None = None,
                   recordings: Sequence[str] | None = None) -> None:
    """List target set ``key`` in the manifest (after every recording it covers has its table:
    ``recordings``, or all of them when None)."""
    manifest = read_manifest(store_url)
    if manifest is None:
        raise FileNotFoundError(f"{store_url} is not a brainfm store (no {MANIFEST})")
    manifest.setdefault("targets", {})[key] = {
        "spec": dict(spec), "window_s": window_s, "stride_s": stride_s, "names": list(names),
        "positioned_only": positioned_only, "channel_types": None if channel_types is None else list(channel_types),
        "normalization": None if normalization is None else dict(normalization),
        "recordings": None if recordings is None else sorted(recordings),
    }
    commit(store_url, manifest)
