"""fMRI conversion: brainfm ``convert`` against a plain nibabel + numpy ``.npy`` pipeline.

Data: the real NIfTI runs of the fMRI sample (nitime ``fmri1`` and ``fmri2``, 10×10×18×40;
nibabel ``example4d``, 128×96×24×2), each copied ``--copies`` times as separate subjects of one
BIDS dataset, so there are enough runs to time. The anchor, per run:

* **raw load-and-save**: ``nib.load``, the 4-D array as float32, ``np.save`` (no preprocessing);
* **with preprocessing**: the same load, then the same maths as brainfm's ``fmri-voxel``
  preset (intensity mask, one regression of Legendre trend and cosine high-pass, percent
  signal change, from :mod:`brainfm.pipelines.bold`), and ``np.save`` of the ``(C, T)``
  series plus the ``(C, 3)`` voxel positions, in float32 (what a plain script writes) and in
  float16 (brainfm's precision).

brainfm: ``convert(bids, store, "fmri-voxel", workers=1)`` (in-process, no Dask cluster),
which also hashes every source file, writes events, channel tables, the manifest and a
report, into a fresh store each repeat. brainfm and the anchors run interleaved in each
repeat, in rotating order; times are the median over ``--repeats`` with the min-max range.

Rows for the nitime runs alone (1784 and 1792 voxels) separate the per-run cost from that of
``example4d``'s 103,809-voxel channel table.

Usage::

    python benchmarks/bench_fmri_convert.py [--copies 4] [--repeats 5] [--json out.json]

Rows are ``{"name", "unit", "brainfm", "anchor", "ratio"}``; ratio > 1 means brainfm better.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from brainfm.data.store import ShardStore
from brainfm.pipelines import bold
from brainfm.pipelines.bids_func import discover
from brainfm.pipelines.convert import convert
from brainfm.pipelines.fmri_sample import NITIME_TR, fmri_dir
from brainfm.pipelines.presets import get_preset

RUNS = {"fmri1.nii.gz": NITIME_TR, "fmri2.nii.gz": NITIME_TR, "example4d.nii.gz": 2.0}


def make_bids(dest: Path, copies: int, files: tuple[str, ...] = tuple(RUNS)) -> Path:
    """A BIDS dataset of the real NIfTI runs ``files``, each ``copies`` times (sub-<file><copy>)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / "dataset_description.json").write_text(json.dumps({"Name": "fmri convert bench", "BIDSVersion": "1.9.0"}))
    for fname in files:
        tr = RUNS[fname]
        for c in range(copies):
            sub = f"{fname.split('.')[0]}c{c}"
            func = dest / f"sub-{sub}" / "func"
            func.mkdir(parents=True)
            shutil.copyfile(fmri_dir() / fname, func / f"sub-{sub}_task-rest_bold.nii.gz")
            (func / f"sub-{sub}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": tr}))
    return dest


def anchor(bids: Path, out: Path, preprocess: bool, dtype=np.float32) -> float:
    """The plain pipeline over every run of ``bids``; returns seconds."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    preset = get_preset("fmri-voxel")
    t0 = time.perf_counter()
    for run in discover(bids):
        img = nib.load(run.fpath)
        data = np.asarray(img.dataobj, dtype=np.float32)  # (X, Y, Z, T)
        name = run.recording_id
        if not preprocess:
            np.save(out / f"{name}.npy", data)
            continue
        tr = json.loads(run.fpath.with_name(name + ".json").read_text())["RepetitionTime"]
        mask = bold.intensity_mask(data.mean(axis=-1), preset.mask_fraction)
        series = data[mask].astype(np.float64)  # (C, T)
        n = series.shape[1]
        x = bold.design(n, tr, preset.detrend, preset.high_pass)
        if n - x.shape[1] < bold.MIN_DOF:
            x = np.ones((n, 1))
        cleaned, _ = bold.clean(series, x, "psc")
        np.save(out / f"{name}.npy", cleaned.astype(dtype))
        np.save(out / f"{name}_pos.npy", bold.world_mm(img.affine, np.argwhere(mask)).astype(dtype))
    return time.perf_counter() - t0


def brainfm(bids: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = convert(bids, out, "fmri-voxel", workers=1, progress=False, wait=None)
    dt = time.perf_counter() - t0
    if not report.ok:
        raise RuntimeError(f"brainfm conversion failed: {report.failed}")
    return dt


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_times(store: Path, npy: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds to read every run back: the store (``read_all``) and the preprocessed ``.npy``."""
    s = ShardStore(store)
    ids = s.recording_ids
    bf, an = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for rid in ids:
            ShardStore(store).recording(rid).read_all()  # a fresh handle: no cached chunks
        bf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for rid in ids:
            np.load(npy / f"{rid}.npy")
            np.load(npy / f"{rid}_pos.npy")
        an.append(time.perf_counter() - t0)
    return bf, an


