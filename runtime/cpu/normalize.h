// Image batch normalisation: uint8 NHWC (as the loader produces, 4x fewer bytes to copy)
// to float NCHW, y = (x / 255 - mean[c]) / std[c]. The CPU twin of the CUDA kernel in
// runtime/cuda/normalize.cu; both write (=) their output.
#pragma once

#include <cstdint>

namespace oxtrain::runtime {

struct NormalizeParams {
  int64_t batch = 0, height = 0, width = 0, channels = 3;
  const float* mean = nullptr;  // [channels]
  const float* std = nullptr;   // [channels]
};

void normalize_u8_nhwc_to_f32_nchw_cpu(float* out, const uint8_t* in, const NormalizeParams& p);

}  // namespace oxtrain::runtime
