"""Random-window throughput and disk footprint: brainfm shard store vs braindecode lazy windows.

Both sides hold the same preprocessed EEGMAT signal (see ``_eegmat.py``): brainfm as
its Zarr store, braindecode as FIF saved by ``preprocess(save_dir=...)`` and loaded
lazily (``load_concat_dataset(preload=False)`` + ``create_fixed_length_windows``).
An epoch visits every 5-s window once, in a seeded random order. Each mode reports
the first epoch from cold in-process caches (new dataset, new worker processes; the
files themselves are in the OS page cache for both sides) and the mean of the next
``--epochs`` epochs (steady state, what a training run sees):

* single process, map-style ``dataset[i]``;
* DataLoader with ``--workers`` persistent worker processes, batch 64, shuffle;
* brainfm's pretraining path, :class:`~brainfm.data.ShuffledWindows` (block reads +
  shuffle buffer), against the same braindecode DataLoader.

Usage::

    python benchmarks/bench_loader.py [--subjects 36] [--workers 2] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _eegmat import braindecode_preprocess, dir_bytes, eegmat_bids, report, row
from torch.utils.data import DataLoader

from brainfm.data import FixedWindows, ShuffledWindows, collate_windows
from brainfm.data.store import CHUNK_CACHE
from brainfm.pipelines.convert import convert

WINDOW_S = 5.0


def _epochs_map(ds, epochs: int) -> tuple[float, float]:
    """(cold, steady) windows/s of random map-style access, one process."""
    rates = []
    for e in range(1 + epochs):
        order = np.random.default_rng(e).permutation(len(ds))
        t0 = time.perf_counter()
        for i in order:
            ds[int(i)]
        rates.append(len(order) / (time.perf_counter() - t0))
    return rates[0], float(np.mean(rates[1:]))


def _epochs_loader(loader, n: int, epochs: int) -> tuple[float, float]:
    """(cold, steady) windows/s through a DataLoader; the cold epoch includes worker start."""
    rates = []
    for _ in range(1 + epochs):
        t0 = time.perf_counter()
        seen = sum(len(b["x"] if isinstance(b, dict) else b[0]) for b in loader)
        assert seen == n, (seen, n)
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], float(np.mean(rates[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=36)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="steady-state epochs after the cold one")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="brainfm-bench-"))
    bids = eegmat_bids(work, range(args.subjects))
    store = work / "store"
    if not (store / "manifest.json").exists():
        convert(bids, store, workers=args.workers, progress=False)
    fif = work / "bd_fif"
    if not fif.exists():
        fif.mkdir(parents=True)
        braindecode_preprocess(bids, fif)

    from braindecode.datautil import load_concat_dataset
    from braindecode.preprocessing import create_fixed_length_windows

    win = int(WINDOW_S * 200)
    bd = create_fixed_length_windows(
        load_concat_dataset(str(fif), preload=False), window_size_samples=win,
        window_stride_samples=win, on_last_window="drop", preload=False,
    )
    CHUNK_CACHE.__init__()
    ours = FixedWindows(str(store), WINDOW_S)
    assert len(ours) == len(bd), (len(ours), len(bd))
    n = len(ours)
    print(f"{n} windows of {WINDOW_S} s")

    rows = []
    e = args.epochs
    bd_cold, bd_steady = _epochs_map(bd, e)
    CHUNK_CACHE.__init__()
    bf_cold, bf_steady = _epochs_map(ours, e)
    rows.append(row("random windows, 1 process, cold epoch", "windows/s", bf_cold, bd_cold))
    rows.append(row("random windows, 1 process, steady", "windows/s", bf_steady, bd_steady))

    w = args.workers
    common = dict(batch_size=64, num_workers=w, persistent_workers=True)
    bd_cold, bd_steady = _epochs_loader(DataLoader(bd, shuffle=True, **common), n, e)
    CHUNK_CACHE.__init__()
    loader = DataLoader(FixedWindows(str(store), WINDOW_S), shuffle=True, collate_fn=collate_windows, **common)
    bf_cold, bf_steady = _epochs_loader(loader, n, e)
    rows.append(row(f"random windows, DataLoader {w} workers, cold", "windows/s", bf_cold, bd_cold))
    rows.append(row(f"random windows, DataLoader {w} workers, steady", "windows/s", bf_steady, bd_steady))
    shuffled = DataLoader(ShuffledWindows(str(store), WINDOW_S, seed=0), collate_fn=collate_windows, **common)
    sh_cold, sh_steady = _epochs_loader(shuffled, n, e)
    rows.append(row(f"ShuffledWindows {w} workers, cold", "windows/s", sh_cold, bd_cold))
    rows.append(row(f"ShuffledWindows {w} workers, steady", "windows/s", sh_steady, bd_steady))

    store_bytes = dir_bytes(store / "recordings")
    fif_bytes = dir_bytes(fif, "*.fif")
    rows.append(row("disk footprint", "MiB", store_bytes / 2**20, fif_bytes / 2**20, higher_is_better=False))
    report(rows, "braindecode", args.json)


if __name__ == "__main__":
    main()
