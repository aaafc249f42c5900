#include "runtime/cpu/normalize.h"

namespace oxtrain::runtime {

void normalize_u8_nhwc_to_f32_nchw_cpu(float* out, const uint8_t* in, const NormalizeParams& p) {
  const int64_t hw = p.height * p.width;
  for (int64_t n = 0; n < p.batch; ++n) {
    const uint8_t* src = in + n * hw * p.channels;
    float* dst = out + n * hw * p.channels;
    for (int64_t c = 0; c < p.channels; ++c) {
      // Same arithmetic, in the same order, as the CUDA kernel: scale, shift, divide.
      const float mean = p.mean[c], inv_std = 1.0f / p.std[c];
      for (int64_t i = 0; i < hw; ++i)
        dst[c * hw + i] = (static_cast<float>(src[i * p.channels + c]) * (1.0f / 255.0f) - mean) * inv_std;
    }
  }
}

}  // namespace oxtrain::runtime
