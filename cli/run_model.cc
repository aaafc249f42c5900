#include "cli/run_model.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "base/files.h"
#include "base/text.h"
#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "graph/passes.h"
#include "runtime/session.h"

namespace fs = std::filesystem;

namespace oxtrain::cli {

namespace {

using graph::Graph;
using graph::Tensor;
using graph::Value;

std::string typed_shape(graph::DType dtype, const std::string& shape) {
  return std::string(graph::dtype_name(dtype)) + " " + shape;
}

// Names of the graph inputs, for messages: 'x', 'y'.
std::string input_names(const Graph& g) {
  std::vector<std::string> names;
  for (const Value* v : g.inputs) names.push_back(quote_name(v->name));
  return names.empty() ? std::string("none") : join_limited(names);
}

// The tensor file for each graph input, in the graph's order.
struct Binding {
  Value* input;
  std::string path;
};

std::vector<Binding> bind_specs(const Graph& g, const std::vector<std::string>& specs) {
  std::map<std::string, std::string> named;
  std::vector<std::string> positional;
  for (const std::string& spec : specs) {
    if (spec.empty()) throw Error("--inputs: an empty file name (two commas in a row?)");
    auto eq = spec.find('=');
    // NAME=PATH only where NAME is a graph input: a path may hold '=' too.
    if (eq != std::string::npos) {
      std::string name = spec.substr(0, eq);
      bool is_input = std::any_of(g.inputs.begin(), g.inputs.end(), [&](const Value* v) { return v->name == name; });
      if (is_input) {
        if (!named.emplace(name, spec.substr(eq + 1)).second)
          throw Error("graph input " + quote_name(name) + " is given twice ('" + escape_name(named[name]) +
                      "' and '" + escape_name(spec.substr(eq + 1)) + "')");
        continue;
      }
      if (!fs::exists(spec))
        throw Error("--inputs: '" + escape_name(spec) + "' is neither a file nor NAME=PATH with NAME a graph input (" +
                    input_names(g) + ")");
    }
    positional.push_back(spec);
  }
  std::vector<Binding> out;
  size_t next = 0;
  for (Value* v : g.inputs) {
    auto it = named.find(v->name);
    if (it != named.end()) {
      out.push_back({v, it->second});
    } else if (next < positional.size()) {
      out.push_back({v, positional[next++]});
    } else {
      throw Error("graph input " + quote_name(v->name) + " (" + std::to_string(out.size() + 1) + " of " +
                  std::to_string(g.inputs.size()) + ") has no tensor file; give one file per graph input, in the "
                  "graph's order (" + input_names(g) + "), or NAME=PATH");
    }
  }
  if (next < positional.size())
    throw Error(std::to_string(specs.size()) + " tensor files for " + std::to_string(g.inputs.size()) +
                " graph inputs (" + input_names(g) + "); '" + escape_name(positional[next]) +
                "' has no input left to feed");
  return out;
}

// Checks `t` against what the model declares for `v` and gives `v` the tensor's shape: fixed
// dimensions must agree, symbolic ones (the same name the same size everywhere) take the file's.
void take_shape(Value& v, const Tensor& t, const std::string& path,
                std::map<std::string, std::pair<int64_t, std::string>>& symbols) {
  const std::string what = "graph input " + quote_name(v.name) + " (from '" + escape_name(path) + "')";
  const std::string expected = typed_shape(v.dtype, v.shape_string());
  const std::string got = typed_shape(t.dtype, graph::shape_str(t.shape));
  if (v.dtype != graph::DType::undefined && v.dtype != t.dtype)
    throw Error(what + ": the model expects " + expected + " but the file holds " + got);
  if (v.rank_known) {
    if (v.shape.size() != t.shape.size())
      throw Error(what + ": the model expects " + expected + " (rank " + std::to_string(v.shape.size()) +
                  ") but the file holds " + got + " (rank " + std::to_string(t.shape.size()) + ")");
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (v.shape[i] >= 0) {
        if (v.shape[i] != t.shape[i])
          throw Error(what + ": the model expects " + expected + " but the file holds " + got + " (axis " +
                      std::to_string(i) + ": " + std::to_string(v.shape[i]) + " vs " + std::to_string(t.shape[i]) + ")");
        continue;
      }
      std::string sym = i < v.dim_names.size() ? v.dim_names[i] : "";
      if (sym.empty()) continue;
      auto [it, fresh] = symbols.emplace(sym, std::make_pair(t.shape[i], path));
      if (!fresh && it->second.first != t.shape[i])
        throw Error(what + ": symbolic dimension '" + escape_name(sym) + "' is " + std::to_string(t.shape[i]) +
                    " at axis " + std::to_string(i) + " but " + std::to_string(it->second.first) + " in '" +
                    escape_name(it->second.second) + "'");
    }
  }
  v.dtype = t.dtype;
  v.shape = t.shape;
  v.rank_known = true;
  v.dim_names.clear();
}

// Does some node read `v` when the graph is compiled (a shape, axes, anything a fold-only op
// reads)?
bool read_at_compile_time(const Value& v) {
  for (const graph::Node* n : v.consumers) {
    // Every input of an op oxtrain only folds (ConstantOfShape's shape, Range's bounds).
    const graph::OpSchema* schema = graph::find_schema(n->domain, n->op_type);
    if (schema && schema->constant_inputs_only) return true;
    graph::OpFacts facts = graph::node_facts(*n);
    for (size_t i : facts.compile_time)
      if (i < n->inputs.size() && n->inputs[i] == &v) return true;
  }
  return false;
}

}  // namespace

