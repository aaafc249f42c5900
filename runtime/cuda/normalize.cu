// Image normalisation on the GPU, the twin of runtime/cpu/normalize.cc with the per-pixel
// arithmetic of runtime/math/normalize.h: uint8 [N, H, W, C] pixels to float32, float16 or
// bfloat16 images, [N, C, H, W] or, on a channels-last node, [N, H, W, C], in one pass (the
// oxtrain.NormalizeImages kernel, and normalize_u8_nhwc_to_f32_nchw for direct use).
#include "runtime/cuda/normalize.h"

#include <string>
#include <vector>

#include "base/half.h"
#include "graph/ops.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/normalize.h"

namespace oxtrain::runtime {
namespace {

struct ChannelParams {
  float mean[4];
  float inv_std[4];
};

// One thread per output element, in the output's order so that writes are coalesced.
// kOut: 0 float32, 1 float16, 2 bfloat16.
template <int kOut, bool kChannelsLast>
__global__ void normalize_kernel(void* out, const uint8_t* in, int64_t total, int64_t hw, int channels,
                                 ChannelParams cp) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  int64_t c, from;
  if constexpr (kChannelsLast) {
    c = i % channels;
    from = i;
  } else {
    const int64_t pixel = i % hw;
    c = (i / hw) % channels;
    from = (i / (hw * channels) * hw + pixel) * channels + c;
  }
  const float y = math::normalize_pixel(in[from], cp.mean[c], cp.inv_std[c]);
  if constexpr (kOut == 0)
    static_cast<float*>(out)[i] = y;
  else
    static_cast<uint16_t*>(out)[i] = float_to_half(y, kOut == 2);
}

ChannelParams channel_params(const float* mean, const float* std, int64_t channels) {
  ChannelParams cp{};
  for (int64_t c = 0; c < channels; ++c) {
    cp.mean[c] = mean[c];
    cp.inv_std[c] = 1.0f / std[c];
  }
  return cp;
}

template <int kOut>
void launch(bool channels_last, void* out, const uint8_t* in, int64_t total, int64_t hw, int channels,
            const ChannelParams& cp, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const auto blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  if (channels_last)
    normalize_kernel<kOut, true><<<blocks, kThreads, 0, stream>>>(out, in, total, hw, channels, cp);
  else
    normalize_kernel<kOut, false><<<blocks, kThreads, 0, stream>>>(out, in, total, hw, channels, cp);
}

KernelFactory normalize_images_factory() {
  return [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value* x = n.input(0);
    const graph::Value* y = n.output(0);
    if (!x || !y || x->dtype != DType::u8 || x->shape.size() != 4)
      throw Error(what + ": takes uint8 [N, H, W, C] pixels");
    const DType to = y->dtype;
    if (to != DType::f32 && to != DType::f16 && to != DType::bf16)
      throw Error(what + ": writes float32, float16 or bfloat16 on CUDA, not " + graph::dtype_name(to));
    const int64_t channels = x->shape[3];
    if (channels < 1 || channels > 4) throw Error(what + ": 1 to 4 channels on CUDA, got " + std::to_string(channels));
    const std::vector<float> mean = n.attr_floats("mean"), std = n.attr_floats("std");
    const ChannelParams cp = channel_params(mean.data(), std.data(), channels);
    const bool channels_last = graph::is_channels_last(n);
    const int64_t total = x->numel(), hw = x->shape[1] * x->shape[2];
    return make_kernel([=](const KernelArgs& a) {
      if (total == 0) return;
      const CudaContext& ctx = cuda::context_of(a, what);
      const uint8_t* in = a.inputs[0].as<uint8_t>();
      void* out = a.outputs[0].data;
      const int c = static_cast<int>(channels);
      if (to == DType::f32) launch<0>(channels_last, out, in, total, hw, c, cp, ctx.stream);
      else if (to == DType::f16) launch<1>(channels_last, out, in, total, hw, c, cp, ctx.stream);
      else launch<2>(channels_last, out, in, total, hw, c, cp, ctx.stream);
      cuda::check(cudaGetLastError(), "normalize_kernel launch", what);
    });
  };
}

}  // namespace

namespace cuda {

cudaError_t normalize_u8_nhwc_to_f32_nchw(float* out, const uint8_t* in, const NormalizeParams& p,
                                          cudaStream_t stream) {
  if (p.channels < 1 || p.channels > 4) return cudaErrorInvalidValue;
  const int64_t hw = p.height * p.width, total = p.batch * hw * p.channels;
  if (total == 0) return cudaSuccess;
  launch<0>(false, out, in, total, hw, static_cast<int>(p.channels), channel_params(p.mean, p.std, p.channels), stream);
  return cudaGetLastError();
}

}  // namespace cuda

void register_cuda_normalize_kernels(KernelRegistry& registry) {
  registry.add(graph::kOxtrainDomain, "NormalizeImages", Device::cuda, normalize_images_factory());
}

}  // namespace oxtrain::runtime
