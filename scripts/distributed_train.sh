#!/usr/bin/env bash
# One node's part of a multi-node benchmark run, as DLPerf's PyTorch ResNet-50 multi-node
# script runs main.py: every node starts this with the same arguments and its own NODE_RANK;
# each spawns one worker per GPU (--multiprocessing-distributed) and rank 0's node hosts the
# rendezvous store.
#
# Usage: scripts/distributed_train.sh NODE_IPS [MODEL] [GPUS_PER_NODE] [BS_PER_DEVICE] [extra args...]
#   NODE_IPS       comma-separated node addresses, the first hosting the store (e.g. 10.0.0.1,10.0.0.2)
#   MODEL          zoo model (default resnet50)
#   GPUS_PER_NODE  workers per node (default 8)
#   BS_PER_DEVICE  batch per worker (default 128); -b is the node's batch, GPUS_PER_NODE x it
# Environment:
#   NODE_RANK  this node's index in NODE_IPS (default: found by matching this host's addresses)
#   PORT       the store's port (default 11111, as DLPerf's)
#   DATA_DIR   an ImageNet folder; without it --synthetic
#   STEPS      training steps (default 130)
#   DEVICE     cuda (default when nvidia-smi works, backend nccl) or cpu (backend gloo)
#   OXTRAIN    the binary (default build/oxtrain)
# Learning rate: the node's batch / 1000, as DLPerf's multi-node script sets it (1.024 for
# 8 x 128 on every multi-node run), not the global batch's.
# The log: logs/benchmark_log/cnns/${MODEL}_${NODES}node_bz${BS_PER_DEVICE}/${NODES}n${GPUS}c_real.log
# with GPUS the job's total, read by scripts/extract_dlperf.py --batch-size-total (NODES x node batch).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$#" -ge 1 ] || { echo "usage: scripts/distributed_train.sh NODE_IPS [MODEL] [GPUS_PER_NODE] [BS_PER_DEVICE] [args...]" >&2; exit 2; }
NODE_IPS=$1
MODEL=${2:-resnet50}
GPUS_PER_NODE=${3:-8}
BS_PER_DEVICE=${4:-128}
if [ "$#" -gt 4 ]; then shift 4; else shift "$#"; fi
case "$GPUS_PER_NODE$BS_PER_DEVICE" in
  *[!0-9]*) echo "distributed_train.sh: GPUS_PER_NODE and BS_PER_DEVICE must be positive integers" >&2; exit 2 ;;
esac

IFS=, read -r -a NODES_LIST <<<"$NODE_IPS"
NODES=${#NODES_LIST[@]}
if [ -z "${NODE_RANK:-}" ]; then
  mine=" $(hostname -I 2>/dev/null || true) "
  for i in "${!NODES_LIST[@]}"; do
    [[ $mine == *" ${NODES_LIST[$i]} "* ]] && NODE_RANK=$i
  done
fi
[ -n "${NODE_RANK:-}" ] || { echo "distributed_train.sh: this host is none of $NODE_IPS; set NODE_RANK" >&2; exit 2; }

if [ -z "${DEVICE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEVICE=cuda; else DEVICE=cpu; fi
fi
BACKEND=nccl
[ "$DEVICE" = cpu ] && BACKEND=gloo
NODE_BATCH=$((GPUS_PER_NODE * BS_PER_DEVICE))
LR=$(awk -v b="$NODE_BATCH" 'BEGIN { printf "%.3f", b / 1000 }')
if [ -n "${DATA_DIR:-}" ]; then DATA=("$DATA_DIR"); else DATA=(--synthetic); fi

OXTRAIN=${OXTRAIN:-build/oxtrain}
TOTAL_GPUS=$((NODES * GPUS_PER_NODE))
LOG_DIR=logs/benchmark_log/cnns/${MODEL}_${NODES}node_bz${BS_PER_DEVICE}
LOG_FILE=${LOG_DIR}/${NODES}n${TOTAL_GPUS}c_real.log
mkdir -p "$LOG_DIR"

CMD=("$OXTRAIN" train "${DATA[@]}" -a "$MODEL" -b "$NODE_BATCH" --lr "$LR" --momentum 0.9
     --epochs 1 --print-freq 1 --steps "${STEPS:-130}" --device "$DEVICE"
     --multiprocessing-distributed --nproc-per-node "$GPUS_PER_NODE" --dist-backend "$BACKEND"
     --dist-url "tcp://${NODES_LIST[0]}:${PORT:-11111}" --world-size "$NODES" --rank "$NODE_RANK" "$@")
echo "distributed_train.sh: node $NODE_RANK of $NODES: ${CMD[*]}" >&2
echo "distributed_train.sh: log ${LOG_FILE}" >&2
"${CMD[@]}" 2>&1 | tee "$LOG_FILE"
