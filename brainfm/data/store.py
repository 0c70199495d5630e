"""The brainfm shard store: format specification and reader.

The store's code lives in four modules, one concept each: this one (the format, reading,
:class:`ShardStore`, :class:`Recording`), :mod:`brainfm.data.store_write` (the one write path:
recordings, the manifest, upgrades, target sets), :mod:`brainfm.data.store_verify` (integrity
checks) and :mod:`brainfm.data.store_lock` (the writers' lock).

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
Format 3 stores ``data`` with Zarr v3's ``sharding_indexed`` codec: chunks of ``chunk`` samples (the
preset's ``chunk_seconds``, Blosc :data:`SIGNAL_BLOSC`), grouped into shards of ``S`` samples, each
shard one object ``data/c/0/<s>`` that holds its chunks followed by its index (per chunk,
little-endian uint64 offset and length; then a CRC-32C of the index). ``S``
(:func:`~brainfm.data.store_write.shard_samples`) is the largest whole number of chunks whose
decoded float32 signal fits :data:`READ_AHEAD_BYTES` (8 MiB; at least one chunk): an EEGMAT
recording (19 channels, up to 180 s at 200 Hz) is one shard. Readers fetch a whole shard with one
request and decode it (:mod:`brainfm.data.shard_codec`; many shards at once for a batch), which is
what a cold read costs: one object per recording or per 8 MiB of signal instead of one per chunk.
Any Zarr v3 reader reads the array as it is.

Integrity
---------
* **On read**, a missing chunk inside a recording's extent is an error
  (:class:`StoreError` naming the chunk file, or for format 3 the shard file and the chunk):
  format-2 and format-3 arrays have fill value NaN and every chunk written
  (``write_empty_chunks``), and the signal can never be NaN (:func:`encode_signal` refuses
  it), so a NaN read back is a missing chunk; the format-3 fast path also refuses a shard whose
  index fails its CRC-32C or lists no chunk where the extent needs one. A chunk or shard that
  does not decode is an error naming its file, and so is a manifest that is not JSON.
* :func:`~brainfm.data.store_verify.verify_store` (``brainfm verify STORE``) checks every listed
  recording: the group exists, its ``zarr.json`` hashes to ``group_sha256``, and every file of
  ``files`` exists with its size and SHA-256; every listed target set has its array in every
  recording it covers. ``quick=True`` (what ``brainfm convert`` runs before skipping a recording)
  checks existence and sizes only. ``convert`` re-makes every recording that fails, and unlists an
  entry whose group is gone.
* Format-1 stores (no ``files``, fill value 0, all-zero chunks not written) still read. For them a
  reader lists the chunk files at the first read and a missing one is an error (an all-zero chunk
  that format 1 never wrote is reported as missing too: on preprocessed recordings it does not
  occur); :func:`~brainfm.data.store_verify.verify_store` checks that every chunk exists and decodes
  and reports ``format 1: no recorded hashes`` for each. ``brainfm convert`` keeps format-1
  recordings that pass that check (re-making a whole store under readers that use it would be
  worse), writes new ones in the current format and a current manifest; an entry without
  ``format_version`` is format 1. ``brainfm convert --upgrade STORE``
  (:func:`~brainfm.data.store_write.upgrade_store`) rewrites every older recording in format 3 from
  its stored float16 (bit-identical signal, no BIDS source needed), each atomically, after checking
  it.

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
Every writer of a store (``brainfm convert``, ``convert --targets``, ``convert --upgrade``,
``brainfm import-hdf5``) holds
:func:`~brainfm.data.store_lock.store_lock` for the whole run. On local disk it is an OS lock
(``flock`` through :mod:`filelock`) on ``STORE/.lock``: the kernel releases it when the process
dies, so a killed run never leaves a stale lock, and start-up cleanup of ``.tmp-*`` names, which
runs only under the lock, can never delete a live run's temporaries. On object stores, which have no
locks, the equivalent is a lease: ``STORE/.lock.json`` created with a conditional put
(``If-None-Match: *`` on S3, :meth:`fsspec.AbstractFileSystem.pipe_file` ``mode="create"``), its
``heartbeat`` rewritten every :data:`~brainfm.data.store_lock.LEASE_HEARTBEAT_S`; a lease whose
heartbeat is older than :data:`~brainfm.data.store_lock.LEASE_STALE_S` belongs to a dead writer and
is taken over. A second writer waits up to its timeout, then fails naming the holder.

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

``key`` is :func:`~brainfm.data.store_write.target_set_key` of (spec, window_s, stride_s,
normalization). Targets of a set with ``normalization`` were computed from windows normalised per
subject (:mod:`brainfm.data.normalize`: method, source of statistics, calibration seconds), so they
match a loader that normalises the same way (``PretrainDataModule(normalize=...)``). Statistics need
one montage per subject, so such a set may cover only the ``recordings`` listed (``null``: all of
them; a set of windows as stored lists them too when the loader's picking leaves a recording out,
e.g. one without a positioned channel). Each array is written under a temporary name and renamed
(:func:`~brainfm.data.store_write.write_target_table`); the manifest lists the set
(:func:`~brainfm.data.store_write.add_target_set`) only after every recording has its array, so
readers never see a partial set. Windows use the loader's channel picking (``positioned_only``,
``channel_types``), so a window dataset with the same window and picks, a stride that is a multiple
of the stored one and ``targets=key`` reads exactly the targets it would compute itself
(:meth:`Recording.read_targets`). A conversion that adds or re-makes a recording unlists every set
(:func:`~brainfm.data.store_write.drop_stale_target_sets`), since the new group has no array for it.

Writing
-------
Every array of the store (a recording's group, a target table) goes through one path,
:func:`~brainfm.data.store_write._write_atomically`: written under a ``.tmp-*`` name, renamed when
complete, removed if the writer fails. The manifest is replaced atomically by
:func:`~brainfm.data.store_write.commit` (temporary file, then rename).

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

import dataclasses
import json
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from typing import Any, Iterable

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
#: Format versions :func:`~brainfm.data.store_write.write_recording` writes (2 only to make older stores, e.g. in tests).
WRITABLE_VERSIONS = (2, 3)
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
