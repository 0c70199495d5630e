"""The brainfm shard store: format specification, reader and atomic writer.

Format version 1
================

A store is a directory (any fsspec URL: a local path, ``file://``, ``s3://``, ...)::

    STORE/
      manifest.json              the only source of truth about what the store holds
      recordings/
        <recording id>/          one Zarr v3 group per completely written recording
          zarr.json              group attributes (below)
          data/                  Zarr v3 array, float16, shape (C, N), chunks (C, chunk)
          targets-<key>/         optional Zarr v3 array, float32, shape (n_windows, K): one
                                 precomputed target set (below)
          .tmp-targets-<key>-<uuid>/  a target array being written (ignored by readers)
        .tmp-<id>-<uuid>/        a recording being written (ignored by readers)
      reports/convert-*.json     one report per conversion run

``manifest.json``::

    {"format": "brainfm-shards", "format_version": 1,
     "preset": {...preset fields...}, "preset_hash": "<sha256[:16]>",
     "recordings": {"<id>": {"path": "recordings/<id>", "subject": ..., "session": ...,
                             "task": ..., "run": ..., "datatype": "eeg"|"meg"|"ieeg",
                             "n_channels": C, "n_samples": N, "sfreq": Hz,
                             "ch_type_counts": {"eeg": 19}, "n_events": E,
                             "positions": "recorded"|"montage:<name>"|"none",
                             "source": "<path relative to the BIDS root>",
                             "source_sha256": "...", "preset_hash": "..."}},
     "targets": {"<key>": {...target set entry, below...}}}          (only when a set exists)

A recording is listed in the manifest only after its group was written under a
temporary name and renamed into place, so a store read through its manifest is
always valid, however the writer died. Readers never list ``recordings/``.

Recording group attributes (``zarr.json``)::

    recording_id, subject, session, task, run, datatype, source, source_sha256,
    preset_hash, format_version, sfreq, n_samples, first_time (s, MNE first_samp/sfreq),
    line_freq, positions (as in the manifest), filters (the effective l_freq/h_freq/notch),
    channels: {names, types, units, loc (C x 12, null where unknown), scale (C),
               bads (names), coil_types}
    events:   {onset (s from the first stored sample), duration (s), label}

Target sets
-----------
A target set holds, for every recording, the neurodynamics target vector
(:func:`brainfm.targets.compute_targets`) of each fixed window ``[k·stride, k·stride + window)``
as the array ``targets-<key>`` of shape ``(n_windows, K)``. Its manifest entry::

    "targets": {"<key>": {"spec": {...TargetSpec fields...}, "window_s": s, "stride_s": s,
                          "names": [K target names], "positioned_only": true,
                          "channel_types": null | [types]}}

``key`` is :func:`target_set_key` of (spec, window_s, stride_s). Each array is written under a
temporary name and renamed (:func:`write_target_table`); the manifest lists the set
(:func:`add_target_set`) only after every recording has its array, so readers never see a
partial set. Windows use the loader's channel picking (``positioned_only``, ``channel_types``),
so a window dataset with the same window and picks, a stride that is a multiple of the stored
one and ``targets=key`` reads exactly the targets it would compute itself
(:meth:`Recording.read_targets`).

Writing
-------
Every array of the store (a recording's group, a target table) goes through one path,
:func:`_write_atomically`: written under a ``.tmp-*`` name, renamed when complete, removed if
the writer fails. The manifest is replaced atomically by :func:`commit` (temporary file, then
rename).

Signal encoding
---------------
``data`` holds the preprocessed signal in physical units (µV for EEG/iEEG, fT for
magnetometers, fT/cm for gradiometers; see :data:`brainfm.signal.UNITS`) divided by
a per-channel power-of-two ``scale`` (1 unless the channel exceeds ±32768 units) and
cast to IEEE float16, chunked along time and compressed with Blosc (zstd level 1,
byte shuffle: 19 % smaller than raw float16 on EEGMAT at half the time of level 5). Decoding is ``data.astype(float32) * scale``.

Accepted reconstruction error: float16 rounding to nearest, i.e. a relative error
of at most 2**-11 ≈ 4.9e-4 per sample, plus an absolute error of at most 2**-25 ·
scale ≈ 3e-8 units for values in float16's subnormal range. Scaling to µV/fT before
the cast is what makes this hold; in SI units most MEG samples would flush to zero.
The measured maximum on real data is recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import fsspec
import numpy as np
import torch
import zarr
from fsspec.implementations.local import LocalFileSystem

from brainfm.signal import SensorSpec

FORMAT = "brainfm-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDINGS = "recordings"
#: Name prefix of a recording's precomputed target arrays (``targets-<key>``).
TARGETS_PREFIX = "targets-"
#: Largest magnitude stored unscaled; above it the channel gets a power-of-two scale.
FP16_SAFE_MAX = 32768.0
#: Worst-case relative reconstruction error of the float16 encoding (round to nearest).
FP16_MAX_REL_ERROR = 2.0**-11
#: Readers decode chunks in aligned groups of at most this many bytes, one Zarr call each.
READ_AHEAD_BYTES = 8 * 2**20


# --------------------------------------------------------------------------------------
# locations
# --------------------------------------------------------------------------------------
def store_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a store location and the path within it."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path.rstrip("/")


def zarr_store(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """A Zarr store for ``path`` on ``fs``: LocalStore on disk, FsspecStore elsewhere."""
    if isinstance(fs, LocalFileSystem):
        return zarr.storage.LocalStore(path)
    return zarr.storage.FsspecStore.from_url(fs.unstrip_protocol(path))


def encode_signal(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode float data ``(C, N)`` in physical units to (float16 data, per-channel scale)."""
    data = np.asarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError("signal contains NaN or infinite values")
    peak = np.abs(data).max(axis=1) if data.size else np.zeros(data.shape[0])
    exponent = np.ceil(np.log2(np.maximum(peak, 1.0) / FP16_SAFE_MAX)).clip(min=0)
    scale = np.exp2(exponent).astype(np.float32)
    encoded = (data / scale[:, None]).astype(np.float16)
    return encoded, scale


