#!/usr/bin/env bash
# GPU suite: every check and timing that needs a CUDA device, in one command, one JSON file.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]      # default OUT_DIR: bench_out/gpu
#
# Writes OUT_DIR/gpu_suite.json: the device, versions, each step's exit status and seconds,
# the kernel tests' summary and every benchmark row ({"name", "unit", "brainfm", "anchor",
# "ratio"}, ratio > 1: brainfm better). Each step's full output is OUT_DIR/<step>.txt.
#
# Steps (most important first; each has its own time limit, a failed or timed-out step is
# recorded and the suite goes on, so one run always yields its JSON):
#  1. model (benchmarks/bench_gpu.py): the bf16 train step of `base` against braindecode
#     CBraMod with each side's MFU; encoder latency at batch 1 and throughput in fp32 / bf16 /
#     W8A8 / W4A16 (and CBraMod fp32 / bf16); the neurodynamics targets on GPU vs CPU;
#  2. kernel-tests: the kernel tests on CUDA (`-m gpu`): compiled Triton, not the interpreter,
#     checked against the shared references (W8A8, W4A16, W6A8, AdaLog, fused ASH), and the
#     neurodynamics targets on CUDA against the CPU;
#  3. kernels-gemm: W8A8 vs cuBLAS bf16 and torch._int_mm, W4A16 GEMV at batch 1 and 16;
#  4. kernels-w6a8: W6A8 vs W8A8 and cuBLAS bf16 at brainfm's shapes;
#  5. kernels-adalog: AdaLog quantize/dequantize and the unfused 4-bit-probability attention.
# Budget: under 8 minutes on one H100/H200 (the per-step limits below add up to 6.8).
# Nothing here downloads anything. Environment knobs: PYTHON (default python),
# PYTEST_WORKERS (xdist processes for step 2 when pytest-xdist is installed; default 16),
# GPU_SUITE_WINDOWS (an .npz from `bench_gpu.py --save-windows` when ../shared/data is absent).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-bench_out/gpu}")
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the benchmarks import brainfm from this checkout
$PY -c "import torch; assert torch.cuda.is_available(), 'gpu_suite.sh needs a CUDA device'; print(torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1 || true
: > "$OUT/steps.tsv"

step() {  # step NAME SECONDS CMD...: run with a time limit, log to NAME.txt, record status
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.txt"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
}

# pyproject's addopts ask for xdist (-n 2); without it installed, replace them (the step gives -m itself)
XDIST=(-o "addopts=-ra --strict-markers")
if $PY -c "import xdist" 2>/dev/null; then XDIST=(-n "${PYTEST_WORKERS:-16}"); fi
WINDOWS=()
if [ -n "${GPU_SUITE_WINDOWS:-}" ]; then WINDOWS=(--windows-file "$GPU_SUITE_WINDOWS"); fi
if [ ${#WINDOWS[@]} -eq 0 ] && [ ! -d "${BRAINFM_DATA:-../shared/data}/eegmat" ]; then
    echo "warning: no EEGMAT windows (../shared/data/eegmat or GPU_SUITE_WINDOWS): the targets rows will fail;" \
         "the other steps still run" >&2
fi

step model 110 $PY benchmarks/bench_gpu.py "${WINDOWS[@]}" --json "$OUT/model.json"
SESSION=()  # end the session gracefully (summary printed) before the step's hard limit
if $PY -m pytest --help 2>/dev/null | grep -q -- --session-timeout; then SESSION=(--session-timeout 165); fi
step kernel-tests 180 $PY -m pytest tests/kernels tests/test_targets.py -m gpu -q -p no:cacheprovider "${XDIST[@]}" "${SESSION[@]}" \
    --timeout 90 --tb=short -rf
step kernels-gemm 60 $PY benchmarks/bench_kernels.py --only gemm w4a16 --json "$OUT/kernels-gemm.json"
step kernels-w6a8 40 $PY benchmarks/bench_kernels.py --only w6a8 --json "$OUT/kernels-w6a8.json"
step kernels-adalog 20 $PY benchmarks/bench_kernels.py --only adalog --json "$OUT/kernels-adalog.json"

$PY - "$OUT" <<'EOF'
"""Merge the steps into one JSON file."""
import json, platform, re, sys, time
from pathlib import Path

import torch
import triton

out = Path(sys.argv[1])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    rows = out / f"{name}.json"
    try:  # each benchmark rewrites its file after every section, so a timed-out step keeps its rows
        parsed = json.loads(rows.read_text()) if rows.is_file() else None
    except json.JSONDecodeError as err:  # killed mid-write
        parsed = f"unreadable: {err}"
    steps[name] = {"exit_status": int(rc), "seconds": round(float(seconds), 1), "rows": parsed}
tests = (out / "kernel-tests.txt").read_text().splitlines() if (out / "kernel-tests.txt").is_file() else []
summary = next((l for l in reversed(tests) if re.search(r"\d+ (passed|failed)", l)), None)
steps.get("kernel-tests", {})["summary"] = summary
doc = {"suite": "benchmarks/gpu_suite.sh", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
       "device": torch.cuda.get_device_name(), "nvidia_smi": (out / "nvidia-smi.txt").read_text().strip(),
       "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
       "python": platform.python_version(), "steps": steps}
(out / "gpu_suite.json").write_text(json.dumps(doc, indent=2))
print(f"GPU suite done: {out / 'gpu_suite.json'}")
for name, s in steps.items():
    print(f"  {name:15s} exit {s['exit_status']:3d}  {s['seconds']:6.1f} s  {s.get('summary') or ''}")
EOF
