#!/usr/bin/env bash
# One benchmark run of `oxtrain train`, laid out as DLPerf's PyTorch ResNet-50 script lays
# out its runs, so its logs go through scripts/extract_dlperf.py (or DLPerf's own extractor).
#
# Usage: scripts/train.sh [MODEL] [GPUS] [BS_PER_DEVICE] [extra `oxtrain train` args...]
#   MODEL          zoo model name (default resnet50)
#   GPUS           devices on this node (default 1)
#   BS_PER_DEVICE  batch per device (default 128); total batch = GPUS x BS_PER_DEVICE,
#                  learning rate = total batch / 1000 (0.128 for 128)
# Environment:
#   DATA_DIR  an ImageNet folder (train/ and val/); without it the run uses --synthetic
#   STEPS     training steps (default 130; DLPerf measures batch indices 26..125)
#   DEVICE    cuda or cpu (default: cuda when nvidia-smi works, else cpu)
#   OXTRAIN   the binary (default build/oxtrain)
# The log is written (and shown) at
#   logs/benchmark_log/cnns/${MODEL}_1node_bz${BS_PER_DEVICE}/1n${GPUS}c_real.log
# Example:  scripts/train.sh resnet50 1 128 && \
#   scripts/extract_dlperf.py --batch-size-total 128 \
#     logs/benchmark_log/cnns/resnet50_1node_bz128/1n1c_real.log
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-resnet50}
GPUS=${2:-1}
BS_PER_DEVICE=${3:-128}
if [ "$#" -gt 3 ]; then shift 3; else shift "$#"; fi

case "$GPUS$BS_PER_DEVICE" in
  *[!0-9]*) echo "train.sh: GPUS ($GPUS) and BS_PER_DEVICE ($BS_PER_DEVICE) must be positive integers" >&2
            exit 2 ;;
esac
if [ "$GPUS" -lt 1 ] || [ "$BS_PER_DEVICE" -lt 1 ]; then
  echo "train.sh: GPUS ($GPUS) and BS_PER_DEVICE ($BS_PER_DEVICE) must be positive integers" >&2
  exit 2
fi

TOTAL_BATCH=$((GPUS * BS_PER_DEVICE))
LR=$(awk -v b="$TOTAL_BATCH" 'BEGIN { printf "%.3f", b / 1000 }')

if [ -z "${DEVICE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi

if [ -n "${DATA_DIR:-}" ]; then
  DATA=("$DATA_DIR")
else
  DATA=(--synthetic)
fi

OXTRAIN=${OXTRAIN:-build/oxtrain}
LOG_DIR=logs/benchmark_log/cnns/${MODEL}_1node_bz${BS_PER_DEVICE}
LOG_FILE=${LOG_DIR}/1n${GPUS}c_real.log
mkdir -p "$LOG_DIR"

CMD=("$OXTRAIN" train "${DATA[@]}" -a "$MODEL" -b "$TOTAL_BATCH" --lr "$LR" --momentum 0.9
     --epochs 1 --print-freq 1 --steps "${STEPS:-130}" --device "$DEVICE" "$@")
echo "train.sh: ${CMD[*]}" >&2
echo "train.sh: log ${LOG_FILE}" >&2
"${CMD[@]}" 2>&1 | tee "$LOG_FILE"
