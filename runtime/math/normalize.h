// The per-pixel arithmetic of image normalisation, shared by the loader's CPU function
// (runtime/cpu/normalize.cc), the oxtrain.NormalizeImages kernels and their CUDA twins
// (runtime/cuda/normalize.cu): y = (x / 255 - mean) * (1 / std), in float32, rounded once per
// operation on both devices (the GPU's explicit roundings keep nvcc from fusing a multiply-add).
#pragma once

#include <cstdint>

#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

OXTRAIN_HD float normalize_pixel(uint8_t x, float mean, float inv_std) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(__fsub_rn(__fmul_rn(static_cast<float>(x), 1.0f / 255.0f), mean), inv_std);
#else
  return (static_cast<float>(x) * (1.0f / 255.0f) - mean) * inv_std;
#endif
}

}  // namespace oxtrain::runtime::math
