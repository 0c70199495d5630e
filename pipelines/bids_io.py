"""Reading BIDS recordings with mne-bids: discovery, checksums, sensors and events.

Everything here works on one recording at a time and returns plain numpy/dicts, so
that :mod:`brainfm.pipelines.convert` can run it in Dask worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import h5py
import mne
import numpy as np
import scipy.io
from mne_bids import BIDSPath, find_matching_paths, read_raw_bids

from brainfm.data.store import Events

#: Raw-data extensions brainfm converts (EDF/BDF, BrainVision, EEGLAB, FIF, KIT, CTF).
EXTENSIONS = (".edf", ".bdf", ".vhdr", ".set", ".fif", ".con", ".sqd", ".ds")
DATATYPES = ("eeg", "meg", "ieeg")
#: Files that carry the samples of a recording besides the one mne-bids opens.
_COMPANIONS = {".vhdr": (".eeg", ".vmrk"), ".set": (".fdt",)}
#: BIDS sidecars that change what conversion produces.
_SIDECARS = ("channels.tsv", "events.tsv", "electrodes.tsv", "coordsystem.json")
#: The keys of a BrainVision header's ``[Common Infos]`` that name other files.
_VHDR_REFERENCE = re.compile(r"^\s*(DataFile|MarkerFile)\s*=\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)


#: Longest error or warning message kept in a report (MNE can raise 21 KB ones).
MESSAGE_CHARS = 300
#: Line frequencies (Hz) a sidecar's ``PowerLineFrequency`` may give (mains are 50 or 60 Hz;
#: 16.7 Hz railway traction is the lowest in use).
LINE_FREQ_RANGE = (10.0, 1000.0)


class ConversionError(RuntimeError):
    """A recording that cannot be converted; the message says which and why."""


def short(message: object) -> str:
    """The first line of a message, at most :data:`MESSAGE_CHARS` characters."""
    lines = str(message).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


#: Library warnings that say nothing a brainfm user can act on, as they read here: (start of the
#: message, a part it must also hold, what it means for the conversion). mne-bids starts its message
#: the same way for a missing ``hed`` module and for tags that do not parse; only the first is reworded.
REWORDED = (
    ("HED annotations were detected but could not be parsed", "the module hed is needed",
     "HED tags in the events were not read (brainfm takes the events' trial_type; mne-bids parses HED only "
     "with the optional hedtools package)"),
)


def reworded(message: str) -> str:
    """``message``, or what it means for the conversion when it is one of :data:`REWORDED`."""
    return next((plain for start, part, plain in REWORDED if message.startswith(start) and part in message), message)


class _Records(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Collect every warning raised inside: Python warnings (MNE's and mne-bids' ``warn``) and
    WARNING records of the ``mne`` logger. The list holds their first lines, sorted and
    without repeats, once the block ends. Call MNE with ``verbose="warning"`` (or higher)
    inside, or MNE does not raise them at all."""
    messages: list[str] = []
    handler = _Records(messages)
    logger = logging.getLogger("mne")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield messages
            finally:
                messages.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        messages[:] = sorted({short(reworded(str(m).strip())) for m in messages if str(m).strip()})


