// Registration of the CUDA kernels, one function per file of runtime/cuda/. CUDA kernels take
// float32 tensors (int64 for labels, indices and counts); they refuse float64 at compile time.
#pragma once

#include "runtime/kernel.h"

namespace oxtrain::runtime {

// elementwise.cu: Add Sub Mul Div Neg Relu Identity Flatten Reshape Dropout Sum Transpose
// ReduceMean, oxtrain.ReluGrad, oxtrain.ReduceSumTo, oxtrain.ReduceMeanGrad
void register_cuda_elementwise_kernels(KernelRegistry& registry);
// loss.cu: Softmax, SoftmaxCrossEntropyLoss, oxtrain.SoftmaxGrad,
// oxtrain.SoftmaxCrossEntropyLossGrad
void register_cuda_loss_kernels(KernelRegistry& registry);
// optimizer.cu: ai.onnx.preview.training.Momentum, oxtrain.ScaledMomentum
void register_cuda_optimizer_kernels(KernelRegistry& registry);
// pool.cu: MaxPool, AveragePool, GlobalAveragePool and their oxtrain.*Grad ops
void register_cuda_pool_kernels(KernelRegistry& registry);
// conv.cc (cuDNN graph API): Conv, oxtrain.ConvGradData, oxtrain.ConvGradFilter
void register_cuda_conv_kernels(KernelRegistry& registry);
// batchnorm.cc (cuDNN graph API): BatchNormalization, oxtrain.BatchNormTraining,
// oxtrain.BatchNormGrad
void register_cuda_norm_kernels(KernelRegistry& registry);
// matmul.cc (cuBLASLt): Gemm, MatMul
void register_cuda_matmul_kernels(KernelRegistry& registry);
// collective.cc (NCCL): oxtrain.AllReduce
void register_cuda_collective_kernels(KernelRegistry& registry);
// The op families' files register after the files above: an entry for the same op replaces
// the earlier one.
// pointwise.cu: element-wise math, comparisons, Where, Cast
void register_cuda_pointwise_kernels(KernelRegistry& registry);
// movement.cu: Concat, Split, Slice, Gather, Expand, Squeeze, Unsqueeze and their gradients
void register_cuda_movement_kernels(KernelRegistry& registry);
// normalization.cu: LayerNormalization, reductions over any axes, batched MatMul, Softmax on any axis
void register_cuda_normalization_kernels(KernelRegistry& registry);
// random.cu: Dropout (inference), oxtrain.DropoutTraining, oxtrain.DropoutGrad, RandomUniform(Like),
// RandomNormal(Like) and their oxtrain forms that read the training step
void register_cuda_random_kernels(KernelRegistry& registry);
// precision.cu: oxtrain.NonFinite, oxtrain.LossScaleUpdate (fp16's dynamic loss scaling)
void register_cuda_precision_kernels(KernelRegistry& registry);
void register_cuda_normalize_kernels(KernelRegistry& registry);  // oxtrain.NormalizeImages
// fused.cu: oxtrain.BatchNormReluTraining, oxtrain.BatchNormReluApply, oxtrain.BatchNormReluGrad
// (native half; registered after the half emulation)
void register_cuda_fused_kernels(KernelRegistry& registry);
// conv_stats.cc: oxtrain.ConvStats, oxtrain.ConvGradFilterScaleBiasRelu,
// oxtrain.ConvGradDataReluBatchNormWeight (cuDNN's fused graphs, else composed),
// oxtrain.BatchNormFinalize, oxtrain.BatchNormGradApply; registered after the half emulation
// (they take half values)
void register_cuda_conv_stats_kernels(KernelRegistry& registry);
// normalization.cu: oxtrain.BatchNormApply's kernel; with `relu`, oxtrain.BatchNormReluApply's,
// which applies Relu(Y + R) in the same pass.
KernelFactory batchnorm_apply_kernel_factory(bool relu);

namespace cuda {
// normalization.cu: per-column sums of partial sums computed in `chunks` chunks, added in chunk
// order: partials [2][chunks][d] (double, on the device) -> first[j], second[j] (float32; each
// may be null). The second pass of the deterministic column reductions (LayerNormalization's
// weight gradients, the channels-last channel sums of runtime/cuda/batchnorm_own.h).
void add_chunk_partials(const double* partials, int64_t chunks, int64_t d, float* first, float* second,
                        const CudaContext& ctx, const std::string& where);
// half_emulation.cu: `float_factory` with half values handled for kernels that compute only
// float32 (float32 copies in the kernel's workspace, outputs rounded); Cast to and from half.
KernelFactory with_half_emulation(const std::string& domain, const std::string& op_type, KernelFactory float_factory);
// Whether the node's CUDA kernel runs through that emulation (not the kernel's own half path).
bool half_emulated(const graph::Node& n);
}  // namespace cuda

}  // namespace oxtrain::runtime
