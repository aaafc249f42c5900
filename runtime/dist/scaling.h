// The scaling model of data-parallel training: what a step costs on N nodes x G GPUs, from a
// profile of the same step on one device and a model of the links.
//
// The training graph (autodiff::TrainingOptions::allreduce) reduces gradients in buckets, one
// oxtrain.AllReduce node per bucket, each scheduled right after its bucket's last gradient is
// produced. On a GPU the reductions run on a communication stream, one after another, while
// backward goes on. The model replays that:
//   - profile_step() reads a single-device profile (Session::node_seconds()): when each bucket
//     is ready, how long forward + backward takes, how long the optimizer takes;
//   - ring_allreduce_seconds() prices one bucket's ring allreduce (the cost model below);
//   - predict() places the buckets on the communication stream and returns the step time;
//   - scaling_rows() / scaling_table() / scaling_json() tabulate predict() over cluster sizes.
// Where no GPU profile exists, estimate_node_seconds() spreads a measured step time over the
// graph's nodes by their arithmetic (see its comment), which is what the DLPerf example in
// tests/test_dist_scaling.cc does.
//
// Cost of one ring allreduce of S bytes over n = nodes x gpus_per_node ranks
// (NCCL's ring, protocol Simple, which NCCL picks for buckets of megabytes):
//   time = base_latency + intra_steps x nvlink_step_latency + inter_steps x network_step_latency
//          + 2 (n-1)/n x S / bus_bandwidth
//   inter_steps = 2 (nodes - 1), intra_steps = 2 (n - 1) - inter_steps
//   bus_bandwidth = nvlink_bus_bandwidth on one node,
//                   min(nvlink_bus_bandwidth, network_bandwidth) on several.
// Why: reduce-scatter then all-gather around a ring is 2 (n-1) steps, each rank sending S/n per
// step, so every edge of the ring carries 2 (n-1)/n x S and the step time is set by the
// slowest edge. Ranks are numbered node-major, so the ring crosses each node boundary once:
// one edge per node goes over the network, and all of the node's NIC bandwidth serves that
// edge (NCCL splits the ring into channels that share the node's NICs, so the sum over
// channels is what one NIC moves). The latency terms are NCCL's own tuning model
// (src/graph/tuning.cc, ncclTopoTuneModel: latency = baseLat + (nsteps - nInterSteps) x
// intraLat + nInterSteps x interLat with nsteps = 2 (nRanks-1), nInterSteps = 2 (nNodes-1) for
// AllReduce on a ring). Not modelled: NCCL's tree algorithm (which it prefers for small
// messages across many nodes), its 1.9x "plateau" latency correction for large multi-node
// rings, and the SMs the communication kernels take from compute.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::runtime::dist {

struct LinkModel {
  // Per-GPU bus bandwidth of an allreduce ring inside a node, bytes/s. V100 SXM2 has 6 NVLink 2
  // links (25 GB/s each way); NCCL's topology model counts 20 GB/s of usable bandwidth per
  // Volta link (SM70_NVLINK_BW in src/graph/topo.h), and on the hybrid cube-mesh of an 8-GPU
  // V100 server its rings use all 6 links: 6 x 20 = 120 GB/s, in line with the ~120-130 GB/s
  // bus bandwidth nccl-tests reports for all_reduce on DGX-1V.
  double nvlink_bus_bandwidth = 120e9;
  // Bandwidth of a node's network connection, bytes/s: one 100 Gb/s InfiniBand NIC =
  // 12.5 GB/s line rate (NCCL's model counts 12 GB/s, NET_BW).
  double network_bandwidth = 12.5e9;
  // Latencies, seconds: NCCL's tuning model for the Ring algorithm with the Simple protocol:
  // baseLat 8.4 us per collective, hwLat 3.4 us per NVLink step and 9.6 us per network step
  // (the network figure includes NCCL's proxy thread and a chunk's flight, not just the
  // InfiniBand hop's ~1-2 us).
  double base_latency = 8.4e-6;
  double nvlink_step_latency = 3.4e-6;
  double network_step_latency = 9.6e-6;
  int gpus_per_node = 8;  // the default cluster shape for default_configs()
};

// Seconds for one ring allreduce of `bytes` over nodes x gpus_per_node ranks (see the header
// comment). 0 for one rank or zero bytes. Throws Error for non-positive counts or a link with
// non-positive bandwidth or negative latency.
double ring_allreduce_seconds(const LinkModel& link, int64_t bytes, int nodes, int gpus_per_node);

struct Bucket {
  int64_t bytes = 0;
  double ready_seconds = 0;  // from the step's start, when its last gradient exists
};

struct StepProfile {
  double forward_backward_seconds = 0;
  double optimizer_seconds = 0;
  std::vector<Bucket> buckets;  // in the order they are reduced (schedule order)

