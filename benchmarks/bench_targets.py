"""Benchmark brainfm's neurodynamics targets against the reference libraries, side by side.

Usage::

    python benchmarks/bench_targets.py [--windows 64] [--device cpu|cuda] [--json rows.json]

Windows: real EEGMAT recordings (Subject00_1, Subject00_2, Subject01_1, ...), the 19 10-20
EEG channels, resampled to 200 Hz, in µV, cut into consecutive 5-s windows (19 x 1000).

Both sides compute the same quantities on the same windows:

===================  ==========================================  ============================================
quantity             brainfm                                     anchor
===================  ==========================================  ============================================
Welch PSD, band pow  :func:`brainfm.targets.welch_psd` + bands   ``mne.time_frequency.psd_array_welch`` + numpy
PLV, 5 bands         :func:`~brainfm.targets.phase_locking_value`  ``mne_connectivity.spectral_connectivity_time``
                     + :func:`~brainfm.targets.plv_summary`        (multitaper, band-averaged, one call per band)
PLV (exact twin)     same                                        :func:`brainfm.targets.reference.plv_reference`
sample entropy       :func:`~brainfm.targets.sample_entropy`      ``antropy.sample_entropy``, one call per channel
Hjorth               :func:`~brainfm.targets.hjorth_params`       ``antropy.hjorth_params`` (vectorised)
modulation index x2  :func:`~brainfm.targets.modulation_index`    ``reference.modulation_index_reference``
full vector          :func:`~brainfm.targets.compute_targets`     MNE + mne-connectivity + antropy + numpy MI
===================  ==========================================  ============================================

Throughput is windows per second (median of ``--repeats`` timed runs after one warm-up for
brainfm; one run for the slower anchors, after a warm-up call on one window so that numba
compilation is not timed). Each JSON row is ``{"name", "unit", "brainfm", "anchor",
"ratio"}`` with ``ratio > 1`` meaning brainfm is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable

import numpy as np
import torch
from _eegmat import report, row

from brainfm.data.root import data_root
from brainfm.targets import (DEFAULT_BANDS, compute_targets, hjorth_params, modulation_index, phase_locking_value,
                             plv_summary, relative_band_power, sample_entropy, welch_psd)
from brainfm.targets.reference import modulation_index_reference, plv_reference

SFREQ = 200.0
FILES = ("Subject00_1", "Subject00_2", "Subject01_1", "Subject01_2", "Subject02_1")


def load_windows(n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows (n, 19, 1000) float32 µV, geometry (19, 6)) from consecutive EEGMAT windows."""
    import mne

    windows, geom = [], None
    for name in FILES:
        raw = mne.io.read_raw_edf(data_root() / "eegmat" / f"{name}.edf", preload=True, verbose="error")
        raw.pick([c for c in raw.ch_names if c.startswith("EEG ") and c != "EEG A2-A1"])
        raw.rename_channels(lambda ch: ch.removeprefix("EEG "))
        raw.set_montage(mne.channels.make_standard_montage("colin27_1005"), verbose="error")
        raw.resample(SFREQ, verbose="error")
        data = (raw.get_data() * 1e6).astype(np.float32)
        n = data.shape[1] // 1000
        windows.append(data[:, : n * 1000].reshape(19, n, 1000).transpose(1, 0, 2))  # (n, 19, 1000)
        if geom is None:
            geom = np.zeros((19, 6), dtype=np.float32)
            geom[:, :3] = np.stack([ch["loc"][:3] for ch in raw.info["chs"]])
        if sum(len(w) for w in windows) >= n_windows:
            break
    return np.ascontiguousarray(np.concatenate(windows)[:n_windows]), geom


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- anchors ------------------------------------------------------------------------------


def anchor_spectral(x: np.ndarray) -> np.ndarray:
    from mne.time_frequency import psd_array_welch

    psd, f = psd_array_welch(x.astype(np.float64), SFREQ, n_fft=400, n_overlap=200, window="hann", verbose="error")
    power = np.stack([psd[..., (f >= lo) & (f < hi)].sum(-1) for lo, hi in DEFAULT_BANDS.values()], -1)
    return np.concatenate([power / power.sum(-1, keepdims=True), np.log(power * 0.5)], -1)


