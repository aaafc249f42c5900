// Gradient rules: one per op, in one registry.
//
// A rule sees the forward node and the gradients of its outputs and emits nodes that compute
// the gradients of its inputs, with a small vocabulary (in, out, dY, needs, emit, reduce_to).
// The driver (training.cc), not the rule, checks that every input that needs a gradient got
// one, with the input's shape and dtype, and sums gradients of values used more than once.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::autodiff {

using graph::Graph;
using graph::Node;
using graph::Value;

class GradContext {
 public:
  GradContext(Graph& graph, Node& node, std::vector<Value*> output_grads,
              std::vector<bool> needs_grad);

  const Node& node() const { return node_; }
  Value* in(size_t i) const { return node_.input(i); }
  Value* out(size_t i) const { return node_.output(i); }
  Value* dY(size_t i = 0) const { return i < output_grads_.size() ? output_grads_[i] : nullptr; }
  bool needs(size_t i) const { return i < needs_grad_.size() && needs_grad_[i]; }
  int64_t opset() const;  // of the node's domain

  // Emits `op` (domain "" or "oxtrain") with `num_outputs` fresh outputs, infers their shapes
  // and returns them. Attributes are copied from `attrs`.
  std::vector<Value*> emit(const std::string& op, const std::string& domain,
                           std::vector<Value*> inputs, size_t num_outputs,
                           std::map<std::string, graph::Attribute> attrs = {});
  Value* emit1(const std::string& op, const std::string& domain, std::vector<Value*> inputs,
               std::map<std::string, graph::Attribute> attrs = {}) {
    return emit(op, domain, std::move(inputs), 1, std::move(attrs))[0];
  }
  // Sums `grad` over the dimensions that broadcasting added, to the shape of `like`.
  // The one place where broadcast gradients are reduced.
  Value* reduce_to(Value* grad, const Value* like);
  Value* constant_ints(const std::vector<int64_t>& values);
  Value* constant_scalar(double value, graph::DType dtype);
  // The attributes of the forward node whose names are listed (those it has).
  std::map<std::string, graph::Attribute> copy_attrs(const std::vector<std::string>& keys) const;

  Graph& graph() { return graph_; }

 private:
  Graph& graph_;
  Node& node_;
  std::vector<Value*> output_grads_;
  std::vector<bool> needs_grad_;
  int emitted_ = 0;
};

// Returns one gradient per input (nullptr where none is needed).
using GradRule = std::function<std::vector<Value*>(GradContext&)>;

// Which inputs take no gradient is an op fact (graph::OpFacts::trainable), not the rule's.
struct GradRuleInfo {
  GradRule rule;
  // The rule runs when any output has a gradient, dY(0) included among those that may be
  // missing (Split); otherwise only when dY(0) exists.
  bool any_output = false;
};

// nullptr when the op has no gradient rule.
const GradRuleInfo* find_grad_rule(const std::string& domain, const std::string& op_type);
std::vector<std::string> ops_with_grad_rules();

// Infers the outputs of `node` with its schema (used for every node autodiff emits).
void infer_node(Graph& graph, Node& node);

}  // namespace oxtrain::autodiff
