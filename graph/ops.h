// Op schemas: which ops oxtrain understands, their shape and dtype inference, and (for the
// ops that only compute shapes) a host evaluator used by constant folding.
//
// Gradient rules (autodiff/) and kernels (runtime/) register against the same op names.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/opset.h"

namespace oxtrain::graph {

inline constexpr const char* kTrainingDomain = "ai.onnx.preview.training";
inline constexpr const char* kOxtrainDomain = "oxtrain";

struct InferContext {
  const Graph& graph;
  int64_t opset;  // opset of the node's domain
};

// What an op's inputs and outputs are beyond their types, in one place: import reads it to
// tell parameters from state and constants, autodiff to know which inputs take no gradient,
// the planner which outputs may share an input's buffer and which update state in place.
struct OpFacts {
  // Inputs that must be known when the graph is compiled (a shape, axes, a ratio): kernels
  // read them then, never during a step. Never trainable.
  std::vector<size_t> compile_time = {};
  // Inputs computed or fed at run time that take no gradient (labels, class weights,
  // optimizer inputs).
  std::vector<size_t> non_trainable = {};
  // State inputs: values the step reads and (through an update) rewrites, never trained
  // (batch-norm running statistics, momentum buffers).
  std::vector<size_t> state = {};
  // {output, input}: the output may take the input's buffer when their sizes match and the
  // input dies at this node; the kernel reads element i before writing element i.
  std::vector<std::pair<size_t, size_t>> shares_input = {};
  // {output, input}: the output is the next value of that (state or parameter) input, and may
  // be written straight into its buffer.
  std::vector<std::pair<size_t, size_t>> updates_input = {};

  bool trainable(size_t input) const;  // in none of the three input lists
};

// What mixed precision (--precision bf16|fp16, graph::to_mixed_precision) does with an op:
//   fp32     computes in float32: half inputs are cast up (the default: losses, softmax,
//            normalisations over features, exp/log and whatever is not listed);
//   compute  computes in half whatever comes in (convolutions, matrix products);
//   follow   computes in half when one of its half-capable inputs arrives in half
//            (activations, pooling, additions, data movement, batch norm's X), else in float32.
// `inputs` are the half-capable inputs (empty: every float input); the others stay float32
// (batch norm's scale, bias and statistics).
enum class HalfMode { fp32, compute, follow };
struct HalfPolicy {
  HalfMode mode = HalfMode::fp32;
  std::vector<size_t> inputs = {};
};

// Channels-last (graph::to_channels_last): the inputs and outputs of an op that are
// [N, C, H, W] activations it can also take as [N, H, W, C] (physical shapes: the values are
// stored so), when the node has the attribute channels_last=1; shape inference and the
// kernels' layout emulation (runtime/layout_emulation.h) permute exactly these. `agnostic`
// ops (element-wise over values of one shape) take either layout as it is, without the
// attribute.
struct LayoutSlots {
  std::vector<size_t> inputs, outputs;
  bool agnostic = false;
  bool channels_last_form() const { return !inputs.empty() || !outputs.empty(); }
};

// The attribute that puts a node in channels-last form, and the permutations between the
// layouts of a rank-4 shape.
inline constexpr const char* kChannelsLast = "channels_last";
bool is_channels_last(const Node& node);
Shape to_channels_last_shape(const Shape& nchw);  // [N, C, H, W] -> [N, H, W, C]
Shape to_channels_first_shape(const Shape& nhwc);  // [N, H, W, C] -> [N, C, H, W]

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
  // The op's facts; for ops with a variable number of inputs, `facts_of` gives them per node.
  OpFacts facts = {};
  std::function<OpFacts(const Node&)> facts_of = nullptr;
  HalfPolicy half = {};
  LayoutSlots layout = {};
};

// The inputs before X1..Xn of an optimizer node: R, T for ai.onnx.preview.training.Momentum;
// R, T, found_inf, loss_scale for oxtrain.ScaledMomentum (Momentum on gradients scaled by
// loss_scale, skipped when found_inf is nonzero: fp16's dynamic loss scaling).
size_t momentum_leading_inputs(const Node& node);

// The facts of one node: its schema's (empty for an op without one).
OpFacts node_facts(const Node& node);

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

// What a Slice node selects from an input of shape `input`, after resolving its starts, ends,
// axes and steps (attributes before opset 10, constant inputs from 10) and clamping them as
// the spec says: per input axis, the first index read and the step (0 and 1 on axes it does not
// slice), and the output shape. Throws naming the node.
struct SliceGeometry {
  std::vector<int64_t> starts, steps;
  Shape output;
};
SliceGeometry slice_geometry(const Node& node, const Shape& input, int64_t opset);

// Cast's (and CastLike's) round_mode, which only a cast to float8e8m0 uses: "up" (the
// default), "down" or "nearest"; throws naming the node for anything else.
std::string cast_round_mode(const Node& node);

// Numpy-style multidirectional broadcast; throws Error naming `node` on a mismatch.
Shape broadcast_shapes(const Node& node, const Shape& a, const Shape& b);

// Reads a constant integer input (axes, shape) as int64 values; throws naming the node when
// it is not constant.
std::vector<int64_t> constant_ints(const Node& node, size_t input_index);

// Axes of ReduceMean/Squeeze/Unsqueeze from the attribute (older opsets) or the input (newer).
std::vector<int64_t> axes_of(const Node& node, const InferContext& ctx, int64_t input_since);

}  // namespace oxtrain::graph