def decode_signal(encoded: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_signal` (float32).

    The float16 to float32 cast runs through torch, whose vectorised conversion is
    about 5x faster than numpy's element-wise one on this hot path.
    """
    out = torch.from_numpy(np.ascontiguousarray(encoded)).float().numpy()
    out *= np.asarray(scale, dtype=np.float32)[:, None]
    return out


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Events:
    """Events of one recording: onsets and durations in seconds, string labels."""

    onset: np.ndarray
    duration: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.onset)


class _ChunkCache:
    """Process-wide LRU cache of decoded time chunks, bounded in bytes."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def drop(self, owner: str) -> None:
        """Forget every chunk whose key starts with ``owner``."""
        with self._lock:
            for key in [k for k in self._items if k[0] == owner]:
                self._bytes -= self._items.pop(key).nbytes

    def put(self, key: tuple, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


CHUNK_CACHE = _ChunkCache()


class Recording:
    """Read-only view of one recording in a store.

    Reads are aligned to the array's time chunks: :meth:`read` decodes whole chunks
    and slices in numpy, and keeps decoded chunks in a process-wide LRU cache, so many
    windows from one chunk cost one read. A miss decodes the aligned group of chunks
    around it, up to :data:`READ_AHEAD_BYTES`, in one Zarr call: each call costs 1-2 ms
    however small, so a short recording is read whole at its first window.
    """

    def __init__(self, group: zarr.Group, recording_id: str):
        self.id = recording_id
        self._group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"recording {recording_id!r} has format version "
                f"{self.attrs.get('format_version')}, this brainfm reads {FORMAT_VERSION}"
            )
        self._data = group["data"]
        ch = self.attrs["channels"]
        self.scale = np.asarray(ch["scale"], dtype=np.float32)
        self.spec = SensorSpec.from_dict(
            {"ch_names": ch["names"], "ch_types": ch["types"], "loc": ch["loc"],
             "sfreq": self.attrs["sfreq"], "units": ch["units"]}
        )
        self.chunk = int(self._data.chunks[1])
        # Cache keys are unique per Recording object (never id(), which Python reuses after
        # garbage collection); its chunks leave the cache when the object goes.
        self._cache_id = uuid.uuid4().hex
        weakref.finalize(self, CHUNK_CACHE.drop, self._cache_id)

    # metadata ---------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self._data.shape[1])

    @property
    def sfreq(self) -> float:
        return self.spec.sfreq

    @property
    def subject(self) -> str | None:
        return self.attrs.get("subject")

    @property
    def events(self) -> Events:
        ev = self.attrs.get("events") or {"onset": [], "duration": [], "label": []}
        return Events(
            np.asarray(ev["onset"], dtype=np.float64),
            np.asarray(ev["duration"], dtype=np.float64),
            np.asarray(ev["label"], dtype=object),
        )

    # signal -----------------------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decoded signal ``(C, stop - start)`` float32 in physical units."""
        stop = self.n_samples if stop is None else stop
        if not 0 <= start <= stop <= self.n_samples:
            raise IndexError(
                f"samples [{start}, {stop}) outside recording {self.id!r} of {self.n_samples}"
            )
        first, last = start // self.chunk, max(start, stop - 1) // self.chunk
        parts = [self._chunk(k) for k in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        offset = first * self.chunk
        return block[:, start - offset : stop - offset]

    def read_all(self) -> np.ndarray:
        return self.read(0, self.n_samples)

    def read_array(self, name: str) -> np.ndarray:
        """A whole auxiliary array of the recording's group (e.g. precomputed targets)."""
        return np.asarray(self._group[name][...])

    def read_targets(self, key: str) -> torch.Tensor:
        """The ``(n_windows, K)`` float32 table of target set ``key`` (see the module docstring)."""
        return torch.from_numpy(self.read_array(f"{TARGETS_PREFIX}{key}"))

    def _chunk(self, k: int) -> np.ndarray:
        key = (self._cache_id, k)
        cached = CHUNK_CACHE.get(key)
        if cached is None:
            self._read_ahead(k)
            cached = CHUNK_CACHE.get(key)
            if cached is None:  # evicted at once: the cache is smaller than one read
                lo, hi = k * self.chunk, min((k + 1) * self.chunk, self.n_samples)
                cached = decode_signal(self._data[:, lo:hi], self.scale)
        return cached

    def _read_ahead(self, k: int) -> None:
        """Decode the aligned group of chunks holding chunk ``k`` with one Zarr call.

        Groups hold as many chunks as fit in :data:`READ_AHEAD_BYTES` decoded (a whole
        short recording), so random access reads each group once, not once per chunk.
        """
        n_chunks = -(-self.n_samples // self.chunk)
        per_group = max(1, READ_AHEAD_BYTES // (4 * self.spec.n_channels * self.chunk))
        first = (k // per_group) * per_group
        last = min(n_chunks, first + per_group)
        lo, hi = first * self.chunk, min(last * self.chunk, self.n_samples)
        block = decode_signal(self._data[:, lo:hi], self.scale)
        for j in range(first, last):
            a = (j - first) * self.chunk
            CHUNK_CACHE.put((self._cache_id, j), block[:, a : a + self.chunk])

    def __repr__(self) -> str:
        return f"Recording({self.id!r}, {self.spec!r}, {self.n_samples / self.sfreq:.1f} s)"


class ShardStore:
    """Read-only access to a store through its manifest.

    Parameters
    ----------
    url : str or path-like
        Store location (local path or fsspec URL).
    """

    def __init__(self, url: str | Any):
        self.url = str(url)
        self._fs, self._root = store_fs(self.url)
        try:
            manifest = json.loads(self._fs.cat_file(f"{self._root}/{MANIFEST}"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.url} is not a brainfm store (no {MANIFEST}); "
                "create one with `brainfm convert BIDS_ROOT STORE`"
            ) from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.url}: not a brainfm store manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.url}: format version {manifest.get('format_version')}, "
                f"this brainfm reads {FORMAT_VERSION}"
            )
        self.manifest: dict[str, Any] = manifest
        self._open: dict[str, Recording] = {}

    @property
    def recording_ids(self) -> list[str]:
        return sorted(self.manifest["recordings"])

    @property
    def preset(self) -> dict[str, Any]:
        return self.manifest["preset"]

    def entry(self, recording_id: str) -> dict[str, Any]:
        try:
            return self.manifest["recordings"][recording_id]
        except KeyError:
            raise KeyError(f"no recording {recording_id!r} in store {self.url}") from None

    def subjects(self) -> list[str]:
        return sorted({e["subject"] for e in self.manifest["recordings"].values()})

    @property
    def target_sets(self) -> dict[str, dict[str, Any]]:
        """Manifest entries of the precomputed target sets, by key."""
        return self.manifest.get("targets", {})

    def target_set(self, key: str) -> dict[str, Any]:
        """The manifest entry of target set ``key``; KeyError naming the sets there are."""
        sets = self.target_sets
        if key not in sets:
            raise KeyError(f"store {self.url} has no target set {key!r}; it has {sorted(sets)}")
        return sets[key]

    def recording(self, recording_id: str) -> Recording:
        rec = self._open.get(recording_id)
        if rec is None:
            path = self.entry(recording_id)["path"]
            group = zarr.open_group(zarr_store(self._fs, f"{self._root}/{path}"), mode="r")
            rec = self._open[recording_id] = Recording(group, recording_id)
        return rec

    def select(self, subjects: Iterable[str] | None = None, **entities: Any) -> list[str]:
        """Recording ids whose subject is in ``subjects`` and whose entities match."""
        subjects = None if subjects is None else set(subjects)
        out = []
        for rid, e in sorted(self.manifest["recordings"].items()):
            if subjects is not None and e["subject"] not in subjects:
                continue
            if all(e.get(k) == v for k, v in entities.items()):
                out.append(rid)
        return out

    def __len__(self) -> int:
        return len(self.manifest["recordings"])

    def __getstate__(self) -> dict:  # DataLoader workers re-open lazily
        return {"url": self.url, "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.url = state["url"]
        self._fs, self._root = store_fs(self.url)
        self.manifest = state["manifest"]
        self._open = {}

    def summary(self) -> dict[str, Any]:
        """Totals for ``brainfm info``."""
        recs = self.manifest["recordings"].values()
        counts: dict[str, int] = {}
        for e in recs:
            for t, n in e["ch_type_counts"].items():
                counts[t] = counts.get(t, 0) + n
        sfreqs = sorted({e["sfreq"] for e in recs})
        return {
            "store": self.url,
            "format_version": self.manifest["format_version"],
            "preset": self.manifest["preset"].get("name"),
            "preset_hash": self.manifest["preset_hash"],
            "recordings": len(self.manifest["recordings"]),
            "subjects": len({e["subject"] for e in recs}),
            "datatypes": sorted({e["datatype"] for e in recs}),
            "channel_type_counts": counts,
            "sfreq": sfreqs[0] if len(sfreqs) == 1 else sfreqs,
            "total_hours": sum(e["n_samples"] / e["sfreq"] for e in recs) / 3600.0,
            "positions": sorted({e["positions"] for e in recs}),
        }


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
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
) -> dict[str, Any]:
    """Write one recording atomically and return its manifest entry.

    The group is written under ``recordings/.tmp-<id>-<uuid>`` and renamed to
    ``recordings/<id>`` only when complete. The caller adds the returned entry to the
    manifest (:func:`commit`); until then readers do not see the recording.
    """
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
    channels = {
        "names": list(spec.ch_names),
        "types": list(spec.ch_types),
        "units": list(spec.units),
        "loc": _jsonable_loc(spec.loc),
        "scale": [float(s) for s in scale],
        **dict(extra_channel_attrs or {}),
    }
    group_attrs = {
        **dict(attrs),
        "recording_id": recording_id,
        "format_version": FORMAT_VERSION,
        "sfreq": spec.sfreq,
        "n_samples": int(data.shape[1]),
        "channels": channels,
        "events": {
            "onset": [float(x) for x in events.onset],
            "duration": [float(x) for x in events.duration],
            "label": [str(x) for x in events.label],
        },
    }

    def write() -> None:
        fs.makedirs(f"{root}/{RECORDINGS}", exist_ok=True)
        group = zarr.open_group(zarr_store(fs, tmp), mode="w", zarr_format=3, attributes=group_attrs)
        arr = group.create_array(
            "data",
            shape=encoded.shape,
            chunks=(encoded.shape[0], min(chunk, max(1, encoded.shape[1]))),
            dtype="float16",
            compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
        )
        arr[...] = encoded

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
    }


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


def read_manifest(store_url: str) -> dict[str, Any] | None:
    """The store's manifest, or None when the store does not exist yet."""
    fs, root = store_fs(store_url)
    try:
        return json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    except FileNotFoundError:
        return None


def new_manifest(preset: Mapping[str, Any], preset_hash: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": dict(preset),
        "preset_hash": preset_hash,
        "recordings": {},
    }


def commit(store_url: str, manifest: Mapping[str, Any]) -> None:
    """Atomically replace the store's manifest (write a temporary file, then rename)."""
    fs, root = store_fs(store_url)
    fs.makedirs(root, exist_ok=True)
    tmp = f"{root}/.{MANIFEST}.{uuid.uuid4().hex[:8]}"
    fs.pipe_file(tmp, json.dumps(manifest, indent=1, sort_keys=True).encode())
    fs.mv(tmp, f"{root}/{MANIFEST}")


def remove_stale_temporaries(store_url: str) -> list[str]:
    """Delete ``.tmp-*`` groups left by interrupted writers; return their names."""
    fs, root = store_fs(store_url)
    base = f"{root}/{RECORDINGS}"
    if not fs.exists(base):
        return []
    stale = [p for p in fs.ls(base, detail=False) if p.rstrip("/").rsplit("/", 1)[-1].startswith(".tmp-")]
    for p in stale:
        fs.rm(p, recursive=True)
    return stale


# --------------------------------------------------------------------------------------
# target sets
# --------------------------------------------------------------------------------------
def target_set_key(spec: Mapping[str, Any], window_s: float, stride_s: float) -> str:
    """The key of a target set: a hash of its target spec (as JSON), window and stride."""
    payload = json.dumps({"spec": spec, "window_s": window_s, "stride_s": stride_s}, sort_keys=True)
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
                   channel_types: Sequence[str] | None = None) -> None:
    """List target set ``key`` in the manifest (after every recording has its table)."""
    manifest = read_manifest(store_url)
    if manifest is None:
        raise FileNotFoundError(f"{store_url} is not a brainfm store (no {MANIFEST})")
    manifest.setdefault("targets", {})[key] = {
        "spec": dict(spec), "window_s": window_s, "stride_s": stride_s, "names": list(names),
        "positioned_only": positioned_only, "channel_types": None if channel_types is None else list(channel_types),
    }
    commit(store_url, manifest)
