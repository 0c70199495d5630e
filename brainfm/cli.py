"""The ``brainfm`` command.

* ``brainfm fit|validate|test|predict --config configs/...yaml`` — LightningCLI in
  subclass mode: the YAML names the LightningModule and DataModule classes.
* ``brainfm convert BIDS_ROOT STORE`` — BIDS to shard store (:mod:`brainfm.pipelines.convert`).
* ``brainfm info STORE|BUNDLE [--json]`` — what a store holds, or how a bundle is quantized.
* ``brainfm verify STORE [--quick]`` — check every recording against its recorded hashes.
* ``brainfm sample-data [DEST]`` — build the bundled sample dataset and store.
* ``brainfm import-hdf5 FILE.h5 STORE`` / ``brainfm export-hdf5 STORE FILE.h5`` — an HDF5 corpus in
  the LaBraM layout into a store without MNE preprocessing, and back (:mod:`brainfm.data.hdf5`).
* ``brainfm quantize --ckpt CKPT --scheme w8a8|w4a16|w6a8|auto --calib STORE --out BUNDLE`` — post-training
  quantization into a safetensors bundle (:mod:`brainfm.deploy`).
* ``brainfm export --ckpt CKPT --onnx OUT.onnx [--int8]`` — ONNX for onnxruntime.
* ``brainfm detect RECORDING... --out DIR`` — attention-state timeline (CSV, JSON, plot) of a
  recording (any file MNE reads, or ``STORE::RECORDING_ID``) (:mod:`brainfm.attention`).
* ``brainfm stream --source lsl:NAME [--model M] [--serve 127.0.0.1:PORT]`` — the live detector
  on an LSL stream: states to an LSL outlet, JSON lines and a dashboard (:mod:`brainfm.live`).
* ``brainfm adapt --ckpt DECODER --store STORE --subjects S... --out NEW.safetensors`` — label-free subject
  layers and input statistics for new subjects of a token-statistics decoder (:mod:`brainfm.tasks.token_stats`).

Errors: a failing command prints one line, ``brainfm <command>: <what is wrong and what to do>``,
and exits 1 (2 for bad arguments, 130 for Ctrl-C); ``--debug`` anywhere on the command line
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import Sequence

from brainfm.data.dataset import EntityLabels, FixedWindows
from brainfm.data.hdf5 import export_windows

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="brainfm",
        description="Brain-signal foundation models. Training commands: "
        + ", ".join(LIGHTNING_COMMANDS)
        + " (LightningCLI; see `brainfm fit --help`).",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a BIDS dataset into a shard store")
    c.add_argument("bids_root", help="root of the BIDS dataset (with --upgrade: the store)")
    c.add_argument("store", nargs="?", help="output store (local path or fsspec URL)")
    c.add_argument("--preset", default="eeg-fm", help="preprocessing preset (default: eeg-fm)")
    c.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPUs)")
    c.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    c.add_argument("--skip-errors", action="store_true", help="exit 0 even if some recordings failed")
    c.add_argument("--report", default=None, help="also write the JSON conversion report here")
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    c.add_argument("--targets", type=float, default=None, metavar="WINDOW_S",
                   help="also precompute neurodynamics targets for windows of this length (s)")
    c.add_argument("--targets-stride", type=float, default=None, metavar="STRIDE_S",
                   help="stride of those windows (default: the window length)")
    c.add_argument("--targets-features", nargs="+", default=None, metavar="GROUP",
                   help="target groups to precompute (brainfm.targets.FEATURES; default: all), e.g. the "
                        "small-10s recipe's: relpow logpow hjorth plv pac indices")
    c.add_argument("--targets-normalize", choices=("zscore", "align"), default=None,
                   help="compute the targets of per-subject normalised windows, for pretraining with the same "
                        "data normalize (e.g. configs/pretrain/small-10s-aligned.yaml: align)")
    c.add_argument("--targets-stats-source", choices=("session", "calibration"), default=None,
                   help="where --targets-normalize takes each subject's statistics from (default: session)")
    c.add_argument("--targets-stats-seconds", type=float, default=None, metavar="SECONDS",
                   help="calibration length of --targets-stats-source calibration (default: 60)")
    c.add_argument("--prune", action="store_true",
                   help="remove stored recordings whose source is no longer in the dataset")
    c.add_argument("--verify", action="store_true",
                   help="check the SHA-256 of every stored recording before skipping it (default: sizes only)")
    c.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run's lock on the store (default: fail at once)")
    c.add_argument("--upgrade", action="store_true",
                   help="`brainfm convert --upgrade STORE`: rewrite the store's older-format recordings in the "
                        "current format (same signal; no BIDS dataset needed)")

    v = sub.add_parser("verify", help="check every recording of a store against its recorded hashes")
    v.add_argument("store")
    v.add_argument("--quick", action="store_true", help="check that files exist with their sizes only")
    v.add_argument("--json", action="store_true", help="machine-readable output")

    i = sub.add_parser("info", help="summarise a shard store or a quantized bundle")
    i.add_argument("store", help="shard store, or a bundle directory written by `brainfm quantize`")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("sample-data", help="build the sample BIDS dataset and store from the data root")
    s.add_argument("dest", nargs="?", default=None, help="output folder (default: $BRAINFM_HOME/sample, ~/.cache/brainfm/sample)")
    s.add_argument("--eegmat-subjects", type=int, nargs="*", default=None, help="EEGMAT subjects (default: all 36)")
    s.add_argument("--eegbci-runs", type=int, nargs="*", default=None, help="EEGMMIDB S001 runs (default: 2-14)")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--no-progress", action="store_true")

    _hdf5_parsers(sub)

    q = sub.add_parser("quantize", help="quantize a fine-tuned decoder into a bundle (W8A8, W4A16, W6A8 or auto)")
    q.add_argument("--ckpt", required=True, help="decoder.safetensors or a DecodeModule .ckpt")
    q.add_argument("--scheme", required=True, choices=("w8a8", "w4a16", "w6a8", "auto"),
                   help="auto: per-layer w4a16/w6a8/w8a8 from a sensitivity analysis under --budget (needs --calib)")
    q.add_argument("--budget", type=float, default=None, metavar="BITS",
                   help="auto: mean weight bits over the quantized layers, 4 to 8")
    q.add_argument("--attn-quant", default=None, choices=("adalog", "uniform"),
                   help="also quantize the attention probabilities (needs --calib)")
    q.add_argument("--attn-bits", type=int, default=4, choices=range(2, 9), metavar="2..8")
    q.add_argument("--act-quant", default=None, choices=("adalog", "uniform"),
                   help="also quantize the feed-forward's hidden activation (needs --calib)")
    q.add_argument("--act-bits", type=int, default=8, choices=range(2, 9), metavar="2..8")
    q.add_argument("--out", required=True, help="bundle directory to write")
    q.add_argument("--smoothquant", action=argparse.BooleanOptionalAction, default=None,
                   help="activation-aware scaling: SmoothQuant (w8a8, default on) / AWQ-style (w4a16, default off); "
                        "needs --calib")
    q.add_argument("--alpha", default=None, type=_alpha,
                   help="migration strength in [0, 1] or 'auto' (default: 0.5 for w8a8, auto for w4a16)")
    q.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128), help="w4a16 group size")
    a = sub.add_parser("adapt", help="add new subjects to a decoder trained with token statistics, without labels")
    a.add_argument("--ckpt", required=True, help="decoder.safetensors or a DecodeModule .ckpt (token_stats: true)")
    a.add_argument("--store", required=True, help="shard store with the subjects' recordings")
    a.add_argument("--subjects", nargs="+", required=True, help="subjects to adapt")
    a.add_argument("--task", default=None, help="only recordings of this BIDS task (default: all of the subjects')")
    a.add_argument("--source", default="session", choices=("session", "calibration"),
                   help="statistics from each subject's whole session (default) or its first --seconds")
    a.add_argument("--seconds", type=float, default=60.0, help="calibration length in s (default: 60)")
    a.add_argument("--window-s", type=float, default=None,
                   help="window length in s (default: the decoder's training window, else 5)")
    a.add_argument("--out", required=True, help="decoder file to write (.safetensors)")
    e = sub.add_parser("export", help="export a fine-tuned decoder to ONNX (fp32, or int8 for onnxruntime)")
    e.add_argument("--ckpt", required=True, help="decoder.safetensors or a DecodeModule .ckpt")
    e.add_argument("--onnx", required=True, help="output .onnx file")
    e.add_argument("--int8", action="store_true", help="int8-quantize the weight GEMMs with onnxruntime")
    e.add_argument("--int8-mode", default="dynamic", choices=("dynamic", "static"),
                   help="dynamic (default) or static QDQ (needs --calib)")
    for cmd in (q, e):
        cmd.add_argument("--subject", default=None,
                         help="deploy this subject's layers (required for a decoder trained with token statistics; "
                              "default: the shared model, what an unseen subject gets)")
        cmd.add_argument("--calib", default=None, metavar="STORE", help="shard store with calibration windows")
        cmd.add_argument("--windows", type=int, default=256, help="calibration windows (default: 256)")
        cmd.add_argument("--window-s", type=float, default=None,
                         help="calibration window length in s (default: the decoder's training window, else 5)")
        cmd.add_argument("--calib-subjects", nargs="+", default=None, help="subjects to calibrate on (default: all)")
        cmd.add_argument("--channel-types", nargs="+", default=None, help="keep only these channel types")
        cmd.add_argument("--batch-size", type=int, default=32)
        cmd.add_argument("--no-progress", action="store_true")
    _attention_parsers(sub)
    return p


def _hdf5_parsers(sub) -> None:
    h = sub.add_parser("import-hdf5", help="import an HDF5 corpus in the LaBraM layout into a store (no MNE)")
    h.add_argument("file", help="HDF5 file: one group per recording, a (channels, time) dataset in µV with "
                   "attributes chOrder and rsFreq")
    h.add_argument("store", help="output store (local path or fsspec URL)")
    h.add_argument("--dataset", default="eeg", help="name of the signal dataset in each group (default: eeg)")
    h.add_argument("--scale", type=float, default=1.0, help="factor to µV, e.g. 1e6 for a file in volts (default: 1)")
    h.add_argument("--keep-unpositioned", action="store_true",
                   help="keep channels whose names have no 10-05 montage position (default: fail their recording)")
    h.add_argument("--chunk-seconds", type=float, default=30.0,
                   help="time-chunk length in s (part of the store's preset; default: 30)")
    h.add_argument("--skip-errors", action="store_true", help="exit 0 even if some recordings failed")
    h.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run's lock on the store (default: fail at once)")
    h.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    x = sub.add_parser("export-hdf5", help="write a store's recordings as HDF5 in the LaBraM layout")
    x.add_argument("store", help="shard store")
    x.add_argument("file", help="HDF5 file to write")
    x.add_argument("--recordings", nargs="+", default=None, metavar="ID", help="recording ids (default: all)")
    x.add_argument("--subjects", nargs="+", default=None, help="only recordings of these subjects")
    x.add_argument("--task", default=None, help="only recordings of this BIDS task")
    x.add_argument("--upper-names", action="store_true", help="upper-case channel names, as LaBraM's own files")
    x.add_argument("--dataset", default="eeg", help="name of the signal dataset (default: eeg)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing file")
    x.add_argument("--window-s", type=float, default=None, metavar="S",
                   help="write a window selection instead: windows of S seconds as one (W, C, T) array with "
                        "label, recording, subject and start datasets (default: whole recordings, LaBraM layout)")
    x.add_argument("--stride-s", type=float, default=None, metavar="S", help="with --window-s: stride (default: S)")
    x.add_argument("--label-by", default=None, metavar="ENTITY",
                   help="with --window-s: label windows by this BIDS entity of their recording, classes in sorted "
                        "order (e.g. task: arithmetic=0, rest=1); recordings without the entity are left out")
    x.add_argument("--no-progress", action="store_true", help="hide the progress bar (with --window-s)")


def _detector_args(cmd: argparse.ArgumentParser) -> None:
    """Options shared by ``detect`` and ``stream``."""
    cmd.add_argument("--model", default=None, help="fine-tuned decoder for the engagement axis: decoder.safetensors, "
                     "a .ckpt, a quantized bundle directory or an .onnx file (default: indices only)")
    cmd.add_argument("--engaged-class", default=None, help="the decoder class meaning engaged (default: arithmetic/task/...)")
    cmd.add_argument("--subject", default=None, help="the decoder's subject layers to use (required for a "
                     "decoder trained with token statistics; an .onnx file has its subject fixed by "
                     "`brainfm export --subject`)")
    cmd.add_argument("--states", default=None, metavar="JSON", help="state set (default: AttentionGuard's four)")
    cmd.add_argument("--window-s", type=float, default=None,
                     help="window length in s (default: the --model's training window, else 4)")
    cmd.add_argument("--hop-s", type=float, default=0.5, help="hop in s (default: 0.5)")
    cmd.add_argument("--calibration-s", type=float, default=60.0, help="per-user baseline span in s (default: 60)")
    cmd.add_argument("--calibration", default=None, metavar="RECORDING",
                     help="take the per-user baseline from this earlier recording of the person (default: the "
                          "first --calibration-s of the session)")
    cmd.add_argument("--stats-half-life", type=float, default=None, metavar="S",
                     help="with a --model trained on subject-normalised windows: keep its input statistics "
                          "following the signal with this half-life in s (default: fixed after the first half of "
                          "the calibration span)")
    cmd.add_argument("--line-freq", type=float, default=50.0, help="mains frequency, 0 for no notch (default: 50)")
    cmd.add_argument("--min-dwell-s", type=float, default=2.0, help="minimum dwell time in s (default: 2)")
    cmd.add_argument("--decoder-weight", type=float, default=None,
                     help="the decoder's share of the engagement axis with --model (default: DetectorConfig's)")
    cmd.add_argument("--threads", type=int, default=1, help="inference threads (default: 1)")


def _attention_parsers(sub) -> None:
    d = sub.add_parser("detect", help="attention-state timeline of a recording (CSV, JSON and a plot)")
    d.add_argument("recordings", nargs="+", help="files MNE reads (joined in order as one session) or STORE::RECORDING_ID")
    d.add_argument("--out", required=True, help="output folder (timeline.csv, timeline.json, timeline.png)")
    d.add_argument("--chain", default=None, choices=("zero-phase", "causal", "none"),
                   help="preprocessing (default: zero-phase for files, none for store recordings)")
    d.add_argument("--no-plot", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    _detector_args(d)
    st = sub.add_parser("stream", help="live attention states from an LSL stream (outlet, JSON lines, dashboard)")
    st.add_argument("--source", required=True, help="lsl:NAME, the EEG stream's name")
    st.add_argument("--serve", default=None, metavar="HOST:PORT", help="serve the dashboard (e.g. 127.0.0.1:8765)")
    st.add_argument("--jsonl", default="-", help="JSON lines file ('-': stdout, the default; '' for none)")
    st.add_argument("--outlet", default="brainfm-attention", help="name of the LSL outlet of states ('' for none)")
    st.add_argument("--overrides", default=None, help="log of the person's overrides beside the decisions (JSON lines)")
    st.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    st.add_argument("--connect-timeout", type=float, default=5.0)
    _detector_args(st)


def _detector_config(args: argparse.Namespace, model=None):
    """The detector's settings; ``--window-s`` defaults to ``model``'s training window, else 4 s."""
    from brainfm.attention import DetectorConfig, StateModel  # noqa: PLC0415
    from brainfm.models.decoder import window_for  # noqa: PLC0415

    if args.subject and not args.model:
        raise UsageError("--subject chooses the decoder's subject layers: it needs --model")
    if args.stats_half_life is not None and not args.model:
        raise UsageError("--stats-half-life sets how the decoder's input statistics follow the signal: it needs --model")
    kwargs = {}
    if args.states:
        kwargs["states"] = StateModel.from_file(args.states)
    if args.decoder_weight is not None:
        kwargs["decoder_weight"] = args.decoder_weight
    # the detector warns when an explicit --window-s differs from the decoder's (AttentionDetector)
    window_s = args.window_s if args.window_s is not None else window_for(getattr(model, "window_s", None), None,
                                                                           DetectorConfig.window_s)
    return DetectorConfig(window_s=window_s, hop_s=args.hop_s, calibration_s=args.calibration_s,
                          line_freq=args.line_freq or None, min_dwell_s=args.min_dwell_s,
                          stats_half_life_s=args.stats_half_life, **kwargs)


def _engagement_model(args: argparse.Namespace):
    if not args.model:
        return None
    from brainfm.attention import EngagementModel  # noqa: PLC0415

    engaged = int(args.engaged_class) if args.engaged_class and args.engaged_class.isdigit() else args.engaged_class
    return EngagementModel(args.model, engaged, threads=args.threads, subject=args.subject)


def _calibrated(args: argparse.Namespace, spec, config, model):
    """A detector calibrated on ``--calibration`` (same channels as ``spec``), or None."""
    if not args.calibration:
        return None
    from brainfm.attention import AttentionDetector, read_session  # noqa: PLC0415

    calib = read_session([args.calibration])
    index = {n: i for i, n in enumerate(calib.spec.ch_names)}
    missing = [n for n in spec.ch_names if n not in index]
    if missing or calib.spec.sfreq != spec.sfreq:
        raise ValueError(f"--calibration {args.calibration}: needs the session's channels at {spec.sfreq:g} Hz "
                         f"(missing {missing[:5]}, rate {calib.spec.sfreq:g} Hz)")
    signal = calib.signal[[index[n] for n in spec.ch_names]]
    return AttentionDetector(spec, config, model).calibrate_on(signal, "none" if calib.preprocessed else "zero-phase")


def _detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415

    from brainfm.attention import detect_signal, read_session  # noqa: PLC0415
    from brainfm.attention.timeline import plot_timeline, write_csv, write_json  # noqa: PLC0415

    model = _engagement_model(args)
    config = _detector_config(args, model)
    session = read_session(args.recordings)
    chain = args.chain or ("none" if session.preprocessed else "zero-phase")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    detector = _calibrated(args, session.spec, config, model)
    with tqdm(total=session.signal.shape[1], unit="sample", disable=args.no_progress, desc="detect") as bar:
        outputs = list(detect_signal(session.signal, session.spec, config, model, chain, progress=bar.update,
                                     detector=detector))
    if not outputs:
        raise ValueError(f"{session.source} is shorter than one {config.window_s:g}-s window")
    states = config.states.names
    meta = {"source": session.source, "chain": chain, "channels": list(session.spec.ch_names), "subject": args.subject,
            "left_out": session.dropped, "sfreq": session.spec.sfreq, "segments": session.segments,
            "model": args.model, "window_s": config.window_s, "hop_s": config.hop_s,
            "calibration_s": config.calibration_s, "states": config.states.to_dict()}
    write_csv(outputs, out / "timeline.csv", states)
    write_json(outputs, out / "timeline.json", meta)
    if not args.no_plot:
        plot_timeline(outputs, out / "timeline.png", states, session.segments, session.source)
    counts = {s: sum(o.state == s for o in outputs) for s in dict.fromkeys(o.state for o in outputs)}
    print(f"{len(outputs)} windows -> {out}/timeline.csv, timeline.json{'' if args.no_plot else ', timeline.png'}: "
          + ", ".join(f"{s} {n}" for s, n in counts.items()))
    return 0


def _stream(args: argparse.Namespace) -> int:
    from brainfm.live import (Dashboard, JsonLines, LiveDetector, OverrideLog, StateOutlet,  # noqa: PLC0415
                              check_stream, open_stream, stream_name)

    name = stream_name(args.source)
    model = _engagement_model(args)
    config = _detector_config(args, model)
    stream = open_stream(args.source, bufsize=max(5.0, 2 * config.window_s), timeout=args.connect_timeout)
    source = check_stream(stream, name, model, config.window_s)
    overrides = OverrideLog(config.states.names, args.overrides)
    sinks = []
    if args.jsonl:
        sinks.append(JsonLines(sys.stdout if args.jsonl == "-" else args.jsonl))
    if args.outlet:
        sinks.append(StateOutlet(args.outlet))
    if args.serve:
        dashboard = Dashboard(args.serve, overrides, config.states.names)
        sinks.append(dashboard)
        print(f"dashboard: {dashboard.url}", file=sys.stderr, flush=True)
    print(f"stream {name!r}: {source.spec.n_channels} EEG channels at {source.spec.sfreq:g} Hz"
          + (f" (left out: {', '.join(source.dropped)})" if source.dropped else ""), file=sys.stderr, flush=True)
    live = LiveDetector(source, config, model, sinks, overrides, detector=_calibrated(args, source.spec, config, model))
    try:
        summary = live.run(duration=args.duration)
    finally:
        overrides.close()
        stream.disconnect()
    print(json.dumps({"stream": name, **summary, "overrides": overrides.summary()}), file=sys.stderr, flush=True)
    return 0


def _alpha(value: str) -> str | float:
    if value == "auto":
        return value
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise argparse.ArgumentTypeError(f"alpha must be a number in [0, 1] or 'auto', got {value!r}")
    return alpha


def _adapt(args: argparse.Namespace) -> int:
    """``brainfm adapt``: a token-statistics decoder with new subjects' label-free layers."""
    from brainfm.tasks.token_stats import adapt_decoder  # noqa: PLC0415

    if Path(args.out).resolve() == Path(args.ckpt).resolve():
        raise UsageError("--out must be a new file, not --ckpt")
    if Path(args.out).suffix != ".safetensors":
        raise UsageError(f"--out {args.out}: the adapted decoder is written as .safetensors")
    entities = {"task": args.task} if args.task else {}
    done = adapt_decoder(args.ckpt, args.store, args.subjects, args.out, args.source, args.seconds, args.window_s,
                         **entities)
    print(f"{args.out}: token statistics ({args.source}) and input statistics for {', '.join(done)}; deploy one "
          f"with --subject (brainfm export/quantize/detect)")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    if args.command == "quantize" and args.smoothquant is None:
        args.smoothquant = args.scheme in ("w8a8", "w6a8", "auto")
    if args.command == "quantize" and args.scheme == "auto" and (args.budget is None or not args.calib):
        _parser().error("quantize --scheme auto needs --budget BITS and --calib STORE")
    if args.command == "quantize" and (args.attn_quant or args.act_quant) and not args.calib:
        _parser().error("quantize --attn-quant/--act-quant need --calib STORE")
    if args.command == "quantize" and args.smoothquant and not args.calib:
        _parser().error("quantize --smoothquant needs --calib STORE (or pass --no-smoothquant)")
    if args.command == "export" and args.int8 and args.int8_mode == "static" and not args.calib:
        _parser().error("export --int8 --int8-mode static needs --calib STORE")
    from brainfm.deploy import commands  # noqa: PLC0415

    return commands.run_quantize(args) if args.command == "quantize" else commands.run_export(args)


