// The kernels of the batch-norm fusions (autodiff/fusion.h) composed of the device's own
// batch-norm kernels, which do the statistics, and one element-wise pass per device
// (runtime/cpu/fused.cc, runtime/cuda/fused.cu) for the rest. The CPU runs every fused node
// this way; the GPU runs BatchNormReluTraining (any layout) and BatchNormReluGrad
// (channels-last) as one cuDNN graph each where cuDNN builds a plan
// (cudnn::fused_batchnorm_kernel), and this way elsewhere.
//   oxtrain.BatchNormReluTraining: BatchNormTraining writes Y into Z's buffer, then
//     Z = Relu(Y + R) in place (Y alone without R). Y is never stored elsewhere.
//   oxtrain.BatchNormReluApply: the same with BatchNormApply (the output from the saved
//     statistics): Z recomputed in backward, so it need not be kept from the forward. (The GPU
//     does this one in a single pass instead, runtime/cuda/normalization.cu, with the same
//     per-element math, math::batchnorm_relu_apply_element.)
//   oxtrain.BatchNormReluGrad: dS = ReluGrad(dZ, Z) into dR's buffer (or the workspace when
//     the residual takes no gradient), then BatchNormGrad(dS, X, ...).
// A channels-last node passes the attribute on to its inner kernel; the element-wise pass does
// not care, so the fused kernels need no layout emulation of their own.
// Each step uses the arithmetic of the unfused ops (runtime/math/elementwise.h), so a fused
// graph computes what the unfused one does. Half values: the pass reads and writes them
// widened to float32 and rounds once, as the unfused Add and Relu do.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "runtime/kernel.h"

namespace oxtrain::runtime {

// The device's element-wise passes, in place on the compute stream (CPU: in the caller).
struct FusedBatchNormPasses {
  // z[i] = relu(z[i] + r[i]) (r null: relu(z[i])), n elements of `dtype`.
  std::function<void(const KernelArgs&, void* z, const void* r, int64_t n, graph::DType dtype)> add_relu;
  // ds[i] = relu_grad(dz[i], z[i]).
  std::function<void(const KernelArgs&, const void* dz, const void* z, void* ds, int64_t n, graph::DType dtype)>
      relu_grad;
};

KernelFactory batchnorm_relu_training_factory(FusedBatchNormPasses passes);
KernelFactory batchnorm_relu_apply_factory(FusedBatchNormPasses passes);
KernelFactory batchnorm_relu_grad_factory(FusedBatchNormPasses passes);

}  // namespace oxtrain::runtime
