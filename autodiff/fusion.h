// Fusions of the forward graph, made before autodiff so each fused op brings one gradient
// node: batch norm with the ReLU after it, and with the residual join (Add, then ReLU) of a
// ResNet block:
//   Relu(BatchNormTraining(X))      -> oxtrain.BatchNormReluTraining(X, ...)
//   Relu(BatchNormTraining(X) + R)  -> oxtrain.BatchNormReluTraining(X, ..., R)
// One node then writes the block's output, and backward computes ReluGrad, the residual's
// gradient and BatchNormGrad in one node (oxtrain.BatchNormReluGrad): fewer nodes and fewer
// passes over memory (the planner already let Relu and Add work in place, so the memory plan
// stays the same). Only values nothing else reads are fused away, and the fused kernels round
// where the unfused ops do, so the graph computes the same numbers bit for bit.
#pragma once

#include "graph/ir.h"

namespace oxtrain::autodiff {

// Returns how many Relu nodes were fused.
int fuse_batchnorm_relu(graph::Graph& graph);

}  // namespace oxtrain::autodiff
