// oxtrain graph MODEL.onnx [--batch-size N] [--nodes] [--json] [--dot FILE] [--export FILE]
//                          [--training [--plot FILE.svg]] [--allow-external-data-anywhere] [--as-exported]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <iostream>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autodiff/training.h"
#include "base/files.h"
#include "base/text.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "graph/inspect.h"
#include "graph/onnx_io.h"
#include "runtime/device.h"
#include "runtime/dist/scaling.h"
#include "runtime/device_runtime.h"
#include "runtime/planner.h"
#include "runtime/session.h"

namespace oxtrain::cli {

namespace {

struct GraphArgs {
  std::string model;
  std::optional<int64_t> batch_size;
  bool nodes = false;
  bool json = false;
  bool training = false;
  std::string dot;
  std::string export_path;
  std::string plot;
  bool allow_external_data_anywhere = false;
  bool as_exported = false;
  std::string device;  // with --training: compile for this device and report its plan
  std::string precision = "tf32";
  bool no_recompute = false;
  std::string conv_bn_fusion = "auto";
  bool channels_last = false;
  int world_size = 1;     // > 1: with AllReduce buckets
  double bucket_mb = 25;
  double simulate_step_ms = 0;  // > 0: predict data-parallel scaling from this one-GPU step
};

// Reports (dot, SVG) are written whole or not at all, like every file oxtrain writes.
void write_file(const std::string& path, const std::string& text) { write_file_atomic(path, text); }

// Live activation bytes over the schedule as an SVG line chart.
std::string live_bytes_svg(const runtime::MemoryPlan& plan, const autodiff::TrainingGraph& tg,
                           const std::string& title) {
  const double width = 900, height = 360, left = 70, right = 20, top = 40, bottom = 50;
  const auto& live = plan.live_bytes;
  double max_bytes = std::max<double>(1, static_cast<double>(plan.activation_arena_bytes));
  double steps = std::max<double>(1, static_cast<double>(live.size() - 1));
  auto x = [&](double i) { return left + (width - left - right) * i / steps; };
  auto y = [&](double b) { return height - bottom - (height - top - bottom) * b / max_bytes; };
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
    << "' font-family='Helvetica' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  s << "<text x='" << left << "' y='22' font-size='15'>" << title << "</text>\n";
  // Forward / backward / optimizer bands.
  double fwd_end = x(static_cast<double>(tg.forward_nodes));
  s << "<rect x='" << left << "' y='" << top << "' width='" << fwd_end - left << "' height='"
    << height - top - bottom << "' fill='#eef4ff'/>\n";
  s << "<text x='" << left + 6 << "' y='" << top + 16 << "' fill='#557'>forward</text>\n";
  s << "<text x='" << fwd_end + 6 << "' y='" << top + 16 << "' fill='#755'>backward + update</text>\n";
  // Axes and grid.
  for (int k = 0; k <= 4; ++k) {
    double b = max_bytes * k / 4;
    s << "<line x1='" << left << "' x2='" << width - right << "' y1='" << y(b) << "' y2='" << y(b)
      << "' stroke='#ddd'/>\n<text x='" << left - 6 << "' y='" << y(b) + 4
      << "' text-anchor='end'>" << graph::human_bytes(static_cast<int64_t>(b)) << "</text>\n";
  }
  s << "<text x='" << (left + width - right) / 2 << "' y='" << height - 12
    << "' text-anchor='middle'>schedule step (node)</text>\n";
  s << "<polyline fill='none' stroke='#c33' stroke-width='1.5' points='";
  for (size_t i = 0; i < live.size(); ++i) s << x(static_cast<double>(i)) << "," << y(static_cast<double>(live[i])) << " ";
  s << "'/>\n";
  s << "<text x='" << width - right << "' y='" << top - 10
    << "' text-anchor='end' fill='#c33'>peak live " << graph::human_bytes(plan.peak_live_bytes)
    << "; arena " << graph::human_bytes(plan.activation_arena_bytes) << "; naive "
    << graph::human_bytes(plan.activation_naive_bytes) << "</text>\n</svg>\n";
  return s.str();
}

// The step compiled for a device: its kernels (with what they chose) and the device plan.
struct DeviceReport {
  std::string device, note;
  runtime::CompiledGraph compiled;
};

DeviceReport compile_for_device(const GraphArgs& args, const autodiff::TrainingGraph& tg) {
  DeviceReport r;
  runtime::SessionOptions so;
  so.device = args.device == "cuda" ? runtime::Device::cuda : runtime::Device::cpu;
  so.precision = parse_precision(args.precision).math;
  for (const auto& [value, grad] : tg.gradients) so.gradients.push_back(grad);
  std::unique_ptr<runtime::DeviceRuntime> device;
  std::string why;
  if (so.device == runtime::Device::cpu || !runtime::cuda_devices(&why).empty()) {
    device = runtime::DeviceRuntime::create(so.device, so.precision);
    r.device = device->description();
  } else {
    r.device = "cuda";
    r.note = "no GPU here (" + why + "): cuDNN and cuBLASLt choose their plans on the GPU, so workspaces are "
             "upper bounds or unknown";
  }
  if (so.device == runtime::Device::cuda) {
    const bool mixed = args.precision == "bf16" || args.precision == "fp16";
    r.device += std::string(", ") + (mixed ? args.precision + " with float32 math in " : std::string()) +
                runtime::precision_name(so.precision);
  }
  r.compiled = runtime::compile_graph(graph::copy_graph(tg.graph), so, device ? &device->context() : nullptr);
  return r;
}

int run_training_report(const GraphArgs& args, graph::Graph forward) {
  autodiff::TrainingOptions to;
  apply_precision(to, parse_precision(args.precision), args.no_recompute, args.conv_bn_fusion);
  to.channels_last = args.channels_last;
  to.allreduce = args.world_size > 1 || args.simulate_step_ms > 0;
  to.bucket_bytes = static_cast<int64_t>(args.bucket_mb * 1e6);
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(forward), to);
  std::vector<int64_t> bucket_bytes;
  for (const auto& bucket : tg.buckets) {
    int64_t bytes = 0;
    for (const auto& name : bucket) bytes += tg.graph.value(name)->bytes();
    bucket_bytes.push_back(bytes);
  }
  std::string scaling;
  if (args.simulate_step_ms > 0) {
    runtime::dist::NodeTimeEstimate estimate;
    estimate.forward_backward_seconds = args.simulate_step_ms / 1000.0;
    std::vector<double> seconds = runtime::dist::estimate_node_seconds(tg.graph, estimate);
    runtime::dist::StepProfile profile = runtime::dist::profile_step(tg.graph, seconds, tg.allreduce_nodes);
    int64_t batch = graph::batch_size_of(tg.graph);
    scaling = args.json ? runtime::dist::scaling_json(profile, {}, batch) : runtime::dist::scaling_table(profile, {}, batch);
  }
  std::optional<DeviceReport> dev;
  if (!args.device.empty()) dev = compile_for_device(args, tg);
  runtime::PlanOptions options;
  for (const auto& [value, grad] : tg.gradients) options.gradients.push_back(tg.graph.value(grad));
  runtime::MemoryPlan plan = dev ? dev->compiled.plan : runtime::plan_memory(tg.graph, options);
  // What each kernel chose, by op: "Conv: cuDNN eng0 ... (12 nodes)".
  std::vector<std::pair<std::string, int>> chosen;
  if (dev) {
    std::map<std::string, int> count;
    const auto& nodes = dev->compiled.graph.nodes();
    for (size_t i = 0; i < nodes.size(); ++i) {
      std::string d = dev->compiled.kernels[i]->describe();
      if (d.empty()) continue;
      ++count[d.rfind(nodes[i]->op_type, 0) == 0 ? d : nodes[i]->op_type + ": " + d];
    }
    for (const auto& [text, n] : count) chosen.push_back({text, n});
  }

