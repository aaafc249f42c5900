#include "autodiff/fusion.h"

#include <algorithm>
#include <functional>
#include <map>
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

int recompute_batchnorm_relu(graph::Graph& g, size_t forward_nodes) {
  const size_t forward_end = std::min(forward_nodes, g.nodes().size());
  std::set<const Node*> forward;
  std::vector<Node*> fused;  // and the parameters' casts
  for (size_t i = 0; i < forward_end; ++i) {
    Node* n = g.nodes()[i].get();
    forward.insert(n);
    if ((n->op_type == "BatchNormReluTraining" && n->domain == graph::kOxtrainDomain) ||
        (n->op_type == "Cast" && n->domain.empty() && n->input(0) && n->input(0)->role == graph::Role::Parameter))
      fused.push_back(n);
  }
  auto backward_readers = [&](const Value* v) {
    std::vector<Node*> readers;
    for (Node* c : v->consumers)
      if (!forward.count(c) && std::find(readers.begin(), readers.end(), c) == readers.end()) readers.push_back(c);
    return readers;
  };
  auto position = [&](const Node* n) {
    const auto& nodes = g.nodes();
    for (size_t i = 0; i < nodes.size(); ++i)
      if (nodes[i].get() == n) return i;
    throw Error("recompute: node '" + n->name + "' is not in the graph");
  };
  // A value backward can read: one that outlives the forward anyway (a step-long value, a
  // graph output, one backward reads), or its recomputed copy.
  std::map<const Value*, Value*> copies;
  std::set<const Node*> recompute_nodes;
  auto kept = [&](const Value* v) {
    return v && (v->role != graph::Role::Activation || is_output(g, v) || !backward_readers(v).empty());
  };
  // The recomputed copy of output 0 of a forward batch norm (fused or not), built once; null
  // when one of its inputs is neither kept nor recomputable. The node is placed later.
  std::function<Value*(Value*, bool)> copy_of = [&](Value* v, bool build) -> Value* {
    if (!v) return nullptr;
    if (auto it = copies.find(v); it != copies.end()) return it->second;
    if (!build && kept(v)) return v;
    Node* p = v->producer;
    if (!p || !forward.count(p) || p->output(0) != v) return nullptr;
    if (p->op_type == "Cast" && p->domain.empty()) {  // a parameter's half copy
      Value* source = p->input(0);
      if (!source || source->role != graph::Role::Parameter) return nullptr;
      Value* copy = g.add_value(g.unique_name(v->name + "/recomputed"), v->dtype, v->shape);
      copy->rank_known = true;
      Node* r = g.add_node("Cast", {source}, {copy}, g.unique_name(p->name + "/recompute"));
      r->attrs = p->attrs;
      infer_node(g, *r);
      recompute_nodes.insert(r);
      return copies[v] = copy;
    }
    if (p->domain != graph::kOxtrainDomain) return nullptr;
    const bool relu = p->op_type == "BatchNormReluTraining";
    if (!relu && p->op_type != "BatchNormTraining") return nullptr;
    Value* mean = p->output(3);
    Value* inv_std = p->output(4);
    std::vector<Value*> inputs = {p->input(0), p->input(1), p->input(2), mean, inv_std};
    if (relu && p->input(5)) inputs.push_back(p->input(5));
    for (Value*& in : inputs)
      if (!(in = copy_of(in, false))) return nullptr;
    Value* copy = g.add_value(g.unique_name(v->name + "/recomputed"), v->dtype, v->shape);
    copy->rank_known = true;
    Node* r = g.add_node(relu ? "BatchNormReluApply" : "BatchNormApply", inputs, {copy},
                         g.unique_name(p->name + "/recompute"), graph::kOxtrainDomain);
    infer_node(g, *r);
    recompute_nodes.insert(r);
    return copies[v] = copy;
  };
  // Moves n before anchor (when it is after it), and so the recomputed values n reads.
  std::function<void(Node*, const Node*)> hoist = [&](Node* n, const Node* anchor) {
    if (position(n) > position(anchor)) g.move_before(n, anchor);
    for (Value* in : n->inputs)
      if (in && in->producer && recompute_nodes.count(in->producer)) hoist(in->producer, n);
  };
  int count = 0;
  for (Node* f : fused) {
    const bool cast = f->op_type == "Cast";
    Value* z = f->output(0);
    if (!z || is_output(g, z)) continue;
    std::vector<Node*> readers = backward_readers(z);
    if (readers.empty()) continue;
    Value* copy = copy_of(z, true);
    if (!copy) continue;
    const Node* first = *std::min_element(readers.begin(), readers.end(),
                                          [&](const Node* a, const Node* b) { return position(a) < position(b); });
    for (Node* reader : readers)
      for (size_t k = 0; k < reader->inputs.size(); ++k)
        if (reader->inputs[k] == z) g.set_input(reader, k, copy);
    hoist(copy->producer, first);
    count += !cast;
  }
  return count;
}

}  // namespace oxtrain::autodiff
