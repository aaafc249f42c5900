#include "graph/opset.h"

#include <algorithm>
#include <map>
#include <set>

#include "base/error.h"
#include "base/text.h"
#include "graph/ops.h"

namespace oxtrain::graph {

namespace {

struct OnnxOp {
  const char* op_type;
  std::vector<int64_t> versions;  // since_version of each definition, ascending
};

// The table's newest opset is the newest oxtrain reads.
#define OXTRAIN_ONNX_LATEST_OPSET(v) static_assert((v) == kMaxOpset, "kMaxOpset must be the version table's newest opset");
#define OXTRAIN_ONNX_OP(name, ...)
#include "graph/onnx_op_versions.inc"
#undef OXTRAIN_ONNX_OP
#undef OXTRAIN_ONNX_LATEST_OPSET

const std::vector<OnnxOp>& onnx_ops() {
#define OXTRAIN_ONNX_LATEST_OPSET(v)
#define OXTRAIN_ONNX_OP(name, ...) {name, __VA_ARGS__},
  static const std::vector<OnnxOp> ops = {
#include "graph/onnx_op_versions.inc"
  };
#undef OXTRAIN_ONNX_OP
#undef OXTRAIN_ONNX_LATEST_OPSET
  return ops;
}

// Versions newer than kFullOpsetMax that oxtrain implements, reviewed against the ONNX
// specification (OpVersions.EveryNewerVersionOfASupportedOpIsReviewed lists those not yet
// reviewed when an op is added or scripts/onnx_op_versions.py brings a newer table):
//   22  bfloat16 added to AveragePool, Conv, GlobalAveragePool, HardSigmoid, HardSwish, MaxPool
//       and the random ops, and float8 to Dropout: types only.
//   23, 24, 25  float4e2m1, float8e8m0, int2/uint2 added to the movement ops, Constant,
//       ConstantOfShape, Identity, Cast and CastLike: types only, refused by dtype where oxtrain
//       lacks them. Cast-24's round_mode concerns float8e8m0 only.
//   28  Cast: float6 types (refused by dtype). Mod: fmod=0 allowed on floats, which oxtrain
//       already computes as the divisor-signed remainder (numpy's mod) at every version.
const std::map<std::string, std::set<int64_t>>& reviewed_newer() {
  static const std::map<std::string, std::set<int64_t>> m = {
      {"AveragePool", {22}},
      {"Cast", {23, 24, 25, 28}},
      {"CastLike", {23, 24, 25}},
      {"Constant", {23, 24, 25}},
      {"ConstantOfShape", {23, 24, 25}},
      {"Conv", {22}},
      {"Dropout", {22}},
      {"Flatten", {23, 24, 25}},
      {"GlobalAveragePool", {22}},
      {"HardSigmoid", {22}},
      {"HardSwish", {22}},
      {"Identity", {23, 24, 25}},
      {"MaxPool", {22}},
      {"Mod", {28}},
      {"RandomNormal", {22}},
      {"RandomNormalLike", {22}},
      {"RandomUniform", {22}},
      {"RandomUniformLike", {22}},
      {"Reshape", {23, 24, 25}},
      {"Shape", {23, 24, 25}},
      {"Squeeze", {23, 24, 25}},
      {"Transpose", {23, 24, 25}},
      {"Unsqueeze", {23, 24, 25}},
  };
  return m;
}

const OnnxOp* find_onnx_op(const std::string& op_type) {
  static const std::map<std::string, const OnnxOp*> index = [] {
    std::map<std::string, const OnnxOp*> m;
    for (const OnnxOp& op : onnx_ops()) m[op.op_type] = &op;
    return m;
  }();
  auto it = index.find(op_type);
  return it == index.end() ? nullptr : it->second;
}

}  // namespace

int64_t onnx_op_version(const std::string& op_type, int64_t opset) {
  const OnnxOp* op = find_onnx_op(op_type);
  if (!op) return 0;
  int64_t version = 0;
  for (int64_t v : op->versions)
    if (v <= opset) version = v;
  return version;
}

std::vector<int64_t> onnx_op_versions(const std::string& op_type) {
  const OnnxOp* op = find_onnx_op(op_type);
  return op ? op->versions : std::vector<int64_t>{};
}

std::vector<int64_t> implemented_op_versions(const std::string& op_type) {
  std::set<int64_t> versions;
  if (!find_schema("", op_type)) return {};
  for (int64_t opset = kFullOpsetMin; opset <= kFullOpsetMax; ++opset)
    if (int64_t v = onnx_op_version(op_type, opset)) versions.insert(v);
  auto it = reviewed_newer().find(op_type);
  if (it != reviewed_newer().end()) versions.insert(it->second.begin(), it->second.end());
  return {versions.begin(), versions.end()};
}

void check_op_versions(const Graph& g) {
  const int64_t opset = g.opset("");
  if (opset == 0) return;  // no default-domain import (check_opset requires one where needed)
  // op -> (version at the model's opset, its nodes)
  std::map<std::string, std::pair<int64_t, std::vector<const Node*>>> refused;
  for (const auto& n : g.nodes()) {
    if (!n->domain.empty() || !find_schema("", n->op_type)) continue;  // unknown ops are reported elsewhere
    std::vector<int64_t> implemented = implemented_op_versions(n->op_type);
    const int64_t version = onnx_op_version(n->op_type, opset);
    if (!std::count(implemented.begin(), implemented.end(), version)) {
      auto& entry = refused[n->op_type];
      entry.first = version;
      entry.second.push_back(n.get());
    }
  }
  if (refused.empty()) return;
  std::vector<std::string> items;
  bool convertible = false;
  int64_t needed = 0;  // the newest first version among ops the opset predates
  for (const auto& [op, entry] : refused) {
    std::vector<std::string> names, versions;
    for (const Node* n : entry.second) names.push_back(quote_name(n->name, 60));
    const std::vector<int64_t> implemented = implemented_op_versions(op);
    for (int64_t v : implemented) versions.push_back(std::to_string(v));
    if (implemented.empty()) {  // a schema without ONNX versions: the table is older than the op
      items.push_back(op + " (" + join_limited(names, 60) + "): not in oxtrain's table of ONNX versions");
    } else if (entry.first == 0) {
      needed = std::max(needed, implemented.front());
      items.push_back(op + " (" + join_limited(names, 60) + "): " + op + " exists only from opset " +
                      std::to_string(implemented.front()));
    } else {
      convertible = true;
      items.push_back(op + " (" + join_limited(names, 60) + "): it means " + op + "-" + std::to_string(entry.first) +
                      ", oxtrain implements versions " + join_limited(versions));
    }
  }
  std::string advice;
  if (convertible)
    advice = ". Convert the model to an opset from " + std::to_string(kFullOpsetMin) + " to " +
             std::to_string(kFullOpsetMax) + " with onnx.version_converter.convert_version(model, " +
             std::to_string(kFullOpsetMax) + ")";
  else if (needed > 0)
    advice = ". The file is not valid ONNX: its opset import must be " + std::to_string(needed) +
             " or newer for these ops";
  throw Error("the model imports opset " + std::to_string(opset) +
              " of ai.onnx, and oxtrain does not implement these ops as that opset defines them: " +
              join_limited(items, 2 * kMaxMessageLine, "; ") + advice);
}

}  // namespace oxtrain::graph
