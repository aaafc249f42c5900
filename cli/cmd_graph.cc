// oxtrain graph MODEL.onnx [--batch-size N] [--nodes] [--json] [--dot FILE]
#include <fstream>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "graph/inspect.h"
#include "graph/onnx_io.h"

namespace oxtrain::cli {

namespace {
struct GraphArgs {
  std::string model;
  int64_t batch_size = 0;
  bool nodes = false;
  bool json = false;
  std::string dot;
  std::string export_path;
};
}  // namespace

Subcommand add_graph_command(CLI::App& app) {
  auto args = std::make_shared<GraphArgs>();
  CLI::App* cmd = app.add_subcommand(
      "graph", "Inspect an ONNX model: inputs, outputs, parameters, FLOPs, memory, ops");
  cmd->add_option("model", args->model, "ONNX model file")->required();
  cmd->add_option("-b,--batch-size", args->batch_size,
                  "batch size for a symbolic batch dimension (default 1: per-sample figures)");
  cmd->add_flag("--nodes", args->nodes, "list every node with its input and output shapes");
  cmd->add_flag("--json", args->json, "print the report as JSON");
  cmd->add_option("--dot", args->dot, "write the graph in Graviz's dot format to this file");
  cmd->add_option("--export", args->export_path,
                  "write the imported graph (constants folded) back as ONNX to this file");
  return {cmd, [args]() {
    graph::ImportOptions options;
    if (args->batch_size != 0) options.batch_size = args->batch_size;
    graph::Graph g = graph::import_onnx(args->model, options);
    graph::InspectOptions view{args->model, args->nodes};
    std::cout << (args->json ? graph::summary_json(g, view) : graph::summary_text(g, view));
    if (!args->dot.empty()) {
      std::ofstream out(args->dot);
      if (!out) throw Error("cannot write '" + args->dot + "'");
      out << graph::to_dot(g);
      if (!args->json) std::cout << "wrote " << args->dot << "\n";
    }
    if (!args->export_path.empty()) {
      graph::export_onnx(g, args->export_path);
      if (!args->json) std::cout << "wrote " << args->export_path << "\n";
    }
    return 0;
  }};
}

}  // namespace oxtrain::cli
