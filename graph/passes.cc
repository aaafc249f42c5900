#include "graph/passes.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include <functional>
#include <map>
#include <optional>
#include <set>

#include "base/checked.h"
#include "base/half.h"
#include "base/files.h"
#include "graph/onnx_io.h"
#include "graph/ops.h"

namespace oxtrain::graph {

namespace {

bool is_half(DType dt) { return dt == DType::f16 || dt == DType::bf16; }

// Between any two float types; to a half type with round to nearest even.
Tensor convert(const Tensor& t, DType to) {
  Tensor out(to, t.shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double v = 0;
    switch (t.dtype) {
      case DType::f64: v = t.data<double>()[i]; break;
      case DType::f32: v = t.data<float>()[i]; break;
      case DType::f16: v = fp16_to_float(t.data<uint16_t>()[i]); break;
      case DType::bf16: v = bf16_to_float(t.data<uint16_t>()[i]); break;
      default: throw Error(std::string("cannot convert a ") + dtype_name(t.dtype) + " tensor to " + dtype_name(to));
    }
    switch (to) {
      case DType::f64: out.data<double>()[i] = v; break;
      case DType::f32: out.data<float>()[i] = static_cast<float>(v); break;
      case DType::f16: out.data<uint16_t>()[i] = float_to_fp16(static_cast<float>(v)); break;
      case DType::bf16: out.data<uint16_t>()[i] = float_to_bf16(static_cast<float>(v)); break;
      default: throw Error(std::string("cannot convert a ") + dtype_name(t.dtype) + " tensor to " + dtype_name(to));
    }
  }
  return out;
}

}  // namespace

void to_mixed_precision(Graph& g, DType half) {
  if (!is_half(half)) throw Error(std::string("mixed precision computes in float16 or bfloat16, not ") + dtype_name(half));
  const char* suffix = half == DType::f16 ? "fp16" : "bf16";
  // One cast per value and type, made where the value is first needed in it.
  std::map<std::pair<Value*, DType>, Value*> casts;
  // `before`: the node that first needs the cast (null: the end of the graph).
  auto cast = [&](Value* v, DType to, const Node* before) -> Value* {
    Value*& c = casts[{v, to}];
    if (c) return c;
    const std::string name = g.unique_name(v->name + "/" + (to == DType::f32 ? "fp32" : suffix));
    if (v->has_data() && v->role == Role::Constant) {
      c = g.add_initializer(name, convert(*v->data, to), Role::Constant);
      c->rank_known = true;
      return c;
    }
    c = g.add_value(name);
    Node* n = g.add_node("Cast", {v}, {c}, name);
    n->attrs["to"].value = static_cast<int64_t>(dtype_to_onnx(to));
    find_schema("", "Cast")->infer(*n, InferContext{g, g.opset()});
    if (before) g.move_before(n, before);
    return c;
  };
  std::vector<Node*> order;
  for (const auto& n : g.nodes()) order.push_back(n.get());
  for (Node* n : order) {
    const OpSchema* schema = find_schema(n->domain, n->op_type);
    if (!schema) throw Error(n->describe() + ": no schema; mixed precision cannot place it");
    const HalfPolicy& policy = schema->half;
    std::vector<bool> capable(n->inputs.size(), policy.mode != HalfMode::fp32 && policy.inputs.empty());
    for (size_t i : policy.inputs)
      if (i < capable.size()) capable[i] = true;
    for (size_t i = 0; i < n->inputs.size(); ++i)
      capable[i] = capable[i] && n->inputs[i] && is_float(n->inputs[i]->dtype);
    bool in_half = policy.mode == HalfMode::compute;
    for (size_t i = 0; i < n->inputs.size() && policy.mode == HalfMode::follow; ++i)
      in_half = in_half || (capable[i] && is_half(n->inputs[i]->dtype));
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      Value* v = n->inputs[i];
      if (!v || !is_float(v->dtype)) continue;
      // Into half where the op computes in it; half values back to float32 elsewhere (other
      // float types, a float64 input, stay as they are).
      const DType want = in_half && capable[i] ? half : is_half(v->dtype) ? DType::f32 : v->dtype;
      if (v->dtype != want) g.set_input(n, i, cast(v, want, n));
    }
    schema->infer(*n, InferContext{g, g.opset(n->domain)});
  }
  // The model's outputs (logits) leave in float32, for the loss.
  for (Value*& out : g.outputs)
    if (is_half(out->dtype)) out = cast(out, DType::f32, nullptr);
  // Images normalised in the graph (normalize_images_input) come out in half directly: the
  // cast after NormalizeImages folds into it.
  std::set<const Node*> folded;
  for (const auto& node : g.nodes()) {
    Node* n = node.get();
    Value* y = n->op_type == "NormalizeImages" && n->domain == kOxtrainDomain ? n->output(0) : nullptr;
    if (!y || y->consumers.size() != 1 || std::find(g.outputs.begin(), g.outputs.end(), y) != g.outputs.end()) continue;
    Node* c = y->consumers[0];
    if (c->op_type != "Cast" || !c->domain.empty() || !is_half(c->output(0)->dtype)) continue;
    Value* half_images = c->output(0);
    g.set_output(c, 0, nullptr);
    g.set_output(n, 0, half_images);
    n->attrs["to"].value = int64_t{dtype_to_onnx(half_images->dtype)};
    find_schema(n->domain, n->op_type)->infer(*n, InferContext{g, g.opset(n->domain)});
    folded.insert(c);
  }
  if (!folded.empty()) {
    g.remove_nodes_if([&](const Node& n) { return folded.count(&n) != 0; });
    g.prune_values();
  }
}

