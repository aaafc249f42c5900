// One gradient rule per op. Each returns one gradient per input (nullptr where the input
// needs none); the driver checks shapes and sums fan-out.
#include <algorithm>
#include <numeric>

#include "autodiff/gradients.h"
#include "autodiff/rule_families.h"
#include "graph/ops.h"

namespace oxtrain::autodiff {

using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;

GradContext::GradContext(Graph& graph, Node& node, std::vector<Value*> output_grads,
                         std::vector<bool> needs_grad)
    : graph_(graph), node_(node), output_grads_(std::move(output_grads)),
      needs_grad_(std::move(needs_grad)) {}

int64_t GradContext::opset() const { return graph_.opset(node_.domain); }

void infer_node(Graph& graph, Node& node) {
  const graph::OpSchema* schema = graph::find_schema(node.domain, node.op_type);
  if (!schema) throw Error("autodiff emitted " + node.describe() + ", which has no schema");
  graph::InferContext ctx{graph, graph.opset(node.domain)};
  schema->infer(node, ctx);
}

std::vector<Value*> GradContext::emit(const std::string& op, const std::string& domain,
                                      std::vector<Value*> inputs, size_t num_outputs,
                                      std::map<std::string, Attribute> attrs) {
  std::string base = node_.name + "/" + op;
  std::vector<Value*> outs;
  for (size_t i = 0; i < num_outputs; ++i)
    outs.push_back(graph_.add_value(graph_.unique_name(base + "_" + std::to_string(emitted_++))));
  Node* n = graph_.add_node(op, std::move(inputs), outs,
                            graph_.unique_name(base + "_node" + std::to_string(emitted_)), domain);
  n->attrs = std::move(attrs);
  infer_node(graph_, *n);
  return outs;
}

Value* GradContext::reduce_to(Value* grad, const Value* like) {
  if (grad->shape == like->shape) return grad;
  return emit1("ReduceSumTo", graph::kOxtrainDomain, {grad},
               {{"shape", Attribute{like->shape}}});
}

Value* GradContext::constant_ints(const std::vector<int64_t>& values) {
  return graph_.add_initializer(
      graph_.unique_name(node_.name + "/const"),
      Tensor::from_int64(values, {static_cast<int64_t>(values.size())}), graph::Role::Constant);
}

Value* GradContext::constant_scalar(double value, DType dtype) {
  Tensor t(dtype, {});
  if (dtype == DType::f64) *t.data<double>() = value;
  else *t.data<float>() = static_cast<float>(value);
  return graph_.add_initializer(graph_.unique_name(node_.name + "/scalar"), std::move(t),
                                graph::Role::Constant);
}

std::map<std::string, Attribute> GradContext::copy_attrs(
    const std::vector<std::string>& keys) const {
  std::map<std::string, Attribute> out;
  for (const auto& k : keys) {
    auto it = node_.attrs.find(k);
    if (it != node_.attrs.end()) out[k] = it->second;
  }
  return out;
}

namespace {

using Grads = std::vector<Value*>;
const char* kOx = graph::kOxtrainDomain;

Attribute ints(const Shape& s) { return Attribute{std::vector<int64_t>(s)}; }

Grads conv_rule(GradContext& c) {
  Grads g(c.node().inputs.size(), nullptr);
  auto attrs = c.copy_attrs({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"});
  if (c.needs(0)) {
    auto a = attrs;
    a["input_shape"] = ints(c.in(0)->shape);
    g[0] = c.emit1("ConvGradData", kOx, {c.dY(), c.in(1)}, a);
  }
  if (c.needs(1)) {
    auto a = attrs;
    a["filter_shape"] = ints(c.in(1)->shape);
    g[1] = c.emit1("ConvGradFilter", kOx, {c.dY(), c.in(0)}, a);
  }
  if (c.needs(2)) {
    // The bias broadcasts over batch and space: sum to [1, M, 1, ...], then reshape to [M].
    Shape per_channel(c.dY()->shape.size(), 1);
    per_channel[1] = c.in(2)->shape[0];
    Value* sum = c.emit1("ReduceSumTo", kOx, {c.dY()}, {{"shape", ints(per_channel)}});
    g[2] = c.emit1("Reshape", "", {sum, c.constant_ints(c.in(2)->shape)});
  }
  return g;
}

Grads batchnorm_training_rule(GradContext& c) {
  // Outputs: Y, running mean, running var, saved mean, saved inverse std.
  auto outs = c.emit("BatchNormGrad", kOx,
                     {c.dY(), c.in(0), c.in(1), c.out(3), c.out(4)}, 3);
  return {c.needs(0) ? outs[0] : nullptr, c.needs(1) ? outs[1] : nullptr,
          c.needs(2) ? outs[2] : nullptr, nullptr, nullptr};
}

// Z = Relu(BN(X) + R): one node back, with dR = ReluGrad(dZ, Z) when R takes a gradient.
Grads batchnorm_relu_training_rule(GradContext& c) {
  const bool residual = c.needs(5);
  auto outs = c.emit("BatchNormReluGrad", kOx, {c.dY(), c.out(0), c.in(0), c.in(1), c.out(3), c.out(4)},
                     residual ? 4 : 3);
  return {c.needs(0) ? outs[0] : nullptr, c.needs(1) ? outs[1] : nullptr, c.needs(2) ? outs[2] : nullptr,
          nullptr, nullptr, residual ? outs[3] : nullptr};
}

Grads relu_rule(GradContext& c) { return {c.emit1("ReluGrad", kOx, {c.dY(), c.out(0)})}; }

// MaxPool's gradient finds each window's maximum in X again (MaxPoolGradFromInput; 3-D and
// more on the CPU only): backward keeps X, usually alive for another reason or recomputed,
// instead of int64 Indices, four times the size of a float32 X, which exporters do not write
// (oxtrain.MaxPoolGrad, which scatters through Indices, stays for graphs that carry them).
Grads maxpool_rule(GradContext& c) {
  // The window travels with the gradient node, so its kernel knows which outputs can cover an
  // input element without looking at the forward node.
  auto a = c.copy_attrs({"auto_pad", "ceil_mode", "kernel_shape", "pads", "strides", "dilations"});
  if (c.opset() < 10) a.erase("ceil_mode");
  return {c.emit1("MaxPoolGradFromInput", kOx, {c.dY(), c.in(0)}, a)};
}

Grads avgpool_rule(GradContext& c) {
  auto a = c.copy_attrs({"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads",
                         "strides", "dilations"});
  if (c.opset() < 10) a.erase("ceil_mode");
  a["input_shape"] = ints(c.in(0)->shape);
  return {c.emit1("AveragePoolGrad", kOx, {c.dY()}, a)};
}

Grads global_avgpool_rule(GradContext& c) {
  return {c.emit1("GlobalAveragePoolGrad", kOx, {c.dY()}, {{"input_shape", ints(c.in(0)->shape)}})};
}

Grads reduce_mean_rule(GradContext& c) {
  graph::InferContext ictx{c.graph(), c.opset()};
  std::vector<int64_t> axes = graph::axes_of(c.node(), ictx, 18);
  int64_t rank = static_cast<int64_t>(c.in(0)->shape.size());
  if (axes.empty()) {
    if (c.node().attr_int("noop_with_empty_axes", 0)) return {c.dY(), nullptr};
    axes.resize(rank);
    std::iota(axes.begin(), axes.end(), 0);
  }
  for (int64_t& a : axes) a = a < 0 ? a + rank : a;
  std::sort(axes.begin(), axes.end());
  return {c.emit1("ReduceMeanGrad", kOx, {c.dY()},
                  {{"input_shape", ints(c.in(0)->shape)},
                   {"axes", Attribute{axes}},
                   {"keepdims", Attribute{c.node().attr_int("keepdims", 1)}}}),
          nullptr};
}

Grads add_rule(GradContext& c) {
  Grads g(c.node().inputs.size(), nullptr);
  for (size_t i = 0; i < g.size(); ++i)
    if (c.needs(i)) g[i] = c.reduce_to(c.dY(), c.in(i));
  return g;
}

Grads sub_rule(GradContext& c) {
  Grads g(2, nullptr);
  if (c.needs(0)) g[0] = c.reduce_to(c.dY(), c.in(0));
  if (c.needs(1)) g[1] = c.emit1("Neg", "", {c.reduce_to(c.dY(), c.in(1))});
  return g;
}

Grads mul_rule(GradContext& c) {
  Grads g(2, nullptr);
  if (c.needs(0)) g[0] = c.reduce_to(c.emit1("Mul", "", {c.dY(), c.in(1)}), c.in(0));
  if (c.needs(1)) g[1] = c.reduce_to(c.emit1("Mul", "", {c.dY(), c.in(0)}), c.in(1));
  return g;
}

Grads reshape_like_rule(GradContext& c) {
  Grads g(c.node().inputs.size(), nullptr);
  g[0] = c.emit1("Reshape", "", {c.dY(), c.constant_ints(c.in(0)->shape)});
  return g;
}

Grads identity_rule(GradContext& c) {
  Grads g(c.node().inputs.size(), nullptr);
  g[0] = c.dY();
  return g;
}

Grads dropout_rule(GradContext& c) {
  // Inference-mode Dropout is the identity. Training-mode dropout needs a mask kernel.
  const Value* training = c.node().input(2);
  if (training && training->has_data() && training->data->to_int64().at(0) != 0)
    throw Error(c.node().describe() + ": training-mode Dropout has no gradient rule yet");
  return identity_rule(c);
}

Grads gemm_rule(GradContext& c) {
  const Node& n = c.node();
  int64_t ta = n.attr_int("transA", 0), tb = n.attr_int("transB", 0);
  float alpha = n.attr_float("alpha", 1.0f), beta = n.attr_float("beta", 1.0f);
  auto gemm = [&](Value* a, Value* b, int64_t trans_a, int64_t trans_b) {
    return c.emit1("Gemm", "", {a, b},
                   {{"transA", Attribute{trans_a}}, {"transB", Attribute{trans_b}},
                    {"alpha", Attribute{alpha}}});
  };
  Grads g(n.inputs.size(), nullptr);
  Value *a = c.in(0), *b = c.in(1), *dy = c.dY();
  // Y = alpha op(A) op(B) + beta C
  if (c.needs(0)) g[0] = ta ? gemm(b, dy, tb, 1) : gemm(dy, b, 0, tb ? 0 : 1);
  if (c.needs(1)) g[1] = tb ? gemm(dy, a, 1, ta) : gemm(a, dy, ta ? 0 : 1, 0);
  if (c.needs(2)) {
    Value* d = dy;
    if (beta != 1.0f) d = c.emit1("Mul", "", {dy, c.constant_scalar(beta, dy->dtype)});
    g[2] = c.reduce_to(d, c.in(2));
  }
  return g;
}

Grads matmul_rule(GradContext& c) {
  Value *a = c.in(0), *b = c.in(1), *dy = c.dY();
  if (a->shape.size() < 2 || b->shape.size() < 2)
    throw Error(c.node().describe() + ": MatMul gradients need operands of rank 2 or more, got " +
                a->shape_string() + " and " + b->shape_string());
  auto swap_last = [&](Value* v) {
    std::vector<int64_t> perm(v->shape.size());
    std::iota(perm.begin(), perm.end(), 0);
    std::swap(perm[perm.size() - 1], perm[perm.size() - 2]);
    return c.emit1("Transpose", "", {v}, {{"perm", Attribute{perm}}});
  };
  Grads g(2, nullptr);
  if (c.needs(0)) g[0] = c.reduce_to(c.emit1("MatMul", "", {dy, swap_last(b)}), a);
  if (c.needs(1)) g[1] = c.reduce_to(c.emit1("MatMul", "", {swap_last(a), dy}), b);
  return g;
}

// Softmax: dX = Y * (dY - sum(dY * Y)); LogSoftmax: dX = dY - exp(Y) * sum(dY). Both from Y.
Grads softmax_rule(GradContext& c) {
  int64_t opset = c.opset();
  int64_t axis = c.node().attr_int("axis", opset >= 13 ? -1 : 1);
  const char* grad = c.node().op_type == "LogSoftmax" ? "LogSoftmaxGrad" : "SoftmaxGrad";
  return {c.emit1(grad, kOx, {c.dY(), c.out(0)},
                  {{"axis", Attribute{axis}}, {"coerce_2d", Attribute{int64_t{opset < 13}}}})};
}

Grads sce_loss_rule(GradContext& c) {
  if (!c.out(1))
    throw Error(c.node().describe() + ": needs its log_prob output for a gradient");
  std::vector<Value*> inputs = {c.dY(), c.out(1), c.in(1)};
  if (c.in(2)) inputs.push_back(c.in(2));
  Grads g(c.node().inputs.size(), nullptr);
  g[0] = c.emit1("SoftmaxCrossEntropyLossGrad", kOx, inputs,
                 c.copy_attrs({"reduction", "ignore_index"}));
  return g;
}

const std::map<std::string, GradRuleInfo>& rules() {
  static const std::map<std::string, GradRuleInfo> r = [] {
    std::map<std::string, GradRuleInfo> core = {
      {"Conv", {conv_rule}},
      {"oxtrain.BatchNormTraining", {batchnorm_training_rule}},
      {"oxtrain.BatchNormReluTraining", {batchnorm_relu_training_rule}},
      {"Relu", {relu_rule}},
      {"MaxPool", {maxpool_rule}},
      {"AveragePool", {avgpool_rule}},
      {"GlobalAveragePool", {global_avgpool_rule}},
      {"ReduceMean", {reduce_mean_rule}},
      {"Add", {add_rule}},
      {"Sum", {add_rule}},
      {"Sub", {sub_rule}},
      {"Mul", {mul_rule}},
      {"Flatten", {reshape_like_rule}},
      {"Reshape", {reshape_like_rule}},
      {"Identity", {identity_rule}},
      {"Dropout", {dropout_rule}},
      {"Gemm", {gemm_rule}},
      {"MatMul", {matmul_rule}},
      {"Softmax", {softmax_rule}},
      {"LogSoftmax", {softmax_rule}},
      {"SoftmaxCrossEntropyLoss", {sce_loss_rule}},
    };
    detail::add_pointwise_rules(core);
    detail::add_movement_rules(core);
    detail::add_normalization_rules(core);
    detail::add_random_rules(core);
    return core;
  }();
  return r;
}

}  // namespace

const GradRuleInfo* find_grad_rule(const std::string& domain, const std::string& op_type) {
  std::string key = domain.empty() || domain == "ai.onnx" ? op_type : domain + "." + op_type;
  auto it = rules().find(key);
  return it == rules().end() ? nullptr : &it->second;
}

std::vector<std::string> ops_with_grad_rules() {
  std::vector<std::string> out;
  for (const auto& [k, v] : rules()) out.push_back(k);
  return out;
}

}  // namespace oxtrain::autodiff