class UsageError(ValueError):
    """A bad command-line argument, found before any work starts (exit code 2)."""


def _check_convert_args(args: argparse.Namespace) -> None:
    """Refuse arguments that would fail only after converting (:class:`UsageError`, exit 2)."""
    if args.targets is not None and not args.targets > 0:
        raise UsageError(f"--targets must be a window length > 0 s, got {args.targets:g}")
    if args.targets_stride is not None and (args.targets is None or not args.targets_stride > 0):
        raise UsageError("--targets-stride needs --targets and must be > 0 s")
    if args.targets_features is not None and args.targets is None:
        raise UsageError("--targets-features needs --targets")
    if args.targets_normalize is not None and args.targets is None:
        raise UsageError("--targets-normalize needs --targets")
    if args.targets_stats_source is not None and args.targets_normalize is None:
        raise UsageError("--targets-stats-source needs --targets-normalize")
    if args.targets_stats_seconds is not None and args.targets_stats_source != "calibration":
        raise UsageError("--targets-stats-seconds needs --targets-stats-source calibration")
    if args.targets_stats_seconds is not None and not 0 < args.targets_stats_seconds < math.inf:
        raise UsageError(f"--targets-stats-seconds must be a finite number > 0, got {args.targets_stats_seconds:g}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.wait < 0:
        raise UsageError("--wait must be >= 0 seconds")
    if args.report:
        report = Path(args.report)
        if report.is_dir():
            raise UsageError(f"--report {args.report} is a folder; give a file name, e.g. {report / 'convert.json'}")
        if not report.parent.resolve().is_dir():
            raise UsageError(f"--report {args.report}: folder {report.parent} does not exist")
        if not os.access(report.parent.resolve(), os.W_OK) or (report.exists() and not os.access(report, os.W_OK)):
            raise UsageError(f"--report {args.report} is not writable")


def _upgrade(store: str) -> int:
    from brainfm.data.store_write import upgrade_store  # noqa: PLC0415

    outcomes = upgrade_store(store)
    damaged = {rid: why for rid, why in outcomes.items() if why != "upgraded"}
    print(f"upgraded {len(outcomes) - len(damaged)} recording(s) of {store} to the current format"
          + (f"; {len(damaged)} damaged, left as they are" if damaged else ""))
    for rid, why in damaged.items():
        print(f"DAMAGED {rid}: {why}", file=sys.stderr)
    return 1 if damaged else 0


def _convert(args: argparse.Namespace) -> int:
    from brainfm.pipelines.convert import convert  # noqa: PLC0415

    if args.upgrade:
        if args.store is not None:
            raise UsageError("--upgrade takes only the store: brainfm convert --upgrade STORE")
        return _upgrade(args.bids_root)
    if args.store is None:
        raise UsageError("convert needs BIDS_ROOT and STORE (or --upgrade STORE)")
    _check_convert_args(args)
    logging.getLogger("brainfm.pipelines").setLevel(logging.CRITICAL)  # the summary below says it all
    report = convert(args.bids_root, args.store, args.preset, args.workers, args.scheduler, not args.no_progress,
                     prune=args.prune, wait=args.wait, verify=args.verify)
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(report.to_dict(), fh, indent=1)
    print(
        f"converted {len(report.converted)}, skipped {len(report.skipped)} (up to date), "
        f"failed {len(report.failed)} in {report.seconds:.1f} s"
    )
    for rid, why in report.remade.items():
        print(f"  re-made {rid}: {why[0]}")
    if report.removed:
        print(f"  removed {len(report.removed)} recording(s) whose group or source is gone: {', '.join(report.removed[:5])}")
    if report.orphaned:
        print(f"  {len(report.orphaned)} stored recording(s) have no source in the dataset any more "
              f"(--prune removes them): {', '.join(report.orphaned[:5])}")
    for key in report.dropped_target_sets:
        print(f"  target set {key!r} unlisted (recordings changed); recompute it with --targets")
    if report.warnings:
        print(f"  warnings on {len(report.warnings)} recording(s); they are in {args.store}/reports/:")
        for rid, messages in sorted(report.warnings.items()):
            print(f"    {rid}: {messages[0]}" + (f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""))
    for f in report.failed:
        print(f"  FAILED {f['source']}: {f['error']}", file=sys.stderr)
    if args.targets is not None:
        from brainfm.pipelines.targets import precompute_targets  # noqa: PLC0415

        from brainfm.targets import TargetSpec  # noqa: PLC0415

        spec = TargetSpec(features=tuple(args.targets_features)) if args.targets_features else None
        key = precompute_targets(args.store, args.targets, args.targets_stride, spec, progress=not args.no_progress,
                                 wait=args.wait, normalize=args.targets_normalize,
                                 stats_source=args.targets_stats_source or "session",
                                 stats_seconds=args.targets_stats_seconds or 60.0)
        hint = "" if args.targets_normalize is None else (
            f", with --data.init_args.normalize {args.targets_normalize} and the same stats_source")
        print(f"targets: set {key!r} (target_set: auto picks it; or --data.init_args.target_set {key}{hint})")
    return 0 if report.ok or args.skip_errors else 1


def _import_hdf5(args: argparse.Namespace) -> int:
    from brainfm.pipelines.hdf5_import import import_hdf5  # noqa: PLC0415

    if not (args.scale > 0 and args.chunk_seconds > 0 and args.wait >= 0):
        raise UsageError("--scale and --chunk-seconds must be > 0, --wait >= 0")
    logging.getLogger("brainfm.pipelines").setLevel(logging.CRITICAL)  # the summary below says it all
    report = import_hdf5(args.file, args.store, args.dataset, args.scale, args.keep_unpositioned, args.chunk_seconds,
                         wait=args.wait, progress=not args.no_progress)
    print(f"imported {len(report.imported)}, skipped {len(report.skipped)} (up to date), failed {len(report.failed)} "
          f"in {report.seconds:.1f} s")
    for key in report.dropped_target_sets:
        print(f"  target set {key!r} unlisted (recordings changed); recompute it with `brainfm convert --targets`")
    for rid, messages in sorted(report.warnings.items()):
        print(f"  {rid}: " + "; ".join(messages))
    for f in report.failed:
        print(f"  FAILED {f['error']}", file=sys.stderr)
    return 0 if report.ok or args.skip_errors else 1


def _export_hdf5(args: argparse.Namespace) -> int:
    from brainfm.data.hdf5 import export_store  # noqa: PLC0415
    from brainfm.data.store import ShardStore  # noqa: PLC0415

    store = ShardStore(args.store)
    ids = store.select(args.subjects, **({"task": args.task} if args.task else {}))
    if args.recordings is not None:
        unknown = sorted(set(args.recordings) - set(store.recording_ids))
        if unknown:
            raise UsageError(f"--recordings: {', '.join(unknown[:5])} not in {args.store}")
        ids = [rid for rid in ids if rid in set(args.recordings)]
    if args.window_s is None:
        if args.stride_s is not None or args.label_by is not None:
            raise UsageError("--stride-s and --label-by select windows: they need --window-s")
    else:
        return _export_hdf5_windows(args, store, ids)
    written = export_store(store, args.file, ids, upper_names=args.upper_names, dataset=args.dataset,
                           overwrite=args.overwrite)
    left_out = [rid for rid in ids if rid not in set(written)]
    print(f"exported {len(written)} recording(s) of {args.store} to {args.file}"
          + (f"; left out {len(left_out)} without EEG channels: {', '.join(left_out[:5])}" if left_out else ""))
    return 0


def _export_hdf5_windows(args: argparse.Namespace, store, ids: list[str]) -> int:
    labels = classes = None
    if args.label_by is not None:
        values = sorted({store.entry(rid).get(args.label_by) for rid in ids} - {None})
        if not values:
            raise UsageError(f"--label-by {args.label_by}: no selected recording of {args.store} has that entity")
        classes = [str(v) for v in values]
        labels = EntityLabels(args.label_by, {v: i for i, v in enumerate(values)})
    windows = FixedWindows(store, args.window_s, args.stride_s, recordings=ids, labels=labels, channel_types=("eeg",))
    n = export_windows(windows, args.file, upper_names=args.upper_names, dataset=args.dataset, classes=classes,
                       overwrite=args.overwrite, progress=not args.no_progress)
    counts = ", ".join(f"{c} {int((windows.labels == i).sum())}" for i, c in enumerate(classes or ()))
    print(f"exported {n} windows of {args.window_s:g} s from {len(set(windows.rec_index.tolist()))} recording(s) of "
          f"{args.store} to {args.file}" + (f"; windows by {args.label_by}: {counts}" if classes else ""))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from brainfm.data.store_verify import verify_store  # noqa: PLC0415

    result = verify_store(args.store, quick=args.quick)
    if args.json:
        print(json.dumps({"store": result.store, "checked": result.checked, "ok": result.ok,
                          "problems": result.problems, "notes": result.notes}, indent=1))
        return 0 if result.ok else 1
    print(f"{args.store}: {result.checked} recording(s) checked ({'sizes' if args.quick else 'SHA-256'}), "
          f"{len(result.problems)} damaged")
    for rid, problems in result.problems.items():
        for problem in problems:
            print(f"  DAMAGED {rid}: {problem}", file=sys.stderr)
    if result.notes:
        print(f"  {len(result.notes)} recording(s) are format 1 (no recorded hashes): checked that every chunk "
              f"exists{'' if args.quick else ' and decodes'}")
    if not result.ok:
        print("re-make them with `brainfm convert BIDS_ROOT STORE`, which re-makes what fails this check",
              file=sys.stderr)
    return 0 if result.ok else 1


def _info(args: argparse.Namespace) -> int:
    if (Path(args.store) / "bundle.json").is_file():
        from brainfm.deploy.commands import run_info_bundle  # noqa: PLC0415

        return run_info_bundle(args)
    from brainfm.data.store import ShardStore  # noqa: PLC0415

    summary = ShardStore(args.store).summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if key == "total_hours":
            value = f"{value:.3f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key:<{width}}  {value}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from brainfm.pipelines import fetch, sample  # noqa: PLC0415

    store, report = sample.build_sample(
        args.dest,
        eegmat_subjects=args.eegmat_subjects if args.eegmat_subjects is not None else fetch.EEGMAT_SUBJECTS,
        eegbci_runs=args.eegbci_runs if args.eegbci_runs is not None else sample.EEGBCI_RUNS,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(f"sample store: {store} ({len(report.converted)} converted, {len(report.skipped)} up to date)")
    return 0 if report.ok else 1


def sample_store_path() -> str:
    """The bundled sample store, built on first use: what ``store: null`` in a config means."""
    from brainfm.pipelines.sample import sample_store  # noqa: PLC0415 - imports MNE; only when needed

    return str(sample_store())


def lightning_main(args: Sequence[str] | None) -> None:
    """LightningCLI in subclass mode over brainfm's modules and data modules.

    ``args=None`` lets LightningCLI read ``sys.argv`` itself (the console script);
    a list runs it from Python, as the tests do. A data ``store: null`` is resolved here to
    the sample store (:func:`sample_store_path`), so :mod:`brainfm.data` never imports the
    conversion pipelines.
    """
    # Lightning 2.6 uses an API jsonargparse deprecates; users cannot act on that warning.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # Deferred: importing torch and Lightning takes seconds, which `brainfm --help` and the
    # data commands do not need.
    import lightning as L  # noqa: PLC0415
    from lightning.pytorch.cli import LightningCLI  # noqa: PLC0415

    import brainfm.data.datamodule  # noqa: F401, PLC0415 - registers the classes for subclass mode
    import brainfm.tasks  # noqa: F401, PLC0415

    built: list = []  # the trainer, once LightningCLI has built it

    class BrainCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            data = config.get("data")
            init_args = data.get("init_args") if data is not None else None
            if init_args is not None and "store" in init_args and init_args.store is None:
                init_args.store = sample_store_path()

        def instantiate_classes(self) -> None:
            super().instantiate_classes()
            built.append((self.trainer, existing_log_dirs(self.trainer)))

    # Lightning advertises a cloud logger on every run; it is not a message about this run.
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvertisement) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_NoAdvertisement())
    try:
        BrainCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if args is None else list(args),
            save_config_kwargs={"overwrite": True},
        )
    except BaseException:
        for trainer, existed in built:
            discard_empty_runs(trainer, existed)
        raise


