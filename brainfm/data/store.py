"""The brainfm shard store: format specification, reader and atomic writer.

Format version 3
================

A store is a directory (any fsspec URL: a local path, ``file://``, ``s3://``, ...)::

    STORE/
      manifest.json              the only source of truth about what the store holds
      .lock                      the writers' lock (local stores; see "Locking")
      .lock.json                 who holds it: {"pid", "host", "started", "heartbeat"}
      .manifest.json.<hex>       a manifest being written (removed by the next writer)
      recordings/
        <recording id>/          one Zarr v3 group per completely written recording
          zarr.json              group attributes (below)
          data/                  Zarr v3 array, float16, shape (C, N), chunks (C, chunk)
                                 grouped into shards (C, S) (see "Shards"), fill value
                                 NaN, every chunk of the extent written
          targets-<key>/         optional Zarr v3 array, float32, shape (n_windows, K): one
                                 precomputed target set (below)
          channel_loc/           optional Zarr v3 array, float64, shape (C, 12): the channel
                                 ``loc`` table of recordings with more than
                                 LOC_ARRAY_CHANNELS channels (voxels; see "BOLD")
          .tmp-targets-<key>-<uuid>/  a target array being written (ignored by readers)
        .tmp-<id>-<uuid>/        a recording being written (ignored by readers)
      reports/convert-*.json     one report per conversion run
      reports/import-hdf5-*.json one report per ``brainfm import-hdf5`` run

``manifest.json``::

    {"format": "brainfm-shards", "format_version": 3,
     "preset": {...preset fields...}, "preset_hash": "<sha256[:16]>",
     "recordings": {"<id>": {"path": "recordings/<id>", "subject": ..., "session": ...,
                             "task": ..., "run": ..., "datatype": "eeg"|"meg"|"ieeg"|"func",
                             "n_channels": C, "n_samples": N, "sfreq": Hz,
                             "ch_type_counts": {"eeg": 19}, "n_events": E,
                             "positions": "recorded"|"montage:<name>"|"partial-recorded"|"partial-montage:<name>"|"none",
                             "source": "<path relative to the BIDS root>",
                             "source_sha256": "...", "preset_hash": "...",
                             "format_version": 3, "group_sha256": "<sha256 of zarr.json>",
                             "n_chunks": K, "n_shards": M,          (n_shards: format 3)
                             "flagged_channels": {"<name>": ["flat"]},
                             "n_warnings": W,
                             "bold": {...}}},                 (func only; see "BOLD")
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
    quality:  {flags: {"<channel>": [reasons]}, warnings: [messages]}      (format >= 2)
    files:    {"data/zarr.json": [bytes, sha256], "data/c/0/<s>": [bytes, sha256], ...}
              every file of the ``data`` array as written (format 3: one per shard;
              format 2: one per chunk)                                   (format >= 2)
    dropped_channels: {"<name>": "<type>"}  channels of types the preset does not keep

Recordings imported from HDF5 (:mod:`brainfm.pipelines.hdf5_import`) have ``source``
``<file name>::<group>`` and add ``hdf5``: {file, group, dataset, attrs, group_attrs, scale}
(the file's own attributes), with ``filters`` as the file states them.

The manifest's ``group_sha256`` is the SHA-256 of the group's ``zarr.json``, so the manifest
pins the attributes, and the attributes pin every byte of the signal (``files``).

Shards
------
Format 3 stores ``data`` with Zarr v3's ``sharding_indexed`` codec: chunks of ``chunk``
samples (the preset's ``chunk_seconds``, Blosc :data:`SIGNAL_BLOSC`), grouped into
shards of ``S`` samples, each shard one object ``data/c/0/<s>`` that holds its chunks
followed by its index (per chunk, little-endian uint64 offset and length; then a CRC-32C of
the index). ``S`` (:func:`shard_samples`) is the largest whole number of chunks whose decoded
float32 signal fits :data:`READ_AHEAD_BYTES` (8 MiB; at least one chunk): an EEGMAT
recording (19 channels, up to 180 s at 200 Hz) is one shard. Readers fetch a whole shard with
one request and decode it (:mod:`brainfm.data.shard_codec`; many shards at once for a batch),
which is what a cold read costs: one object per recording or per 8 MiB of signal instead of
one per chunk. Any Zarr v3 reader reads the array as it is.

Integrity
---------
* **On read**, a missing chunk inside a recording's extent is an error
  (:class:`StoreError` naming the chunk file, or for format 3 the shard file and the chunk):
  format-2 and format-3 arrays have fill value NaN and every chunk written
  (``write_empty_chunks``), and the signal can never be NaN (:func:`encode_signal` refuses
  it), so a NaN read back is a missing chunk; the format-3 fast path also refuses a shard whose
  index fails its CRC-32C or lists no chunk where the extent needs one. A chunk or shard that
  does not decode is an error naming its file, and so is a manifest that is not JSON.
* :func:`verify_store` (``brainfm verify STORE``) checks every listed recording: the group
  exists, its ``zarr.json`` hashes to ``group_sha256``, and every file of ``files`` exists with
  its size and SHA-256; every listed target set has its array in every recording it covers.
  ``quick=True`` (what ``brainfm convert`` runs before skipping a recording) checks existence
  and sizes only. ``convert`` re-makes every recording that fails, and unlists an entry whose
  group is gone.
* Format-1 stores (no ``files``, fill value 0, all-zero chunks not written) still read. For
  them a reader lists the chunk files at the first read and a missing one is an error (an
  all-zero chunk that format 1 never wrote is reported as missing too: on preprocessed
  recordings it does not occur); :func:`verify_store` checks that every chunk exists and
  decodes and reports ``format 1: no recorded hashes`` for each. ``brainfm convert`` keeps
  format-1 recordings that pass that check (re-making a whole store under readers that use it
  would be worse), writes new ones in the current format and a current manifest; an entry
  without ``format_version`` is format 1. ``brainfm convert --upgrade STORE``
  (:func:`upgrade_store`) rewrites every older recording in format 3 from its stored float16
  (bit-identical signal, no BIDS source needed), each atomically, after checking it.

Signal quality
--------------
Conversion (:mod:`brainfm.pipelines.convert`) decides, per recording, by these rules, and
records what it decided in ``quality``; ``docs/reliability.md`` has the table:

* every sample of every kept channel zero or constant: refused, nothing is stored;
* a channel constant in the source (``flat``), or whose peak exceeds
  :data:`SPIKE_RATIO` times its median absolute value after preprocessing (``spikes``: one
  such sample pushes the channel's float16 scale up by that ratio), is stored with that flag;
  :attr:`Recording.usable` is False for flagged channels and loaders should leave them out;
* a median absolute amplitude outside :data:`PLAUSIBLE_UNITS` for its channel type (a header
  whose units or physical range make no physical sense): refused.

Locking
-------
Every writer of a store (``brainfm convert``, ``--targets``) holds :func:`store_lock` for the
whole run. On local disk it is an OS lock (``flock`` through :mod:`filelock`) on
``STORE/.lock``: the kernel releases it when the process dies, so a killed run never leaves a
stale lock, and start-up cleanup of ``.tmp-*`` names, which runs only under the lock, can
never delete a live run's temporaries. On object stores, which have no locks, the
equivalent is a lease: ``STORE/.lock.json`` created with a conditional put (``If-None-Match:
*`` on S3, :meth:`fsspec.AbstractFileSystem.pipe_file` ``mode="create"``), its ``heartbeat``
rewritten every :data:`LEASE_HEARTBEAT_S`; a lease whose heartbeat is older than
:data:`LEASE_STALE_S` belongs to a dead writer and is taken over. A second writer waits up to
its timeout, then fails naming the holder.

Target sets
-----------
A target set holds, for every recording, the neurodynamics target vector
(:func:`brainfm.targets.compute_targets`) of each fixed window ``[k·stride, k·stride + window)``
as the array ``targets-<key>`` of shape ``(n_windows, K)``. Its manifest entry::

    "targets": {"<key>": {"spec": {...TargetSpec fields...}, "window_s": s, "stride_s": s,
                          "names": [K target names], "positioned_only": true,
                          "channel_types": null | [types],
                          "normalization": null | {"method": m, "source": s, "seconds": s | null},
                          "recordings": null | [recording ids]}}

``key`` is :func:`target_set_key` of (spec, window_s, stride_s, normalization). Targets of a set
with ``normalization`` were computed from windows normalised per subject
(:mod:`brainfm.data.normalize`: method, source of statistics, calibration seconds), so they match
a loader that normalises the same way (``PretrainDataModule(normalize=...)``). Statistics need
one montage per subject, so such a set may cover only the ``recordings`` listed (``null``: all of
them; a set of windows as stored lists them too when the loader's picking leaves a recording
out, e.g. one without a positioned channel). Each array is written under a
temporary name and renamed (:func:`write_target_table`); the manifest lists the set
(:func:`add_target_set`) only after every recording has its array, so readers never see a
partial set. Windows use the loader's channel picking (``positioned_only``, ``channel_types``),
so a window dataset with the same window and picks, a stride that is a multiple of the stored
one and ``targets=key`` reads exactly the targets it would compute itself
(:meth:`Recording.read_targets`). A conversion that adds or re-makes a recording unlists
every set (:func:`drop_stale_target_sets`), since the new group has no array for it.

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
cast to IEEE float16, chunked along time and compressed with Blosc (:data:`SIGNAL_BLOSC`:
lz4 level 5, byte shuffle; stores written before 2026-12-01 use zstd level 1, and both
read). Decoding is ``data.astype(float32) * scale``.

Accepted reconstruction error: float16 rounding to nearest, i.e. a relative error
of at most 2**-11 ≈ 4.9e-4 per sample, plus an absolute error of at most 2**-25 ·
scale ≈ 3e-8 units for values in float16's subnormal range. Scaling to µV/fT before
the cast is what makes this hold; in SI units most MEG samples would flush to zero.
The measured maximum on real data is recorded in ``docs/benchmarks.md``.

BOLD (fMRI, ``datatype: "func"``)
---------------------------------
A BIDS ``func`` run (:mod:`brainfm.pipelines.bids_func`) is stored like any recording, with
these meanings, all backwards compatible (formats 2 and 3; readers that ignore them still work):

* every channel has type ``bold``; a channel is a voxel (named ``v<i>-<j>-<k>``, its voxel
  indices) or an ROI (named by the atlas label or the table column);
* ``sfreq`` is ``1 / TR``: one sample per volume, ``n_samples`` volumes, no resampling;
* ``units`` per channel: ``%`` (percent signal change, ``100 · residual / mean`` with the mean
  taken before cleaning) or ``z`` (residual z-scored within the run), as the preset says;
* ``loc[0:3]`` is the voxel centre or the ROI centroid (mean of its voxels' centres) in the
  image's world space, in **metres** like every channel (world mm / 1000); ``loc[3:12]`` are
  zero (no orientation). ``bold.space`` records which world space: the ``space-`` entity, the
  sidecar's ``Space``, else the NIfTI sform/qform code (``scanner``, ``aligned``,
  ``talairach``, ``mni152``, ``template``); ``bold.affine`` the voxel-to-world affine (mm). ROI
  tables without centroids have NaN positions (``positions: "none"``);
* a recording with more than :data:`LOC_ARRAY_CHANNELS` channels (a voxel run) keeps its
  ``loc`` table in the ``channel_loc`` array, and ``channels.loc`` is ``{"array":
  "channel_loc"}``; that array's files are in ``files`` like the signal's. As JSON, 10^5
  voxels' ``loc`` rows took 38 MB of ``zarr.json``;
* ``events`` come from ``events.tsv`` (onsets in s from the first volume);
* group attribute ``bold``: ``representation`` (``voxel``/``roi``), ``units`` (in words),
  ``tr`` (s) and ``tr_source`` (``sidecar``/``header``), ``n_volumes``, ``slice_timing``
  (the sidecar's ``SliceTiming`` list), ``slice_timing_corrected`` and
  ``slice_timing_correction`` (``{corrected, method, axis, reference_s, n_slices,
  source_unit}``, ``{corrected: false, reason}`` or null; the manifest's ``bold`` adds
  ``slice_timing``), ``space``, ``affine``, ``mask``
  (``{"kind": "intensity", "fraction", "percentile", "n_voxels"}``, ``{"kind": "explicit",
  "file"}``, ``{"kind": "atlas", "file", "labels"}`` or ``{"kind": "table"}``),
  ``regressors`` (``detrend`` order, ``n_cosines``, ``high_pass`` Hz, ``confounds`` used and
  ``confounds_file``), ``source_units``; ``channels`` adds ``label_index`` and ``n_voxels`` for
  atlas ROIs; ``filters`` holds ``{"sfreq": 1/TR, "l_freq": high_pass, "h_freq": null,
  "notch": null, "detrend": order}``;
* the manifest entry adds ``bold``: ``representation``, ``units``, ``tr``, ``space`` and
  ``regressors``, so what was done to every run is listed in the manifest.

Quality rules for BOLD are those of :mod:`brainfm.pipelines.bids_func` (header quirks, NaN
voxels, short runs); the EEG/MEG amplitude rules above do not apply. BOLD's float16 error
is the same bound: percent signal change of a few % is far from float16's limits.

Older formats
-------------
Format 2 is format 3 without shards: ``data`` has one object per chunk, ``data/c/0/<k>``,
and the manifest entry has no ``n_shards``. Readers read it through Zarr, one aligned group
of chunks (up to :data:`READ_AHEAD_BYTES`) per call.

Format 1 is format 2 without ``files``, ``quality``, ``dropped_channels`` and the manifest's
``format_version``/``group_sha256``/``n_chunks``/``flagged_channels``/``n_warnings`` per entry;
``data`` has fill value 0 and chunks equal to it are not written. Read as described under
"Integrity".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import filelock
import fsspec
import numpy as np
import torch
import zarr
from fsspec.implementations.local import LocalFileSystem

from brainfm.data.shard_codec import MissingInnerChunk, ShardDecodeError, decode_shard_chunks, read_pool, shard_layout
from brainfm.signal import SensorSpec

FORMAT = "brainfm-shards"
FORMAT_VERSION = 3
#: Format versions this brainfm reads (see "Older formats" above).
READABLE_VERSIONS = (1, 2, 3)
#: Format versions :func:`write_recording` writes (2 only to make older stores, e.g. in tests).
WRITABLE_VERSIONS = (2, 3)
LOCK = ".lock"
LOCK_OWNER = ".lock.json"
#: Object-store lease: the holder rewrites its heartbeat this often (s) ...
LEASE_HEARTBEAT_S = 30.0
#: ... and a lease whose heartbeat is older than this (s) belongs to a dead writer.
LEASE_STALE_S = 300.0
#: A channel whose peak exceeds this many times its median absolute value is flagged ``spikes``.
#: On the small sample the largest ratio is 55 (EEGMAT, eye blinks); an electrode pop is 100-500.
SPIKE_RATIO = 1e3
#: Physically plausible median absolute amplitude per channel type, in stored units
#: (µV, fT, fT/cm): outside it, the header's units or physical range are wrong. On the small
#: sample the medians are 2-32 µV (EEG), 39-1130 fT (mag), 15-34 fT/cm (grad).
PLAUSIBLE_UNITS = {"eeg": (1e-2, 1e4), "seeg": (1e-2, 1e5), "ecog": (1e-2, 1e5), "dbs": (1e-2, 1e5),
                   "mag": (1.0, 1e7), "grad": (0.1, 1e6)}
MANIFEST = "manifest.json"
RECORDINGS = "recordings"
#: Name prefix of a recording's precomputed target arrays (``targets-<key>``).
TARGETS_PREFIX = "targets-"
#: Largest magnitude stored unscaled; above it the channel gets a power-of-two scale.
FP16_SAFE_MAX = 32768.0
#: Worst-case relative reconstruction error of the float16 encoding (round to nearest).
FP16_MAX_REL_ERROR = 2.0**-11
#: Recordings with more channels than this keep their ``loc`` table in an array (see "BOLD").
LOC_ARRAY_CHANNELS = 2048
#: Readers decode chunks in aligned groups of at most this many bytes (float32), one request
#: each; format 3 writes one shard per such group.
READ_AHEAD_BYTES = 8 * 2**20
#: Blosc settings of the signal chunks this version writes. Readers take any Blosc setting
#: (each chunk's header names its compressor), so stores written with the earlier zstd
#: level 1 read unchanged. lz4 level 5 with byte shuffle decodes about 8x faster (13 against
#: 107 ms for the 66 MB of float16 of the 36-subject EEGMAT store, one thread) for 6 % more
#: bytes (0.48x against 0.45x float32): decoding was most of a cold read's CPU time.
SIGNAL_BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}


def blosc_codec() -> zarr.codecs.BloscCodec:
    """The Blosc codec of newly written arrays, signal chunks and channel tables (:data:`SIGNAL_BLOSC`)."""
    return zarr.codecs.BloscCodec(**SIGNAL_BLOSC)


class StoreError(RuntimeError):
    """A damaged store: the message names the file, what is wrong and what to do."""


class StoreLocked(RuntimeError):
    """Another writer holds the store's lock (the message names it)."""


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


