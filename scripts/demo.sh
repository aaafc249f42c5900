#!/usr/bin/env bash
# The main job on its embedded default: build oxtrain, write a small ImageNet-layout dataset
# of real JPEGs, and train a zoo ResNet-18 on it, printing PyTorch main.py's log lines. On the
# CPU this takes a few minutes (small images); EPOCHS, IMAGE_SIZE, BATCH override.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
out=build/demo
mkdir -p "$out"
if [ ! -d "$out/data/train" ]; then
  build/oxtrain make-dataset "$out/data" --classes 10 --train-per-class 150 --val-per-class 20 \
    --min-side 48 --max-side 96
fi
# The demo trains on the GPU once oxtrain's CUDA runtime can train; until then on the CPU,
# saying so when a GPU is there.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "demo: a GPU is visible, but oxtrain's CUDA runtime cannot train yet: training on the CPU"
fi
build/oxtrain train "$out/data" --device cpu -a resnet18 --image-size "${IMAGE_SIZE:-32}" \
  --min-crop-scale 0.35 -b "${BATCH:-32}" --lr 0.1 --lr-schedule cosine --epochs "${EPOCHS:-24}" \
  -p 10 -j 2 \
  --checkpoint-dir "$out" --save-model "$out/resnet18-trained.onnx"
