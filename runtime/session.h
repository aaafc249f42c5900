// A Session compiles a graph once, allocates its arenas on a device, then runs steps. It knows
// nothing about training: a training graph is just a graph whose updates rewrite its
// parameters and state.
//
// The three phases, shared by the CPU and the CUDA runtime:
//   compile   schedule (node order), one kernel per node (shapes checked, algorithms and
//             library plans chosen, workspace reported), the memory plan (compile_graph())
//   allocate  one allocation per arena on the device, initializers copied in, every kernel's
//             arguments bound to its buffers and its own workspace slice
//   run       the kernels in order on the device's stream, then the updates not written in
//             place; on CUDA the step is captured once as a CUDA graph (after one eager
//             warm-up step) and replayed from then on
// No kernel reads tensor values on the host during a step, and a step neither allocates nor
// waits for the device (DeviceRuntime::counters() shows it).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/device_runtime.h"
#include "runtime/kernel.h"
#include "runtime/planner.h"

namespace oxtrain::runtime {

struct SessionOptions {
  Device device = Device::cpu;
  int device_index = 0;                   // which GPU
  Precision precision = Precision::tf32;  // convolutions and matrix products on CUDA
  int threads = 0;  // CPU threads; 0: all cores
  bool in_place = true;
  // Keep every value readable after run() (no buffer reuse): for debugging.
  bool keep_all_values = false;
  // Gradient values (by name) in bucket order, placed contiguously in the gradient arena.
  std::vector<std::string> gradients;
  // Time every node's kernel (wall clock, summed over runs): see Session::node_seconds().
  // On CUDA this runs eagerly and waits for each kernel.
  bool profile = false;
  // CUDA: capture the step as a CUDA graph after one eager step and replay it.
  bool cuda_graph = true;
  // CUDA: choose each cuDNN plan by timing the candidates (the fastest), or take the
  // heuristics' first that runs (the same plans every run: ExecContext::measure_plans).
  bool measure_plans = true;
  // Data parallel: the job's communicator, for AllReduce nodes (null: this process alone,
  // where an AllReduce passes its input through). Not owned; must outlive the Session.
  dist::Communicator* communicator = nullptr;
  // Asynchronous kernels (collectives) run while later nodes compute; false waits for each
  // at once (for measuring what the overlap saves).
  bool overlap = true;
};

// What compile decides, before any device memory exists.
struct CompiledGraph {
  graph::Graph graph;
  std::vector<std::unique_ptr<Kernel>> kernels;  // one per node, schedule order
  MemoryPlan plan;                               // arenas, offsets, workspace slices
};

// Compiles `graph` for options.device. `context` is the device's execution context (CUDA
// kernels build and measure their library plans on it); null to plan without a device, where
// kernels that need one for their plans say so. Every node that cannot run is reported at
// once.
CompiledGraph compile_graph(graph::Graph graph, const SessionOptions& options, const ExecContext* context);

class Session {
 public:
  explicit Session(graph::Graph graph, const SessionOptions& options = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Copies `tensor` into the buffer of graph input `name`; dtype and shape must match.
  void feed(const std::string& name, const graph::Tensor& tensor);
  // The same from caller-owned memory of `dtype` and `shape` (no intermediate Tensor). On
  // CUDA the copy goes through a pinned staging buffer on a copy stream and overlaps the step
  // still running; the next run() waits for it on the device, not on the host.
  void feed(const std::string& name, graph::DType dtype, const graph::Shape& shape,
            const void* data);
  // The same where the device writes the input itself: `write(dst, stream)` fills the input's
  // bytes at `dst` (device memory on CUDA, work enqueued on `stream`, the copy stream; host
  // memory and a null stream on the CPU).
  void feed_written(const std::string& name, graph::DType dtype, const graph::Shape& shape,
                    const std::function<void(void* dst, void* stream)>& write);
  // Runs every node once, then stores each update into its state. On CUDA it returns once
  // the step is queued; fetch() waits for it.
  void run();
  // A copy of any value: inputs, persistent values, graph outputs (after run()).
  graph::Tensor fetch(const std::string& name) const;
  // Overwrites a persistent value (a parameter or state), e.g. from a checkpoint.
  void assign(const std::string& name, const graph::Tensor& tensor);
  // Where a value lives on the device (for device-side metrics); valid for the session's life.
  const void* device_address(const std::string& name) const;

  const graph::Graph& graph() const { return compiled_.graph; }
  const MemoryPlan& plan() const { return compiled_.plan; }
  DeviceRuntime& device() const { return *runtime_; }
  // Steps run so far, and whether they now replay a captured CUDA graph.
  int64_t steps() const { return steps_; }
  bool replaying_graph() const { return captured_; }
  // With SessionOptions::profile: seconds spent in each node's kernel (graph node order),
  // summed over all runs so far; empty otherwise.
  const std::vector<double>& node_seconds() const { return node_seconds_; }

 private:
  void allocate();
  // Index of graph input `name`, checked against `dtype` and `shape`.
  size_t input_index(const std::string& name, graph::DType dtype, const graph::Shape& shape) const;
  void run_step();  // kernels, then updates not written in place
  void wait_pending(bool rethrow);
  void* address(const graph::Value* v) const;

  SessionOptions options_;
  std::unique_ptr<DeviceRuntime> runtime_;
  CompiledGraph compiled_;
  uint8_t* arenas_[6] = {};  // by Arena; Arena::none's slot holds the input staging arena
  std::vector<KernelArgs> args_;
  // Asynchronous kernels: for each node, the asynchronous producers it must wait for first.
  std::vector<std::vector<size_t>> waits_before_;
  std::vector<bool> pending_;
  std::vector<bool> fed_;
  std::vector<const graph::Value*> staged_;  // inputs staged since the last step
  std::vector<double> node_seconds_;
  int64_t steps_ = 0;
  bool captured_ = false;
};

}  // namespace oxtrain::runtime
