"""Offline inputs of ``brainfm detect``: a recording of a shard store, or files MNE reads.

Files are read with :func:`mne.io.read_raw` (EDF, BDF, FIF, BrainVision, EEGLAB, ...), EEG
channels only, in µV; their names go through the channel mapping of
:mod:`brainfm.attention.montage`. Several files are joined end to end in the order given (for
example EEGMAT's rest then arithmetic recordings of one person as one session); each file's
span is kept as a segment of the session, so a timeline can be read against it. A store
recording (``STORE::RECORDING_ID``) is already preprocessed by its conversion preset, so the
detector's chain is ``none`` there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mne
import numpy as np

from brainfm.attention.montage import eeg_spec
from brainfm.data.store import ShardStore
from brainfm.signal import SensorSpec

STORE_SEPARATOR = "::"


@dataclass
class Session:
    """One person's signal in µV ``(C, N)``, its channels, and the spans of its parts."""

    signal: np.ndarray
    spec: SensorSpec
    source: str
    preprocessed: bool = False
    segments: list[tuple[str, float, float]] = field(default_factory=list)  # (name, start s, stop s)
    dropped: list[str] = field(default_factory=list)


def read_file(path: str | Path) -> Session:
    """EEG channels of one MNE-readable file, in µV, with mapped names and positions."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such recording: {path}")
    try:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as err:  # noqa: BLE001 - MNE raises many types; name the file once
        raise ValueError(f"{path}: MNE cannot read it ({err})") from None
    picks = mne.pick_types(raw.info, eeg=True, exclude=())
    names = [raw.ch_names[i] for i in picks]
    spec, keep, dropped = eeg_spec(names, raw.info["sfreq"], str(path))
    data = raw.get_data(picks=[picks[i] for i in keep]) * 1e6  # V -> µV, (C, N)
    return Session(data, spec, str(path), False, [(path.name, 0.0, data.shape[1] / spec.sfreq)], dropped)


def read_store(ref: str) -> Session:
    """``STORE::RECORDING_ID``: a recording of a shard store (preprocessed, store units: µV)."""
    store_url, rid = ref.split(STORE_SEPARATOR, 1)
    store = ShardStore(store_url)
    if rid not in store.recording_ids:
        raise ValueError(f"store {store_url} has no recording {rid!r} ({len(store)} recordings; see brainfm info)")
    rec = store.recording(rid)
    eeg = [i for i, (t, ok) in enumerate(zip(rec.spec.ch_types, rec.usable)) if t == "eeg" and ok]
    if not eeg:
        raise ValueError(f"{ref}: no usable EEG channel")
    spec = rec.spec.pick(eeg)
    data = rec.read_all()[eeg].astype(np.float64)
    return Session(data, spec, ref, True, [(rid, 0.0, data.shape[1] / spec.sfreq)])


def read_session(sources: list[str]) -> Session:
    """Join one or more files (or store recordings) of one person end to end."""
    parts = [read_store(s) if STORE_SEPARATOR in s else read_file(s) for s in sources]
    first = parts[0]
    for p in parts[1:]:
        if p.spec.ch_names != first.spec.ch_names or p.spec.sfreq != first.spec.sfreq:
            raise ValueError(f"{p.source} has other channels or another rate than {first.source}; "
                             "only recordings of one montage join into a session")
        if p.preprocessed != first.preprocessed:
            raise ValueError("a session joins either files or store recordings, not both")
    segments, offset = [], 0.0
    for p in parts:
        (name, _, stop), = p.segments
        segments.append((name, offset, offset + stop))
        offset += stop
    signal = np.concatenate([p.signal for p in parts], axis=1) if len(parts) > 1 else first.signal
    return Session(signal, first.spec, " + ".join(p.source for p in parts), first.preprocessed, segments,
                   first.dropped)