def check_sidecars(files: list[Path]) -> None:
    """Refuse a JSON or TSV sidecar that is malformed or says something absurd, naming it.

    JSON sidecars must parse to an object; ``PowerLineFrequency`` must be ``"n/a"`` or within
    :data:`LINE_FREQ_RANGE`; ``SamplingFrequency`` must be positive. Every TSV row must have
    as many columns as the header.
    """
    for f in files:
        if f.is_dir() or f.suffix not in (".json", ".tsv"):
            continue
        text = f.read_text(encoding="utf-8-sig", errors="replace")
        if f.suffix == ".json":
            try:
                doc = json.loads(text)
            except ValueError as err:
                raise ConversionError(f"{f} is not valid JSON ({err}); fix the sidecar") from None
            if not isinstance(doc, dict):
                raise ConversionError(f"{f} must hold a JSON object; fix the sidecar")
            line = doc.get("PowerLineFrequency")
            if line is not None and line != "n/a":
                lo, hi = LINE_FREQ_RANGE
                if not isinstance(line, (int, float)) or not math.isfinite(line) or not lo <= line <= hi:
                    raise ConversionError(
                        f"{f}: PowerLineFrequency {line!r} Hz makes no sense (expected \"n/a\" or "
                        f"{lo:g}-{hi:g} Hz, usually 50 or 60); fix the sidecar"
                    )
            sfreq = doc.get("SamplingFrequency")
            if sfreq is not None and sfreq != "n/a" and (not isinstance(sfreq, (int, float)) or not sfreq > 0):
                raise ConversionError(f"{f}: SamplingFrequency {sfreq!r} makes no sense (must be > 0 Hz); fix the sidecar")
            continue
        rows = [r for r in text.splitlines() if r.strip()]
        if not rows:
            raise ConversionError(f"{f} is empty (no header row); fix the sidecar")
        width = len(rows[0].split("\t"))
        for n, row in enumerate(rows[1:], start=2):
            if len(row.split("\t")) != width:
                raise ConversionError(
                    f"{f} line {n}: {len(row.split(chr(9)))} tab-separated columns, the header has {width}; fix the sidecar"
                )


def discover(bids_root: str | Path) -> list[BIDSPath]:
    """All EEG/MEG/iEEG recordings under ``bids_root`` that brainfm can read.

    Split FIF files are represented by their first part only.
    """
    root = Path(bids_root)
    if not (root / "dataset_description.json").is_file():
        raise FileNotFoundError(f"{root} is not a BIDS dataset (no dataset_description.json)")
    paths = find_matching_paths(
        root,
        datatypes=list(DATATYPES),
        suffixes=list(DATATYPES),
        extensions=list(EXTENSIONS),
    )
    keep = [p for p in paths if p.split in (None, "01")]
    return sorted(keep, key=lambda p: str(p.fpath))


def safe_relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``; refuses paths that escape the dataset."""
    resolved, base = path.resolve(), root.resolve()
    if not resolved.is_relative_to(base):
        raise ConversionError(f"{path} lies outside the BIDS root {root}")
    return resolved.relative_to(base).as_posix()


def referenced_files(main: Path) -> list[Path]:
    """Files that a recording's header names, resolved the way MNE's readers resolve them.

    A BrainVision ``.vhdr`` names its samples and markers (``DataFile=``, ``MarkerFile=`` in
    ``[Common Infos]``); an EEGLAB ``.set`` names its ``.fdt`` in ``EEG.data``. MNE joins these
    names to the header's folder, so an absolute name or ``../`` leaves the dataset.
    """
    if main.suffix == ".vhdr":
        text = main.read_bytes().decode("latin-1")
        common = re.split(r"^\s*\[", text.split("[Common Infos]", 1)[-1], flags=re.MULTILINE)[0]
        return [main.parent / name for _, name in _VHDR_REFERENCE.findall(common) if name]
    if main.suffix == ".set":
        name = _eeglab_data_name(main)
        return [main.parent / name] if name else []
    return []


def _eeglab_data_name(path: Path) -> str | None:
    """``EEG.data`` of an EEGLAB ``.set`` when it is a file name (data stored beside it)."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False, variable_names=["EEG", "data"])
        data = getattr(mat["EEG"], "data", None) if "EEG" in mat else mat.get("data")
        return data if isinstance(data, str) else None
    except NotImplementedError:  # MATLAB v7.3 files are HDF5; strings are uint16 arrays
        with h5py.File(path, "r") as f:
            node = f.get("EEG/data", f.get("data"))
            if isinstance(node, h5py.Dataset) and node.dtype == np.uint16:
                return "".join(map(chr, np.asarray(node).ravel()))
        return None
    except Exception as err:  # noqa: BLE001 - an unreadable header is a conversion error
        raise ConversionError(f"cannot read the EEGLAB header {path}: {err}") from err


def _inside_root(path: Path, root: Path, named_by: Path | None = None) -> Path:
    """``path`` if it (after following symlinks) lies inside ``root``; else ConversionError."""
    if path.resolve().is_relative_to(root.resolve()):
        return path
    target = path.resolve()
    if named_by is not None:
        raise ConversionError(f"{named_by} names {path} ({target}), which lies outside the BIDS root {root}; refused")
    raise ConversionError(f"{path} resolves to {target}, outside the BIDS root {root}; refused")


