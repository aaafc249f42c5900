// The GPU's batch-norm fusions: one cuDNN graph per node where cuDNN builds a plan
// (cudnn::fused_batchnorm_kernel, runtime/cuda/batchnorm.cc), else the composed kernels of
// runtime/fused_batchnorm.h with the element-wise passes here, twins of runtime/cpu/fused.cc with
// the same per-element math (runtime/math/fused.h): float32, float16 and bfloat16, on the
// compute stream, cuDNN doing the statistics. BatchNormReluApply is one own kernel
// (runtime/cuda/normalization.cu).
#include <cuda_runtime.h>

#include <string>

#include "runtime/cuda/context.h"
#include "runtime/cuda/cudnn_common.h"
#include "runtime/cuda/kernels.h"
#include "runtime/fused_batchnorm.h"
#include "runtime/math/fused.h"

namespace oxtrain::runtime {
namespace {

constexpr unsigned kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

#define OXTRAIN_GRID_LOOP(i, n)                                                                   \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void add_relu_f32(float* z, const float* r, int64_t n) {
  OXTRAIN_GRID_LOOP(i, n) z[i] = r ? math::add_relu(z[i], r[i]) : math::relu(z[i]);
}

__global__ void add_relu_half(uint16_t* z, const uint16_t* r, int64_t n, bool bf16) {
  OXTRAIN_GRID_LOOP(i, n) z[i] = r ? math::add_relu_half(z[i], r[i], bf16) : math::relu_half(z[i], bf16);
}

__global__ void relu_grad_f32(const float* dz, const float* z, float* ds, int64_t n) {
  OXTRAIN_GRID_LOOP(i, n) ds[i] = math::relu_grad(dz[i], z[i]);
}

__global__ void relu_grad_half(const uint16_t* dz, const uint16_t* z, uint16_t* ds, int64_t n, bool bf16) {
  OXTRAIN_GRID_LOOP(i, n) ds[i] = math::relu_grad_half(dz[i], z[i], bf16);
}

#undef OXTRAIN_GRID_LOOP

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (n + kThreads - 1) / kThreads)));
}

void require_gpu_type(DType dt) {
  if (dt != DType::f32 && dt != DType::f16 && dt != DType::bf16)
    throw Error(std::string("fused batch norm on CUDA: float32, float16 or bfloat16, not ") + graph::dtype_name(dt));
}

FusedBatchNormPasses cuda_passes() {
  FusedBatchNormPasses p;
  p.add_relu = [](const KernelArgs& a, void* z, const void* r, int64_t n, DType dt) {
    require_gpu_type(dt);
    const CudaContext& ctx = cuda::context_of(a, "BatchNormReluTraining");
    if (n == 0) return;
    if (dt == DType::f32)
      add_relu_f32<<<blocks_for(n), kThreads, 0, ctx.stream>>>(static_cast<float*>(z), static_cast<const float*>(r), n);
    else
      add_relu_half<<<blocks_for(n), kThreads, 0, ctx.stream>>>(static_cast<uint16_t*>(z),
                                                                 static_cast<const uint16_t*>(r), n, dt == DType::bf16);
    cuda::check(cudaGetLastError(), "add_relu launch", "BatchNormReluTraining");
  };
  p.relu_grad = [](const KernelArgs& a, const void* dz, const void* z, void* ds, int64_t n, DType dt) {
    require_gpu_type(dt);
    const CudaContext& ctx = cuda::context_of(a, "BatchNormReluGrad");
    if (n == 0) return;
    if (dt == DType::f32)
      relu_grad_f32<<<blocks_for(n), kThreads, 0, ctx.stream>>>(static_cast<const float*>(dz),
                                                                 static_cast<const float*>(z), static_cast<float*>(ds), n);
    else
      relu_grad_half<<<blocks_for(n), kThreads, 0, ctx.stream>>>(
          static_cast<const uint16_t*>(dz), static_cast<const uint16_t*>(z), static_cast<uint16_t*>(ds), n,
          dt == DType::bf16);
    cuda::check(cudaGetLastError(), "relu_grad launch", "BatchNormReluGrad");
  };
  return p;
}

// cuDNN's fused pattern where it has an engine for the node (cudnn::fused_batchnorm_kernel),
// else `composed`.
KernelFactory cudnn_fused_or(KernelFactory composed) {
  return [composed = std::move(composed)](const KernelInit& init) -> std::unique_ptr<Kernel> {
    if (std::unique_ptr<Kernel> fused = cudnn::fused_batchnorm_kernel(init)) return fused;
    return composed(init);
  };
}

}  // namespace

void register_cuda_fused_kernels(KernelRegistry& registry) {
  registry.add("oxtrain", "BatchNormReluTraining", Device::cuda,
               cudnn_fused_or(batchnorm_relu_training_factory(cuda_passes())));
  // Recomputed in backward from X, the saved statistics and R: one pass (normalization.cu).
  registry.add("oxtrain", "BatchNormReluApply", Device::cuda, batchnorm_apply_kernel_factory(true));
  registry.add("oxtrain", "BatchNormReluGrad", Device::cuda, cudnn_fused_or(batchnorm_relu_grad_factory(cuda_passes())));
}

}  // namespace oxtrain::runtime
