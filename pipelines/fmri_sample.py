"""The fMRI part of ``brainfm sample-data``: a BIDS ``func`` dataset from the real files.

Built from ``fmri/`` under the data root (nitime's and nibabel's example data, BSD; fetched when
missing, :func:`brainfm.pipelines.fetch.fetch_fmri`) into
``DEST/fmri/bids``, then converted into two stores::

    DEST/fmri/bids/
      dataset_description.json
      atlas/atlas_dseg.nii.gz, atlas_dseg.tsv      a 150-parcel grid atlas on the nitime grid
      sub-nitime01/func/sub-nitime01_task-rest_bold.nii.gz (+ .json)      nitime fmri1
      sub-nitime02/func/sub-nitime02_task-rest_bold.nii.gz (+ .json)      nitime fmri2
      sub-nitimeroi/func/sub-nitimeroi_task-rest_atlas-nitime28_timeseries.tsv (+ .json)
                       sub-nitimeroi_task-rest_desc-confounds_timeseries.tsv
      sub-evrel/func/sub-evrel_task-events_atlas-single_timeseries.tsv (+ .json, _events.tsv)
      sub-example4d/func/sub-example4d_task-quirk_bold.nii.gz (+ .json)   nibabel example4d
    DEST/fmri/store       preset ``fmri-voxel``: every run (voxels; the TSV runs as ROIs)
    DEST/fmri/store-roi   preset ``fmri-roi``: the runs the grid atlas covers (not example4d)

========================  ==========================================================  ========
run                       content                                                     TR
========================  ==========================================================  ========
``nitime01``/``02``       nitime's ``fmri1``/``fmri2``: 10×10×18 voxels × 40 volumes,  1.35 s
                          two runs on one grid (treated as two "subjects"; nitime does
                          not say whether they are one person)
``nitimeroi``             nitime's ``fmri_timeseries.csv``: 28 ROI series × 250; its    1.89 s
                          WM, Vent and Brain columns become the fMRIPrep confounds
                          ``white_matter``, ``csf``, ``global_signal``
``evrel``                 nitime's ``event_related_fmri.csv``: one BOLD series × 3360,  2.0 s
                          its ``events`` column (6 event types, 96 each) as events.tsv
``example4d``             nibabel's ``example4d``: 128×96×24 × 2 volumes, header TR    2.0 s
                          "2000 s" (a ms value with a wrong unit): the quirk case
========================  ==========================================================  ========

The CSVs state no TR or unit. The TRs are those of nitime's own examples that use them
(``resting_state_fmri.py``: 1.89 s; ``event_related_fmri.py``: 2 s), and both CSVs are
mean-centred, so their sidecars declare ``"Units": "percent"`` (stored as given, cleaned by
the regression only). The grid atlas is a stand-in for a user's atlas (blocks of 2×2×3
voxels), not anatomy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from brainfm.pipelines import fetch
from brainfm.pipelines.convert import ConversionReport, convert

_MARKER = ".brainfm-fmri-sample.json"
VERSION = 1
#: TRs (s) of the CSV series, from nitime's examples (the files do not carry them).
ROI_TR, EVENTS_TR = 1.89, 2.0
NITIME_TR = 1.35
#: Grid atlas block (voxels) on the nitime grid.
ATLAS_BLOCK = (2, 2, 3)


def fmri_dir() -> Path:
    """``fmri/`` under the data root, its files fetched when missing and verified
    (:func:`brainfm.pipelines.fetch.fetch_fmri`)."""
    return fetch.fetch_fmri()


def _json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def grid_atlas(img: nib.Nifti1Image, block: tuple[int, int, int] = ATLAS_BLOCK) -> tuple[nib.Nifti1Image, pd.DataFrame]:
    """A block parcellation of ``img``'s grid (label 1.. in C order) and its dseg table."""
    shape = img.shape[:3]
    ijk = np.indices(shape)  # (3, X, Y, Z)
    cells = [int(np.ceil(s / b)) for s, b in zip(shape, block)]
    label = (ijk[0] // block[0]) * cells[1] * cells[2] + (ijk[1] // block[1]) * cells[2] + ijk[2] // block[2] + 1
    atlas = nib.Nifti1Image(label.astype(np.int16), img.affine)
    atlas.header.set_xyzt_units("mm")
    n = int(label.max())
    return atlas, pd.DataFrame({"index": np.arange(1, n + 1), "name": [f"grid{k:03d}" for k in range(1, n + 1)]})


def build_fmri_bids(dest: str | Path) -> Path:
    """Write the fMRI sample BIDS dataset to ``dest`` (atomically; reused when up to date)."""
    dest, src = Path(dest), fmri_dir()
    config = {"version": VERSION}
    if (dest / _MARKER).exists() and json.loads((dest / _MARKER).read_text()) == config:
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _json(tmp / "dataset_description.json", {"Name": "brainfm fMRI sample (nitime, nibabel)", "BIDSVersion": "1.9.0",
                                             "DatasetType": "raw", "License": "BSD-3-Clause"})
    for sub, name in (("nitime01", "fmri1"), ("nitime02", "fmri2")):
        func = tmp / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        shutil.copyfile(src / f"{name}.nii.gz", func / f"sub-{sub}_task-rest_bold.nii.gz")
        _json(func / f"sub-{sub}_task-rest_bold.json", {"RepetitionTime": NITIME_TR, "TaskName": "rest"})
    atlas, labels = grid_atlas(nib.load(src / "fmri1.nii.gz"))
    (tmp / "atlas").mkdir()
    nib.save(atlas, tmp / "atlas" / "atlas_dseg.nii.gz")
    labels.to_csv(tmp / "atlas" / "atlas_dseg.tsv", sep="\t", index=False)

    rois = pd.read_csv(src / "fmri_timeseries.csv")
    func = tmp / "sub-nitimeroi" / "func"
    func.mkdir(parents=True)
    nuisance = {"WM": "white_matter", "Vent": "csf", "Brain": "global_signal"}
    rois.drop(columns=list(nuisance)).to_csv(func / "sub-nitimeroi_task-rest_atlas-nitime28_timeseries.tsv",
                                             sep="\t", index=False)
    rois[list(nuisance)].rename(columns=nuisance).to_csv(func / "sub-nitimeroi_task-rest_desc-confounds_timeseries.tsv",
                                                         sep="\t", index=False)
    _json(func / "sub-nitimeroi_task-rest_atlas-nitime28_timeseries.json",
          {"RepetitionTime": ROI_TR, "Units": "percent", "TaskName": "rest",
           "Description": "nitime fmri_timeseries.csv: 28 ROI means as distributed (mean-centred)"})

    ev = pd.read_csv(src / "event_related_fmri.csv")
    func = tmp / "sub-evrel" / "func"
    func.mkdir(parents=True)
    ev[["bold"]].to_csv(func / "sub-evrel_task-events_atlas-single_timeseries.tsv", sep="\t", index=False)
    _json(func / "sub-evrel_task-events_atlas-single_timeseries.json",
          {"RepetitionTime": EVENTS_TR, "Units": "percent", "TaskName": "events",
           "Description": "nitime event_related_fmri.csv: one BOLD series as distributed (mean-centred)"})
    idx = np.flatnonzero(ev["events"].to_numpy() != 0)
    pd.DataFrame({"onset": idx * EVENTS_TR, "duration": 0.0,
                  "trial_type": [f"type{int(v)}" for v in ev["events"].to_numpy()[idx]]}).to_csv(
        func / "sub-evrel_task-events_events.tsv", sep="\t", index=False)

    func = tmp / "sub-example4d" / "func"
    func.mkdir(parents=True)
    shutil.copyfile(src / "example4d.nii.gz", func / "sub-example4d_task-quirk_bold.nii.gz")
    _json(func / "sub-example4d_task-quirk_bold.json", {"RepetitionTime": 2.0, "TaskName": "quirk"})
    (tmp / _MARKER).write_text(json.dumps(config))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def build_fmri_sample(dest: str | Path, progress: bool = False) -> tuple[dict[str, Path], list[ConversionReport]]:
    """Build ``dest/bids`` and convert it into ``dest/store`` (voxels) and ``dest/store-roi``
    (grid-atlas ROIs); one worker (the runs are small). Returns the stores and reports."""
    dest = Path(dest)
    bids = build_fmri_bids(dest / "bids")
    voxel = convert(bids, dest / "store", "fmri-voxel", workers=1, progress=progress, prune=True, wait=None)
    roi = convert(bids, dest / "store-roi", "fmri-roi", workers=1, progress=progress, prune=True, wait=None,
                  limit=lambda p: p.subject != "example4d")
    return {"voxel": dest / "store", "roi": dest / "store-roi"}, [voxel, roi]


__all__ = ["build_fmri_bids", "build_fmri_sample", "grid_atlas"]
