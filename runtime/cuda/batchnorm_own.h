// Batch normalisation by the project's own CUDA kernels (runtime/cuda/batchnorm_own.cu), with
// the arithmetic of the CPU kernels (runtime/cpu/batchnorm.cc, runtime/math/normalization.h):
//  - BatchNormalization (inference), always: cuDNN's graph API has no engine for that chain of
//    pointwise nodes over NCHW tensors, nor one without tensor cores for NHWC;
//  - oxtrain.BatchNormTraining and oxtrain.BatchNormGrad where cuDNN has no engine: a channel
//    count whose row of X is not a multiple of 16 bytes (C = 3, 5, 7 in float32; C not a
//    multiple of 8 in half), one element per channel (cuDNN's unbiased variance would divide
//    by zero), or ONNX's population-variance running update (`oxtrain run`).
// X (and Y, dY, dX) float32, float16 or bfloat16 [N, C, ...] (or channels-last [N, H, W, C]);
// the per-channel tensors float32. Half values are widened, computed in float32 and rounded to
// nearest even, as the CPU's half emulation does. One block per channel sums in double in a
// fixed order, so results are the same from run to run and agree with the CPU's to rounding.
// Runtime/cuda/batchnorm.cc checks the node and chooses between cuDNN and these.
#pragma once

#include <string>

#include "graph/ir.h"
#include "runtime/cuda/context.h"
#include "runtime/kernel.h"

namespace oxtrain::runtime::cuda {

struct BatchNormView {
  graph::DType data = graph::DType::f32;  // X's type
  int64_t batch = 0, channels = 0, spatial = 0;
  bool channels_last = false;
};

// Inputs X, scale, B, mean, var; output Y.
void batchnorm_inference(const BatchNormView& v, const KernelArgs& a, double eps, const CudaContext& ctx,
                         const std::string& where);
// Inputs X, scale, B, running mean, running var; outputs Y and (each optional) the next running
// mean and variance, the batch mean and inverse standard deviation.
void batchnorm_training(const BatchNormView& v, const KernelArgs& a, double eps, double momentum, bool unbiased,
                        const CudaContext& ctx, const std::string& where);
// Inputs dY, X, scale, saved mean, saved inverse std; outputs (each optional) dX, dScale, dB.
void batchnorm_grad(const BatchNormView& v, const KernelArgs& a, const CudaContext& ctx, const std::string& where);

// The convolution and batch-norm fusion's own kernels (autodiff::fuse_conv_batchnorm), with the
// math of the CPU kernels (runtime/cpu/conv_stats.cc, runtime/math/conv_batchnorm.h), where
// cuDNN runs no fused graph for the node:
// p = Relu(x * scale + bias) per channel of x (of v's type; scale and bias too), the prologue.
void scale_bias_relu(const BatchNormView& v, const void* x, const void* scale, const void* bias, void* p,
                     const CudaContext& ctx, const std::string& where);
// Each channel's sum and sum of squares of y (of v's type), into float32 sum and sum_sq (each
// may be null), in double in a fixed order. Channels-last: tiles of 32 channels by a chunk of
// rows, each written to `workspace` (channel_sums_workspace(v) bytes), then one thread per
// channel adds its chunks in order; channels-first: one block per channel (no workspace).
size_t channel_sums_workspace(const BatchNormView& v);
void channel_sums(const BatchNormView& v, const void* y, float* sum, float* sum_sq, void* workspace,
                  const CudaContext& ctx, const std::string& where);
// oxtrain.BatchNormFinalize over `channels`: inputs sum, sum_sq, scale, B, running mean and
// var (float32); outputs (each optional) running mean and var, saved mean and inverse std
// (float32), the affine form's scale and bias (of type `affine`).
void batchnorm_finalize(const KernelArgs& a, int64_t channels, int64_t count, double eps, double momentum,
                        bool unbiased, graph::DType affine, const CudaContext& ctx, const std::string& where);

// dS = dZ * (BN(x) > 0) in place (ds holds dZ on entry; BN(x) from the float32 statistics as
// math::batchnorm_apply computes it), and per channel dScale = sum(dS * (x - mean)) * inv_std
// and dB = sum(dS) (float32, each may be null): oxtrain.ConvGradDataReluBatchNormWeight after
// its data gradient.
void relu_mask_weight_grads(const BatchNormView& v, const void* x, void* ds, const float* scale, const float* bias,
                            const float* mean, const float* inv_std, float* dscale, float* dbias, const CudaContext& ctx,
                            const std::string& where);
// oxtrain.BatchNormGradApply: inputs dS, X, scale, saved mean, saved inverse std, dScale, dB;
// output dX (math::batchnorm_grad_input).
void batchnorm_grad_apply(const BatchNormView& v, const KernelArgs& a, const CudaContext& ctx, const std::string& where);

}  // namespace oxtrain::runtime::cuda
