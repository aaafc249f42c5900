#include "graph/onnx_io.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/unknown_field_set.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "base/checked.h"
#include "base/files.h"
#include "base/text.h"
#include "graph/exporter_rewrites.h"
#include "graph/op_helpers.h"
#include "graph/ops.h"

namespace fs = std::filesystem;

namespace oxtrain::graph {
namespace {

// Metadata key listing Graph::updates as "state<TAB>new value" lines.
constexpr const char* kUpdatesKey = "oxtrain.updates";

// protobuf parses at most 2 GiB in one message; bigger models keep their weights external.
constexpr uint64_t kMaxModelFileBytes = INT_MAX;

std::string read_model_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("model file '" + path + "' does not exist");
  if (fs::is_directory(path, ec)) throw Error("model file '" + path + "' is a directory");
  return read_regular_file(path, kMaxModelFileBytes, "model file");
}

// What tensor_from_proto needs besides the proto: where external data may come from, and how
// to name the tensor in a message.
struct TensorSource {
  const std::string& base_dir;
  const ImportOptions& options;
};

// ----- tensors -----

Shape dims_of(const onnx::TensorProto& t) { return Shape(t.dims().begin(), t.dims().end()); }

// Closes a descriptor when it goes.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

// An external data entry, parsed and checked against the file before anything is allocated.
struct ExternalRef {
  std::string location;
  uint64_t offset = 0;
  std::optional<uint64_t> length;
};

ExternalRef parse_external(const onnx::TensorProto& t, const std::string& what) {
  ExternalRef ref;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") {
      ref.location = kv.value();
    } else if (kv.key() == "offset" || kv.key() == "length") {
      auto v = parse_uint64(kv.value());
      if (!v || *v > static_cast<uint64_t>(INT64_MAX))
        throw Error(what + ": external data key '" + kv.key() + "' is '" + escape_name(kv.value()) +
                    "', not a byte count (a whole number from 0 to 2^63-1)");
      (kv.key() == "offset" ? ref.offset : ref.length.emplace()) = *v;
    }
  }
  if (ref.location.empty()) throw Error(what + " has external data without a location");
  return ref;
}

