"""Named, hashed preprocessing presets for conversion.

A preset fixes everything that changes the stored signal: which channel types are
kept, the target sampling rate, band-pass and notch filters, re-referencing and the
unit scaling (fixed by :data:`brainfm.signal.UNITS`). Its hash is stored in the
manifest and in every recording, so a re-run can tell whether a stored recording is
still what the preset would produce.

The default, ``eeg-fm``, follows common EEG foundation-model practice (CBraMod,
LaBraM): 200 Hz, 0.3–75 Hz band-pass, notch at the line frequency given by the BIDS
sidecar (``PowerLineFrequency``), no re-referencing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from brainfm.signal import CHANNEL_TYPES


@dataclass(frozen=True)
class Preset:
    """Preprocessing applied to every recording of a conversion.

    Parameters
    ----------
    name : str
        Registry name.
    sfreq : float
        Target sampling rate (Hz).
    l_freq, h_freq : float or None
        Band-pass edges (Hz). ``h_freq`` is lowered to 0.45 × the source rate when the
        source cannot carry it (the effective value is stored per recording).
    notch : "auto", float or None
        Notch frequency: ``"auto"`` uses the sidecar's line frequency (and skips the
        notch when the sidecar gives none); harmonics below the low-pass are notched too.
    reference : "average" or None
        EEG re-referencing; None keeps the recorded reference.
    ch_types : tuple of str
        Channel types kept; others (EOG, ECG, stim, misc, ...) are dropped.
    resample_first : bool
        Resample before filtering. Filtering at the lower rate is several times cheaper
        (shorter FIR at fewer samples) and MNE's resampling anti-aliases on its own.
    chunk_seconds : float
        Time-chunk length of the stored arrays.
    """

    name: str
    sfreq: float = 200.0
    l_freq: float | None = 0.3
    h_freq: float | None = 75.0
    notch: str | float | None = "auto"
    reference: str | None = None
    ch_types: tuple[str, ...] = ("eeg", "mag", "grad", "seeg", "ecog", "dbs")
    resample_first: bool = True
    chunk_seconds: float = 30.0
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.sfreq <= 0:
            raise ValueError(f"preset {self.name!r}: sfreq must be positive")
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise ValueError(f"preset {self.name!r}: l_freq must be below h_freq")
        bad = [t for t in self.ch_types if t not in CHANNEL_TYPES]
        if bad:
            raise ValueError(f"preset {self.name!r}: unknown channel types {bad}")
        if self.reference not in (None, "average"):
            raise ValueError(f"preset {self.name!r}: reference must be None or 'average'")
        if not (self.notch in (None, "auto") or isinstance(self.notch, (int, float))):
            raise ValueError(f"preset {self.name!r}: notch must be 'auto', a frequency or None")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_types"] = list(self.ch_types)
        return d

    @property
    def hash(self) -> str:
        """Stable hash of every field that changes the output (not the description)."""
        d = self.to_dict()
        d.pop("description")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("eeg-fm", description="200 Hz, 0.3-75 Hz, notch at line frequency (CBraMod/LaBraM practice)"),
        Preset(
            "eeg-fm-avgref",
            reference="average",
            description="eeg-fm with common average reference for EEG",
        ),
        Preset(
            "raw-200",
            l_freq=None,
            h_freq=None,
            notch=None,
            description="resample to 200 Hz only",
        ),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """Look up a preset by name (or pass one through)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None