namespace {

bool channels_last_candidate(const Value* v) {
  return v && v->role == Role::Activation && v->shape.size() == 4 && shape_known(v->shape) && is_float(v->dtype);
}

bool listed(const std::vector<size_t>& list, size_t i) { return std::find(list.begin(), list.end(), i) != list.end(); }

}  // namespace

ChannelsLastReport to_channels_last(Graph& g, const std::set<std::string>& keep_channels_first) {
  auto schema_of = [](const Node& n) { return find_schema(n.domain, n.op_type); };
  // A rank-4 float value a channels-last slot reads or writes (activations, also weights).
  auto slot_value = [](const Value* v) { return v && v->shape.size() == 4 && shape_known(v->shape) && is_float(v->dtype); };
  // Groups of values joined by agnostic (element-wise) nodes share one layout.
  std::map<const Value*, const Value*> parent;
  std::function<const Value*(const Value*)> root = [&](const Value* v) -> const Value* {
    auto it = parent.find(v);
    if (it == parent.end() || it->second == v) return v;
    return it->second = root(it->second);
  };
  // An agnostic node joins its values when they are all candidates of one shape.
  auto joins = [&](const Node& n) {
    const OpSchema* s = schema_of(n);
    if (!s || !s->layout.agnostic) return false;
    const Value* first = nullptr;
    for (const auto* list : {&n.inputs, &n.outputs})
      for (const Value* v : *list) {
        if (!v) continue;
        if (!channels_last_candidate(v) || (first && v->shape != first->shape)) return false;
        first = first ? first : v;
      }
    return first != nullptr;
  };
  for (const auto& n : g.nodes())
    if (joins(*n)) {
      const Value* first = nullptr;
      for (const auto* list : {&n->inputs, &n->outputs})
        for (const Value* v : *list)
          if (v) {
            if (first) parent[root(v)] = root(first);
            first = first ? first : v;
          }
    }
  // Every node with a channels-last form that touches an activation in its slots goes
  // channels-last.
  auto node_last = [&](const Node& n) {
    const OpSchema* s = schema_of(n);
    if (!s || !s->layout.channels_last_form()) return false;
    for (size_t i : s->layout.inputs)
      if (channels_last_candidate(n.input(i))) return true;
    for (size_t i : s->layout.outputs)
      if (channels_last_candidate(n.output(i))) return true;
    return false;
  };
  auto output_slot = [&](const Node& n, size_t i) {
    const OpSchema* s = schema_of(n);
    return s && listed(s->layout.outputs, i) && node_last(n);
  };
  // A group is stored channels-last when some member comes from a channels-last node, every
  // member comes from one or from a joining node, and none must stay channels-first (a graph
  // output, a value the caller keeps, e.g. a parameter's gradient).
  std::map<const Value*, std::vector<const Value*>> members;
  for (const Value* v : g.values_in_order())
    if (channels_last_candidate(v)) members[root(v)].push_back(v);
  std::set<const Value*> last_groups;
  for (const auto& [r, vs] : members) {
    bool ok = true, from_slot = false;
    for (const Value* v : vs) {
      ok = ok && v->producer && !keep_channels_first.count(v->name) &&
           std::find(g.outputs.begin(), g.outputs.end(), v) == g.outputs.end();
      if (!ok) break;
      const Node& p = *v->producer;
      size_t slot = 0;
      while (p.output(slot) != v) ++slot;
      const bool written_last = output_slot(p, slot);
      from_slot |= written_last;
      ok = joins(p) || written_last;
    }
    if (ok && from_slot) last_groups.insert(r);
  }
  auto is_last = [&](const Value* v) { return channels_last_candidate(v) && last_groups.count(root(v)); };

  ChannelsLastReport report;
  std::vector<Node*> nodes;
  for (const auto& n : g.nodes()) nodes.push_back(n.get());
  std::vector<Node*> last_nodes;
  for (Node* n : nodes)
    if (node_last(*n)) last_nodes.push_back(n);
  for (const Value* r : last_groups)
    for (const Value* v : members.at(r)) {
      const_cast<Value*>(v)->shape = to_channels_last_shape(v->shape);
      ++report.values;
    }
  // The borders: a Transpose for each value read in the other layout (one per value and way),
  // and one after a channels-last node for each output slot whose value stays channels-first.
  auto transpose = [&](Value* from, Value* to, bool to_last) {
    Node* t = g.add_node("Transpose", {from}, {to}, g.unique_name(to->name));
    t->attrs["perm"].value = to_last ? std::vector<int64_t>{0, 2, 3, 1} : std::vector<int64_t>{0, 3, 1, 2};
    ++report.transposes;
    return t;
  };
  auto fresh = [&](const Value* like, bool to_last) {
    const std::string suffix = to_last ? "/channels_last" : "/channels_first";
    Value* v = g.add_value(g.unique_name(like->name + suffix), like->dtype,
                           to_last ? to_channels_last_shape(like->shape) : to_channels_first_shape(like->shape));
    v->rank_known = true;
    return v;
  };
  std::map<std::pair<const Value*, bool>, Value*> converted;
  // A produced value is converted once, right after its producer; a graph input or parameter
  // (alive all step) before each reader, so no copy of it outlives its use.
  auto convert = [&](Value* v, bool to_last, Node* reader) {
    auto key = std::make_pair(static_cast<const Value*>(v), to_last);
    if (auto it = converted.find(key); v->producer && it != converted.end()) return it->second;
    Value* out = fresh(v, to_last);
    Node* t = transpose(v, out, to_last);
    if (v->producer) g.move_after(t, v->producer);
    else g.move_before(t, reader);
    return converted[key] = out;
  };
  std::set<const Node*> last_set(last_nodes.begin(), last_nodes.end());
  for (Node* n : last_nodes) {
    n->attrs[kChannelsLast].value = int64_t{1};
    ++report.nodes;
    for (size_t i : schema_of(*n)->layout.outputs) {
      Value* v = n->output(i);
      if (!slot_value(v) || is_last(v)) continue;
      Value* temp = fresh(v, true);
      g.set_output(n, i, temp);
      g.move_after(transpose(temp, v, false), n);
    }
  }
  for (Node* n : nodes) {
    const OpSchema* s = schema_of(*n);
    const bool last = last_set.count(n) != 0;
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      Value* v = n->inputs[i];
      // Graph inputs, parameters and other channels-first values are converted for a slot.
      if (!slot_value(v)) continue;
      const bool wants_last = last ? listed(s->layout.inputs, i) : joins(*n) && is_last(v);
      if (wants_last != is_last(v)) g.set_input(n, i, convert(v, wants_last, n));
    }
  }
  // Every node again in schedule order: shapes follow the layouts and the attributes.
  for (const auto& n : g.nodes())
    if (const OpSchema* s = schema_of(*n); s && s->infer) s->infer(*n, InferContext{g, g.opset(n->domain)});
  return report;
}

