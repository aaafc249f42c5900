// A Session compiles a graph once (schedule, kernel per node, memory plan) and then runs
// steps. It knows nothing about training: a training graph is just a graph whose updates
// rewrite its parameters and state.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/kernel.h"
#include "runtime/planner.h"

namespace oxtrain::runtime {

struct SessionOptions {
  Device device = Device::cpu;
  int threads = 0;  // CPU threads; 0: all cores
  bool in_place = true;
  // Keep every value readable after run() (no buffer reuse): for debugging.
  bool keep_all_values = false;
  // Gradient values (by name) in bucket order, placed contiguously in the gradient arena.
  std::vector<std::string> gradients;
  // Time every node's kernel (wall clock, summed over runs): see Session::node_seconds().
  bool profile = false;
};

class Session {
 public:
  explicit Session(graph::Graph graph, const SessionOptions& options = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Copies `tensor` into the buffer of graph input `name`; dtype and shape must match.
  void feed(const std::string& name, const graph::Tensor& tensor);
  // The same from caller-owned memory of `dtype` and `shape` (no intermediate Tensor).
  void feed(const std::string& name, graph::DType dtype, const graph::Shape& shape,
            const void* data);
  // Runs every node once, then stores each update into its state.
  void run();
  // A copy of any value: inputs, persistent values, graph outputs (after run()).
  graph::Tensor fetch(const std::string& name) const;
  // Overwrites a persistent value (a parameter or state), e.g. from a checkpoint.
  void assign(const std::string& name, const graph::Tensor& tensor);

  const graph::Graph& graph() const { return graph_; }
  const MemoryPlan& plan() const { return plan_; }
  // With SessionOptions::profile: seconds spent in each node's kernel (graph node order),
  // summed over all runs so far; empty otherwise.
  const std::vector<double>& node_seconds() const { return node_seconds_; }

 private:
  void* address(const graph::Value* v) const;

  graph::Graph graph_;
  SessionOptions options_;
  MemoryPlan plan_;
  struct Buffer {
    uint8_t* data = nullptr;
    int64_t bytes = 0;
  };
  Buffer input_, persistent_, gradient_, activation_, workspace_;
  std::vector<std::unique_ptr<Kernel>> kernels_;
  std::vector<KernelArgs> args_;
  std::vector<bool> fed_;
  std::vector<double> node_seconds_;
};

}  // namespace oxtrain::runtime
