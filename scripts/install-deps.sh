#!/usr/bin/env bash
# Installs what oxtrain needs to build and test, from Debian's packages, and (where a CUDA
# toolkit is present) NVIDIA's header-only cudnn-frontend from PyPI into third_party/.
# Idempotent: prints nothing and touches nothing when everything is already there. CUDA, cuDNN
# and NCCL themselves are not installed here: the CUDA runtime builds when /usr/local/cuda is
# present.
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libprotobuf-dev protobuf-compiler libonnx-dev
  libcli11-dev nlohmann-json3-dev
  libgtest-dev libopenblas-openmp-dev
  libturbojpeg0-dev libpng-dev
  libgloo-dev
)
# Extra packages a script needs on demand (scripts/fuzz.sh: clang libclang-rt-dev llvm).
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "install-deps: done"
fi

# cudnn-frontend (MIT, header-only C++): the headers of PyPI's nvidia-cudnn-frontend wheel,
# pinned by version and checksum. Only the CUDA build needs them.
cfe_version=1.32.0
cfe_wheel=nvidia_cudnn_frontend-${cfe_version}-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
cfe_sha256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0
root="$(cd "$(dirname "$0")/.." && pwd)"
cfe_dir="$root/third_party/cudnn-frontend"
if [ -x /usr/local/cuda/bin/nvcc ] && [ "$(cat "$cfe_dir/VERSION" 2>/dev/null)" != "$cfe_version" ]; then
  echo "install-deps: fetching cudnn-frontend $cfe_version headers"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 -d "$tmp" "nvidia-cudnn-frontend==$cfe_version"
  echo "$cfe_sha256  $tmp/$cfe_wheel" | sha256sum --check --quiet
  rm -rf "$cfe_dir" && mkdir -p "$cfe_dir"
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("include/") or "/licenses/" in n])' \
    "$tmp/$cfe_wheel" "$cfe_dir"
  echo "$cfe_version" > "$cfe_dir/VERSION"
fi
