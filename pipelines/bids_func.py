"""BIDS ``func`` (fMRI) into the shard store: BOLD runs become sensors of type ``bold``.

What is read, per run (every file resolved inside the BIDS root before it is opened):

* ``sub-*/[ses-*/]func/*_bold.nii[.gz]``: a 4-D NIfTI read with nibabel, or an ROI-level run
  ``*_atlas-<name>_timeseries.tsv`` (one column per ROI, one row per volume; BIDS-derivatives
  time series) with its ``.json`` (``RepetitionTime``, optional ``Units`` ``"percent"``,
  ``ROICentroids`` in mm and ``Space``);
* the run's JSON sidecar: ``RepetitionTime`` (s); ``SliceTiming`` (s) with
  ``SliceEncodingDirection`` (default ``k``), used for slice-timing correction of NIfTI runs
  (:func:`brainfm.pipelines.bold.slice_time_correct`: Fourier shift to the middle of the
  acquisition range, as fMRIPrep's default reference), unless ``SliceTimingCorrected`` is true;
* ``*_events.tsv`` (``onset``, ``duration``, ``trial_type`` or ``value``);
* ``*_desc-confounds_timeseries.tsv`` (fMRIPrep) beside the run, when present;
* ``*_desc-brain_mask.nii[.gz]`` beside the run, when present and the preset names no mask;
* the preset's atlas image and labels (ROI presets) and explicit mask.

Header quirks and what conversion does (each leaves a message in the recording's
``quality.warnings`` and the report, or refuses the run naming the file):

==============================================  ==================================================
quirk                                           action
==============================================  ==================================================
sidecar ``RepetitionTime`` > 100                read as milliseconds (BIDS wants seconds), warned
header ``pixdim[4]`` in ms / µs (``xyzt_units``)  converted to seconds
header TR > 100 with unit ``sec`` (a wrong unit)  read as milliseconds, warned (nibabel's
                                                ``example4d``: 2000 "s")
header and sidecar TRs differ                   the sidecar wins (BIDS), warned
no sidecar TR                                   the header's, warned; none usable: refused
3-D image, or a 4-D one with one volume         refused: no time series
NaN / inf voxels                                left out of the mask (ROI means: of the mean),
                                                counted in a warning
truncated or unreadable NIfTI                   refused naming the file; the others convert
``SliceTiming`` in ms (max > TR, max/1000 < TR)   read as milliseconds, warned
``SliceTiming`` of the wrong length, outside     not corrected, warned (the run converts; the
``[0, TR)``, or not numbers                      manifest says ``corrected: false`` and why)
``SliceTiming`` on an ROI-table run              not corrected (already averaged), warned
too few volumes for the regression              cleaned with the mean only, warned
==============================================  ==================================================
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from brainfm.data import store as shard
from brainfm.data.store_write import write_recording
from brainfm.pipelines import bold
from brainfm.pipelines.bids_io import ConversionError, safe_relative, short
from brainfm.pipelines.presets import FmriPreset
from brainfm.signal import SensorSpec

#: NIfTI ``sform_code``/``qform_code`` meanings (the space positions are given in).
XFORM_SPACES = {1: "scanner", 2: "aligned", 3: "talairach", 4: "mni152", 5: "template"}
#: A TR (s) outside this range is taken to be in the wrong unit or missing.
TR_RANGE = (0.05, 100.0)
_ENTITY = re.compile(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9]+)")


@dataclass(frozen=True)
class FuncPath:
    """One BOLD run of a BIDS dataset (a NIfTI or an ROI-level time-series TSV)."""

    root: Path
    fpath: Path

    @property
    def kind(self) -> str:
        return "roi" if self.fpath.name.endswith("_timeseries.tsv") else "nifti"

    @property
    def stem(self) -> str:
        """The file name without suffix and extension (``sub-01_task-rest_run-1``)."""
        name = self.fpath.name
        for end in ("_bold.nii.gz", "_bold.nii", "_timeseries.tsv"):
            if name.endswith(end):
                return name[: -len(end)]
        return name

    @property
    def entities(self) -> dict[str, str]:
        return dict(_ENTITY.findall(self.stem))

    @property
    def recording_id(self) -> str:
        """Store id: the BIDS basename without extension."""
        return self.fpath.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".tsv")

    subject = property(lambda self: self.entities.get("sub"))
    session = property(lambda self: self.entities.get("ses"))
    task = property(lambda self: self.entities.get("task"))
    run = property(lambda self: self.entities.get("run"))
    datatype = "func"

    def sibling(self, suffix: str) -> Path:
        """A file of the same run: ``<stem without atlas/desc>_<suffix>``."""
        base = re.sub(r"_(atlas|desc|space)-[a-zA-Z0-9]+", "", self.stem)
        return self.fpath.parent / f"{base}_{suffix}"

    def __str__(self) -> str:
        return str(self.fpath)


def discover(bids_root: str | Path) -> list[FuncPath]:
    """Every BOLD run under ``bids_root``: ``func/*_bold.nii[.gz]`` and ROI-level
    ``func/*_atlas-*_timeseries.tsv`` (confound tables excluded)."""
    root = Path(bids_root)
    if not (root / "dataset_description.json").is_file():
        raise FileNotFoundError(f"{root} is not a BIDS dataset (no dataset_description.json)")
    found = []
    for f in sorted(root.glob("sub-*/**/func/*")):
        name = f.name
        if name.endswith(("_bold.nii.gz", "_bold.nii")) or (
                name.endswith("_timeseries.tsv") and "_atlas-" in name and "_desc-confounds" not in name):
            found.append(FuncPath(root, f))
    return found


def _inside(path: Path, root: Path) -> Path:
    safe_relative(path, root)  # raises ConversionError naming the file
    return path


def source_files(path: FuncPath, preset: FmriPreset) -> list[Path]:
    """Every file conversion reads for one run, each checked to resolve inside the root."""
    root = path.root
    files = [path.fpath, path.fpath.with_name(path.fpath.name.replace(".nii.gz", ".json").replace(".nii", ".json")
                                              .replace(".tsv", ".json"))]
    files += [path.sibling("events.tsv"), path.sibling("desc-confounds_timeseries.tsv")]
    if path.kind == "nifti" and preset.mask is None:
        files += [path.sibling("desc-brain_mask.nii.gz"), path.sibling("desc-brain_mask.nii")]
    for rel in (preset.mask, preset.atlas, preset.atlas_labels):
        if rel and path.kind == "nifti":
            files.append(root / rel)
    out = list(dict.fromkeys(f for f in files if f.exists() or f.is_symlink()))
    return [_inside(f, root) for f in out]


def source_checksum(path: FuncPath, preset: FmriPreset) -> str:
    """SHA-256 over the names and bytes of :func:`source_files`."""
    h = hashlib.sha256()
    for f in source_files(path, preset):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def _sidecar(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as err:
        raise ConversionError(f"{path} is not valid JSON ({err}); fix the sidecar") from None
    if not isinstance(doc, dict):
        raise ConversionError(f"{path} must hold a JSON object; fix the sidecar")
    return doc


def repetition_time(name: str, sidecar: dict[str, Any], header: nib.Nifti1Header | None,
                    notes: list[str]) -> tuple[float, str]:
    """The TR in seconds and where it came from; quirks are appended to ``notes``."""
    lo, hi = TR_RANGE
    side = sidecar.get("RepetitionTime")
    if side is not None and not (isinstance(side, (int, float)) and side > 0):
        raise ConversionError(f"{name}: sidecar RepetitionTime {side!r} makes no sense; fix the sidecar")
    if side is not None and side > hi:
        notes.append(f"{name}: sidecar RepetitionTime {side:g} is in milliseconds (BIDS wants seconds); "
                     f"read as {side / 1000:g} s")
        side = side / 1000.0
    head = None
    if header is not None and len(header.get_zooms()) > 3:
        value = float(header.get_zooms()[3])
        unit = header.get_xyzt_units()[1]
        head = value / {"msec": 1e3, "usec": 1e6}.get(unit, 1.0)
        if unit in ("msec", "usec"):
            notes.append(f"{name}: header TR given in {unit}; read as {head:g} s")
        elif head > hi:
            notes.append(f"{name}: header TR {value:g} with unit {unit!r} cannot be seconds; the unit is wrong, "
                         f"read as {value:g} ms = {value / 1000:g} s")
            head = value / 1000.0
        if not lo <= head <= hi:
            head = None
    if side is not None:
        if head is not None and abs(head - side) > 0.01 * side:
            notes.append(f"{name}: header TR {head:g} s differs from the sidecar's {side:g} s; the sidecar wins (BIDS)")
        return float(side), "sidecar"
    if head is None:
        raise ConversionError(f"{name}: no usable TR (no sidecar RepetitionTime and the header's is missing or "
                              "implausible); add RepetitionTime (s) to the JSON sidecar")
    notes.append(f"{name}: no RepetitionTime in the sidecar; the header's {head:g} s is used")
    return head, "header"


def load_nifti(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its data ``(X, Y, Z, T)`` float32; ConversionError naming the file when
    it is not a readable 4-D NIfTI."""
    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a conversion error
        raise ConversionError(f"cannot read {path.name} as NIfTI: {short(err)}") from err
    shape = img.shape
    if len(shape) == 5 and shape[4] == 1:
        shape = shape[:4]
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        raise ConversionError(f"{path.name} is a 3-D image {tuple(img.shape)} (one volume), not a time series; "
                              "BOLD runs must be 4-D (x, y, z, time)")
    if len(shape) != 4:
        raise ConversionError(f"{path.name} has shape {tuple(img.shape)}; BOLD runs must be 4-D (x, y, z, time)")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as err:  # noqa: BLE001 - truncated gzip, short file, bad scaling
        raise ConversionError(f"cannot read the voxels of {path.name} ({type(err).__name__}: {short(err)}); "
                              "the file is truncated or damaged") from err
    return img, data


def space_of(path: FuncPath, img: nib.Nifti1Image | None, sidecar: dict[str, Any]) -> str:
    """The world space positions are given in: the ``space-`` entity, the sidecar's ``Space``,
    else the header's sform (or qform) code."""
    if "space" in path.entities:
        return path.entities["space"]
    if sidecar.get("Space"):
        return str(sidecar["Space"])
    if img is None:
        return "unknown"
    code = int(img.header["sform_code"]) or int(img.header["qform_code"])
    return XFORM_SPACES.get(code, "unknown")


def read_events(path: FuncPath) -> shard.Events:
    """Events of ``*_events.tsv`` (onsets in s from the first volume); none when absent."""
    f = path.sibling("events.tsv")
    if not f.exists():
        return shard.Events(np.zeros(0), np.zeros(0), np.zeros(0, dtype=object))
    table = pd.read_csv(f, sep="\t", na_values=["n/a"])
    if "onset" not in table:
        raise ConversionError(f"{f} has no onset column; fix the events file")
    label = table["trial_type"] if "trial_type" in table else table.get("value", pd.Series(["event"] * len(table)))
    return shard.Events(table["onset"].to_numpy(float), table.get("duration", pd.Series(np.zeros(len(table))))
                        .fillna(0).to_numpy(float), label.astype(str).to_numpy(object))


def read_confounds(path: FuncPath, wanted: tuple[str, ...], n_volumes: int,
                   notes: list[str]) -> tuple[np.ndarray | None, list[str], str | None]:
    """The wanted columns of the run's fMRIPrep confounds table ``(T, K)``, their names and
    the file (relative to the root); ``None`` when the run has no table."""
    f = path.sibling("desc-confounds_timeseries.tsv")
    if not f.exists():
        return None, [], None
    table = pd.read_csv(f, sep="\t", na_values=["n/a"])
    if len(table) != n_volumes:
        raise ConversionError(f"{f.name} has {len(table)} rows, the run {n_volumes} volumes; fix the confounds")
    used = [c for c in wanted if c in table.columns]
    values = table[used].to_numpy(float)
    if np.isnan(values).any():  # fMRIPrep leaves n/a in the first row of derivatives
        notes.append(f"{f.name}: {int(np.isnan(values).sum())} n/a value(s) replaced by their column mean")
        values = np.where(np.isnan(values), np.nanmean(values, axis=0), values)
    return values, used, safe_relative(f, path.root)


_AXES = {"i": 0, "j": 1, "k": 2}


def slice_timing(name: str, sidecar: dict[str, Any], shape: tuple[int, ...], tr: float,
                 notes: list[str]) -> tuple[np.ndarray | None, int, dict[str, Any] | None]:
    """The sidecar's ``SliceTiming`` as acquisition times (s) in array order along the slice
    axis, that axis, and the manifest record; ``(None, axis, record)`` when the run is not to be
    corrected (the record then says why; ``None`` without any ``SliceTiming``)."""
    raw = sidecar.get("SliceTiming")
    if raw is None:
        return None, 2, None
    direction = str(sidecar.get("SliceEncodingDirection", "k"))

    def skip(reason: str) -> tuple[None, int, dict[str, Any]]:
        notes.append(f"{name}: {reason}; slice timing not corrected")
        return None, 2, {"corrected": False, "reason": reason}

    if sidecar.get("SliceTimingCorrected") is True:
        return None, 2, {"corrected": False, "reason": "SliceTimingCorrected is true in the sidecar"}
    if direction.rstrip("-") not in _AXES or len(direction) > 2:
        return skip(f"SliceEncodingDirection {direction!r} is not one of i, j, k, i-, j-, k-")
    axis = _AXES[direction[0]]
    try:
        times = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return skip("SliceTiming is not a list of numbers")
    if times.ndim != 1 or len(times) != shape[axis]:
        return skip(f"SliceTiming has {times.size} entries for {shape[axis]} slices along {direction[0]}")
    unit = "s"
    if times.max() >= tr and times.max() / 1000.0 < tr:
        notes.append(f"{name}: SliceTiming up to {times.max():g} exceeds the TR {tr:g} s; read as milliseconds")
        times, unit = times / 1000.0, "ms"
    if times.min() < 0 or times.max() >= tr:
        return skip(f"SliceTiming spans [{times.min():g}, {times.max():g}] s, outside [0, TR = {tr:g} s)")
    if direction.endswith("-"):  # BIDS: the first entry is the slice of the highest index
        times = times[::-1]
    record = {"corrected": True, "method": "fourier (mirror-extended)", "axis": direction,
              "reference_s": bold.slice_reference(times), "n_slices": int(len(times)), "source_unit": unit}
    return times, axis, record


# --------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------
def _voxels(path: FuncPath, img: nib.Nifti1Image, data: np.ndarray, preset: FmriPreset,
            notes: list[str]) -> tuple[np.ndarray, list[str], np.ndarray, dict[str, Any], dict[str, Any]]:
    """Voxel channels: series ``(C, T)``, names, world mm ``(C, 3)``, extra channel attrs, mask record."""
    finite = np.isfinite(data).all(axis=-1)
    n_bad = int((~finite).sum())
    if n_bad:
        notes.append(f"{path.fpath.name}: {n_bad} voxel(s) hold NaN or inf in some volume; left out of the mask")
    mean = np.where(finite, np.nan_to_num(data).mean(axis=-1), np.nan)
    explicit = path.root / preset.mask if preset.mask else next(
        (f for f in (path.sibling("desc-brain_mask.nii.gz"), path.sibling("desc-brain_mask.nii")) if f.exists()), None)
    if explicit is not None:
        m_img = nib.load(explicit)
        mask = bold.atlas_on_grid(np.asarray(m_img.dataobj) > 0, m_img.affine, data.shape, img.affine) > 0
        record = {"kind": "explicit", "file": safe_relative(explicit, path.root)}
    else:
        mask = bold.intensity_mask(mean, preset.mask_fraction)
        record = {"kind": "intensity", "fraction": preset.mask_fraction,
                  "percentile": bold.INTENSITY_PERCENTILE}
    mask &= finite
    ijk = np.argwhere(mask)  # (C, 3), C order: x fastest last
    if not len(ijk):
        raise ConversionError(f"{path.fpath.name}: the mask holds no voxel; check the mask or mask_fraction")
    record["n_voxels"] = int(len(ijk))
    series = data[mask].astype(np.float64)  # (C, T)
    names = [f"v{i}-{j}-{k}" for i, j, k in ijk]
    return series, names, bold.world_mm(img.affine, ijk), {}, record  # names hold the indices


def _rois(path: FuncPath, img: nib.Nifti1Image, data: np.ndarray, preset: FmriPreset,
          notes: list[str]) -> tuple[np.ndarray, list[str], np.ndarray, dict[str, Any], dict[str, Any]]:
    """ROI channels: mean per atlas label, its name and world centroid."""
    atlas_path, labels_path = path.root / preset.atlas, path.root / preset.atlas_labels
    for f in (atlas_path, labels_path):
        if not f.exists():
            raise ConversionError(f"the preset's atlas file {f} does not exist")
    a_img = nib.load(atlas_path)
    table = pd.read_csv(labels_path, sep="\t")
    if not {"index", "name"} <= set(table.columns):
        raise ConversionError(f"{labels_path.name} needs the columns index and name (BIDS dseg.tsv)")
    table = table[table["index"] > 0]
    labels = bold.atlas_on_grid(np.asarray(a_img.dataobj).astype(np.int64), a_img.affine, data.shape, img.affine)
    finite = np.isfinite(data).all(axis=-1)
    if (~finite & (labels > 0)).any():
        notes.append(f"{path.fpath.name}: {int((~finite & (labels > 0)).sum())} labelled voxel(s) hold NaN or inf; "
                     "left out of their ROI means")
    ids = table["index"].to_numpy(np.int64)
    means, counts = bold.roi_means(data, labels, ids, finite)
    keep = counts > 0
    if not keep.all():
        gone = table["name"].to_numpy(str)[~keep]
        notes.append(f"{path.fpath.name}: {len(gone)} atlas label(s) cover no voxel of the run: {', '.join(gone[:10])}")
    if not keep.any():
        raise ConversionError(f"{path.fpath.name}: no atlas label covers a voxel of the run; is the atlas in its space?")
    centroids = bold.roi_centroids(labels, ids[keep], finite, img.affine)
    record = {"kind": "atlas", "file": preset.atlas, "labels": preset.atlas_labels}
    extra = {"label_index": ids[keep].tolist(), "n_voxels": counts[keep].tolist()}
    return means[keep], list(table["name"].astype(str).to_numpy()[keep]), centroids, extra, record


def _roi_table(path: FuncPath, sidecar: dict[str, Any]
               ) -> tuple[np.ndarray, list[str], np.ndarray, dict[str, Any], dict[str, Any]]:
    """An ROI-level TSV run: columns are ROIs; centroids from the sidecar's ``ROICentroids`` (mm)."""
    table = pd.read_csv(path.fpath, sep="\t", na_values=["n/a"])
    if table.empty or table.shape[1] == 0:
        raise ConversionError(f"{path.fpath.name} holds no ROI columns")
    series = table.to_numpy(np.float64).T  # (R, T)
    if not np.isfinite(series).all():
        raise ConversionError(f"{path.fpath.name}: NaN or n/a values in the ROI time series")
    names = [str(c) for c in table.columns]
    cent = sidecar.get("ROICentroids")
    pos = np.full((len(names), 3), np.nan) if cent is None else np.asarray(cent, dtype=np.float64)
    if pos.shape != (len(names), 3):
        raise ConversionError(f"{path.fpath.name}: ROICentroids must hold one [x, y, z] (mm) per column")
    return series, names, pos, {}, {"kind": "table"}


def convert_func_recording(bids_root: str, path: FuncPath, store_url: str, preset: FmriPreset,
                           checksum: str) -> dict[str, Any]:
    """Convert one BOLD run (runs in a worker). Returns a result dict like
    :func:`brainfm.pipelines.convert.convert_recording`, never raises."""
    rid, source = path.recording_id, str(path.fpath)
    try:
        source = safe_relative(path.fpath, Path(bids_root))
        source_files(path, preset)  # again here: the files may have changed since the driver's check
        notes: list[str] = []
        sidecar = _sidecar(path.fpath.with_name(path.recording_id + ".json"))
        img = None
        if path.kind == "nifti":
            img, data = load_nifti(path.fpath)
            tr, tr_source = repetition_time(path.fpath.name, sidecar, img.header, notes)
            times, axis, stc = slice_timing(path.fpath.name, sidecar, data.shape, tr, notes)
            if times is not None and getattr(preset, "slice_timing", True):
                finite = np.isfinite(data).all(axis=-1, keepdims=True)  # NaN voxels stay NaN (masked out later)
                data = np.where(finite, bold.slice_time_correct(np.where(finite, data, 0.0), times, tr, axis), data)
            elif times is not None:
                stc = {"corrected": False, "reason": "the preset turns slice-timing correction off"}
            pick = _rois if preset.representation == "roi" else _voxels
            series, names, pos_mm, extra, mask = pick(path, img, data, preset, notes)
            signal_units = "raw"
        else:
            tr, tr_source = repetition_time(path.fpath.name, sidecar, None, notes)
            stc = None
            if sidecar.get("SliceTiming") is not None:
                notes.append(f"{path.fpath.name}: SliceTiming on an ROI table (already averaged over slices); "
                             "slice timing not corrected")
                stc = {"corrected": False, "reason": "ROI-table run"}
            series, names, pos_mm, extra, mask = _roi_table(path, sidecar)
            signal_units = "percent" if str(sidecar.get("Units", "")).lower() in ("percent", "%", "psc") else "raw"
        n = series.shape[1]
        confounds, used, conf_file = read_confounds(path, preset.confounds, n, notes)
        x = bold.design(n, tr, preset.detrend, preset.high_pass, confounds)
        regressors = {"detrend": preset.detrend, "n_cosines": bold.n_cosines(n, tr, preset.high_pass),
                      "high_pass": preset.high_pass, "confounds": used, "confounds_file": conf_file}
        if n - x.shape[1] < bold.MIN_DOF:
            notes.append(f"{path.fpath.name}: {n} volumes are too few for {x.shape[1]} regressors; "
                         "cleaned with the mean only (no detrending, high-pass or confounds)")
            x = np.ones((n, 1))
            regressors = {"detrend": 0, "n_cosines": 0, "high_pass": None, "confounds": [], "confounds_file": None}
        units = preset.units if not (signal_units == "percent" and preset.units == "psc") else "percent"
        if units == "psc" and (series.mean(axis=1) <= 0).all():
            raise ConversionError(f"{path.fpath.name}: no channel has a positive mean, so percent signal change "
                                  "is undefined; declare \"Units\": \"percent\" in the sidecar or use units='z'")
        cleaned, ok = bold.clean(series, x, units)
        flags = {name: ["flat"] for name, good in zip(names, ok) if not good}
        if not ok.any():
            raise ConversionError(f"{path.fpath.name}: every channel is constant or has no positive mean; nothing to store")
        if flags:
            notes.append(f"{len(flags)} channel(s) flagged flat: {', '.join(list(flags)[:10])}")
        loc = np.zeros((len(names), 12))
        loc[:, :3] = pos_mm / 1000.0  # mm -> m, the SensorSpec unit
        stored_units = "%" if units in ("psc", "percent") else "z"
        spec = SensorSpec(names, ["bold"] * len(names), loc, 1.0 / tr, [stored_units] * len(names))
        space = space_of(path, img, sidecar)
        bold_attrs = {
            "representation": "roi" if preset.representation == "roi" or path.kind == "roi" else "voxel",
            "units": "percent signal change" if stored_units == "%" else "z within run",
            "tr": tr, "tr_source": tr_source, "n_volumes": n, "slice_timing": sidecar.get("SliceTiming"),
            "slice_timing_corrected": bool(stc and stc["corrected"]), "slice_timing_correction": stc,
            "space": space, "position_unit": "m (world mm / 1000)",
            "affine": None if img is None else np.asarray(img.affine).tolist(), "mask": mask,
            "regressors": regressors, "source_units": signal_units,
        }
        positioned = np.isfinite(pos_mm).all(axis=1)
        attrs = {
            "subject": path.subject, "session": path.session, "task": path.task, "run": path.run,
            "datatype": "func", "source": source, "source_sha256": checksum, "preset_hash": preset.hash,
            "positions": ("recorded" if positioned.all() else "partial-recorded") if positioned.any() else "none",
            "filters": {"sfreq": 1.0 / tr, "l_freq": regressors["high_pass"], "h_freq": None, "notch": None,
                        "line_freq": None, "detrend": regressors["detrend"]},
            "line_freq": None, "first_time": 0.0, "bold": bold_attrs, "dropped_channels": {},
        }
        entry = write_recording(store_url, rid, cleaned, spec, attrs, events=read_events(path),
                                chunk_seconds=preset.chunk_seconds, extra_channel_attrs=extra,
                                quality={"flags": flags, "warnings": notes})
        entry["bold"] = {k: bold_attrs[k] for k in ("representation", "units", "tr", "space")}
        entry["bold"]["regressors"] = regressors
        entry["bold"]["slice_timing"] = stc
        return {"ok": True, "id": rid, "entry": entry, "warnings": notes}
    except Exception as err:  # noqa: BLE001 - reported, the run goes on
        msg = str(err) if isinstance(err, ConversionError) else f"{type(err).__name__}: {short(err)}"
        return {"ok": False, "id": rid, "source": source, "error": msg}
