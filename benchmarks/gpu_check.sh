#!/usr/bin/env bash
# The GPU check, in under 4 minutes on one CUDA GPU: the epoch benchmark (A, B, C, and B with
# its GPU options switched: NCHW instead of channels_last, bf16-mixed precision), then time to
# 99.0% validation and test accuracy, then the tables of both. Installs nothing beyond `make setup`.
#
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory setup
PY=.venv/bin/python
$PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible")'
export PYTHONUNBUFFERED=1

$PY benchmarks/epoch_time.py --device cuda --rounds 2 --epochs 2 \
    --variant "B NCHW=model.channels_last=false" \
    --variant "B bf16=trainer.precision=bf16-mixed"
$PY benchmarks/time_to_accuracy.py --device cuda --checks-per-epoch 20 --config "fast=experiment=fast"
$PY benchmarks/summary.py --device cuda
