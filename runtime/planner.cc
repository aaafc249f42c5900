#include "runtime/planner.h"

#include <algorithm>
#include <numeric>
#include <set>

#include "base/checked.h"
#include "graph/ops.h"

namespace oxtrain::runtime {

using graph::Role;
using graph::Value;

const char* arena_name(Arena arena) {
  switch (arena) {
    case Arena::input: return "input";
    case Arena::parameter: return "parameter";
    case Arena::state: return "state";
    case Arena::gradient: return "gradient";
    case Arena::activation: return "activation";
    default: return "none";
  }
}

const Placement& MemoryPlan::at(const Value* v) const {
  auto it = placements.find(v);
  if (it == placements.end()) throw Error("value '" + v->name + "' has no place in the memory plan");
  return it->second;
}

namespace {
// Sizes come from shapes a file declared: every sum is checked, so a plan too large for 64
// bits is refused instead of wrapping into a small arena.
int64_t plan_add(int64_t a, int64_t b) {
  auto r = checked_add(a, b);
  if (!r) throw Error("the memory plan needs more bytes than fit in 64 bits; the model's shapes are too large");
  return *r;
}
int64_t align_up(int64_t v, int64_t a) { return plan_add(v, a - 1) / a * a; }
}  // namespace

OffsetAssignment assign_offsets(const std::vector<LiveInterval>& intervals, int64_t alignment) {
  OffsetAssignment out;
  out.offsets.assign(intervals.size(), -1);
  std::vector<size_t> order(intervals.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (intervals[a].bytes != intervals[b].bytes) return intervals[a].bytes > intervals[b].bytes;
    return intervals[a].first < intervals[b].first;
  });
  std::vector<size_t> placed;
  for (size_t i : order) {
    const LiveInterval& cur = intervals[i];
    int64_t size = align_up(std::max<int64_t>(cur.bytes, 1), alignment);
    // Placed intervals alive at the same time, by offset.
    std::vector<std::pair<int64_t, int64_t>> busy;  // [offset, end)
    for (size_t j : placed) {
      const LiveInterval& o = intervals[j];
      if (o.first <= cur.last && cur.first <= o.last)
        busy.push_back({out.offsets[j], out.offsets[j] + align_up(std::max<int64_t>(o.bytes, 1), alignment)});
    }
    std::sort(busy.begin(), busy.end());
    int64_t best = -1, best_gap = INT64_MAX, cursor = 0;
    for (const auto& [start, end] : busy) {
      if (start > cursor) {
        int64_t gap = start - cursor;
        if (gap >= size && gap < best_gap) {
          best = cursor;
          best_gap = gap;
        }
      }
      cursor = std::max(cursor, end);
    }
    if (best < 0) best = cursor;  // after everything alive now
    out.offsets[i] = best;
    out.arena_bytes = std::max(out.arena_bytes, plan_add(best, size));
    placed.push_back(i);
  }
  return out;
}

