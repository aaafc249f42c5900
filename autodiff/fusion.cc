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


namespace {

// Takes `old`'s outputs away from it (they become the replacement's) and lets go of its inputs,
// so consumer lists show the graph without it; returns the outputs. The caller removes it.
std::vector<Value*> detach(graph::Graph& g, Node* old) {
  std::vector<Value*> outputs = old->outputs;
  for (size_t i = 0; i < old->outputs.size(); ++i) g.set_output(old, i, nullptr);
  for (size_t i = 0; i < old->inputs.size(); ++i) g.set_input(old, i, nullptr);
  return outputs;
}

// A new oxtrain node of `op` just before `anchor`, writing `outputs` (null: omitted), with
// `attrs`; its shapes inferred.
Node* insert_before(graph::Graph& g, const Node* anchor, const char* op, const std::string& name,
                    std::vector<Value*> inputs, const std::vector<Value*>& outputs,
                    std::map<std::string, graph::Attribute> attrs) {
  Node* n = g.add_node(op, std::move(inputs), {}, g.unique_name(name), graph::kOxtrainDomain);
  for (size_t i = 0; i < outputs.size(); ++i)
    if (outputs[i]) g.set_output(n, i, outputs[i]);
  n->attrs = std::move(attrs);
  infer_node(g, *n);
  g.move_before(n, anchor);
  return n;
}

// The channels-last attribute of `n`, alone.
std::map<std::string, graph::Attribute> layout_of(const Node& n) {
  std::map<std::string, graph::Attribute> a;
  if (graph::is_channels_last(n)) a[graph::kChannelsLast] = n.attrs.at(graph::kChannelsLast);
  return a;
}

}  // namespace

