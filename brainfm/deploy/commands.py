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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _calib(args: argparse.Namespace, config, windows: int):
    """Calibration batches from ``--calib`` (checked against the model's sampling rate)."""
    from brainfm.deploy.calibrate import calibration_batches  # noqa: PLC0415

    loader = calibration_batches(args.calib, windows, args.window_s, args.calib_subjects, args.channel_types,
                                 batch_size=args.batch_size)
    sfreq = loader.dataset.dataset.sfreq
    if abs(sfreq - config.sfreq) > 1e-6:
        raise ValueError(f"{args.calib} is at {sfreq:g} Hz, the model expects {config.sfreq:g} Hz")
    config.check_window(int(round(args.window_s * config.sfreq)))
    return loader


def _file_mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def run_quantize(args: argparse.Namespace) -> int:
    """``brainfm quantize``: checkpoint -> calibrated, quantized bundle directory."""
    from brainfm.deploy import load, load_checkpoint, quantize, save_bundle  # noqa: PLC0415
    from brainfm.deploy.calibrate import decoder_inputs  # noqa: PLC0415
    from brainfm.kernels.reference import sqnr_db  # noqa: PLC0415

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
    from brainfm.deploy import export_onnx, load_checkpoint, onnx_session, quantize_onnx, run_onnx  # noqa: PLC0415
    from brainfm.deploy.calibrate import decoder_inputs  # noqa: PLC0415
    from brainfm.deploy.export import example_inputs  # noqa: PLC0415
    from brainfm.kernels.reference import sqnr_db  # noqa: PLC0415

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
