"""GPU figures of issue #15 item 6, side by side in one run: training, inference and targets.

Rows (``ratio > 1`` means brainfm is better):

* **bf16 train step** of the ``base`` encoder against braindecode ``CBraMod`` (same size,
  19 ch x 30 s at 200 Hz, ``--batch-size`` windows): forward, a per-token
  ``Linear(200, 200)`` reconstruction head, MSE, backward and a fused AdamW step, both under
  ``torch.autocast(bfloat16)`` with fp32 master weights, both at CBraMod's dropout 0.1
  (equal settings) and brainfm also at its default (no dropout). Each side's **MFU** is the
  FLOPs that :class:`torch.utils.flop_counter.FlopCounterMode` counts in one step, times
  steps per second, over the dense bf16 peak (``--peak-tflops``; 989 for H100 SXM and H200,
  NVIDIA's datasheets);
* **encoder latency at batch 1** (19 ch x 4 s, the streaming case) and throughput at
  ``--infer-batch``, for the ``base`` decoder in fp32, bf16 (autocast), W8A8 and W4A16
  (:func:`brainfm.deploy.quantize`, round-to-nearest, the Triton kernels), each against
  brainfm fp32, plus braindecode CBraMod in fp32 and bf16 as the outside anchor;
* **neurodynamics targets** (:func:`brainfm.targets.compute_targets`, the default spec) on
  real EEGMAT windows: the same code on the GPU against the machine's CPU, windows/s, and
  the largest difference between the two results.

Timings: CUDA-synchronised wall clock; train steps as the mean over ``--steps`` steps after
warm-up, latency as the median of ``--latency-calls`` calls after warm-up (spread as the
10th-90th percentile in the row name's companion ``*_p10_p90`` field).

Usage::

    python benchmarks/bench_gpu.py --json gpu-model.json                 # needs CUDA
    python benchmarks/bench_gpu.py --device cpu --quick                  # smoke run, any machine
    python benchmarks/bench_gpu.py --windows-file eegmat_windows.npz ... # windows saved by --save-windows

The EEGMAT windows come from ``../shared/data`` (``bench_targets.load_windows``) or, on a
machine without the data, from an ``.npz`` written here with ``--save-windows PATH``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _rows import write_rows  # noqa: E402
from bench_backbone import PATCH, SFREQ, _build, _inputs  # noqa: E402

from brainfm.deploy import quantize  # noqa: E402
from brainfm.deploy.export import example_inputs  # noqa: E402
from brainfm.models import BrainDecoder, ModelConfig  # noqa: E402
from brainfm.targets import compute_targets  # noqa: E402

warnings.filterwarnings("ignore", message="Montage name 'standard_1020' is deprecated")


class Clock:
    """Wall clock that waits for the device before reading."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def _row(name: str, unit: str, ours: float, anchor: float, higher_is_better: bool, **extra) -> dict:
    ratio = ours / anchor if higher_is_better else anchor / ours
    return {"name": name, "unit": unit, "brainfm": ours, "anchor": anchor, "ratio": ratio, **extra}


# --- training -----------------------------------------------------------------------------