  std::vector<const graph::Value*> largest;
  for (const auto& [v, p] : plan.placements)
    if (p.arena == runtime::Arena::activation || p.arena == runtime::Arena::gradient) largest.push_back(v);
  std::sort(largest.begin(), largest.end(), [](const graph::Value* a, const graph::Value* b) {
    return a->bytes() != b->bytes() ? a->bytes() > b->bytes() : a->name < b->name;
  });
  if (largest.size() > 10) largest.resize(10);
  int64_t batch = graph::batch_size_of(tg.graph);
  double ratio = static_cast<double>(plan.activation_arena_bytes) /
                 static_cast<double>(std::max<int64_t>(plan.activation_naive_bytes, 1));
  // What mixed precision and the fusions made of the graph.
  int64_t casts = 0, fused = 0, half_values = 0;
  for (const auto& n : tg.graph.nodes()) {
    casts += n->op_type == "Cast" || n->op_type == "CastTranspose";
    // A fused batch norm whose statistics come with its convolution is a BatchNormFinalize
    // followed by a forward BatchNormReluApply, or applied in the next convolution's prologue.
    fused += n->op_type == "BatchNormReluTraining";
    if (n->op_type == "BatchNormFinalize" && n->output(2)) {
      bool relu = n->output(4) != nullptr;  // applied in a prologue, with its ReLU
      for (const graph::Node* c : n->output(2)->consumers)
        relu = relu || c->op_type == "BatchNormReluApply" || c->op_type == "BatchNormReluGrad";
      fused += relu;
    }
    for (const graph::Value* v : n->outputs)
      half_values += v && (v->dtype == graph::DType::f16 || v->dtype == graph::DType::bf16);
  }

