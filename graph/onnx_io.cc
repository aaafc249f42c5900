#include "graph/onnx_io.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "graph/ops.h"

namespace fs = std::filesystem;

namespace oxtrain::graph {
namespace {

// Metadata key listing Graph::updates as "state<TAB>new value" lines.
constexpr const char* kUpdatesKey = "oxtrain.updates";

std::string read_file_bytes(const fs::path& path, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(what + " '" + path.string() + "' does not exist");
  if (fs::is_directory(path, ec)) throw Error(what + " '" + path.string() + "' is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + what + " '" + path.string() + "'");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// ----- tensors -----

Shape dims_of(const onnx::TensorProto& t) { return Shape(t.dims().begin(), t.dims().end()); }

void load_external(const onnx::TensorProto& t, const std::string& base_dir, Tensor& out) {
  std::string location;
  int64_t offset = 0, length = -1;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") location = kv.value();
    else if (kv.key() == "offset") offset = std::stoll(kv.value());
    else if (kv.key() == "length") length = std::stoll(kv.value());
  }
  if (location.empty())
    throw Error("initializer '" + t.name() + "' has external data without a location");
  fs::path path = fs::path(base_dir) / location;
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw Error("initializer '" + t.name() + "' refers to external data file '" +
                path.string() + "', which does not exist (keep the data files beside the model)");
  int64_t need = static_cast<int64_t>(out.bytes.size());
  if (length >= 0 && length != need)
    throw Error("initializer '" + t.name() + "' " + shape_str(out.shape) + " needs " +
                std::to_string(need) + " bytes but its external data entry says length " +
                std::to_string(length));
  int64_t file_size = static_cast<int64_t>(fs::file_size(path, ec));
  if (offset < 0 || offset + need > file_size)
    throw Error("external data file '" + path.string() + "' has " + std::to_string(file_size) +
                " bytes but initializer '" + t.name() + "' needs bytes " +
                std::to_string(offset) + ".." + std::to_string(offset + need) +
                " (file truncated?)");
  std::ifstream in(path, std::ios::binary);
  in.seekg(offset);
  in.read(reinterpret_cast<char*>(out.bytes.data()), need);
  if (!in) throw Error("cannot read external data of '" + t.name() + "' from '" + path.string() + "'");
}

template <typename Field, typename T>
void copy_typed(const Field& field, Tensor& out, const std::string& name) {
  if (static_cast<int64_t>(field.size()) != out.numel())
    throw Error("initializer '" + name + "' " + shape_str(out.shape) + " has " +
                std::to_string(field.size()) + " values (file truncated or corrupt?)");
  T* dst = out.data<T>();
  for (int i = 0; i < field.size(); ++i) dst[i] = static_cast<T>(field.Get(i));
}

Tensor tensor_from_proto(const onnx::TensorProto& t, const std::string& base_dir) {
  DType dtype = dtype_from_onnx(t.data_type());
  if (dtype == DType::undefined)
    throw Error("tensor '" + t.name() + "' has ONNX data type " + std::to_string(t.data_type()) +
                ", which oxtrain does not handle");
  if (t.has_segment()) throw Error("tensor '" + t.name() + "' is segmented; not supported");
  Shape shape = dims_of(t);
  for (int64_t d : shape)
    if (d < 0) throw Error("tensor '" + t.name() + "' has a negative dimension");
  Tensor out(dtype, shape);
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    load_external(t, base_dir, out);
  } else if (t.has_raw_data()) {
    if (t.raw_data().size() != out.bytes.size())
      throw Error("initializer '" + t.name() + "' " + shape_str(shape) + " of " +
                  dtype_name(dtype) + " needs " + std::to_string(out.bytes.size()) +
                  " bytes but holds " + std::to_string(t.raw_data().size()) +
                  " (file truncated or corrupt?)");
    std::memcpy(out.bytes.data(), t.raw_data().data(), out.bytes.size());
  } else {
    const std::string& n = t.name();
    switch (dtype) {
      case DType::f32: copy_typed<decltype(t.float_data()), float>(t.float_data(), out, n); break;
      case DType::f64: copy_typed<decltype(t.double_data()), double>(t.double_data(), out, n); break;
      case DType::i64: copy_typed<decltype(t.int64_data()), int64_t>(t.int64_data(), out, n); break;
      case DType::i32: copy_typed<decltype(t.int32_data()), int32_t>(t.int32_data(), out, n); break;
      case DType::i8: copy_typed<decltype(t.int32_data()), int8_t>(t.int32_data(), out, n); break;
      case DType::u8:
      case DType::boolean: copy_typed<decltype(t.int32_data()), uint8_t>(t.int32_data(), out, n); break;
      case DType::f16:
      case DType::bf16: copy_typed<decltype(t.int32_data()), uint16_t>(t.int32_data(), out, n); break;
      default: break;
    }
  }
  return out;
}

void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto& p) {
  p.set_name(name);
  p.set_data_type(dtype_to_onnx(t.dtype));
  for (int64_t d : t.shape) p.add_dims(d);
  p.set_raw_data(t.bytes.data(), t.bytes.size());
}

// ----- attributes -----

Attribute attribute_from_proto(const onnx::AttributeProto& a, const std::string& node_desc,
                               const std::string& base_dir) {
  using A = onnx::AttributeProto;
  if (!a.ref_attr_name().empty())
    throw Error(node_desc + ": attribute '" + a.name() + "' refers to a function attribute");
  Attribute out;
  switch (a.type()) {
    case A::FLOAT: out.value = a.f(); break;
    case A::INT: out.value = static_cast<int64_t>(a.i()); break;
    case A::STRING: out.value = a.s(); break;
    case A::TENSOR: out.value = tensor_from_proto(a.t(), base_dir); break;
    case A::FLOATS: out.value = std::vector<float>(a.floats().begin(), a.floats().end()); break;
    case A::INTS: out.value = std::vector<int64_t>(a.ints().begin(), a.ints().end()); break;
    case A::STRINGS:
      out.value = std::vector<std::string>(a.strings().begin(), a.strings().end());
      break;
    default:
      throw Error(node_desc + ": attribute '" + a.name() + "' has type " +
                  A::AttributeType_Name(a.type()) + ", which oxtrain does not handle");
  }
  return out;
}

void attribute_to_proto(const std::string& name, const Attribute& a, onnx::AttributeProto& p) {
  using A = onnx::AttributeProto;
  p.set_name(name);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, float>) {
          p.set_type(A::FLOAT);
          p.set_f(v);
        } else if constexpr (std::is_same_v<T, int64_t>) {
          p.set_type(A::INT);
          p.set_i(v);
        } else if constexpr (std::is_same_v<T, std::string>) {
          p.set_type(A::STRING);
          p.set_s(v);
        } else if constexpr (std::is_same_v<T, Tensor>) {
          p.set_type(A::TENSOR);
          tensor_to_proto(v, "", *p.mutable_t());
        } else if constexpr (std::is_same_v<T, std::vector<float>>) {
          p.set_type(A::FLOATS);
          for (float f : v) p.add_floats(f);
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          p.set_type(A::INTS);
          for (int64_t i : v) p.add_ints(i);
        } else {
          p.set_type(A::STRINGS);
          for (const auto& s : v) p.add_strings(s);
        }
      },
      a.value);
}

