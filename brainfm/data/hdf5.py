"""HDF5 corpora in the LaBraM layout: checking and reading them, and exporting a store to one.

LaBraM (Jiang et al., "Large Brain Model for Learning Generic Representations with Tremendous
EEG Data in BCI", ICLR 2024) prepares its pretraining corpus as HDF5, and many groups hold
corpora in that layout. ``brainfm import-hdf5`` reads it into a shard store without re-running
MNE preprocessing (:mod:`brainfm.pipelines.hdf5_import`); ``brainfm export-hdf5`` writes a store
back out in it (:func:`export_store`).

Layout
======

::

    FILE.h5
      <recording>/            one top-level group per recording; its name is the recording id
        eeg                   dataset (C, N): C channels x N samples, any float or integer dtype,
                              in µV, chunked (C, sfreq): one second per chunk
          chOrder             attribute: the C channel names, in row order         (required)
          rsFreq              attribute: sampling rate in Hz                       (required)
          lFreq, hFreq        attributes: band-pass edges in Hz the producer used  (optional)

LaBraM writes exactly this (``dataset_maker/make_h5dataset_for_pretrain.py``, with upper-case
names such as ``FP1``). The reader also takes the rate as ``sFreq`` and looks for every attribute
on the group when the dataset lacks it, as some LaBraM downstream files have it; another dataset
name than ``eeg`` can be given. Export writes an integer-valued rate as an integer, as LaBraM
does (``rsFreq = 200``).

Window selections
=================

:func:`export_windows` writes the windows a loader selects (:class:`~brainfm.data.dataset.FixedWindows`
or :class:`~brainfm.data.dataset.EventWindows`: a stride, subjects, spans, artifact rejection, labels)
as one array file, the ``X, y`` form that scikit-learn, braindecode or Keras code reads directly::

    FILE.h5
      eeg          dataset (W, C, T) float32, µV, chunked (1, C, T): one window per chunk
        chOrder    attribute: the C channel names (shared by every window)
        rsFreq     attribute: sampling rate in Hz
      label        dataset (W,) int64: the window's class index, -1 when unlabelled
        classes    attribute: class names by index (when the windows are labelled)
      recording    dataset (W,) str: the recording id each window comes from
      subject      dataset (W,) str
      start        dataset (W,) int64: first sample of the window in its recording

with file attributes ``layout`` (``brainfm-windows``), ``window_s``, ``store`` and ``units``.
Every window must have the same channels in the same order; a selection that mixes montages is
refused with the recordings named.

Export adds group attributes LaBraM ignores: ``subject``, ``session``, ``task``, ``run``
(those that are set; import reads them back as the recording's entities), ``recording_id``,
``units`` (``uV``), ``positions`` (where the store's positions came from), ``source`` and
``store`` (where the recording came from; import keeps them as provenance). Only EEG channels
are exported (the layout has no channel types); the signal is the store's decoded float32, so
exporting and importing again is bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from brainfm.data.store import ShardStore

#: Name of the signal dataset in each group.
DATASET = "eeg"
#: Attribute holding the channel names.
NAMES_ATTR = "chOrder"
#: Attributes holding the sampling rate, in the order they are looked for.
RATE_ATTRS = ("rsFreq", "sFreq")
#: Attributes holding the producer's band-pass edges (optional).
FILTER_ATTRS = ("lFreq", "hFreq")
#: Group attributes that export writes and import maps to the store's entities.
ENTITY_ATTRS = ("subject", "session", "task", "run")


class Hdf5LayoutError(ValueError):
    """A file or a group that is not in the layout; the message names the file (and group)."""


@dataclasses.dataclass(frozen=True)
class Hdf5Recording:
    """One checked group of a layout file; its signal is read by :meth:`read`.

    Attributes
    ----------
    file : str
        Path of the HDF5 file.
    group : str
        Name of the group (the recording id).
    dataset : str
        Name of the signal dataset inside the group.
    ch_names : tuple of str
        Channel names (``chOrder``), one per row.
    sfreq : float
        Sampling rate (Hz).
    l_freq, h_freq : float or None
        Band-pass edges the producer recorded, if any.
    shape : tuple of int
        ``(C, N)``.
    attrs, group_attrs : dict
        Every attribute of the dataset and of the group, as JSON values (provenance).
    """

    file: str
    group: str
    dataset: str
    ch_names: tuple[str, ...]
    sfreq: float
    l_freq: float | None
    h_freq: float | None
    shape: tuple[int, int]
    attrs: dict[str, Any]
    group_attrs: dict[str, Any]

    @property
    def where(self) -> str:
        """``FILE::/group/dataset``, for messages."""
        return f"{self.file}::/{self.group}/{self.dataset}"

    def read(self) -> np.ndarray:
        """The dataset as stored (its own dtype), shape ``(C, N)``."""
        with h5py.File(self.file, "r") as f:
            return f[self.group][self.dataset][...]


def jsonable(value: Any) -> Any:
    """An HDF5 attribute value as JSON: arrays to lists, bytes to str, numpy scalars to Python."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()] if value.dtype.kind in "OSU" else jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _attr(dset: h5py.Dataset, names: Sequence[str]) -> Any:
    """The first of ``names`` found on the dataset, then on its group; None when absent."""
    for holder in (dset.attrs, dset.parent.attrs):
        for name in names:
            if name in holder:
                return holder[name]
    return None


