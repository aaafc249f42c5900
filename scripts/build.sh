#!/usr/bin/env bash
# Configures and builds oxtrain in build/ (Release). Extra arguments go to CMake, e.g.
# scripts/build.sh -DOXTRAIN_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
