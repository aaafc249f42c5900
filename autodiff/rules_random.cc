// The random family in the training graph (see autodiff/rule_families.h): the rewrite of the
// random ops into their oxtrain-domain forms, and the gradient rules.
//
// Design. The ONNX random ops say nothing about which step they run in, but a training step
// must draw new numbers each step and the same numbers when the same step is run again (a
// resumed run, another thread count, the GPU). So build_training_graph (autodiff/training.cc)
// calls random_to_training, which rewrites every random node in place:
//   Dropout in training mode (graph::dropout_mode)  -> oxtrain.DropoutTraining(X, step)
//       -> (Y, mask), attributes ratio and key; the mask (bool) is an explicit output, saved
//       for backward, where oxtrain.DropoutGrad(dY, mask) = dY * (mask ? 1 / (1 - ratio) : 0)
//   RandomUniform(Like), RandomNormal(Like)          -> oxtrain.RandomUniform / RandomNormal(step)
//       with the output's shape and type as attributes (a *Like op's input is only its shape)
// `step` is the training graph's int64 scalar input (TrainingGraph::step, fed each step,
// restored from the checkpoint on resume) and `key` the node's generator key
// (graph::random_node_key: the run's seed, the node's names, its ONNX seed attribute). The
// kernels read the step on the device and draw number i of the node's output at that step
// with Philox4x32-10 (runtime/math/random.h). Inference-mode Dropout stays the identity.
//
// Random outputs take no gradient: their inputs are not trainable (OpFacts), so autodiff
// never asks for a rule.
#include <algorithm>

#include "autodiff/rule_families.h"
#include "graph/ops.h"
#include "graph/random.h"

namespace oxtrain::autodiff::detail {
namespace {

using graph::Attribute;
using graph::DType;

// Replaces the node's inputs, keeping the consumer lists right.
void set_inputs(Node* n, std::vector<Value*> inputs) {
  for (Value* old : n->inputs) {
    if (!old) continue;
    auto it = std::find(old->consumers.begin(), old->consumers.end(), n);
    if (it != old->consumers.end()) old->consumers.erase(it);
  }
  n->inputs = std::move(inputs);
  for (Value* v : n->inputs)
    if (v) v->consumers.push_back(n);
}

Attribute key_attr(uint64_t key) { return Attribute{static_cast<int64_t>(key)}; }

bool is_graph_output(const Graph& g, const Value* v) {
  return std::find(g.outputs.begin(), g.outputs.end(), v) != g.outputs.end();
}

void dropout_to_training(Graph& g, Node* n, const std::function<Value*()>& step, uint64_t seed) {
  const graph::DropoutMode mode = graph::dropout_mode(*n, g.opset());
  if (!mode.training) return;
  uint64_t key = graph::random_node_key(seed, *n);
  Value* mask = n->output(1);
  if (mask && mask->dtype != DType::boolean) {
    // Opsets 7-9: the mask has the input's type; oxtrain's mask is bool.
    if (!mask->consumers.empty() || is_graph_output(g, mask))
      throw Error(n->describe() + ": its mask output '" + mask->name + "' is " + graph::dtype_name(mask->dtype) +
                  " (opset " + std::to_string(g.opset()) +
                  ") and read by other nodes; oxtrain trains Dropout with a bool mask (opset 10 and later)");
    g.set_output(n, 1, nullptr);
    mask = nullptr;
  }
  if (!mask) g.set_output(n, 1, mask = g.add_value(g.unique_name(n->name + "/mask")));
  set_inputs(n, {n->input(0), step()});
  n->op_type = "DropoutTraining";
  n->domain = graph::kOxtrainDomain;
  n->attrs.clear();
  n->attrs["ratio"].value = mode.ratio;
  n->attrs["key"] = key_attr(key);
  infer_node(g, *n);
}

void random_op_to_training(Graph& g, Node* n, const std::function<Value*()>& step, uint64_t seed) {
  const bool normal = n->op_type == "RandomNormal" || n->op_type == "RandomNormalLike";
  const Value* y = n->output(0);
  if (!y || !y->rank_known) throw Error(n->describe() + ": its output's shape is unknown");
  uint64_t key = graph::random_node_key(seed, *n);
  std::map<std::string, Attribute> attrs;
  attrs["shape"].value = std::vector<int64_t>(y->shape);
  attrs["dtype"].value = static_cast<int64_t>(graph::dtype_to_onnx(y->dtype));
  if (normal) {
    attrs["mean"].value = n->attr_float("mean", 0.0f);
    attrs["scale"].value = n->attr_float("scale", 1.0f);
  } else {
    attrs["low"].value = n->attr_float("low", 0.0f);
    attrs["high"].value = n->attr_float("high", 1.0f);
  }
  attrs["key"] = key_attr(key);
  set_inputs(n, {step()});
  n->op_type = normal ? "RandomNormal" : "RandomUniform";
  n->domain = graph::kOxtrainDomain;
  n->attrs = std::move(attrs);
  infer_node(g, *n);
}

using Grads = std::vector<Value*>;

Grads dropout_training_rule(GradContext& c) {
  return {c.emit1("DropoutGrad", graph::kOxtrainDomain, {c.dY(), c.out(1)}, c.copy_attrs({"ratio"})), nullptr};
}

// ONNX Dropout reaches autodiff only in inference mode (training mode was rewritten): the
// identity.
Grads dropout_rule(GradContext& c) {
  if (graph::dropout_mode(c.node(), c.opset()).training)
    throw Error(c.node().describe() + ": training-mode Dropout must be rewritten to oxtrain.DropoutTraining "
                "before autodiff (build_training_graph does)");
  Grads g(c.node().inputs.size(), nullptr);
  g[0] = c.dY();
  return g;
}

}  // namespace

void random_to_training(Graph& g, uint64_t seed, const std::function<Value*()>& step) {
  for (const auto& node_ptr : g.nodes()) {
    Node* n = node_ptr.get();
    if (!n->domain.empty() && n->domain != "ai.onnx") continue;
    if (n->op_type == "Dropout")
      dropout_to_training(g, n, step, seed);
    else if (n->op_type == "RandomUniform" || n->op_type == "RandomNormal" ||
             n->op_type == "RandomUniformLike" || n->op_type == "RandomNormalLike")
      random_op_to_training(g, n, step, seed);
  }
}

void add_random_rules(RuleMap& rules) {
  rules["Dropout"] = {dropout_rule};
  rules["oxtrain.DropoutTraining"] = {dropout_training_rule};
}

}  // namespace oxtrain::autodiff::detail
