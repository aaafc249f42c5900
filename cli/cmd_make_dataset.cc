// oxtrain make-dataset OUTPUT [--classes N] [--train-per-class N] [--val-per-class N] ...
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "graph/inspect.h"
#include "graph/ir.h"
#include "io/make_dataset.h"

namespace oxtrain::cli {

Subcommand add_make_dataset_command(CLI::App& app) {
  auto options = std::make_shared<io::MakeDatasetOptions>();
  CLI::App* cmd = app.add_subcommand(
      "make-dataset",
      "Write a small ImageNet-layout dataset of real JPEGs (procedurally drawn classes)");
  cmd->add_option("output", options->output, "folder to create: OUTPUT/train/<class>, OUTPUT/val/<class>")
      ->required();
  cmd->add_option("--classes", options->classes, "number of classes")->capture_default_str();
  cmd->add_option("--train-per-class", options->train_per_class, "training images per class")
      ->capture_default_str();
  cmd->add_option("--val-per-class", options->val_per_class, "validation images per class")
      ->capture_default_str();
  cmd->add_option("--min-side", options->min_side, "smallest image side in pixels")->capture_default_str();
  cmd->add_option("--max-side", options->max_side, "largest image side in pixels")->capture_default_str();
  cmd->add_option("--quality", options->quality, "JPEG quality")->capture_default_str();
  cmd->add_option("--seed", options->seed, "seed")->capture_default_str();
  return {cmd, [options]() {
    bool terminal = isatty(STDERR_FILENO);
    if (terminal)
      options->progress = [](int64_t done, int64_t total) {
        std::fprintf(stderr, "\rmake-dataset: %lld/%lld images", static_cast<long long>(done),
                     static_cast<long long>(total));
        if (done == total) std::fprintf(stderr, "\n");
      };
    io::MakeDatasetResult r = io::make_dataset(*options);
    std::cout << "wrote " << options->output << ": " << options->classes << " classes, "
              << r.train_images << " training and " << r.val_images << " validation images ("
              << graph::human_bytes(r.bytes) << ")\n";
    return 0;
  }};
}

}  // namespace oxtrain::cli
