"""Conversion time: brainfm ``convert`` vs braindecode ``preprocess(save_dir=...)`` on EEGMAT.

Both read the same EEGMAT BIDS dataset (72 EDF recordings) and apply the same MNE
operations (see ``_eegmat.py``). brainfm runs with 1 and 2 Dask workers; braindecode
with its default ``n_jobs=1`` (the anchor the issue names) and, for reference, 2.
Also measures the stored signal's largest relative reconstruction error against the
float32 preprocessed signal, on every recording.

Usage::

    python benchmarks/bench_convert.py [--subjects 36] [--workdir DIR] [--json out.json]
    python benchmarks/bench_convert.py --copies 4 --json scaling.json   # issue #15 item 3

``--copies K`` converts the dataset K times over, each copy under new subject IDs
(``sub-eegmat00c1`` ...; EDF files hard-linked, sidecars rewritten), so that worker start-up
is amortised and the 1 -> 2 worker scaling is that of the conversion itself.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _eegmat import braindecode_preprocess, eegmat_bids, repeat_bids, report, row

from brainfm.data.store import ShardStore
from brainfm.pipelines.bids_io import discover, read_raw, recording_id
from brainfm.pipelines.convert import convert
from brainfm.pipelines.presets import get_preset
from brainfm.pipelines.preprocess import preprocess, to_physical_units


def time_brainfm(bids: Path, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rep = convert(bids, out, workers=workers, progress=False)
    assert rep.ok, rep.failed
    return time.perf_counter() - t0


def time_braindecode(bids: Path, out: Path, n_jobs: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    braindecode_preprocess(bids, out, n_jobs=n_jobs)
    return time.perf_counter() - t0


def max_reconstruction_error(bids: Path, store_url: Path) -> tuple[float, float]:
    """(max relative error where |x| > 1 µV, max absolute error in µV) over all recordings."""
    store, preset = ShardStore(store_url), get_preset("eeg-fm")
    rel, absolute = 0.0, 0.0
    for bp in discover(bids):
        raw, _ = read_raw(bp)
        raw = preprocess(raw, preset)[0]
        x, _ = to_physical_units(raw)
        y = store.recording(recording_id(bp)).read_all()
        err = np.abs(y - x)
        big = np.abs(x) > 1.0
        rel = max(rel, float((err[big] / np.abs(x[big])).max()))
        absolute = max(absolute, float(err.max()))
    return rel, absolute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=36, help="EEGMAT subjects 0..N-1 (2 recordings each)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--copies", type=int, default=1, help="convert the dataset this many times over (new subject IDs)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="brainfm-bench-"))
    bids = eegmat_bids(work, range(args.subjects))
    if args.copies > 1:
        bids = repeat_bids(bids, work / f"eegmat_bids_x{args.copies}", args.copies)
    n = len(discover(bids))
    print(f"EEGMAT: {n} recordings under {bids}")

    t_bd1 = time_braindecode(bids, work / "bd_fif", 1)
    t_bd2 = time_braindecode(bids, work / "bd_fif_2", 2)
    t_bf1 = time_brainfm(bids, work / "store_1", 1)
    t_bf2 = time_brainfm(bids, work / "store", 2)
    print(f"times (s): braindecode n_jobs=1 {t_bd1:.1f}, n_jobs=2 {t_bd2:.1f}; brainfm 1 worker {t_bf1:.1f}, "
          f"2 workers {t_bf2:.1f}", flush=True)
    rel, absolute = max_reconstruction_error(bids, work / "store")
    print(f"stored signal: max relative error {rel:.3g} (|x| > 1 uV), max absolute error {absolute:.3g} uV")
    rows = [
        row(f"convert EEGMAT x{args.copies}, brainfm 2 workers vs bd n_jobs=1", "rec/s", n / t_bf2, n / t_bd1),
        row("convert EEGMAT, brainfm 2 workers vs bd n_jobs=2", "rec/s", n / t_bf2, n / t_bd2),
        row("convert EEGMAT, brainfm 1 worker vs bd n_jobs=1", "rec/s", n / t_bf1, n / t_bd1),
        row("brainfm scaling 1 -> 2 workers", "x", t_bf1 / t_bf2, 1.0),
        row("max relative reconstruction error", "rel", rel, 2.0**-11, higher_is_better=False),
    ]
    report(rows, "braindecode", args.json)


if __name__ == "__main__":
    main()
