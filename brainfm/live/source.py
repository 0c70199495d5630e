"""Live input: an LSL stream through mne-lsl's :class:`~mne_lsl.stream.StreamLSL`, checked.

``--source lsl:NAME`` resolves the stream by name. Before anything runs, the stream is
checked against what the detector and model need, each failure a one-line error naming the
stream:

* a regular sampling rate (an irregular-rate stream, ``sfreq = 0``, has none to window by);
* EEG channels (by the stream's channel types; other types, e.g. ECG or markers, are ignored);
* channel names that map to 10-05 positions (:mod:`brainfm.attention.montage`, the documented
  mapping); unmapped EEG channels are left out and listed;
* units: volts (mne-lsl's default, scaled by 1e6) or µV (scaled by 1), from the stream's
  channel units; anything else is refused;
* with a model: the window is a whole number of the model's patches.

A rate that differs from the model's 200 Hz is not an error: windows are resampled
(:func:`brainfm.attention.resample_window`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mne_lsl.stream import StreamLSL

from brainfm.attention.engagement import EngagementModel
from brainfm.attention.montage import eeg_spec
from brainfm.signal import SensorSpec

#: FIFF volt unit, and the unit multipliers mne-lsl reports (0: V, -6: µV).
FIFF_UNIT_V = 107
UNIT_MUL_TO_UV = {0: 1e6, -3: 1e3, -6: 1.0}


def stream_name(source: str) -> str:
    """``lsl:NAME`` -> ``NAME``."""
    if not source.startswith("lsl:") or len(source) <= 4:
        raise ValueError(f"--source must be lsl:NAME (an LSL stream name), got {source!r}")
    return source[4:]


@dataclass
class StreamInput:
    """A connected stream and how to read EEG in µV from it."""

    stream: StreamLSL
    name: str
    spec: SensorSpec  # mapped EEG channels at the stream's rate
    picks: list[int]  # their indices among the stream's channels
    scale: np.ndarray  # (C, 1) to µV
    dropped: list[str]


def open_stream(source: str, bufsize: float = 5.0, timeout: float = 5.0) -> StreamLSL:
    name = stream_name(source)
    try:
        return StreamLSL(bufsize, name=name).connect(timeout=timeout)
    except RuntimeError as err:
        raise RuntimeError(f"LSL stream {name!r} not found within {timeout:g} s ({err}); is the source running "
                           "and on this network?") from None


def check_stream(stream: StreamLSL, name: str, model: EngagementModel | None = None,
                 window_s: float = 4.0) -> StreamInput:
    """Check a connected stream (see the module docstring) and describe its EEG channels."""
    sfreq = float(stream.info["sfreq"])
    if sfreq <= 0:
        raise ValueError(f"LSL stream {name!r} has an irregular rate; the detector needs a regular EEG stream")
    types = stream.get_channel_types()
    eeg = [i for i, t in enumerate(types) if t == "eeg"]
    if not eeg:
        raise ValueError(f"LSL stream {name!r} has no EEG channels (types: {sorted(set(types))})")
    names = [stream.ch_names[i] for i in eeg]
    spec, keep, dropped = eeg_spec(names, sfreq, f"LSL stream {name!r}")
    picks = [eeg[i] for i in keep]
    units = stream.get_channel_units()
    scale = []
    for i in picks:
        unit, mul = int(units[i][0]), int(units[i][1])
        if unit != FIFF_UNIT_V or mul not in UNIT_MUL_TO_UV:
            raise ValueError(f"LSL stream {name!r}: channel {stream.ch_names[i]!r} is in unit {units[i]}, "
                             "expected volts or microvolts")
        scale.append(UNIT_MUL_TO_UV[mul])
    if model is not None and model.model is not None:
        model.model.config.check_window(int(round(window_s * model.sfreq)))
    return StreamInput(stream, name, spec, picks, np.asarray(scale)[:, None], dropped)
