#include "autodiff/fusion.h"

#include <algorithm>
#include <set>
#include <vector>

#include "autodiff/gradients.h"
#include "graph/ops.h"

namespace oxtrain::autodiff {

using graph::Node;
using graph::Value;

namespace {

bool is_output(const graph::Graph& g, const Value* v) {
  return std::find(g.outputs.begin(), g.outputs.end(), v) != g.outputs.end();
}

// The node that produced v if v is its only use's input, it is `op` of the oxtrain or default
// domain, and v is its first output and no graph output.
Node* sole_producer(const graph::Graph& g, const Value* v, const char* op) {
  if (!v || !v->producer || v->consumers.size() != 1 || is_output(g, v)) return nullptr;
  Node* p = v->producer;
  if (p->op_type != op || p->output(0) != v) return nullptr;
  return p;
}

}  // namespace

int fuse_batchnorm_relu(graph::Graph& g) {
  std::vector<Node*> relus;
  for (const auto& n : g.nodes())
    if (n->op_type == "Relu" && n->domain.empty()) relus.push_back(n.get());
  std::set<const Node*> doomed;
  int fused = 0;
  for (Node* relu : relus) {
    Value* y = relu->input(0);
    Node* bn = sole_producer(g, y, "BatchNormTraining");
    Value* residual = nullptr;
    Node* add = nullptr;
    if (!bn) {
      add = sole_producer(g, y, "Add");
      if (!add || !add->domain.empty() || add->inputs.size() != 2) continue;
      for (size_t k = 0; k < 2 && !bn; ++k) {
        Node* candidate = sole_producer(g, add->input(k), "BatchNormTraining");
        Value* other = add->input(1 - k);
        if (candidate && other && other != add->input(k) && other->shape == y->shape &&
            other->dtype == y->dtype) {
          bn = candidate;
          residual = other;
        }
      }
      if (!bn) continue;
    }
    if (bn->domain != graph::kOxtrainDomain || doomed.count(bn)) continue;
    // The fused node: the batch norm's inputs (and the residual), the Relu's output first, the
    // batch norm's statistics after; it takes the Relu's place in the schedule.
    std::vector<Value*> inputs(bn->inputs.begin(), bn->inputs.begin() + 5);
    if (residual) inputs.push_back(residual);
    std::vector<Value*> outputs(5, nullptr);
    outputs[0] = relu->output(0);
    for (size_t i = 1; i < 5; ++i) outputs[i] = bn->output(i);
    for (size_t i = 0; i < bn->outputs.size(); ++i) g.set_output(bn, i, nullptr);
    g.set_output(relu, 0, nullptr);
    Node* f = g.add_node("BatchNormReluTraining", inputs, {}, g.unique_name(bn->name + "+relu"), graph::kOxtrainDomain);
    for (size_t i = 0; i < 5; ++i) g.set_output(f, i, outputs[i]);
    f->attrs = bn->attrs;
    infer_node(g, *f);
    g.move_before(f, relu);
    doomed.insert(bn);
    doomed.insert(relu);
    if (add) doomed.insert(add);
    ++fused;
  }
  g.remove_nodes_if([&](const Node& n) { return doomed.count(&n) != 0; });
  g.prune_values();
  return fused;
}

}  // namespace oxtrain::autodiff
