#include "graph/exporter_rewrites.h"

#include <google/protobuf/unknown_field_set.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

#include "base/text.h"
#include "graph/ops.h"

namespace oxtrain::graph {
namespace {

constexpr const char* kRuleKey = "pkg.onnxscript.rewriter.rule_name";
constexpr const char* kFxNodeKey = "pkg.torch.onnx.fx_node";
constexpr const char* kScopesKey = "pkg.torch.onnx.name_scopes";

constexpr const char* kSignatureKey = "pkg.torch.export.ExportedProgram.graph_signature";

// A message's metadata_props (NodeProto field 9, GraphProto field 16, IR 10), read from the
// unknown fields: the ONNX library oxtrain builds against may predate the field.
std::map<std::string, std::string> metadata(const google::protobuf::Message& message, int field) {
  std::map<std::string, std::string> out;
  const google::protobuf::UnknownFieldSet& unknown = message.GetReflection()->GetUnknownFields(message);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const google::protobuf::UnknownField& f = unknown.field(i);
    if (f.number() != field || f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    onnx::StringStringEntryProto entry;
    if (entry.ParseFromString(f.length_delimited())) out[entry.key()] = entry.value();
  }
  return out;
}
std::map<std::string, std::string> node_metadata(const onnx::NodeProto& node) { return metadata(node, 9); }

// PyTorch's parameters by name, from the exported program's graph signature that the dynamo
// exporter keeps in the graph's metadata: under "# inputs", lines such as
// "p_features_0_bias: PARAMETER target='features.0.bias'". Empty without it.
std::vector<std::string> signature_parameters(const onnx::GraphProto& graph) {
  std::vector<std::string> out;
  const std::map<std::string, std::string> meta = metadata(graph, 16);
  auto it = meta.find(kSignatureKey);
  if (it == meta.end()) return out;
  const std::string marker = ": PARAMETER target='";
  bool inputs = false;
  size_t begin = 0;
  while (begin < it->second.size()) {
    size_t end = it->second.find('\n', begin);
    if (end == std::string::npos) end = it->second.size();
    const std::string line = it->second.substr(begin, end - begin);
    begin = end + 1;
    if (line.rfind("# ", 0) == 0) inputs = line == "# inputs";
    size_t at = line.find(marker);
    if (!inputs || at == std::string::npos) continue;
    size_t close = line.find('\'', at + marker.size());
    if (close != std::string::npos) out.push_back(line.substr(at + marker.size(), close - at - marker.size()));
  }
  return out;
}

bool is_identifier_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// torch.export's placeholder for a parameter ("p") or buffer ("b"): the prefix and the name
// with every character that is not a letter, digit or '_' as '_' ("layer1.0.bn1.weight" is
// "%p_layer1_0_bn1_weight", "block1-0.proj" "block1_0_proj").
std::string placeholder(const std::string& prefix, const std::string& name) {
  std::string out = prefix + "_" + name;
  for (char& c : out)
    if (!is_identifier_char(c)) c = '_';
  return "%" + out;
}

// `text` mentions `word` as a whole identifier.
bool mentions(const std::string& text, const std::string& word) {
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
    size_t end = at + word.size();
    if (end == text.size() || !is_identifier_char(text[end])) return true;
  }
  return false;
}

// The module an FX node ran in: the last scope before the op's own, from a Python list repr
// such as "['', 'layer1', 'layer1.0', 'layer1.0.bn1', '_native_batch_norm_legit_functional']".
std::string module_of(const std::string& scopes) {
  std::vector<std::string> items;
  for (size_t at = 0; (at = scopes.find('\'', at)) != std::string::npos;) {
    size_t end = scopes.find('\'', at + 1);
    if (end == std::string::npos) break;
    items.push_back(scopes.substr(at + 1, end - at - 1));
    at = end + 1;
  }
  return items.size() >= 2 ? items[items.size() - 2] : std::string();
}

// The FX node's target ("torch.ops.aten.conv2d.default") and its positional arguments, split
// at the top level: "%x", "%p_conv_weight", "[16, 16]", "True", "0.1".
struct FxCall {
  std::string target;
  std::vector<std::string> args;
};

FxCall parse_fx_call(const std::string& fx) {
  FxCall call;
  size_t t = fx.find("target=");
  if (t == std::string::npos) return call;
  size_t t_end = fx.find(']', t);
  if (t_end == std::string::npos) return call;
  call.target = fx.substr(t + 7, t_end - t - 7);
  size_t a = fx.find("args = (", t_end);
  if (a == std::string::npos) return call;
  int depth = 0;
  std::string current;
  for (size_t i = a + 8; i < fx.size(); ++i) {
    char c = fx[i];
    if (depth == 0 && (c == ',' || c == ')')) {
      size_t b = current.find_first_not_of(' ');
      call.args.push_back(b == std::string::npos ? std::string() : current.substr(b));
      current.clear();
      if (c == ')') break;
      continue;
    }
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    current += c;
  }
  return call;
}

bool parse_number(const std::string& text, double& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  out = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(out);
}

// The batch norm a fused Conv's metadata records, or why it does not say.
std::string read_folded_norm(const std::map<std::string, std::string>& meta, ExporterRewrites::FoldedNorm& norm) {
  auto fx = meta.find(kFxNodeKey);
  auto scopes = meta.find(kScopesKey);
  if (fx == meta.end() || scopes == meta.end()) return "the node metadata that records it was stripped";
  FxCall call = parse_fx_call(fx->second);
  norm.module = module_of(scopes->second);
  if (norm.module.empty() || call.target.find("batch_norm") == std::string::npos || call.args.size() < 7)
    return "its metadata records no batch norm call";
  if (call.args[1] != placeholder("p", norm.module + ".weight") ||
      call.args[2] != placeholder("p", norm.module + ".bias") ||
      call.args[3] != placeholder("b", norm.module + ".running_mean") ||
      call.args[4] != placeholder("b", norm.module + ".running_var"))
    return "its batch norm '" + escape_name(norm.module) +
           "' has no affine parameters or running statistics of its own";
  // _native_batch_norm_legit_*(input, w, b, mean, var, [training,] momentum, eps);
  // batch_norm(input, w, b, mean, var, training, momentum, eps, cudnn_enabled).
  size_t m = call.target.find("_native_batch_norm_legit") != std::string::npos ? call.args.size() - 2 : 6;
  if (m + 1 >= call.args.size() || !parse_number(call.args[m], norm.momentum) ||
      !parse_number(call.args[m + 1], norm.epsilon) || norm.momentum < 0 || norm.momentum > 1 || norm.epsilon < 0)
    return "its metadata gives no momentum and epsilon";
  return "";
}

// The bias a Conv's or Gemm's metadata says it had before RemoveOptionalBiasFrom<Op>: "" with
// `bias.name` set, "none" when the layer had no bias (the exporter writes a zero one for every
// Conv), or why the metadata does not say.
std::string read_dropped_bias(const std::map<std::string, std::string>& meta, const std::string& weight,
                              ExporterRewrites::DroppedBias& bias) {
  auto fx = meta.find(kFxNodeKey);
  auto scopes = meta.find(kScopesKey);
  if (fx == meta.end() || scopes == meta.end()) return "the node metadata that records it was stripped";
  FxCall call = parse_fx_call(fx->second);
  bool layer = call.target.find("conv") != std::string::npos || call.target.find("linear") != std::string::npos;
  if (!layer || call.args.size() < 2) return "its metadata records no convolution or linear layer";
  if (call.args.size() == 2 || call.args[2] == "None") return "none";
  // The weight's own name ("...out_proj.weight", for a call that is not a module's), then the
  // module the call ran in.
  const std::string suffix = ".weight";
  std::vector<std::string> names;
  if (weight.size() > suffix.size() && weight.compare(weight.size() - suffix.size(), suffix.size(), suffix) == 0)
    names.push_back(weight.substr(0, weight.size() - suffix.size()) + ".bias");
  if (std::string module = module_of(scopes->second); !module.empty()) names.push_back(module + ".bias");
  for (const std::string& name : names)
    if (call.args[2] == placeholder("p", name)) {
      bias.name = name;
      return "";
    }
  return "its metadata names the bias " + call.args[2] + ", which is not the layer's";
}

// The parameter or buffer an op's input slot holds, by PyTorch's names for the module's
// tensors: BatchNormalization's scale, bias, mean and variance, LayerNormalization's scale
// and bias. "" for other ops and slots.
std::string slot_name(const std::string& op, int slot, const std::string& module) {
  static const char* const kBatchNorm[] = {"weight", "bias", "running_mean", "running_var"};
  static const char* const kLayerNorm[] = {"weight", "bias"};
  if (module.empty()) return "";
  if (op == "BatchNormalization" && slot >= 1 && slot <= 4) return module + "." + kBatchNorm[slot - 1];
  if (op == "LayerNormalization" && slot >= 1 && slot <= 2) return module + "." + kLayerNorm[slot - 1];
  return "";
}

// For a node whose FX node read a parameter that the optimizer merged with an equal one:
// its own name, from the module the call ran in and the merged parameter's last component
// ("features.1.0.layer_scale"); "" without a module.
std::string own_name(const std::map<std::string, std::string>& meta, const std::string& merged) {
  size_t dot = merged.rfind('.');
  std::string module = module_of(meta.at(kScopesKey));
  if (dot == std::string::npos || module.empty()) return "";
  return module + merged.substr(dot);
}

std::string count_convs(int k) { return std::to_string(k) + (k == 1 ? " Conv" : " Convs"); }
std::string count_layers(int k) { return std::to_string(k) + (k == 1 ? " Conv or Gemm" : " Convs or Gemms"); }

}  // namespace

