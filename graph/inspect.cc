#include "graph/inspect.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "graph/onnx_io.h"
#include "graph/stats.h"

namespace oxtrain::graph {

std::string with_commas(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

std::string human_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

namespace {

std::string value_line(const Value& v) {
  return v.name + " " + dtype_name(v.dtype) + " " + v.shape_string();
}

std::string opset_text(const Graph& g) {
  std::string s;
  for (const auto& o : g.opsets)
    s += (s.empty() ? "" : ", ") + (o.domain.empty() ? std::string("ai.onnx") : o.domain) + " " +
         std::to_string(o.version);
  return s;
}

std::vector<std::pair<std::string, int64_t>> ops_by_count(const GraphStats& s) {
  std::vector<std::pair<std::string, int64_t>> ops(s.ops.begin(), s.ops.end());
  std::stable_sort(ops.begin(), ops.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  return ops;
}

std::string giga(int64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f G", static_cast<double>(v) / 1e9);
  return buf;
}

std::string io_shapes(const std::vector<Value*>& values) {
  std::string s;
  for (const Value* v : values) {
    if (!v) continue;
    if (!s.empty()) s += ' ';
    s += v->shape_string();
  }
  return s;
}

}  // namespace

std::string summary_text(const Graph& g, const InspectOptions& options) {
  GraphStats s = compute_stats(g);
  std::ostringstream out;
  out << "model        " << options.source;
  if (!g.name.empty()) out << " (graph '" << g.name << "')";
  out << "\n";
  out << "producer     " << (g.producer_name.empty() ? "-" : g.producer_name) << " "
      << g.producer_version << "; IR version " << g.ir_version << "; opsets " << opset_text(g)
      << "\n";
  for (const Value* v : g.inputs) out << "input        " << value_line(*v) << "\n";
  for (const Value* v : g.outputs) out << "output       " << value_line(*v) << "\n";
  out << "parameters   " << with_commas(s.parameters) << " (" << human_bytes(s.parameter_bytes)
      << ")\n";
  if (s.state_elements)
    out << "state        " << with_commas(s.state_elements) << " (" << human_bytes(s.state_bytes)
        << ", e.g. BatchNorm running statistics)\n";
  out << "batch        " << s.batch;
  for (const Value* v : g.inputs)
    if (!v->dim_names.empty() && !v->dim_names[0].empty()) {
      out << " (" << v->dim_names[0] << " is symbolic; --batch-size sets it)";
      break;
    }
  out << "; figures below are per sample\n";
  out << "compute      " << giga(s.multiply_adds) << " multiply-adds (" << giga(s.flops)
      << "FLOPs) per sample\n";
  out << "activations  " << human_bytes(s.activation_bytes)
      << " per sample (all node outputs, forward)\n";
  out << "nodes        " << s.nodes << ":";
  bool first = true;
  for (const auto& [op, count] : ops_by_count(s)) {
    out << (first ? " " : ", ") << op << " " << count;
    first = false;
  }
  out << "\n";
  if (options.nodes) {
    out << "\n";
    size_t index = 0;
    for (const auto& n : g.nodes()) {
      char head[64];
      std::snprintf(head, sizeof head, "%4zu  %-20s ", index++, n->op_type.c_str());
      out << head << n->name << "  " << io_shapes(n->inputs) << " -> " << io_shapes(n->outputs);
      int64_t macs = node_multiply_adds(*n);
      if (macs) out << "  (" << giga(macs / s.batch) << "MACs/sample)";
      out << "\n";
    }
  }
  return out.str();
}

std::string summary_json(const Graph& g, const InspectOptions& options) {
  using nlohmann::json;
  GraphStats s = compute_stats(g);
  auto value_json = [](const Value* v) {
    json dims = json::array();
    for (size_t i = 0; i < v->shape.size(); ++i) {
      if (i < v->dim_names.size() && !v->dim_names[i].empty())
        dims.push_back(v->dim_names[i]);
      else
        dims.push_back(v->shape[i]);
    }
    return json{{"name", v->name}, {"dtype", dtype_name(v->dtype)}, {"shape", dims}};
  };
  json j;
  j["model"] = options.source;
  j["graph_name"] = g.name;
  j["producer"] = g.producer_name + (g.producer_version.empty() ? "" : " " + g.producer_version);
  j["ir_version"] = g.ir_version;
  json opsets = json::object();
  for (const auto& o : g.opsets) opsets[o.domain.empty() ? "ai.onnx" : o.domain] = o.version;
  j["opsets"] = opsets;
  j["batch"] = s.batch;
  j["inputs"] = json::array();
  for (const Value* v : g.inputs) j["inputs"].push_back(value_json(v));
  j["outputs"] = json::array();
  for (const Value* v : g.outputs) j["outputs"].push_back(value_json(v));
  j["parameters"] = s.parameters;
  j["parameter_bytes"] = s.parameter_bytes;
  j["state_elements"] = s.state_elements;
  j["ops"] = s.ops;
  j["multiply_adds"] = s.multiply_adds;
  j["flops"] = s.flops;
  j["activation_bytes"] = s.activation_bytes;
  j["nodes"] = s.nodes;
  // What the exporter rewrote for inference: put back, or found and left (graph/exporter_rewrites.h).
  const json rewrites{{"restored", g.restored_rewrites},         {"folded_batchnorm", g.folded_batchnorm},
                      {"removed_biases", g.removed_biases},      {"merged_parameters", g.merged_parameters},
                      {"derived_parameters", g.derived_parameters}, {"missing_parameters", g.missing_parameters},
                      {"unrestored_reason", g.unrestored_reason}};
  for (const auto& [key, value] : rewrites.items())
    if (!value.get<std::string>().empty()) {
      j["exporter_rewrites"] = rewrites;
      break;
    }
  if (options.nodes) {
    json list = json::array();
    for (const auto& n : g.nodes()) {
      json node{{"name", n->name}, {"op", n->op_type}, {"domain", n->domain}};
      node["inputs"] = json::array();
      for (const Value* v : n->inputs) node["inputs"].push_back(v ? value_json(v) : json());
      node["outputs"] = json::array();
      for (const Value* v : n->outputs) node["outputs"].push_back(v ? value_json(v) : json());
      node["multiply_adds"] = node_multiply_adds(*n) / s.batch;
      list.push_back(node);
    }
    j["node_list"] = list;
  }
  return j.dump(2) + "\n";
}

std::string to_dot(const Graph& g) {
  auto quote = [](const std::string& s) {
    std::string q = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return q + "\"";
  };
  std::ostringstream out;
  out << "digraph " << quote(g.name.empty() ? "model" : g.name) << " {\n"
      << "  rankdir=TB;\n  node [shape=box, style=rounded, fontname=Helvetica];\n";
  for (const Value* v : g.inputs)
    out << "  " << quote("in:" + v->name) << " [shape=ellipse, label="
        << quote(v->name + "\\n" + v->shape_string()) << "];\n";
  for (const Value* v : g.outputs)
    out << "  " << quote("out:" + v->name) << " [shape=ellipse, label="
        << quote(v->name + "\\n" + v->shape_string()) << "];\n";
  for (const auto& n : g.nodes())
    out << "  " << quote("n:" + n->name) << " [label=" << quote(n->op_type + "\\n" + n->name)
        << "];\n";
  for (const auto& n : g.nodes()) {
    for (const Value* in : n->inputs) {
      if (!in) continue;
      std::string from;
      if (in->producer) from = "n:" + in->producer->name;
      else if (in->role == Role::Input) from = "in:" + in->name;
      else continue;  // weights and constants would drown the picture
      out << "  " << quote(from) << " -> " << quote("n:" + n->name)
          << " [label=" << quote(in->shape_string()) << "];\n";
    }
  }
  for (const Value* v : g.outputs)
    if (v->producer)
      out << "  " << quote("n:" + v->producer->name) << " -> " << quote("out:" + v->name) << ";\n";
  out << "}\n";
  return out.str();
}

}  // namespace oxtrain::graph