// ----- value types -----

void read_value_info(const onnx::ValueInfoProto& info, Value& v) {
  if (!info.type().has_tensor_type()) return;
  const auto& tt = info.type().tensor_type();
  v.dtype = dtype_from_onnx(tt.elem_type());
  if (!tt.has_shape()) return;
  v.rank_known = true;
  v.shape.clear();
  v.dim_names.clear();
  for (const auto& d : tt.shape().dim()) {
    v.shape.push_back(d.has_dim_value() && d.dim_value() >= 0 ? d.dim_value() : kUnknownDim);
    v.dim_names.push_back(d.has_dim_param() ? d.dim_param() : "");
  }
}

void write_value_info(const Value& v, onnx::ValueInfoProto& info, bool with_shape) {
  info.set_name(v.name);
  auto* tt = info.mutable_type()->mutable_tensor_type();
  tt->set_elem_type(dtype_to_onnx(v.dtype));
  if (!with_shape || !v.rank_known) return;
  auto* shape = tt->mutable_shape();
  for (size_t i = 0; i < v.shape.size(); ++i) {
    auto* d = shape->add_dim();
    if (i < v.dim_names.size() && !v.dim_names[i].empty())
      d->set_dim_param(v.dim_names[i]);
    else if (v.shape[i] >= 0)
      d->set_dim_value(v.shape[i]);
  }
}

bool has_symbolic_dims(const Graph& g) {
  for (const Value* v : g.inputs)
    for (const auto& name : v->dim_names)
      if (!name.empty()) return true;
  return false;
}

// ----- prepare -----