ExporterRewrites read_exporter_rewrites(const onnx::ModelProto& model) {
  ExporterRewrites out;
  if (model.producer_name() != "pytorch") return out;
  const onnx::GraphProto& g = model.graph();
  std::set<std::string> initializers;
  for (const auto& t : g.initializer()) initializers.insert(t.name());
  bool has_batchnorm = false;
  for (const auto& n : g.node()) has_batchnorm |= n.op_type() == "BatchNormalization";

  std::vector<std::map<std::string, std::string>> metas;
  std::vector<std::string> fx_nodes;
  for (const auto& n : g.node()) {
    metas.push_back(node_metadata(n));
    if (auto fx = metas.back().find(kFxNodeKey); fx != metas.back().end()) fx_nodes.push_back(fx->second);
  }
  // A name the FX nodes read as a parameter or a buffer placeholder (every "%p_..." and
  // "%b_..." token of every FX node, collected once).
  std::set<std::string> tokens;
  for (const std::string& fx : fx_nodes)
    for (size_t at = fx.find('%'); at != std::string::npos; at = fx.find('%', at + 1)) {
      if (fx.compare(at + 1, 2, "p_") != 0 && fx.compare(at + 1, 2, "b_") != 0) continue;
      size_t end = at + 1;
      while (end < fx.size() && is_identifier_char(fx[end])) ++end;
      tokens.insert(fx.substr(at, end - at));
    }
  auto read_as_placeholder = [&](const std::string& name) {
    return tokens.count(placeholder("p", name)) != 0 || tokens.count(placeholder("b", name)) != 0;
  };
  std::set<std::string> present;  // the placeholders of the initializers there are
  for (const auto& t : g.initializer())
    if (read_as_placeholder(t.name())) {
      out.placeholders.insert(t.name());
      present.insert(placeholder("p", t.name()));
      present.insert(placeholder("b", t.name()));
    }
  // Initializers that hold a parameter in another form: read by a node a rule rewrote (its
  // metadata is another node's: a folded Conv's weight), or by a node whose FX node read a
  // parameter the file no longer has (a Linear's weight, transposed for MatMul).
  for (int i = 0; i < g.node_size(); ++i) {
    const std::map<std::string, std::string>& meta = metas[i];
    bool holds = meta.count(kRuleKey) != 0;
    if (auto fx = meta.find(kFxNodeKey); !holds && fx != meta.end()) {
      const std::string& text = fx->second;
      for (size_t at = text.find("%p_"); !holds && at != std::string::npos; at = text.find("%p_", at + 1)) {
        size_t end = at + 1;
        while (end < text.size() && is_identifier_char(text[end])) ++end;
        holds = !present.count(text.substr(at, end - at));
      }
    }
    if (holds)
      for (const auto& in : g.node(i).input())
        if (initializers.count(in)) out.parameter_forms.insert(in);
  }

  int by_rule = 0, by_name = 0, anonymous = 0, bias_removed = 0, merged = 0;
  std::string example, bias_example, merged_example;
  for (int i = 0; i < g.node_size(); ++i) {
    const onnx::NodeProto& n = g.node(i);
    std::map<std::string, std::string>& meta = metas[i];
    const std::string node_name = n.name().empty() ? n.op_type() + " " + std::to_string(i) : n.name();
    // Parameters and buffers the optimizer merged because they were equal at export (every
    // LayerNorm's ones, every batch norm's zero mean): a node no rule rewrote reads one its
    // FX node does not name. Each read gets its own copy back, named as the FX node names it.
    if (meta.count(kFxNodeKey) && meta.count(kScopesKey) && !meta.count(kRuleKey)) {
      const std::string& fx = meta[kFxNodeKey];
      const std::string module = module_of(meta[kScopesKey]);
      for (int k = 0; k < n.input_size(); ++k) {
        const std::string& in = n.input(k);
        if (!out.placeholders.count(in)) continue;
        // Where the slot says which parameter it is (a batch norm reads its bias and its zero
        // running mean from one merged tensor), the module's; otherwise any the FX node names.
        std::string name = slot_name(n.op_type(), k, module);
        if (name.empty() ? mentions(fx, placeholder("p", in)) || mentions(fx, placeholder("b", in)) : name == in)
          continue;
        if (merged++ == 0)
          merged_example = "'" + escape_name(node_name) + "' reads '" + escape_name(in) + "'";
        if (name.empty()) name = own_name(meta, in);
        if (!name.empty() && (mentions(fx, placeholder("p", name)) || mentions(fx, placeholder("b", name))))
          out.unmerged.push_back({i, k, name});
        else if (out.unrecorded.empty())
          out.unrecorded = "'" + escape_name(node_name) + "' reads the merged '" + escape_name(in) +
                           "', and its metadata does not say in place of which parameter";
      }
    }
    const bool gemm = n.op_type() == "Gemm" && n.input_size() == 2;
    if ((n.op_type() != "Conv" && !gemm) || n.input_size() < 2) continue;
    const std::string& w = n.input(1);
    const std::string b = n.input_size() > 2 ? n.input(2) : std::string();
    const std::string name = n.name().empty() ? w : n.name();
    const std::string rules = meta.count(kRuleKey) ? meta[kRuleKey] : std::string();
    bool folded = false;
    if (rules.find("FuseBatchNorm") != std::string::npos) {
      ++by_rule;
      folded = true;
      ExporterRewrites::FoldedNorm norm;
      norm.node = i;
      std::string why = read_folded_norm(meta, norm);
      if (why.empty()) out.norms.push_back(norm);
      else if (out.unrecorded.empty()) out.unrecorded = "for '" + escape_name(name) + "', " + why;
    } else if (!b.empty() && initializers.count(b) && b == w + "_bias") {
      ++by_name;
      folded = true;
    } else if (!has_batchnorm && initializers.count(w) && initializers.count(b) &&
               w.rfind("onnx::Conv_", 0) == 0 && b.rfind("onnx::Conv_", 0) == 0) {
      ++anonymous;
      folded = true;
    } else if (rules.find("RemoveOptionalBiasFromConv") != std::string::npos ||
               (gemm && rules.find("RemoveOptionalBiasFromGemm") != std::string::npos)) {
      ++bias_removed;
      ExporterRewrites::DroppedBias bias;
      bias.node = i;
      std::string why = read_dropped_bias(meta, w, bias);
      if (why == "none") {
        --bias_removed;  // a zero bias the exporter wrote itself: nothing was lost
      } else if (why.empty()) {
        out.biases.push_back(bias);
        if (bias_example.empty()) bias_example = name;
      } else {
        if (bias_example.empty()) bias_example = name;
        if (out.unrecorded.empty()) out.unrecorded = "for '" + escape_name(name) + "', " + why;
      }
    }
    if (folded && example.empty()) example = name;
  }
  // What the exported program's signature says the model has: a Conv with a bias of its own
  // before a folded batch norm (VGG's), which the rewrites drop without a record in the node
  // metadata (the Conv's FX node is gone); then any parameter the file holds in no form.
  const std::vector<std::string> signature = signature_parameters(g);
  const std::set<std::string> signed_names(signature.begin(), signature.end());
  auto held = [&](const std::string& name) {
    return initializers.count(name) || tokens.count(placeholder("p", name));
  };
  std::set<std::string> restored_biases;
  for (auto& norm : out.norms) {
    const std::string& w = g.node(norm.node).input(1);
    const std::string suffix = ".weight";
    if (w.size() <= suffix.size() || w.compare(w.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string bias = w.substr(0, w.size() - suffix.size()) + ".bias";
    if (signed_names.count(bias) && !held(bias) && restored_biases.insert(bias).second) norm.conv_bias = bias;
  }
  for (const std::string& name : signature)
    if (!held(name) && !restored_biases.count(name)) out.unaccounted.push_back(name);
  // One parameter missing, and one float initializer named after an FX node (not a parameter)
  // with more than one row: the parameter expanded along its first dimension and folded into
  // a constant (ViT's class token, expanded to the export's batch). The values decide
  // (check_restorable): every row must be the same.
  if (out.unaccounted.size() == 1) {
    std::vector<std::string> candidates;
    for (const auto& t : g.initializer()) {
      if (signed_names.count(t.name()) || out.placeholders.count(t.name()) || t.dims_size() < 2 || t.dims(0) < 2)
        continue;
      if (!is_float(dtype_from_onnx(t.data_type()))) continue;
      const std::string fx_name = "%" + t.name();
      if (std::any_of(fx_nodes.begin(), fx_nodes.end(), [&](const std::string& fx) { return mentions(fx, fx_name); }))
        candidates.push_back(t.name());
    }
    if (candidates.size() == 1) {
      out.expanded.push_back({candidates[0], out.unaccounted[0]});
      out.unaccounted.clear();
    }
  }

  // Linear weights transposed for MatMul (a Linear on more than two dimensions): the MatMul's
  // FX node is aten.linear, whose weight argument is a signature parameter the file lacks, and
  // its B is an anonymous 2-D initializer. One name per initializer, one initializer per name.
  {
    std::map<std::string, std::string> by_placeholder;  // "%p_x_weight" -> "x.weight"
    for (const std::string& name : signature)
      if (!initializers.count(name)) by_placeholder[placeholder("p", name)] = name;
    std::map<std::string, std::string> found;  // initializer -> parameter
    std::set<std::string> conflicting;
    for (int i = 0; i < g.node_size(); ++i) {
      const onnx::NodeProto& n = g.node(i);
      if (n.op_type() != "MatMul" || n.input_size() != 2 || !initializers.count(n.input(1)) ||
          signed_names.count(n.input(1)) || out.placeholders.count(n.input(1)))
        continue;
      auto fx = metas[i].find(kFxNodeKey);
      if (fx == metas[i].end()) continue;
      FxCall call = parse_fx_call(fx->second);
      if (call.target.find("aten.linear") == std::string::npos || call.args.size() < 2) continue;
      auto name = by_placeholder.find(call.args[1]);
      if (name == by_placeholder.end()) continue;
      auto [it, inserted] = found.insert({n.input(1), name->second});
      if (!inserted && it->second != name->second) conflicting.insert(n.input(1));
    }
    std::set<std::string> names;
    for (const auto& [init, name] : found)
      if (!conflicting.count(init) && names.insert(name).second) out.transposed.push_back({init, name});
  }

  if (by_rule > 0)
    out.folded_batchnorm = count_convs(by_rule) + " carry batch norm folded in by the dynamo exporter (rewrite rule "
                           "FuseBatchNormIntoConv), e.g. '" + escape_name(example) + "'";
  else if (by_name > 0)
    out.folded_batchnorm = count_convs(by_name) + " have a bias named after the weight ('<weight>_bias'), as the "
                           "dynamo exporter names the batch norm it folds in, e.g. '" + escape_name(example) + "'";
  else if (anonymous > 0)
    out.folded_batchnorm = count_convs(anonymous) + " have anonymous weights and biases ('onnx::Conv_<n>'), as the "
                           "TorchScript exporter in eval mode writes the batch norm it folds in, e.g. '" +
                           escape_name(example) + "'";
  if (bias_removed > 0)
    out.removed_biases = count_layers(bias_removed) + " lost their bias, zero when exported (rewrite rule "
                         "RemoveOptionalBiasFrom<Op>), e.g. '" + escape_name(bias_example) + "'";
  if (merged > 0)
    out.merged_parameters = std::to_string(merged) + " reads of parameters or statistics take another one that was "
                            "equal at export (the optimizer merged them), e.g. " + merged_example;
  if ((by_name > 0 || anonymous > 0) && out.unrecorded.empty())
    out.unrecorded = "no node metadata records the batch norms that were folded";

  // Lifted constants: only where the FX nodes are there to say what the parameters are.
  if (!fx_nodes.empty()) {
    for (const auto& t : g.initializer()) {
      int64_t numel = 1;
      for (int64_t d : t.dims()) numel *= d;
      DType dtype = dtype_from_onnx(t.data_type());
      if (numel <= 1 && is_float(dtype) && !out.placeholders.count(t.name())) out.lifted_constants.insert(t.name());
    }
  }
  return out;
}

namespace {

// Tensors the optimizer computed from parameters (a transposed weight, a class token expanded
// to the batch): float initializers in trainable slots that no FX node read as a parameter.
// `restored`: the parameters import put back, PyTorch's own.
void note_derived_parameters(Graph& graph, const ExporterRewrites& rewrites,
                             const std::set<std::string>& restored = {}) {
  graph.derived_parameters.clear();
  if (rewrites.placeholders.empty()) return;
  int derived = 0;
  std::string example;
  for (const Value* v : graph.initializers()) {
    if (!is_float(v->dtype) || rewrites.placeholders.count(v->name) || rewrites.parameter_forms.count(v->name) ||
        restored.count(v->name))
      continue;
    bool trainable = false;
    for (const Node* c : v->consumers) {
      OpFacts facts = node_facts(*c);
      for (size_t i = 0; i < c->inputs.size(); ++i)
        if (c->inputs[i] == v && facts.trainable(i) && facts.state.end() == std::find(facts.state.begin(), facts.state.end(), i))
          trainable = true;
    }
    if (!trainable) continue;
    if (derived++ == 0) example = v->name;
  }
  if (derived > 0)
    graph.derived_parameters = std::to_string(derived) + (derived == 1 ? " tensor" : " tensors") +
                               " the optimizer computed from parameters (e.g. '" + escape_name(example) +
                               "') " + (derived == 1 ? "trains as a parameter of its own" : "train as parameters of their own");
}

}  // namespace

void keep_exporter_rewrites(Graph& graph, const ExporterRewrites& rewrites) {
  graph.folded_batchnorm = rewrites.folded_batchnorm;
  graph.removed_biases = rewrites.removed_biases;
  graph.merged_parameters = rewrites.merged_parameters;
  graph.restored_rewrites.clear();
  graph.derived_parameters.clear();
  graph.missing_parameters.clear();
  if (!rewrites.unaccounted.empty()) {
    std::vector<std::string> names;
    for (const std::string& n : rewrites.unaccounted) names.push_back(quote_name(n));
    const size_t k = rewrites.unaccounted.size();
    graph.missing_parameters = std::to_string(k) + (k == 1 ? " parameter" : " parameters") +
                               " of the exported program's signature the file holds in no form (" +
                               join_limited(names, 120) + ")";
  }
  note_derived_parameters(graph, rewrites);
}

namespace {

bool all_zero(const Tensor& t) {
  return std::all_of(t.bytes.begin(), t.bytes.end(), [](uint8_t b) { return b == 0; });
}

// A float32 or float64 weight [K, ...] with an output channel whose weights are all zero: its
// batch norm's scale was zero (zero_init_residual), which folding cannot be undone from.
int64_t zero_channel(const Tensor& w) {
  const int64_t k = w.shape.empty() ? 0 : w.shape[0];
  const int64_t per = k > 0 ? w.numel() / k : 0;
  auto value = [&](int64_t i) {
    return w.dtype == DType::f32 ? static_cast<double>(w.data<float>()[i]) : w.data<double>()[i];
  };
  for (int64_t c = 0; c < k; ++c) {
    bool zero = true;  // -0.0 is zero too: values, not bytes
    for (int64_t i = 0; zero && i < per; ++i) zero = value(c * per + i) == 0.0;
    if (zero) return c;
  }
  return -1;
}

Tensor filled(DType dtype, int64_t n, double value) {
  Tensor t(dtype, {n});
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == DType::f32) t.data<float>()[i] = static_cast<float>(value);
    else t.data<double>()[i] = value;
  }
  return t;
}

// The Conv (or Gemm) node `index` of the file with a float32/float64 weight initializer that
// only it reads, or why not.
std::string check_conv(const Graph& graph, int index, Node*& conv, bool gemm_too = false) {
  const auto& nodes = graph.nodes();
  if (index < 0 || static_cast<size_t>(index) >= nodes.size() ||
      !(nodes[index]->op_type == "Conv" || (gemm_too && nodes[index]->op_type == "Gemm")))
    return "node " + std::to_string(index) + " is not the layer the metadata names";
  conv = nodes[index].get();
  const Value* w = conv->input(1);
  const size_t rank = conv->op_type == "Gemm" ? 2 : 3;
  if (!w || !w->has_data() || w->producer || (w->data->dtype != DType::f32 && w->data->dtype != DType::f64) ||
      w->data->shape.size() < rank || (rank == 2 && w->data->shape.size() != 2))
    return conv->describe() + " has no float32 or float64 weight initializer";
  if (w->consumers.size() != 1) return conv->describe() + " shares its weight '" + escape_name(w->name) + "'";
  return "";
}

// Why the rewrites cannot be put back from the graph's values ("" when they can).
std::string check_restorable(const Graph& graph, const ExporterRewrites& r) {
  if (!r.unrecorded.empty()) return r.unrecorded;
  std::set<std::string> names;
  auto fresh_name = [&](const std::string& name) {
    return !graph.find_value(name) && names.insert(name).second;
  };
  for (const auto& norm : r.norms) {
    Node* conv = nullptr;
    if (std::string why = check_conv(graph, norm.node, conv); !why.empty()) return why;
    const Value* b = conv->input(2);
    if (b && (!b->has_data() || b->producer || !all_zero(*b->data)))
      return conv->describe() + " has a nonzero bias, so its batch norm was not freshly initialised "
             "(trained statistics and scales, which folding mixed into the weights)";
    if (int64_t c = zero_channel(*conv->input(1)->data); c >= 0)
      return conv->describe() + " has all-zero weights for output channel " + std::to_string(c) +
             ": its batch norm's scale was zero, so the weights it scaled are lost";
    for (const char* p : {".weight", ".bias", ".running_mean", ".running_var"})
      if (!fresh_name(norm.module + p)) return "'" + escape_name(norm.module + p) + "' is already in the graph";
    if (!norm.conv_bias.empty() && !fresh_name(norm.conv_bias))
      return "'" + escape_name(norm.conv_bias) + "' is already in the graph";
  }
  for (const auto& t : r.transposed) {
    const Value* v = graph.find_value(t.initializer);
    if (!v || !v->has_data() || v->producer || !is_float(v->data->dtype) || v->data->shape.size() != 2)
      return "'" + escape_name(t.initializer) + "' (in place of the Linear weight '" + escape_name(t.name) +
             "') is not a 2-D float initializer";
    if (!fresh_name(t.name)) return "'" + escape_name(t.name) + "' is already in the graph";
  }
  for (const auto& e : r.expanded) {
    const Value* v = graph.find_value(e.initializer);
    if (!v || !v->has_data() || v->producer || !is_float(v->data->dtype) || v->data->shape.size() < 2)
      return "'" + escape_name(e.initializer) + "' is not a float initializer";
    const Tensor& t = *v->data;
    const size_t row = t.bytes.size() / static_cast<size_t>(t.shape[0]);
    for (int64_t i = 1; i < t.shape[0]; ++i)
      if (std::memcmp(t.bytes.data(), t.bytes.data() + i * row, row) != 0)
        return "'" + escape_name(e.initializer) + "' (in place of the parameter '" + escape_name(e.name) +
               "') differs along its first dimension, so it is not that parameter expanded";
    if (!fresh_name(e.name)) return "'" + escape_name(e.name) + "' is already in the graph";
  }
  for (const auto& bias : r.biases) {
    Node* conv = nullptr;
    if (std::string why = check_conv(graph, bias.node, conv, true); !why.empty()) return why;
    if (conv->input(2)) return conv->describe() + " has a bias already";
    if (!fresh_name(bias.name)) return "'" + escape_name(bias.name) + "' is already in the graph";
  }
  std::set<std::string> copies;
  for (const auto& read : r.unmerged) {
    const auto& nodes = graph.nodes();
    const Value* v = static_cast<size_t>(read.node) < nodes.size() ? nodes[read.node]->input(read.input) : nullptr;
    if (!v || !v->has_data() || v->producer) return "a merged parameter is not an initializer";
    // One copy per name: a module called twice reads its parameter twice.
    if (copies.insert(read.name).second && !fresh_name(read.name))
      return "'" + escape_name(read.name) + "' is already in the graph";
  }
  return "";
}

}  // namespace

