#!/usr/bin/env bash
# Regenerates the table "Accuracy of a real fine-tuned decoder on the EEGMAT test split" of
# docs/benchmarks.md in one command, inside the locked environment:
#
#   python -m uv run --locked bash benchmarks/deploy_accuracy.sh [WORKDIR]
#
# 1. pretrain `tiny` (seed 0, 2000 steps of configs/pretrain/quickstart-nsp.yaml), as bench_decoding.py does;
# 2. fine-tune it on the CBraMod split (configs/finetune/eegmat.yaml, seed 0, 10 epochs, best validation epoch);
# 3. score fp32, W8A8, W4A16 and onnxruntime int8 on all CBraMod test subjects (eegmat32-35),
#    calibrated on 128 windows of eegmat00/01.
# About 15 min on the 2-core CPU machine. Writes WORKDIR/deploy-accuracy.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(realpath -m "${1:-bench_out/deploy-accuracy}")
mkdir -p "$WORK/pretrain" "$WORK/finetune"
STORE=$(python -c "from brainfm.cli import sample_store_path; print(sample_store_path())")

ENCODER=$(find "$WORK/pretrain" -name encoder.safetensors | head -1)
if [ -z "$ENCODER" ]; then
  (cd "$WORK/pretrain" && brainfm fit --config "$ROOT/configs/pretrain/quickstart-nsp.yaml" --seed_everything=0 \
      --trainer.max_steps=2000 --model.init_args.max_steps=2000 --trainer.val_check_interval=2000 \
      --trainer.enable_progress_bar=false --data.init_args.seed=0)
  ENCODER=$(find "$WORK/pretrain" -name encoder.safetensors | head -1)
fi
DECODER=$(find "$WORK/finetune" -name decoder.safetensors | head -1)
if [ -z "$DECODER" ]; then
  (cd "$WORK/finetune" && brainfm fit --config "$ROOT/configs/finetune/eegmat.yaml" --seed_everything=0 \
      --model.init_from "$ENCODER" --trainer.max_epochs 10 --trainer.enable_progress_bar=false)
  DECODER=$(find "$WORK/finetune" -name decoder.safetensors | head -1)
fi
python benchmarks/bench_deploy.py --presets --accuracy-store "$STORE" --ckpt "$DECODER" \
    --test-subjects eegmat32 eegmat33 eegmat34 eegmat35 --json "$WORK/deploy-accuracy.json"
