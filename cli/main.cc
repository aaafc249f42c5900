// The oxtrain program: one binary, one subcommand per face of the project.
//
// Every failure ends the same way: one line "oxtrain: error: ..." on stderr and exit status 2.
// oxtrain::Error carries its own message; the few other exceptions that can escape (out of
// memory, no thread, a file system call) are turned into a sentence that names what the
// program was doing, never the library's bare text (which --verbose appends).
#include <filesystem>
#include <iostream>
#include <new>
#include <system_error>

#include "base/text.h"
#include "cli/commands.h"
#include "graph/ir.h"
#include "graph/version.h"
#include "runtime/device.h"

namespace oxtrain::cli {

namespace {
std::string& current_activity() {
  static std::string what = "starting";
  return what;
}
}  // namespace

void set_activity(std::string what) { current_activity() = std::move(what); }
const std::string& activity() { return current_activity(); }

}  // namespace oxtrain::cli

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

int fail(const std::string& message) {
  std::cerr << "oxtrain: error: " << oxtrain::one_line(message) << std::endl;
  return 2;
}

// The library's own text, only when the user asked for everything.
std::string detail(const std::exception& e) {
  return oxtrain::verbose_messages() ? std::string(" (") + e.what() + ")" : "";
}

// Runs the chosen subcommand; every exception becomes one line.
int run_reporting(const std::function<int()>& run) {
  using oxtrain::cli::activity;
  try {
    return run();
  } catch (const oxtrain::Error& e) {
    return fail(e.what());
  } catch (const std::bad_alloc& e) {
    return fail("out of memory while " + activity() + "; lower --batch-size or free memory" + detail(e));
  } catch (const std::length_error& e) {
    return fail("a size too large for memory while " + activity() + "; lower --batch-size" + detail(e));
  } catch (const std::filesystem::filesystem_error& e) {
    std::string path = e.path1().empty() ? "" : " '" + oxtrain::escape_name(e.path1().string()) + "'";
    return fail("file system error while " + activity() + path + ": " + e.code().message());
  } catch (const std::system_error& e) {
    if (e.code() == std::errc::resource_unavailable_try_again)
      return fail("the system refused to start another thread while " + activity() +
                  "; lower -j/--workers or --threads" + detail(e));
    return fail("system error while " + activity() + ": " + e.code().message() + detail(e));
  } catch (const std::exception& e) {
    return fail("internal error while " + activity() + "; please report it with the command line" +
                detail(e));
  } catch (...) {
    return fail("internal error while " + activity() + "; please report it with the command line");
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"oxtrain: train ONNX models on CPUs and GPUs"};
  app.require_subcommand(1);
  app.fallthrough();  // --verbose may follow the subcommand
  app.set_version_flag("--version", version_text);
  bool verbose = false;
  app.add_flag("--verbose", verbose, "show long lists and messages whole");
  std::vector<oxtrain::cli::Subcommand> commands{
      oxtrain::cli::add_graph_command(app),
      oxtrain::cli::add_zoo_command(app),
      oxtrain::cli::add_make_dataset_command(app),
      oxtrain::cli::add_train_command(app),
      oxtrain::cli::add_run_command(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help and version are successes and print as CLI11 does; a usage error is one line.
    if (e.get_exit_code() == 0) return app.exit(e);
    std::string where = "oxtrain";
    for (const auto& c : commands)
      if (c.app->parsed()) where += " " + c.app->get_name();
    return fail(std::string(e.what()) + "; see " + where + " --help");
  }
  oxtrain::set_verbose_messages(verbose);
  for (const auto& c : commands)
    if (c.app->parsed()) return run_reporting(c.run);
  return 2;
}
