#include "runtime/cpu/normalize.h"

#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/normalize.h"

namespace oxtrain::runtime {

void normalize_u8_nhwc_to_f32_nchw_cpu(float* out, const uint8_t* in, const NormalizeParams& p) {
  const int64_t hw = p.height * p.width;
  for (int64_t n = 0; n < p.batch; ++n) {
    const uint8_t* src = in + n * hw * p.channels;
    float* dst = out + n * hw * p.channels;
    for (int64_t c = 0; c < p.channels; ++c) {
      const float mean = p.mean[c], inv_std = 1.0f / p.std[c];
      for (int64_t i = 0; i < hw; ++i) dst[c * hw + i] = math::normalize_pixel(src[i * p.channels + c], mean, inv_std);
    }
  }
}

namespace {

// oxtrain.NormalizeImages on the CPU: float32 [N, C, H, W] (half outputs and channels-last
// through the CPU's wrappers, which round and transpose exactly).
KernelFactory normalize_images_factory() {
  return [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = n.input(0);
    const graph::Value* y = n.output(0);
    if (!x || !y || x->dtype != DType::u8 || x->shape.size() != 4 || y->dtype != DType::f32)
      throw Error(n.describe() + ": takes uint8 [N, H, W, C] pixels to float32 images on the CPU");
    const std::vector<float> mean = n.attr_floats("mean"), std = n.attr_floats("std");
    const graph::Shape shape = x->shape;
    return make_kernel([mean, std, shape](const KernelArgs& a) {
      NormalizeParams p;
      p.batch = shape[0];
      p.height = shape[1];
      p.width = shape[2];
      p.channels = shape[3];
      p.mean = mean.data();
      p.std = std.data();
      normalize_u8_nhwc_to_f32_nchw_cpu(a.outputs[0].as<float>(), a.inputs[0].as<uint8_t>(), p);
    });
  };
}

}  // namespace

void register_cpu_normalize_kernels(KernelRegistry& registry) {
  registry.add(graph::kOxtrainDomain, "NormalizeImages", Device::cpu, normalize_images_factory());
}

}  // namespace oxtrain::runtime
