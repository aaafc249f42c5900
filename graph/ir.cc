#include "graph/ir.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "base/checked.h"
#include "base/narrow_types.h"
#include "base/text.h"

namespace oxtrain::graph {

namespace {
// A double as a message shows it: "nan", "1e+30", "2.5".
std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}
}  // namespace

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f64:
    case DType::i64:
    case DType::u64:
      return 8;
    case DType::f32:
    case DType::i32:
    case DType::u32:
      return 4;
    case DType::f16:
    case DType::bf16:
    case DType::i16:
    case DType::u16:
      return 2;
    case DType::i8:
    case DType::u8:
    case DType::boolean:
    case DType::f8e4m3fn:
    case DType::f8e4m3fnuz:
    case DType::f8e5m2:
    case DType::f8e5m2fnuz:
    case DType::f4e2m1:
    case DType::f8e8m0:
    case DType::i4:
    case DType::u4:
    case DType::i2:
    case DType::u2:
      return 1;
    case DType::undefined:
      return 0;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i64: return "int64";
    case DType::i32: return "int32";
    case DType::i8: return "int8";
    case DType::u8: return "uint8";
    case DType::i16: return "int16";
    case DType::u16: return "uint16";
    case DType::u32: return "uint32";
    case DType::u64: return "uint64";
    case DType::f8e4m3fn: return "float8e4m3fn";
    case DType::f8e4m3fnuz: return "float8e4m3fnuz";
    case DType::f8e5m2: return "float8e5m2";
    case DType::f8e5m2fnuz: return "float8e5m2fnuz";
    case DType::f4e2m1: return "float4e2m1";
    case DType::f8e8m0: return "float8e8m0";
    case DType::i4: return "int4";
    case DType::u4: return "uint4";
    case DType::i2: return "int2";
    case DType::u2: return "uint2";
    case DType::boolean: return "bool";
    case DType::undefined: return "undefined";
  }
  return "undefined";
}

bool is_float(DType dtype) {
  return dtype == DType::f32 || dtype == DType::f64 || dtype == DType::f16 ||
         dtype == DType::bf16;
}

bool is_narrow(DType dtype) { return dtype >= DType::f8e4m3fn && dtype <= DType::u2; }

int packed_bits(DType dtype) {
  switch (dtype) {
    case DType::i4:
    case DType::u4:
    case DType::f4e2m1: return 4;
    case DType::i2:
    case DType::u2: return 2;
    default: return 0;
  }
}

namespace {
std::optional<NarrowFloat> narrow_float_of(DType dt) {
  switch (dt) {
    case DType::f8e4m3fn: return NarrowFloat::e4m3fn;
    case DType::f8e4m3fnuz: return NarrowFloat::e4m3fnuz;
    case DType::f8e5m2: return NarrowFloat::e5m2;
    case DType::f8e5m2fnuz: return NarrowFloat::e5m2fnuz;
    case DType::f4e2m1: return NarrowFloat::e2m1;
    default: return std::nullopt;
  }
}
}  // namespace

double narrow_value(DType dtype, uint8_t byte) {
  if (auto f = narrow_float_of(dtype)) return narrow_float_value(byte, *f);
  if (dtype == DType::f8e8m0) return e8m0_value(byte);
  if (dtype == DType::i4 || dtype == DType::i2) return static_cast<int8_t>(byte);
  if (dtype == DType::u4 || dtype == DType::u2) return byte;
  throw Error(std::string(dtype_name(dtype)) + " is not a narrow type");
}

uint8_t narrow_byte(DType dtype, double x, bool saturate, const std::string& round_mode) {
  if (auto f = narrow_float_of(dtype)) return narrow_float_code(x, *f, saturate);
  if (dtype == DType::f8e8m0) return e8m0_code(static_cast<float>(x), saturate, round_mode);
  if (const int bits = packed_bits(dtype))
    return static_cast<uint8_t>(narrow_int_value(x, bits, dtype == DType::i4 || dtype == DType::i2));
  throw Error(std::string(dtype_name(dtype)) + " is not a narrow type");
}

