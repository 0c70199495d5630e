#!/usr/bin/env bash
# GPU suite: the checks and timings that need a CUDA device, in one short script.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]      # default OUT_DIR: bench_out/gpu
#
# 1. the kernel tests on CUDA (`-m gpu`): compiled Triton, not the interpreter, including
#    W6A8 (issue #16: integer-exact against the reference, SQNR floor from 6-bit RTN) and the
#    AdaLog quantize/dequantize ops (bit-exact codes);
# 2. bench_kernels rows (JSON in OUT_DIR):
#    - gemm / w4a16: W8A8 vs cuBLAS bf16 and torch._int_mm, W4A16 GEMV (issue #6 rows);
#    - w6a8 (issue #16): W6A8 vs W8A8 and vs cuBLAS bf16 at brainfm's shapes
#      (18240x200->800, 18240x800->200, 18240x200->200, 570x200->800, M = 1 and 16) and 4096^3;
#    - adalog (issue #16): quantize/dequantize GB/s vs eager, and the explicit-softmax
#      attention with 4-bit AdaLog probabilities vs the block's SDPA in bf16. That row is the
#      unfused path (softmax, quantizer and P @ V are separate ops); a fused integer attention
#      kernel is not written yet, so it bounds what fusion has to win back.
# Needs about 5 minutes on one H100/H200 (autotuning included). Nothing here downloads anything.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-bench_out/gpu}")
mkdir -p "$OUT"
PY=${PYTHON:-python}
$PY -c "import torch; assert torch.cuda.is_available(), 'gpu_suite.sh needs a CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
$PY -m pytest tests/kernels -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/kernel-tests.txt"
TRITON_INTERPRET=0 $PY benchmarks/bench_kernels.py --only gemm w4a16 --json "$OUT/kernels-gemm.json" | tee "$OUT/kernels-gemm.txt"
TRITON_INTERPRET=0 $PY benchmarks/bench_kernels.py --only w6a8 --json "$OUT/kernels-w6a8.json" | tee "$OUT/kernels-w6a8.txt"
TRITON_INTERPRET=0 $PY benchmarks/bench_kernels.py --only adalog --json "$OUT/kernels-adalog.json" | tee "$OUT/kernels-adalog.txt"
echo "GPU suite done: $OUT"