def row(name: str, unit: str, brainfm_value: float, anchor_value: float, higher_is_better: bool,
        spread: str = "") -> dict:
    ratio = brainfm_value / anchor_value if higher_is_better else anchor_value / brainfm_value
    out = {"name": name, "unit": unit, "brainfm": brainfm_value, "anchor": anchor_value, "ratio": ratio}
    if spread:
        out["spread"] = spread
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="brainfm-fmri-bench-"))
    bids = make_bids(work / "bids", args.copies)
    small = make_bids(work / "bids-nitime", args.copies, ("fmri1.nii.gz", "fmri2.nii.gz"))
    runs = discover(bids)
    n, n_small = len(runs), len(discover(small))
    volumes = sum(nib.load(r.fpath).shape[3] for r in runs)
    source = size(bids) - sum(f.stat().st_size for f in bids.rglob("*.json"))
    print(f"{n} NIfTI runs ({volumes} volumes, {source / 1e6:.2f} MB of .nii.gz) under {bids}; "
          f"{n_small} of them (nitime only) also alone")
    jobs = {"brainfm": lambda: brainfm(bids, work / "store"),
            "npy raw": lambda: anchor(bids, work / "npy_raw", preprocess=False),
            "npy prep f32": lambda: anchor(bids, work / "npy_prep", preprocess=True),
            "npy prep f16": lambda: anchor(bids, work / "npy_prep16", preprocess=True, dtype=np.float16),
            "brainfm nitime": lambda: brainfm(small, work / "store_nitime"),
            "npy prep nitime": lambda: anchor(small, work / "npy_prep_nitime", preprocess=True)}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    names = list(jobs)
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:  # rotate the order each repeat
            times[k].append(jobs[k]())
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: f"{min(v):.3g}-{max(v):.3g} s" for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<16} median {med[k]:.3f} s  range {spread[k]}  ({', '.join(f'{x:.3f}' for x in v)})")
    sizes = {k: size(work / d) for k, d in (("brainfm", "store"), ("npy raw", "npy_raw"), ("npy prep f32", "npy_prep"),
                                             ("npy prep f16", "npy_prep16"), ("brainfm nitime", "store_nitime"),
                                             ("npy prep nitime", "npy_prep_nitime"))}
    print("sizes (MB): " + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sizes.items()) + f", source {source / 1e6:.2f}")
    read_bf, read_an = read_times(work / "store", work / "npy_prep", args.repeats)
    rows = [
        row("convert with preprocessing vs npy (same maths, f32)", "runs/s", n / med["brainfm"],
            n / med["npy prep f32"], True, f"brainfm {spread['brainfm']}; anchor {spread['npy prep f32']}"),
        row("convert with preprocessing vs npy raw load-and-save", "runs/s", n / med["brainfm"],
            n / med["npy raw"], True, f"anchor {spread['npy raw']}"),
        row("output size vs preprocessed npy float32", "MB", sizes["brainfm"] / 1e6, sizes["npy prep f32"] / 1e6,
            False),
        row("output size vs preprocessed npy float16", "MB", sizes["brainfm"] / 1e6, sizes["npy prep f16"] / 1e6,
            False),
        row("output size vs raw 4-D npy float32", "MB", sizes["brainfm"] / 1e6, sizes["npy raw"] / 1e6, False),
        row("nitime runs only: convert with preprocessing", "runs/s", n_small / med["brainfm nitime"],
            n_small / med["npy prep nitime"], True,
            f"brainfm {spread['brainfm nitime']}; anchor {spread['npy prep nitime']}"),
        row("nitime runs only: output size vs npy float32", "MB", sizes["brainfm nitime"] / 1e6,
            sizes["npy prep nitime"] / 1e6, False),
        row("read every run back vs np.load (prep f32)", "s", statistics.median(read_bf), statistics.median(read_an),
            False, f"brainfm {min(read_bf):.3g}-{max(read_bf):.3g} s; anchor {min(read_an):.3g}-{max(read_an):.3g} s"),
    ]
    print(f"\n{'metric':<54} {'unit':<7} {'brainfm':>9} {'npy':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['name']:<54} {r['unit']:<7} {r['brainfm']:>9.4g} {r['anchor']:>9.4g} {r['ratio']:>6.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
