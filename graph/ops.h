// Op schemas: which ops oxtrain understands, their shape and dtype inference, and (for the
// ops that only compute shapes) a host evaluator used by constant folding.
//
// Gradient rules (autodiff/) and kernels (runtime/) register against the same op names.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::graph {

constexpr int64_t kMinOpset = 7;
constexpr int64_t kMaxOpset = 21;

inline constexpr const char* kTrainingDomain = "ai.onnx.preview.training";
inline constexpr const char* kOxtrainDomain = "oxtrain";

struct InferContext {
  const Graph& graph;
  int64_t opset;  // opset of the node's domain
};

struct OpSchema {
  std::string domain;  // "" = ai.onnx
  std::string op_type;
  // Sets dtype and shape of the node's outputs from its inputs; throws Error naming the node
  // and the shapes when they disagree.
  std::function<void(Node&, const InferContext&)> infer;
  // Present for ops that constant folding may evaluate on the host when every input is a
  // constant; fills outputs[i]->data.
  std::function<void(Node&, const InferContext&)> fold;
  // Inputs of which folding needs only the type and shape, not the data (Shape's input,
  // CastLike's second input).
  std::vector<size_t> metadata_inputs = {};
  // Ops oxtrain evaluates only by folding (no kernel, no inference without data): import
  // reports them, all at once, when their inputs are computed at run time.
  bool constant_inputs_only = false;
};

// Nodes grouped by op for a one-line message, most frequent op first:
// "Foo (12 nodes: 'a', 'b', and 10 more), Bar (1 node: 'c')"; names escaped, lists shortened
// with join_limited (all of them under --verbose).
std::string nodes_by_op(const std::vector<const Node*>& nodes);

// nullptr when the op is not supported.
const OpSchema* find_schema(const std::string& domain, const std::string& op_type);
std::vector<std::string> supported_ops();  // "Conv", "ai.onnx.preview.training.Momentum", ...

// Geometry of a sliding window (Conv, MaxPool, AveragePool) after resolving auto_pad,
// defaults and ceil_mode: everything a kernel needs. Spatial dims only.
struct WindowGeometry {
  std::vector<int64_t> kernel, strides, dilations, pads_begin, pads_end, output;
};
WindowGeometry window_geometry(const Node& node, const Shape& input,
                               const std::vector<int64_t>& kernel, bool ceil_mode);

// Numpy-style multidirectional broadcast; throws Error naming `node` on a mismatch.
Shape broadcast_shapes(const Node& node, const Shape& a, const Shape& b);

// Reads a constant integer input (axes, shape) as int64 values; throws naming the node when
// it is not constant.
std::vector<int64_t> constant_ints(const Node& node, size_t input_index);

// Axes of ReduceMean/Squeeze/Unsqueeze from the attribute (older opsets) or the input (newer).
std::vector<int64_t> axes_of(const Node& node, const InferContext& ctx, int64_t input_since);

}  // namespace oxtrain::graph
