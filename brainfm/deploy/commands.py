"""``brainfm quantize`` and ``brainfm export``: the command-line side of :mod:`brainfm.deploy`.

The parsers live in :mod:`brainfm.cli` (so that ``brainfm --help`` does not import torch);
these functions take the parsed namespace and return the exit code.

Examples::

    brainfm quantize --ckpt decoder.safetensors --scheme w8a8 --calib STORE --out bundle/ \\
        --calib-subjects eegmat00 eegmat01
    brainfm export --ckpt decoder.safetensors --onnx model.onnx
    brainfm export --ckpt decoder.safetensors --onnx model.int8.onnx --int8 --calib STORE
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from brainfm.data.sampling import calibration_windows, window_loader
from brainfm.deploy.bundle import load, save_bundle
from brainfm.deploy.calibrate import decoder_inputs
from brainfm.deploy.checkpoint import load_checkpoint
from brainfm.deploy.export import example_inputs, export_onnx, onnx_session, quantize_onnx, run_onnx
from brainfm.deploy.quantize import quantize
from brainfm.kernels.reference import sqnr_db
from brainfm.models.config import ModelConfig


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _calib(args: argparse.Namespace, config: ModelConfig, windows: int):
    """Calibration batches from ``--calib``, checked against the model (:meth:`ModelConfig.for_signal`)."""
    dataset, picks = calibration_windows(args.calib, windows, args.window_s, args.calib_subjects, args.channel_types)
    for spec in dict.fromkeys(dataset.specs):  # each distinct montage once
        config.for_signal(spec, args.window_s)
    return window_loader(dataset, picks, args.batch_size)


def _file_mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def run_quantize(args: argparse.Namespace) -> int:
    """``brainfm quantize``: checkpoint -> calibrated, quantized bundle directory."""
    decoder = load_checkpoint(args.ckpt)
    loader = _calib(args, decoder.config, args.windows) if args.calib else None
    model = quantize(decoder, args.scheme, loader, smoothquant=args.smoothquant, alpha=args.alpha,
                     group_size=args.group_size, n_windows=args.windows, progress=not args.no_progress)
    extra = {"checkpoint": os.fspath(args.ckpt), "calib_store": args.calib, "window_s": args.window_s,
             "calib_subjects": args.calib_subjects}
    out = save_bundle(model, args.out, extra=extra)
    cfg = model.deploy_config
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


def run_export(args: argparse.Namespace) -> int:
    """``brainfm export``: checkpoint -> ONNX (fp32, or int8 for onnxruntime with ``--int8``)."""
    decoder = load_checkpoint(args.ckpt)
    out = Path(args.onnx)
    loader = _calib(args, decoder.config, args.windows) if args.calib else None
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
