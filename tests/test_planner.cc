// The memory planner: on random DAGs no two simultaneously live values share bytes (unless
// one is the in-place output of the other), every value fits in its arena, and the plan
// beats the naive sum.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "graph/zoo.h"
#include "runtime/planner.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using namespace oxtrain::runtime;

TEST(Planner, AssignOffsetsOnRandomIntervals) {
  Rng rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    int count = 1 + static_cast<int>(rng.next_u64() % 60);
    std::vector<LiveInterval> iv;
    int64_t naive = 0;
    for (int i = 0; i < count; ++i) {
      int64_t first = static_cast<int64_t>(rng.next_u64() % 100);
      int64_t len = static_cast<int64_t>(rng.next_u64() % 30);
      int64_t bytes = 1 + static_cast<int64_t>(rng.next_u64() % 5000);
      iv.push_back({first, first + len, bytes});
      naive += (bytes + 63) / 64 * 64;
    }
    OffsetAssignment a = assign_offsets(iv, 64);
    ASSERT_LE(a.arena_bytes, naive);
    for (int i = 0; i < count; ++i) {
      ASSERT_GE(a.offsets[i], 0);
      ASSERT_EQ(a.offsets[i] % 64, 0);
      ASSERT_LE(a.offsets[i] + iv[i].bytes, a.arena_bytes);
      for (int j = i + 1; j < count; ++j) {
        bool time = iv[i].first <= iv[j].last && iv[j].first <= iv[i].last;
        bool space = a.offsets[i] < a.offsets[j] + iv[j].bytes && a.offsets[j] < a.offsets[i] + iv[i].bytes;
        ASSERT_FALSE(time && space) << "trial " << trial << " intervals " << i << " and " << j;
      }
    }
  }
}

namespace {

// A random DAG of element-wise-looking nodes (the planner reads only shapes and links).
Graph random_graph(Rng& rng, int nodes) {
  Graph g;
  std::vector<Value*> pool;
  Value* x = g.add_value("x", DType::f32, {64}, Role::Input);
  g.inputs.push_back(x);
  pool.push_back(x);
  const char* ops[] = {"Relu", "Add", "Mul", "Gemm", "Sum", "Identity"};
  for (int i = 0; i < nodes; ++i) {
    std::string op = ops[rng.next_u64() % 6];
    size_t arity = (op == "Relu" || op == "Identity") ? 1 : 2 + rng.next_u64() % 2;
    std::vector<Value*> ins;
    for (size_t k = 0; k < arity; ++k) {
      // Prefer recent values so chains form, sometimes reach far back (fan-out, long lives).
      size_t back = rng.next_u64() % 4 == 0 ? rng.next_u64() % pool.size()
                                            : pool.size() - 1 - rng.next_u64() % std::min<size_t>(3, pool.size());
      ins.push_back(pool[back]);
    }
    // Same size as the first input half of the time, so in-place reuse happens.
    int64_t size = rng.next_u64() % 2 ? ins[0]->shape[0] : 16 + static_cast<int64_t>(rng.next_u64() % 512);
    Value* out = g.add_value(std::string("v").append(std::to_string(i)), DType::f32, {size});
    out->rank_known = true;
    g.add_node(op, ins, {out}, std::string("n").append(std::to_string(i)));
    pool.push_back(out);
  }
  g.outputs.push_back(pool.back());
  if (pool.size() > 3) g.outputs.push_back(pool[pool.size() / 2]);
  return g;
}

}  // namespace

