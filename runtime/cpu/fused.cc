// The CPU's element-wise passes of the batch-norm fusions (runtime/fused_batchnorm.h), for
// float32, float64, float16 and bfloat16 (the half forms are native here, not emulated, so the
// fused kernels round exactly where the unfused Add and Relu do).
#include <string>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/fused_batchnorm.h"
#include "runtime/math/fused.h"

namespace oxtrain::runtime {
namespace {

using cpu::parallel_chunks;

template <typename T>
void add_relu_loop(T* z, const T* r, int64_t n) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    if (r)
      for (int64_t i = b; i < e; ++i) z[i] = math::add_relu(z[i], r[i]);
    else
      for (int64_t i = b; i < e; ++i) z[i] = math::relu(z[i]);
  });
}

void add_relu_half_loop(uint16_t* z, const uint16_t* r, int64_t n, bool bf16) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    if (r)
      for (int64_t i = b; i < e; ++i) z[i] = math::add_relu_half(z[i], r[i], bf16);
    else
      for (int64_t i = b; i < e; ++i) z[i] = math::relu_half(z[i], bf16);
  });
}

template <typename T>
void relu_grad_loop(const T* dz, const T* z, T* ds, int64_t n) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ds[i] = math::relu_grad(dz[i], z[i]);
  });
}

void relu_grad_half_loop(const uint16_t* dz, const uint16_t* z, uint16_t* ds, int64_t n, bool bf16) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ds[i] = math::relu_grad_half(dz[i], z[i], bf16);
  });
}

FusedBatchNormPasses cpu_passes() {
  FusedBatchNormPasses p;
  p.add_relu = [](const KernelArgs&, void* z, const void* r, int64_t n, DType dt) {
    switch (dt) {
      case DType::f32: return add_relu_loop(static_cast<float*>(z), static_cast<const float*>(r), n);
      case DType::f64: return add_relu_loop(static_cast<double*>(z), static_cast<const double*>(r), n);
      case DType::f16:
      case DType::bf16:
        return add_relu_half_loop(static_cast<uint16_t*>(z), static_cast<const uint16_t*>(r), n, dt == DType::bf16);
      default: throw Error(std::string("fused batch norm: unsupported element type ") + graph::dtype_name(dt));
    }
  };
  p.relu_grad = [](const KernelArgs&, const void* dz, const void* z, void* ds, int64_t n, DType dt) {
    switch (dt) {
      case DType::f32:
        return relu_grad_loop(static_cast<const float*>(dz), static_cast<const float*>(z), static_cast<float*>(ds), n);
      case DType::f64:
        return relu_grad_loop(static_cast<const double*>(dz), static_cast<const double*>(z), static_cast<double*>(ds),
                              n);
      case DType::f16:
      case DType::bf16:
        return relu_grad_half_loop(static_cast<const uint16_t*>(dz), static_cast<const uint16_t*>(z),
                                   static_cast<uint16_t*>(ds), n, dt == DType::bf16);
      default: throw Error(std::string("fused batch norm: unsupported element type ") + graph::dtype_name(dt));
    }
  };
  return p;
}

}  // namespace

void register_cpu_fused_kernels(KernelRegistry& registry) {
  registry.add("oxtrain", "BatchNormReluTraining", Device::cpu, batchnorm_relu_training_factory(cpu_passes()));
  registry.add("oxtrain", "BatchNormReluApply", Device::cpu, batchnorm_relu_apply_factory(cpu_passes()));
  registry.add("oxtrain", "BatchNormReluGrad", Device::cpu, batchnorm_relu_grad_factory(cpu_passes()));
}

}  // namespace oxtrain::runtime
