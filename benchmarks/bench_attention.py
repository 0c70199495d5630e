"""Attention-state detector on labelled real EEG, offline zero-phase chain against the live causal one.

Usage::

    python benchmarks/bench_attention.py [--subjects 32 33 34 35] [--json docs/attention.json]

Per EEGMAT subject (default: the CBraMod test subjects 32-35), rest (182 s) then arithmetic
(60 s) joined as one session, indices only (no decoder), per-user baseline from the first
60 s, the default AttentionGuard state set:

* ``auroc``: of the per-window engagement index β/(α+θ), rest windows after calibration
  against arithmetic windows (fully inside their part);
* ``bacc``: balanced accuracy of "engaged" (Focused or Hyperfocused) against rest / arithmetic;
* ``delay_s``: from the switch to the first window after which the state stays engaged for
  5 s (``None``: never);
* ``ms_per_window``: the detector's step (quality gate, resampling, indices, states, HMM).

Both chains run on the same raw EDF samples; the causal one is what ``brainfm stream``
computes. Also: EEGMMIDB S001 eyes closed (R02) against the eyes-open task runs R03/R04
(posterior α), and the sleep N2/N3 snippets against resting eyes-open EEG (δ/β and slowing),
as window AUROCs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mne
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from brainfm.attention import DetectorConfig, detect_signal, read_session, window_indices, zero_phase
from brainfm.data.root import data_root

ENGAGED = ("Focused", "Hyperfocused")


def eegmat(subject: int, chain: str) -> dict:
    root = data_root() / "eegmat"
    session = read_session([str(root / f"Subject{subject:02d}_{k}.edf") for k in (1, 2)])
    config = DetectorConfig(calibration_s=60.0)
    tic = time.perf_counter()
    outs = list(detect_signal(session.signal, session.spec, config, chain=chain))
    seconds = time.perf_counter() - tic
    switch = session.segments[1][1]
    rest = [o for o in outs if 60 + config.window_s <= o.t <= switch]
    task = [o for o in outs if o.t - config.window_s >= switch]
    eng = [o.indices["engagement"] for o in rest + task]
    auroc = roc_auc_score([0] * len(rest) + [1] * len(task), eng)
    bacc = (np.mean([o.state not in ENGAGED for o in rest]) + np.mean([o.state in ENGAGED for o in task])) / 2
    after = [o for o in outs if o.t > switch]
    hold = int(round(5.0 / config.hop_s))
    delay = next((o.t - switch for i, o in enumerate(after)
                  if all(a.state in ENGAGED for a in after[i:i + hold]) and len(after[i:i + hold]) == hold), None)
    return {"subject": subject, "chain": chain, "auroc": float(auroc), "bacc": float(bacc), "delay_s": delay,
            "ms_per_window": 1e3 * seconds / len(outs), "windows": len(outs)}


def window_values(x: np.ndarray, sfreq: float, key: str, geometry=None) -> np.ndarray:
    n = int(4 * sfreq)
    w = torch.from_numpy(np.stack([x[:, i:i + n] for i in range(0, x.shape[1] - n + 1, n)]))  # (B, C, T)
    g = None if geometry is None else torch.from_numpy(geometry)[None].expand(len(w), -1, -1)
    return window_indices(w, sfreq, g)[key].numpy()


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    return float(roc_auc_score([0] * len(neg) + [1] * len(pos), np.concatenate([neg, pos])))


def eyes_closed() -> dict:
    base = data_root() / "eegbci/MNE-eegbci-data/files/eegmmidb/1.0.0/S001"
    vals = {}
    for run in (2, 3, 4):
        s = read_session([str(base / f"S001R{run:02d}.edf")])
        vals[run] = window_values(zero_phase(s.signal, s.spec.sfreq), s.spec.sfreq, "posterior_alpha",
                                  s.spec.geometry())
    return {"posterior_alpha_auroc_R02_vs_R03R04": auroc(np.concatenate([vals[3], vals[4]]), vals[2]),
            "median_R02": float(np.median(vals[2])), "median_R03R04": float(np.median(np.r_[vals[3], vals[4]]))}


def sleep() -> dict:
    root = data_root() / "sleep"
    rest = mne.io.read_raw_fif(root / "data_resting_EO_200Hz_raw.fif", preload=True, verbose="error")
    awake_x = zero_phase(rest.get_data() * 1e6, 200.0)
    out = {}
    for name, sfreq in (("N2", 200.0), ("N3", 100.0)):
        fname = "data_N2_spindles_15sec_200Hz.txt" if name == "N2" else "data_N3_no-spindles_30sec_100Hz.txt"
        x = zero_phase(np.loadtxt(root / fname)[None], sfreq)
        for key in ("delta_beta", "slowing"):
            out[f"{name}_{key}_auroc"] = auroc(window_values(awake_x, 200.0, key), window_values(x, sfreq, key))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, nargs="+", default=[32, 33, 34, 35])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [eegmat(s, chain) for s in args.subjects for chain in ("zero-phase", "causal")]
    print(f"{'subject':>7} {'chain':>10} {'AUROC':>6} {'bacc':>6} {'delay s':>8} {'ms/win':>7}")
    for r in rows:
        delay = "-" if r["delay_s"] is None else f"{r['delay_s']:.1f}"
        print(f"{r['subject']:>7} {r['chain']:>10} {r['auroc']:6.3f} {r['bacc']:6.3f} {delay:>8} {r['ms_per_window']:7.1f}")
    summary = {}
    for chain in ("zero-phase", "causal"):
        part = [r for r in rows if r["chain"] == chain]
        delays = [r["delay_s"] for r in part if r["delay_s"] is not None]
        summary[chain] = {"auroc_mean": float(np.mean([r["auroc"] for r in part])),
                          "bacc_mean": float(np.mean([r["bacc"] for r in part])),
                          "delay_s_median": float(np.median(delays)) if delays else None,
                          "detected": f"{len(delays)}/{len(part)}"}
        print(chain, summary[chain])
    extra = {"eyes_closed": eyes_closed(), "sleep": sleep()}
    print(json.dumps(extra, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"eegmat": rows, "summary": summary, **extra}, indent=1) + "\n")


if __name__ == "__main__":
    main()