DType dtype_from_onnx(int onnx_type) {
  switch (onnx_type) {
    case 1: return DType::f32;
    case 2: return DType::u8;
    case 3: return DType::i8;
    case 4: return DType::u16;
    case 5: return DType::i16;
    case 6: return DType::i32;
    case 7: return DType::i64;
    case 9: return DType::boolean;
    case 10: return DType::f16;
    case 11: return DType::f64;
    case 12: return DType::u32;
    case 13: return DType::u64;
    case 16: return DType::bf16;
    case 17: return DType::f8e4m3fn;
    case 18: return DType::f8e4m3fnuz;
    case 19: return DType::f8e5m2;
    case 20: return DType::f8e5m2fnuz;
    case 21: return DType::u4;
    case 22: return DType::i4;
    case 23: return DType::f4e2m1;
    case 24: return DType::f8e8m0;
    case 25: return DType::u2;
    case 26: return DType::i2;
    default: return DType::undefined;
  }
}

int dtype_to_onnx(DType dtype) {
  switch (dtype) {
    case DType::f32: return 1;
    case DType::u8: return 2;
    case DType::i8: return 3;
    case DType::u16: return 4;
    case DType::i16: return 5;
    case DType::u32: return 12;
    case DType::u64: return 13;
    case DType::f8e4m3fn: return 17;
    case DType::f8e4m3fnuz: return 18;
    case DType::f8e5m2: return 19;
    case DType::f8e5m2fnuz: return 20;
    case DType::u4: return 21;
    case DType::i4: return 22;
    case DType::f4e2m1: return 23;
    case DType::f8e8m0: return 24;
    case DType::u2: return 25;
    case DType::i2: return 26;
    case DType::i32: return 6;
    case DType::i64: return 7;
    case DType::boolean: return 9;
    case DType::f16: return 10;
    case DType::f64: return 11;
    case DType::bf16: return 16;
    case DType::undefined: return 0;
  }
  return 0;
}

const char* role_name(Role role) {
  switch (role) {
    case Role::Input: return "input";
    case Role::Parameter: return "parameter";
    case Role::State: return "state";
    case Role::Activation: return "activation";
    case Role::Constant: return "constant";
  }
  return "?";
}

int64_t shape_numel(const Shape& shape) {
  if (!shape_known(shape)) return -1;
  // Shapes from files are checked at import; one that still overflows is refused here rather
  // than wrapping into a small, wrong count.
  return numel_or_throw(shape, "a tensor");
}

bool shape_known(const Shape& shape) {
  return std::all_of(shape.begin(), shape.end(), [](int64_t d) { return d >= 0; });
}

std::string shape_str(const Shape& shape, const std::vector<std::string>& dim_names) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out << ",";
    if (i < dim_names.size() && !dim_names[i].empty())
      out << dim_names[i];
    else if (shape[i] >= 0)
      out << shape[i];
    else
      out << "?";
  }
  out << "]";
  return out.str();
}

Tensor::Tensor(DType dtype_, Shape shape_) : dtype(dtype_), shape(std::move(shape_)) {
  if (!shape_known(shape)) throw Error("tensor shape " + shape_str(shape) + " is not fully known");
  int64_t size = bytes_or_throw(shape, dtype_size(dtype), "a tensor");
  bytes.assign(static_cast<size_t>(size), 0);
}

