// Half precision on the CPU: a node with float16 or bfloat16 values runs its float32 kernel
// on float32 copies of its half inputs and rounds each half output from float32 (round to
// nearest even, base/half.h). That is what a GPU kernel does when it accumulates in
// float32 and stores half, so these results are the reference the CUDA kernels are compared
// with. Slow (every half value is converted at every use), but the CPU's half runs are a
// reference, not a fast path.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/kernel.h"

namespace oxtrain::runtime::cpu {

// Whether any input or output of the node is float16 or bfloat16.
bool has_half_values(const Node& node);

// The node's float32 twin, in a graph of its own: every half input and output becomes float32
// (constant data widened), ops that name a half result type (Cast's `to`) name float32.
// input_half[i] / output_half[i]: the half type that slot had, or undefined. Used by the CPU
// emulation here and by the CUDA one (runtime/cuda/half_emulation.cu).
struct FloatTwin {
  std::unique_ptr<graph::Graph> graph;
  graph::Node* node = nullptr;
  std::vector<graph::DType> input_half, output_half;
};
FloatTwin float_twin(const Node& node);

// `float_factory`, with nodes that have half values run as above.
KernelFactory with_half_emulation(KernelFactory float_factory);

// Element-wise conversions between float32 and a half type (f16 or bf16), in parallel.
void widen_half(graph::DType half, const uint16_t* in, float* out, int64_t count);
void narrow_to_half(graph::DType half, const float* in, uint16_t* out, int64_t count);

}  // namespace oxtrain::runtime::cpu
