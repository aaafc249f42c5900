// The oxtrain program: one binary, one subcommand per face of the project.
#include <iostream>

#include "cli/commands.h"
#include "graph/ir.h"
#include "graph/version.h"
#include "runtime/device.h"

namespace {

std::string version_text() {
  std::string text = std::string("oxtrain ") + oxtrain::kVersion;
  text += oxtrain::runtime::cuda_compiled() ? " (CUDA runtime built)" : " (CPU only)";
  std::string why;
  auto gpus = oxtrain::runtime::cuda_devices(&why);
  for (const auto& g : gpus)
    text += "\n  GPU " + std::to_string(g.index) + ": " + g.name + ", sm_" +
            std::to_string(g.compute_major) + std::to_string(g.compute_minor);
  if (gpus.empty()) text += "\n  no GPU: " + why;
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"oxtrain: train ONNX models on CPUs and GPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text);
  std::vector<oxtrain::cli::Subcommand> commands{
      oxtrain::cli::add_graph_command(app),
      oxtrain::cli::add_zoo_command(app),
      oxtrain::cli::add_make_dataset_command(app),
      oxtrain::cli::add_train_command(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    // Help and version are successes; every usage error exits with 2.
    return rc == 0 ? 0 : 2;
  }
  try {
    for (const auto& c : commands)
      if (c.app->parsed()) return c.run();
    return 2;
  } catch (const std::exception& e) {
    // oxtrain::Error carries a user-facing message; anything else is reported the same way
    // rather than crashing.
    std::cerr << "oxtrain: error: " << e.what() << std::endl;
    return 2;
  }
}
