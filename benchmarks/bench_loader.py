"""Random-window throughput and disk footprint: brainfm shard store vs braindecode lazy windows.

Both sides hold the same preprocessed EEGMAT signal (see ``_eegmat.py``): brainfm as
its Zarr store, braindecode as FIF saved by ``preprocess(save_dir=...)`` and loaded
lazily (``load_concat_dataset(preload=False)`` + ``create_fixed_length_windows``).
An epoch visits every 5-s window once, in a seeded random order.

**Cold** epochs are honest: before each one, both sides get fresh datasets, fresh worker
processes, empty in-process caches, and every file of the store and of the FIF set is
dropped from the OS page cache (``fsync`` + ``posix_fadvise(DONTNEED)``, checked with
``mincore``; ``_pagecache.py``). The cold modes run ``--repeats`` times, brainfm and
braindecode alternating, and the table gives the median with the range (the machine's
cores are shared, so single timings are noise). **Steady** is the mean of ``--epochs``
further epochs after the first repeat's cold one (files and decoded chunks cached):

* single process, map-style ``dataset[i]``;
* single process, DataLoader batch 64 (no workers): brainfm reads the chunks a batch
  needs concurrently (``__getitems__``);
* DataLoader with ``--workers`` worker processes, batch 64, shuffle;
* brainfm's pretraining path, :class:`~brainfm.data.ShuffledWindows` (block reads with
  read-ahead + shuffle buffer), against the same braindecode DataLoader.

``--formats`` measures brainfm's format 3 against a format-2 copy of the same store (cold,
alternating), which separates the on-disk change from the rest. ``--s3`` measures brainfm
alone on an S3 API served on loopback (moto, in its own process) next to the same store on
local disk: windows/s and bytes/s for each mode, the latency of one small GET and the raw GET
rate at several concurrencies, which bounds the rest (``docs/storage.md``).

Usage::

    python benchmarks/bench_loader.py [--subjects 36] [--workers 2] [--repeats 5] [--workdir DIR] [--json out.json]
    python benchmarks/bench_loader.py --copies 4 [--repeats 5] [--workdir DIR] [--json x4.json]
    python benchmarks/bench_loader.py --formats [--repeats 5] [--workdir DIR] [--json formats.json]
    python benchmarks/bench_loader.py --s3 [--threads 1 4 8 16] [--workdir DIR] [--json s3.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import fsspec
import numpy as np
import torch
from _eegmat import braindecode_preprocess, dir_bytes, eegmat_bids, repeat_bids, report, row
from _pagecache import drop_page_cache, files_under, resident_bytes
from torch.utils.data import DataLoader

from brainfm.data import FixedWindows, ShuffledWindows, collate_windows, shard_codec
from brainfm.data.store import CHUNK_CACHE, FORMAT_VERSION, read_manifest
from brainfm.data.store_lock import store_lock
from brainfm.data.store_write import rewrite_recording, upgrade_store
from brainfm.pipelines.convert import convert

WINDOW_S = 5.0
BATCH = 64


def _map_epoch(ds, seed: int) -> float:
    """Windows/s of random map-style access ``ds[i]``, one process."""
    order = np.random.default_rng(seed).permutation(len(ds))
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    return len(order) / (time.perf_counter() - t0)


def _loader_epoch(loader, n: int) -> float:
    """Windows/s of one pass over a DataLoader (including worker start when they are new)."""
    t0 = time.perf_counter()
    seen = sum(len(b["x"] if isinstance(b, dict) else b[0]) for b in loader)
    assert seen == n, (seen, n)
    return n / (time.perf_counter() - t0)


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):8.0f} [{min(values):.0f}-{max(values):.0f}]"


class _Zeros(torch.utils.data.Dataset):
    """``n`` windows of zeros, the shape of the benchmark's: what a DataLoader costs by itself."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(19, int(WINDOW_S * 200))