TEST(Planner, RandomDagsNeverOverlapLiveValues) {
  Rng rng(5);
  for (int trial = 0; trial < 100; ++trial) {
    Graph g = random_graph(rng, 5 + static_cast<int>(rng.next_u64() % 60));
    MemoryPlan plan = plan_memory(g);
    const auto& nodes = g.nodes();
    std::map<const Node*, int64_t> index;
    for (size_t i = 0; i < nodes.size(); ++i) index[nodes[i].get()] = static_cast<int64_t>(i);
    std::set<const Value*> outputs(g.outputs.begin(), g.outputs.end());
    struct Live {
      const Value* v;
      int64_t first, last, offset, bytes;
    };
    std::vector<Live> live;
    for (const auto& n : nodes) {
      const Value* v = n->output(0);
      const Placement& p = plan.at(v);
      ASSERT_EQ(p.arena, Arena::activation);
      ASSERT_LE(p.offset + p.bytes, plan.activation_arena_bytes) << v->name;
      int64_t last = index[n.get()];
      for (const Node* c : v->consumers) last = std::max(last, index[c]);
      if (outputs.count(v)) last = static_cast<int64_t>(nodes.size());
      live.push_back({v, index[n.get()], last, p.offset, p.bytes});
    }
    // Aliases the plan declared: (output, input) pairs of in-place nodes.
    std::set<std::pair<const Value*, const Value*>> alias;
    for (const auto& [out, in] : plan.in_place) {
      alias.insert({out, in});
      // The input must die where the output is born.
      int64_t in_last = 0;
      for (const Node* c : in->consumers) in_last = std::max(in_last, index[c]);
      ASSERT_EQ(in_last, index[out->producer]) << out->name << " over " << in->name;
      ASSERT_FALSE(outputs.count(in));
    }
    for (size_t i = 0; i < live.size(); ++i)
      for (size_t j = i + 1; j < live.size(); ++j) {
        const Live &a = live[i], &b = live[j];
        bool time = a.first <= b.last && b.first <= a.last;
        bool space = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
        if (!(time && space)) continue;
        // Only an in-place pair may touch, and only at the handover node.
        bool handover = (alias.count({b.v, a.v}) && a.last == b.first) ||
                        (alias.count({a.v, b.v}) && b.last == a.first);
        ASSERT_TRUE(handover) << "trial " << trial << ": " << a.v->name << " and " << b.v->name
                              << " overlap while both live";
      }
    EXPECT_LE(plan.activation_arena_bytes, plan.activation_naive_bytes);
    EXPECT_LE(plan.peak_live_bytes, plan.activation_arena_bytes);
  }
}

TEST(Planner, InPlaceReluOverDyingInput) {
  Graph g;
  Value* x = g.add_value("x", DType::f32, {1000}, Role::Input);
  g.inputs.push_back(x);
  Value* a = g.add_value("a", DType::f32, {1000});
  Value* b = g.add_value("b", DType::f32, {1000});
  Value* c = g.add_value("c", DType::f32, {1000});
  g.add_node("Neg", {x}, {a}, "neg");
  g.add_node("Relu", {a}, {b}, "relu");  // a dies here: b takes its buffer
  g.add_node("Relu", {b}, {c}, "relu2");
  g.outputs = {b, c};                    // b stays alive: c needs its own buffer
  MemoryPlan plan = plan_memory(g);
  EXPECT_EQ(plan.at(a).offset, plan.at(b).offset);
  EXPECT_NE(plan.at(b).offset, plan.at(c).offset);
  EXPECT_EQ(plan.in_place.size(), 1u);
  // Inputs never alias activations.
  EXPECT_EQ(plan.at(x).arena, Arena::input);
}

