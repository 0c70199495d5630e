"""``brainfm quantize`` and ``brainfm export``: the command-line side of :mod:`brainfm.deploy`.

The parsers live in :mod:`brainfm.cli` (so that ``brainfm --help`` does not import torch);
these functions take the parsed namespace and return the exit code.

Examples::

    brainfm quantize --ckpt decoder.safetensors --scheme w8a8 --calib STORE --out bundle/ \\
        --calib-subjects eegmat00 eegmat01
    brainfm quantize --ckpt decoder.safetensors --scheme auto --budget 6 --calib STORE --out bundle/ \\
        --attn-quant adalog --attn-bits 4
    brainfm info bundle/
    brainfm export --ckpt decoder.safetensors --onnx model.onnx
    brainfm export --ckpt decoder.safetensors --onnx model.int8.onnx --int8 --calib STORE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from brainfm.data.dataset import FixedWindows
from brainfm.data.normalize import fit_normalizer
from brainfm.data.sampling import calibration_windows, window_loader
from brainfm.deploy.bundle import WEIGHTS_NAME, load, read_config, save_bundle
from brainfm.deploy.calibrate import decoder_inputs
from brainfm.deploy.checkpoint import load_checkpoint, shared_model_note
from brainfm.deploy.export import example_inputs, export_onnx, onnx_session, quantize_onnx, run_onnx
from brainfm.deploy.quantize import quantize
from brainfm.kernels.reference import sqnr_db
from brainfm.models.decoder import DEFAULT_WINDOW_S, BrainDecoder, window_for


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _calib(args: argparse.Namespace, decoder: BrainDecoder, windows: int):
    """Calibration batches from ``--calib``, checked against the model (:meth:`ModelConfig.for_signal`)
    and normalised as the decoder's training windows were: its method, with each calibration subject's
    statistics from that subject's own session in the store (no labels)."""
    dataset, picks = calibration_windows(args.calib, windows, args.window_s, args.calib_subjects, args.channel_types)
    for spec in dict.fromkeys(dataset.specs):  # each distinct montage once
        decoder.config.for_signal(spec, args.window_s)
    if decoder.normalization is not None:
        meta = json.loads(decoder.normalization[1])
        first = next(iter(meta["subjects"].values()), {})  # the source and length training used
        source, seconds = first.get("source", "session"), first.get("seconds") or 60.0
        # statistics of the subjects the chosen windows come from, over all their recordings (not the whole store)
        subjects = {dataset.subjects[dataset.rec_index[i]] for i in picks}
        fit_on = FixedWindows(dataset.store, args.window_s, channel_types=args.channel_types,
                              recordings=[r for r, s in zip(dataset.recordings, dataset.subjects) if s in subjects])
        dataset.normalizer = fit_normalizer([fit_on], meta["method"], source, seconds)
        _log(f"calibration windows normalised as in training ({meta['method']}, each subject's {source} statistics)")
    return window_loader(dataset, picks, args.batch_size)


def _deployed(args: argparse.Namespace):
    """The checkpoint's decoder set to deploy ``--subject`` (or its shared model, said on stderr);
    ``--window-s`` defaults to its training window."""
    decoder = load_checkpoint(args.ckpt, args.subject)
    args.window_s = window_for(decoder.window_s, args.window_s, DEFAULT_WINDOW_S)  # for the calibration windows
    note = shared_model_note(decoder)
    _log(note if note else f"deploying subject {decoder.deploy_subject}'s layers" if decoder.deploy_subject else
         "deploying the shared model")
    return decoder


def _file_mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def run_quantize(args: argparse.Namespace) -> int:
    """``brainfm quantize``: checkpoint -> calibrated, quantized bundle directory."""
    decoder = _deployed(args)
    loader = _calib(args, decoder, args.windows) if args.calib else None
    model = quantize(decoder, args.scheme, loader, smoothquant=args.smoothquant, alpha=args.alpha,
                     group_size=args.group_size, n_windows=args.windows, progress=not args.no_progress,
                     budget=args.budget, attn_quant=args.attn_quant, attn_bits=args.attn_bits,
                     act_quant=args.act_quant, act_bits=args.act_bits)
    extra = {"checkpoint": os.fspath(args.ckpt), "calib_store": args.calib, "window_s": args.window_s,
             "calib_subjects": args.calib_subjects}
    out = save_bundle(model, args.out, extra=extra)
    cfg = model.deploy_config
    if args.scheme == "auto":
        kinds = [spec["kind"] for spec in cfg["layers"].values()]
        _log(f"auto (budget {args.budget} bits, mean {cfg['auto']['mean_bits']:.2f}): "
             + ", ".join(f"{kinds.count(k)} {k}" for k in ("w4a16", "w6a8", "w8a8")))
    _log(f"{args.scheme}: {len(cfg['layers'])} linear layers quantized, {len(cfg['float_layers'])} kept in float "
         f"({', '.join(cfg['float_layers']) or 'none'})")
    line = f"bundle {out}: {_file_mib(out):.3f} MiB (checkpoint {_file_mib(Path(args.ckpt)):.3f} MiB)"
    if loader is not None:  # check the bundle as saved against fp32 on the first calibration batch
        reloaded = load(out)
        with torch.inference_mode():
            x = decoder_inputs(next(iter(loader)))
            ref, got = decoder(*x), reloaded(*x)
        agree = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
        line += (f"; logits SQNR {sqnr_db(ref, got):.1f} dB, prediction agreement {agree:.3f} "
                 f"on {len(ref)} calibration windows")
    print(line)
    return 0


