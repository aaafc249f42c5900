#include "autodiff/training.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>
#include <set>

#include "autodiff/fusion.h"
#include "autodiff/gradients.h"
#include "autodiff/rule_families.h"
#include "graph/ops.h"
#include "graph/passes.h"

namespace oxtrain::autodiff {

using graph::Attribute;
using graph::DType;
using graph::Role;
using graph::Shape;
using graph::Tensor;

namespace {

void ensure_opset(Graph& g, const std::string& domain, int64_t version) {
  if (g.opset(domain) == 0) g.opsets.push_back({domain, version});
}

// BatchNormalization (any opset, any mode) becomes oxtrain.BatchNormTraining with outputs
// Y, running mean, running var, saved mean, saved inverse std; the running statistics become
// state updates. PyTorch's rule applies: the running variance takes the unbiased batch
// variance (ONNX's text says the population variance).
void batchnorm_to_training(Graph& g) {
  for (const auto& node_ptr : g.nodes()) {
    Node* n = node_ptr.get();
    if (n->op_type != "BatchNormalization" || !n->domain.empty()) continue;
    if (g.opset() <= 8 && n->attr_int("spatial", 1) == 0)
      throw Error(n->describe() + ": spatial=0 cannot be trained");
    Value* x = n->input(0);
    Value* mean = n->input(3);
    Value* var = n->input(4);
    // Opsets 9-13 name outputs 3/4 "saved mean/var"; our output 4 is the inverse std, so
    // old saved outputs must not be consumed by anything else.
    for (size_t i = 3; i < n->outputs.size(); ++i)
      if (n->outputs[i] && !n->outputs[i]->consumers.empty())
        throw Error(n->describe() + ": its saved statistics output '" + n->outputs[i]->name +
                    "' is used by other nodes; oxtrain cannot train this form");
    std::vector<Value*> outs(5, nullptr);
    outs[0] = n->output(0);
    const char* suffix[] = {"", "running_mean_new", "running_var_new", "saved_mean",
                            "saved_inv_std"};
    for (size_t i = 1; i < 5; ++i) {
      Value* old = i < 3 ? n->output(i) : nullptr;
      outs[i] = old ? old : g.add_value(g.unique_name(n->name + "/" + suffix[i]));
    }
    for (size_t i = 0; i < n->outputs.size(); ++i) g.set_output(n, i, nullptr);
    n->outputs.clear();
    for (size_t i = 0; i < 5; ++i) g.set_output(n, i, outs[i]);
    n->op_type = "BatchNormTraining";
    n->domain = graph::kOxtrainDomain;
    float eps = n->attr_float("epsilon", 1e-5f), momentum = n->attr_float("momentum", 0.9f);
    n->attrs.clear();
    n->attrs["epsilon"].value = eps;
    n->attrs["momentum"].value = momentum;
    infer_node(g, *n);
    if (mean->has_data() && var->has_data()) {
      mean->role = var->role = Role::State;
      g.updates.push_back({mean, outs[1]});
      g.updates.push_back({var, outs[2]});
    }
    (void)x;
  }
}

// MaxPool keeps the argmax positions (its optional Indices output) for the gradient.
void maxpool_indices(Graph& g) {
  for (const auto& node_ptr : g.nodes()) {
    Node* n = node_ptr.get();
    if (n->op_type != "MaxPool" || !n->domain.empty() || n->output(1)) continue;
    // A 2-D one's gradient reads X instead (autodiff/rules.cc).
    const Value* x = n->input(0);
    if (x && x->rank_known && x->shape.size() == 4) continue;
    g.set_output(n, 1, g.add_value(g.unique_name(n->name + "/indices")));
    infer_node(g, *n);
  }
}

struct LossInfo {
  Value* loss;
  Value* labels;
};

LossInfo append_loss(Graph& g, const TrainingOptions& options) {
  if (!options.loss_output.empty()) {
    Value* loss = g.find_value(options.loss_output);
    if (!loss) throw Error("the loss '" + options.loss_output + "' is not a value of the graph");
    if (!graph::is_float(loss->dtype) || loss->numel() != 1)
      throw Error("the loss '" + loss->name + "' must be a float scalar, got " +
                  graph::dtype_name(loss->dtype) + " " + loss->shape_string());
    return {loss, nullptr};
  }
  Value* logits = g.outputs.at(0);
  if (!graph::is_float(logits->dtype))
    throw Error("model output '" + logits->name + "' is " + graph::dtype_name(logits->dtype) +
                ", not float: oxtrain trains models whose output is float logits");
  if (logits->shape.size() != 2)
    throw Error("model output '" + logits->name + "' has shape " + logits->shape_string() +
                "; a classifier's logits are [batch, classes]");
  Value* labels = g.add_value(g.unique_name("labels"), DType::i64, {logits->shape[0]}, Role::Input);
  labels->rank_known = true;
  if (!logits->dim_names.empty()) labels->dim_names = {logits->dim_names[0]};
  g.inputs.push_back(labels);
  Value* loss = g.add_value(g.unique_name("loss"));
  Value* log_prob = g.add_value(g.unique_name("log_prob"));
  Node* n = g.add_node("SoftmaxCrossEntropyLoss", {logits, labels}, {loss, log_prob}, "loss");
  n->attrs["reduction"].value = std::string("mean");
  infer_node(g, *n);
  return {loss, labels};
}

std::set<const Value*> values_requiring_grad(const Graph& g, const Value* loss,
                                             const std::set<const Value*>& sources) {
  // Forward reachability from the sources, through differentiable input slots.
  std::set<const Value*> forward(sources.begin(), sources.end());
  for (const auto& n : g.nodes()) {
    const graph::OpFacts facts = graph::node_facts(*n);
    bool reached = false;
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      if (!n->inputs[i] || !forward.count(n->inputs[i])) continue;
      if (!facts.trainable(i)) continue;
      reached = true;
    }
    if (reached)
      for (const Value* o : n->outputs)
        if (o) forward.insert(o);
  }
  // Reverse reachability from the loss.
  std::set<const Value*> backward{loss};
  for (auto it = g.nodes().rbegin(); it != g.nodes().rend(); ++it) {
    const Node& n = **it;
    bool reaches = std::any_of(n.outputs.begin(), n.outputs.end(),
                               [&](const Value* o) { return o && backward.count(o); });
    if (reaches)
      for (const Value* in : n.inputs)
        if (in) backward.insert(in);
  }
  std::set<const Value*> both;
  for (const Value* v : forward)
    if (backward.count(v)) both.insert(v);
  return both;
}

}  // namespace

