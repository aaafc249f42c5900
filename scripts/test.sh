#!/usr/bin/env bash
# Builds oxtrain and runs every test (CPU; CUDA tests skip with a message without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh "$@"
ctest --test-dir build --output-on-failure -j"$(nproc)"
