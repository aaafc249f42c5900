#!/usr/bin/env bash
# Packs oxtrain's programs (built with CUDA) and the libraries the GPU machine lacks into one
# xz archive, small enough to carry there: the bundle folder is ~55 MB (OpenBLAS alone 36 MB),
# the archive ~10 MB.
#
#   scripts/gpu-bundle.sh [ARCHIVE]          default: .gpu.tar.xz (git-ignored)
#
# On the GPU machine, from the repository root of the carried tree:
#   mkdir -p /tmp/ox && tar -xJf .gpu.tar.xz -C /tmp/ox && source /tmp/ox/env.sh
#   export OXTRAIN_FIXTURES=$PWD/tests/fixtures OXTRAIN_BINARY=/tmp/ox/bin/oxtrain
#   oxtrain_tests --gtest_filter='*Cuda*'
set -euo pipefail
cd "$(dirname "$0")/.."
archive=${1:-.gpu.tar.xz}
bundler=${OXTRAIN_BUNDLER:-../shared/device/bundle.sh}
[ -x "$bundler" ] || { echo "gpu-bundle: $bundler not found (set OXTRAIN_BUNDLER)" >&2; exit 2; }
[ -d /usr/local/cuda ] || { echo "gpu-bundle: no /usr/local/cuda: the build would have no CUDA runtime" >&2; exit 2; }
scripts/build.sh
"$bundler" .gpu build/oxtrain build/tests/oxtrain_tests build/oxtrain_step_bench
tar -C .gpu -cf - . | xz -T0 -6 > "$archive.tmp"
mv "$archive.tmp" "$archive"
du -h "$archive" | awk '{print "gpu-bundle: " $1 " in " $2}'