int fuse_cast_transpose(Graph& g) {
  auto core = [](const Node* n, const char* op) {
    return n && (n->domain.empty() || n->domain == "ai.onnx") && n->op_type == op && n->inputs.size() == 1 &&
           n->outputs.size() == 1 && n->input(0) && n->output(0);
  };
  auto castable = [](DType t) { return t == DType::f32 || is_half(t); };
  auto plain_cast = [&](const Node* n) {
    return core(n, "Cast") && castable(n->input(0)->dtype) && castable(n->output(0)->dtype);
  };
  // The value between the two: read by the second node only, not a graph output.
  auto private_link = [&](const Value* v) {
    return v->consumers.size() == 1 && std::find(g.outputs.begin(), g.outputs.end(), v) == g.outputs.end();
  };
  std::vector<Node*> order;
  for (const auto& n : g.nodes()) order.push_back(n.get());
  std::set<const Node*> doomed;
  int fused = 0;
  for (Node* t : order) {
    if (!core(t, "Transpose") || doomed.count(t)) continue;
    Node* first = nullptr;
    Node* second = nullptr;
    if (Node* c = t->input(0)->producer; plain_cast(c) && !doomed.count(c) && private_link(t->input(0))) {
      first = c, second = t;
    } else if (Node* r = private_link(t->output(0)) ? t->output(0)->consumers[0] : nullptr;
               plain_cast(r) && !doomed.count(r)) {
      first = t, second = r;
    } else {
      continue;
    }
    Value* source = first->input(0);
    Value* result = second->output(0);
    g.set_output(second, 0, nullptr);
    Node* f = g.add_node("CastTranspose", {source}, {}, g.unique_name(result->name), kOxtrainDomain);
    g.set_output(f, 0, result);
    if (t->has_attr("perm")) f->attrs["perm"] = t->attrs.at("perm");  // absent: reversed, as Transpose
    f->attrs["to"].value = int64_t{dtype_to_onnx(result->dtype)};
    g.move_before(f, second);
    doomed.insert(first);
    doomed.insert(second);
    ++fused;
  }
  if (fused == 0) return 0;
  g.remove_nodes_if([&](const Node& n) { return doomed.count(&n) != 0; });
  g.prune_values();
  if (g.opset(kOxtrainDomain) == 0) g.opsets.push_back({kOxtrainDomain, 1});
  for (const auto& n : g.nodes())
    if (n->op_type == "CastTranspose" && n->domain == kOxtrainDomain)
      find_schema(kOxtrainDomain, "CastTranspose")->infer(*n, InferContext{g, g.opset(kOxtrainDomain)});
  return fused;
}

