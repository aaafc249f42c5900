// Op facts (graph::OpFacts) are the one source of which inputs train, which are state or
// compile-time constants, which outputs may share an input's buffer and which update state:
// import, autodiff and the planner must all follow them, on a whole ResNet training graph.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "graph/zoo.h"
#include "runtime/planner.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

bool listed(const std::vector<size_t>& list, size_t i) {
  return std::find(list.begin(), list.end(), i) != list.end();
}

autodiff::TrainingGraph resnet18_training(int64_t batch) {
  return autodiff::build_training_graph(test::zoo_at_batch("resnet18", batch, 32, 10));
}

}  // namespace

TEST(OpFacts, MomentumFactsFollowItsInputCount) {
  Graph g;
  std::vector<Value*> ins, outs;
  for (const char* name : {"R", "T", "X1", "X2", "G1", "G2", "V1", "V2"}) ins.push_back(g.add_value(name));
  for (const char* name : {"X1n", "X2n", "V1n", "V2n"}) outs.push_back(g.add_value(name));
  Node* n = g.add_node("Momentum", ins, outs, "opt", kTrainingDomain);
  OpFacts f = node_facts(*n);
  EXPECT_EQ(f.non_trainable, (std::vector<size_t>{0, 1, 4, 5}));
  EXPECT_EQ(f.state, (std::vector<size_t>{6, 7}));
  using P = std::pair<size_t, size_t>;
  EXPECT_EQ(f.updates_input, (std::vector<P>{{0, 2}, {2, 6}, {1, 3}, {3, 7}}));
  EXPECT_TRUE(f.trainable(2));
  EXPECT_TRUE(f.trainable(3));
  EXPECT_FALSE(f.trainable(6));
}

TEST(OpFacts, ImportRolesFollowFacts) {
  autodiff::TrainingGraph tg = resnet18_training(2);
  const Graph& g = tg.graph;
  int parameters = 0, states = 0;
  for (const Value* v : g.initializers()) {
    if (v->role == Role::Parameter) ++parameters;
    if (v->role == Role::State) ++states;
    // Each initializer's role is what the facts of the inputs reading it say.
    for (const Node* c : v->consumers) {
      OpFacts f = node_facts(*c);
      for (size_t i = 0; i < c->inputs.size(); ++i) {
        if (c->inputs[i] != v) continue;
        if (listed(f.state, i)) {
          EXPECT_EQ(v->role, Role::State) << v->name << " at " << c->describe();
        }
        if (listed(f.compile_time, i)) {
          EXPECT_NE(v->role, Role::Parameter) << v->name;
        }
      }
    }
  }
  // resnet18: 20 convolutions + fc weight and bias + 20 BN scale and bias = 62 parameters;
  // 20 BN layers x 2 running statistics + 62 momentum buffers = 102 state values.
  EXPECT_EQ(parameters, 62);
  EXPECT_EQ(states, 102);
}

TEST(OpFacts, AutodiffGivesNoGradientToNonTrainableInputs) {
  autodiff::TrainingGraph tg = resnet18_training(2);
  const Graph& g = tg.graph;
  std::set<std::string> with_gradient;
  for (const auto& [value, grad] : tg.gradients) with_gradient.insert(value);
  EXPECT_EQ(with_gradient.size(), 62u);
  for (const auto& n : g.nodes()) {
    if (n->op_type != "BatchNormTraining") continue;
    OpFacts f = node_facts(*n);
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      bool has = with_gradient.count(n->inputs[i]->name) > 0;
      // X is an activation (never in the parameter list); scale and B train; the running
      // statistics are state and must not.
      if (i == 1 || i == 2) {
        EXPECT_TRUE(has) << n->describe() << " input " << i;
      }
      if (listed(f.state, i)) {
        EXPECT_FALSE(has) << n->describe() << " input " << i;
      }
    }
  }
}

TEST(OpFacts, PlannerSharesAndUpdatesOnlyWhereFactsAllow) {
  autodiff::TrainingGraph tg = resnet18_training(2);
  const Graph& g = tg.graph;
  runtime::MemoryPlan plan = runtime::plan_memory(g);
  ASSERT_FALSE(plan.in_place.empty());
  int shared = 0, updated = 0;
  for (const auto& [out, in] : plan.in_place) {
    const Node* p = out->producer;
    ASSERT_NE(p, nullptr);
    OpFacts f = node_facts(*p);
    size_t o = std::find(p->outputs.begin(), p->outputs.end(), out) - p->outputs.begin();
    bool allowed = false;
    for (const auto& [fo, fi] : f.shares_input) allowed |= fo == o && p->inputs[fi] == in;
    for (const auto& [fo, fi] : f.updates_input) allowed |= fo == o && p->inputs[fi] == in;
    EXPECT_TRUE(allowed) << p->describe() << " output " << o << " over '" << in->name << "'";
    bool is_update = std::any_of(g.updates.begin(), g.updates.end(),
                                 [&](const auto& u) { return u.first == in && u.second == out; });
    (is_update ? updated : shared) += 1;
  }
  // Every parameter, momentum buffer and running statistic is updated in place:
  // 62 + 62 + 40 updates, none copied back after the step.
  EXPECT_EQ(updated, 164);
  EXPECT_EQ(std::count(plan.update_in_place.begin(), plan.update_in_place.end(), true), 164);
  EXPECT_GT(shared, 0);
}