void restore_exporter_rewrites(Graph& graph, const ExporterRewrites& r) {
  keep_exporter_rewrites(graph, r);
  if (r.norms.empty() && r.biases.empty() && r.unmerged.empty() && r.expanded.empty() && r.transposed.empty() &&
      r.unrecorded.empty())
    return;
  if (std::string why = check_restorable(graph, r); !why.empty()) {
    graph.unrestored_reason = why;
    return;
  }
  for (const auto& norm : r.norms) {
    Node* conv = graph.nodes()[norm.node].get();
    Value* w = conv->inputs[1];
    Tensor& weight = *w->data;
    const DType dtype = weight.dtype;
    const int64_t k = weight.shape[0], per = weight.numel() / k;
    // Folding multiplied the weights by scale / sqrt(var + eps) = 1 / sqrt(1 + eps) for a fresh
    // batch norm, in the weights' precision; divide it out again.
    if (dtype == DType::f32) {
      const float factor = 1.0f / std::sqrt(1.0f + static_cast<float>(norm.epsilon));
      for (int64_t i = 0; i < k * per; ++i) weight.data<float>()[i] /= factor;
    } else {
      const double factor = 1.0 / std::sqrt(1.0 + norm.epsilon);
      for (int64_t i = 0; i < k * per; ++i) weight.data<double>()[i] /= factor;
    }
    if (conv->input(2)) graph.set_input(conv, 2, nullptr);
    conv->inputs.resize(2);
    if (!norm.conv_bias.empty())
      graph.set_input(conv, 2, graph.add_initializer(norm.conv_bias, filled(dtype, k, 0.0), Role::Parameter));
    Value* scale = graph.add_initializer(norm.module + ".weight", filled(dtype, k, 1.0), Role::Parameter);
    Value* shift = graph.add_initializer(norm.module + ".bias", filled(dtype, k, 0.0), Role::Parameter);
    Value* mean = graph.add_initializer(norm.module + ".running_mean", filled(dtype, k, 0.0), Role::State);
    Value* var = graph.add_initializer(norm.module + ".running_var", filled(dtype, k, 1.0), Role::State);
    Value* y = conv->output(0);
    Value* x = graph.add_value(graph.unique_name(y->name + "_before_" + norm.module));
    graph.set_output(conv, 0, x);
    Node* bn = graph.add_node("BatchNormalization", {x, scale, shift, mean, var}, {y}, conv->name + "_batchnorm");
    bn->attrs["epsilon"] = Attribute{static_cast<float>(norm.epsilon)};
    bn->attrs["momentum"] = Attribute{static_cast<float>(1.0 - norm.momentum)};
  }
  std::map<std::string, Value*> copies;
  for (const auto& read : r.unmerged) {
    Node* node = graph.nodes()[read.node].get();
    Value*& copy = copies[read.name];
    if (!copy) copy = graph.add_initializer(read.name, *node->input(read.input)->data, Role::Parameter);
    graph.set_input(node, read.input, copy);
  }
  for (const auto& bias : r.biases) {
    Node* conv = graph.nodes()[bias.node].get();
    const Tensor& weight = *conv->input(1)->data;
    // Conv weights are [K, C, ...]; Gemm's B is [K, N], or [N, K] with transB.
    const bool gemm_b_kn = conv->op_type == "Gemm" && conv->attr_int("transB", 0) == 0;
    const int64_t outputs = weight.shape[gemm_b_kn ? 1 : 0];
    Value* b = graph.add_initializer(bias.name, filled(weight.dtype, outputs, 0.0), Role::Parameter);
    graph.set_input(conv, 2, b);
  }
  for (const auto& e : r.expanded) {
    // The parameter is the first row; an Expand node gives every reader the rows again.
    Value* folded = graph.value(e.initializer);
    const Tensor& t = *folded->data;
    Shape row_shape = t.shape;
    row_shape[0] = 1;
    Tensor row(t.dtype, row_shape);
    std::memcpy(row.bytes.data(), t.bytes.data(), row.bytes.size());
    Value* parameter = graph.add_initializer(e.name, std::move(row), Role::Parameter);
    Value* shape = graph.add_initializer(graph.unique_name(e.name + "_expand_shape"),
                                         Tensor::from_int64(t.shape, {static_cast<int64_t>(t.shape.size())}),
                                         Role::Constant);
    Value* expanded = graph.add_value(graph.unique_name(e.initializer + "_from_" + e.name));
    graph.replace_uses(folded, expanded);
    graph.add_node("Expand", {parameter, shape}, {expanded}, e.name + "_expand");
  }
  for (const auto& t : r.transposed) {
    // The parameter is the weight as PyTorch holds it, [out, in]; a Transpose gives MatMul its B.
    Value* folded = graph.value(t.initializer);
    const Tensor& b = *folded->data;
    const int64_t rows = b.shape[0], cols = b.shape[1];
    const size_t size = dtype_size(b.dtype);
    Tensor weight(b.dtype, {cols, rows});
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        std::memcpy(weight.bytes.data() + (j * rows + i) * size, b.bytes.data() + (i * cols + j) * size, size);
    Value* parameter = graph.add_initializer(t.name, std::move(weight), Role::Parameter);
    Value* transposed = graph.add_value(graph.unique_name(t.name + "_transposed"));
    graph.replace_uses(folded, transposed);
    Node* node = graph.add_node("Transpose", {parameter}, {transposed}, t.name + "_transpose");
    node->attrs["perm"] = Attribute{std::vector<int64_t>{1, 0}};
  }
  size_t conv_biases = 0;
  std::string conv_bias_example;
  for (const auto& norm : r.norms)
    if (!norm.conv_bias.empty() && conv_biases++ == 0) conv_bias_example = norm.conv_bias;
  std::string what;
  if (!r.norms.empty())
    what = std::to_string(r.norms.size()) + " batch norm" + (r.norms.size() == 1 ? "" : "s") +
           " folded into the Convs (e.g. '" + escape_name(r.norms[0].module) +
           "'; scale 1, bias 0, mean 0, variance 1, as the zero folded biases show a freshly initialised model has)";
  if (!r.biases.empty())
    what += (what.empty() ? "" : " and ") + std::to_string(r.biases.size()) + " zero bias" +
            (r.biases.size() == 1 ? "" : "es") + " the optimizer dropped (e.g. '" + escape_name(r.biases[0].name) + "')";
  if (conv_biases > 0)
    what += (what.empty() ? "" : " and ") + std::to_string(conv_biases) + " zero Conv bias" +
            (conv_biases == 1 ? "" : "es") + " the optimizer dropped before the fold (e.g. '" +
            escape_name(conv_bias_example) + "', in the exported program's signature)";
  if (!r.expanded.empty())
    what += (what.empty() ? "" : " and ") + std::string("the parameter '") + escape_name(r.expanded[0].name) +
            "' the optimizer expanded into '" + escape_name(r.expanded[0].initializer) + "'";
  if (!r.transposed.empty())
    what += (what.empty() ? "" : " and ") + std::to_string(r.transposed.size()) + " Linear weight" +
            (r.transposed.size() == 1 ? "" : "s") + " the optimizer transposed into anonymous initializers (e.g. '" +
            escape_name(r.transposed[0].name) + "' from '" + escape_name(r.transposed[0].initializer) + "')";
  if (!copies.empty())
    what += (what.empty() ? "" : " and ") + std::to_string(copies.size()) + " parameter" +
            (copies.size() == 1 ? "" : "s") + " or statistic" + (copies.size() == 1 ? "" : "s") +
            " the optimizer merged with an equal one (e.g. '" + escape_name(copies.begin()->first) + "')";
  graph.restored_rewrites = what;
  graph.folded_batchnorm.clear();
  graph.removed_biases.clear();
  graph.merged_parameters.clear();
  std::set<std::string> restored;
  for (const auto& norm : r.norms) {
    for (const char* p : {".weight", ".bias", ".running_mean", ".running_var"}) restored.insert(norm.module + p);
    if (!norm.conv_bias.empty()) restored.insert(norm.conv_bias);
  }
  for (const auto& bias : r.biases) restored.insert(bias.name);
  for (const auto& [name, copy] : copies) restored.insert(name);
  for (const auto& e : r.expanded) restored.insert(e.name);
  for (const auto& t : r.transposed) restored.insert(t.name);
  note_derived_parameters(graph, r, restored);  // what is left once the parameters are back
}

}  // namespace oxtrain::graph