def source_files(bids_path: BIDSPath) -> list[Path]:
    """Every file conversion reads for one recording, in a fixed order, each checked to
    resolve inside the BIDS root before anything opens it.

    The data file, the files its header names (:func:`referenced_files`), same-stem
    companions, the recording's sidecars and its ``scans.tsv``. Sidecars that BIDS
    inheritance may pull in from the subject, session or dataset level are checked too, but
    not returned (they would tie every recording's checksum to dataset-level files). Raises
    :class:`ConversionError` naming the file and what it resolves to, or which header named it.
    """
    root = Path(bids_path.root)
    main = _inside_root(Path(bids_path.fpath), root)
    files = [main]
    if main.is_file():
        files += [_inside_root(f, root, named_by=main) for f in referenced_files(main)]
    files += [main.with_suffix(ext) for ext in _COMPANIONS.get(main.suffix, ())]
    stem = main.name[: -len(f"_{bids_path.suffix}{main.suffix}")]
    for sidecar in _SIDECARS + (f"{bids_path.suffix}.json",):
        files.extend(sorted(main.parent.glob(f"{stem}_{sidecar}")))
    files.extend(sorted(main.parent.parent.glob("*_scans.tsv")))  # sub-X[/ses-Y]/sub-X[_ses-Y]_scans.tsv
    unique = list(dict.fromkeys(f for f in files if f.exists() or f.is_symlink()))
    for f in unique:
        _inside_root(f, root)
    for folder in (main.parent, *main.parent.parents):
        for inherited in (*folder.glob("*.json"), *folder.glob("*.tsv")):
            _inside_root(inherited, root)
        if folder.resolve() == root.resolve():
            break
    return unique