std::string normalize_images_input(Graph& g, const std::vector<float>& mean, const std::vector<float>& std) {
  if (g.inputs.empty()) throw Error("the model has no inputs to feed images to");
  Value* x = g.inputs[0];
  if (x->dtype != DType::f32 || x->shape.size() != 4 || !shape_known(x->shape))
    throw Error("model input '" + x->name + "' is " + dtype_name(x->dtype) + " " + x->shape_string() +
                "; images are fed as float32 [batch, channels, height, width]");
  if (static_cast<int64_t>(mean.size()) != x->shape[1] || static_cast<int64_t>(std.size()) != x->shape[1])
    throw Error("model input '" + x->name + "' has " + std::to_string(x->shape[1]) + " channels but the normalisation " +
                std::to_string(mean.size()));
  Value* pixels = g.add_value(g.unique_name(x->name + "/pixels"), DType::u8,
                              Shape{x->shape[0], x->shape[2], x->shape[3], x->shape[1]}, Role::Input);
  pixels->rank_known = true;
  x->role = Role::Activation;
  g.inputs[0] = pixels;
  Node* n = g.add_node("NormalizeImages", {pixels}, {x}, g.unique_name(x->name + "/normalize"), kOxtrainDomain);
  n->attrs["mean"].value = mean;
  n->attrs["std"].value = std;
  if (!g.nodes().empty() && g.nodes().front().get() != n) g.move_before(n, g.nodes().front().get());
  if (g.opset(kOxtrainDomain) == 0) g.opsets.push_back({kOxtrainDomain, 1});
  find_schema(kOxtrainDomain, "NormalizeImages")->infer(*n, InferContext{g, 1});
  return pixels->name;
}

void convert_float_dtype(Graph& g, DType to) {
  if (to != DType::f32 && to != DType::f64)
    throw Error(std::string("convert_float_dtype: cannot convert to ") + dtype_name(to));
  for (Value* v : g.values_in_order()) {
    if (v->dtype != DType::f32 && v->dtype != DType::f64) continue;
    if (v->data && v->data->dtype != to) v->data = std::make_shared<Tensor>(convert(*v->data, to));
    v->dtype = to;
  }
  for (const auto& n : g.nodes())
    if (n->op_type == "Cast" && is_float(dtype_from_onnx(static_cast<int>(n->attr_int("to", 0)))))
      n->attrs["to"].value = static_cast<int64_t>(dtype_to_onnx(to));
}

