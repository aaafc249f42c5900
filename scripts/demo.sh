#!/usr/bin/env bash
# The main job on its embedded default: build oxtrain, make ResNet-50 with the built-in zoo
# and show what oxtrain understands of it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
mkdir -p build/demo
build/oxtrain zoo resnet50 -o build/demo/resnet50.onnx
build/oxtrain graph build/demo/resnet50.onnx --dot build/demo/resnet50.dot