def _number(value: Any, what: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(np.asarray(value).reshape(-1)[0]) if np.ndim(value) else float(value)
    except (TypeError, ValueError, IndexError):
        raise Hdf5LayoutError(f"{where}: attribute {what} is {value!r}, not a number") from None
    if not math.isfinite(number) or number < 0:
        raise Hdf5LayoutError(f"{where}: attribute {what} is {number!r}, expected a positive number")
    return number


def _check_group(path: str, name: str, node: Any, dataset: str) -> Hdf5Recording:
    """One top-level node as a :class:`Hdf5Recording`, or :class:`Hdf5LayoutError` naming what is wrong."""
    where = f"{path}::/{name}"
    if not isinstance(node, h5py.Group):
        raise Hdf5LayoutError(f"{where} is a {type(node).__name__}, expected a group per recording")
    if dataset not in node or not isinstance(node[dataset], h5py.Dataset):
        held = ", ".join(sorted(node)) or "nothing"
        raise Hdf5LayoutError(f"{where} has no dataset {dataset!r} (it holds {held}); pass the dataset's name")
    dset = node[dataset]
    where = f"{where}/{dataset}"
    if dset.ndim != 2:
        raise Hdf5LayoutError(f"{where} has shape {dset.shape} (rank {dset.ndim}), expected (channels, time)")
    if dset.dtype.kind not in "fiu":
        raise Hdf5LayoutError(f"{where} has dtype {dset.dtype}, expected float or integer samples")
    names = _attr(dset, (NAMES_ATTR,))
    if names is None:
        raise Hdf5LayoutError(f"{where}: missing attribute {NAMES_ATTR!r} (the channel names)")
    names = [str(n) for n in jsonable(np.atleast_1d(names))]
    n_channels, n_samples = dset.shape
    if len(names) != n_channels:
        hint = "; the layout is (channels, time), is it transposed?" if len(names) == n_samples else ""
        raise Hdf5LayoutError(f"{where}: {NAMES_ATTR} names {len(names)} channels, the dataset has "
                              f"{n_channels} rows (shape {dset.shape}){hint}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise Hdf5LayoutError(f"{where}: duplicate channel names in {NAMES_ATTR}: {', '.join(duplicates)}")
    sfreq = _number(_attr(dset, RATE_ATTRS), "/".join(RATE_ATTRS), where)
    if not sfreq:
        raise Hdf5LayoutError(f"{where}: missing attribute {' or '.join(map(repr, RATE_ATTRS))} (the sampling "
                              "rate in Hz)")
    if n_samples == 0:
        raise Hdf5LayoutError(f"{where} holds no samples")
    l_freq, h_freq = (_number(_attr(dset, (a,)), a, where) for a in FILTER_ATTRS)
    if l_freq and h_freq and l_freq >= h_freq:
        raise Hdf5LayoutError(f"{where}: lFreq {l_freq:g} Hz is not below hFreq {h_freq:g} Hz")
    return Hdf5Recording(
        file=path, group=name, dataset=dataset, ch_names=tuple(names), sfreq=sfreq,
        l_freq=l_freq or None, h_freq=h_freq, shape=(int(n_channels), int(n_samples)),
        attrs={k: jsonable(v) for k, v in dset.attrs.items()},
        group_attrs={k: jsonable(v) for k, v in node.attrs.items()},
    )


def scan(path: str | os.PathLike, dataset: str = DATASET) -> tuple[list[Hdf5Recording], dict[str, str]]:
    """Check every top-level group of a layout file without reading any signal.

    Parameters
    ----------
    path : path
        The HDF5 file.
    dataset : str
        Name of the signal dataset in each group.

    Returns
    -------
    recordings : list of Hdf5Recording
        The groups in the layout, by name.
    problems : dict
        ``{group name: message}`` for the groups that are not (each message names the file).

    Raises
    ------
    Hdf5LayoutError
        The file is missing, is not HDF5, or holds no group.
    """
    path = str(path)
    if not Path(path).is_file():
        raise Hdf5LayoutError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise Hdf5LayoutError(f"{path} is not an HDF5 file ({err})") from None
    recordings, problems = [], {}
    with f:
        for name in sorted(f):
            try:
                recordings.append(_check_group(path, name, f[name], dataset))
            except Hdf5LayoutError as err:
                problems[name] = str(err)
    if not recordings and not problems:
        raise Hdf5LayoutError(f"{path} holds no group; the layout has one group per recording")
    return recordings, problems


def _rate_attr(sfreq: float) -> int | float:
    return int(sfreq) if float(sfreq).is_integer() else float(sfreq)


def export_store(store: str | ShardStore, path: str | os.PathLike, recordings: Sequence[str] | None = None,
                 upper_names: bool = False, dataset: str = DATASET, overwrite: bool = False) -> list[str]:
    """Write recordings of a store into a new HDF5 file in the layout (see the module docstring).

    Parameters
    ----------
    store : str or ShardStore
        The store (any location a :class:`ShardStore` opens).
    path : path
        The file to write. It is written under a temporary name beside it and renamed when
        complete, so an interrupted export never leaves a partial file at ``path``.
    recordings : sequence of str, optional
        Recording ids to export (e.g. from :meth:`ShardStore.select`); default: all.
    upper_names : bool
        Upper-case the channel names, as LaBraM's own files have them (its channel table is
        upper-case); import maps either form to the same positions.
    dataset : str
        Name of the signal dataset.
    overwrite : bool
        Replace an existing file at ``path``.

    Returns
    -------
    list of str
        The recording ids written, one group each; recordings without an EEG channel (MEG-only)
        are left out, since the layout holds EEG only.

    Raises
    ------
    ValueError
        No recording is selected, or none has an EEG channel.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    store = store if isinstance(store, ShardStore) else ShardStore(store)
    ids = list(store.recording_ids if recordings is None else recordings)
    if not ids:
        raise ValueError(f"nothing to export from {store.url}: no recording selected")
    with _new_file(path, overwrite) as f:
        written = [rid for rid in ids if _export_one(store, rid, f, upper_names, dataset)]
        if not written:
            raise ValueError(f"nothing to export from {store.url}: none of the {len(ids)} selected recording(s) "
                             "has an EEG channel")
    return written


@contextlib.contextmanager
def _new_file(path: str | os.PathLike, overwrite: bool) -> Iterator[h5py.File]:
    """An HDF5 file written under a temporary name beside ``path`` and renamed to it only when the
    block ends without an error, so an interrupted export never leaves a partial file at ``path``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_windows(windows: Any, path: str | os.PathLike, upper_names: bool = False, dataset: str = DATASET,
                   classes: Sequence[str] | None = None, overwrite: bool = False, progress: bool = False) -> int:
    """Write a window selection as one array file (the "Window selections" layout of the module docstring).

    Parameters
    ----------
    windows : FixedWindows or EventWindows
        The selection, as a loader would read it (its ``normalizer``, if set, is applied).
    path : path
        The file to write (under a temporary name first, as :func:`export_store`).
    upper_names, dataset, overwrite
        As :func:`export_store`.
    classes : sequence of str, optional
        Class names by index, written as the ``classes`` attribute of ``label``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    int
        The number of windows written.

    Raises
    ------
    ValueError
        The selection is empty, or its windows do not share one channel list.
    """
    n = len(windows)
    if n == 0:
        raise ValueError(f"nothing to export from {windows.store.url}: the selection holds no window")
    used = sorted(set(np.asarray(windows.rec_index).tolist()))  # recordings that give windows (not every one picked)
    names = {tuple(windows.specs[i].ch_names) for i in used}
    if len(names) > 1:
        by_names: dict[tuple[str, ...], list[str]] = {}
        for i in used:
            by_names.setdefault(tuple(windows.specs[i].ch_names), []).append(windows.recordings[i])
        examples = "; ".join(f"{len(c)} channels in {', '.join(r[:3])}" for c, r in by_names.items())
        raise ValueError(f"the selected windows of {windows.store.url} do not share one channel list ({examples}): "
                         "select recordings of one montage, or pick channel types")
    ch_names = list(names.pop())
    labelled = bool(getattr(windows, "labelled", True)) and len(getattr(windows, "labels", ())) == n
    with _new_file(path, overwrite) as f:
        signal = f.create_dataset(dataset, shape=(n, len(ch_names), windows.window), dtype="float32",
                                  chunks=(1, len(ch_names), windows.window))
        signal.attrs[NAMES_ATTR] = [c.upper() for c in ch_names] if upper_names else ch_names
        signal.attrs[RATE_ATTRS[0]] = _rate_attr(windows.sfreq)
        recording, subject = [], []
        starts = np.zeros(n, dtype=np.int64)
        for k in tqdm(range(n), desc="windows", unit="win", disable=not progress):
            sample = windows[k]
            signal[k] = sample["x"].numpy()
            recording.append(sample["recording"])
            subject.append(sample["subject"])
            starts[k] = sample["start"]
        label = f.create_dataset("label", data=np.asarray(windows.labels if labelled else np.full(n, -1), np.int64))
        if classes is not None:
            label.attrs["classes"] = list(classes)
        f.create_dataset("recording", data=recording, dtype=h5py.string_dtype())
        f.create_dataset("subject", data=subject, dtype=h5py.string_dtype())
        f.create_dataset("start", data=starts)
        units = "uV" if getattr(windows, "normalizer", None) is None else "subject-normalised (see the store's statistics)"
        f.attrs.update({"layout": "brainfm-windows", "window_s": windows.window / windows.sfreq,
                        "store": windows.store.url, "units": units})
    return n


def _export_one(store: ShardStore, rid: str, f: h5py.File, upper_names: bool, dataset: str) -> bool:
    """Write one recording's EEG channels as a group of ``f``; False when it has none."""
    rec = store.recording(rid)
    eeg = np.flatnonzero(np.asarray(rec.spec.ch_types) == "eeg")
    if not len(eeg):
        return False
    signal = rec.read_all()[eeg]  # (C_eeg, N) float32, µV
    names = [rec.spec.ch_names[i] for i in eeg]
    one_second = max(1, min(signal.shape[1], int(round(rec.sfreq))))
    group = f.create_group(rid)
    dset = group.create_dataset(dataset, data=signal, chunks=(signal.shape[0], one_second))
    dset.attrs[NAMES_ATTR] = [n.upper() for n in names] if upper_names else names
    dset.attrs[RATE_ATTRS[0]] = _rate_attr(rec.sfreq)
    filters = rec.attrs.get("filters") or {}
    for attr, key in zip(FILTER_ATTRS, ("l_freq", "h_freq")):
        if filters.get(key) is not None:
            dset.attrs[attr] = float(filters[key])
    entry = store.entry(rid)
    meta = {"recording_id": rid, **{k: entry.get(k) for k in ENTITY_ATTRS}, "units": "uV",
            "positions": entry.get("positions"), "source": entry.get("source"), "store": store.url}
    for key, value in meta.items():
        if value is not None:
            group.attrs[key] = value
    return True