std::vector<NamedTensor> run_model(const std::string& model_path, const std::vector<std::string>& input_specs,
                                   const RunModelOptions& options) {
  graph::ImportOptions io;
  io.prepare = false;
  io.allow_external_data_anywhere = options.allow_external_data_anywhere;
  io.restore_exporter_rewrites = false;  // evaluate the file exactly as written
  Graph g = graph::import_onnx(model_path, io);

  // Ops without a schema are named, all of them, before any input file is read.
  std::vector<const graph::Node*> unknown;
  for (const auto& n : g.nodes())
    if (!graph::find_schema(n->domain, n->op_type)) unknown.push_back(n.get());
  if (!unknown.empty()) throw Error(model_path + ": unsupported ops: " + graph::nodes_by_op(unknown));

  std::map<std::string, std::pair<int64_t, std::string>> symbols;
  std::vector<std::pair<Value*, Tensor>> feeds;
  for (const Binding& b : bind_specs(g, input_specs)) {
    Tensor t;
    try {
      t = graph::read_tensor_file(b.path);
    } catch (const Error& e) {
      throw Error("graph input " + quote_name(b.input->name) + ": " + e.what());
    }
    take_shape(*b.input, t, b.path, symbols);
    feeds.emplace_back(b.input, std::move(t));
  }
  // Inputs read at compile time become constants holding the given values.
  for (auto& [v, t] : feeds) {
    if (!read_at_compile_time(*v)) continue;
    v->data = std::make_shared<Tensor>(std::move(t));
    v->role = graph::Role::Constant;
    g.inputs.erase(std::find(g.inputs.begin(), g.inputs.end(), v));
  }
  // What the session is fed: the inputs left (import may drop a constant once it is folded).
  std::vector<std::pair<std::string, Tensor>> fed;
  for (auto& [v, t] : feeds)
    if (!v->has_data()) fed.emplace_back(v->name, std::move(t));
  // Training-mode BatchNormalization (training_mode=1, opsets 14 and 15) as ONNX defines it:
  // normalised with the batch's statistics, its running statistics updated with the batch's
  // population variance (oxtrain's training graphs update with PyTorch's unbiased one).
  for (const auto& n : g.nodes())
    if (n->op_type == "BatchNormalization" && n->domain.empty() && n->attr_int("training_mode", 0) != 0) {
      n->op_type = "BatchNormTraining";
      n->domain = graph::kOxtrainDomain;
      n->attrs.erase("training_mode");
      n->attrs["unbiased_running_var"] = graph::Attribute{int64_t{0}};
    }
  try {
    graph::prepare(g, io);
  } catch (const Error& e) {
    throw Error(model_path + ": " + e.what());
  }

  runtime::SessionOptions so;
  so.device = options.device;
  so.threads = options.threads;
  std::vector<std::string> output_names;
  std::map<std::string, Tensor> constant_outputs;  // outputs the import computed already
  for (const Value* v : g.outputs) {
    output_names.push_back(v->name);
    if (v->has_data()) constant_outputs[v->name] = *v->data;
  }
  runtime::Session session(std::move(g), so);
  for (const auto& [name, t] : fed) session.feed(name, t);
  session.run();
  std::vector<NamedTensor> outputs;
  for (const std::string& name : output_names) {
    auto c = constant_outputs.find(name);
    outputs.push_back({name, c != constant_outputs.end() ? c->second : session.fetch(name)});
  }
  return outputs;
}

std::vector<std::string> write_outputs(const std::vector<NamedTensor>& outputs, const std::string& dir) {
  if (fs::exists(dir) && !fs::is_directory(dir))
    throw Error("--outputs: '" + escape_name(dir) + "' exists and is not a folder");
  fs::create_directories(dir);
  std::vector<std::string> paths;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& t = outputs[i].tensor;
    onnx::TensorProto proto;
    proto.set_name(outputs[i].name);
    proto.set_data_type(graph::dtype_to_onnx(t.dtype));
    for (int64_t d : t.shape) proto.add_dims(d);
    proto.set_raw_data(graph::onnx_raw_data(t));
    std::string bytes;
    std::string path = (fs::path(dir) / ("output_" + std::to_string(i) + ".pb")).string();
    if (!proto.SerializeToString(&bytes))
      throw Error("cannot serialize output " + quote_name(outputs[i].name) + " for '" + escape_name(path) + "'");
    write_file_atomic(path, bytes);
    paths.push_back(path);
  }
  return paths;
}

NamedTensor read_named_tensor(const std::string& path) {
  NamedTensor out{"", graph::read_tensor_file(path)};
  onnx::TensorProto proto;
  if (proto.ParseFromString(read_regular_file(path, INT32_MAX, "tensor file"))) out.name = proto.name();
  return out;
}

std::vector<OpSupport> supported_op_list() {
  const runtime::KernelRegistry& kernels = runtime::KernelRegistry::global();
  std::vector<OpSupport> out;
  for (const std::string& full : graph::supported_ops()) {
    const graph::OpSchema* schema = nullptr;
    OpSupport s;
    // "ai.onnx.preview.training.Momentum": the domain is everything before the last dot.
    auto dot = full.rfind('.');
    s.domain = dot == std::string::npos ? "" : full.substr(0, dot);
    s.op_type = dot == std::string::npos ? full : full.substr(dot + 1);
    schema = graph::find_schema(s.domain, s.op_type);
    if (!schema) continue;
    s.cpu = kernels.find(s.domain, s.op_type, runtime::Device::cpu) != nullptr;
    s.cuda = kernels.find(s.domain, s.op_type, runtime::Device::cuda) != nullptr;
    s.fold_only = schema->constant_inputs_only || (!s.cpu && schema->fold);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace oxtrain::cli
