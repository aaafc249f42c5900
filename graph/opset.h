// Which versions of the ai.onnx operators oxtrain implements, and which model opsets it reads.
//
// A model names one opset of the default domain; each op then means its newest version defined
// at or before that opset (ONNX's since_version, from graph/onnx_op_versions.inc). oxtrain
// implements every supported op as defined anywhere in opsets kFullOpsetMin to kFullOpsetMax,
// plus the newer versions listed in opset.cc after review (each only widened the types an op
// takes, or is handled where noted). A model at any opset from kMinOpset to kMaxOpset imports
// when each of its nodes resolves to an implemented version; a node that does not is refused by
// name, never run with another version's semantics.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::graph {

// Every supported op is implemented as these opsets define it.
constexpr int64_t kFullOpsetMin = 7;
constexpr int64_t kFullOpsetMax = 21;
// The opsets of ai.onnx a model may import (per-node versions checked by check_op_versions).
constexpr int64_t kMinOpset = 1;
constexpr int64_t kMaxOpset = 28;  // the newest in graph/onnx_op_versions.inc (checked at compile time)

// The version of ai.onnx's `op_type` that `opset` means: the newest at or before it; 0 when the
// op did not exist at that opset or is not an ai.onnx op.
int64_t onnx_op_version(const std::string& op_type, int64_t opset);
// Every version ONNX defined of `op_type` (its since_versions, oldest first; empty for ops
// that are not ai.onnx's).
std::vector<int64_t> onnx_op_versions(const std::string& op_type);
// The versions of `op_type` oxtrain implements, oldest first (empty for ops it lacks).
std::vector<int64_t> implemented_op_versions(const std::string& op_type);

// Throws naming every supported node of the default domain whose version at the model's opset
// oxtrain does not implement, with the versions it does and what to do.
void check_op_versions(const Graph& g);

}  // namespace oxtrain::graph
