"""Random-window throughput and disk footprint: brainfm shard store vs braindecode lazy windows.

Both sides hold the same preprocessed EEGMAT signal (see ``_eegmat.py``): brainfm as
its Zarr store, braindecode as FIF saved by ``preprocess(save_dir=...)`` and loaded
lazily (``load_concat_dataset(preload=False)`` + ``create_fixed_length_windows``).
Each measurement visits every 5-s window once, in a seeded random order, starting
from cold in-process caches:

* single process, map-style ``dataset[i]``;
* DataLoader with ``--workers`` worker processes, batch 64, shuffle;
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


def _epoch_map(ds, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(ds))
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    return len(order) / (time.perf_counter() - t0)


def _epoch_loader(loader, n: int) -> float:
    t0 = time.perf_counter()
    seen = sum(len(b["x"] if isinstance(b, dict) else b[0]) for b in loader)
    assert seen == n, (seen, n)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=36)
    ap.add_argument("--workers", type=int, default=2)
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
        window_stride_samples=win, drop_last_window=True, preload=False,
    )
    CHUNK_CACHE.__init__()
    ours = FixedWindows(str(store), WINDOW_S)
    assert len(ours) == len(bd), (len(ours), len(bd))
    n = len(ours)
    print(f"{n} windows of {WINDOW_S} s")

    rows = []
    bd_single = _epoch_map(bd)
    CHUNK_CACHE.__init__()
    bf_single = _epoch_map(ours)
    rows.append(row("random windows, 1 process", "windows/s", bf_single, bd_single))

    w = args.workers
    bd_loader = DataLoader(bd, batch_size=64, shuffle=True, num_workers=w)
    bd_multi = _epoch_loader(bd_loader, n)
    CHUNK_CACHE.__init__()
    bf_loader = DataLoader(FixedWindows(str(store), WINDOW_S), batch_size=64, shuffle=True, num_workers=w,
                           collate_fn=collate_windows)
    bf_multi = _epoch_loader(bf_loader, n)
    rows.append(row(f"random windows, DataLoader {w} workers", "windows/s", bf_multi, bd_multi))
    shuffled = DataLoader(ShuffledWindows(str(store), WINDOW_S, seed=0), batch_size=64, num_workers=w,
                          collate_fn=collate_windows)
    bf_shuffled = _epoch_loader(shuffled, n)
    rows.append(row(f"ShuffledWindows vs bd DataLoader, {w} workers", "windows/s", bf_shuffled, bd_multi))

    store_bytes = dir_bytes(store / "recordings")
    fif_bytes = dir_bytes(fif, "*.fif")
    rows.append(row("disk footprint", "MiB", store_bytes / 2**20, fif_bytes / 2**20, higher_is_better=False))
    report(rows, "braindecode", args.json)


if __name__ == "__main__":
    main()
