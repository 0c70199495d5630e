"""Issue #16 evidence on CPU: AdaLog vs uniform per tensor, and end-to-end EEGMAT accuracy.

Two tables, both on the decoder of ``benchmarks/_quant_decoder.py`` (``tiny`` fine-tuned
from the cached sample encoder on CBraMod's EEGMAT training subjects; or ``--ckpt``):

1. **Per-tensor SQNR.** Quantizers are searched (FPCS, :mod:`brainfm.deploy.adalog`) on
   ``--calib-windows`` windows of the calibration subjects and scored on test windows: for
   each block's spatial and temporal attention probabilities and FFN hidden activation,
   the SQNR of the tensor itself and of what the next matmul makes of it (``P V`` or
   ``H W_2^T``), AdaLog against uniform at 3, 4 and 8 bits, same tensors, same search. Two
   uniform baselines: ``uniform`` keeps real zero in range (``[min(0, min x), hi]``, what an
   integer pipeline with masked keys needs) and ``uniform-minmax`` spans ``[min x, hi]``.
2. **End-to-end.** Balanced accuracy on the test subjects (CBraMod's eegmat32-35, a window
   every ``--stride`` s), logits SQNR and prediction agreement against fp32, and the bundle
   size in bytes, for fp32, W8A8, W4A16, W6A8, ``auto`` at two budgets, and W8A8 with
   AdaLog (or uniform) attention probabilities and hidden activations.

    python benchmarks/bench_quant.py --store STORE [--ckpt decoder.safetensors] --json out.json

Runs the CPU reference kernels (``TRITON_INTERPRET=0``) on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _quant_decoder import LABELS, TEST, TRAIN, finetune  # noqa: E402

from brainfm.data import EntityLabels, FixedWindows, ShardStore, collate_windows  # noqa: E402
from brainfm.deploy import calibrate, calibration_batches, load, load_checkpoint, quantize, save_bundle  # noqa: E402
from brainfm.deploy.adalog import collect_tensors, search, site_error  # noqa: E402
from brainfm.deploy.calibrate import decoder_inputs  # noqa: E402
from brainfm.kernels.reference import sqnr_db  # noqa: E402

CALIB = TRAIN[:4]


def _windows(store: str, subjects: list[str], stride: float) -> list[dict]:
    st = ShardStore(store)
    ds = FixedWindows(st, 5.0, stride, st.select(subjects), EntityLabels("task", LABELS))
    return list(torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=collate_windows))


def _logits(model, batches: list[dict]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(*decoder_inputs(b)) for b in batches])


def _bacc(logits: torch.Tensor, y: torch.Tensor) -> float:
    pred = logits.argmax(1)
    return 100 * float(np.mean([(pred[y == c] == c).float().mean() for c in y.unique()]))


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir()) if f.is_file())


def tensor_table(decoder, calib: list[dict], test: list[dict], windows: int) -> list[dict]:
    """AdaLog vs uniform on the same tensors: search on ``calib``, score on ``test``."""
    fit = collect_tensors(decoder, calib, windows)
    held = collect_tensors(decoder, test, windows, seed=1)
    rows = []
    for site in fit:
        x, m = held[site]["x"], held[site]["m"]
        ref_out = (x.unsqueeze(-2) @ m).squeeze(-2) if m.dim() == 3 else x @ m
        for bits in (3, 4, 8):
            row = {"site": site, "bits": bits}
            for kind in ("adalog", "uniform", "uniform-minmax"):
                q = search(kind, fit[site]["x"], fit[site]["m"], bits)
                xq = q(x)
                err = site_error(x, m, xq)
                row[kind] = {"tensor_sqnr_db": round(sqnr_db(x, xq), 2),
                             "output_sqnr_db": round(10 * np.log10(float(ref_out.pow(2).sum()) / max(err, 1e-30)), 2),
                             "spec": q.spec()}
            rows.append(row)
    return rows


def accuracy_table(ckpt: Path, store: str, calib: list[dict], test: list[dict], windows: int,
                   workdir: Path) -> list[dict]:
    decoder = load_checkpoint(ckpt)
    stats = calibrate(decoder, calib, windows)
    common = dict(stats=stats, n_windows=windows)
    methods = {
        "W8A8 (SmoothQuant a=0.5)": lambda: quantize(decoder, "w8a8", calib, **common),
        "W4A16 g64 (RTN)": lambda: quantize(decoder, "w4a16", calib, **common),
        "W6A8 (SmoothQuant a=0.5)": lambda: quantize(decoder, "w6a8", calib, **common),
        "auto, budget 5 bits": lambda: quantize(decoder, "auto", calib, budget=5.0, **common),
        "auto, budget 6 bits": lambda: quantize(decoder, "auto", calib, budget=6.0, **common),
        "W8A8 + AdaLog 4-bit attention": lambda: quantize(decoder, "w8a8", calib, attn_quant="adalog", attn_bits=4,
                                                          **common),
        "W8A8 + uniform 4-bit attention": lambda: quantize(decoder, "w8a8", calib, attn_quant="uniform", attn_bits=4,
                                                           **common),
        "W8A8 + AdaLog 3-bit attention": lambda: quantize(decoder, "w8a8", calib, attn_quant="adalog", attn_bits=3,
                                                          **common),
        "W8A8 + uniform 3-bit attention": lambda: quantize(decoder, "w8a8", calib, attn_quant="uniform", attn_bits=3,
                                                           **common),
        "W8A8 + AdaLog 8-bit attention": lambda: quantize(decoder, "w8a8", calib, attn_quant="adalog", attn_bits=8,
                                                          **common),
        "W8A8 + uniform 8-bit attention": lambda: quantize(decoder, "w8a8", calib, attn_quant="uniform", attn_bits=8,
                                                           **common),
        "W8A8 + AdaLog 4-bit attn + 8-bit FFN act.": lambda: quantize(
            decoder, "w8a8", calib, attn_quant="adalog", attn_bits=4, act_quant="adalog", act_bits=8, **common),
        "W8A8 + uniform 4-bit attn + 8-bit FFN act.": lambda: quantize(
            decoder, "w8a8", calib, attn_quant="uniform", attn_bits=4, act_quant="uniform", act_bits=8, **common),
        "W8A8 + AdaLog 4-bit FFN act.": lambda: quantize(decoder, "w8a8", calib, act_quant="adalog", act_bits=4,
                                                         **common),
        "W8A8 + uniform 4-bit FFN act.": lambda: quantize(decoder, "w8a8", calib, act_quant="uniform", act_bits=4,
                                                          **common),
    }
    y = torch.cat([b["label"] for b in test])
    ref = _logits(decoder, test)
    rows = [{"method": "fp32", "balanced_accuracy": round(_bacc(ref, y), 2), "bytes": _bytes(ckpt),
             "logits_sqnr_db": None, "agreement": 1.0, "windows": len(y)}]
    for name, make in methods.items():
        t0 = time.perf_counter()
        model = make()
        seconds = time.perf_counter() - t0
        out = save_bundle(model, workdir / name.replace(" ", "_").replace("/", "_"))
        got = _logits(load(out), test)  # the bundle as saved
        row = {"method": name, "balanced_accuracy": round(_bacc(got, y), 2), "bytes": _bytes(out),
               "logits_sqnr_db": round(sqnr_db(ref, got), 2),
               "agreement": round(float((got.argmax(1) == ref.argmax(1)).float().mean()), 4),
               "quantize_s": round(seconds, 1), "windows": len(y)}
        if "auto" in model.deploy_config:
            kinds = [s["kind"] for s in model.deploy_config["layers"].values()]
            row["mix"] = {k: kinds.count(k) for k in ("w4a16", "w6a8", "w8a8")}
            row["mean_bits"] = model.deploy_config["auto"]["mean_bits"]
        rows.append(row)
        print(f"{name:<44} bacc {row['balanced_accuracy']:6.2f}  SQNR {row['logits_sqnr_db']:6.2f} dB  "
              f"agree {row['agreement']:.4f}  {row['bytes']:>7} B", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="store with the EEGMAT subjects (the sample store)")
    p.add_argument("--ckpt", default=None, help="decoder.safetensors (default: fine-tune as _quant_decoder.py)")
    p.add_argument("--workdir", default=None, help="where the fine-tuned decoder is kept (default: a temp dir)")
    p.add_argument("--calib-windows", type=int, default=128)
    p.add_argument("--stride", type=float, default=2.5, help="test window stride in s")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        ckpt = Path(args.ckpt) if args.ckpt else finetune(args.store, work / "decoder")
        calib = list(calibration_batches(args.store, args.calib_windows, 5.0, subjects=CALIB))
        test = _windows(args.store, TEST, args.stride)
        decoder = load_checkpoint(ckpt)
        tensors = tensor_table(decoder, calib, test, args.calib_windows)
        for r in tensors:
            a, u, mm = r["adalog"], r["uniform"], r["uniform-minmax"]
            print(f"{r['site']:<28} {r['bits']}-bit  tensor SQNR adalog {a['tensor_sqnr_db']:6.2f} uniform "
                  f"{u['tensor_sqnr_db']:6.2f} min-max {mm['tensor_sqnr_db']:6.2f} | output SQNR adalog "
                  f"{a['output_sqnr_db']:6.2f} uniform {u['output_sqnr_db']:6.2f} "
                  f"min-max {mm['output_sqnr_db']:6.2f} dB",
                  flush=True)
        accuracy = accuracy_table(ckpt, args.store, calib, test, args.calib_windows, work / "bundles")
    flags = subprocess.run("grep -o 'avx512_vnni\\|avx2' /proc/cpuinfo | sort -u", shell=True, capture_output=True,
                           text=True).stdout.split()
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "flags": flags,
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
              "tensors": tensors, "accuracy": accuracy}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