def anchor_plv_mne(x: np.ndarray) -> list[np.ndarray]:
    from mne_connectivity import spectral_connectivity_time

    out = []
    for lo, hi in DEFAULT_BANDS.values():
        con = spectral_connectivity_time(x.astype(np.float64), freqs=np.arange(lo, hi, 0.5), method="plv",
                                         sfreq=SFREQ, fmin=lo, fmax=hi, faverage=True, mode="multitaper",
                                         mt_bandwidth=2.0, n_cycles=5, verbose="error")
        out.append(con.get_data(output="dense")[..., 0])
    return out


def anchor_plv_scipy(x: np.ndarray) -> list[np.ndarray]:
    return [np.stack([plv_reference(w, SFREQ, lo, hi) for w in x]) for lo, hi in DEFAULT_BANDS.values()]


def anchor_sampen(x: np.ndarray) -> np.ndarray:
    import antropy

    return np.array([antropy.sample_entropy(ch) for ch in x.reshape(-1, x.shape[-1]).astype(np.float64)])


def anchor_hjorth(x: np.ndarray):
    import antropy

    return antropy.hjorth_params(x.astype(np.float64), sf=SFREQ)


def anchor_mi(x: np.ndarray) -> np.ndarray:
    gamma = DEFAULT_BANDS["gamma"]
    return np.array([[modulation_index_reference(ch, SFREQ, DEFAULT_BANDS[p], gamma) for p in ("theta", "alpha")]
                     for ch in x.reshape(-1, x.shape[-1])])


# --- main ---------------------------------------------------------------------------------


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    x_np, geom_np = load_windows(args.windows)
    n = x_np.shape[0]
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x = torch.from_numpy(x_np).to(dev)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=dev)
    geom = torch.from_numpy(geom_np).to(dev).expand(n, -1, -1)
    print(f"{n} EEGMAT windows of 19 x 1000 at {SFREQ:g} Hz; brainfm on {dev}, threads={torch.get_num_threads()}")

    def spectral():
        psd, f = welch_psd(x, SFREQ, n_fft=400, n_overlap=200)
        return relative_band_power(psd, f)

    ours = {
        "spectral": spectral,
        "PLV": lambda: plv_summary(phase_locking_value(x, SFREQ), mask),
        "sampen": lambda: sample_entropy(x),
        "Hjorth": lambda: hjorth_params(x, SFREQ),
        "MI x2": lambda: modulation_index(x, SFREQ),
        "full vector": lambda: compute_targets(x, SFREQ, mask, geom),
    }
    anchors = {
        "spectral": ("MNE", lambda: anchor_spectral(x_np)),
        "PLV": ("mne-connectivity", lambda: anchor_plv_mne(x_np)),
        "PLV twin": ("numpy/scipy", lambda: anchor_plv_scipy(x_np)),
        "sampen": ("antropy", lambda: anchor_sampen(x_np)),
        "Hjorth": ("antropy", lambda: anchor_hjorth(x_np)),
        "MI x2": ("numpy", lambda: anchor_mi(x_np)),
    }
    anchor_sampen(x_np[:1, :1])  # numba warm-up
    anchor_seconds = {name: timed(fn, 1) for name, (_, fn) in anchors.items()}
    full_anchor = sum(anchor_seconds[k] for k in ours if k in anchor_seconds)  # mne-con PLV, not the twin

    rows = []
    for name, fn in ours.items():
        fn()  # warm-up
        t = timed(fn, args.repeats, sync)
        if name == "full vector":
            anchor_t, who = full_anchor, "MNE+mne-con+antropy+np"
        else:
            anchor_t, who = anchor_seconds[name], anchors[name][0]
        rows.append(row(f"{name} vs {who} [{dev.type}]", "windows/s", n / t, n / anchor_t))
        if name == "PLV":
            rows.append(row(f"PLV vs scipy twin [{dev.type}]", "windows/s", n / t,
                            n / anchor_seconds["PLV twin"]))
    report(rows, "anchor", args.json)
    return rows


if __name__ == "__main__":
    main()
