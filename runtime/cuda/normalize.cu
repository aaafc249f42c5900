#include "runtime/cuda/normalize.h"

namespace oxtrain::runtime::cuda {
namespace {

struct ChannelParams {
  float mean[4];
  float inv_std[4];
};

// One thread per output element, in NCHW order so that writes are coalesced.
__global__ void normalize_kernel(float* out, const uint8_t* in, int64_t total, int64_t hw,
                                 int channels, ChannelParams cp) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  int64_t pixel = i % hw;
  int64_t c = (i / hw) % channels;
  int64_t n = i / (hw * channels);
  float x = static_cast<float>(in[(n * hw + pixel) * channels + c]);
  out[i] = (x * (1.0f / 255.0f) - cp.mean[c]) * cp.inv_std[c];
}

}  // namespace

cudaError_t normalize_u8_nhwc_to_f32_nchw(float* out, const uint8_t* in, const NormalizeParams& p,
                                          cudaStream_t stream) {
  if (p.channels < 1 || p.channels > 4) return cudaErrorInvalidValue;
  ChannelParams cp{};
  for (int c = 0; c < p.channels; ++c) {
    cp.mean[c] = p.mean[c];
    cp.inv_std[c] = 1.0f / p.std[c];
  }
  int64_t hw = p.height * p.width;
  int64_t total = p.batch * hw * p.channels;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  normalize_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      out, in, total, hw, static_cast<int>(p.channels), cp);
  return cudaGetLastError();
}

}  // namespace oxtrain::runtime::cuda
