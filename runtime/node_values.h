// A node's inputs and outputs as kernel factories check them when a graph is compiled, shared
// by the CPU and CUDA kernel files: each failure is an Error naming the node.
#pragma once

#include <string>

#include "graph/ir.h"

namespace oxtrain::runtime {

// Input i of n; throws when it is missing.
inline const graph::Value& input_value(const graph::Node& n, size_t i) {
  const graph::Value* v = n.input(i);
  if (!v) throw Error(n.describe() + ": input " + std::to_string(i) + " is missing");
  return *v;
}

// Output i of n; throws when it is missing.
inline const graph::Value& output_value(const graph::Node& n, size_t i) {
  const graph::Value* v = n.output(i);
  if (!v) throw Error(n.describe() + ": output " + std::to_string(i) + " is missing");
  return *v;
}

// The value's shape, which a CUDA kernel needs when it is made; throws when it is unknown.
inline const graph::Shape& known_shape(const graph::Node& n, const graph::Value& v) {
  if (!v.rank_known || !graph::shape_known(v.shape))
    throw Error(n.describe() + ": the CUDA kernel needs the shape of '" + v.name +
                "' when the graph is compiled, got " + v.shape_string());
  return v.shape;
}

}  // namespace oxtrain::runtime