void batchnorm_to_inference(Graph& g) {
  for (const auto& n : g.nodes()) {
    if (n->op_type != "BatchNormalization" || !n->domain.empty()) continue;
    n->attrs.erase("training_mode");
    for (size_t i = 1; i < n->outputs.size(); ++i) {
      if (n->outputs[i] && !n->outputs[i]->consumers.empty())
        throw Error(n->describe() + ": its training output '" + n->outputs[i]->name +
                    "' is used by other nodes; it cannot run in inference mode");
      g.set_output(n.get(), i, nullptr);
    }
    n->outputs.resize(1);
  }
  g.updates.clear();
  g.remove_dead_nodes();
  g.prune_values();
}

// ---------------------------------------------------------------------------------------
// Decomposed layer norm.

namespace {

// The node producing `v` when it is `op` of the default domain and `v` feeds only `readers`
// nodes (and is no graph output); nullptr otherwise.
Node* sole_producer(const Graph& g, const Value* v, const char* op, size_t readers = 1) {
  if (!v || !v->producer || v->producer->op_type != op || !v->producer->domain.empty()) return nullptr;
  if (v->consumers.size() != readers) return nullptr;
  if (std::find(g.outputs.begin(), g.outputs.end(), v) != g.outputs.end()) return nullptr;
  return v->producer;
}

// A float constant with one element: its value.
std::optional<double> scalar_constant(const Value* v) {
  if (!v || !v->has_data() || v->role != Role::Constant || v->data->numel() != 1) return std::nullopt;
  if (v->dtype == DType::f32) return static_cast<double>(v->data->data<float>()[0]);
  if (v->dtype == DType::f64) return v->data->data<double>()[0];
  return std::nullopt;
}

// The axes a ReduceMean with keepdims reduces, normalised and sorted; empty when they are not
// known constants or keepdims is off.
std::vector<int64_t> reduce_mean_axes(const Node& n, int64_t rank) {
  if (n.attr_int("keepdims", 1) != 1) return {};
  std::vector<int64_t> axes;
  if (n.has_attr("axes")) axes = n.attr_ints("axes");
  else if (const Value* a = n.input(1); a && a->has_data()) axes = a->data->to_int64();
  else return {};
  for (int64_t& a : axes)
    if (a < 0) a += rank;
  std::sort(axes.begin(), axes.end());
  return axes;
}

// The other input of binary `n` than `v`.
Value* other_input(const Node& n, const Value* v) {
  if (n.inputs.size() != 2) return nullptr;
  return n.inputs[0] == v ? n.inputs[1] : n.inputs[1] == v ? n.inputs[0] : nullptr;
}

}  // namespace

