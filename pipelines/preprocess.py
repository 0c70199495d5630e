"""Apply a :class:`~brainfm.pipelines.presets.Preset` to an MNE Raw, with MNE only.

The steps and their order are documented on :func:`preprocess`; the effective
parameters (which can differ from the preset when a source cannot carry them) are
returned so they can be stored with the recording.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import mne
import numpy as np

from brainfm.data.store import PLAUSIBLE_UNITS, SPIKE_RATIO
from brainfm.pipelines.bids_io import ConversionError
from brainfm.pipelines.presets import Preset
from brainfm.signal import UNITS


def resample_method(src: float, dst: float) -> str:
    """``polyphase`` when ``dst/src`` is a small rational (fast, exact), else ``fft``."""
    ratio = Fraction(dst / src).limit_denominator(64)
    return "polyphase" if abs(float(ratio) - dst / src) < 1e-9 else "fft"


def _resample(raw: mne.io.BaseRaw, sfreq: float) -> None:
    if raw.info["sfreq"] != sfreq:
        raw.resample(sfreq, method=resample_method(raw.info["sfreq"], sfreq), verbose="warning")


def preprocess(raw: mne.io.BaseRaw, preset: Preset) -> tuple[mne.io.BaseRaw, dict[str, Any], dict[str, Any]]:
    """Pick, check, resample, notch, band-pass and re-reference ``raw`` in place.

    Steps:

    1. keep the channel types in ``preset.ch_types`` (bad channels are kept and
       marked in the channel table, not dropped);
    2. load the samples and refuse non-finite values;
    3. resample to ``preset.sfreq`` (first, when ``preset.resample_first``);
    4. notch the line frequency and its harmonics up to the low-pass edge;
    5. band-pass ``[l_freq, h_freq]`` (FIR, MNE defaults), with ``h_freq`` lowered to
       0.45 × the source rate when the source cannot carry it;
    6. resample (when not done first); 7. average reference for EEG if asked.

    Returns the processed raw, the effective ``filters`` record and what step 2 found:
    ``{"flat": [channels constant in the source], "dropped": {name: type}}``. A recording whose
    kept channels are all constant (e.g. all zero) is refused.
    """
    types = raw.get_channel_types()
    keep = [i for i, t in enumerate(types) if t in preset.ch_types]
    dropped = {raw.ch_names[i]: t for i, t in enumerate(types) if t not in preset.ch_types}
    if not keep:
        found = ", ".join(sorted(set(types)))
        raise ConversionError(
            f"no channels of the preset's types ({', '.join(preset.ch_types)}); found: {found}"
        )
    raw.pick(keep)
    raw.load_data(verbose="error")
    data = raw.get_data()
    if not np.isfinite(data).all():
        bad = [raw.ch_names[i] for i in np.where(~np.isfinite(data).all(axis=1))[0]]
        raise ConversionError(f"non-finite samples (NaN/inf) in channels {bad[:10]}")
    flat = [raw.ch_names[i] for i in np.flatnonzero(np.ptp(data, axis=1) == 0)] if data.shape[1] else list(raw.ch_names)
    if len(flat) == len(raw.ch_names):
        what = "zero" if not np.any(data) else "constant"
        raise ConversionError(f"every sample of every kept channel is {what}: no signal to store")
    src_sfreq = float(raw.info["sfreq"])
    h_freq = preset.h_freq
    if h_freq is not None and h_freq >= 0.45 * src_sfreq:
        h_freq = float(np.floor(0.45 * src_sfreq))
    picks = np.arange(len(raw.ch_names))

    if preset.resample_first:
        _resample(raw, preset.sfreq)
    line = raw.info.get("line_freq") if preset.notch == "auto" else preset.notch
    nyq = raw.info["sfreq"] / 2.0
    top = min(h_freq if h_freq is not None else nyq, nyq - 1.0)
    notch = [float(f) for f in np.arange(line, top + 1e-9, line)] if line else []
    if notch:
        raw.notch_filter(notch, picks=picks, verbose="warning")
    if preset.l_freq is not None or h_freq is not None:
        raw.filter(preset.l_freq, h_freq, picks=picks, verbose="warning")
    if not preset.resample_first:
        _resample(raw, preset.sfreq)
    if preset.reference == "average" and "eeg" in raw.get_channel_types():
        raw.set_eeg_reference("average", projection=False, verbose="warning")
    filters = {
        "source_sfreq": src_sfreq,
        "sfreq": float(raw.info["sfreq"]),
        "l_freq": preset.l_freq,
        "h_freq": h_freq,
        "notch": notch,
        "line_freq": line,
        "reference": preset.reference or "as recorded",
        "resample": resample_method(src_sfreq, preset.sfreq),
    }
    return raw, filters, {"flat": flat, "dropped": dropped}


def quality_flags(data: np.ndarray, names: list[str], types: list[str], flat: list[str]) -> dict[str, list[str]]:
    """Per-channel flags of preprocessed ``data`` (physical units), by the rules of
    "Signal quality" in :mod:`brainfm.data.store`: ``flat`` (constant in the source) and
    ``spikes`` (peak above ``SPIKE_RATIO`` x the median absolute value). Raises
    :class:`ConversionError` when a channel type's typical amplitude is not physical."""
    flags: dict[str, list[str]] = {n: ["flat"] for n in flat}
    amp = np.abs(data)
    median = np.median(amp, axis=1) if data.shape[1] else np.zeros(len(names))
    peak = amp.max(axis=1) if data.shape[1] else np.zeros(len(names))
    live = np.array([n not in flags for n in names], dtype=bool)
    for i in np.flatnonzero(live & (peak > SPIKE_RATIO * median)):
        flags.setdefault(names[i], []).append("spikes")
    types_arr = np.asarray(types)
    for t in sorted(set(types)):
        sel = live & (types_arr == t)
        if not sel.any() or t not in PLAUSIBLE_UNITS:
            continue
        typical = float(np.median(median[sel]))
        lo, hi = PLAUSIBLE_UNITS[t]
        if not lo <= typical <= hi:
            unit = UNITS[t][0]
            raise ConversionError(
                f"{t} amplitudes are not physical: median |x| = {typical:.3g} {unit}, expected {lo:g}-{hi:g} {unit}; "
                "the header's units or physical range are wrong"
            )
    return flags


def to_physical_units(raw: mne.io.BaseRaw) -> tuple[np.ndarray, list[str]]:
    """Samples ``(C, N)`` float32 scaled from SI to :data:`brainfm.signal.UNITS`."""
    types = raw.get_channel_types()
    factors = np.array([UNITS[t][1] for t in types])
    data = raw.get_data() * factors[:, None]
    return data.astype(np.float32), [UNITS[t][0] for t in types]
