"""Reading BIDS recordings with mne-bids: discovery, checksums, sensors and events.

Everything here works on one recording at a time and returns plain numpy/dicts, so
that :mod:`brainfm.pipelines.convert` can run it in Dask worker processes.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path
from typing import Any

import mne
import numpy as np
from mne_bids import BIDSPath, find_matching_paths, read_raw_bids

from brainfm.data.store import Events

#: Raw-data extensions brainfm converts (EDF/BDF, BrainVision, EEGLAB, FIF, KIT, CTF).
EXTENSIONS = (".edf", ".bdf", ".vhdr", ".set", ".fif", ".con", ".sqd", ".ds")
DATATYPES = ("eeg", "meg", "ieeg")
#: Files that carry the samples of a recording besides the one mne-bids opens.
_COMPANIONS = {".vhdr": (".eeg", ".vmrk"), ".set": (".fdt",)}
#: BIDS sidecars that change what conversion produces.
_SIDECARS = ("channels.tsv", "events.tsv", "electrodes.tsv", "coordsystem.json")


class ConversionError(RuntimeError):
    """A recording that cannot be converted; the message says which and why."""


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


def source_files(bids_path: BIDSPath) -> list[Path]:
    """The data file, its companions and the sidecars that exist, in a fixed order."""
    main = Path(bids_path.fpath)
    files = [main] + [main.with_suffix(ext) for ext in _COMPANIONS.get(main.suffix, ())]
    stem = main.name[: -len(f"_{bids_path.suffix}{main.suffix}")]
    for sidecar in _SIDECARS + (f"{bids_path.suffix}.json",):
        files.extend(sorted(main.parent.glob(f"{stem}_{sidecar}")))
    return [f for f in files if f.exists()]


def source_checksum(bids_path: BIDSPath) -> str:
    """SHA-256 over the bytes of :func:`source_files` (directories hashed file by file)."""
    h = hashlib.sha256()
    for f in source_files(bids_path):
        members = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        for member in members:
            h.update(member.name.encode())
            with open(member, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def read_raw(bids_path: BIDSPath) -> tuple[mne.io.BaseRaw, list[str]]:
    """Read a recording through mne-bids; return it with the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = read_raw_bids(bids_path, verbose="error")
        except Exception as err:  # noqa: BLE001 - any reader failure is a conversion error
            raise ConversionError(f"cannot read {bids_path.fpath.name}: {err}") from err
    messages = sorted({str(w.message).splitlines()[0] for w in caught})
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