std::vector<int64_t> Tensor::to_int64() const {
  int64_t n = numel();
  // A folded constant may be up to kMaxSynthesizedTensorBytes of bytes; its int64 copy too.
  if (checked_mul(n, 8).value_or(INT64_MAX) > kMaxSynthesizedTensorBytes)
    throw Error("a constant of shape " + shape_str(shape) + " is too large to read as integers");
  std::vector<int64_t> out(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::i64: out[i] = data<int64_t>()[i]; break;
      case DType::i32: out[i] = data<int32_t>()[i]; break;
      case DType::i8: out[i] = data<int8_t>()[i]; break;
      case DType::i16: out[i] = data<int16_t>()[i]; break;
      case DType::u16: out[i] = data<uint16_t>()[i]; break;
      case DType::u32: out[i] = data<uint32_t>()[i]; break;
      case DType::u64:
        if (data<uint64_t>()[i] > static_cast<uint64_t>(INT64_MAX))
          throw Error("the uint64 value " + std::to_string(data<uint64_t>()[i]) + " cannot be read as an int64");
        out[i] = static_cast<int64_t>(data<uint64_t>()[i]);
        break;
      case DType::u8:
      case DType::boolean: out[i] = data<uint8_t>()[i]; break;
      case DType::f32:
      case DType::f64: {
        double v = dtype == DType::f32 ? data<float>()[i] : data<double>()[i];
        auto as_int = double_to_int64(v);
        if (!as_int)
          throw Error("the value " + number_text(v) + " cannot be read as an integer");
        out[i] = *as_int;
        break;
      }
      default: throw Error(std::string("cannot read ") + dtype_name(dtype) + " tensor as integers");
    }
  }
  return out;
}

Tensor Tensor::from_int64(const std::vector<int64_t>& values, Shape shape) {
  Tensor t(DType::i64, std::move(shape));
  if (t.numel() != static_cast<int64_t>(values.size()))
    throw Error("from_int64: " + std::to_string(values.size()) + " values for shape " +
                shape_str(t.shape));
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

Tensor Tensor::from_float(const std::vector<float>& values, Shape shape) {
  Tensor t(DType::f32, std::move(shape));
  if (t.numel() != static_cast<int64_t>(values.size()))
    throw Error("from_float: " + std::to_string(values.size()) + " values for shape " +
                shape_str(t.shape));
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

int64_t Value::bytes() const {
  if (!rank_known || !shape_known(shape)) return -1;
  return bytes_or_throw(shape, dtype_size(dtype), "value '" + escape_name(name) + "'");
}

std::string Value::shape_string() const {
  if (!rank_known) return "[unknown]";
  return shape_str(shape, dim_names);
}

int64_t Node::attr_int(const std::string& key, int64_t fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<int64_t>(&it->second.value)) return *v;
  throw Error(describe() + ": attribute '" + key + "' should be an int");
}

float Node::attr_float(const std::string& key, float fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<float>(&it->second.value)) return *v;
  if (auto* v = std::get_if<int64_t>(&it->second.value)) return static_cast<float>(*v);
  throw Error(describe() + ": attribute '" + key + "' should be a float");
}

std::string Node::attr_string(const std::string& key, const std::string& fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<std::string>(&it->second.value)) return *v;
  throw Error(describe() + ": attribute '" + key + "' should be a string");
}

std::vector<int64_t> Node::attr_ints(const std::string& key,
                                     const std::vector<int64_t>& fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<std::vector<int64_t>>(&it->second.value)) return *v;
  if (auto* v = std::get_if<int64_t>(&it->second.value)) return {*v};
  throw Error(describe() + ": attribute '" + key + "' should be a list of ints");
}

std::vector<float> Node::attr_floats(const std::string& key) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return {};
  if (auto* v = std::get_if<std::vector<float>>(&it->second.value)) return *v;
  if (auto* v = std::get_if<float>(&it->second.value)) return {*v};
  throw Error(describe() + ": attribute '" + key + "' should be a list of floats");
}

const Tensor* Node::attr_tensor(const std::string& key) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return nullptr;
  return std::get_if<Tensor>(&it->second.value);
}

std::string Node::describe() const {
  std::string d = domain.empty() || domain == "ai.onnx" ? op_type : domain + "." + op_type;
  return escape_name(d) + " '" + escape_name(name) + "'";
}

int64_t Graph::opset(const std::string& domain) const {
  for (const auto& o : opsets) {
    bool same = o.domain == domain || (domain.empty() && o.domain == "ai.onnx") ||
                (domain == "ai.onnx" && o.domain.empty());
    if (same) return o.version;
  }
  return 0;
}

Value* Graph::find_value(const std::string& value_name) const {
  auto it = values_.find(value_name);
  return it == values_.end() ? nullptr : it->second;
}

Value* Graph::value(const std::string& value_name) const {
  Value* v = find_value(value_name);
  if (!v) throw Error("graph has no value named '" + value_name + "'");
  return v;
}