void check_opsets_and_ops(const Graph& g) {
  int64_t v = g.opset("");
  if (v == 0) throw Error("the model imports no version of the default ONNX domain (ai.onnx)");
  if (v < kMinOpset || v > kMaxOpset)
    throw Error("the model uses opset " + std::to_string(v) + " of ai.onnx; oxtrain supports " +
                std::to_string(kMinOpset) + " to " + std::to_string(kMaxOpset) +
                " (convert it with onnx.version_converter)");
  std::map<std::string, std::vector<std::string>> unsupported;
  for (const auto& n : g.nodes()) {
    if (!find_schema(n->domain, n->op_type)) {
      std::string key = n->domain.empty() ? n->op_type : n->domain + "." + n->op_type;
      unsupported[key].push_back("'" + n->name + "'");
    }
  }
  if (unsupported.empty()) return;
  std::string msg = "unsupported ops:";
  bool first = true;
  for (const auto& [op, names] : unsupported) {
    msg += first ? " " : "; ";
    first = false;
    msg += op + " (node" + std::string(names.size() > 1 ? "s " : " ");
    for (size_t i = 0; i < names.size() && i < 5; ++i) msg += (i ? ", " : "") + names[i];
    if (names.size() > 5) msg += ", and " + std::to_string(names.size() - 5) + " more";
    msg += ")";
  }
  throw Error(msg);
}

void resolve_batch(Graph& g, const ImportOptions& options) {
  for (Value* v : g.inputs) {
    if (!v->rank_known)
      throw Error("graph input '" + v->name + "' has no shape; oxtrain needs input shapes");
    for (size_t i = 0; i < v->shape.size(); ++i) {
      if (i == 0) {
        if (options.batch_size) {
          if (*options.batch_size < 1)
            throw Error("batch size must be positive, got " + std::to_string(*options.batch_size));
          v->shape[0] = *options.batch_size;
        } else if (v->shape[0] < 0) {
          v->shape[0] = 1;
        }
      } else if (v->shape[i] < 0) {
        std::string sym = i < v->dim_names.size() ? v->dim_names[i] : "";
        throw Error("graph input '" + v->name + "' has a symbolic dimension " +
                    (sym.empty() ? "" : "'" + sym + "' ") + "at axis " + std::to_string(i) +
                    " " + v->shape_string() + "; only the batch dimension may be symbolic");
      }
    }
  }
}

// Input slots that never carry a gradient: BN running statistics (state), shapes, axes,
// ratios, labels.
bool constant_slot(const Node& n, size_t slot) {
  const std::string& op = n.op_type;
  if (op == "Reshape" || op == "ReduceMean" || op == "Squeeze" || op == "Unsqueeze")
    return slot >= 1;
  if (op == "Dropout") return slot >= 1;
  if (op == "SoftmaxCrossEntropyLoss") return slot >= 1;
  if (op == "Momentum") return slot < 2;
  return false;
}

void assign_roles(Graph& g) {
  for (Value* v : g.initializers()) {
    if (!is_float(v->dtype)) {
      v->role = Role::Constant;
      continue;
    }
    bool state = false, trainable = false;
    for (const Node* c : v->consumers) {
      for (size_t i = 0; i < c->inputs.size(); ++i) {
        if (c->inputs[i] != v) continue;
        bool bn_stat = (c->op_type == "BatchNormalization" || c->op_type == "BatchNormTraining") &&
                       (i == 3 || i == 4);
        bool momentum_buffer = c->op_type == "Momentum" && i >= 2 + 2 * (c->inputs.size() - 2) / 3;
        if (bn_stat || momentum_buffer) state = true;
        else if (!constant_slot(*c, i)) trainable = true;
      }
    }
    v->role = state ? Role::State : trainable ? Role::Parameter : Role::Constant;
  }
}

}  // namespace

int64_t batch_size_of(const Graph& graph) {
  for (const Value* v : graph.inputs)
    if (v->rank_known && !v->shape.empty() && v->shape[0] > 0) return v->shape[0];
  return 1;
}

