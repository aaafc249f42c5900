#!/usr/bin/env bash
# Installs what oxtrain needs to build and test, from Debian's packages. Idempotent: prints
# nothing and touches nothing when everything is already there. CUDA, cuDNN and NCCL are not
# installed here: the CUDA runtime builds when /usr/local/cuda is present.
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libprotobuf-dev protobuf-compiler libonnx-dev
  libcli11-dev nlohmann-json3-dev
  libgtest-dev libopenblas-openmp-dev
  libturbojpeg0-dev libpng-dev
)
# Extra packages a script needs on demand (scripts/fuzz.sh: clang libclang-rt-dev llvm).
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