#: Elements per torch cast in :func:`decode_signal`: at or below torch's parallel grain size
#: (32768) each cast runs in the calling thread.
CAST_SLICE = 32768


def decode_signal(encoded: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_signal` (float32).

    The float16 to float32 cast runs through torch, whose vectorised conversion is about 10x
    faster than numpy's element-wise one, in slices of :data:`CAST_SLICE` elements so that
    torch never hands it to its intra-op thread pool. On 2 cores shared with other jobs
    the pool is a trap: one 19 x 36000 cast took a median 24 ms with 2 torch threads,
    0.15 ms sliced (numpy: 1.5 ms). (A single mixed-dtype ``torch.mul`` into the output,
    skipping the contiguous copy, measured slower: 32 against 21 us per 19 x 1000 window.)
    """
    encoded = np.ascontiguousarray(encoded)
    out = np.empty(encoded.shape, dtype=np.float32)
    src, dst = torch.from_numpy(encoded.reshape(-1)), torch.from_numpy(out.reshape(-1))
    for a in range(0, src.numel(), CAST_SLICE):
        dst[a : a + CAST_SLICE].copy_(src[a : a + CAST_SLICE])
    out *= np.asarray(scale, dtype=np.float32)[:, None]
    return out


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Events:
    """Events of one recording: onsets and durations in seconds, string labels."""

    onset: np.ndarray
    duration: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.onset)


#: Per (process, filesystem token): the filesystem instance re-made in that process.
_CHILD_FS: dict[tuple[int, str], fsspec.AbstractFileSystem] = {}


def _fork_safe(fs: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """``fs``, or in a process forked after it was made, one new instance of it per process
    (shared by every recording: creating an S3 client costs tens of ms)."""
    if isinstance(fs, LocalFileSystem):
        return fs
    key = (os.getpid(), fs._fs_token)
    if key not in _CHILD_FS:
        _CHILD_FS[key] = type(fs)(**fs.storage_options, skip_instance_cache=True)
    return _CHILD_FS[key]


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

    Reads are aligned to the array's time chunks: :meth:`read` decompresses whole chunks
    and keeps them, float16 as stored, in a process-wide LRU cache, so many windows from one
    chunk cost one read; only the samples a read returns are cast to float32 and scaled
    (:func:`decode_signal`), so DataLoader workers that share a chunk each cast only their
    own windows of it. A miss decompresses the aligned group of chunks
    around it, up to :data:`READ_AHEAD_BYTES`, with one request: in format 3 that group is
    one shard, fetched whole and decoded directly (:mod:`brainfm.data.shard_codec`); older
    formats go through one Zarr call, which costs 1-2 ms however small. A short recording is
    read whole at its first window; :func:`prefetch` reads many groups at once.
    """

    def __init__(self, group: zarr.Group, recording_id: str, location: str | None = None,
                 fs: fsspec.AbstractFileSystem | None = None):
        self.id = recording_id
        #: Where the group lies (for messages; with ``fs``, format-1 reads check chunk files there).
        self.location = location or f"recording {recording_id!r}"
        self._fs = fs
        self._fs_pid = os.getpid()
        self._group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.format_version = self.attrs.get("format_version")
        if self.format_version not in READABLE_VERSIONS:
            raise ValueError(
                f"recording {recording_id!r} has format version "
                f"{self.attrs.get('format_version')}, this brainfm reads {list(READABLE_VERSIONS)}"
            )
        try:
            self._data = group["data"]
        except KeyError:
            raise StoreError(f"{self.location}/data is missing: the recording is damaged; run "
                             "`brainfm verify STORE`, then `brainfm convert` to re-make it") from None
        ch = self.attrs["channels"]
        self.scale = np.asarray(ch["scale"], dtype=np.float32)
        loc = ch["loc"]
        if isinstance(loc, dict):  # a large channel table (see "BOLD")
            loc = np.asarray(group[loc["array"]][...], dtype=np.float64)
            self.spec = SensorSpec(ch["names"], ch["types"], loc, self.attrs["sfreq"], tuple(ch["units"]))
        else:
            self.spec = SensorSpec.from_dict(
                {"ch_names": ch["names"], "ch_types": ch["types"], "loc": loc,
                 "sfreq": self.attrs["sfreq"], "units": ch["units"]}
            )
        self.chunk = int(self._data.chunks[1])  # inner chunks for format 3
        #: Format 3 with the codecs :mod:`brainfm.data.shard_codec` decodes: read shards directly.
        self._layout = shard_layout(self._data.metadata) if self.format_version >= 3 else None
        self._missing: set[int] | None = None  # format 1: chunk files absent, listed at the first read
        # Cache keys are unique per Recording object (never id(), which Python reuses after
        # garbage collection); its chunks leave the cache when the object goes.
        self._cache_id = uuid.uuid4().hex
        weakref.finalize(self, CHUNK_CACHE.drop, self._cache_id)

    # quality ----------------------------------------------------------------------
    @property
    def flags(self) -> dict[str, list[str]]:
        """Channels flagged at conversion (``flat``, ``spikes``) and why; empty for format 1."""
        return dict((self.attrs.get("quality") or {}).get("flags", {}))

    @property
    def usable(self) -> np.ndarray:
        """Per channel, True unless conversion flagged it (see "Signal quality" above)."""
        flagged = self.flags
        return np.array([name not in flagged for name in self.spec.ch_names], dtype=bool)

    @property
    def warnings(self) -> list[str]:
        """Warnings conversion recorded for this recording (MNE, mne-bids, quality checks)."""
        return list((self.attrs.get("quality") or {}).get("warnings", []))

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
    def read(self, start: int = 0, stop: int | None = None, whole_group: bool = True) -> np.ndarray:
        """Decoded signal ``(C, stop - start)`` float32 in physical units.

        ``whole_group=False`` decodes only the chunks the span covers, not the rest of their
        group (shard), on local disk: for loaders whose blocks split recordings between
        DataLoader workers (:class:`~brainfm.data.dataset.ShuffledWindows`,
        :class:`~brainfm.data.sampling.EpochWindows`), so that workers do not each decode the
        chunks of the others' blocks (a chunk that two neighbouring blocks share is decoded
        by both). On object storage each such read would fetch the whole shard again, so
        there the group is read whole as usual.
        """
        stop = self.n_samples if stop is None else stop
        if not 0 <= start <= stop <= self.n_samples:
            raise IndexError(
                f"samples [{start}, {stop}) outside recording {self.id!r} of {self.n_samples}"
            )
        if start == stop:
            return np.empty((self.spec.n_channels, 0), dtype=np.float32)
        first, last = start // self.chunk, (stop - 1) // self.chunk
        decoded: dict[int, np.ndarray] = {}
        if not whole_group and isinstance(self._fs, LocalFileSystem):
            decoded = self._decode_missing(first, last + 1)
        parts = [decoded[k] if k in decoded else self._chunk(k) for k in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        offset = first * self.chunk
        return decode_signal(block[:, start - offset : stop - offset], self.scale)  # (C, stop - start) float32

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
                cached = self._decode_chunks(k, k + 1)[0]
        return cached  # (C, chunk) float16, as stored

    def _decode_missing(self, first: int, last: int) -> dict[int, np.ndarray]:
        """Decode the chunks of ``[first, last)`` the cache lacks, from each missing chunk to
        the end of the span or of its group with one request (cached chunks in that stretch
        are decoded again), put them in the cache and return them ``{k: (C, chunk) float16}``."""
        last = min(last, -(-self.n_samples // self.chunk))
        out: dict[int, np.ndarray] = {}
        k = first
        while k < last:
            if self.cached(k):
                k += 1
                continue
            stop = min(last, self.group_of(k)[1])
            chunks = self._decode_chunks(k, stop)
            self._cache_group(k, chunks)
            out.update(zip(range(k, stop), chunks))
            k = stop
        return out

    def _read_ahead(self, k: int) -> None:
        """Decode the aligned group of chunks holding chunk ``k`` with one Zarr call.

        Groups hold as many chunks as fit in :data:`READ_AHEAD_BYTES` decoded (a whole
        short recording), so random access reads each group once, not once per chunk.
        """
        first, last = self.group_of(k)
        self._cache_group(first, self._decode_chunks(first, last))

    def group_of(self, k: int) -> tuple[int, int]:
        """The aligned group ``[first, last)`` of chunks that one read decodes with chunk ``k``
        (format 3: its shard)."""
        n_chunks = -(-self.n_samples // self.chunk)
        if self._layout is not None:
            per_group = self._layout.chunks_per_shard
        else:
            per_group = max(1, READ_AHEAD_BYTES // (4 * self.spec.n_channels * self.chunk))
        first = (k // per_group) * per_group
        return first, min(n_chunks, first + per_group)

    def cached(self, k: int) -> bool:
        """Whether chunk ``k`` is decoded in the cache."""
        return CHUNK_CACHE.get((self._cache_id, k)) is not None

    def _cache_group(self, first: int, chunks: list[np.ndarray]) -> None:
        for j, chunk in enumerate(chunks, start=first):
            CHUNK_CACHE.put((self._cache_id, j), chunk)

    def chunk_file(self, k: int) -> str:
        """Location of the file holding time chunk ``k`` of the signal (format 3: its shard)."""
        return f"{self.location}/data/{self._data.metadata.encode_chunk_key((0, self._object_of(k)))}"

    def _object_of(self, k: int) -> int:
        """Index of the stored object (chunk file, or shard) that holds chunk ``k``."""
        shards = getattr(self._data, "shards", None)
        return k // (int(shards[1]) // self.chunk) if shards else k

    def _damaged(self, k: int, what: str) -> StoreError:
        return StoreError(f"{self.chunk_file(k)}: {what}; the store is damaged: run `brainfm verify STORE`, "
                          "then `brainfm convert BIDS_ROOT STORE` to re-make the recording")

    def _decode_chunks(self, first: int, last: int) -> list[np.ndarray]:
        """Chunks ``[first, last)`` as float16 ``(C, chunk)`` arrays (the recording's last one
        shorter), as the cache holds them. A shard's chunks decompress straight into their
        rows of one ``(n, C, chunk)`` array, with no channel-major copy; other layouts are cut
        from :meth:`_decode`. Errors are those of :meth:`_decode`."""
        if last <= first:
            return []
        if self._layout is None or self._fs is None or self._object_of(first) != self._object_of(last - 1):
            block = self._decode(first, last)  # (C, n) float16
            return [block[:, a : a + self.chunk] for a in range(0, block.shape[1], self.chunk)]
        rows = self._decode_shard_bytes(first, last, self._read_shard(first))  # (n, C, chunk)
        tail = self.n_samples - (last - 1) * self.chunk  # samples of the last chunk that exist
        return [*rows[:-1], rows[-1][:, :tail]]

    def _read_shard(self, k: int) -> bytes:
        """The whole shard object holding chunk ``k``, with one request."""
        try:
            # start=0: one ranged GET; without a range s3fs first asks for the size (a HEAD)
            return self._filesystem().cat_file(self.chunk_file(k), start=0)
        except FileNotFoundError:
            raise self._damaged(k, "missing") from None

    def _decode(self, first: int, last: int) -> np.ndarray:
        """Chunks ``[first, last)`` decompressed, float16 as stored (``(C, n)``, before the
        per-channel scale); StoreError naming the chunk file when one is missing or does not
        decode (see "Integrity" in the module docstring)."""
        if self.format_version == 1 and self._fs is not None:
            self._check_chunk_files(first, last)
        if self._layout is not None and self._fs is not None and self._object_of(first) == self._object_of(last - 1):
            rows = self._decode_shard_bytes(first, last, self._read_shard(first))  # (n, C, chunk)
            hi = min(last * self.chunk, self.n_samples) - first * self.chunk
            return rows.transpose(1, 0, 2).reshape(self.spec.n_channels, -1)[:, :hi]  # (C, n * chunk) -> (C, hi)
        lo, hi = first * self.chunk, min(last * self.chunk, self.n_samples)
        try:
            encoded = self._data[:, lo:hi]
        except Exception as err:  # noqa: BLE001 - find the chunk and name it
            for j in range(first, last):
                try:
                    self._data[:, j * self.chunk : min((j + 1) * self.chunk, self.n_samples)]
                except Exception as chunk_err:  # noqa: BLE001
                    raise self._damaged(j, f"cannot be decoded ({chunk_err})") from chunk_err
            raise StoreError(f"{self.location}/data: cannot read samples [{lo}, {hi}) ({err})") from err
        encoded = np.asarray(encoded, dtype=np.float16)
        if np.isnan(encoded).any():  # NaN: the fill value of a missing chunk (format 2)
            for j in range(first, last):
                a = (j - first) * self.chunk
                if np.isnan(encoded[:, a : a + self.chunk]).any():
                    raise self._damaged(j, "missing (its samples read back as the fill value)")
        return encoded

    def _filesystem(self) -> fsspec.AbstractFileSystem:
        """The store's filesystem; in a forked process (a DataLoader worker) a new instance of it,
        since async filesystems such as s3fs refuse to run in a child of the process that made them."""
        if self._fs_pid != os.getpid():
            self._fs, self._fs_pid = _fork_safe(self._fs), os.getpid()
        return self._fs

    def _decode_shard_bytes(self, first: int, last: int, body: bytes) -> np.ndarray:
        """Chunks ``[first, last)``, all in one shard whose bytes are ``body``, decompressed:
        float16 ``(n, C, chunk)``, the last chunk padded as stored."""
        s = self._object_of(first)
        skip = first - s * self._layout.chunks_per_shard
        try:
            return decode_shard_chunks(body, self._layout, last - first, first=skip)
        except MissingInnerChunk as err:
            raise self._damaged(first, f"missing ({err})") from None
        except ShardDecodeError as err:
            raise self._damaged(first, f"cannot be decoded ({err})") from None

    def _check_chunk_files(self, first: int, last: int) -> None:
        """Format 1 (fill value 0): list the chunk files once and refuse a missing one."""
        if self._missing is None:
            base = f"{self.location}/data/c/0"
            try:
                names = {p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(base, detail=False)}
            except FileNotFoundError:
                names = set()
            n_chunks = -(-self.n_samples // self.chunk)
            self._missing = {j for j in range(n_chunks) if str(j) not in names}
        missing = sorted(self._missing & set(range(first, last)))
        if missing:
            raise self._damaged(missing[0], "missing")

    def __repr__(self) -> str:
        return f"Recording({self.id!r}, {self.spec!r}, {self.n_samples / self.sfreq:.1f} s)"


def prefetch(spans: Iterable[tuple[Recording, int, int]]) -> int:
    """Decode into the chunk cache every chunk group that the sample spans ``(recording,
    start, stop)`` need and the cache lacks, all at once from :func:`~brainfm.data.shard_codec.read_pool`;
    return the number of groups read.

    A batch of random windows then costs one round of concurrent requests instead of one
    request after another: on local disk reads overlap decoding, on object storage
    requests overlap each other's latency. Errors are those of :meth:`Recording.read`.
    """
    todo: dict[tuple[str, int], tuple[Recording, int, int]] = {}
    for rec, start, stop in spans:
        for k in range(start // rec.chunk, max(start, stop - 1) // rec.chunk + 1):
            if not rec.cached(k):
                first, last = rec.group_of(k)
                todo.setdefault((rec._cache_id, first), (rec, first, last))
    groups = list(todo.values())
    if len(groups) == 1:
        rec, first, last = groups[0]
        rec._cache_group(first, rec._decode_chunks(first, last))
    elif groups:
        futures = [read_pool().submit(rec._decode_chunks, first, last) for rec, first, last in groups]
        for (rec, first, _), future in zip(groups, futures):
            rec._cache_group(first, future.result())
    return len(groups)


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
        manifest = _load_manifest(self._fs, self._root)
        if manifest is None:
            raise FileNotFoundError(
                f"{self.url} is not a brainfm store (no {MANIFEST}); "
                "create one with `brainfm convert BIDS_ROOT STORE`"
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
            location = f"{self._root}/{self.entry(recording_id)['path']}"
            try:
                group = zarr.open_group(zarr_store(self._fs, location), mode="r")
            except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as err:
                raise StoreError(
                    f"{location}: the manifest lists recording {recording_id!r} but its group is missing or "
                    f"damaged ({type(err).__name__}); run `brainfm verify {self.url}`, then `brainfm convert` "
                    "to re-make it"
                ) from None
            rec = self._open[recording_id] = Recording(group, recording_id, location, self._fs)
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


def read_manifest(store_url: str) -> dict[str, Any] | None:
    """The store's manifest, or None when the store does not exist yet."""
    fs, root = store_fs(store_url)
    return _load_manifest(fs, root)


def _load_manifest(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """The parsed, checked manifest; None when absent; StoreError naming it when damaged."""
    path = f"{root}/{MANIFEST}"
    try:
        manifest = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise StoreError(
            f"{path} is corrupt ({err}); restore it from a backup, or move the store away and convert again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a brainfm store manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise StoreError(
            f"{path}: format version {manifest.get('format_version')}, this brainfm reads "
            f"{list(READABLE_VERSIONS)}; use the brainfm that wrote it"
        )
    if not isinstance(manifest.get("recordings"), dict):
        raise StoreError(f"{path} is corrupt (no recordings table); restore it or convert again")
    return manifest


def new_manifest(preset: Mapping[str, Any], preset_hash: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": dict(preset),
        "preset_hash": preset_hash,
        "recordings": {},
    }


def manifest_for_preset(store_url: str, preset: Mapping[str, Any], preset_hash: str, hint: str) -> dict[str, Any]:
    """The store's manifest, or a new one for ``preset``; a store built with another preset is refused.

    ``hint`` ends the error message: what the writer (``convert``, ``import-hdf5``) suggests instead.
    """
    manifest = read_manifest(store_url)
    if manifest is None:
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


# --------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Verification:
    """What :func:`verify_store` found: per recording id (or ``targets-<key>``), its problems."""

    store: str
    checked: int = 0
    problems: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_recording(store_url: str, recording_id: str, entry: Mapping[str, Any], quick: bool = False
                     ) -> tuple[list[str], list[str]]:
    """(problems, notes) of one listed recording; see "Integrity" in the module docstring."""
    fs, root = store_fs(store_url)
    group = f"{root}/{entry['path']}"
    try:
        meta = fs.cat_file(f"{group}/zarr.json")
    except FileNotFoundError:
        return [f"{group}: group missing"], []
    try:
        attrs = json.loads(meta)["attributes"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{group}/zarr.json is corrupt ({err})"], []
    try:
        present = {k: v["size"] for k, v in fs.find(f"{group}/data", detail=True).items()}
        if isinstance((attrs.get("channels") or {}).get("loc"), dict):
            present.update({k: v["size"] for k, v in fs.find(f"{group}/channel_loc", detail=True).items()})
    except FileNotFoundError:
        present = {}
    problems: list[str] = []
    if entry.get("format_version", 1) >= 2:
        if hashlib.sha256(meta).hexdigest() != entry.get("group_sha256"):
            problems.append(f"{group}/zarr.json differs from what was written (SHA-256)")
        for rel, (size, digest) in (attrs.get("files") or {}).items():
            path = f"{group}/{rel}"
            if path not in present:
                problems.append(f"{path}: missing")
            elif present[path] != size:
                problems.append(f"{path}: {present[path]} bytes, {size} written")
            elif not quick and hashlib.sha256(fs.cat_file(path)).hexdigest() != digest:
                problems.append(f"{path}: corrupt (SHA-256 differs from what was written)")
        if not attrs.get("files"):
            problems.append(f"{group}/zarr.json lists no files")
        return problems, []
    # format 1: no hashes; every chunk must exist (and decode)
    notes = ["format 1: no recorded hashes; checked that every chunk exists" + ("" if quick else " and decodes")]
    try:
        rec = Recording(zarr.open_group(zarr_store(fs, group), mode="r"), recording_id, group, fs)
    except (StoreError, ValueError, KeyError) as err:
        return [str(err)], notes
    n_chunks = -(-rec.n_samples // rec.chunk)
    for k in range(n_chunks):
        try:
            if quick:
                rec._check_chunk_files(k, k + 1)
            else:
                rec._decode(k, k + 1)
        except StoreError as err:
            problems.append(str(err).split("; the store is damaged")[0])
    return problems, notes


def verify_store(store_url: str, quick: bool = False, progress: Callable[[str], None] | None = None) -> Verification:
    """Check every recording the manifest lists, and every listed target set (see "Integrity")."""
    fs, root = store_fs(store_url)
    manifest = _load_manifest(fs, root)
    if manifest is None:
        raise FileNotFoundError(f"{store_url} is not a brainfm store (no {MANIFEST})")
    out = Verification(str(store_url))
    for rid, entry in sorted(manifest["recordings"].items()):
        problems, notes = verify_recording(store_url, rid, entry, quick=quick)
        out.checked += 1
        if problems:
            out.problems[rid] = problems
        if notes:
            out.notes[rid] = notes
        if progress is not None:
            progress(rid)
    for key, target_entry in manifest.get("targets", {}).items():
        covered = target_entry.get("recordings")
        missing = [rid for rid, e in sorted(manifest["recordings"].items())
                   if (covered is None or rid in covered) and not fs.exists(f"{root}/{e['path']}/{TARGETS_PREFIX}{key}/zarr.json")]
        if missing:
            out.problems[f"{TARGETS_PREFIX}{key}"] = [f"no array in {len(missing)} recording(s): {', '.join(missing[:5])}"]
    return out


def drop_stale_target_sets(manifest: dict[str, Any], changed: Iterable[str]) -> list[str]:
    """Unlist every target set once a recording was added or re-made (its group has no array
    for the set); return the keys dropped."""
    if not list(changed) or not manifest.get("targets"):
        return []
    dropped = sorted(manifest.pop("targets"))
    return dropped


# --------------------------------------------------------------------------------------
# locking
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def store_lock(store_url: str, timeout: float | None = 0.0, command: str = "convert") -> Iterator[None]:
    """Hold the store's writer lock (see "Locking" in the module docstring).

    ``timeout``: seconds to wait for another writer (0: fail at once; None: wait for ever).
    Raises :class:`StoreLocked` naming the holder when the wait ends.
    """
    fs, root = store_fs(store_url)
    fs.makedirs(root, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}
    owner_path = f"{root}/{LOCK_OWNER}"
    if isinstance(fs, LocalFileSystem):
        lock = filelock.FileLock(f"{root}/{LOCK}", timeout=-1 if timeout is None else timeout,
                                 preserve_lock_file=True)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise StoreLocked(_locked_message(fs, owner_path, store_url, timeout)) from None
        try:
            fs.pipe_file(owner_path, json.dumps(owner).encode())
            yield
        finally:
            with contextlib.suppress(OSError):
                fs.rm(owner_path)
            lock.release()
        return
    with _lease(fs, owner_path, owner, store_url, timeout):
        yield


@contextlib.contextmanager
def _lease(fs: fsspec.AbstractFileSystem, path: str, owner: dict[str, Any], store_url: str,
           timeout: float | None) -> Iterator[None]:
    """The object-store lock: a lease object created only if absent, kept alive by a heartbeat."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fs.pipe_file(path, json.dumps({**owner, "heartbeat": time.time()}).encode(), mode="create")
            break
        except Exception:  # noqa: BLE001 - FileExistsError, or the store's "precondition failed"
            fs.invalidate_cache()
            holder = _read_json(fs, path)
            if holder is None:
                if fs.exists(path):
                    raise
                continue  # released meanwhile
            if time.time() - float(holder.get("heartbeat", 0)) > LEASE_STALE_S:
                fs.rm(path)  # a dead writer's lease
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise StoreLocked(_locked_message(fs, path, store_url, timeout)) from None
            time.sleep(1.0)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(LEASE_HEARTBEAT_S):
            current = _read_json(fs, path)
            if current is None or current.get("token") != owner["token"]:
                return  # taken over: this writer's lease is gone
            fs.pipe_file(path, json.dumps({**owner, "heartbeat": time.time()}).encode())

    thread = threading.Thread(target=beat, daemon=True, name="brainfm-store-lease")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        current = _read_json(fs, path)
        if current is not None and current.get("token") == owner["token"]:
            fs.rm(path)


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        value = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _locked_message(fs: fsspec.AbstractFileSystem, owner_path: str, store_url: str, timeout: float | None) -> str:
    holder = _read_json(fs, owner_path) or {}
    who = (f"brainfm {holder.get('command', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
           f"since {holder.get('started', '?')})") if holder else "another brainfm run"
    waited = f" after waiting {timeout:g} s" if timeout else ""
    return (f"{store_url} is being written by {who}{waited}; wait for it to finish, or pass --wait SECONDS "
            "to wait for the lock")


# --------------------------------------------------------------------------------------
# target sets
# --------------------------------------------------------------------------------------
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