void prepare(Graph& g, const ImportOptions& options) {
  check_opsets_and_ops(g);
  g.topological_sort();
  resolve_batch(g, options);
  assign_roles(g);

  // Declared output shapes, to check against what the graph computes.
  std::map<const Value*, Shape> declared;
  for (const Value* v : g.outputs)
    if (v->rank_known) declared[v] = v->shape;

  std::set<const Node*> folded;
  for (const auto& node_ptr : g.nodes()) {
    Node& n = *node_ptr;
    const OpSchema* schema = find_schema(n.domain, n.op_type);
    InferContext ctx{g, g.opset(n.domain)};
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const Value* in = n.inputs[i];
      if (in && !in->rank_known && !in->has_data())
        throw Error(n.describe() + ": input '" + in->name + "' has no known shape");
    }
    // Identity of an initializer: the output is the initializer itself (shared weights).
    if (n.op_type == "Identity" && n.input(0) && n.input(0)->has_data() &&
        !n.input(0)->producer && n.output(0)) {
      bool is_graph_output =
          std::find(g.outputs.begin(), g.outputs.end(), n.output(0)) != g.outputs.end();
      if (!is_graph_output) {
        g.replace_uses(n.output(0), n.input(0));
        folded.insert(&n);
        continue;
      }
    }
    bool foldable = schema->fold != nullptr;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const Value* in = n.inputs[i];
      if (!in) continue;
      bool constant = in->has_data() && in->role == Role::Constant;
      bool metadata_only = std::find(schema->metadata_inputs.begin(),
                                     schema->metadata_inputs.end(),
                                     i) != schema->metadata_inputs.end();
      if (!constant && !metadata_only) foldable = false;
    }
    bool graph_output = false;
    for (const Value* out : n.outputs)
      if (std::find(g.outputs.begin(), g.outputs.end(), out) != g.outputs.end()) graph_output = true;
    if (foldable && !graph_output) {
      schema->fold(n, ctx);
      folded.insert(&n);
    } else {
      schema->infer(n, ctx);
    }
  }
  g.remove_nodes_if([&](const Node& n) { return folded.count(&n) != 0; });
  g.remove_dead_nodes();
  g.prune_values();

  for (const auto& [v, shape] : declared) {
    bool agree = shape.size() == v->shape.size();
    for (size_t i = 0; agree && i < shape.size(); ++i)
      if (shape[i] >= 0 && shape[i] != v->shape[i] && !(i == 0 && options.batch_size))
        agree = false;
    if (!agree)
      throw Error("graph output '" + v->name + "' is declared as " + shape_str(shape) +
                  " but the graph computes " + shape_str(v->shape));
  }
}