// Reads `need` bytes of external data into out (already sized), after checking that the
// location stays inside the model's folder and that the file holds the bytes.
void load_external(const onnx::TensorProto& t, const TensorSource& src, const std::string& what,
                   const Shape& shape, int64_t need, Tensor* out) {
  ExternalRef ref = parse_external(t, what);
  const std::string location = escape_name(ref.location);
  fs::path path = fs::path(src.base_dir) / ref.location;  // an absolute location stays absolute
  if (!src.options.allow_external_data_anywhere && !path_within(src.base_dir, path))
    throw Error(what + ": external data location '" + location + "' lies outside the model's folder '" +
                src.base_dir + "'; refused (pass --allow-external-data-anywhere if you trust this model)");
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw Error(what + " refers to external data file '" + path.string() +
                "', which does not exist (keep the data files beside the model)");
  if (ref.length && *ref.length != static_cast<uint64_t>(need))
    throw Error(what + " " + dims_text(shape) + " needs " + std::to_string(need) +
                " bytes but its external data entry says length " + std::to_string(*ref.length));
  std::string why;
  FdGuard file{open_regular_file(path.string(), &why)};
  if (file.fd < 0) throw Error(what + ": external data file '" + path.string() + "' cannot be read: " + why);
  struct stat st;
  if (::fstat(file.fd, &st) != 0) throw Error(what + ": cannot read external data file '" + path.string() + "'");
  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  auto end = checked_add_u64(ref.offset, static_cast<uint64_t>(need));
  if (!end || *end > file_size)
    throw Error("external data file '" + path.string() + "' has " + std::to_string(file_size) +
                " bytes but " + what + " needs " + std::to_string(need) + " bytes at offset " +
                std::to_string(ref.offset) + " (file truncated?)");
  if (!out) return;
  size_t got = 0;
  while (got < out->bytes.size()) {
    ssize_t n = ::pread(file.fd, out->bytes.data() + got, out->bytes.size() - got,
                        static_cast<off_t>(ref.offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw Error("cannot read external data of " + what + " from '" + path.string() + "'");
    got += static_cast<size_t>(n);
  }
}

// Number of values in the typed field that holds `dtype` (float_data, int64_data, ...).
int64_t typed_count(const onnx::TensorProto& t, DType dtype) {
  switch (dtype) {
    case DType::f32: return t.float_data_size();
    case DType::f64: return t.double_data_size();
    case DType::i64: return t.int64_data_size();
    case DType::u32:
    case DType::u64: return t.uint64_data_size();
    default: return t.int32_data_size();
  }
}

template <typename Field, typename T>
void copy_typed(const Field& field, Tensor& out) {
  T* dst = out.data<T>();
  for (int i = 0; i < field.size(); ++i) dst[i] = static_cast<T>(field.Get(i));
}

// `what` names the tensor in messages ("initializer 'conv.weight'"). Every size is checked
// against the bytes present (inline or in the external file) before the tensor is allocated.
Tensor tensor_from_proto(const onnx::TensorProto& t, const TensorSource& src, const std::string& what) {
  DType dtype = dtype_from_onnx(t.data_type());
  if (dtype == DType::undefined)
    throw Error(what + " has ONNX data type " + std::to_string(t.data_type()) +
                ", which oxtrain does not handle");
  if (t.has_segment()) throw Error(what + " is segmented; not supported");
  Shape shape = dims_of(t);
  const int64_t need = bytes_or_throw(shape, dtype_size(dtype), what);
  const int64_t count = need / std::max<int64_t>(1, static_cast<int64_t>(dtype_size(dtype)));
  const std::string described = what + " " + dims_text(shape) + " of " + dtype_name(dtype);
  if (const int bits = packed_bits(dtype)) {
    // Packed: 8 / bits elements per byte, the first in the lowest bits; unpacked in memory
    // (the signed types sign-extended).
    const int64_t n = count, packed = (n * bits + 7) / 8;
    if (t.data_location() == onnx::TensorProto::EXTERNAL || (!t.has_raw_data() && n > 0))
      throw Error(described + " is not inline raw_data; oxtrain reads packed " + std::to_string(bits) +
                  "-bit tensors only from raw_data");
    if (t.raw_data().size() != static_cast<uint64_t>(packed))
      throw Error(described + " needs " + std::to_string(packed) + " packed bytes but holds " +
                  std::to_string(t.raw_data().size()) + " (file truncated or corrupt?)");
    Tensor out(dtype, shape);
    const auto* raw = reinterpret_cast<const uint8_t*>(t.raw_data().data());
    const int per_byte = 8 / bits, mask = (1 << bits) - 1;
    const bool is_signed = dtype == DType::i4 || dtype == DType::i2;
    for (int64_t i = 0; i < n; ++i) {
      int v = (raw[i / per_byte] >> ((i % per_byte) * bits)) & mask;
      if (is_signed && v >= (1 << (bits - 1))) v -= 1 << bits;
      out.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(v);
    }
    return out;
  }
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    load_external(t, src, what, shape, need, nullptr);  // checks only
    Tensor out(dtype, shape);
    load_external(t, src, what, shape, need, &out);
    return out;
  }
  if (t.has_raw_data()) {
    if (t.raw_data().size() != static_cast<uint64_t>(need))
      throw Error(described + " needs " + std::to_string(need) + " bytes but holds " +
                  std::to_string(t.raw_data().size()) + " (file truncated or corrupt?)");
    Tensor out(dtype, shape);
    if (need > 0) std::memcpy(out.bytes.data(), t.raw_data().data(), out.bytes.size());
    return out;
  }
  int64_t have = typed_count(t, dtype);
  if (have != count)
    throw Error(described + " needs " + std::to_string(count) + " values but holds " +
                std::to_string(have) + " (file truncated or corrupt?)");
  Tensor out(dtype, shape);
  switch (dtype) {
    case DType::f32: copy_typed<decltype(t.float_data()), float>(t.float_data(), out); break;
    case DType::f64: copy_typed<decltype(t.double_data()), double>(t.double_data(), out); break;
    case DType::i64: copy_typed<decltype(t.int64_data()), int64_t>(t.int64_data(), out); break;
    case DType::i32: copy_typed<decltype(t.int32_data()), int32_t>(t.int32_data(), out); break;
    case DType::i8: copy_typed<decltype(t.int32_data()), int8_t>(t.int32_data(), out); break;
    case DType::i16: copy_typed<decltype(t.int32_data()), int16_t>(t.int32_data(), out); break;
    case DType::u16: copy_typed<decltype(t.int32_data()), uint16_t>(t.int32_data(), out); break;
    case DType::u32: copy_typed<decltype(t.uint64_data()), uint32_t>(t.uint64_data(), out); break;
    case DType::u64: copy_typed<decltype(t.uint64_data()), uint64_t>(t.uint64_data(), out); break;
    case DType::u8:
    case DType::boolean: copy_typed<decltype(t.int32_data()), uint8_t>(t.int32_data(), out); break;
    case DType::f16:
    case DType::bf16: copy_typed<decltype(t.int32_data()), uint16_t>(t.int32_data(), out); break;
    default: break;
  }
  return out;
}

}  // namespace

