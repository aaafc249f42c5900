// The scaling model of data-parallel training: ring allreduce cost, step profiles, predictions
// and tables (see scaling.h).
#include "runtime/dist/scaling.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "graph/stats.h"

namespace oxtrain::runtime::dist {

namespace {

void check_cluster(int nodes, int gpus_per_node, const char* where) {
  if (nodes < 1 || gpus_per_node < 1)
    throw Error(std::string(where) + ": a cluster needs at least one node of at least one GPU, got " +
                std::to_string(nodes) + " nodes x " + std::to_string(gpus_per_node) + " GPUs");
}

void check_link(const LinkModel& link) {
  auto positive = [](double x) { return std::isfinite(x) && x > 0; };
  auto non_negative = [](double x) { return std::isfinite(x) && x >= 0; };
  if (!positive(link.nvlink_bus_bandwidth) || !positive(link.network_bandwidth))
    throw Error("link model: bandwidths must be positive, got NVLink " + std::to_string(link.nvlink_bus_bandwidth) +
                " B/s, network " + std::to_string(link.network_bandwidth) + " B/s");
  if (!non_negative(link.base_latency) || !non_negative(link.nvlink_step_latency) ||
      !non_negative(link.network_step_latency))
    throw Error("link model: latencies must be zero or more, got base " + std::to_string(link.base_latency) +
                " s, NVLink step " + std::to_string(link.nvlink_step_latency) + " s, network step " +
                std::to_string(link.network_step_latency) + " s");
}

void check_seconds(double seconds, const std::string& what) {
  if (!std::isfinite(seconds) || seconds < 0)
    throw Error(what + ": a time must be finite and zero or more, got " + std::to_string(seconds));
}

bool is_allreduce(const graph::Node& n) { return n.op_type == "AllReduce"; }
bool is_optimizer(const graph::Node& n) { return n.op_type == "Momentum" || n.op_type == "ScaledMomentum"; }

// Multiply-adds of the matrix products, backward ones included (each costs what the forward
// convolution costs: one multiply-add per output-gradient element and filter tap).
int64_t matrix_multiply_adds(const graph::Node& n) {
  if (n.op_type == "ConvGradData" || n.op_type == "ConvGradFilter") {
    const graph::Value* dy = n.input(0);
    // ConvGradData reads the filter [M, C/group, k...]; ConvGradFilter writes its gradient.
    const graph::Value* w = n.op_type == "ConvGradData" ? n.input(1) : n.output(0);
    if (!dy || !w || dy->numel() < 0 || !w->rank_known || w->numel() < 0) return 0;
    int64_t per_output = 1;
    for (size_t i = 1; i < w->shape.size(); ++i) per_output *= w->shape[i];
    return dy->numel() * per_output;
  }
  return graph::node_multiply_adds(n);
}

bool moves_no_data(const graph::Node& n) {
  static const std::set<std::string> views = {"Reshape", "Flatten", "Squeeze", "Unsqueeze",
                                              "Identity", "Shape", "Constant"};
  return views.count(n.op_type) != 0;
}

int64_t bytes_touched(const graph::Node& n) {
  int64_t total = 0;
  for (const graph::Value* v : n.inputs)
    if (v && v->bytes() > 0) total += v->bytes();
  for (const graph::Value* v : n.outputs)
    if (v && v->bytes() > 0) total += v->bytes();
  return total;
}

}  // namespace

double ring_allreduce_seconds(const LinkModel& link, int64_t bytes, int nodes, int gpus_per_node) {
  check_cluster(nodes, gpus_per_node, "ring allreduce");
  check_link(link);
  if (bytes < 0) throw Error("ring allreduce: negative size " + std::to_string(bytes) + " bytes");
  const int64_t ranks = static_cast<int64_t>(nodes) * gpus_per_node;
  if (ranks == 1 || bytes == 0) return 0;
  const int64_t steps = 2 * (ranks - 1);
  const int64_t inter_steps = 2 * (static_cast<int64_t>(nodes) - 1);
  const int64_t intra_steps = steps - inter_steps;
  const double bandwidth =
      nodes == 1 ? link.nvlink_bus_bandwidth : std::min(link.nvlink_bus_bandwidth, link.network_bandwidth);
  const double latency = link.base_latency + static_cast<double>(intra_steps) * link.nvlink_step_latency +
                         static_cast<double>(inter_steps) * link.network_step_latency;
  const double bytes_per_edge = static_cast<double>(steps) / static_cast<double>(ranks) * static_cast<double>(bytes);
  return latency + bytes_per_edge / bandwidth;
}

StepProfile profile_step(const graph::Graph& g, const std::vector<double>& node_seconds,
                         const std::vector<std::string>& allreduce_nodes) {
  const auto& nodes = g.nodes();
  if (node_seconds.size() != nodes.size())
    throw Error("profile_step: " + std::to_string(node_seconds.size()) + " node times for a graph of " +
                std::to_string(nodes.size()) + " nodes; pass Session::node_seconds() of a session profiling this graph");
  std::set<std::string> wanted;
  for (const auto& name : allreduce_nodes) {
    if (!wanted.insert(name).second) throw Error("profile_step: AllReduce node '" + name + "' is listed twice");
  }
  StepProfile profile;
  std::set<std::string> found;
  double elapsed = 0;
  bool optimizer_seen = false;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const graph::Node& n = *nodes[i];
    check_seconds(node_seconds[i], "profile_step: " + n.describe());
    if (wanted.count(n.name)) {
      if (!is_allreduce(n))
        throw Error("profile_step: " + n.describe() + " is listed as an AllReduce node but is a " + n.op_type);
      if (optimizer_seen)
        throw Error("profile_step: " + n.describe() + " runs after the optimizer; its gradients would not be reduced");
      Bucket bucket;
      bucket.ready_seconds = elapsed;
      for (const graph::Value* v : n.inputs) {
        if (!v || v->bytes() < 0)
          throw Error("profile_step: " + n.describe() + ": the size of gradient '" + (v ? v->name : "") +
                      "' is unknown; profile a graph with fixed shapes");
        bucket.bytes += v->bytes();
      }
      profile.buckets.push_back(bucket);
      found.insert(n.name);
      continue;
    }
    if (is_allreduce(n)) continue;  // a reduction outside the given list: not priced, not timed
    if (is_optimizer(n) && !optimizer_seen) {
      optimizer_seen = true;
      profile.forward_backward_seconds = elapsed;
    }
    if (optimizer_seen)
      profile.optimizer_seconds += node_seconds[i];
    else
      elapsed += node_seconds[i];
  }
  for (const auto& name : allreduce_nodes)
    if (!found.count(name)) throw Error("profile_step: the graph has no node named '" + name + "'");
  if (!optimizer_seen)
    throw Error("profile_step: the graph has no optimizer (Momentum node); build it with TrainingOptions::optimizer on");
  return profile;
}