def _zeros_epoch(n: int, workers: int, repeats: int = 3) -> float:
    """Median seconds of an epoch of :class:`_Zeros` with fresh ``workers`` (start-up and
    batch transfer between processes, no reading): the floor under every loader row."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _batch in DataLoader(_Zeros(n), batch_size=BATCH, shuffle=True, num_workers=workers):
            pass
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cold_row(name: str, bf: list[float], bd: list[float]) -> dict:
    out = row(name, "windows/s", statistics.median(bf), statistics.median(bd))
    out["runs"] = {"brainfm": [round(v, 1) for v in bf], "anchor": [round(v, 1) for v in bd]}
    return out


def _prepare(args) -> tuple[Path, Path, Path]:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="brainfm-bench-"))
    bids = eegmat_bids(work, range(args.subjects))
    copies = args.copies
    if copies > 1:  # a longer epoch over real files: K copies of every subject, new IDs
        work = work / f"x{copies}"
        if not (work / "eegmat_bids").exists():
            work.mkdir(parents=True, exist_ok=True)
            repeat_bids(bids, work / "eegmat_bids", copies)
        bids = work / "eegmat_bids"
    store = work / "store"
    if not (store / "manifest.json").exists():
        convert(bids, store, workers=args.workers, progress=False)
    elif any(e.get("format_version", 1) < FORMAT_VERSION for e in read_manifest(str(store))["recordings"].values()):
        upgrade_store(str(store))  # a store from an older brainfm: measure the current format
    fif = work / "bd_fif"
    if not fif.exists():
        fif.mkdir(parents=True)
        braindecode_preprocess(bids, fif)
    return work, store, fif


def _anchor_windows(fif: Path):
    from braindecode.datautil import load_concat_dataset  # noqa: PLC0415 - the anchor, heavy
    from braindecode.preprocessing import create_fixed_length_windows  # noqa: PLC0415

    win = int(WINDOW_S * 200)
    return create_fixed_length_windows(
        load_concat_dataset(str(fif), preload=False), window_size_samples=win,
        window_stride_samples=win, on_last_window="drop", preload=False,
    )


def bench_local(args) -> None:
    """brainfm vs braindecode on local disk, cold (page cache emptied) and steady."""
    _, store, fif = _prepare(args)
    store_files, fif_files = files_under(store), files_under(fif)
    w = args.workers

    def cold() -> None:
        """Empty both sides' page cache and brainfm's decoded-chunk cache; check it took."""
        CHUNK_CACHE.__init__()
        drop_page_cache(store_files)
        drop_page_cache(fif_files)
        left = resident_bytes(store_files)[0] + resident_bytes(fif_files)[0]
        resident_after_drop.append(left)

    resident_after_drop: list[int] = []
    n = len(FixedWindows(str(store), WINDOW_S))
    assert n == len(_anchor_windows(fif)), "both sides must cut the same windows"
    print(f"{n} windows of {WINDOW_S} s; {args.repeats} cold repeats per mode, brainfm and braindecode alternating")

    ours = lambda: FixedWindows(str(store), WINDOW_S)  # noqa: E731 - fresh dataset per cold epoch
    common = dict(batch_size=BATCH, num_workers=w)
    modes: list[tuple[str, Callable[[int], float], Callable[[int], float]]] = [
        ("random windows, 1 process, cold epoch",
         lambda r: _map_epoch(ours(), r), lambda r: _map_epoch(_anchor_windows(fif), r)),
        (f"random windows, DataLoader 0 workers (batch {BATCH}), cold",
         lambda r: _loader_epoch(DataLoader(ours(), batch_size=BATCH, shuffle=True, collate_fn=collate_windows), n),
         lambda r: _loader_epoch(DataLoader(_anchor_windows(fif), batch_size=BATCH, shuffle=True), n)),
        (f"random windows, DataLoader {w} workers, cold",
         lambda r: _loader_epoch(DataLoader(ours(), shuffle=True, collate_fn=collate_windows, **common), n),
         lambda r: _loader_epoch(DataLoader(_anchor_windows(fif), shuffle=True, **common), n)),
        (f"ShuffledWindows {w} workers, cold",
         lambda r: _loader_epoch(DataLoader(ShuffledWindows(str(store), WINDOW_S, seed=r),
                                            collate_fn=collate_windows, **common), n),
         lambda r: _loader_epoch(DataLoader(_anchor_windows(fif), shuffle=True, **common), n)),
    ]
    print(f"worker floor: an epoch of {n} zero windows (no reading) takes "
          + ", ".join(f"{_zeros_epoch(n, k):.3f} s with {k} workers" for k in (0, w)))
    rows = []
    for name, bf_fn, bd_fn in modes:
        bf, bd = [], []
        for r in range(args.repeats):
            for fn, out in ((bf_fn, bf), (bd_fn, bd))[:: 1 if r % 2 == 0 else -1]:
                cold()  # datasets and loaders are built inside fn, after the caches are emptied
                out.append(fn(r))
        print(f"{name:<52} brainfm {_stats(bf)}  braindecode {_stats(bd)}")
        rows.append(_cold_row(name, bf, bd))

    # steady state: the same datasets, files and chunks cached after a first pass
    e = args.epochs
    ds, bd_ds = ours(), _anchor_windows(fif)
    _map_epoch(ds, 0), _map_epoch(bd_ds, 0)
    bf_s = [_map_epoch(ds, k) for k in range(1, e + 1)]
    bd_s = [_map_epoch(bd_ds, k) for k in range(1, e + 1)]
    rows.append(row("random windows, 1 process, steady", "windows/s", float(np.mean(bf_s)), float(np.mean(bd_s))))
    pers = dict(persistent_workers=True, **common)
    bf_loader = DataLoader(ours(), shuffle=True, collate_fn=collate_windows, **pers)
    bd_loader = DataLoader(bd_ds, shuffle=True, **pers)
    _loader_epoch(bf_loader, n), _loader_epoch(bd_loader, n)
    bf_s = [_loader_epoch(bf_loader, n) for _ in range(e)]
    bd_s = [_loader_epoch(bd_loader, n) for _ in range(e)]
    rows.append(row(f"random windows, DataLoader {w} workers, steady", "windows/s", float(np.mean(bf_s)),
                    float(np.mean(bd_s))))
    del bf_loader, bd_loader

    store_bytes = dir_bytes(store / "recordings")
    fif_bytes = dir_bytes(fif, "*.fif")
    rows.append(row("disk footprint", "MiB", store_bytes / 2**20, fif_bytes / 2**20, higher_is_better=False))
    print(f"page cache after each drop: at most {max(resident_after_drop) / 2**20:.2f} MiB resident "
          f"(store {store_bytes / 2**20:.1f} MiB, FIF {fif_bytes / 2**20:.1f} MiB)")
    report(rows, "braindecode", args.json)


# --------------------------------------------------------------------------------------
# object storage
# --------------------------------------------------------------------------------------
def _moto(store: Path) -> tuple[str, subprocess.Popen]:
    """Start a moto S3 server on loopback in its own process (as a real object store is: its
    CPU is not the client's), upload ``store``; return its URL and the server process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[key] = "bench"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    fsspec.config.conf["s3"] = {"endpoint_url": f"http://127.0.0.1:{port}"}
    fs = fsspec.filesystem("s3")
    for _ in range(300):
        try:
            fs.mkdir("bench")
            break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    fs.put(str(store), "bench/store", recursive=True)
    return "s3://bench/store", server


def _get_rate(url: str, threads: int) -> tuple[float, float]:
    """(GET/s, MiB/s) fetching every shard of the store once with ``threads`` in flight."""
    fs, root = fsspec.core.url_to_fs(url)
    paths = [p for p in fs.find(f"{root}/recordings") if "/data/c/" in p]
    fs.invalidate_cache()
    shard_codec.set_read_threads(threads)
    t0 = time.perf_counter()
    sizes = list(shard_codec.read_pool().map(lambda p: len(fs.cat_file(p, start=0)), paths))
    dt = time.perf_counter() - t0
    return len(paths) / dt, sum(sizes) / dt / 2**20


def bench_s3(args) -> None:
    """brainfm on S3 (moto on loopback) next to local disk, cold epochs, several concurrencies."""
    _, store, _ = _prepare(args)
    url, server = _moto(store)
    store_files = files_under(store)
    signal_bytes = dir_bytes(store / "recordings", "*")
    n = len(FixedWindows(str(store), WINDOW_S))
    c, t = 19, int(WINDOW_S * 200)
    print(f"{n} windows; store {signal_bytes / 2**20:.1f} MiB; local {store} and {url} (moto, loopback)")

    def epoch(where: str, mode: str, threads: int, r: int) -> float:
        CHUNK_CACHE.__init__()
        shard_codec.set_read_threads(threads)
        if where == "local":
            drop_page_cache(store_files)
        loc = str(store) if where == "local" else url
        if mode == "map":
            return _map_epoch(FixedWindows(loc, WINDOW_S), r)
        if mode == "batch":
            return _loader_epoch(DataLoader(FixedWindows(loc, WINDOW_S), batch_size=BATCH, shuffle=True,
                                            collate_fn=collate_windows), n)
        if mode == "shuffled":
            return _loader_epoch(DataLoader(ShuffledWindows(loc, WINDOW_S, seed=r, read_ahead=threads),
                                            batch_size=BATCH, collate_fn=collate_windows), n)
        return _loader_epoch(DataLoader(FixedWindows(loc, WINDOW_S), batch_size=BATCH, shuffle=True,
                                        num_workers=args.workers, collate_fn=collate_windows), n)

    rows = []
    latency = _get_latency(url)
    print(f"one GET of a small object: median {latency * 1e3:.1f} ms")
    rows.append(row("GET latency, small object", "ms", latency * 1e3, latency * 1e3, higher_is_better=False))
    for threads in args.threads:
        gets, mib = zip(*[_get_rate(url, threads) for _ in range(args.repeats)])
        print(f"raw GET of every shard, {threads:2d} in flight: {_stats(list(gets))} GET/s, "
              f"{statistics.median(mib):.1f} MiB/s")
        rows.append(row(f"raw shard GETs, {threads} in flight", "GET/s", statistics.median(gets),
                        statistics.median(gets)) | {"mib_per_s": statistics.median(mib)})
    modes = [("map", "map-style 1 process"), ("batch", f"DataLoader 0 workers, batch {BATCH}"),
             ("shuffled", "ShuffledWindows 0 workers"), ("workers", f"DataLoader {args.workers} workers")]
    for mode, label in modes:
        for threads in (args.threads if mode in ("batch", "shuffled") else [max(args.threads)]):
            s3, local = [], []
            for r in range(args.repeats):
                s3.append(epoch("s3", mode, threads, r))
                local.append(epoch("local", mode, threads, r))
            name = f"{label}, {threads} reader threads, cold" if mode in ("batch", "shuffled") else f"{label}, cold"
            med = statistics.median(s3)
            print(f"{name:<52} S3 {_stats(s3)}  local {_stats(local)} windows/s; S3 "
                  f"{med * signal_bytes / n / 2**20:.1f} MiB/s stored, {med * c * t * 4 / 2**20:.0f} MiB/s decoded")
            out = _cold_row(name, s3, local)
            out["stored_mib_per_s"] = med * signal_bytes / n / 2**20
            out["decoded_mib_per_s"] = med * c * t * 4 / 2**20
            rows.append(out)
    server.terminate()
    server.wait()
    report(rows, "local disk", args.json)


def _get_latency(url: str, repeats: int = 30) -> float:
    """Median seconds of one GET of a small object (the manifest), one at a time."""
    fs, root = fsspec.core.url_to_fs(url)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fs.cat_file(f"{root}/manifest.json", start=0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_formats(args) -> None:
    """Format 2 (one object per chunk, read through Zarr) against format 3 (shards, read
    directly), brainfm alone, cold, alternating: what the on-disk change buys by itself."""
    _, store, _ = _prepare(args)
    old = store.parent / "store-format2"
    if not (old / "manifest.json").exists():
        shutil.copytree(store, old)
        with store_lock(str(old)):
            for rid in read_manifest(str(old))["recordings"]:
                rewrite_recording(str(old), rid, format_version=2)
    files = {3: files_under(store), 2: files_under(old)}
    n = len(FixedWindows(str(store), WINDOW_S))
    rows = []
    for label, fn in (("1 process, cold", lambda ds, r: _map_epoch(ds, r)),
                      (f"DataLoader 0 workers (batch {BATCH}), cold",
                       lambda ds, r: _loader_epoch(DataLoader(ds, batch_size=BATCH, shuffle=True,
                                                              collate_fn=collate_windows), n))):
        runs: dict[int, list[float]] = {2: [], 3: []}
        for r in range(args.repeats):
            for fv in ((3, 2) if r % 2 == 0 else (2, 3)):
                CHUNK_CACHE.__init__()
                drop_page_cache(files[fv])
                runs[fv].append(fn(FixedWindows(str(store if fv == 3 else old), WINDOW_S), r))
        print(f"{label:<44} format 3 {_stats(runs[3])}  format 2 {_stats(runs[2])}")
        out = row(f"format 3 vs 2, {label}", "windows/s", statistics.median(runs[3]), statistics.median(runs[2]))
        out["runs"] = {"brainfm": runs[3], "anchor": runs[2]}
        rows.append(out)
    report(rows, "format 2", args.json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=36)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=1,
                    help="read the subjects this many times over (copies under new IDs, real files): "
                         "a longer epoch, over which DataLoader worker start-up is amortised")
    ap.add_argument("--repeats", type=int, default=5, help="cold epochs per mode and side")
    ap.add_argument("--epochs", type=int, default=3, help="steady-state epochs")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--s3", action="store_true", help="brainfm on S3 (moto, loopback) next to local disk")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16], help="reader threads (--s3)")
    ap.add_argument("--formats", action="store_true", help="brainfm format 3 against format 2, cold")
    args = ap.parse_args()
    (bench_s3 if args.s3 else bench_formats if args.formats else bench_local)(args)


if __name__ == "__main__":
    main()