int fuse_decomposed_layer_norm(Graph& g) {
  int fused = 0;
  std::set<const Node*> doomed;
  std::vector<Node*> divs;
  for (const auto& n : g.nodes())
    if (n->op_type == "Div" && n->domain.empty()) divs.push_back(n.get());
  for (Node* div : divs) {
    Value* d = div->input(0);
    Node* sqrt = sole_producer(g, div->input(1), "Sqrt");
    Node* add_eps = sqrt ? sole_producer(g, sqrt->input(0), "Add") : nullptr;
    if (!add_eps || !d || !d->producer) continue;
    Value* var = add_eps->input(0);
    std::optional<double> eps = scalar_constant(add_eps->input(1));
    if (!eps) {
      var = add_eps->input(1);
      eps = scalar_constant(add_eps->input(0));
    }
    Node* var_mean = eps ? sole_producer(g, var, "ReduceMean") : nullptr;
    Node* square = var_mean ? var_mean->input(0)->producer : nullptr;
    if (!square || !sole_producer(g, var_mean->input(0), square->op_type.c_str())) continue;
    // d ^ 2 (d read by the square and the Div) or d * d.
    bool squares_d = false;
    if (square->op_type == "Pow" && square->input(0) == d) {
      std::optional<double> two = scalar_constant(square->input(1));
      squares_d = two && *two == 2.0 && d->consumers.size() == 2;
    } else if (square->op_type == "Mul" && square->input(0) == d && square->input(1) == d) {
      squares_d = d->consumers.size() == 3;  // the Mul reads it twice
    }
    Node* sub = squares_d ? sole_producer(g, d, "Sub", d->consumers.size()) : nullptr;
    if (!sub) continue;
    Value* x = sub->input(0);
    Node* mean = sole_producer(g, sub->input(1), "ReduceMean");
    if (!mean || mean->input(0) != x || !x->rank_known || !is_float(x->dtype)) continue;
    const int64_t rank = static_cast<int64_t>(x->shape.size());
    std::vector<int64_t> axes = reduce_mean_axes(*mean, rank);
    if (axes.empty() || axes != reduce_mean_axes(*var_mean, rank)) continue;
    bool trailing = true;
    for (size_t i = 0; i < axes.size(); ++i) trailing &= axes[i] == rank - static_cast<int64_t>(axes.size() - i);
    if (!trailing) continue;
    const Shape normalized(x->shape.end() - static_cast<int64_t>(axes.size()), x->shape.end());
    // Scale and bias: initializers of the normalized shape (or broadcasting to it).
    auto affine = [&](const Node* n, const Value* from) -> Value* {
      Value* p = n ? other_input(*n, from) : nullptr;
      if (!p || !p->has_data() || p->producer || p->dtype != x->dtype || p->shape.size() > normalized.size())
        return nullptr;
      return std::equal(p->shape.rbegin(), p->shape.rend(), normalized.rbegin(),
                        [](int64_t a, int64_t b) { return a == b || a == 1; })
                 ? p
                 : nullptr;
    };
    Value* out = div->output(0);
    Node* mul = nullptr;
    if (out->consumers.size() == 1 && std::find(g.outputs.begin(), g.outputs.end(), out) == g.outputs.end() &&
        out->consumers[0]->op_type == "Mul" && out->consumers[0]->domain.empty())
      mul = out->consumers[0];
    Value* scale = affine(mul, out);
    Value* bias = nullptr;
    std::vector<Node*> parts = {mean, sub, square, var_mean, add_eps, sqrt, div};
    if (scale) {
      parts.push_back(mul);
      out = mul->output(0);
      Node* add = out->consumers.size() == 1 && std::find(g.outputs.begin(), g.outputs.end(), out) == g.outputs.end()
                      ? out->consumers[0]
                      : nullptr;
      if (add && add->op_type == "Add" && add->domain.empty() && (bias = affine(add, out))) {
        parts.push_back(add);
        out = add->output(0);
      }
    } else {
      if (x->dtype != DType::f32 && x->dtype != DType::f64) continue;
      Tensor ones(x->dtype, normalized);
      for (int64_t i = 0; i < ones.numel(); ++i) {
        if (x->dtype == DType::f32) ones.data<float>()[i] = 1.0f;
        else ones.data<double>()[i] = 1.0;
      }
      scale = g.add_initializer(g.unique_name(div->name + "_scale"), std::move(ones), Role::Constant);
    }
    for (Node* n : parts) doomed.insert(n);
    // The fused node writes the last value of the pattern; the old nodes lose their outputs.
    Value* result = out;
    result->producer->outputs.assign(result->producer->outputs.size(), nullptr);
    result->producer = nullptr;
    std::vector<Value*> inputs = {x, scale};
    if (bias) inputs.push_back(bias);
    Node* ln = g.add_node("LayerNormalization", inputs, {result}, div->name + "_layer_norm", kOxtrainDomain);
    ln->attrs["axis"] = Attribute{rank - static_cast<int64_t>(axes.size())};
    ln->attrs["epsilon"] = Attribute{static_cast<float>(*eps)};
    find_schema(kOxtrainDomain, "LayerNormalization")->infer(*ln, InferContext{g, 17});
    ++fused;
  }
  if (fused == 0) return 0;
  g.remove_nodes_if([&](const Node& n) { return doomed.count(&n) != 0; });
  g.topological_sort();
  g.prune_values();
  return fused;
}

// A tensor file holds one batch or one reference tensor; 2 GiB is protobuf's limit anyway.
constexpr uint64_t kMaxTensorFileBytes = INT_MAX;

Tensor read_tensor_file(const std::string& path) {
  std::string bytes = read_regular_file(path, kMaxTensorFileBytes, "tensor file");
  onnx::TensorProto proto;
  if (!proto.ParseFromString(bytes)) throw Error("'" + path + "' is not an ONNX TensorProto file");
  bytes = std::string();  // the proto holds its own copy
  return inline_tensor_from_proto(proto, "'" + path + "': a tensor");
}

void write_tensor_file(const Tensor& t, const std::string& path) {
  onnx::TensorProto proto;
  proto.set_data_type(dtype_to_onnx(t.dtype));
  for (int64_t d : t.shape) proto.add_dims(d);
  proto.set_raw_data(onnx_raw_data(t));
  std::string bytes;
  if (!proto.SerializeToString(&bytes)) throw Error("cannot serialize a tensor for '" + path + "'");
  write_file_atomic(path, bytes);
}

}  // namespace oxtrain::graph
