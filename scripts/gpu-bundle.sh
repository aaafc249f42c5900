#!/usr/bin/env bash
# Packs oxtrain's programs (built with CUDA) and the shared libraries a GPU machine lacks into one
# xz archive small enough to carry there: the bundle folder is ~113 MB (OpenBLAS alone 36 MB),
# the archive ~20 MB.
#
#   scripts/gpu-bundle.sh [ARCHIVE]          default: .gpu.tar.xz (git-ignored)
#
# On the GPU machine, from the repository root of the carried tree:
#   mkdir -p /tmp/ox && tar -xJf .gpu.tar.xz -C /tmp/ox && source /tmp/ox/env.sh
#   export OXTRAIN_FIXTURES=$PWD/tests/fixtures OXTRAIN_BINARY=/tmp/ox/bin/oxtrain
#   oxtrain_tests --gtest_filter='*Cuda*'
#
# Left out on purpose: the C and C++ runtimes (every Linux has them) and the NVIDIA libraries
# (driver, CUDA runtime, cuDNN, cuBLAS, NCCL, nvJPEG), which must match the machine's driver;
# env.sh finds cuDNN and NCCL where a pip-installed PyTorch keeps them, then /usr/local/cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
archive=${1:-.gpu.tar.xz}
[ -d /usr/local/cuda ] || { echo "gpu-bundle: no /usr/local/cuda: the build would have no CUDA runtime" >&2; exit 2; }
# Its own build folder, configured with CUDA on whatever build/ was configured with.
scripts/install-deps.sh
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DOXTRAIN_CUDA=ON "${launcher[@]}" >/dev/null
cmake --build build-gpu -j"$(nproc)"
if ! grep -q 'OXTRAIN_HAVE_CUDA=1' build-gpu/runtime/CMakeFiles/oxtrain_runtime.dir/flags.make; then
  echo "gpu-bundle: build-gpu has no CUDA runtime (nvcc, cuDNN or cudnn-frontend missing?)" >&2
  exit 2
fi
out=.gpu
programs=(build-gpu/oxtrain build-gpu/tests/oxtrain_tests build-gpu/oxtrain_step_bench build-gpu/oxtrain_dp_overlap)
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libcuda\.|libcudnn|libnccl|libcublas|libcudart|libnvjpeg|libnvrtc|libnvJitLink)'
rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
for program in "${programs[@]}"; do
  cp "$program" "$out/bin/"
  # "libfoo.so.1 => /path/libfoo.so.1 (0x...)": copy what is not skipped, refuse what is missing.
  while read -r name path; do
    [[ $name =~ $skip ]] && continue
    [ -f "$path" ] || { echo "gpu-bundle: $program needs $name, which is not found here" >&2; exit 2; }
    cp -L "$path" "$out/lib/$name"
  done < <(ldd "$program" | awk '/=>/ {print $1, $3}')
done
cat > "$out/env.sh" <<'ENV'
# Source on the GPU machine: the bundle's libraries first, then cuDNN and NCCL from a pip-installed
# PyTorch (newer than the system's: $PYTHON's, /opt/torch/.venv's, or python3's), then CUDA's own
# (cuDNN compiles some engines at run time with NVRTC from there).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$py" ] || py=python3
site=$("$py" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
LD_LIBRARY_PATH=$here/lib${site:+:$site/nvidia/cudnn/lib:$site/nvidia/nccl/lib:$site/nvidia/cu13/lib}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH PATH=$here/bin:$PATH
ENV
du -sh "$out" | awk '{print "gpu-bundle: folder " $1}'
tar -C "$out" -cf - . | xz -T0 -6 >"$archive.tmp"
mv "$archive.tmp" "$archive"
du -h "$archive" | awk '{print "gpu-bundle: " $1 " in " $2}'
