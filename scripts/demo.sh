#!/usr/bin/env bash
# The main job on its embedded default: build oxtrain, write a small ImageNet-layout dataset
# of real JPEGs, and train a zoo ResNet-18 on it, printing PyTorch main.py's log lines. On the
# CPU this takes a few minutes (small images); EPOCHS, IMAGE_SIZE, BATCH, DEVICE override.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
out=build/demo
mkdir -p "$out"
if [ ! -d "$out/data/train" ]; then
  build/oxtrain make-dataset "$out/data" --classes 10 --train-per-class 150 --val-per-class 20 \
    --min-side 48 --max-side 96
fi
# --device auto: on the GPU where this build has CUDA and one is visible, else on the CPU.
build/oxtrain train "$out/data" --device "${DEVICE:-auto}" -a resnet18 --image-size "${IMAGE_SIZE:-32}" \
  --min-crop-scale 0.35 -b "${BATCH:-32}" --lr 0.1 --lr-schedule cosine --epochs "${EPOCHS:-24}" \
  -p 10 -j 2 \
  --checkpoint-dir "$out" --save-model "$out/resnet18-trained.onnx"
