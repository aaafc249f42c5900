// Registration of the CPU kernels, one function per file of runtime/cpu/. Every kernel
// handles float32 and float64 (float64 serves the gradient checker).
#pragma once

#include "runtime/kernel.h"

namespace oxtrain::runtime {

// conv.cc: Conv, oxtrain.ConvGradData, oxtrain.ConvGradFilter
void register_cpu_conv_kernels(KernelRegistry& registry);
// conv_stats.cc: oxtrain.ConvStats, oxtrain.ConvGradFilterScaleBiasRelu, oxtrain.BatchNormFinalize,
// oxtrain.ConvGradDataReluBatchNormWeight, oxtrain.BatchNormGradApply
void register_cpu_conv_stats_kernels(KernelRegistry& registry);
// pool.cc: MaxPool, AveragePool, GlobalAveragePool and their oxtrain.*Grad ops
void register_cpu_pool_kernels(KernelRegistry& registry);
// batchnorm.cc: BatchNormalization (inference), oxtrain.BatchNormTraining, oxtrain.BatchNormGrad
void register_cpu_norm_kernels(KernelRegistry& registry);
// elementwise.cc: Add Sub Mul Div Neg Relu Identity Flatten Reshape Dropout Sum Transpose
// ReduceMean, oxtrain.ReluGrad, oxtrain.ReduceSumTo, oxtrain.ReduceMeanGrad
void register_cpu_elementwise_kernels(KernelRegistry& registry);
// matmul.cc: Gemm, MatMul
void register_cpu_matmul_kernels(KernelRegistry& registry);
// loss.cc: Softmax, SoftmaxCrossEntropyLoss, oxtrain.SoftmaxGrad,
// oxtrain.SoftmaxCrossEntropyLossGrad
void register_cpu_loss_kernels(KernelRegistry& registry);
// optimizer.cc: ai.onnx.preview.training.Momentum, oxtrain.ScaledMomentum
void register_cpu_optimizer_kernels(KernelRegistry& registry);
// collective.cc: oxtrain.AllReduce
void register_cpu_collective_kernels(KernelRegistry& registry);
// The op families' files register after the files above: an entry for the same op replaces
// the earlier one.
// pointwise.cc: element-wise math, comparisons, Where, Cast
void register_cpu_pointwise_kernels(KernelRegistry& registry);
// movement.cc: Concat, Split, Slice, Gather, Expand, Squeeze, Unsqueeze and their gradients
void register_cpu_movement_kernels(KernelRegistry& registry);
// normalization.cc: LayerNormalization, reductions over any axes, batched MatMul, Softmax on any axis
void register_cpu_normalization_kernels(KernelRegistry& registry);
// random.cc: Dropout (inference), oxtrain.DropoutTraining, oxtrain.DropoutGrad, RandomUniform(Like),
// RandomNormal(Like) and their oxtrain forms that read the training step
void register_cpu_random_kernels(KernelRegistry& registry);
// precision.cc: oxtrain.NonFinite, oxtrain.LossScaleUpdate (fp16's dynamic loss scaling)
void register_cpu_precision_kernels(KernelRegistry& registry);
void register_cpu_normalize_kernels(KernelRegistry& registry);  // oxtrain.NormalizeImages
// fused.cc: oxtrain.BatchNormReluTraining, oxtrain.BatchNormReluGrad (they handle half values
// themselves, so they register after the half emulation wraps the others)
void register_cpu_fused_kernels(KernelRegistry& registry);

}  // namespace oxtrain::runtime