  if (args.json) {
    nlohmann::json j;
    j["model"] = args.model;
    j["batch"] = batch;
    j["forward_nodes"] = tg.forward_nodes;
    j["backward_nodes"] = tg.backward_nodes;
    j["optimizer_nodes"] = tg.optimizer_nodes;
    j["parameter_bytes"] = plan.parameter_bytes;
    j["state_bytes"] = plan.state_bytes;
    j["gradient_bytes"] = plan.gradient_bytes;
    j["input_bytes"] = plan.input_bytes;
    j["activation_arena_bytes"] = plan.activation_arena_bytes;
    j["activation_naive_bytes"] = plan.activation_naive_bytes;
    j["peak_live_bytes"] = plan.peak_live_bytes;
    j["in_place_values"] = plan.in_place.size();
    j["precision"] = args.precision;
    j["half_values"] = half_values;
    j["casts"] = casts;
    j["fused_batchnorm_relu"] = fused;
    j["recomputed_values"] = tg.recomputed_values;
    j["conv_batchnorm"] = {{"statistics", tg.conv_statistics},
                           {"prologues", tg.conv_prologues},
                           {"gradients", tg.conv_gradients}};
    j["channels_last"] = {{"nodes", tg.channels_last.nodes},
                          {"values", tg.channels_last.values},
                          {"transposes", tg.channels_last.transposes},
                          {"fused_with_casts", tg.cast_transposes}};
    j["loss_scaling"] = !tg.loss_scale.empty();
    if (!bucket_bytes.empty()) j["allreduce_bucket_bytes"] = bucket_bytes;
    if (!scaling.empty()) j["scaling"] = nlohmann::json::parse(scaling);
    if (dev) {
      nlohmann::json d;
      d["device"] = dev->device;
      if (!dev->note.empty()) d["note"] = dev->note;
      d["arenas"] = {{"input", plan.input_bytes},
                     {"parameter", plan.parameter_bytes},
                     {"state", plan.state_arena_bytes},
                     {"gradient", plan.gradient_bytes},
                     {"activation", plan.activation_arena_bytes}};
      d["workspace_max_bytes"] = plan.workspace_max_bytes;
      d["workspace_naive_bytes"] = plan.workspace_naive_bytes;
      d["chosen"] = nlohmann::json::array();
      for (const auto& [text, n] : chosen) d["chosen"].push_back({{"kernel", text}, {"nodes", n}});
      j["device_plan"] = d;
    }
    j["largest_values"] = nlohmann::json::array();
    for (const auto* v : largest)
      j["largest_values"].push_back({{"name", v->name}, {"bytes", v->bytes()}, {"shape", v->shape}});
    std::cout << j.dump(2) << "\n";
  } else {
    using graph::human_bytes;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.1f%%", 100 * ratio);
    std::cout << "training graph " << args.model << " at batch " << batch << "\n"
              << "nodes        " << tg.forward_nodes << " forward (with loss), " << tg.backward_nodes
              << " backward, " << tg.optimizer_nodes << " optimizer\n";
    if (half_values > 0 || fused > 0)
      std::cout << "precision    " << args.precision << ": "
                << (half_values > 0 ? std::to_string(half_values) + " values in half, " + std::to_string(casts) + " casts, "
                                    : std::string())
                << fused << " batch norms fused with their ReLU, " << tg.recomputed_values
                << " of their outputs recomputed in backward"
                << (tg.loss_scale.empty() ? "" : ", dynamic loss scaling") << "\n";
    if (tg.conv_statistics > 0)
      std::cout << "conv + BN    " << tg.conv_statistics << " convolutions compute their batch norm's statistics, "
                << tg.conv_prologues << " batch-norm outputs applied in the next convolution's prologue, "
                << tg.conv_gradients << " batch-norm gradients computed with the data gradient before them\n";
    if (args.channels_last)
      std::cout << "layout       channels-last: " << tg.channels_last.nodes << " nodes, " << tg.channels_last.values
                << " activations, " << tg.channels_last.transposes << " transposes at the borders"
                << (tg.cast_transposes > 0 ? "; " + std::to_string(tg.cast_transposes) + " casts run with a transpose as one kernel"
                                           : std::string())
                << "\n";
    std::cout << "parameters   " << human_bytes(plan.parameter_bytes) << ", gradients "
              << human_bytes(plan.gradient_bytes) << " (one contiguous arena), state "
              << human_bytes(plan.state_bytes) << " (momentum, BN statistics)\n"
              << "activations  planned arena " << human_bytes(plan.activation_arena_bytes)
              << " = " << buf << " of the naive sum " << human_bytes(plan.activation_naive_bytes)
              << "; peak live " << human_bytes(plan.peak_live_bytes) << "; "
              << plan.in_place.size() << " values in place\n"
              << "largest values:\n";
    for (const auto* v : largest)
      std::cout << "  " << human_bytes(v->bytes()) << "  " << v->name << " " << v->shape_string() << "\n";
    if (!bucket_bytes.empty()) {
      std::cout << "allreduce    " << bucket_bytes.size() << " buckets in backward order, each reduced once its last "
                << "gradient exists:";
      for (int64_t b : bucket_bytes) std::cout << " " << human_bytes(b);
      std::cout << "\n";
    }
    if (!scaling.empty())
      std::cout << "predicted data-parallel scaling (ring allreduce over NVLink within a node, 100 Gb/s between "
                << "nodes; one-GPU step " << args.simulate_step_ms << " ms):\n" << scaling;
    if (dev) {
      int64_t total = plan.input_bytes + plan.parameter_bytes + plan.state_arena_bytes + plan.gradient_bytes +
                      plan.activation_arena_bytes;
      std::cout << "device plan  " << dev->device << "\n";
      if (!dev->note.empty()) std::cout << "  " << dev->note << "\n";
      std::cout << "  arenas: input " << human_bytes(plan.input_bytes) << ", parameter "
                << human_bytes(plan.parameter_bytes) << ", state " << human_bytes(plan.state_arena_bytes)
                << ", gradient " << human_bytes(plan.gradient_bytes) << ", activation "
                << human_bytes(plan.activation_arena_bytes) << "; " << human_bytes(total) << " in all\n"
                << "  workspaces (in the activation arena): largest " << human_bytes(plan.workspace_max_bytes)
                << ", " << human_bytes(plan.workspace_naive_bytes) << " if each had its own\n";
      for (const auto& [text, n] : chosen) std::cout << "  " << text << " (" << n << (n == 1 ? " node)\n" : " nodes)\n");
    }
  }
  if (!args.plot.empty()) {
    write_file(args.plot, live_bytes_svg(plan, tg, "live activation bytes, " + args.model +
                                                       ", batch " + std::to_string(batch)));
    if (!args.json) std::cout << "wrote " << args.plot << "\n";
  }
  if (!args.export_path.empty()) {
    graph::export_onnx(tg.graph, args.export_path);
    if (!args.json) std::cout << "wrote " << args.export_path << "\n";
  }
  if (!args.dot.empty()) write_file(args.dot, graph::to_dot(tg.graph));
  return 0;
}

}  // namespace