Value* Graph::add_value(const std::string& value_name, DType dtype, Shape shape, Role role) {
  if (value_name.empty()) throw Error("a value needs a name");
  if (values_.count(value_name)) throw Error("value '" + value_name + "' is defined twice");
  auto v = std::make_unique<Value>();
  v->name = value_name;
  v->dtype = dtype;
  v->rank_known = !shape.empty() || dtype != DType::undefined;
  v->shape = std::move(shape);
  v->role = role;
  Value* raw = v.get();
  value_storage_.push_back(std::move(v));
  values_[value_name] = raw;
  return raw;
}

Value* Graph::add_initializer(const std::string& value_name, Tensor tensor, Role role) {
  Value* v = add_value(value_name, tensor.dtype, tensor.shape, role);
  v->rank_known = true;
  v->data = std::make_shared<Tensor>(std::move(tensor));
  return v;
}

std::string Graph::unique_name(const std::string& base) const {
  if (!values_.count(base)) return base;
  for (int i = 1;; ++i) {
    std::string candidate = base + "_" + std::to_string(i);
    if (!values_.count(candidate)) return candidate;
  }
}

Node* Graph::add_node(const std::string& op_type, std::vector<Value*> inputs,
                      std::vector<Value*> outputs, std::string node_name,
                      std::string domain) {
  auto n = std::make_unique<Node>();
  n->op_type = op_type;
  n->domain = domain == "ai.onnx" ? "" : std::move(domain);
  n->name = node_name.empty() ? op_type + "_" + std::to_string(nodes_.size()) : node_name;
  n->inputs = std::move(inputs);
  n->outputs = std::move(outputs);
  for (Value* in : n->inputs)
    if (in) in->consumers.push_back(n.get());
  for (Value* out : n->outputs) {
    if (!out) continue;
    if (out->producer)
      throw Error(n->describe() + ": output '" + out->name + "' is already produced by " +
                  out->producer->describe());
    if (out->has_data() || out->role == Role::Input)
      throw Error(n->describe() + ": output '" + out->name +
                  "' is also a graph input or initializer");
    out->producer = n.get();
  }
  nodes_.push_back(std::move(n));
  return nodes_.back().get();
}

void Graph::set_output(Node* node, size_t index, Value* value) {
  if (value && value->producer && value->producer != node)
    throw Error(node->describe() + ": output '" + value->name + "' is already produced by " +
                value->producer->describe());
  if (node->outputs.size() <= index) node->outputs.resize(index + 1, nullptr);
  if (Value* old = node->outputs[index]; old && old != value) old->producer = nullptr;
  node->outputs[index] = value;
  if (value) value->producer = node;
}

void Graph::remove_nodes_if(const std::function<bool(const Node&)>& dead) {
  std::set<const Node*> doomed;
  for (const auto& n : nodes_)
    if (dead(*n)) doomed.insert(n.get());
  if (doomed.empty()) return;
  for (const Node* n : doomed) {
    for (Value* in : n->inputs) {
      if (!in) continue;
      auto& c = in->consumers;
      c.erase(std::remove(c.begin(), c.end(), n), c.end());
    }
    for (Value* out : n->outputs)
      if (out && out->producer == n) out->producer = nullptr;
  }
  nodes_.erase(std::remove_if(nodes_.begin(), nodes_.end(),
                              [&](const std::unique_ptr<Node>& n) { return doomed.count(n.get()); }),
               nodes_.end());
}

void Graph::set_input(Node* node, size_t index, Value* value) {
  if (node->inputs.size() <= index) node->inputs.resize(index + 1, nullptr);
  Value*& slot = node->inputs[index];
  if (slot == value) return;
  if (slot) {
    auto& c = slot->consumers;
    if (auto it = std::find(c.begin(), c.end(), node); it != c.end()) c.erase(it);
  }
  slot = value;
  if (value) value->consumers.push_back(node);
}

void Graph::replace_uses(Value* from, Value* to) {
  if (from == to) return;
  for (Node* c : from->consumers) {
    for (Value*& in : c->inputs)
      if (in == from) in = to;
    to->consumers.push_back(c);
  }
  from->consumers.clear();
  for (Value*& out : outputs)
    if (out == from) out = to;
}

