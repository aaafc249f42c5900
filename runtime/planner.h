// The static memory planner.
//
// Every value gets a place in one of five arenas (on a GPU, one allocation each):
//   input       graph inputs, fed each step
//   parameter   trainable initializers, contiguous
//   state       optimizer state and running statistics, then constants
//   gradient    gradients of parameters, contiguous in the order backward finishes them
//               (the order of allreduce buckets)
//   activation  everything else, and each kernel's workspace; offsets planned from live
//               intervals (a workspace lives at its node only)
// Activation intervals come from the schedule (node order): a value lives from its producer
// to its last consumer (graph outputs to the end). Intervals are placed largest first at the
// best-fitting gap among the intervals they overlap in time (the greedy-by-size approach of
// TFLite and ONNX Runtime). Element-wise ops whose input dies at that node write in place
// (the outputs graph::OpFacts::shares_input names). A state update whose producer is the
// state's last reader and whose facts say that output updates that input in place
// (graph::OpFacts::updates_input: Momentum, BatchNormTraining's running statistics) writes
// straight into the state's buffer; other updates are copied back after the step.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::runtime {

struct LiveInterval {
  int64_t first = 0;  // schedule index of the producer
  int64_t last = 0;   // schedule index of the last reader (inclusive)
  int64_t bytes = 0;
};

struct OffsetAssignment {
  std::vector<int64_t> offsets;  // one per interval
  int64_t arena_bytes = 0;
};

// Best fit, largest first. Offsets are multiples of `alignment`.
OffsetAssignment assign_offsets(const std::vector<LiveInterval>& intervals, int64_t alignment = 64);

enum class Arena : uint8_t { none, input, parameter, state, gradient, activation };
const char* arena_name(Arena arena);

struct Placement {
  Arena arena = Arena::none;
  int64_t offset = 0;
  int64_t bytes = 0;
};

struct PlanOptions {
  bool in_place = true;
  // Every activation lives to the end of the step (for debugging and inspection tools).
  bool keep_all = false;
  int64_t alignment = 64;
  // Gradients to place contiguously in the gradient arena, in bucket order.
  std::vector<const graph::Value*> gradients;
  // Workspace each node's kernel needs (schedule order), or empty for none.
  std::vector<int64_t> workspace_bytes;
};

struct MemoryPlan {
  std::unordered_map<const graph::Value*, Placement> placements;
  int64_t input_bytes = 0;
  int64_t parameter_bytes = 0;     // the parameter arena
  int64_t state_bytes = 0, constant_bytes = 0;
  int64_t state_arena_bytes = 0;   // state, then constants
  int64_t persistent_bytes = 0;    // parameter and state arenas together
  int64_t gradient_bytes = 0;
  int64_t activation_arena_bytes = 0;  // planned, workspaces included
  int64_t activation_naive_bytes = 0;  // every activation in its own buffer
  int64_t peak_live_bytes = 0;         // most activation bytes live at one step
  std::vector<int64_t> live_bytes;     // activation bytes live at each schedule step
  // Each node's workspace slice (arena none where it needs none), in schedule order.
  std::vector<Placement> workspaces;
  int64_t workspace_naive_bytes = 0;  // every workspace in its own buffer
  int64_t workspace_max_bytes = 0;    // the largest one
  // Outputs that share their input's buffer (in-place ops), and updates written in place.
  std::vector<std::pair<const graph::Value*, const graph::Value*>> in_place;
  std::vector<bool> update_in_place;  // one per Graph::updates entry

  const Placement& at(const graph::Value* v) const;
};

MemoryPlan plan_memory(const graph::Graph& graph, const PlanOptions& options = {});

}  // namespace oxtrain::runtime