Subcommand add_graph_command(CLI::App& app) {
  auto args = std::make_shared<GraphArgs>();
  CLI::App* cmd = app.add_subcommand(
      "graph", "Inspect an ONNX model (or, with --training, its training graph and memory plan)");
  cmd->add_option("model", args->model, "ONNX model file")->required();
  cmd->add_option("-b,--batch-size", args->batch_size,
                  "batch size for a symbolic batch dimension, at least 1 (default 1: per-sample figures)");
  cmd->add_flag("--nodes", args->nodes, "list every node with its input and output shapes");
  cmd->add_flag("--json", args->json, "print the report as JSON");
  cmd->add_flag("--training", args->training,
                "build the training graph (loss, backward, Momentum) and plan its memory");
  cmd->add_option("--dot", args->dot, "write the graph in Graphviz's dot format to this file");
  cmd->add_option("--export", args->export_path,
                  "write the graph (constants folded; with --training the training graph) as ONNX");
  cmd->add_option("--plot", args->plot, "with --training: write live bytes over the schedule as SVG");
  cmd->add_flag("--allow-external-data-anywhere", args->allow_external_data_anywhere,
                "read external data even from outside the model's folder (only for models you trust)");
  cmd->add_flag("--as-exported", args->as_exported,
                "show the file as written: do not put back batch norms or biases its exporter folded away");
  cmd->add_option("--device", args->device,
                  "with --training: compile the step for cpu or cuda and report the device plan (arenas, "
                  "workspaces, chosen algorithms)");
  cmd->add_option("--precision", args->precision,
                  std::string("with --training: ") + kPrecisionHelp)->capture_default_str();
  cmd->add_flag("--no-recompute", args->no_recompute, std::string("with --training: ") + kNoRecomputeHelp);
  cmd->add_option("--conv-bn-fusion", args->conv_bn_fusion, std::string("with --training: ") + kConvBnFusionHelp)
      ->capture_default_str();
  cmd->add_flag("--channels-last", args->channels_last, std::string("with --training: ") + kChannelsLastHelp);
  cmd->add_option("--world-size", args->world_size, "with --training: ranks; above 1 the graph reduces gradients in buckets");
  cmd->add_option("--bucket-mb", args->bucket_mb, "with --world-size: gradient bucket size in MB")->capture_default_str();
  cmd->add_option("--simulate", args->simulate_step_ms,
                  "with --training: predict data-parallel scaling (1n1c to 64n512c) from a one-GPU step of this many ms");
  return {cmd, [args]() {
    if (!args->device.empty() && args->device != "cpu" && args->device != "cuda")
      throw Error("--device is cpu or cuda, got '" + escape_name(args->device) + "'");
    parse_precision(args->precision);
    if (!args->device.empty() && !args->training) throw Error("--device needs --training");
    check_range("--world-size", args->world_size, 1, 1 << 20);
    if (!(args->bucket_mb > 0 && args->bucket_mb <= 4096))
      throw Error("--bucket-mb must be in (0, 4096]");
    if (!(args->simulate_step_ms >= 0 && args->simulate_step_ms < 1e9))
      throw Error("--simulate is a step time in milliseconds");
    if ((args->world_size > 1 || args->simulate_step_ms > 0) && !args->training)
      throw Error("--world-size and --simulate need --training");
    if (args->batch_size) check_range("--batch-size", *args->batch_size, 1, kMaxBatchSize);
    if (!args->plot.empty() && !args->training) throw Error("--plot needs --training");
    graph::ImportOptions options;
    options.batch_size = args->batch_size;
    options.allow_external_data_anywhere = args->allow_external_data_anywhere;
    options.restore_exporter_rewrites = !args->as_exported;
    graph::Graph g = graph::import_onnx(args->model, options);
    std::string folded = graph::folded_batchnorm_warning(g, args->model);
    if (!folded.empty()) std::cerr << "oxtrain: warning: " << folded << "\n";
    std::string restored = graph::restored_rewrites_note(g, args->model);
    if (!restored.empty()) std::cerr << "oxtrain: note: " << restored << "\n";
    if (args->training) return run_training_report(*args, std::move(g));
    graph::InspectOptions view{args->model, args->nodes};
    std::cout << (args->json ? graph::summary_json(g, view) : graph::summary_text(g, view));
    if (!args->dot.empty()) {
      write_file(args->dot, graph::to_dot(g));
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