std::vector<double> estimate_node_seconds(const graph::Graph& g, const NodeTimeEstimate& estimate) {
  check_seconds(estimate.forward_backward_seconds, "estimate_node_seconds: forward_backward_seconds");
  check_seconds(estimate.optimizer_seconds, "estimate_node_seconds: optimizer_seconds");
  if (!(estimate.memory_bound_share >= 0 && estimate.memory_bound_share <= 1))
    throw Error("estimate_node_seconds: memory_bound_share must be within [0, 1], got " +
                std::to_string(estimate.memory_bound_share));
  const auto& nodes = g.nodes();
  std::vector<int64_t> macs(nodes.size(), 0), bytes(nodes.size(), 0);
  double total_macs = 0, total_bytes = 0;
  bool optimizer_seen = false;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const graph::Node& n = *nodes[i];
    if (is_optimizer(n)) optimizer_seen = true;
    if (optimizer_seen || is_allreduce(n) || moves_no_data(n)) continue;
    macs[i] = matrix_multiply_adds(n);
    if (macs[i] == 0) bytes[i] = bytes_touched(n);
    total_macs += static_cast<double>(macs[i]);
    total_bytes += static_cast<double>(bytes[i]);
  }
  if (!optimizer_seen)
    throw Error("estimate_node_seconds: the graph has no optimizer (Momentum node)");
  if (total_macs == 0 && total_bytes == 0)
    throw Error("estimate_node_seconds: no node before the optimizer has a known size to spread time over");
  // With only one kind of node, it takes all of the time.
  double memory_share = total_macs == 0 ? 1.0 : total_bytes == 0 ? 0.0 : estimate.memory_bound_share;
  double per_mac = total_macs > 0 ? (1 - memory_share) * estimate.forward_backward_seconds / total_macs : 0;
  double per_byte = total_bytes > 0 ? memory_share * estimate.forward_backward_seconds / total_bytes : 0;
  std::vector<double> seconds(nodes.size(), 0);
  bool optimizer_timed = false;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (is_optimizer(*nodes[i]) && !optimizer_timed) {
      seconds[i] = estimate.optimizer_seconds;
      optimizer_timed = true;
    } else {
      seconds[i] = static_cast<double>(macs[i]) * per_mac + static_cast<double>(bytes[i]) * per_byte;
    }
  }
  return seconds;
}

