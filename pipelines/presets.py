"""Named, hashed preprocessing presets for conversion.

A preset fixes everything that changes the stored signal: which channel types are
kept, the target sampling rate, band-pass and notch filters, re-referencing and the
unit scaling (fixed by :data:`brainfm.signal.UNITS`). Its hash is stored in the
manifest and in every recording, so a re-run can tell whether a stored recording is
still what the preset would produce.

The default, ``eeg-fm``, follows common EEG foundation-model practice (CBraMod,
LaBraM): 200 Hz, 0.3–75 Hz band-pass, notch at the line frequency given by the BIDS
sidecar (``PowerLineFrequency``), no re-referencing.

fMRI (BIDS ``func``) has its own preset class, :class:`FmriPreset` (``kind = "fmri"``):
the representation (voxels in a mask, or ROI means from an atlas), the cleaning regression
(polynomial detrending, cosine high-pass, fMRIPrep confounds) and the units. A store holds
one preset, so EEG/MEG and BOLD recordings go into separate stores; a training run reads both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

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

    #: What the preset converts: EEG/MEG/iEEG through MNE (``fmri`` for :class:`FmriPreset`).
    kind: ClassVar[str] = "meeg"

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


#: fMRIPrep confound columns regressed by default: the 6 rigid-body motion parameters and the
#: mean white-matter and CSF signals (the "6P + 2" strategy; Ciric et al., NeuroImage 2017).
DEFAULT_CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "white_matter", "csf")


@dataclass(frozen=True)
class FmriPreset:
    """Conversion of BIDS ``func`` runs (BOLD) into sensors of type ``bold``.

    Parameters
    ----------
    name : str
        Registry name.
    representation : {"voxel", "roi"}
        ``voxel``: every voxel in the mask is a channel. ``roi``: one channel per atlas label,
        the mean of its voxels (BrainLM and Brain-JEPA tokenize parcels this way).
    mask : str or None
        Voxel mask, a path relative to the BIDS root. None: the run's own
        ``*_desc-brain_mask.nii.gz`` when it has one, else an intensity mask.
    mask_fraction : float
        Intensity mask threshold, a fraction of the 98th percentile of the mean image.
    atlas, atlas_labels : str or None
        ``roi``: the atlas image (integer labels, any grid: it is resampled by nearest
        neighbour through world space) and its BIDS ``dseg.tsv`` (``index``, ``name``),
        relative to the BIDS root.
    confounds : tuple of str
        Columns of an fMRIPrep ``*_desc-confounds_timeseries.tsv`` to regress, when the run
        has one; absent columns are skipped (the recording lists what was used).
    detrend : int
        Order of the Legendre polynomials regressed (0: the mean only).
    high_pass : float or None
        Cut-off (Hz) of the discrete-cosine high-pass, fitted in the same regression.
    units : {"psc", "z"}
        Percent signal change ``100 · residual / mean`` or the residual z-scored within run.
    chunk_seconds : float
        Time-chunk length of the stored arrays.
    """

    name: str
    representation: str = "voxel"
    mask: str | None = None
    mask_fraction: float = 0.2
    atlas: str | None = None
    atlas_labels: str | None = None
    confounds: tuple[str, ...] = DEFAULT_CONFOUNDS
    detrend: int = 1
    high_pass: float | None = 0.01
    units: str = "psc"
    chunk_seconds: float = 600.0
    description: str = field(default="", compare=False)

    kind: ClassVar[str] = "fmri"

    def __post_init__(self) -> None:
        if self.representation not in ("voxel", "roi"):
            raise ValueError(f"preset {self.name!r}: representation must be 'voxel' or 'roi'")
        if self.representation == "roi" and not (self.atlas and self.atlas_labels):
            raise ValueError(f"preset {self.name!r}: an ROI preset needs atlas and atlas_labels")
        if self.units not in ("psc", "z"):
            raise ValueError(f"preset {self.name!r}: units must be 'psc' or 'z'")
        if self.detrend < 0 or not 0 < self.mask_fraction < 1:
            raise ValueError(f"preset {self.name!r}: detrend must be >= 0 and mask_fraction in (0, 1)")
        if self.high_pass is not None and self.high_pass <= 0:
            raise ValueError(f"preset {self.name!r}: high_pass must be positive or None")

    @property
    def sfreq(self) -> None:
        """BOLD keeps its own rate, 1/TR (no resampling)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["confounds"] = list(self.confounds)
        d["kind"] = self.kind
        return d

    @property
    def hash(self) -> str:
        """Stable hash of every field that changes the output (not the description)."""
        d = self.to_dict()
        d.pop("description")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, Preset | FmriPreset] = {
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
        FmriPreset("fmri-voxel", description="voxels in the mask, linear detrend, 0.01 Hz high-pass, "
                                             "6P+WM+CSF confounds, percent signal change"),
        FmriPreset("fmri-voxel-z", units="z", description="fmri-voxel, z-scored within run"),
        FmriPreset("fmri-roi", representation="roi", atlas="atlas/atlas_dseg.nii.gz",
                   atlas_labels="atlas/atlas_dseg.tsv",
                   description="ROI means of the dataset's atlas/atlas_dseg.nii.gz, cleaned as fmri-voxel"),
    )
}


def get_preset(name: str | Preset | FmriPreset) -> Preset | FmriPreset:
    """Look up a preset by name (or pass one through)."""
    if isinstance(name, (Preset, FmriPreset)):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None
