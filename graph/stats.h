// What `oxtrain graph` reports about a model: parameters, op histogram, FLOPs and activation
// memory. Per-sample figures divide by the batch the graph was prepared with.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "graph/ir.h"

namespace oxtrain::graph {

struct GraphStats {
  int64_t batch = 1;
  int64_t parameters = 0;        // trainable elements
  int64_t parameter_bytes = 0;
  int64_t state_elements = 0;    // BN running statistics and other non-trained state
  int64_t state_bytes = 0;
  int64_t constant_bytes = 0;
  int64_t multiply_adds = 0;     // per sample: Conv, Gemm, MatMul
  int64_t flops = 0;             // per sample: 2 x multiply_adds
  int64_t activation_bytes = 0;  // per sample: node outputs with the batch as leading dim
  int64_t nodes = 0;
  std::map<std::string, int64_t> ops;  // op type -> count
};

GraphStats compute_stats(const Graph& graph);

// Multiply-adds of one node for the graph's batch (0 for ops without a matrix product).
int64_t node_multiply_adds(const Node& node);

}  // namespace oxtrain::graph