void Graph::prune_values() {
  std::set<const Value*> keep(inputs.begin(), inputs.end());
  keep.insert(outputs.begin(), outputs.end());
  for (const auto& [state, next] : updates) {
    keep.insert(state);
    keep.insert(next);
  }
  for (const auto& n : nodes_) {
    for (Value* v : n->inputs) keep.insert(v);
    for (Value* v : n->outputs) keep.insert(v);
  }
  std::vector<std::unique_ptr<Value>> kept;
  for (auto& v : value_storage_) {
    if (keep.count(v.get())) {
      kept.push_back(std::move(v));
    } else {
      values_.erase(v->name);
    }
  }
  value_storage_ = std::move(kept);
}

void Graph::remove_dead_nodes() {
  std::set<const Node*> live;
  std::vector<const Value*> work(outputs.begin(), outputs.end());
  for (const auto& update : updates) work.push_back(update.second);
  while (!work.empty()) {
    const Value* v = work.back();
    work.pop_back();
    if (!v || !v->producer || live.count(v->producer)) continue;
    live.insert(v->producer);
    for (Value* in : v->producer->inputs) work.push_back(in);
  }
  remove_nodes_if([&](const Node& n) { return !live.count(&n); });
}

std::vector<Value*> Graph::values_in_order() const {
  std::vector<Value*> out;
  std::set<const Value*> seen;
  auto push = [&](Value* v) {
    if (v && seen.insert(v).second) out.push_back(v);
  };
  for (Value* v : inputs) push(v);
  for (Value* v : initializers()) push(v);
  for (const auto& n : nodes_)
    for (Value* v : n->outputs) push(v);
  return out;
}

std::vector<Value*> Graph::initializers() const {
  std::vector<Value*> out;
  for (const auto& v : value_storage_)
    if (v->has_data() && !v->producer) out.push_back(v.get());
  return out;
}

void Graph::move_next_to(const Node* node, const Node* anchor, bool after) {
  auto find = [this](const Node* n) {
    return std::find_if(nodes_.begin(), nodes_.end(), [n](const auto& p) { return p.get() == n; });
  };
  auto from = find(node);
  if (from == nodes_.end() || find(anchor) == nodes_.end())
    throw Error(std::string(after ? "move_after" : "move_before") + ": node not in the graph");
  std::unique_ptr<Node> held = std::move(*from);
  nodes_.erase(from);
  nodes_.insert(find(anchor) + (after ? 1 : 0), std::move(held));
}

void Graph::move_after(const Node* node, const Node* anchor) { move_next_to(node, anchor, true); }
void Graph::move_before(const Node* node, const Node* anchor) { move_next_to(node, anchor, false); }

void Graph::topological_sort() {
  std::unordered_map<const Node*, int> pending;
  std::unordered_map<const Node*, size_t> position;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node* n = nodes_[i].get();
    position[n] = i;
    int count = 0;
    for (Value* in : n->inputs)
      if (in && in->producer) ++count;
    pending[n] = count;
  }
  // Kahn's algorithm, always taking the ready node that came first in the old order.
  std::set<size_t> ready;
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (pending[nodes_[i].get()] == 0) ready.insert(i);
  std::vector<std::unique_ptr<Node>> sorted;
  sorted.reserve(nodes_.size());
  while (!ready.empty()) {
    size_t i = *ready.begin();
    ready.erase(ready.begin());
    Node* n = nodes_[i].get();
    for (Value* out : n->outputs) {
      if (!out) continue;
      // A consumer that uses `out` twice is listed twice and counted twice in `pending`.
      for (Node* c : out->consumers)
        if (--pending[c] == 0) ready.insert(position[c]);
    }
    sorted.push_back(std::move(nodes_[i]));
  }
  if (sorted.size() != nodes_.size()) {
    for (auto& n : nodes_)
      if (n) throw Error("graph has a cycle through " + n->describe());
  }
  nodes_ = std::move(sorted);
}

}  // namespace oxtrain::graph