std::vector<std::vector<size_t>> plan_buckets(const std::vector<int64_t>& bytes, int64_t bucket_bytes,
                                              int64_t last_bucket_bytes) {
  std::vector<std::vector<size_t>> buckets;
  if (bytes.empty()) return buckets;
  // The tail: the last gradients (at least one) up to last_bucket_bytes.
  size_t tail = bytes.size() - 1;
  int64_t tail_bytes = bytes[tail];
  while (tail > 0 && tail_bytes + bytes[tail - 1] <= last_bucket_bytes) tail_bytes += bytes[--tail];
  std::vector<size_t> current;
  int64_t current_bytes = 0;
  for (size_t i = 0; i < tail; ++i) {
    current.push_back(i);
    current_bytes += bytes[i];
    if (current_bytes >= bucket_bytes) {
      buckets.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
  }
  if (!current.empty()) buckets.push_back(std::move(current));
  std::vector<size_t> last;
  for (size_t i = tail; i < bytes.size(); ++i) last.push_back(i);
  buckets.push_back(std::move(last));
  return buckets;
}

namespace {

// One AllReduce per bucket of `grads` (backward order), each moved right after the producer of
// its bucket's last gradient; returns the reduced gradients, in the same order.
std::vector<Value*> insert_allreduce(Graph& g, const std::vector<Value*>& grads, const TrainingOptions& options,
                                     TrainingGraph& result) {
  if (options.bucket_bytes < 1 || options.last_bucket_bytes < 0)
    throw Error("bucket sizes must be positive: bucket " + std::to_string(options.bucket_bytes) + " bytes, last " +
                std::to_string(options.last_bucket_bytes));
  // A gradient value two parameters share (Add(x, y) passes dY to both) is reduced once:
  // twice would sum a sum.
  std::vector<Value*> distinct;
  std::unordered_map<const Value*, size_t> slot;
  for (Value* v : grads)
    if (slot.emplace(v, distinct.size()).second) distinct.push_back(v);
  std::vector<int64_t> bytes;
  for (const Value* v : distinct) bytes.push_back(v->bytes());
  std::unordered_map<const Node*, size_t> position;
  for (size_t i = 0; i < g.nodes().size(); ++i) position[g.nodes()[i].get()] = i;
  std::vector<Value*> reduced_distinct(distinct.size(), nullptr);
  int index = 0;
  for (const auto& bucket : plan_buckets(bytes, options.bucket_bytes, options.last_bucket_bytes)) {
    std::vector<Value*> ins, outs;
    std::vector<std::string> names;
    const Node* last = nullptr;
    for (size_t k : bucket) {
      Value* grad = distinct[k];
      ins.push_back(grad);
      names.push_back(grad->name);
      outs.push_back(g.add_value(g.unique_name("allreduce/" + grad->name)));
      if (grad->producer && (!last || position.at(grad->producer) > position.at(last))) last = grad->producer;
    }
    std::string name = g.unique_name("allreduce/bucket" + std::to_string(index++));
    Node* n = g.add_node("AllReduce", ins, outs, name, graph::kOxtrainDomain);
    n->attrs["average"].value = int64_t{1};
    infer_node(g, *n);
    if (last) g.move_after(n, last);
    for (size_t j = 0; j < bucket.size(); ++j) reduced_distinct[bucket[j]] = outs[j];
    result.allreduce_nodes.push_back(name);
    result.buckets.push_back(std::move(names));
  }
  std::vector<Value*> reduced;
  for (const Value* v : grads) reduced.push_back(reduced_distinct[slot.at(v)]);
  return reduced;
}

}  // namespace

TrainingGraph build_training_graph(Graph g, const TrainingOptions& options) {
  if (g.outputs.empty()) throw Error("the model has no outputs");
  ensure_opset(g, graph::kOxtrainDomain, 1);
  // Layer norm written out in pointwise ops trains as one node (the model as imported keeps
  // the form its file has, for evaluation and --save-model).
  graph::fuse_decomposed_layer_norm(g);
  if (options.half != DType::undefined) graph::to_mixed_precision(g, options.half);
  batchnorm_to_training(g);
  maxpool_indices(g);
  if (options.fuse_batchnorm_relu) fuse_batchnorm_relu(g);
  TrainingGraph result;
  result.logits = g.outputs[0]->name;
  LossInfo loss = append_loss(g, options);
  result.loss = loss.loss->name;
  result.labels = loss.labels ? loss.labels->name : "";
  // Random nodes read the step (autodiff/rules_random.cc); the optimizer reads it too.
  Value* step = nullptr;
  auto make_step = [&] {
    if (!step) {
      step = g.add_value(g.unique_name("step"), DType::i64, {}, Role::Input);
      step->rank_known = true;
    }
    return step;
  };
  detail::random_to_training(g, options.random_seed, make_step);
  size_t forward_count = g.nodes().size();

  // What gradients flow from: parameters, plus values the caller asks for.
  std::set<const Value*> sources;
  std::vector<Value*> targets;  // in declaration order
  for (Value* v : g.initializers())
    if (v->role == Role::Parameter && !v->consumers.empty()) {
      sources.insert(v);
      targets.push_back(v);
    }
  for (const auto& name : options.wrt) {
    Value* v = g.find_value(name);
    if (!v) throw Error("cannot differentiate with respect to '" + name + "': no such value");
    if (!graph::is_float(v->dtype))
      throw Error("cannot differentiate with respect to '" + name + "': it is " +
                  graph::dtype_name(v->dtype));
    if (sources.insert(v).second) targets.push_back(v);
  }
  if (sources.empty())
    throw Error("the model has no parameters to train (no float initializer feeds a "
                "trainable input)");
  std::set<const Value*> requires_grad = values_requiring_grad(g, loss.loss, sources);
  if (!requires_grad.count(loss.loss))
    throw Error("the loss '" + loss.loss->name + "' does not depend on any parameter");

  // Every node that needs a gradient rule must have one: list all missing at once.
  std::map<std::string, std::vector<std::string>> missing;
  for (size_t i = 0; i < forward_count; ++i) {
    const Node& n = *g.nodes()[i];
    bool needed = std::any_of(n.outputs.begin(), n.outputs.end(),
                              [&](const Value* o) { return o && requires_grad.count(o); });
    if (needed && !find_grad_rule(n.domain, n.op_type))
      missing[n.domain.empty() ? n.op_type : n.domain + "." + n.op_type].push_back(n.name);
  }
  if (!missing.empty()) {
    std::string msg = "no gradient rule for:";
    for (const auto& [op, names] : missing) {
      msg += " " + op + " (";
      for (size_t i = 0; i < names.size(); ++i) msg += (i ? ", '" : "'") + names[i] + "'";
      msg += ")";
    }
    throw Error(msg);
  }

  // Reverse sweep. Contributions per value; a value's gradient is final once every consumer
  // that passes it one has been processed.
  std::map<const Value*, std::vector<Value*>> contributions;
  std::map<const Value*, int> pending;  // consumer slots still to contribute
  for (size_t i = 0; i < forward_count; ++i) {
    const Node& n = *g.nodes()[i];
    const graph::OpFacts facts = graph::node_facts(n);
    bool active = std::any_of(n.outputs.begin(), n.outputs.end(),
                              [&](const Value* o) { return o && requires_grad.count(o); });
    if (!active) continue;
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      const Value* in = n.inputs[k];
      if (in && requires_grad.count(in) && facts.trainable(k)) ++pending[in];
    }
  }
  // Backward starts from 1, or from the loss scale (a state the step updates) with fp16.
  const bool scaled = options.half == DType::f16 && options.optimizer;
  if (scaled && loss.loss->dtype != DType::f32)
    throw Error("loss scaling needs a float32 loss; '" + loss.loss->name + "' is " + graph::dtype_name(loss.loss->dtype));
  if (scaled && !(options.initial_loss_scale > 0.0f && std::isfinite(options.initial_loss_scale)))
    throw Error("the initial loss scale must be positive and finite, got " + std::to_string(options.initial_loss_scale));
  Value* seed = g.add_initializer(g.unique_name(scaled ? "loss_scale" : "loss/grad_seed"),
                                  [&] {
                                    Tensor t(loss.loss->dtype, loss.loss->shape);
                                    if (t.dtype == DType::f64) t.data<double>()[0] = 1.0;
                                    else t.data<float>()[0] = scaled ? options.initial_loss_scale : 1.0f;
                                    return t;
                                  }(),
                                  scaled ? Role::State : Role::Constant);
  contributions[loss.loss].push_back(seed);

  std::map<const Value*, Value*> final_grad;
  std::vector<Value*> finished_targets;
  auto finalize = [&](const Value* v) -> Value* {
    auto it = final_grad.find(v);
    if (it != final_grad.end()) return it->second;
    auto& parts = contributions[v];
    if (parts.empty()) return final_grad[v] = nullptr;
    Value* total = parts[0];
    if (parts.size() > 1) {
      total = g.add_value(g.unique_name(v->name + "/grad_sum"));
      Node* s = g.add_node("Sum", parts, {total}, g.unique_name(v->name + "/grad_sum"));
      infer_node(g, *s);
    }
    final_grad[v] = total;
    if (sources.count(v)) finished_targets.push_back(const_cast<Value*>(v));
    return total;
  };

  for (size_t idx = forward_count; idx-- > 0;) {
    Node& n = *g.nodes()[idx];
    const GradRuleInfo* info = find_grad_rule(n.domain, n.op_type);
    if (!info) continue;
    std::vector<Value*> output_grads;
    bool any_output_grad = false;
    for (const Value* o : n.outputs) {
      Value* d = o && requires_grad.count(o) ? finalize(o) : nullptr;
      output_grads.push_back(d);
      any_output_grad |= d != nullptr;
    }
    if (!any_output_grad) continue;
    const graph::OpFacts facts = graph::node_facts(n);
    std::vector<bool> needs(n.inputs.size(), false);
    bool any_needed = false;
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      needs[k] = n.inputs[k] && requires_grad.count(n.inputs[k]) && facts.trainable(k);
      any_needed |= needs[k];
    }
    if (!any_needed) continue;
    // Rules read dY(0) as the main gradient: give them a zero-free path only when it exists.
    if (!output_grads[0] && !info->any_output)
      throw Error(n.describe() + ": only its secondary outputs carry a gradient; not supported");
    GradContext ctx(g, n, output_grads, needs);
    std::vector<Value*> grads = info->rule(ctx);
    grads.resize(n.inputs.size(), nullptr);
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      if (!needs[k]) continue;
      Value* in = n.inputs[k];
      Value* d = grads[k];
      if (!d)
        throw Error("gradient rule of " + n.describe() + " gave no gradient for input " +
                    std::to_string(k) + " '" + in->name + "'");
      if (d->shape != in->shape || d->dtype != in->dtype)
        throw Error("gradient rule of " + n.describe() + " gave " + graph::dtype_name(d->dtype) +
                    " " + d->shape_string() + " for input '" + in->name + "' of " +
                    graph::dtype_name(in->dtype) + " " + in->shape_string());
      contributions[in].push_back(d);
      if (--pending[in] == 0 && sources.count(in)) finalize(in);
    }
  }
  for (Value* t : targets) finalize(t);  // targets whose consumers all had no gradient
  if (options.fuse_batchnorm_relu && options.recompute_batchnorm_relu)
    result.recomputed_values = recompute_batchnorm_relu(g, forward_count);
  result.forward_nodes = static_cast<int64_t>(forward_count);
  result.backward_nodes = static_cast<int64_t>(g.nodes().size() - forward_count);

  // Name the final gradients "grad/<value>" (a Sum or the last rule output); a gradient
  // shared by several values keeps the first name.
  std::set<const Value*> renamed;
  for (Value* t : finished_targets) {
    Value* d = final_grad[t];
    if (!d) continue;
    std::string name = "grad/" + t->name;
    if (d->producer && !renamed.count(d) && !g.find_value(name) && d->consumers.empty() &&
        std::find(g.outputs.begin(), g.outputs.end(), d) == g.outputs.end()) {
      // Rename by replacing with a fresh value of the right name (names are map keys).
      Value* named = g.add_value(name, d->dtype, d->shape);
      named->rank_known = true;
      Node* producer = d->producer;
      for (size_t i = 0; i < producer->outputs.size(); ++i)
        if (producer->outputs[i] == d) g.set_output(producer, i, named);
      // Other targets with the very same gradient (Add(x, y) passes dY to both) follow.
      for (auto& [value, grad] : final_grad)
        if (grad == d) grad = named;
      renamed.insert(named);
    }
    result.gradients.push_back({t->name, final_grad[t]->name});
  }

  std::vector<Value*> new_outputs = {loss.loss, g.value(result.logits)};
  if (options.expose_gradients)
    for (const auto& [v, d] : result.gradients) new_outputs.push_back(g.value(d));

  if (options.optimizer) {
    ensure_opset(g, graph::kTrainingDomain, 1);
    Value* lr = g.add_value(g.unique_name("learning_rate"), DType::f32, {}, Role::Input);
    lr->rank_known = true;
    make_step();
    g.inputs.push_back(lr);
    g.inputs.push_back(step);
    result.learning_rate = lr->name;
    result.step = step->name;
    std::vector<Value*> xs, gs, vs, xs_new, vs_new;
    for (const auto& [name, grad_name] : result.gradients) {
      Value* x = g.value(name);
      if (x->role != Role::Parameter) continue;
      Tensor zeros(x->dtype, x->shape);
      Value* v = g.add_initializer(g.unique_name("momentum/" + name), std::move(zeros), Role::State);
      xs.push_back(x);
      gs.push_back(g.value(grad_name));
      vs.push_back(v);
      xs_new.push_back(g.add_value(g.unique_name("update/" + name)));
      vs_new.push_back(g.add_value(g.unique_name("update/momentum/" + name)));
    }
    if (options.allreduce) gs = insert_allreduce(g, gs, options, result);
    std::vector<Value*> inputs = {lr, step};
    Value* found_inf = nullptr;
    if (scaled) {
      found_inf = g.add_value(g.unique_name("loss_scale/found_inf"));
      infer_node(g, *g.add_node("NonFinite", gs, {found_inf}, g.unique_name("loss_scale/check"),
                                graph::kOxtrainDomain));
      inputs.push_back(found_inf);
      inputs.push_back(seed);
    }
    inputs.insert(inputs.end(), xs.begin(), xs.end());
    inputs.insert(inputs.end(), gs.begin(), gs.end());
    inputs.insert(inputs.end(), vs.begin(), vs.end());
    std::vector<Value*> outputs = xs_new;
    outputs.insert(outputs.end(), vs_new.begin(), vs_new.end());
    Node* m = scaled ? g.add_node("ScaledMomentum", inputs, outputs, "optimizer", graph::kOxtrainDomain)
                     : g.add_node("Momentum", inputs, outputs, "optimizer", graph::kTrainingDomain);
    m->attrs["alpha"].value = static_cast<float>(options.momentum);
    m->attrs["beta"].value = 1.0f;
    m->attrs["norm_coefficient"].value = static_cast<float>(options.weight_decay);
    m->attrs["mode"].value = std::string(options.nesterov ? "nesterov" : "standard");
    infer_node(g, *m);
    for (size_t i = 0; i < xs.size(); ++i) {
      g.updates.push_back({xs[i], xs_new[i]});
      g.updates.push_back({vs[i], vs_new[i]});
    }
    result.optimizer_nodes = 1;
    if (scaled) {
      Tensor zero(DType::i64, {});
      Value* good = g.add_initializer(g.unique_name("loss_scale/good_steps"), std::move(zero), Role::State);
      Value* scale_new = g.add_value(g.unique_name("update/loss_scale"));
      Value* good_new = g.add_value(g.unique_name("update/loss_scale/good_steps"));
      Node* u = g.add_node("LossScaleUpdate", {seed, good, found_inf}, {scale_new, good_new},
                           g.unique_name("loss_scale/update"), graph::kOxtrainDomain);
      u->attrs["growth_factor"].value = options.loss_scale_growth;
      u->attrs["backoff_factor"].value = options.loss_scale_backoff;
      u->attrs["growth_interval"].value = options.loss_scale_interval;
      infer_node(g, *u);
      g.updates.push_back({seed, scale_new});
      g.updates.push_back({good, good_new});
      result.loss_scale = seed->name;
      result.good_steps = good->name;
      result.found_inf = found_inf->name;
      result.optimizer_nodes = 3;
    }
  } else if (step) {
    g.inputs.push_back(step);
    result.step = step->name;
  }
  g.outputs = new_outputs;
  // The training graph is specialised to the batch it was built for (gradient reshapes hold
  // the batch as constants), so its inputs and outputs carry fixed sizes.
  for (Value* v : g.inputs) v->dim_names.clear();
  for (Value* v : g.outputs) v->dim_names.clear();
  // Values nobody reads (e.g. BN saved stats of frozen branches) stay; dead nodes go.
  g.remove_dead_nodes();
  g.prune_values();
  if (options.channels_last) {
    std::set<std::string> gradients;  // stay channels-first: the gradient arena, momentum, allreduce
    for (const auto& [value, grad] : result.gradients) gradients.insert(grad);
    result.channels_last = graph::to_channels_last(g, gradients);
  }
  if (options.fuse_cast_transpose) result.cast_transposes = graph::fuse_cast_transpose(g);
  if (options.fuse_conv_batchnorm) {
    const int64_t nodes_before = static_cast<int64_t>(g.nodes().size());
    const ConvBatchNormFusion fused = fuse_conv_batchnorm(g);
    result.recomputed_values -= fused.recomputations_dropped;
    // Forward: each batch norm became a finalize and an apply, each prologue took an apply away.
    const int64_t forward_change = fused.statistics - fused.prologues;
    result.forward_nodes += forward_change;
    result.backward_nodes += static_cast<int64_t>(g.nodes().size()) - nodes_before - forward_change;
    result.conv_statistics = fused.statistics;
    result.conv_prologues = fused.prologues;
    result.conv_gradients = fused.gradients;
  }
  result.graph = std::move(g);
  return result;
}

}  // namespace oxtrain::autodiff