def train_case(model: str, device: str, batch: int, steps: int, warmup: int) -> dict:
    """samples/s and FLOPs per step of one model's bf16 train step (see the module docstring)."""
    torch.manual_seed(0)
    t = int(30.0 * SFREQ)
    net, features, target = _build(torch, model, 19, t)
    net = net.to(device).train()
    head = torch.nn.Linear(200, PATCH).to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.startswith("cuda"))
    data = _inputs(torch, model, batch, 19, t, device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32

    def step():
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = torch.nn.functional.mse_loss(head(features(data)).float(), target(data).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    clock = Clock(device)
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = clock()
    for _ in range(steps):
        step()
    seconds = (clock() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if clock.cuda else float("nan")
    return {"samples_per_s": batch / seconds, "flops_per_step": counter.get_total_flops(),
            "step_s": seconds, "peak_mib": peak}


def train_rows(args: argparse.Namespace) -> list[dict]:
    peak = args.peak_tflops * 1e12
    res = {m: train_case(m, args.device, args.batch_size, args.steps, args.warmup)
           for m in ("brainfm+dropout", "brainfm", "cbramod")}
    for m, r in res.items():
        r["mfu"] = r["flops_per_step"] / r["step_s"] / peak
        print(f"  train {m:16s} {r['samples_per_s']:9.1f} samples/s  {r['flops_per_step'] / 1e9:8.1f} GFLOP/step"
              f"  MFU {100 * r['mfu']:5.1f} %  peak {r['peak_mib']:.0f} MiB", flush=True)
    b, a = res["brainfm+dropout"], res["cbramod"]
    shape = f"base, 19ch x 30s, B={args.batch_size}, bf16"
    return [
        _row(f"train step, {shape}, dropout 0.1 both", "samples/s", b["samples_per_s"], a["samples_per_s"], True),
        _row("  same, brainfm at its default (no dropout)", "samples/s", res["brainfm"]["samples_per_s"],
             a["samples_per_s"], True),
        _row(f"  MFU at dropout 0.1 (peak {args.peak_tflops:g} TFLOP/s)", "%", 100 * b["mfu"], 100 * a["mfu"], True,
             flops_per_step={"brainfm": b["flops_per_step"], "anchor": a["flops_per_step"]}),
        _row("  train peak memory, dropout 0.1 both", "MiB", b["peak_mib"], a["peak_mib"], False),
    ]


# --- inference ----------------------------------------------------------------------------


def _latency(fn, clock: Clock, calls: int, warmup: int) -> tuple[float, float, float]:
    """(median, p10, p90) milliseconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = clock()
        fn()
        times.append(1e3 * (clock() - t0))
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[0], q[-1]


def inference_rows(args: argparse.Namespace) -> list[dict]:
    """Batch-1 latency and batch throughput of the base decoder per precision."""
    device, clock = args.device, Clock(args.device)
    torch.manual_seed(0)
    decoder = BrainDecoder(ModelConfig.from_name("base"), 2).eval()
    variants = {
        "fp32": (decoder, False),
        "bf16": (decoder, True),
        "W8A8": (quantize(decoder, "w8a8", smoothquant=False), False),
        "W4A16": (quantize(decoder, "w4a16", smoothquant=False), False),
    }
    cb_net, cb_features, _ = _build(torch, "cbramod", 19, int(4.0 * SFREQ))
    cb_net = cb_net.to(device).eval()
    amp = device.split(":")[0]
    results: dict[str, dict[str, tuple]] = {}
    for batch in (1, args.infer_batch):
        x = tuple(t.to(device) for t in example_inputs(decoder.config, batch=batch, seconds=4.0, seed=1))
        cb_batch = _inputs(torch, "cbramod", batch, 19, int(4.0 * SFREQ), device)
        for name, (model, bf16) in variants.items():
            model = model.to(device)

            def call(model=model, bf16=bf16):
                with torch.inference_mode(), torch.autocast(amp, torch.bfloat16, enabled=bf16):
                    model(*x)

            try:
                results.setdefault(name, {})[batch] = _latency(call, clock, args.latency_calls, args.warmup)
            except Exception as err:  # a kernel that does not compile must not cost the other rows
                print(f"  {name} B={batch} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
                results.setdefault(name, {})[batch] = (float("nan"),) * 3
        for name, bf16 in (("CBraMod fp32", False), ("CBraMod bf16", True)):
            def call_cb(bf16=bf16):
                with torch.inference_mode(), torch.autocast(amp, torch.bfloat16, enabled=bf16):
                    cb_features(cb_batch)

            results.setdefault(name, {})[batch] = _latency(call_cb, clock, args.latency_calls, args.warmup)
    rows = []
    for name, per_batch in results.items():
        ms1, p10, p90 = per_batch[1]
        msb = per_batch[args.infer_batch][0]
        print(f"  {name:14s} B=1 {ms1:7.3f} ms (p10 {p10:.3f}, p90 {p90:.3f})   "
              f"B={args.infer_batch} {1e3 * args.infer_batch / msb:9.0f} windows/s", flush=True)
    fp32 = results["fp32"]
    for name in ("bf16", "W8A8", "W4A16"):
        r = results[name]
        rows.append(_row(f"latency B=1 19ch x 4s, base {name} vs brainfm fp32", "ms", r[1][0], fp32[1][0], False,
                         p10_p90=[r[1][1], r[1][2]]))
    for ours, anchor in (("fp32", "CBraMod fp32"), ("bf16", "CBraMod bf16")):
        rows.append(_row(f"latency B=1 19ch x 4s, base {ours} vs {anchor}", "ms", results[ours][1][0],
                         results[anchor][1][0], False, p10_p90=[results[ours][1][1], results[ours][1][2]]))
    b = args.infer_batch
    for name in ("bf16", "W8A8", "W4A16"):
        rows.append(_row(f"throughput B={b} 19ch x 4s, base {name} vs brainfm fp32", "windows/s",
                         1e3 * b / results[name][b][0], 1e3 * b / fp32[b][0], True))
    rows.append(_row(f"throughput B={b} 19ch x 4s, base bf16 vs CBraMod bf16", "windows/s",
                     1e3 * b / results["bf16"][b][0], 1e3 * b / results["CBraMod bf16"][b][0], True))
    return rows


# --- targets ------------------------------------------------------------------------------


def load_eegmat_windows(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    if args.windows_file:
        with np.load(args.windows_file) as f:
            return f["windows"][: args.windows], f["geometry"]
    from bench_targets import load_windows  # needs ../shared/data and MNE

    return load_windows(args.windows)


def target_rows(args: argparse.Namespace) -> list[dict]:
    windows, geometry = load_eegmat_windows(args)
    x = torch.from_numpy(windows)
    geom = torch.from_numpy(geometry).expand(len(x), -1, -1).contiguous()
    out = {}
    for device in dict.fromkeys((args.device, "cpu")):
        xd, gd, clock = x.to(device), geom.to(device), Clock(device)
        compute_targets(xd[:2], SFREQ, sensor_geometry=gd[:2])  # warm-up (FFT plans, kernels)
        times = []
        for _ in range(args.target_repeats):
            t0 = clock()
            y = compute_targets(xd, SFREQ, sensor_geometry=gd)
            times.append(clock() - t0)
        out[device] = (len(x) / statistics.median(times), y.cpu())
        print(f"  targets on {device:5s} {out[device][0]:9.1f} windows/s ({len(x)} windows, K={y.shape[1]})",
              flush=True)
    ours, cpu = out[args.device], out["cpu"]
    diff = (ours[1] - cpu[1]).abs().nan_to_num(0.0)
    scale = cpu[1].abs().nan_to_num(0.0).clamp_min(1e-3)
    return [_row(f"neurodynamics targets, EEGMAT 19ch x 5s, {args.device} vs this machine's CPU "
                 f"({torch.get_num_threads()} threads)", "windows/s", ours[0], cpu[0], True,
                 max_abs_diff=float(diff.max()), max_rel_diff=float((diff / scale).max()))]


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", nargs="+", choices=("train", "inference", "targets"),
                   default=["train", "inference", "targets"])
    p.add_argument("--batch-size", type=int, default=256, help="train batch (windows of 19 ch x 30 s)")
    p.add_argument("--steps", type=int, default=20, help="timed train steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before each timing")
    p.add_argument("--infer-batch", type=int, default=256, help="batch of the inference throughput rows")
    p.add_argument("--latency-calls", type=int, default=200)
    p.add_argument("--windows", type=int, default=128, help="EEGMAT windows for the targets rows")
    p.add_argument("--windows-file", default=None, help=".npz with 'windows' (n, 19, 1000) and 'geometry' (19, 6)")
    p.add_argument("--save-windows", default=None, metavar="PATH", help="write the EEGMAT windows to PATH and stop")
    p.add_argument("--target-repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every code path")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.save_windows:
        windows, geometry = load_eegmat_windows(args)
        np.savez(args.save_windows, windows=windows, geometry=geometry)
        print(f"wrote {windows.shape} windows to {args.save_windows}")
        return []
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.infer_batch = 2, 1, 1, 4
        args.latency_calls, args.windows, args.target_repeats = 10, 8, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device (use --device cpu --quick for a smoke run)")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    sections = {"train": train_rows, "inference": inference_rows, "targets": target_rows}
    rows, failed = [], []
    if args.json:  # a file from an earlier run must not pass for this one's, even if every section fails
        write_rows(args.json, [])
    for key in args.only:
        t0 = time.perf_counter()
        try:
            rows += sections[key](args)
        except Exception:  # one section's failure (a kernel, missing data) must not cost the others' rows
            traceback.print_exc()
            failed.append(key)
        print(f"[{key}: {time.perf_counter() - t0:.0f} s{', failed' if key in failed else ''}]", flush=True)
        if args.json:  # after every section, so a suite step that hits its time limit keeps what was measured
            write_rows(args.json, rows)
    print(f"\n{'metric':<66} {'unit':<10} {'brainfm':>10} {'anchor':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['name']:<66} {r['unit']:<10} {r['brainfm']:>10.4g} {r['anchor']:>10.4g} {r['ratio']:>6.2f}")
    if failed:
        raise SystemExit(f"bench_gpu.py: section(s) failed: {', '.join(failed)} (traceback above; the other rows are kept)")
    return rows


if __name__ == "__main__":
    main()
