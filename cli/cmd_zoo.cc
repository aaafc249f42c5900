// oxtrain zoo NAME -o FILE [--num-classes N] [--seed S] [--image-size S]
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/flags.h"
#include "graph/inspect.h"
#include "graph/onnx_io.h"
#include "graph/stats.h"
#include "graph/zoo.h"

namespace oxtrain::cli {

namespace {
struct ZooArgs {
  std::string name;
  std::string output;
  graph::ZooOptions options;
  int64_t seed = 0;  // signed, so that -1 is refused rather than wrapped
  bool list = false;
};

// The flags, before the model is built: bounds that keep a typo from allocating gigabytes.
void check_args(const ZooArgs& a) {
  check_range("--num-classes", a.options.num_classes, 1, 1 << 20);
  check_range("--image-size", a.options.image_size, 32, 4096);
  check_range("--seed", a.seed, 0, INT64_MAX);
  check_output_file("-o", a.output);
}
}  // namespace

Subcommand add_zoo_command(CLI::App& app) {
  auto args = std::make_shared<ZooArgs>();
  CLI::App* cmd = app.add_subcommand(
      "zoo", "Write a model of the built-in zoo (torchvision's ResNets) as ONNX");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("name", args->name, "resnet18, resnet34, resnet50, resnet101 or resnet152");
  cmd->add_option("-o,--output", args->output, "ONNX file to write");
  cmd->add_option("--num-classes", args->options.num_classes, "classes of the final layer")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "seed of the initialisation")
      ->capture_default_str();
  cmd->add_option("--image-size", args->options.image_size,
                  "declared input height and width")
      ->capture_default_str();
  cmd->add_flag("--list", args->list, "list the models of the zoo");
  return {cmd, [args]() {
    if (args->list || args->name.empty()) {
      for (const auto& n : graph::zoo_models()) std::cout << n << "\n";
      if (!args->list) throw Error("zoo: name a model, e.g. oxtrain zoo resnet50 -o r50.onnx");
      return 0;
    }
    if (args->output.empty()) throw Error("zoo: give the output file with -o FILE");
    check_args(*args);
    args->options.seed = static_cast<uint64_t>(args->seed);
    set_activity("building the model");
    graph::Graph g = graph::make_zoo_model(args->name, args->options);
    graph::export_onnx(g, args->output);
    graph::GraphStats s = graph::compute_stats(g);
    std::cout << "wrote " << args->output << ": " << args->name << ", "
              << graph::with_commas(s.parameters) << " parameters, "
              << args->options.num_classes << " classes, seed " << args->options.seed << "\n";
    return 0;
  }};
}

}  // namespace oxtrain::cli
