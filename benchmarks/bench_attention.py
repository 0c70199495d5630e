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
computes.

With a fine-tuned decoder (``--decoder PATH``; ``--finetune STORE`` first fine-tunes the shipped
recipe encoder on CBraMod's split, :func:`finetune_decoder`), engagement through the live path
instead: the decoder weight on the engagement axis, the Drifting/Focused threshold and the
minimum dwell are chosen on the validation subjects (``--val``, default 28-31) by mean balanced
accuracy, then the test subjects (``--subjects``) are scored with them, causal chain, baseline
from the first 60 s, against the decoder alone offline (zero-phase, its argmax) and the same
detector offline (zero-phase chain, ``brainfm detect``)::

    python benchmarks/bench_attention.py --decoder /work/attn-work/decoder/decoder.safetensors \
        --finetune STORE --json attention-decoder.json

Also: EEGMMIDB S001 eyes closed (R02) against the eyes-open task runs R03/R04
(posterior α), and the sleep N2/N3 snippets against resting eyes-open EEG (δ/β and slowing),
as window AUROCs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import mne
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.metrics import roc_auc_score

from brainfm.attention import (CALIBRATING, SIGNAL_BAD, AttentionDetector, DetectorConfig, EngagementModel,
                               HmmSmoother, attention_guard, detect_signal, read_session, resample_window,
                               window_indices, zero_phase)
from brainfm.attention.engagement import MODEL_SFREQ
from brainfm.data.normalize import RunningMoments
from brainfm.data.datamodule import DecodingDataModule
from brainfm.data.root import data_root
from brainfm.models.decoder import window_for
from brainfm.pretrained import recipe_encoder
from brainfm.signal import SensorSpec
from brainfm.tasks.decode import DecodeModule

ENGAGED = ("Focused", "Hyperfocused")
LABELS = {"rest": 0, "arithmetic": 1}


def finetune_decoder(store: str, out: Path, epochs: int = 10, seed: int = 0) -> Path:
    """The engagement decoder of the live-path evaluation: the shipped recipe encoder
    (:func:`brainfm.pretrained.recipe_encoder`) fine-tuned in full on CBraMod's EEGMAT split
    (train 0-27, best epoch on validation 28-31), on the detector's 4-s windows, with
    Euclidean alignment from each subject's first 60 s (``stats_source='calibration'``: what
    the live detector can compute). Returns ``out/decoder.safetensors`` (reused when present)."""
    dest = out / "decoder.safetensors"
    if dest.is_file():
        return dest
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, verbose=False)
    dm = DecodingDataModule(store=store, split="eegmat-cbramod", window_s=4.0, label_map=LABELS, batch_size=32,
                            normalize="align", stats_source="calibration", stats_seconds=60.0)
    module = DecodeModule(init_from=str(recipe_encoder()), n_classes=2, classes=list(LABELS), mode="full",
                          head_dropout=0.1, encoder_lr_factor=0.2, lr=1e-3, weight_decay=0.01,
                          class_weights="balanced")
    best = ModelCheckpoint(dirpath=out / "ckpt", monitor="val/balanced_accuracy", mode="max")
    trainer = L.Trainer(max_epochs=epochs, logger=False, callbacks=[best], enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                        gradient_clip_val=1.0, default_root_dir=out)
    trainer.fit(module, dm)  # on_fit_end loads the best validation epoch back into the module
    module.export_safetensors(dest)
    print(f"best validation balanced accuracy {float(best.best_model_score):.3f}: {dest}", flush=True)
    return dest


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


# ------------------------------------------------------------- decoder: offline vs live path

def eegmat_session(subject: int):
    root = data_root() / "eegmat"
    return read_session([str(root / f"Subject{subject:02d}_{k}.edf") for k in (1, 2)])