Graph import_onnx_model(const onnx::ModelProto& model, const std::string& base_dir,
                        const ImportOptions& options) {
  if (!model.has_graph())
    throw Error("the file holds no graph; is it an ONNX model?");
  Graph g;
  g.ir_version = model.ir_version();
  g.producer_name = model.producer_name();
  g.producer_version = model.producer_version();
  g.doc_string = model.doc_string();
  for (const auto& o : model.opset_import()) {
    std::string domain = o.domain() == "ai.onnx" ? "" : o.domain();
    g.opsets.push_back({domain, o.version()});
  }
  std::stable_partition(g.opsets.begin(), g.opsets.end(),
                        [](const OpsetImport& o) { return o.domain.empty(); });
  const onnx::GraphProto& gp = model.graph();
  g.name = gp.name();
  if (gp.sparse_initializer_size() > 0)
    throw Error("sparse initializers are not supported");
  if (model.functions_size() > 0) {
    // Functions are only a problem when a node calls one; the unsupported-op check says so.
  }

  std::set<std::string> initializer_names;
  for (const auto& t : gp.initializer()) {
    if (t.name().empty()) throw Error("an initializer has no name");
    if (!initializer_names.insert(t.name()).second)
      throw Error("initializer '" + t.name() + "' is defined twice");
    g.add_initializer(t.name(), tensor_from_proto(t, base_dir), Role::Parameter);
  }
  for (const auto& info : gp.input()) {
    if (initializer_names.count(info.name())) continue;  // IR < 4 lists initializers as inputs
    Value* v = g.add_value(info.name(), DType::undefined, {}, Role::Input);
    read_value_info(info, *v);
    g.inputs.push_back(v);
  }
  // Outputs of all nodes first, so a file whose nodes are not sorted still links.
  std::vector<std::string> node_names;
  std::set<std::string> used_names;
  for (int i = 0; i < gp.node_size(); ++i) {
    const auto& np = gp.node(i);
    std::string name = np.name();
    if (name.empty() || used_names.count(name)) {
      std::string base = np.op_type() + "_" + std::to_string(i);
      name = base;
      for (int k = 1; used_names.count(name); ++k) name = base + "_" + std::to_string(k);
    }
    used_names.insert(name);
    node_names.push_back(name);
    for (const auto& out : np.output()) {
      if (out.empty()) continue;
      if (g.find_value(out))
        throw Error(np.op_type() + " '" + name + "': output '" + out +
                    "' is already defined by another node, an input or an initializer");
      g.add_value(out);
    }
  }
  for (int i = 0; i < gp.node_size(); ++i) {
    const auto& np = gp.node(i);
    std::string desc = np.op_type() + " '" + node_names[i] + "'";
    std::vector<Value*> ins, outs;
    for (const auto& in : np.input()) {
      if (in.empty()) {
        ins.push_back(nullptr);
        continue;
      }
      Value* v = g.find_value(in);
      if (!v)
        throw Error(desc + ": input '" + in +
                    "' is not produced by any node, initializer or graph input "
                    "(file truncated or corrupt?)");
      ins.push_back(v);
    }
    for (const auto& out : np.output()) outs.push_back(out.empty() ? nullptr : g.value(out));
    while (!outs.empty() && !outs.back()) outs.pop_back();
    Node* n = g.add_node(np.op_type(), ins, outs, node_names[i], np.domain());
    for (const auto& a : np.attribute())
      n->attrs[a.name()] = attribute_from_proto(a, desc, base_dir);
  }
  for (const auto& info : gp.output()) {
    Value* v = g.find_value(info.name());
    if (!v) throw Error("graph output '" + info.name() + "' is not produced by any node");
    DType computed = v->dtype;
    read_value_info(info, *v);
    if (v->dtype == DType::undefined) v->dtype = computed;
    g.outputs.push_back(v);
  }
  for (const auto& prop : model.metadata_props()) {
    if (prop.key() != kUpdatesKey) continue;
    std::istringstream lines(prop.value());
    std::string line;
    while (std::getline(lines, line)) {
      auto tab = line.find('\t');
      if (tab == std::string::npos) continue;
      Value* state = g.find_value(line.substr(0, tab));
      Value* next = g.find_value(line.substr(tab + 1));
      if (!state || !next) throw Error("metadata " + std::string(kUpdatesKey) + " names unknown values");
      g.updates.push_back({state, next});
      g.outputs.erase(std::remove(g.outputs.begin(), g.outputs.end(), next), g.outputs.end());
    }
  }
  if (g.outputs.empty()) throw Error("the graph has no outputs");
  if (options.prepare) prepare(g, options);
  return g;
}