Prediction predict(const StepProfile& profile, const LinkModel& link, int nodes, int gpus_per_node) {
  check_cluster(nodes, gpus_per_node, "predict");
  check_seconds(profile.forward_backward_seconds, "predict: forward_backward_seconds");
  check_seconds(profile.optimizer_seconds, "predict: optimizer_seconds");
  Prediction p;
  p.nodes = nodes;
  p.gpus_per_node = gpus_per_node;
  p.single_device_seconds = profile.single_device_seconds();
  if (p.single_device_seconds <= 0) throw Error("predict: the single-device step takes no time; profile a real step");
  double stream_end = 0;  // when the communication stream is free
  for (size_t b = 0; b < profile.buckets.size(); ++b) {
    const Bucket& bucket = profile.buckets[b];
    check_seconds(bucket.ready_seconds, "predict: bucket " + std::to_string(b) + " ready_seconds");
    double seconds = ring_allreduce_seconds(link, bucket.bytes, nodes, gpus_per_node);
    p.communication_seconds += seconds;
    stream_end = std::max(bucket.ready_seconds, stream_end) + seconds;
  }
  p.step_seconds = std::max(profile.forward_backward_seconds, stream_end) + profile.optimizer_seconds;
  p.exposed_communication_seconds = p.step_seconds - p.single_device_seconds;
  p.efficiency = p.single_device_seconds / p.step_seconds;
  return p;
}

std::string ClusterConfig::name() const {
  return std::to_string(nodes) + "n" + std::to_string(static_cast<int64_t>(nodes) * gpus_per_node) + "c";
}

std::vector<ClusterConfig> default_configs(const LinkModel& link) {
  std::vector<ClusterConfig> configs = {{1, 1}};
  for (int nodes = 1; nodes <= 64; nodes *= 2) configs.push_back({nodes, link.gpus_per_node});
  return configs;
}

std::vector<ScalingRow> scaling_rows(const StepProfile& profile, const LinkModel& link, int64_t per_gpu_batch,
                                     const std::vector<ClusterConfig>& configs) {
  if (per_gpu_batch < 1) throw Error("scaling: the per-GPU batch must be positive, got " + std::to_string(per_gpu_batch));
  std::vector<ScalingRow> rows;
  for (const ClusterConfig& config : configs.empty() ? default_configs(link) : configs) {
    ScalingRow row;
    row.config = config;
    row.prediction = predict(profile, link, config.nodes, config.gpus_per_node);
    row.images_per_second = row.prediction.images_per_second(per_gpu_batch);
    rows.push_back(row);
  }
  return rows;
}

std::string scaling_table(const StepProfile& profile, const LinkModel& link, int64_t per_gpu_batch,
                          const std::vector<ClusterConfig>& configs) {
  std::string out = "config     step ms  exposed comm ms      img/s  efficiency %\n";
  char line[128];
  for (const ScalingRow& row : scaling_rows(profile, link, per_gpu_batch, configs)) {
    std::snprintf(line, sizeof line, "%-8s %9.2f %16.2f %10.1f %13.1f\n", row.config.name().c_str(),
                  row.prediction.step_seconds * 1e3, row.prediction.exposed_communication_seconds * 1e3,
                  row.images_per_second, row.prediction.efficiency * 100);
    out += line;
  }
  return out;
}

std::string scaling_json(const StepProfile& profile, const LinkModel& link, int64_t per_gpu_batch,
                         const std::vector<ClusterConfig>& configs) {
  nlohmann::json rows = nlohmann::json::array();
  for (const ScalingRow& row : scaling_rows(profile, link, per_gpu_batch, configs)) {
    rows.push_back({{"config", row.config.name()},
                    {"nodes", row.config.nodes},
                    {"gpus", row.prediction.ranks()},
                    {"step_ms", row.prediction.step_seconds * 1e3},
                    {"communication_ms", row.prediction.communication_seconds * 1e3},
                    {"exposed_communication_ms", row.prediction.exposed_communication_seconds * 1e3},
                    {"images_per_second", row.images_per_second},
                    {"efficiency_percent", row.prediction.efficiency * 100}});
  }
  nlohmann::json doc = {{"per_gpu_batch", per_gpu_batch},
                        {"single_device_step_ms", profile.single_device_seconds() * 1e3},
                        {"rows", rows}};
  return doc.dump(2);
}

}  // namespace oxtrain::runtime::dist