def _quantizer(spec: dict) -> str:
    if spec["kind"] == "adalog":
        return (f"adalog {spec['bits']}-bit, base 2^({spec['q']}/37), scale {spec['scale']:.4g}, "
                f"shift {spec['shift']:.4g}")
    return f"uniform {spec['bits']}-bit on [{spec['lo']:.4g}, {spec['hi']:.4g}]"


def run_info_bundle(args: argparse.Namespace) -> int:
    """``brainfm info BUNDLE``: scheme, per-layer precision and sensitivity, activation quantizers."""
    path = Path(args.store)
    doc = read_config(path)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    dec = doc["decoder"]
    print(f"bundle     {path} ({(path / WEIGHTS_NAME).stat().st_size} bytes of weights)")
    print(f"scheme     {doc['scheme']}" + (f", group size {doc['group_size']}" if doc.get("group_size") else "")
          + (f", SmoothQuant alpha {doc['alpha']}" if doc.get("smoothquant") else ""))
    print(f"decoder    {dec['config'].get('name', '?')}, {dec['n_classes']} classes; "
          f"calibrated on {doc.get('calibration', {}).get('windows', 0)} windows")
    auto = doc.get("auto")
    if auto:
        print(f"auto       budget {auto['budget_bits']} mean weight bits, chosen {auto['mean_bits']:.3f}")
    sens = (auto or {}).get("sensitivity", {})
    report = doc.get("report", {})
    width = max((len(n) for n in doc["layers"]), default=5)
    head = f"{'layer':<{width}}  {'kind':<6} {'shape':>10}  {'out SQNR dB':>11}"
    if sens:
        head += f"  sensitivity ({auto.get('metric', 'layer')} SQNR dB) at w4a16 / w6a8 / w8a8 / a8"
    print(head)
    for name, spec in doc["layers"].items():
        sqnr = report.get(name, {}).get("calib_output_sqnr_db")
        line = (f"{name:<{width}}  {spec['kind']:<6} {spec['in_features']:>4}x{spec['out_features']:<5}  "
                f"{'-' if sqnr is None else f'{sqnr:.1f}':>11}")
        if name in sens:
            line += "  " + " / ".join("-" if sens[name].get(k) is None else f"{sens[name][k]:.1f}"
                                      for k in ("w4a16", "w6a8", "w8a8", "a8"))
        print(line)
    for name, why in doc.get("float_layers", {}).items():
        print(f"{name:<{width}}  float  ({why})")
    for name, branches in doc.get("attn_quant", {}).items():
        for branch, spec in branches.items():
            print(f"{name} {branch} attention: {_quantizer(spec)}")
    for name, spec in doc.get("act_quant", {}).items():
        print(f"{name}: {_quantizer(spec)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``brainfm export``: checkpoint -> ONNX (fp32, or int8 for onnxruntime with ``--int8``)."""
    decoder = _deployed(args)
    out = Path(args.onnx)
    loader = _calib(args, decoder, args.windows) if args.calib else None
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if args.int8 else out
        _log(f"exporting {args.ckpt} to ONNX (torch.onnx dynamo exporter) ...")
        export_onnx(decoder, fp32)
        if args.int8:
            _log(f"int8 ({args.int8_mode}) quantization with onnxruntime ...")
            quantize_onnx(fp32, out, args.int8_mode, loader, args.windows)
        # check on real windows when given, else on synthetic ones
        x = [t[:32] for t in decoder_inputs(next(iter(loader)))] if loader is not None else \
            list(example_inputs(decoder.config, batch=4))
        with torch.inference_mode():
            ref = decoder(*x)
        got = run_onnx(onnx_session(out), *x)
    agree = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    print(f"{out}: {_file_mib(out):.3f} MiB ({'int8 ' + args.int8_mode if args.int8 else 'fp32'}); vs PyTorch fp32 "
          f"on {len(ref)} windows: max |diff| {float((ref - got).abs().max()):.2e}, SQNR {sqnr_db(ref, got):.1f} dB, "
          f"prediction agreement {agree:.3f}")
    return 0