std::string onnx_raw_data(const Tensor& t) {
  const int bits = packed_bits(t.dtype);
  if (!bits) return std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  const int64_t n = t.numel();
  const int per_byte = 8 / bits, mask = (1 << bits) - 1;
  std::string out(static_cast<size_t>((n * bits + 7) / 8), '\0');
  for (int64_t i = 0; i < n; ++i)
    out[static_cast<size_t>(i / per_byte)] =
        static_cast<char>(static_cast<uint8_t>(out[static_cast<size_t>(i / per_byte)]) |
                          ((t.bytes[static_cast<size_t>(i)] & mask) << ((i % per_byte) * bits)));
  return out;
}

Tensor inline_tensor_from_proto(const onnx::TensorProto& t, const std::string& what) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL)
    throw Error(what + " refers to external data; save the tensor with its data inline");
  const std::string no_dir;
  const ImportOptions options;
  return tensor_from_proto(t, TensorSource{no_dir, options}, what);
}

namespace {

void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto& p) {
  p.set_name(name);
  p.set_data_type(dtype_to_onnx(t.dtype));
  for (int64_t d : t.shape) p.add_dims(d);
  p.set_raw_data(onnx_raw_data(t));
}

// ----- attributes -----

Attribute attribute_from_proto(const onnx::AttributeProto& a, const std::string& node_desc,
                               const TensorSource& src) {
  using A = onnx::AttributeProto;
  if (!a.ref_attr_name().empty())
    throw Error(node_desc + ": attribute '" + escape_name(a.name()) + "' refers to a function attribute");
  Attribute out;
  switch (a.type()) {
    case A::FLOAT: out.value = a.f(); break;
    case A::INT: out.value = static_cast<int64_t>(a.i()); break;
    case A::STRING: out.value = a.s(); break;
    case A::TENSOR:
      out.value = tensor_from_proto(a.t(), src, node_desc + ": attribute '" + escape_name(a.name()) + "'");
      break;
    case A::FLOATS: out.value = std::vector<float>(a.floats().begin(), a.floats().end()); break;
    case A::INTS: out.value = std::vector<int64_t>(a.ints().begin(), a.ints().end()); break;
    case A::STRINGS:
      out.value = std::vector<std::string>(a.strings().begin(), a.strings().end());
      break;
    default:
      throw Error(node_desc + ": attribute '" + escape_name(a.name()) + "' has type " +
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

void check_opset(const Graph& g) {
  int64_t v = g.opset("");
  if (v == 0) {
    // A graph of other domains' ops only (ai.onnx.preview.training's Momentum) needs none.
    for (const auto& n : g.nodes())
      if (n->domain.empty())
        throw Error("the model imports no version of the default ONNX domain (ai.onnx), which its " +
                    n->describe() + " needs");
    return;
  }
  if (v < kMinOpset || v > kMaxOpset)
    throw Error("the model uses opset " + std::to_string(v) + " of ai.onnx; oxtrain supports " +
                std::to_string(kMinOpset) + " to " + std::to_string(kMaxOpset) +
                " (convert it with onnx.version_converter)");
  check_op_versions(g);
}

// Nodes oxtrain cannot handle, gathered over the whole graph so that one message names every
// one of them.
struct Unsupported {
  std::vector<const Node*> unknown;        // no schema at all
  std::vector<const Node*> constant_only;  // folded only, but an input is computed at run time

  bool empty() const { return unknown.empty() && constant_only.empty(); }
  std::string message() const {
    std::string msg;
    if (!unknown.empty()) msg = "unsupported ops: " + nodes_by_op(unknown);
    if (!constant_only.empty())
      msg += (msg.empty() ? "" : "; ") +
             std::string("supported only on constant inputs, folded at import (not on inputs computed "
                         "at run time, nor as graph outputs): ") +
             nodes_by_op(constant_only);
    return msg;
  }
};

void resolve_batch(Graph& g, const ImportOptions& options) {
  for (Value* v : g.inputs) {
    const std::string what = "graph input '" + escape_name(v->name) + "'";
    if (!v->rank_known) throw Error(what + " has no shape; oxtrain needs input shapes");
    for (size_t i = 0; i < v->shape.size(); ++i) {
      if (i == 0) {
        if (options.batch_size) {
          if (*options.batch_size < 1)
            throw Error("--batch-size must be at least 1, got " + std::to_string(*options.batch_size));
          v->shape[0] = *options.batch_size;
        } else if (v->shape[0] < 0) {
          v->shape[0] = 1;
        }
      } else if (v->shape[i] < 0) {
        std::string sym = i < v->dim_names.size() ? v->dim_names[i] : "";
        throw Error(what + " has a symbolic dimension " +
                    (sym.empty() ? "" : "'" + escape_name(sym) + "' ") + "at axis " + std::to_string(i) +
                    " " + escape_name(v->shape_string()) + "; only the batch dimension may be symbolic");
      }
    }
    bytes_or_throw(v->shape, dtype_size(v->dtype), what);  // a shape whose size wraps
  }
}

// Input slots that never carry a gradient: BN running statistics (state), shapes, axes,
// ratios, labels.
// Initializers become parameters, state or constants by how their consumers' facts describe
// the inputs that read them (graph/ops.h, OpFacts).
void assign_roles(Graph& g) {
  for (Value* v : g.initializers()) {
    if (!is_float(v->dtype)) {
      v->role = Role::Constant;
      continue;
    }
    bool state = false, trainable = false;
    for (const Node* c : v->consumers) {
      OpFacts facts = node_facts(*c);
      for (size_t i = 0; i < c->inputs.size(); ++i) {
        if (c->inputs[i] != v) continue;
        if (std::count(facts.state.begin(), facts.state.end(), i)) state = true;
        else if (facts.trainable(i)) trainable = true;
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
  check_opset(g);
  detail::rewrite_sequence_splits(g);
  g.topological_sort();
  resolve_batch(g, options);
  assign_roles(g);

  // Declared output shapes, to check against what the graph computes.
  std::map<const Value*, Shape> declared;
  for (const Value* v : g.outputs)
    if (v->rank_known) declared[v] = v->shape;

  std::set<const Node*> folded;
  // Every unsupported node is collected in one pass; the nodes after one (whose inputs it
  // would have computed) are skipped, not reported.
  Unsupported unsupported;
  std::set<const Value*> skipped;
  auto skip = [&](const Node& n) {
    for (const Value* out : n.outputs) skipped.insert(out);
  };
  for (const auto& node_ptr : g.nodes()) {
    Node& n = *node_ptr;
    const OpSchema* schema = find_schema(n.domain, n.op_type);
    if (!schema) {
      unsupported.unknown.push_back(&n);
      skip(n);
      continue;
    }
    if (std::any_of(n.inputs.begin(), n.inputs.end(), [&](const Value* in) { return skipped.count(in); })) {
      // A skipped value is never a constant: a fold-only op is unsupported here in any case.
      if (schema->constant_inputs_only) unsupported.constant_only.push_back(&n);
      skip(n);
      continue;
    }
    if (n.op_type == "GatherND" && n.domain.empty() && n.attr_int("batch_dims", 0) != 0)
      detail::lower_gather_nd_batch_dims(g, n);
    // CastLike of a value computed at run time (stochastic depth's keep probability, cast like
    // the activations) is Cast to its second input's type, which is known by now.
    if (n.op_type == "CastLike" && n.domain.empty() && n.inputs.size() == 2 && n.input(0) && n.input(1) &&
        !(n.input(0)->has_data() && n.input(0)->role == Role::Constant) &&
        n.input(1)->dtype != DType::undefined) {
      Value* like = n.inputs[1];
      auto& users = like->consumers;
      if (auto it = std::find(users.begin(), users.end(), &n); it != users.end()) users.erase(it);
      n.inputs.resize(1);
      n.attrs["to"] = Attribute{int64_t{dtype_to_onnx(like->dtype)}};  // saturate, round_mode stay
      n.op_type = "Cast";
      schema = find_schema("", "Cast");
    }
    InferContext ctx{g, g.opset(n.domain)};
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const Value* in = n.inputs[i];
      if (in && !in->rank_known && !in->has_data())
        throw Error(n.describe() + ": input '" + escape_name(in->name) + "' has no known shape");
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
    } else if (foldable && n.outputs.size() == 1) {
      // A foldable node whose value is a graph output (Shape, Constant): folded into a
      // constant that the node, now an Identity, copies out.
      Value* out = n.outputs[0];
      Value* value = g.add_value(g.unique_name(out->name + "_folded"));
      g.set_output(&n, 0, value);
      schema->fold(n, ctx);
      for (size_t i = 0; i < n.inputs.size(); ++i) g.set_input(&n, i, nullptr);
      n.inputs.clear();
      g.set_input(&n, 0, value);
      g.set_output(&n, 0, out);
      n.op_type = "Identity";
      n.domain.clear();
      n.attrs.clear();
      find_schema("", "Identity")->infer(n, ctx);
    } else if (schema->constant_inputs_only) {
      unsupported.constant_only.push_back(&n);
      skip(n);
    } else {
      schema->infer(n, ctx);
    }
  }
  if (!unsupported.empty()) throw Error(unsupported.message());
  g.remove_nodes_if([&](const Node& n) { return folded.count(&n) != 0; });
  g.remove_dead_nodes();
  g.prune_values();

  for (const auto& [v, shape] : declared) {
    bool agree = shape.size() == v->shape.size();
    for (size_t i = 0; agree && i < shape.size(); ++i)
      if (shape[i] >= 0 && shape[i] != v->shape[i] && !(i == 0 && options.batch_size))
        agree = false;
    if (!agree)
      throw Error("graph output '" + escape_name(v->name) + "' is declared as " + shape_str(shape) +
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
  const ExporterRewrites rewrites = read_exporter_rewrites(model);
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

  TensorSource src{base_dir, options};
  std::set<std::string> initializer_names;
  std::vector<std::pair<Value*, Tensor>> lifted;
  for (const auto& t : gp.initializer()) {
    if (t.name().empty()) throw Error("an initializer has no name");
    const std::string what = "initializer '" + escape_name(t.name()) + "'";
    if (!initializer_names.insert(t.name()).second) throw Error(what + " is defined twice");
    if (rewrites.lifted_constants.count(t.name())) {
      // A constant the exporter lifted out of the code: a Constant node (added after the
      // file's nodes, which keep their indices), so it never trains.
      lifted.push_back({g.add_value(t.name()), tensor_from_proto(t, src, what)});
      continue;
    }
    g.add_initializer(t.name(), tensor_from_proto(t, src, what), Role::Parameter);
  }
  for (const auto& info : gp.input()) {
    if (initializer_names.count(info.name())) continue;  // IR < 4 lists initializers as inputs
    if (g.find_value(info.name()))
      throw Error("graph input '" + escape_name(info.name()) + "' is listed twice");
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
        throw Error(escape_name(np.op_type()) + " '" + escape_name(name) + "': output '" + escape_name(out) +
                    "' is already defined by another node, an input or an initializer");
      g.add_value(out);
    }
  }
  for (int i = 0; i < gp.node_size(); ++i) {
    const auto& np = gp.node(i);
    std::string desc = escape_name(np.op_type()) + " '" + escape_name(node_names[i]) + "'";
    std::vector<Value*> ins, outs;
    for (const auto& in : np.input()) {
      if (in.empty()) {
        ins.push_back(nullptr);
        continue;
      }
      Value* v = g.find_value(in);
      if (!v)
        throw Error(desc + ": input '" + escape_name(in) +
                    "' is not produced by any node, initializer or graph input "
                    "(file truncated or corrupt?)");
      ins.push_back(v);
    }
    for (const auto& out : np.output()) outs.push_back(out.empty() ? nullptr : g.value(out));
    while (!outs.empty() && !outs.back()) outs.pop_back();
    Node* n = g.add_node(np.op_type(), ins, outs, node_names[i], np.domain());
    for (const auto& a : np.attribute())
      n->attrs[a.name()] = attribute_from_proto(a, desc, src);
  }
  for (auto& [v, tensor] : lifted)
    g.add_node("Constant", {}, {v}, v->name + "_lifted")->attrs["value"] = Attribute{std::move(tensor)};
  for (const auto& info : gp.output()) {
    Value* v = g.find_value(info.name());
    if (!v) throw Error("graph output '" + escape_name(info.name()) + "' is not produced by any node");
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
  if (options.restore_exporter_rewrites) restore_exporter_rewrites(g, rewrites);
  else keep_exporter_rewrites(g, rewrites);
  if (options.prepare) prepare(g, options);
  return g;
}

std::string folded_batchnorm_warning(const Graph& graph, const std::string& source) {
  const std::string keep = "torch.onnx.export(model, x, f, dynamo=True, optimize=False), or "
                           "torch.onnx.export(model.train(), x, f, dynamo=False, "
                           "training=torch.onnx.TrainingMode.TRAINING)";
  const std::string unrestored =
      graph.unrestored_reason.empty() ? "" : " oxtrain cannot put it back: " + graph.unrestored_reason + ".";
  std::string others;
  for (const std::string* part :
       {&graph.removed_biases, &graph.merged_parameters, &graph.derived_parameters, &graph.missing_parameters})
    if (!part->empty()) others += (others.empty() ? "" : "; ") + *part;
  if (!graph.folded_batchnorm.empty())
    return "'" + source + "': its exporter folded batch norm into the convolutions (" + graph.folded_batchnorm +
           (others.empty() ? "" : "; " + others) +
           "). Folding is exact for inference only; trained like this the model lacks those "
           "normalisations and usually diverges within a few steps." + unrestored +
           " To train it, export it with batch norm kept: " + keep;
  if (!others.empty())
    return "'" + source + "': its exporter rewrote it for inference (" + others +
           "); those parameters cannot train as defined." + unrestored +
           " To train the model as defined, export it with " + keep;
  return "";
}

std::string restored_rewrites_note(const Graph& graph, const std::string& source) {
  if (graph.restored_rewrites.empty()) return "";
  return "'" + source + "': its exporter rewrote the model for inference; oxtrain put back " +
         graph.restored_rewrites + " as the export's metadata records them" +
         (graph.derived_parameters.empty() ? ", so it trains the model as defined" : "") +
         " (--as-exported trains the file as written)";
}

Graph import_onnx(const std::string& path, const ImportOptions& options) {
  std::string bytes = read_model_file(path);
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
  // Both files go through AtomicFile: a crash leaves the old model (and data) or the new ones,
  // never half of one. The data file is committed first so the new model never points into an
  // old one.
  std::optional<AtomicFile> data;
  if (options.external_data_threshold > 0) {
    std::string data_path = path + ".data";
    uint64_t offset = 0;
    for (auto& t : *m.mutable_graph()->mutable_initializer()) {
      uint64_t size = t.raw_data().size();
      if (static_cast<int64_t>(size) < options.external_data_threshold) continue;
      if (!data) data.emplace(data_path);
      data->write(t.raw_data().data(), size);
      t.clear_raw_data();
      t.set_data_location(onnx::TensorProto::EXTERNAL);
      auto add = [&](const std::string& k, const std::string& v) {
        auto* e = t.add_external_data();
        e->set_key(k);
        e->set_value(v);
      };
      add("location", fs::path(data_path).filename().string());
      add("offset", std::to_string(offset));
      add("length", std::to_string(size));
      offset += size;
    }
  }
  if (m.ByteSizeLong() > static_cast<size_t>(INT_MAX))
    throw Error("model is larger than 2 GiB; export it with external data");
  std::string bytes;
  if (!m.SerializeToString(&bytes)) throw Error("cannot serialize the model for '" + path + "'");
  AtomicFile model(path);
  model.write(bytes);
  if (data) data->commit();
  model.commit();
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