class _NoAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


#: What a run that failed before it logged anything leaves in its folder (Lightning's CSVLogger and SaveConfigCallback).
RUN_BOOKKEEPING = frozenset({"config.yaml", "hparams.yaml"})


def _log_dirs(trainer) -> list[Path]:
    """Where the trainer's loggers write (a logger that cannot say is left out)."""
    dirs = []
    for logger in getattr(trainer, "loggers", ()):
        try:
            where = getattr(logger, "log_dir", None)
        except Exception:  # noqa: BLE001 - a logger that cannot say where it writes has nothing to remove
            where = None
        if where:
            dirs.append(Path(where))
    return dirs


def existing_log_dirs(trainer) -> set[Path]:
    """The trainer's log folders that exist before it runs (a pinned version, a resumed run, a shared folder)."""
    return {d for d in _log_dirs(trainer) if d.exists()}


def discard_empty_runs(trainer, existed: set[Path] = frozenset()) -> list[Path]:
    """Remove the log folders a run created and left empty because it failed before its first training
    step: nothing in them but :data:`RUN_BOOKKEEPING` and TensorBoard's event file, which it opens at start.
    A failed start then does not take a version number. Folders in ``existed`` (there before the run:
    a pinned or resumed version, a folder shared by runs) are never touched, nor is anything on ranks
    other than 0. Returns the folders removed; one that cannot be removed is reported, not raised, so
    the run's own error stays the one the user reads."""
    if getattr(trainer, "global_step", 0) or not getattr(trainer, "is_global_zero", True):
        return []
    removed = []
    for folder in _log_dirs(trainer):
        if folder in existed or not folder.is_dir():
            continue
        if all(f.is_dir() or f.name in RUN_BOOKKEEPING or f.name.startswith("events.out.tfevents.")
               for f in folder.rglob("*")):
            try:
                shutil.rmtree(folder)
            except OSError as err:
                print(f"brainfm: could not remove the empty run folder {folder}: {err}", file=sys.stderr)
                continue
            removed.append(folder)
            print(f"brainfm: removed the empty run folder {folder}", file=sys.stderr)
    return removed


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainfm`` console script: one line per error, exit codes as above."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv else "brainfm"
    previous_format = warnings.formatwarning
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            lightning_main(None if args is None and not debug else argv)
            return 0
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        if not debug:
            warnings.formatwarning = _one_line_warning(command, warnings.formatwarning)
        ns = _parser().parse_args(argv)
        handler = {"convert": _convert, "info": _info, "verify": _verify, "sample-data": _sample,
                   "quantize": _deploy, "export": _deploy, "import-hdf5": _import_hdf5, "export-hdf5": _export_hdf5,
                   "detect": _detect, "stream": _stream, "adapt": _adapt}[ns.command]
        return handler(ns)
    except UsageError as err:
        if debug:
            raise
        print(f"brainfm {command}: {err} (see `brainfm {command} --help`)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"brainfm {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        if not isinstance(exit_.__context__, KeyboardInterrupt):
            raise
        # Lightning shuts a run down gracefully on Ctrl-C, then exits 1 while handling it
        print(f"brainfm {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place errors become a line a person reads
        if debug:
            raise
        print(f"brainfm {command}: {error_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous_format


def _one_line_warning(command: str, default):
    """``warnings.formatwarning`` that writes brainfm's own warnings as one line a person reads
    (``brainfm detect: warning: ...``) and everyone else's as before (``--debug`` keeps them all)."""
    package = Path(__file__).resolve().parent

    def format_warning(message, category, filename, lineno, line=None):
        if not filename.startswith("<") and Path(filename).resolve().is_relative_to(package):
            return f"brainfm {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    return format_warning


#: jsonargparse's first line when a class in the config failed to build; the cause follows it
UNION_FAILURE = "Does not validate against any of the Union subtypes"


def error_line(err: BaseException) -> str:
    """One line for an error: its message (first line), with the type only when it says more.
    A config class that failed to build (jsonargparse's union failure) gives its constructor's error."""
    cause = err.__cause__
    if str(err).startswith(UNION_FAILURE) and isinstance(cause, Exception) and not str(cause).startswith("Expected"):
        return error_line(cause)
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    lines = str(message).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 400:
        text = text[:399] + "…"
    plain = (OSError, ValueError, KeyError, RuntimeError)
    return text if isinstance(err, plain) and text else f"{type(err).__name__}: {text}".rstrip(": ")


if __name__ == "__main__":
    sys.exit(main())
