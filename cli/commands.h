// Subcommands of the `oxtrain` program. Each registers its flags on a CLI11 subcommand and
// returns the function that runs it (after parsing). Errors are thrown as oxtrain::Error.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace oxtrain::cli {

struct Subcommand {
  CLI::App* app;            // parsed() tells whether the user chose it
  std::function<int()> run;
};

// What the program is doing now ("loading the data", "training"), for the failures that carry
// no context of their own (out of memory, a thread that could not be started): main() names
// it in the one line it prints.
void set_activity(std::string what);
const std::string& activity();

Subcommand add_graph_command(CLI::App& app);
Subcommand add_zoo_command(CLI::App& app);
Subcommand add_make_dataset_command(CLI::App& app);
Subcommand add_train_command(CLI::App& app);
Subcommand add_run_command(CLI::App& app);

}  // namespace oxtrain::cli