  double single_device_seconds() const { return forward_backward_seconds + optimizer_seconds; }
};

// The step of a training graph built with TrainingOptions::allreduce, from one device's profile.
// `node_seconds`: one entry per node of `g`, in graph node order (Session::node_seconds()).
// `allreduce_nodes`: TrainingGraph::allreduce_nodes. AllReduce nodes' own time is left out
// (one device reduces nothing; on several it is what the model prices). Then:
//   ready_seconds of a bucket = sum of the times of the nodes scheduled before its AllReduce node;
//   forward_backward_seconds  = sum of the times of the nodes scheduled before the optimizer
//                               (the Momentum node);
//   optimizer_seconds         = the Momentum node's time (plus any node scheduled after it);
//   bytes of a bucket         = the sum of its AllReduce node's input sizes.
// Buckets come out in schedule order. Throws Error when the sizes disagree, a named node is
// missing or is no AllReduce, a time is negative or not finite, the graph has no Momentum node,
// an AllReduce node comes after it, or a bucket's size is unknown.
StepProfile profile_step(const graph::Graph& g, const std::vector<double>& node_seconds,
                         const std::vector<std::string>& allreduce_nodes);

// A stand-in for Session::node_seconds() where no profile of the target device exists: a
// measured step time spread over the graph's nodes by how much work each does.
struct NodeTimeEstimate {
  double forward_backward_seconds = 0;  // everything before the optimizer
  double optimizer_seconds = 0;         // the Momentum node
  // Share of forward_backward_seconds spent in memory-bound nodes (batch norm, ReLU, adds,
  // pooling, the loss), spread over those nodes by the bytes they read and write; the rest goes
  // to the matrix products (Conv, ConvGradData, ConvGradFilter, Gemm, MatMul) by multiply-adds.
  // 0.3: in fp32 ResNet-50 training on V100 the convolutions take roughly 70% of the step and
  // the element-wise passes the rest.
  double memory_bound_share = 0.3;
};

// Seconds per node of `g` (graph node order): AllReduce nodes 0, the Momentum node
// optimizer_seconds, the others forward_backward_seconds split as NodeTimeEstimate says.
// Throws Error when the graph has no Momentum node or no node with work to spread over.
std::vector<double> estimate_node_seconds(const graph::Graph& g, const NodeTimeEstimate& estimate);

struct Prediction {
  int nodes = 1, gpus_per_node = 1;
  double step_seconds = 0;
  double single_device_seconds = 0;
  double communication_seconds = 0;          // the communication stream's busy time
  double exposed_communication_seconds = 0;  // step_seconds - single_device_seconds
  double efficiency = 1;                     // single_device_seconds / step_seconds

  int ranks() const { return nodes * gpus_per_node; }
  double images_per_second(int64_t per_gpu_batch) const {
    return static_cast<double>(per_gpu_batch) * ranks() / step_seconds;
  }
};

// One step on nodes x gpus_per_node GPUs, each running `profile`'s step: the buckets are
// reduced one after another on one communication stream, each starting at max(its ready time,
// the previous bucket's end); the step ends at max(forward_backward end, last bucket's end)
// plus the optimizer. On one GPU this is exactly the single-device step.
Prediction predict(const StepProfile& profile, const LinkModel& link, int nodes, int gpus_per_node);

struct ClusterConfig {
  int nodes = 1;
  int gpus_per_node = 1;
  std::string name() const;  // "2n16c": nodes, then GPUs in all (DLPerf's naming)
};

// 1n1c, then 1, 2, 4, ..., 64 nodes of link.gpus_per_node GPUs: 1n8c ... 64n512c by default.
std::vector<ClusterConfig> default_configs(const LinkModel& link = {});

struct ScalingRow {
  ClusterConfig config;
  Prediction prediction;
  double images_per_second = 0;
};

std::vector<ScalingRow> scaling_rows(const StepProfile& profile, const LinkModel& link, int64_t per_gpu_batch,
                                     const std::vector<ClusterConfig>& configs);

// A text table, one row per config: config, step ms, exposed comm ms, img/s, scaling efficiency %.
// `configs` empty: default_configs(link).
std::string scaling_table(const StepProfile& profile, const LinkModel& link, int64_t per_gpu_batch,
                          const std::vector<ClusterConfig>& configs = {});
// The same as JSON: {"per_gpu_batch": B, "single_device_step_ms": ..., "rows": [{"config": "1n8c",
// "nodes": 1, "gpus": 8, "step_ms": ..., "communication_ms": ..., "exposed_communication_ms": ...,
// "images_per_second": ..., "efficiency_percent": ...}, ...]}.
std::string scaling_json(const StepProfile& profile, const LinkModel& link, int64_t per_gpu_batch,
                         const std::vector<ClusterConfig>& configs = {});

}  // namespace oxtrain::runtime::dist