def source_checksum(bids_path: BIDSPath) -> str:
    """SHA-256 over the bytes of :func:`source_files` (directories hashed file by file).

    Raises :class:`ConversionError` when one of them lies outside the BIDS root.
    """
    h = hashlib.sha256()
    for f in source_files(bids_path):
        members = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        for member in members:
            _inside_root(member, Path(bids_path.root))
            h.update(member.name.encode())
            with open(member, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def read_raw(bids_path: BIDSPath) -> tuple[mne.io.BaseRaw, list[str]]:
    """Read a recording through mne-bids; return it with every warning MNE and mne-bids raised.

    Its sidecars are checked first (:func:`check_sidecars`), so a bad one is named.
    """
    check_sidecars(source_files(bids_path))
    with captured_warnings() as messages:
        try:
            raw = read_raw_bids(bids_path, verbose="warning")
        except Exception as err:  # noqa: BLE001 - any reader failure is a conversion error
            raise ConversionError(f"cannot read {bids_path.fpath.name}: {short(err)}") from err
    return raw, messages


def head_loc(info: mne.Info) -> np.ndarray:
    """MNE ``loc`` rows ``(C, 12)`` in head coordinates, NaN where unknown.

    MEG coil positions and axes are stored in device coordinates; they are moved to
    head coordinates with ``info['dev_head_t']``. Files without one (e.g. KIT without
    marker coils) keep device coordinates, and the recording says so (``meg_frame``).
    EEG/iEEG positions are already in head coordinates; all-zero positions (an old
    convention for "unknown") become NaN.
    """
    loc = np.array([ch["loc"] for ch in info["chs"]], dtype=np.float64)
    types = info.get_channel_types()
    meg = np.array([t in ("mag", "grad") for t in types])
    if meg.any():
        trans = info["dev_head_t"]["trans"] if info["dev_head_t"] is not None else np.eye(4)
        rot, shift = trans[:3, :3], trans[:3, 3]
        loc[meg, 0:3] = loc[meg, 0:3] @ rot.T + shift
        for axis in (3, 6, 9):
            loc[meg, axis : axis + 3] = loc[meg, axis : axis + 3] @ rot.T
    unknown = ~np.isfinite(loc[:, :3]).all(axis=1) | (np.abs(loc[:, :3]).sum(axis=1) == 0)
    loc[unknown, :3] = np.nan
    return loc


@functools.lru_cache(maxsize=4)
def _standard_montage(name: str) -> mne.channels.DigMontage:
    return mne.channels.make_standard_montage(name)


def standard_montage_name() -> str:
    """MNE's standard 10-05 montage: ``colin27_1005`` (MNE ≥ 1.13) or ``standard_1005``."""
    builtin = mne.channels.get_builtin_montages()
    return "colin27_1005" if "colin27_1005" in builtin else "standard_1005"


def fill_from_montage(raw: mne.io.BaseRaw, loc: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Fill unknown EEG positions from the standard 10-05 montage, by channel name only.

    Channels whose names are not in the montage keep NaN positions. Returns the new
    ``loc`` and a record of the fallback (montage, filled and missing channel names).
    """
    types = raw.get_channel_types()
    unknown = [i for i, t in enumerate(types) if t == "eeg" and not np.isfinite(loc[i, :3]).all()]
    if not unknown:
        return loc, {"montage": None, "filled": [], "missing": []}
    name = standard_montage_name()
    probe = raw.copy().pick(unknown)
    probe.set_montage(_standard_montage(name), match_case=False, on_missing="ignore", verbose="error")
    filled, missing = [], []
    loc = loc.copy()
    for j, i in enumerate(unknown):
        pos = probe.info["chs"][j]["loc"][:3]
        if np.isfinite(pos).all() and np.abs(pos).sum() > 0:
            loc[i, :6] = probe.info["chs"][j]["loc"][:6]
            filled.append(raw.ch_names[i])
        else:
            missing.append(raw.ch_names[i])
    return loc, {"montage": name, "filled": filled, "missing": missing}


def unread_electrodes(bids_path: BIDSPath, fallback: dict[str, Any]) -> str | None:
    """A warning when EEG positions came from the template although the recording's folder holds
    ``electrodes.tsv`` files: mne-bids reads one only when exactly one matches (with two, e.g. a
    ``space-CapTrak`` copy beside another, it reads none, silently), so the recorded positions were
    not used. None when nothing was filled or there is no such file."""
    if not fallback["filled"]:
        return None
    own = {k: v for k, v in (("sub", bids_path.subject), ("ses", bids_path.session), ("acq", bids_path.acquisition))
           if v is not None}
    found = sorted(f.name for f in Path(bids_path.fpath).parent.glob("*electrodes.tsv")
                   if all(f"{k}-{v}" in f.name.split("_") for k, v in own.items() if k != "acq" or "_acq-" in f.name))
    if not found:
        return None
    return (f"positions of {len(fallback['filled'])} EEG channel(s) come from the {fallback['montage']} template, "
            f"not from {', '.join(found)}: mne-bids read none of them"
            + (" (more than one matches this recording)" if len(found) > 1 else ""))


def positions_label(loc: np.ndarray, fallback: dict[str, Any]) -> str:
    """Manifest summary of where positions came from."""
    known = np.isfinite(loc[:, :3]).all(axis=1)
    if not known.any():
        return "none"
    if fallback["filled"]:
        partial = "partial-" if fallback["missing"] else ""
        return f"{partial}montage:{fallback['montage']}"
    return "recorded" if known.all() else "partial-recorded"


def read_events(raw: mne.io.BaseRaw) -> Events:
    """Events from the recording's annotations (``events.tsv`` via mne-bids).

    Onsets are in seconds from the first sample of the data as stored.
    """
    ann = raw.annotations
    onset = np.asarray(ann.onset, dtype=np.float64)
    if ann.orig_time is not None:  # onsets count from meas_date; data start at first_time
        onset = onset - raw.first_time
    keep = np.array([not d.upper().startswith(("BAD", "EDGE")) for d in ann.description], dtype=bool)
    return Events(onset[keep], np.asarray(ann.duration)[keep], np.asarray(ann.description, dtype=object)[keep])


def entities(bids_path: BIDSPath) -> dict[str, Any]:
    return {
        "subject": bids_path.subject,
        "session": bids_path.session,
        "task": bids_path.task,
        "run": bids_path.run,
        "datatype": bids_path.datatype,
    }


def recording_id(bids_path: BIDSPath) -> str:
    """Store id: the BIDS basename without extension or split entity."""
    return bids_path.copy().update(extension=None, split=None).basename