MemoryPlan plan_memory(const graph::Graph& g, const PlanOptions& options) {
  MemoryPlan plan;
  const auto& nodes = g.nodes();
  const int64_t end = static_cast<int64_t>(nodes.size());
  std::unordered_map<const graph::Node*, int64_t> index;
  for (int64_t i = 0; i < end; ++i) index[nodes[i].get()] = i;

  // Inputs.
  for (const Value* v : g.inputs) {
    plan.placements[v] = {Arena::input, plan.input_bytes, v->bytes()};
    plan.input_bytes = plan_add(plan.input_bytes, align_up(v->bytes(), options.alignment));
  }
  // Parameters in their arena; state, then constants, in the state arena.
  for (Role role : {Role::Parameter, Role::State, Role::Constant}) {
    Arena arena = role == Role::Parameter ? Arena::parameter : Arena::state;
    int64_t& arena_bytes = role == Role::Parameter ? plan.parameter_bytes : plan.state_arena_bytes;
    int64_t start = arena_bytes;
    for (const Value* v : g.initializers()) {
      bool match = role == Role::Constant ? v->role != Role::Parameter && v->role != Role::State
                                          : v->role == role;
      if (!match) continue;
      plan.placements[v] = {arena, arena_bytes, v->bytes()};
      arena_bytes = plan_add(arena_bytes, align_up(v->bytes(), options.alignment));
    }
    if (role == Role::State) plan.state_bytes = arena_bytes - start;
    if (role == Role::Constant) plan.constant_bytes = arena_bytes - start;
  }
  plan.persistent_bytes = plan_add(plan.parameter_bytes, plan.state_arena_bytes);
  // Gradients, contiguous in bucket order.
  std::set<const Value*> gradient_set;
  for (const Value* v : options.gradients) {
    if (!gradient_set.insert(v).second || !v->producer) continue;
    plan.placements[v] = {Arena::gradient, plan.gradient_bytes, v->bytes()};
    plan.gradient_bytes = plan_add(plan.gradient_bytes, align_up(v->bytes(), options.alignment));
  }

  // Updates written straight into their state: the producer must be the state's last
  // reader and an op that runs in place (element i read before element i is written).
  std::set<const Value*> graph_outputs(g.outputs.begin(), g.outputs.end());
  plan.update_in_place.assign(g.updates.size(), false);
  for (size_t u = 0; u < g.updates.size(); ++u) {
    const auto& [state, next] = g.updates[u];
    if (!options.in_place || !next->producer || gradient_set.count(next)) continue;
    const graph::Node* p = next->producer;
    // The producer's facts must say this output is the next value of this very state input.
    bool elementwise = false;
    for (const auto& [o, i] : graph::node_facts(*p).updates_input)
      elementwise |= o < p->outputs.size() && i < p->inputs.size() && p->outputs[o] == next && p->inputs[i] == state;
    int64_t last_read = -1;
    for (const graph::Node* c : state->consumers) last_read = std::max(last_read, index[c]);
    if (elementwise && last_read == index[p] && next->bytes() == state->bytes() &&
        !plan.placements.count(next)) {
      plan.placements[next] = plan.at(state);
      plan.update_in_place[u] = true;
      plan.in_place.push_back({next, state});
    }
  }
  std::set<const Value*> copied_updates;
  for (size_t u = 0; u < g.updates.size(); ++u)
    if (!plan.update_in_place[u]) copied_updates.insert(g.updates[u].second);

  // Activation groups: a value plus the in-place outputs that share its buffer.
  std::vector<const Value*> activations;
  std::unordered_map<const Value*, size_t> group_of;
  std::vector<LiveInterval> groups;
  auto last_use = [&](const Value* v) {
    int64_t last = v->producer ? index[v->producer] : 0;
    for (const graph::Node* c : v->consumers) last = std::max(last, index[c]);
    if (graph_outputs.count(v) || copied_updates.count(v) || options.keep_all) last = end;
    return last;
  };
  for (int64_t i = 0; i < end; ++i) {
    const graph::Node& n = *nodes[i];
    for (size_t o = 0; o < n.outputs.size(); ++o) {
      const Value* v = n.outputs[o];
      if (!v || plan.placements.count(v)) continue;
      // In place over a gradient that dies here (AllReduce): the result stays in the gradient
      // arena, so each bucket remains one contiguous slice.
      if (options.in_place) {
        const Value* over = nullptr;
        for (const auto& [out_index, in_index] : graph::node_facts(n).shares_input) {
          const Value* in = out_index == o && in_index < n.inputs.size() ? n.inputs[in_index] : nullptr;
          if (in && gradient_set.count(in) && in->bytes() == v->bytes() && last_use(in) == i &&
              !graph_outputs.count(in))
            over = in;
        }
        if (over) {
          plan.placements[v] = plan.at(over);
          plan.in_place.push_back({v, over});
          continue;
        }
      }
      activations.push_back(v);
      plan.activation_naive_bytes = plan_add(plan.activation_naive_bytes, align_up(v->bytes(), options.alignment));
      // In place: over an input activation of the same size that dies here, where the op's
      // facts allow that output to share that input's buffer.
      if (options.in_place) {
        for (const auto& [out_index, in_index] : graph::node_facts(n).shares_input) {
          if (out_index != o || in_index >= n.inputs.size()) continue;
          const Value* in = n.inputs[in_index];
          if (!in || !group_of.count(in) || in->bytes() != v->bytes() || last_use(in) != i ||
              graph_outputs.count(in))
            continue;
          size_t gidx = group_of[in];
          if (groups[gidx].last != i) continue;  // someone else already extended it
          group_of[v] = gidx;
          groups[gidx].last = last_use(v);
          plan.in_place.push_back({v, in});
          break;
        }
        if (group_of.count(v)) continue;
      }
      group_of[v] = groups.size();
      groups.push_back({i, last_use(v), v->bytes()});
    }
  }
  // Kernel workspaces: each node's own slice of the activation arena, alive at that node only.
  std::vector<size_t> workspace_group(nodes.size(), SIZE_MAX);
  if (!options.workspace_bytes.empty() && options.workspace_bytes.size() != nodes.size())
    throw Error("plan_memory: " + std::to_string(options.workspace_bytes.size()) + " workspace sizes for " +
                std::to_string(nodes.size()) + " nodes");
  for (size_t i = 0; i < options.workspace_bytes.size(); ++i) {
    int64_t bytes = options.workspace_bytes[i];
    if (bytes <= 0) continue;
    workspace_group[i] = groups.size();
    groups.push_back({static_cast<int64_t>(i), static_cast<int64_t>(i), bytes});
    plan.workspace_naive_bytes = plan_add(plan.workspace_naive_bytes, align_up(bytes, options.alignment));
    plan.workspace_max_bytes = std::max(plan.workspace_max_bytes, bytes);
  }
  OffsetAssignment assignment = assign_offsets(groups, options.alignment);
  plan.activation_arena_bytes = assignment.arena_bytes;
  for (const Value* v : activations)
    plan.placements[v] = {Arena::activation, assignment.offsets[group_of[v]], v->bytes()};
  plan.workspaces.assign(nodes.size(), Placement{});
  for (size_t i = 0; i < workspace_group.size(); ++i)
    if (workspace_group[i] != SIZE_MAX)
      plan.workspaces[i] = {Arena::activation, assignment.offsets[workspace_group[i]], options.workspace_bytes[i]};

  plan.live_bytes.assign(static_cast<size_t>(std::max<int64_t>(end, 1)), 0);
  for (const LiveInterval& gr : groups)
    for (int64_t t = gr.first; t <= std::min(gr.last, end - 1); ++t)
      plan.live_bytes[t] = plan_add(plan.live_bytes[t], gr.bytes);
  plan.peak_live_bytes = *std::max_element(plan.live_bytes.begin(), plan.live_bytes.end());
  return plan;
}

}  // namespace oxtrain::runtime
