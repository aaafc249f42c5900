// fp16's dynamic loss scaling on the GPU, the twins of runtime/cpu/precision.cc:
//   oxtrain.NonFinite(G1..Gn) -> found_inf (float32 scalar on the device): zeroed, then one
//   launch per kTensorsPerLaunch inputs (a block row per input, its elements strided over the
//   row's blocks) sets it to 1 where an element is infinite or NaN (every writer writes the
//   same value, so the race is harmless): ResNet-50's 161 gradients take 2 launches, not 161;
//   oxtrain.LossScaleUpdate(scale, good_steps, found_inf) -> (scale_new, good_steps_new): one
//   thread applies runtime/math/optimizer.h's rule.
// Nothing is read back to the host: whether a step is skipped is decided on the device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "base/half.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/optimizer.h"

namespace oxtrain::runtime {
namespace {

constexpr unsigned kThreads = 256;
// Blocks per input: enough for the largest gradients (ResNet-50's 2.4 M-element filters: 37
// elements a thread) while a small input's idle blocks cost little.
constexpr int64_t kMaxBlocksPerInput = 256;
// Inputs per launch, passed by value: 96 x 17 bytes stays well inside the 4 KiB that kernel
// parameters may take on every architecture.
constexpr int kTensorsPerLaunch = 96;

enum class Element : uint8_t { f32, f16, bf16 };

struct NonFiniteBatch {
  const void* data[kTensorsPerLaunch];
  int64_t count[kTensorsPerLaunch];
  Element kind[kTensorsPerLaunch];
};

__device__ __forceinline__ float element(const void* x, Element kind, int64_t i) {
  if (kind == Element::f32) return static_cast<const float*>(x)[i];
  return half_to_float(static_cast<const uint16_t*>(x)[i], kind == Element::bf16);
}

// Block row y checks input y of the batch.
__global__ void non_finite_kernel(const NonFiniteBatch batch, float* found) {
  const void* x = batch.data[blockIdx.y];
  const Element kind = batch.kind[blockIdx.y];
  const int64_t count = batch.count[blockIdx.y];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (!isfinite(element(x, kind, i))) {
      *found = 1.0f;
      return;
    }
}

__global__ void loss_scale_update_kernel(const float* scale, const int64_t* good_steps, const float* found_inf,
                                         float* scale_new, int64_t* good_steps_new, float growth, float backoff,
                                         int64_t interval) {
  const math::LossScaleState s =
      math::loss_scale_update(*scale, *good_steps, *found_inf != 0.0f, growth, backoff, interval);
  *scale_new = s.scale;
  *good_steps_new = s.good_steps;
}

KernelFactory non_finite_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    std::vector<Element> kinds;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const DType dt = n.input(i)->dtype;
      if (dt == DType::f32) kinds.push_back(Element::f32);
      else if (dt == DType::f16) kinds.push_back(Element::f16);
      else if (dt == DType::bf16) kinds.push_back(Element::bf16);
      else
        throw Error(what + ": input " + std::to_string(i) + " is " + graph::dtype_name(dt) +
                    "; the CUDA kernel checks float32, float16 and bfloat16");
    }
    return make_kernel([kinds, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      float* found = a.outputs[0].as<float>();
      cuda::check(cudaMemsetAsync(found, 0, sizeof(float), ctx.stream), "cudaMemsetAsync", what);
      NonFiniteBatch batch{};
      int filled = 0;
      int64_t largest = 0;
      auto launch = [&] {
        if (filled == 0) return;
        const int64_t blocks = std::min<int64_t>(kMaxBlocksPerInput, (largest + kThreads - 1) / kThreads);
        const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(filled));
        non_finite_kernel<<<grid, kThreads, 0, ctx.stream>>>(batch, found);
        cuda::check(cudaGetLastError(), "non_finite_kernel launch", what);
        filled = 0;
        largest = 0;
      };
      for (size_t i = 0; i < kinds.size(); ++i) {
        const int64_t count = a.inputs[i].numel();
        if (count == 0) continue;
        batch.data[filled] = a.inputs[i].data;
        batch.count[filled] = count;
        batch.kind[filled] = kinds[i];
        largest = std::max(largest, count);
        if (++filled == kTensorsPerLaunch) launch();
      }
      launch();
    });
  };
}

KernelFactory loss_scale_update_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const cpu::LossScaleConfig c = cpu::loss_scale_config(n);
    return make_kernel([c, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      loss_scale_update_kernel<<<1, 1, 0, ctx.stream>>>(a.inputs[0].as<float>(), a.inputs[1].as<int64_t>(),
                                                        a.inputs[2].as<float>(), a.outputs[0].as<float>(),
                                                        a.outputs[1].as<int64_t>(), c.growth, c.backoff, c.interval);
      cuda::check(cudaGetLastError(), "loss_scale_update_kernel launch", what);
    });
  };
}

}  // namespace

void register_cuda_precision_kernels(KernelRegistry& registry) {
  registry.add("oxtrain", "NonFinite", Device::cuda, non_finite_factory());
  registry.add("oxtrain", "LossScaleUpdate", Device::cuda, loss_scale_update_factory());
}

}  // namespace oxtrain::runtime
