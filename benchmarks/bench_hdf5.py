"""Bringing an existing corpus: ``brainfm import-hdf5`` vs a full MNE conversion of the same recordings.

Anchor: ``brainfm convert`` (the ``eeg-fm`` preset, 1 worker: read the EDF with MNE, resample to
200 Hz, notch, band-pass 0.3-75 Hz, store) of EEGMAT as BIDS. brainfm side: the same recordings
already preprocessed, in a LaBraM-layout HDF5 file (``brainfm export-hdf5`` of the converted
store), imported with ``import_hdf5`` (no MNE preprocessing; positions, quality checks, checksums
and atomic writes as in conversion). Both run in this process, alternating, ``--repeats`` times
each, into a new store every time; rows use the median. The imported store is checked to hold
the converted signal bit for bit. Files are read from the page cache on both sides.

Usage::

    python benchmarks/bench_hdf5.py [--subjects 10] [--repeats 3] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _eegmat import dir_bytes, eegmat_bids, report, row

from brainfm.data.hdf5 import export_store
from brainfm.data.store import ShardStore
from brainfm.pipelines.bids_io import discover
from brainfm.pipelines.convert import convert
from brainfm.pipelines.hdf5_import import import_hdf5


def timed(fn, out: Path) -> float:
    """Seconds ``fn(out)`` takes, into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    fn(out)
    return time.perf_counter() - t0


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} [{min(times):.2f}-{max(times):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=10, help="EEGMAT subjects 0..N-1 (2 recordings each)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (alternating)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="brainfm-bench-hdf5-"))
    bids = eegmat_bids(work, range(args.subjects))
    n = len(discover(bids))
    print(f"EEGMAT: {n} recordings under {bids}", flush=True)

    def run_convert(out: Path) -> None:
        assert convert(bids, out, "eeg-fm", workers=1, progress=False).ok

    def run_import(out: Path) -> None:
        assert import_hdf5(h5, out, progress=False).ok

    converted, imported, h5 = work / "converted", work / "imported", work / "eegmat.h5"
    run_convert(converted)  # warm-up: MNE's and Zarr's imports and caches
    t0 = time.perf_counter()
    export_store(converted, h5, overwrite=True)
    t_export = time.perf_counter() - t0
    run_import(imported)
    t_convert, t_import = [], []
    for _ in range(args.repeats):
        t_convert.append(timed(run_convert, converted))
        t_import.append(timed(run_import, imported))
    print(f"times (s), median [min-max] of {args.repeats}: convert {spread(t_convert)}, import-hdf5 {spread(t_import)}; "
          f"export-hdf5 once {t_export:.2f}", flush=True)

    a, b = ShardStore(converted), ShardStore(imported)
    identical = a.recording_ids == b.recording_ids and all(
        np.array_equal(a.recording(r).read_all(), b.recording(r).read_all()) for r in a.recording_ids)
    samples = sum(e["n_channels"] * e["n_samples"] for e in b.manifest["recordings"].values())
    store_mb, h5_mb = dir_bytes(imported / "recordings") / 1e6, h5.stat().st_size / 1e6
    print(f"imported store holds the converted signal bit for bit: {identical}; {samples / 1e6:.1f} M stored samples; "
          f"HDF5 file {h5_mb:.1f} MB, store signal {store_mb:.1f} MB")
    mc, mi = statistics.median(t_convert), statistics.median(t_import)
    rows = [
        row("store EEGMAT: import-hdf5 vs convert, 1 process", "rec/s", n / mi, n / mc),
        row("stored samples per second, same runs", "Msamples/s", samples / mi / 1e6, samples / mc / 1e6),
        row("on disk: store signal vs the HDF5 file (float32)", "MB", store_mb, h5_mb, higher_is_better=False),
    ]
    report(rows, "anchor", args.json)
    if not identical:
        raise SystemExit("the imported store differs from the converted one")


if __name__ == "__main__":
    main()
