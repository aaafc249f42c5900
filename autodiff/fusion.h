// Fusions of the forward graph, made before autodiff so each fused op brings one gradient
// node: batch norm with the ReLU after it, and with the residual join (Add, then ReLU) of a
// ResNet block:
//   Relu(BatchNormTraining(X))      -> oxtrain.BatchNormReluTraining(X, ...)
//   Relu(BatchNormTraining(X) + R)  -> oxtrain.BatchNormReluTraining(X, ..., R)
// One node then writes the block's output, and backward computes ReluGrad, the residual's
// gradient and BatchNormGrad in one node (oxtrain.BatchNormReluGrad): fewer nodes and fewer
// passes over memory (the planner already let Relu and Add work in place, so the memory plan
// stays the same). Only values nothing else reads are fused away, and the CPU's fused kernels
// round where the unfused ops do, so on the CPU the graph computes the same numbers bit for bit.
// (On the GPU cuDNN runs each fused node as one graph where it can, runtime/cuda/batchnorm.cc:
// batch norm's output stays float32 inside it, so in half it rounds once where the CPU rounds
// twice.)
#pragma once

#include "graph/ir.h"

namespace oxtrain::autodiff {

// Returns how many Relu nodes were fused.
int fuse_batchnorm_relu(graph::Graph& graph);

// Recomputation, on a training graph whose first `forward_nodes` nodes are the forward: the
// output Z of a fused batch norm that backward reads (ReluGrad's mask, the next convolution's
// weight gradient) is recomputed there from what backward keeps anyway (X, the saved
// statistics, the parameters), by oxtrain.BatchNormReluApply placed just before its first
// reader, instead of being kept alive from the forward. Z then lives only while the forward
// uses it, and the recomputed copy only while backward does.
// - A residual join Z = Relu(BN(X) + R) is recomputed only when R stays alive into backward
//   anyway and is not itself recomputed: in a chain of ResNet blocks every other block output
//   is kept, and each recomputation is one element-wise pass, never a chain of them.
// - The result is the forward's Z bit for bit on the CPU (math::batchnorm_apply).
// - Mixed precision's half copies of the parameters are cast again where backward reads them.
// Returns how many batch-norm outputs are recomputed.
int recompute_batchnorm_relu(graph::Graph& graph, size_t forward_nodes);

// Convolution with batch norm, on a finished training graph (after recomputation and
// channels-last), in the way cuDNN's fused ResNet graphs run it:
// - Statistics with the convolution: Conv(X, W) -> Y read only by a batch norm (fused with its
//   ReLU or not) and by backward becomes oxtrain.ConvStats(X, W) -> (Y, sum, sum_sq); the batch
//   norm becomes oxtrain.BatchNormFinalize (its statistics and running statistics from the
//   sums) and oxtrain.BatchNormReluApply (or BatchNormApply) for its output. cuDNN computes the
//   sums in the convolution's epilogue, so batch norm no longer reads Y for them.
// - The normalisation in the next convolution's prologue: where such a batch norm's output
//   Z = Relu(BN(Y)) (no residual) is read in the forward only by a convolution that itself
//   became oxtrain.ConvStats, that one reads Y with the prologue Relu(Y * scale + bias)
//   (BatchNormFinalize's affine form of BN, in the activations' type) and Z is never written;
//   the weight gradient reads Y through the same prologue
//   (oxtrain.ConvGradFilterScaleBiasRelu). Only with recomputation, where backward's copy of Z
//   serves ReluGrad's mask alone.
// Numbers: statistics from sums of Y and Y^2 (var = E[Y^2] - E[Y]^2, in double on the CPU),
// and a prologue from the rounded affine form, so the fused graph computes what the unfused one
// does to rounding, not bit for bit.
struct ConvBatchNormFusion {
  int statistics = 0;  // convolutions that compute their batch norm's sums
  int prologues = 0;   // batch-norm outputs applied in the next convolution's prologue
  int gradients = 0;   // batch-norm gradients fused with the data gradient before them
  int recomputations_dropped = 0;  // backward's recomputed outputs no node reads any more
};
ConvBatchNormFusion fuse_conv_batchnorm(graph::Graph& graph);

}  // namespace oxtrain::autodiff