ConvBatchNormFusion fuse_conv_batchnorm(graph::Graph& g) {
  ConvBatchNormFusion report;
  std::vector<Node*> batchnorms;
  for (const auto& n : g.nodes())
    if (n->domain == graph::kOxtrainDomain && (n->op_type == "BatchNormReluTraining" || n->op_type == "BatchNormTraining"))
      batchnorms.push_back(n.get());
  std::set<const Node*> doomed;
  std::set<const Node*> stats_nodes;
  struct Applied {
    Node* finalize;
    Node* apply;
  };
  std::vector<Applied> applied;
  // The statistics of the batch norms fused with a ReLU and no residual: only their gradients
  // take the ReLU's mask from BN(Y) alone. (BatchNormReluGrad has no dR output also where the
  // residual takes no gradient, e.g. a graph input, so its outputs cannot tell.)
  std::set<const Node*> plain_relu;
  auto fresh = [&](const std::string& name) { return g.add_value(g.unique_name(name)); };
  for (Node* bn : batchnorms) {
    Value* y = bn->input(0);
    Node* conv = y ? y->producer : nullptr;
    if (!conv || conv->op_type != "Conv" || !conv->domain.empty() || conv->output(0) != y || conv->input(2) ||
        is_output(g, y) || conv->attr_int("group", 1) != 1 || !conv->input(0) || conv->input(0)->shape.size() != 4 ||
        !graph::shape_known(y->shape) || y->numel() == 0)
      continue;
    bool complete = true;
    for (size_t i = 1; i < 5; ++i) complete = complete && bn->input(i);
    if (!complete) continue;
    const bool relu = bn->op_type == "BatchNormReluTraining";
    const bool channels_last = graph::is_channels_last(*bn);
    const int64_t channels = channels_last ? y->shape.back() : y->shape[1];
    // The convolution, with the sums of its output.
    Value* sum = fresh(bn->name + "/sum");
    Value* sum_sq = fresh(bn->name + "/sum_sq");
    const std::vector<Value*> conv_inputs = conv->inputs;
    detach(g, conv);
    Node* stats = insert_before(g, conv, "ConvStats", conv->name + "+stats", {conv_inputs[0], conv_inputs[1]},
                                {y, sum, sum_sq}, conv->attrs);
    stats_nodes.insert(stats);
    // The batch norm's statistics from the sums, then its output from them.
    const std::vector<Value*> bn_inputs = bn->inputs;
    std::vector<Value*> outs = detach(g, bn);
    outs.resize(5, nullptr);
    if (!outs[3]) outs[3] = fresh(bn->name + "/saved_mean");
    if (!outs[4]) outs[4] = fresh(bn->name + "/saved_inv_std");
    std::map<std::string, graph::Attribute> finalize_attrs;
    for (const char* key : {"epsilon", "momentum", "unbiased_running_var"})
      if (bn->has_attr(key)) finalize_attrs[key] = bn->attrs.at(key);
    finalize_attrs["count"].value = y->numel() / channels;
    finalize_attrs["to"].value = int64_t{graph::dtype_to_onnx(y->dtype)};
    Node* finalize = insert_before(g, bn, "BatchNormFinalize", bn->name + "/finalize",
                                   {sum, sum_sq, bn_inputs[1], bn_inputs[2], bn_inputs[3], bn_inputs[4]},
                                   {outs[1], outs[2], outs[3], outs[4]}, std::move(finalize_attrs));
    std::vector<Value*> apply_inputs = {y, bn_inputs[1], bn_inputs[2], outs[3], outs[4]};
    if (relu && bn_inputs.size() > 5 && bn_inputs[5]) apply_inputs.push_back(bn_inputs[5]);
    if (relu && apply_inputs.size() == 5) plain_relu.insert(finalize);
    if (outs[0]) {
      Node* apply = insert_before(g, bn, relu ? "BatchNormReluApply" : "BatchNormApply", bn->name + "/apply",
                                  apply_inputs, {outs[0]}, layout_of(*bn));
      if (relu && apply_inputs.size() == 5) applied.push_back({finalize, apply});
    }
    doomed.insert(conv);
    doomed.insert(bn);
    ++report.statistics;
  }
  // The prologues: Z = Relu(BN(Y)) read in the forward by one ConvStats alone.
  for (const Applied& a : applied) {
    Value* z = a.apply->output(0);
    if (is_output(g, z) || z->consumers.size() != 1) continue;
    Node* next = z->consumers[0];
    if (!stats_nodes.count(next) || next->input(0) != z || next->input(2) || next->input(1) == z) continue;
    Value* y = a.apply->input(0);
    Value* mean = a.apply->input(3);
    Value* inv_std = a.apply->input(4);
    Node* finalize = a.finalize;
    Value* scale = fresh(finalize->name + "/apply_scale");
    Value* bias = fresh(finalize->name + "/apply_bias");
    g.set_output(finalize, 4, scale);
    g.set_output(finalize, 5, bias);
    infer_node(g, *finalize);
    g.set_input(next, 0, y);
    g.set_input(next, 2, scale);
    g.set_input(next, 3, bias);
    infer_node(g, *next);
    detach(g, a.apply);
    doomed.insert(a.apply);
    // Backward's copy of Z (oxtrain.BatchNormReluApply of the same Y and statistics) feeds the
    // weight gradient of `next`: that reads Y through the prologue too.
    const std::vector<Node*> readers = y->consumers;
    for (Node* r : readers) {
      if (r == a.apply || r->op_type != "BatchNormReluApply" || r->domain != graph::kOxtrainDomain || r->input(0) != y ||
          r->input(5) || r->input(3) != mean || r->input(4) != inv_std || !r->output(0))
        continue;
      const std::vector<Node*> copies = r->output(0)->consumers;
      for (Node* wgrad : copies) {
        if (wgrad->op_type != "ConvGradFilter" || wgrad->domain != graph::kOxtrainDomain ||
            wgrad->input(1) != r->output(0) || wgrad->input(0) == r->output(0) || !wgrad->output(0))
          continue;
        Value* dy = wgrad->input(0);
        const std::vector<Value*> dw = detach(g, wgrad);
        insert_before(g, wgrad, "ConvGradFilterScaleBiasRelu", wgrad->name + "+prologue", {dy, y, scale, bias}, dw,
                      wgrad->attrs);
        doomed.insert(wgrad);
      }
    }
    ++report.prologues;
  }
  // Backward: ConvGradData into a fused batch norm's gradient (no residual) becomes the data
  // gradient with the ReLU's mask and the weight gradients in one node, then batch norm's input
  // gradient in one pass; the mask comes from Y, so Z's recomputed copy is no longer read there.
  std::vector<Node*> grads;
  for (const auto& n : g.nodes())
    if (n->op_type == "BatchNormReluGrad" && n->domain == graph::kOxtrainDomain && !doomed.count(n.get()))
      grads.push_back(n.get());
  for (Node* grad : grads) {
    Value* dz = grad->input(0);
    Value* mean = grad->input(4);
    Node* dgrad = dz ? dz->producer : nullptr;
    Node* finalize = mean ? mean->producer : nullptr;
    if (!dgrad || dgrad->op_type != "ConvGradData" || dgrad->domain != graph::kOxtrainDomain || dgrad->output(0) != dz ||
        dz->consumers.size() != 1 || is_output(g, dz) || grad->output(3) || !finalize || !plain_relu.count(finalize) ||
        finalize->op_type != "BatchNormFinalize" || finalize->output(2) != mean || !grad->input(2) || !grad->input(3) ||
        !grad->input(5) || !graph::shape_known(dz->shape))
      continue;
    Value* y = grad->input(2);
    Value* scale = grad->input(3);
    Value* inv_std = grad->input(5);
    Value* beta = finalize->input(3);
    Value* dx = grad->output(0);
    Value* dscale = grad->output(1);
    Value* dbias = grad->output(2);
    if (!dx || !dscale || !dbias) continue;
    const std::vector<Value*> dgrad_inputs = dgrad->inputs;
    detach(g, dgrad);
    detach(g, grad);
    Value* ds = fresh(grad->name + "/dS");
    insert_before(g, dgrad, "ConvGradDataReluBatchNormWeight", dgrad->name + "+relu+bn",
                  {dgrad_inputs[0], dgrad_inputs[1], y, scale, beta, mean, inv_std}, {ds, dscale, dbias}, dgrad->attrs);
    insert_before(g, grad, "BatchNormGradApply", grad->name + "/apply", {ds, y, scale, mean, inv_std, dscale, dbias}, {dx},
                  layout_of(*grad));
    doomed.insert(dgrad);
    doomed.insert(grad);
    ++report.gradients;
  }
  g.remove_nodes_if([&](const Node& n) { return doomed.count(&n) != 0; });
  // What is dead now are backward's recomputations that nothing reads any more.
  auto recomputations = [&] {
    return std::count_if(g.nodes().begin(), g.nodes().end(), [](const auto& n) {
      return n->op_type == "BatchNormReluApply" || n->op_type == "BatchNormApply";
    });
  };
  const auto before = recomputations();
  g.remove_dead_nodes();
  report.recomputations_dropped = static_cast<int>(before - recomputations());
  g.prune_values();
  return report;
}

}  // namespace oxtrain::autodiff
