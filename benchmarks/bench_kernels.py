"""Benchmark brainfm's Triton kernels against their anchors, side by side, in one run.

Usage::

    python benchmarks/bench_kernels.py [--json rows.json] [--quick]

Anchors: ``torch.matmul`` in bf16 (cuBLAS) and ``torch._int_mm`` (cuBLASLt int8) for the
GEMMs, the eager PyTorch references of :mod:`brainfm.kernels.reference` for quantization
and ASH. Shapes are brainfm's: tokens = batch x channels x patches (32 x 19 x 30 = 18240
for a 19-channel 10-20 EEG montage and 30 one-second patches; 570 for one streamed
window), d_model 200, FFN 800 (``tokens x 200 -> 800`` and ``800 -> 200``), the
reconstruction head ``200 -> 200``, plus ``4096^3``. W4A16 is timed at M = 1 and 16.
W6A8 (issue #16) is timed against W8A8 and bf16 matmul at the same GEMM shapes and at
M = 1 and 16; the AdaLog quantize/dequantize ops against their eager references; and the
explicit-softmax attention with 4-bit AdaLog probabilities (``QuantAttentionBlock``: the
softmax, the quantizer and ``P @ V`` are separate ops, not a fused integer attention kernel)
against the block's SDPA in bf16.

Each JSON row is ``{"name", "unit", "brainfm", "anchor", "ratio"}`` with ``ratio > 1``
meaning brainfm is better (higher throughput, same work counted for both sides).

Rooflines (H100 SXM ceilings: 989 TFLOP/s dense bf16, 1979 TOP/s dense int8, 3.35 TB/s
HBM3; ``t_min = max(FLOPs / peak, bytes / bandwidth)``), computed in :func:`roofline`
and printed next to the measurements:

=================  =========================  =================================================
kernel             FLOPs (or int ops)         bytes moved
=================  =========================  =================================================
quantize_per_tok   ~3 M K (negligible)        M K (b_in + 1) + 4 M
W8A8 GEMM          2 M N K  (int8 peak)       M K + N K + 4 (M + N) + 2 N + M N b_out
W4A16 GEMM         2 M N K  (bf16 peak)       2 M K + N K / 2 + 2 N ceil(K / G) + 2 M N
W6A8 GEMM          2 M N K  (int8 peak)       M K + 3 N K / 4 + 4 (M + N) + 2 N + M N b_out
adalog quantize    ~2 bits M (negligible)     M (b_in + 1)
ASH forward        ~10 M D (negligible)       2 M D b + 8 M
ASH backward       ~20 M D (negligible)       3 M D b + 8 M
bf16 matmul        2 M N K  (bf16 peak)       2 (M K + N K + M N)
=================  =========================  =================================================

W8A8 at brainfm's K = 200 has arithmetic intensity ~2 M N K / (M N b_out) = K ~ 200 ops/byte
(bf16 out), below the int8 ridge point (1979 / 3.35 ~ 590): these GEMMs are bandwidth-bound
on the output write, so the fused epilogue (no int32 round trip) matters more than the
MMA rate. W4A16 at M <= 16 is bound by the N K / 2 weight read.

On a machine without CUDA the script times the CPU reference path against fp32
``torch.matmul`` instead, prints "GPU needed for kernel timings" and still writes rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _rows import write_rows  # noqa: E402

from brainfm.kernels import (adalog_dequantize, adalog_quantize, fused_ash, quantize_per_token, quantize_weight_int4,
                             quantize_weight_int6, quantize_weight_per_channel, w4a16_linear, w6a8_linear,
                             w6a8_linear_dynamic, w8a8_linear, w8a8_linear_dynamic)
from brainfm.kernels import reference as ref

H100 = {"bf16_flops": 989e12, "int8_ops": 1979e12, "hbm_bytes": 3.35e12}
TOKENS = 32 * 19 * 30  # batch x EEG channels x one-second patches
GEMM_SHAPES = {  # name: (M, K, N)
    "ffn_up": (TOKENS, 200, 800),
    "ffn_down": (TOKENS, 800, 200),
    "recon_head": (TOKENS, 200, 200),
    "stream_ffn_up": (19 * 30, 200, 800),
    "square4096": (4096, 4096, 4096),
}
W4_SHAPES = {"ffn_up": (200, 800), "ffn_down": (800, 200), "square4096": (4096, 4096)}  # (K, N)


@dataclass
class Row:
    name: str
    unit: str
    brainfm: float
    anchor: float
    ratio: float
    roofline: float | None = None  # attainable value of `unit` for the brainfm kernel on H100


def roofline(flops: float, nbytes: float, peak: float) -> float:
    """Minimum time in seconds on H100 SXM: ``max(flops / peak, bytes / HBM bandwidth)``."""
    return max(flops / peak, nbytes / H100["hbm_bytes"])


def bench(fn: Callable[[], object], cuda: bool, reps: int = 7) -> float:
    """Median seconds per call (``triton.testing.do_bench`` on CUDA, wall clock on CPU)."""
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_rows(dev: str, cuda: bool, quick: bool) -> list[Row]:
    rows = []
    for name, (m, k, n) in GEMM_SHAPES.items():
        if not cuda and (name == "square4096" or (quick and m > 1000)):
            continue
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16 if cuda else torch.float32)
        w = torch.randn(n, k, device=dev, dtype=x.dtype) / k**0.5
        b = torch.zeros(n, device=dev, dtype=x.dtype)
        qx, sx = quantize_per_token(x)
        qw, sw = quantize_weight_per_channel(w)
        flops = 2.0 * m * n * k
        t_dense = bench(lambda: torch.matmul(x, w.T), cuda)
        t_dyn = bench(lambda: w8a8_linear_dynamic(x, qw, sw, b), cuda)
        bytes_w8 = m * k + n * k + 4 * (m + n) + 2 * n + m * n * 2
        t_roof = roofline(flops, bytes_w8, H100["int8_ops"])
        rows.append(Row(f"w8a8_dynamic[{name}] vs {x.dtype} matmul", "TFLOP/s", flops / t_dyn / 1e12,
                        flops / t_dense / 1e12, t_dense / t_dyn, flops / t_roof / 1e12))
        if cuda:  # _int_mm: int32 out, no scales; needs M > 16 and K, N multiples of 8
            t_w8 = bench(lambda: w8a8_linear(qx, sx, qw, sw, b, "none", torch.bfloat16), cuda)
            t_int = bench(lambda: torch._int_mm(qx, qw.T), cuda)  # qw.T: (K, N) column-major, as cuBLASLt wants
            rows.append(Row(f"w8a8[{name}] vs torch._int_mm", "TOP/s", flops / t_w8 / 1e12,
                            flops / t_int / 1e12, t_int / t_w8, flops / t_roof / 1e12))
    return rows


def w4a16_rows(dev: str, cuda: bool, group: int = 64) -> list[Row]:
    rows = []
    for name, (k, n) in W4_SHAPES.items():
        if not cuda and name == "square4096":
            continue
        w = torch.randn(n, k, device=dev) / k**0.5
        packed, scales = quantize_weight_int4(w, group)
        w16 = w.to(torch.bfloat16 if cuda else torch.float32)
        for m in (1, 16):
            x = torch.randn(m, k, device=dev, dtype=w16.dtype)
            flops = 2.0 * m * n * k
            t_ref = bench(lambda: torch.matmul(x, w16.T), cuda)
            t_w4 = bench(lambda: w4a16_linear(x, packed, scales, group), cuda)
            nbytes = 2 * m * k + n * k / 2 + 2 * n * -(-k // group) + 2 * m * n
            t_roof = roofline(flops, nbytes, H100["bf16_flops"])
            rows.append(Row(f"w4a16[{name},M={m}] vs {w16.dtype} matmul", "TFLOP/s", flops / t_w4 / 1e12,
                            flops / t_ref / 1e12, t_ref / t_w4, flops / t_roof / 1e12))
    return rows


def w6a8_rows(dev: str, cuda: bool, quick: bool) -> list[Row]:
    """W6A8 against W8A8 (same integer GEMM, 8-bit weights) and the dense matmul anchor."""
    rows = []
    shapes = dict(GEMM_SHAPES)
    shapes.update({f"{n},M={m}": (m, k, nn) for n, (k, nn) in W4_SHAPES.items() for m in (1, 16)})
    for name, (m, k, n) in shapes.items():
        if not cuda and ("square4096" in name or (quick and m > 1000)):
            continue
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16 if cuda else torch.float32)
        w = torch.randn(n, k, device=dev, dtype=x.dtype) / k**0.5
        qx, sx = quantize_per_token(x)
        qw, sw = quantize_weight_per_channel(w)
        packed, sw6 = quantize_weight_int6(w)
        flops = 2.0 * m * n * k
        t6 = bench(lambda: w6a8_linear(qx, sx, packed, sw6, None, "none", x.dtype), cuda)
        t8 = bench(lambda: w8a8_linear(qx, sx, qw, sw, None, "none", x.dtype), cuda)
        t_dense = bench(lambda: torch.matmul(x, w.T), cuda)
        t_roof = roofline(flops, m * k + 0.75 * n * k + 4 * (m + n) + 2 * m * n, H100["int8_ops"])
        rows.append(Row(f"w6a8[{name}] vs w8a8", "TOP/s", flops / t6 / 1e12, flops / t8 / 1e12, t8 / t6,
                        flops / t_roof / 1e12))
        rows.append(Row(f"w6a8[{name}] vs {x.dtype} matmul", "TOP/s", flops / t6 / 1e12, flops / t_dense / 1e12,
                        t_dense / t6, flops / t_roof / 1e12))
        if m > 16:
            t_dyn = bench(lambda: w6a8_linear_dynamic(x, packed, sw6), cuda)
            rows.append(Row(f"w6a8_dynamic[{name}] vs {x.dtype} matmul", "TFLOP/s", flops / t_dyn / 1e12,
                            flops / t_dense / 1e12, t_dense / t_dyn, flops / t_roof / 1e12))
    return rows


def adalog_rows(dev: str, cuda: bool, quick: bool) -> list[Row]:
    """AdaLog ops against their eager references, and quantized explicit attention against SDPA."""
    from brainfm.deploy.adalog import TableQuantizer, attach_attention_quant
    from brainfm.models import ModelConfig
    from brainfm.models.attention import CrissCrossBlock

    rows = []
    t, v = ref.adalog_tables(4, 29, 1.0)
    t, v = t.to(dev), v.to(dev)
    dtype = torch.bfloat16 if cuda else torch.float32
    n_seq = 570 if (quick or not cuda) else TOKENS  # spatial sequences of 19 x 19 probabilities, 2 heads
    p = torch.softmax(torch.randn(n_seq * 2, 19, 19, device=dev), -1).to(dtype)
    codes = adalog_quantize(p, t)
    eb = p.element_size()
    for label, fn, fn_ref, nbytes in (
        ("adalog_quantize", lambda: adalog_quantize(p, t), lambda: ref.table_quantize_ref(p, t), p.numel() * (eb + 1)),
        ("adalog_dequantize", lambda: adalog_dequantize(codes, v, dtype),
         lambda: ref.table_dequantize_ref(codes, v, dtype), p.numel() * (eb + 1)),
    ):
        t_k, t_r = bench(fn, cuda), bench(fn_ref, cuda)
        rows.append(Row(f"{label}[{tuple(p.shape)}] vs eager", "GB/s", nbytes / t_k / 1e9, nbytes / t_r / 1e9,
                        t_r / t_k, H100["hbm_bytes"] / 1e9))
    config = ModelConfig.from_name("base")
    block = CrissCrossBlock(config).to(dev, dtype).eval()
    batch = 4 if (quick or not cuda) else 32
    x = torch.randn(batch, 19, 30, config.d_model, device=dev, dtype=dtype)
    quant = attach_attention_quant(CrissCrossBlock(config).to(dev, dtype).eval(),
                                   TableQuantizer("adalog", 4, q=29).to(dev), TableQuantizer("adalog", 4, q=29).to(dev))
    quant.load_state_dict(block.state_dict(), strict=False)
    with torch.inference_mode():
        t_q, t_s = bench(lambda: quant.attention(x), cuda), bench(lambda: block.attention(x), cuda)
    tokens = batch * 19 * 30
    rows.append(Row(f"attention[base,{batch}x19x30] adalog4 explicit (unfused) vs SDPA {dtype}", "Mtok/s",
                    tokens / t_q / 1e6, tokens / t_s / 1e6, t_s / t_q))
    return rows


def elementwise_rows(dev: str, cuda: bool, quick: bool) -> list[Row]:
    rows = []
    m = 570 if (quick or not cuda) else TOKENS
    for d in (200, 800):
        x = torch.randn(m, d, device=dev, dtype=torch.bfloat16 if cuda else torch.float32)
        eb = x.element_size()
        nbytes = m * d * (eb + 1) + 4 * m
        t_k = bench(lambda: quantize_per_token(x), cuda)
        t_r = bench(lambda: ref.quantize_per_token_ref(x), cuda)
        rows.append(Row(f"quantize_per_token[{m}x{d}] vs eager", "GB/s", nbytes / t_k / 1e9, nbytes / t_r / 1e9,
                        t_r / t_k, H100["hbm_bytes"] / 1e9))
        alpha = torch.tensor(1.0, device=dev, requires_grad=True)
        z = torch.tensor(0.5, device=dev, requires_grad=True)
        nbytes = 2 * m * d * eb + 8 * m
        with torch.no_grad():
            t_k = bench(lambda: fused_ash(x, alpha, z), cuda)
            t_r = bench(lambda: ref.ash_ref(x, alpha, z), cuda)
        rows.append(Row(f"ash_fwd[{m}x{d}] vs eager", "GB/s", nbytes / t_k / 1e9, nbytes / t_r / 1e9, t_r / t_k,
                        H100["hbm_bytes"] / 1e9))
        xg = x.detach().requires_grad_()
        gy = torch.randn_like(x)

        def fwd_bwd(fn: Callable) -> Callable[[], None]:
            return lambda: torch.autograd.grad(fn(xg, alpha, z), (xg, alpha, z), gy)

        nbytes = 5 * m * d * eb + 16 * m
        t_k, t_r = bench(fwd_bwd(fused_ash), cuda), bench(fwd_bwd(ref.ash_ref), cuda)
        rows.append(Row(f"ash_fwd_bwd[{m}x{d}] vs eager autograd", "GB/s", nbytes / t_k / 1e9, nbytes / t_r / 1e9,
                        t_r / t_k, H100["hbm_bytes"] / 1e9))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the rows as a JSON list to this path")
    parser.add_argument("--quick", action="store_true", help="smaller token counts")
    parser.add_argument("--only", nargs="+", default=None, choices=("gemm", "w4a16", "w6a8", "adalog", "elementwise"),
                        help="run only these groups of rows")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    if cuda:
        print(f"device: {torch.cuda.get_device_name()} (roofline column assumes H100 SXM)")
    else:
        print("GPU needed for kernel timings: timing the CPU reference path against fp32 torch.matmul")
    torch.manual_seed(0)
    groups = {"gemm": lambda: gemm_rows(dev, cuda, args.quick), "w4a16": lambda: w4a16_rows(dev, cuda),
              "w6a8": lambda: w6a8_rows(dev, cuda, args.quick), "adalog": lambda: adalog_rows(dev, cuda, args.quick),
              "elementwise": lambda: elementwise_rows(dev, cuda, args.quick)}
    rows: list[Row] = []
    failed = []
    if args.json:  # a file from an earlier run must not pass for this one's, even if every group fails
        write_rows(args.json, [])
    for group in args.only or groups:
        try:
            new = groups[group]()
        except Exception:  # a kernel that fails on this device must not cost the other groups' rows
            traceback.print_exc()
            failed.append(group)
            continue
        if not cuda:  # say in every row that these are reference-path numbers
            for r in new:
                r.name = f"cpu-reference {r.name}"
        rows += new
        if args.json:  # after every group, so a run stopped by a time limit keeps what it measured
            write_rows(args.json, [{k: v for k, v in asdict(r).items() if k != "roofline"} for r in rows])
    print(f"{'name':58s} {'unit':8s} {'brainfm':>10s} {'anchor':>10s} {'ratio':>7s} {'H100 roof':>10s}")
    for r in rows:
        roof = f"{r.roofline:10.1f}" if r.roofline is not None else ""
        print(f"{r.name:58s} {r.unit:8s} {r.brainfm:10.4g} {r.anchor:10.4g} {r.ratio:7.2f} {roof}")
    if failed:
        raise SystemExit(f"bench_kernels.py: group(s) failed: {', '.join(failed)} (traceback above; the other rows are kept)")
    return rows


if __name__ == "__main__":
    main()
