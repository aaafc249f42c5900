// oxtrain run MODEL.onnx [--inputs A.pb,B.pb | NAME=A.pb,...] [--outputs DIR] [--device auto|cpu|cuda]
// oxtrain run --supported-ops [--json]
//
// One forward run of a model on tensors from ONNX TensorProto files; every graph output is
// written as DIR/output_<i>.pb, the layout of ONNX's test data (cli/run_model.h).
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "base/text.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/run_model.h"
#include "graph/ops.h"
#include "runtime/device.h"

namespace oxtrain::cli {

namespace {

struct RunArgs {
  std::string model;
  std::vector<std::string> inputs;
  std::string outputs;
  std::string device = "auto";
  int threads = 0;
  bool supported_ops = false;
  bool json = false;
  bool allow_external_data_anywhere = false;
};

int print_supported_ops(bool json) {
  std::vector<OpSupport> ops = supported_op_list();
  if (json) {
    nlohmann::json j;
    // The opsets a model may import, and those at which every op is as oxtrain implements it;
    // outside them, each ai.onnx op's own versions decide (graph/opset.h).
    j["opsets"] = {{"ai.onnx", {graph::kMinOpset, graph::kMaxOpset}},
                   {"ai.onnx_every_op", {graph::kFullOpsetMin, graph::kFullOpsetMax}}};
    j["ops"] = nlohmann::json::array();
    for (const OpSupport& s : ops) {
      nlohmann::json op = {{"domain", s.domain}, {"op_type", s.op_type}, {"cpu", s.cpu}, {"cuda", s.cuda},
                           {"fold_only", s.fold_only}};
      if (s.domain.empty()) op["versions"] = graph::implemented_op_versions(s.op_type);
      j["ops"].push_back(op);
    }
    std::cout << j.dump(1) << "\n";
    return 0;
  }
  std::cout << "ai.onnx opsets " << graph::kMinOpset << " to " << graph::kMaxOpset << " (every op as opsets "
            << graph::kFullOpsetMin << " to " << graph::kFullOpsetMax
            << " define it; outside them, where the op's version there is one of those or reviewed)\n";
  for (const OpSupport& s : ops) {
    std::string name = s.domain.empty() ? s.op_type : s.domain + "." + s.op_type;
    std::string where = s.fold_only ? "no kernel: only on constant inputs (folded at import)"
                                    : std::string(s.cpu ? "cpu" : "") + (s.cpu && s.cuda ? " " : "") +
                                          (s.cuda ? "cuda" : "") + (!s.cpu && !s.cuda ? "no kernel" : "");
    std::cout << name << std::string(name.size() < 36 ? 36 - name.size() : 1, ' ') << where << "\n";
  }
  return 0;
}

}  // namespace

Subcommand add_run_command(CLI::App& app) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand(
      "run", "Run a model forward once on tensors from ONNX TensorProto files and write its outputs");
  cmd->add_option("model", args->model, "ONNX model file");
  cmd->add_option("--inputs", args->inputs,
                  "TensorProto files, one per graph input in the graph's order (A.pb,B.pb), or NAME=PATH; symbolic "
                  "dimensions take the files' sizes")
      ->delimiter(',');
  cmd->add_option("--outputs", args->outputs,
                  "folder for the graph outputs, written as output_<i>.pb (TensorProto with the output's name); "
                  "created when missing");
  cmd->add_option("--device", args->device, "cpu, cuda, or auto (cuda where a GPU is visible)")->capture_default_str();
  cmd->add_option("--threads", args->threads, "CPU threads (default: all cores)");
  cmd->add_flag("--supported-ops", args->supported_ops,
                "list the ops this build imports (and the opsets it reads), with the devices that have kernels for them, and exit");
  cmd->add_flag("--json", args->json, "with --supported-ops: print the list as JSON");
  cmd->add_flag("--allow-external-data-anywhere", args->allow_external_data_anywhere,
                "read external data even from outside the model's folder (only for models you trust)");
  return {cmd, [args]() {
    if (args->supported_ops) {
      if (!args->model.empty() || !args->inputs.empty() || !args->outputs.empty())
        throw Error("--supported-ops takes no model, --inputs or --outputs");
      return print_supported_ops(args->json);
    }
    if (args->json) throw Error("--json goes with --supported-ops");
    if (args->model.empty()) throw Error("oxtrain run needs a model file (or --supported-ops)");
    if (args->device != "cpu" && args->device != "cuda" && args->device != "auto")
      throw Error("--device is cpu, cuda or auto (cuda where a GPU is visible), got '" + escape_name(args->device) + "'");
    check_range("--threads", args->threads, 0, 4096, " (0: all cores)");
    RunModelOptions options;
    options.device = args->device == "cpu"    ? runtime::Device::cpu
                     : args->device == "cuda" ? runtime::Device::cuda
                     : runtime::cuda_devices().empty() ? runtime::Device::cpu
                                                       : runtime::Device::cuda;
    options.threads = args->threads;
    options.allow_external_data_anywhere = args->allow_external_data_anywhere;
    set_activity("running " + args->model);
    std::vector<NamedTensor> outputs = run_model(args->model, args->inputs, options);
    std::vector<std::string> paths;
    if (!args->outputs.empty()) {
      set_activity("writing the outputs");
      paths = write_outputs(outputs, args->outputs);
    }
    for (size_t i = 0; i < outputs.size(); ++i) {
      const graph::Tensor& t = outputs[i].tensor;
      std::cout << "output " << i << " " << quote_name(outputs[i].name) << ": " << graph::dtype_name(t.dtype)
                << " " << graph::shape_str(t.shape);
      if (!paths.empty()) std::cout << " -> " << paths[i];
      std::cout << "\n";
    }
    return 0;
  }};
}

}  // namespace oxtrain::cli