// The device plan: each kernel's workspace is a slice of the activation arena alive at its
// node only. No slice overlaps a value live at that node, slices are aligned, and the arena
// holds them all.
TEST(Planner, WorkspacesNeverOverlapLiveValues) {
  Rng rng(17);
  for (int trial = 0; trial < 100; ++trial) {
    Graph g = random_graph(rng, 5 + static_cast<int>(rng.next_u64() % 60));
    const auto& nodes = g.nodes();
    PlanOptions options;
    options.alignment = 256;
    for (size_t i = 0; i < nodes.size(); ++i)
      options.workspace_bytes.push_back(rng.next_u64() % 3 == 0 ? 0 : 1 + static_cast<int64_t>(rng.next_u64() % 4000));
    MemoryPlan plan = plan_memory(g, options);
    ASSERT_EQ(plan.workspaces.size(), nodes.size());
    std::map<const Node*, int64_t> index;
    for (size_t i = 0; i < nodes.size(); ++i) index[nodes[i].get()] = static_cast<int64_t>(i);
    std::set<const Value*> outputs(g.outputs.begin(), g.outputs.end());
    int64_t naive = 0, largest = 0;
    for (size_t i = 0; i < nodes.size(); ++i) {
      const Placement& ws = plan.workspaces[i];
      int64_t want = options.workspace_bytes[i];
      if (want == 0) {
        EXPECT_EQ(ws.arena, Arena::none);
        continue;
      }
      naive += (want + 255) / 256 * 256;
      largest = std::max(largest, want);
      ASSERT_EQ(ws.arena, Arena::activation);
      ASSERT_EQ(ws.bytes, want);
      ASSERT_EQ(ws.offset % 256, 0);
      ASSERT_LE(ws.offset + ws.bytes, plan.activation_arena_bytes);
      // Every value alive at node i (born at or before it, read at or after it).
      for (const auto& n : nodes) {
        const Value* v = n->output(0);
        int64_t first = index[n.get()], last = first;
        for (const Node* c : v->consumers) last = std::max(last, index[c]);
        if (outputs.count(v)) last = static_cast<int64_t>(nodes.size());
        if (first > static_cast<int64_t>(i) || last < static_cast<int64_t>(i)) continue;
        const Placement& p = plan.at(v);
        bool space = p.offset < ws.offset + ws.bytes && ws.offset < p.offset + p.bytes;
        ASSERT_FALSE(space) << "trial " << trial << ": workspace of node " << i << " overlaps '" << v->name << "'";
      }
    }
    EXPECT_EQ(plan.workspace_naive_bytes, naive);
    EXPECT_EQ(plan.workspace_max_bytes, largest);
  }
}

// Parameters and state have arenas of their own (one allocation each on a GPU): parameters
// contiguous from 0, state then constants from 0 in theirs.
TEST(Planner, ParameterAndStateArenas) {
  Graph g;
  Value* x = g.add_value("x", DType::f32, {8}, Role::Input);
  g.inputs.push_back(x);
  Value* w = g.add_initializer("w", Tensor(DType::f32, {8}), Role::Parameter);
  Value* s = g.add_initializer("s", Tensor(DType::f32, {3}), Role::State);
  Value* c = g.add_initializer("c", Tensor(DType::f32, {5}), Role::Constant);
  Value* y = g.add_value("y", DType::f32, {8});
  Value* z = g.add_value("z", DType::f32, {8});
  g.add_node("Mul", {x, w}, {y}, "mul");
  g.add_node("Add", {y, x}, {z}, "add");
  g.add_node("Identity", {s}, {g.add_value("s2", DType::f32, {3})}, "id1");
  g.add_node("Identity", {c}, {g.add_value("c2", DType::f32, {5})}, "id2");
  g.outputs = {z};
  MemoryPlan plan = plan_memory(g);
  EXPECT_EQ(plan.at(w).arena, Arena::parameter);
  EXPECT_EQ(plan.at(w).offset, 0);
  EXPECT_EQ(plan.parameter_bytes, 64);  // 32 bytes aligned to 64
  EXPECT_EQ(plan.at(s).arena, Arena::state);
  EXPECT_EQ(plan.at(s).offset, 0);
  EXPECT_EQ(plan.at(c).arena, Arena::state);
  EXPECT_EQ(plan.at(c).offset, 64);
  EXPECT_EQ(plan.state_bytes, 64);
  EXPECT_EQ(plan.constant_bytes, 64);
  EXPECT_EQ(plan.state_arena_bytes, 128);
  EXPECT_EQ(plan.persistent_bytes, 192);
}
