// Human, JSON and Graphviz views of a graph, as `oxtrain graph` prints them.
#pragma once

#include <string>

#include "graph/ir.h"

namespace oxtrain::graph {

struct InspectOptions {
  std::string source;  // the file name shown in the header
  bool nodes = false;  // list every node with its shapes
};

std::string summary_text(const Graph& graph, const InspectOptions& options);
// Keys: model, producer, ir_version, opsets, batch, inputs, outputs, parameters,
// parameter_bytes, state_elements, ops, multiply_adds, flops, activation_bytes, nodes (count),
// and node_list when options.nodes.
std::string summary_json(const Graph& graph, const InspectOptions& options);
std::string to_dot(const Graph& graph);

// 25557032 -> "25,557,032"; 102228128 bytes -> "97.5 MiB"
std::string with_commas(int64_t value);
std::string human_bytes(int64_t bytes);

}  // namespace oxtrain::graph
