"""The signal contract between data and model: :class:`SensorSpec`.

A ``SensorSpec`` describes the channels of one recording (or one window of it) the
way the model needs to see them: names, types, 3D position and orientation in MNE
head coordinates, sampling rate and physical unit. Data code produces it; model
code consumes it; neither side reads the other's files.

Channel geometry follows MNE's ``info['chs'][i]['loc']`` (12 floats):

* ``loc[0:3]`` — sensor position in metres (head coordinates).
* EEG / iEEG: ``loc[3:6]`` is the reference electrode position; the sensor has
  no orientation, so brainfm reports a zero orientation vector.
* MEG: ``loc[3:12]`` is the coil's rotation matrix (ex, ey, ez); the coil normal
  ``ez = loc[9:12]`` is the orientation brainfm uses.

Unknown positions are ``NaN``, never zero, so that code which needs them can
refuse loudly instead of silently treating the sensor as sitting at the origin.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:  # only for annotations: mne is imported where an Info is built
    import mne

#: Channel types the model knows, in the order of the type-embedding table.
#: ``seeg``/``ecog``/``dbs`` are intracranial EEG; ``bold`` is fMRI (voxel / ROI).
CHANNEL_TYPES: tuple[str, ...] = ("eeg", "mag", "grad", "bold", "seeg", "ecog", "dbs")

#: Physical unit each channel type is stored in, and the factor from SI.
#: float16 is a trap in SI units (MEG in tesla underflows); these keep typical
#: amplitudes in the 1e-1..1e4 range.
UNITS: dict[str, tuple[str, float]] = {
    "eeg": ("uV", 1e6),
    "seeg": ("uV", 1e6),
    "ecog": ("uV", 1e6),
    "dbs": ("uV", 1e6),
    "mag": ("fT", 1e15),
    "grad": ("fT/cm", 1e13),
    "bold": ("a.u.", 1.0),
}

_MEG_TYPES = frozenset({"mag", "grad"})


def type_index(ch_type: str) -> int:
    """Return the index of ``ch_type`` in :data:`CHANNEL_TYPES`, with a clear error."""
    try:
        return CHANNEL_TYPES.index(ch_type)
    except ValueError:
        raise ValueError(
            f"unknown channel type {ch_type!r}; brainfm knows {', '.join(CHANNEL_TYPES)}"
        ) from None


def check_sfreq(data_sfreq: float, model_sfreq: float) -> None:
    """The one sampling-rate check between data and model: equal within 1 µHz, else a clear error."""
    if abs(float(data_sfreq) - float(model_sfreq)) > 1e-6:
        raise ValueError(
            f"sampling rate {float(data_sfreq):g} Hz does not match the model's {float(model_sfreq):g} Hz; "
            "resample the data first"
        )


def orientation_from_loc(loc: np.ndarray, ch_types: Sequence[str]) -> np.ndarray:
    """Sensor orientation ``(C, 3)`` from MNE ``loc`` rows ``(C, 12)``.

    MEG coils get their normal (``loc[9:12]``); electrodes get zeros.
    """
    loc = np.asarray(loc, dtype=np.float64)
    ori = np.zeros((loc.shape[0], 3))
    meg = np.array([t in _MEG_TYPES for t in ch_types], dtype=bool)
    ori[meg] = loc[meg, 9:12]
    return ori


@dataclass(frozen=True, eq=False)
class SensorSpec:
    """Channels of one recording, as the model sees them.

    Parameters
    ----------
    ch_names : sequence of str
        Channel names, ``C`` of them, unique.
    ch_types : sequence of str
        One of :data:`CHANNEL_TYPES` per channel.
    loc : array, shape (C, 12)
        MNE ``loc`` rows in head coordinates (metres); ``NaN`` where unknown.
    sfreq : float
        Sampling rate in Hz.
    units : sequence of str, optional
        Physical unit per channel; defaults to :data:`UNITS` of each type.
    """

    ch_names: tuple[str, ...]
    ch_types: tuple[str, ...]
    loc: np.ndarray
    sfreq: float
    units: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.ch_names)
        types = tuple(str(t) for t in self.ch_types)
        loc = np.asarray(self.loc, dtype=np.float64)
        if len(names) != len(types):
            raise ValueError(f"{len(names)} channel names but {len(types)} channel types")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate channel names: {dup}")
        for name, t in zip(names, types):
            if t not in CHANNEL_TYPES:
                raise ValueError(
                    f"channel {name!r} has unknown type {t!r}; "
                    f"brainfm knows {', '.join(CHANNEL_TYPES)}"
                )
        if loc.shape != (len(names), 12):
            raise ValueError(f"loc must have shape ({len(names)}, 12), got {loc.shape}")
        if not (np.isfinite(self.sfreq) and self.sfreq > 0):
            raise ValueError(f"sampling rate must be positive, got {self.sfreq}")
        units = tuple(self.units) or tuple(UNITS[t][0] for t in types)
        if len(units) != len(names):
            raise ValueError(f"{len(units)} units for {len(names)} channels")
        loc = loc.copy()
        loc.setflags(write=False)
        object.__setattr__(self, "ch_names", names)
        object.__setattr__(self, "ch_types", types)
        object.__setattr__(self, "loc", loc)
        object.__setattr__(self, "sfreq", float(self.sfreq))
        object.__setattr__(self, "units", units)

    # -- views -----------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return len(self.ch_names)

    @property
    def positions(self) -> np.ndarray:
        """Sensor positions ``(C, 3)`` in metres, head coordinates; NaN if unknown."""
        return self.loc[:, :3].copy()

    @property
    def orientations(self) -> np.ndarray:
        """Sensor orientations ``(C, 3)``: MEG coil normals, zeros for electrodes."""
        return orientation_from_loc(self.loc, self.ch_types)

    @property
    def has_positions(self) -> np.ndarray:
        """Boolean ``(C,)``: whether each channel has a finite position."""
        return np.isfinite(self.loc[:, :3]).all(axis=1)

    def type_indices(self) -> np.ndarray:
        """Integer ``(C,)`` indices into :data:`CHANNEL_TYPES`."""
        return np.array([type_index(t) for t in self.ch_types], dtype=np.int64)

    def geometry(self) -> np.ndarray:
        """Position and orientation ``(C, 6)`` as float32 — the tokenizer's input."""
        return np.concatenate([self.positions, self.orientations], axis=1).astype(np.float32)

    @functools.cached_property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(geometry (C, 6) float32, type indices (C,) int64)`` as tensors, computed once
        per spec (batches are collated from them on the data-loading hot path)."""
        return torch.from_numpy(self.geometry()), torch.from_numpy(self.type_indices())

    def to_mne_info(self) -> "mne.Info":
        """An :class:`mne.Info` with these channels, types and ``loc`` (head coordinates),
        e.g. for :func:`mne.viz.plot_topomap` of channel-level values."""
        import mne  # noqa: PLC0415 - only for plotting and interop

        info = mne.create_info(list(self.ch_names), self.sfreq, list(self.ch_types))
        with info._unlock():
            for ch, loc in zip(info["chs"], self.loc):
                ch["loc"][:] = loc
                ch["coord_frame"] = mne.io.constants.FIFF.FIFFV_COORD_HEAD
        return info

    def pick(self, idx: Sequence[int] | np.ndarray) -> "SensorSpec":
        """A spec for the channels at ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        return SensorSpec(
            ch_names=[self.ch_names[i] for i in idx],
            ch_types=[self.ch_types[i] for i in idx],
            loc=self.loc[idx],
            sfreq=self.sfreq,
            units=[self.units[i] for i in idx],
        )

    def pick_types(self, types: Sequence[str]) -> "SensorSpec":
        """A spec restricted to channels whose type is in ``types``."""
        return self.pick([i for i, t in enumerate(self.ch_types) if t in set(types)])

    # -- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN positions become ``None``)."""
        loc = [[None if not np.isfinite(v) else float(v) for v in row] for row in self.loc]
        return {
            "ch_names": list(self.ch_names),
            "ch_types": list(self.ch_types),
            "loc": loc,
            "sfreq": self.sfreq,
            "units": list(self.units),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SensorSpec":
        loc = np.array(
            [[np.nan if v is None else v for v in row] for row in d["loc"]], dtype=np.float64
        ).reshape(len(d["ch_names"]), 12)
        return cls(d["ch_names"], d["ch_types"], loc, d["sfreq"], tuple(d.get("units", ())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SensorSpec):
            return NotImplemented
        return (
            self.ch_names == other.ch_names
            and self.ch_types == other.ch_types
            and self.sfreq == other.sfreq
            and self.units == other.units
            and np.array_equal(self.loc, other.loc, equal_nan=True)
        )

    def __hash__(self) -> int:
        return hash((self.ch_names, self.ch_types, self.sfreq))

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for t in self.ch_types:
            counts[t] = counts.get(t, 0) + 1
        desc = ", ".join(f"{n} {t}" for t, n in counts.items())
        return f"SensorSpec({desc} @ {self.sfreq:g} Hz)"


def collate_sensors(specs: Sequence[SensorSpec], n_channels: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch of specs along the channel axis.

    Returns
    -------
    dict with
        ``sensor_geometry`` float32 ``(B, C, 6)`` (zeros where padded),
        ``sensor_type`` int64 ``(B, C)`` (0 where padded),
        ``channel_mask`` bool ``(B, C)``, True for real channels.
    """
    c_max = n_channels or max(s.n_channels for s in specs)
    b = len(specs)
    if all(s.n_channels == c_max for s in specs):  # no padding needed: stack, no loop
        geoms, kinds = zip(*(s.tensors for s in specs))
        return {"sensor_geometry": torch.stack(geoms), "sensor_type": torch.stack(kinds),
                "channel_mask": torch.ones(b, c_max, dtype=torch.bool)}
    geom = torch.zeros(b, c_max, 6)
    types = torch.zeros(b, c_max, dtype=torch.long)
    mask = torch.zeros(b, c_max, dtype=torch.bool)
    for i, s in enumerate(specs):
        c = s.n_channels
        if c > c_max:
            raise ValueError(f"spec has {c} channels, more than the batch's {c_max}")
        geom[i, :c], types[i, :c] = s.tensors
        mask[i, :c] = True
    return {"sensor_geometry": geom, "sensor_type": types, "channel_mask": mask}