def labelled(ts: np.ndarray, switch: float, config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the scored windows: rest after the 60-s calibration, arithmetic fully after the switch."""
    return (ts >= config.calibration_s + config.window_s) & (ts <= switch), ts - config.window_s >= switch


def balanced(engaged: np.ndarray, rest: np.ndarray, task: np.ndarray) -> float:
    return float((np.mean(~engaged[rest]) + np.mean(engaged[task])) / 2)


def switch_delay(ts: np.ndarray, engaged: np.ndarray, switch: float, hold_s: float = 5.0, hop_s: float = 0.5):
    """Seconds from the switch to the first window after which the state stays engaged for ``hold_s``."""
    hold = int(round(hold_s / hop_s))
    after = np.flatnonzero(ts > switch)
    for i in after:
        if i + hold <= len(ts) and engaged[i:i + hold].all():
            return float(ts[i] - switch)
    return None


def offline_decoder(subject: int, decoder: Path, config: DetectorConfig) -> dict:
    """The decoder alone, offline: zero-phase chain on the whole session, resampled to 200 Hz,
    normalised with the subject's first 60 s (as in training; a token-statistics decoder's FiLM from
    the same span), argmax per window."""
    session = eegmat_session(subject)
    spec = session.spec
    model = EngagementModel(decoder)
    x = resample_window(zero_phase(session.signal, spec.sfreq, config.line_freq), spec.sfreq, MODEL_SFREQ)  # (C, N200)
    mspec = SensorSpec(spec.ch_names, spec.ch_types, spec.loc, MODEL_SFREQ)
    moments = RunningMoments(spec.n_channels)
    calib_n = int(config.calibration_s * MODEL_SFREQ)
    moments.update(x[:, :calib_n])
    n, hop = int(config.window_s * MODEL_SFREQ), int(config.hop_s * MODEL_SFREQ)
    ends = np.arange(n, x.shape[1] + 1, hop)
    # a token-statistics decoder also sets the user's FiLM, from the same first 60 s (windows, normalised inside)
    model.calibrate(moments, mspec, [x[:, e - n:e].astype(np.float32) for e in ends if e <= calib_n])
    odds = np.array([model.log_odds(x[:, e - n:e].astype(np.float32), mspec) for e in ends])
    ts = ends / MODEL_SFREQ
    rest, task = labelled(ts, session.segments[1][1], config)
    return {"subject": subject, "bacc": balanced(odds > 0, rest, task),
            "auroc": auroc(odds[rest], odds[task]), "windows": int(rest.sum() + task.sum())}


def live_path(subject: int, decoder: Path, config: DetectorConfig, chain: str = "causal") -> tuple[dict, dict]:
    """The detector with the decoder on the causal chain (what ``brainfm stream`` computes on the
    same samples; tests/test_stream.py checks live == causal offline), calibrated on the first
    60 s; returns its scores and what :func:`restate` needs to re-decide with other settings.
    ``chain='zero-phase'``: the same detector offline (``brainfm detect``)."""
    session = eegmat_session(subject)
    detector = AttentionDetector(session.spec, config, EngagementModel(decoder))
    tic = time.perf_counter()
    outs = list(detect_signal(session.signal, session.spec, chain=chain, detector=detector))
    seconds = time.perf_counter() - tic
    ts = np.array([o.t for o in outs])
    switch = session.segments[1][1]
    engaged = np.array([o.state in ENGAGED for o in outs])
    rest, task = labelled(ts, switch, config)
    dec = np.array([np.nan if o.decoder is None else o.decoder for o in outs])
    trace = {"ts": ts, "switch": switch, "states": [o.state for o in outs], "decoder": dec,
             "features": np.array([[np.log(o.indices["engagement"]), -np.log(o.indices["delta_beta"])]
                                   if o.indices.get("engagement") else [np.nan, np.nan] for o in outs]),
             "index_baseline": detector.index_baseline, "decoder_baseline": detector.decoder_baseline}
    return {"subject": subject, "bacc": balanced(engaged, rest, task), "decoder_auroc": auroc(dec[rest], dec[task]),
            "delay_s": switch_delay(ts, engaged, switch, hop_s=config.hop_s),
            "ms_per_window": 1e3 * seconds / len(outs)}, trace


def restate(trace: dict, config: DetectorConfig) -> np.ndarray:
    """Engaged per window, re-deciding a :func:`live_path` trace with ``config``'s decoder weight,
    thresholds and smoothing (the same arithmetic as :meth:`AttentionDetector.step`)."""
    names = config.states.names
    smoother = HmmSmoother(len(names), config.stay, max(1, int(round(config.min_dwell_s / config.hop_s))),
                           config.hysteresis)
    engaged, current = np.zeros(len(trace["ts"]), dtype=bool), None
    for i, state in enumerate(trace["states"]):
        if state not in (SIGNAL_BAD, CALIBRATING):
            z = trace["index_baseline"].z(trace["features"][i])
            dz = float(trace["decoder_baseline"].z([trace["decoder"][i]])[0])
            e = (1 - config.decoder_weight) * float(z[0]) + config.decoder_weight * dz
            current = names[smoother.step(config.states.probabilities(e, float(z[1])))[1]]
        engaged[i] = current in ENGAGED and state not in (SIGNAL_BAD, CALIBRATING)
    return engaged


def tuning_grid(window_s: float, stats_half_life_s: float | None = None) -> list[DetectorConfig]:
    """Decoder weight, the Drifting/Focused threshold and the dwell, chosen on validation subjects."""
    return [DetectorConfig(window_s=window_s, decoder_weight=w, min_dwell_s=dwell, stats_half_life_s=stats_half_life_s,
                           states=attention_guard(drift=d, hyper=max(2.5, d + 1)))
            for w in (0.5, 0.75, 1.0) for d in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0) for dwell in (1.0, 2.0)]


def describe(config: DetectorConfig) -> dict:
    drift = next(r.engagement[0] for r in config.states.regions if r.name == "Focused")
    return {"decoder_weight": config.decoder_weight, "drift": drift, "min_dwell_s": config.min_dwell_s}


def decoder_section(decoder: Path, val: list[int], test: list[int], stats_half_life_s: float | None = None) -> dict:
    """Settings chosen on ``val`` (mean balanced accuracy through the live path), scored on ``test``.
    ``stats_half_life_s``: the live input statistics keep following the signal (the running source)."""
    # the decoder's training window when its file records it, else the detector's 4 s (as `brainfm detect`)
    window_s = window_for(EngagementModel(decoder).window_s, None, DetectorConfig.window_s)
    base = DetectorConfig(window_s=window_s, stats_half_life_s=stats_half_life_s)
    traces = {s: live_path(s, decoder, base)[1] for s in val}
    scores = []
    for config in tuning_grid(window_s, stats_half_life_s):
        bacc = [balanced(restate(t, config), *labelled(t["ts"], t["switch"], config)) for t in traces.values()]
        scores.append((float(np.mean(bacc)), describe(config), config))
        print(f"val {describe(config)} bacc {np.mean(bacc):.3f} {np.round(bacc, 3).tolist()}", flush=True)
    best_val, chosen, config = max(scores, key=lambda r: r[0])
    default_val = next(v for v, d, _ in scores if d == describe(base))
    rows = []
    for s in test:
        live, _ = live_path(s, decoder, config)
        off = offline_decoder(s, decoder, config)
        zero, _ = live_path(s, decoder, config, chain="zero-phase")
        rows.append({"subject": s, "offline_bacc": off["bacc"], "offline_auroc": off["auroc"],
                     "offline_detector_bacc": zero["bacc"], "offline_detector_delay_s": zero["delay_s"], **live})
        print(json.dumps(rows[-1]), flush=True)
    delays = [r["delay_s"] for r in rows if r["delay_s"] is not None]
    return {"decoder": str(decoder), "window_s": window_s, "stats_half_life_s": stats_half_life_s,
            "chosen_on_validation": chosen, "validation_bacc": best_val,
            "validation_bacc_default_settings": default_val, "test": rows,
            "offline_bacc_mean": float(np.mean([r["offline_bacc"] for r in rows])),
            "offline_detector_bacc_mean": float(np.mean([r["offline_detector_bacc"] for r in rows])),
            "live_bacc_mean": float(np.mean([r["bacc"] for r in rows])),
            "delay_s_median": float(np.median(delays)) if delays else None, "detected": f"{len(delays)}/{len(rows)}"}


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
    p.add_argument("--decoder", default=None,
                   help="fine-tuned decoder: tune on --val, score the live path on --subjects")
    p.add_argument("--finetune", default=None, metavar="STORE",
                   help="fine-tune the decoder first (to --decoder, e.g. /work/attn-work/decoder/decoder.safetensors)")
    p.add_argument("--val", type=int, nargs="+", default=[28, 29, 30, 31])
    p.add_argument("--stats-half-life", type=float, default=None, metavar="S",
                   help="with --decoder: the live input statistics follow the signal with this half-life "
                        "(default: fixed after the calibration span's first half)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.decoder:
        decoder = Path(args.decoder)
        if args.finetune:
            decoder = finetune_decoder(args.finetune, decoder.parent)
        section = decoder_section(decoder, args.val, args.subjects, args.stats_half_life)
        print(json.dumps({k: v for k, v in section.items() if k != "test"}, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps({"decoder_live_path": section}, indent=1) + "\n")
        return
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