Graph import_onnx(const std::string& path, const ImportOptions& options) {
  std::string bytes = read_file_bytes(path, "model file");
  if (bytes.empty()) throw Error("model file '" + path + "' is empty");
  onnx::ModelProto model;
  google::protobuf::io::ArrayInputStream raw(bytes.data(), static_cast<int>(bytes.size()));
  google::protobuf::io::CodedInputStream coded(&raw);
  coded.SetTotalBytesLimit(INT_MAX);
  bool parsed = model.ParseFromCodedStream(&coded) && coded.ConsumedEntireMessage();
  if (!parsed || !model.has_graph()) {
    // A ModelProto starts with field 1 (ir_version, varint): byte 0x08.
    bool looks_onnx = static_cast<unsigned char>(bytes[0]) == 0x08;
    throw Error("'" + path + "' is not a valid ONNX model: " +
                (looks_onnx ? std::string("the protobuf is truncated or corrupt")
                            : std::string("it does not parse as an ONNX ModelProto")));
  }
  std::string base_dir = fs::path(path).parent_path().string();
  try {
    return import_onnx_model(model, base_dir.empty() ? "." : base_dir, options);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

onnx::ModelProto to_onnx(const Graph& g) {
  onnx::ModelProto m;
  m.set_ir_version(g.ir_version);
  m.set_producer_name(g.producer_name.empty() ? "oxtrain" : g.producer_name);
  if (!g.producer_version.empty()) m.set_producer_version(g.producer_version);
  if (!g.doc_string.empty()) m.set_doc_string(g.doc_string);
  for (const auto& o : g.opsets) {
    auto* op = m.add_opset_import();
    op->set_domain(o.domain);
    op->set_version(o.version);
  }
  auto* gp = m.mutable_graph();
  gp->set_name(g.name.empty() ? "oxtrain" : g.name);
  // Float constants that must not be trained (folded values, e.g. a zero bias an exporter
  // computed) are written as Constant nodes: an initializer in a weight slot reads back as a
  // parameter.
  auto as_constant_node = [](const Value* v) {
    return v->role == Role::Constant && is_float(v->dtype);
  };
  for (const Value* v : g.initializers()) {
    if (as_constant_node(v)) {
      auto* np = gp->add_node();
      np->set_name(v->name + "_constant");
      np->set_op_type("Constant");
      np->add_output(v->name);
      attribute_to_proto("value", Attribute{*v->data}, *np->add_attribute());
    } else {
      tensor_to_proto(*v->data, v->name, *gp->add_initializer());
    }
  }
  for (const Value* v : g.inputs) write_value_info(*v, *gp->add_input(), true);
  // IR versions before 4 require every initializer to be listed as a graph input too.
  if (g.ir_version < 4)
    for (const Value* v : g.initializers())
      if (!as_constant_node(v)) write_value_info(*v, *gp->add_input(), true);
  for (const Value* v : g.outputs) write_value_info(*v, *gp->add_output(), true);
  // A step's updates are outputs too (so readers keep the nodes that compute them); which
  // state each one rewrites is recorded in the model's metadata.
  if (!g.updates.empty()) {
    std::string pairs;
    std::set<const Value*> written(g.outputs.begin(), g.outputs.end());
    for (const auto& [state, next] : g.updates) {
      pairs += state->name + "\t" + next->name + "\n";
      if (written.insert(next).second) write_value_info(*next, *gp->add_output(), true);
    }
    auto* prop = m.add_metadata_props();
    prop->set_key(kUpdatesKey);
    prop->set_value(pairs);
  }
  // Intermediate shapes hold only for the batch the graph was prepared with; a graph with a
  // symbolic batch leaves them to the reader's shape inference.
  bool write_intermediate = !has_symbolic_dims(g);
  std::set<const Value*> listed(g.outputs.begin(), g.outputs.end());
  for (const auto& n : g.nodes()) {
    auto* np = gp->add_node();
    np->set_name(n->name);
    np->set_op_type(n->op_type);
    if (!n->domain.empty()) np->set_domain(n->domain);
    for (const Value* in : n->inputs) np->add_input(in ? in->name : "");
    for (const Value* out : n->outputs) np->add_output(out ? out->name : "");
    for (const auto& [key, attr] : n->attrs) attribute_to_proto(key, attr, *np->add_attribute());
    if (!write_intermediate) continue;
    for (const Value* out : n->outputs)
      if (out && out->rank_known && out->dtype != DType::undefined && listed.insert(out).second)
        write_value_info(*out, *gp->add_value_info(), true);
  }
  return m;
}

Graph copy_graph(const Graph& graph, const ImportOptions& options) {
  return import_onnx_model(to_onnx(graph), ".", options);
}

void export_onnx(const Graph& graph, const std::string& path, const ExportOptions& options) {
  onnx::ModelProto m = to_onnx(graph);
  if (options.external_data_threshold > 0) {
    fs::path data_path = fs::path(path).string() + ".data";
    std::ofstream data(data_path, std::ios::binary | std::ios::trunc);
    if (!data) throw Error("cannot write '" + data_path.string() + "'");
    int64_t offset = 0;
    for (auto& t : *m.mutable_graph()->mutable_initializer()) {
      int64_t size = static_cast<int64_t>(t.raw_data().size());
      if (size < options.external_data_threshold) continue;
      data.write(t.raw_data().data(), size);
      t.clear_raw_data();
      t.set_data_location(onnx::TensorProto::EXTERNAL);
      auto add = [&](const std::string& k, const std::string& v) {
        auto* e = t.add_external_data();
        e->set_key(k);
        e->set_value(v);
      };
      add("location", data_path.filename().string());
      add("offset", std::to_string(offset));
      add("length", std::to_string(size));
      offset += size;
    }
    if (!data) throw Error("writing '" + data_path.string() + "' failed (disk full?)");
  }
  // Write to a temporary file and rename, so a crash never leaves half a model.
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot write '" + tmp + "'");
    if (m.ByteSizeLong() > static_cast<size_t>(INT_MAX))
      throw Error("model is larger than 2 GiB; export it with external data");
    if (!m.SerializeToOstream(&out)) throw Error("writing '" + tmp + "' failed (disk full?)");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

void check_with_onnx(const Graph& graph) {
  onnx::ModelProto m = to_onnx(graph);
  try {
    onnx::checker::check_model(m);
  } catch (const std::exception& e) {
    throw Error(std::string("ONNX checker: ") + e.what());
  }
}

}  // namespace oxtrain::graph
