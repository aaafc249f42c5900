// build_training_graph: structure of the training graph of a ResNet, its memory plan, and
// the errors users meet.
#include <gtest/gtest.h>

#include "autodiff/gradients.h"
#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/planner.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

using test::zoo_at_batch;

TEST(TrainingGraph, ResNet50Structure) {
  autodiff::TrainingGraph tg = autodiff::build_training_graph(zoo_at_batch("resnet50", 2));
  const Graph& g = tg.graph;
  std::map<std::string, int> ops;
  for (const auto& n : g.nodes()) ++ops[n->domain.empty() ? n->op_type : n->domain + "." + n->op_type];
  EXPECT_EQ(ops["oxtrain.BatchNormTraining"], 53);
  EXPECT_EQ(ops["BatchNormalization"], 0);
  EXPECT_EQ(ops["oxtrain.BatchNormGrad"], 53);
  EXPECT_EQ(ops["oxtrain.ConvGradFilter"], 53);
  EXPECT_EQ(ops["oxtrain.ConvGradData"], 52);  // not for the first conv: images need no gradient
  EXPECT_EQ(ops["oxtrain.ReluGrad"], 49);
  EXPECT_EQ(ops["oxtrain.MaxPoolGradFromInput"], 1);
  EXPECT_EQ(ops["SoftmaxCrossEntropyLoss"], 1);
  EXPECT_EQ(ops["ai.onnx.preview.training.Momentum"], 1);
  // Every parameter has exactly one gradient, with its shape; 161 tensors in ResNet-50.
  EXPECT_EQ(tg.gradients.size(), 161u);
  for (const auto& [param, grad] : tg.gradients)
    EXPECT_EQ(g.value(param)->shape, g.value(grad)->shape) << param;
  // The last layer's gradients are finished first (bucket order follows backward).
  EXPECT_EQ(tg.gradients.front().first.substr(0, 3), "fc.");
  EXPECT_EQ(tg.gradients.back().first, "conv1.weight");
  // Updates: every parameter and its momentum, every BN running mean and variance.
  EXPECT_EQ(g.updates.size(), 161u * 2 + 53u * 2);
  EXPECT_EQ(g.value(tg.labels)->shape, (Shape{2}));
  EXPECT_EQ(g.value(tg.loss)->shape, Shape{});
  // The residual branches fan out: their gradients are summed.
  int sums = ops["Sum"];
  EXPECT_GE(sums, 16);
}

TEST(TrainingGraph, ResNet50Batch32ArenaIsAtMostHalfTheNaiveSum) {
  autodiff::TrainingGraph tg = autodiff::build_training_graph(zoo_at_batch("resnet50", 32));
  runtime::PlanOptions o;
  for (const auto& [p, d] : tg.gradients) o.gradients.push_back(tg.graph.value(d));
  runtime::MemoryPlan plan = runtime::plan_memory(tg.graph, o);
  EXPECT_LE(plan.activation_arena_bytes * 2, plan.activation_naive_bytes);
  EXPECT_LE(plan.peak_live_bytes, plan.activation_arena_bytes);
  // Forward activations must survive until backward: at least the BN inputs (conv outputs).
  int64_t saved = 0;
  for (const auto& n : tg.graph.nodes())
    if (n->op_type == "BatchNormTraining") saved += n->input(0)->bytes();
  EXPECT_GE(plan.peak_live_bytes, saved);
  // Gradients sit contiguously in their own arena, in bucket order.
  int64_t offset = -1;
  for (const auto& [p, d] : tg.gradients) {
    const auto& place = plan.at(tg.graph.value(d));
    EXPECT_EQ(place.arena, runtime::Arena::gradient);
    EXPECT_GT(place.offset, offset);
    offset = place.offset;
  }
}

TEST(TrainingGraph, ExportsAsValidOnnx) {
  autodiff::TrainingGraph tg = autodiff::build_training_graph(zoo_at_batch("resnet18", 2, 64));
  EXPECT_NO_THROW(check_with_onnx(tg.graph));
  std::string path = test::temp_dir() + "/train.onnx";
  export_onnx(tg.graph, path);
  Graph back = import_onnx(path);
  EXPECT_EQ(test::graph_difference(tg.graph, back), "");
  ASSERT_EQ(back.updates.size(), tg.graph.updates.size());
  for (size_t i = 0; i < back.updates.size(); ++i) {
    EXPECT_EQ(back.updates[i].first->name, tg.graph.updates[i].first->name);
    EXPECT_EQ(back.updates[i].second->name, tg.graph.updates[i].second->name);
    EXPECT_EQ(back.updates[i].first->role, tg.graph.updates[i].first->role);
  }
}

TEST(TrainingGraphErrors, OpWithoutGradientRuleIsNamed) {
  test::ModelBuilder b(17);
  b.input("x", {2, 3});
  b.initializer("w", {3, 3}, 0.1f);
  b.node("MatMul", {"x", "w"}, {"h"}, "mm");
  b.node("ReluGrad", {"h", "h"}, {"y"}, "ratio").set_domain("oxtrain");  // no gradient rule
  b.output("y");
  Graph g = import_onnx_model(b.model, ".");
  try {
    autodiff::build_training_graph(std::move(g));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no gradient rule for: oxtrain.ReluGrad ('ratio')"), std::string::npos)
        << e.what();
  }
}

TEST(TrainingGraphErrors, NonFloatOutputAndNoParameters) {
  test::ModelBuilder b(17);
  b.input("x", {2, 3});
  b.node("Shape", {"x"}, {"s"}, "shape");
  b.node("Relu", {"x"}, {"r"}, "relu");
  b.output("r");
  Graph g = import_onnx_model(b.model, ".");
  try {
    autodiff::build_training_graph(std::move(g));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no parameters to train"), std::string::npos) << e.what();
  }
  test::ModelBuilder c(17);
  c.input("x", {2, 3});
  c.initializer("w", {3, 3}, 0.1f);
  c.node("MatMul", {"x", "w"}, {"h"}, "mm");
  auto& cast = c.node("Cast", {"h"}, {"y"}, "to_int");
  test::set_int(cast, "to", 7);
  c.output("y", 7);
  Graph h = import_onnx_model(c.model, ".");
  try {
    autodiff::build_training_graph(std::move(h));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model output 'y' is int64, not float"), std::string::npos)
        << e.what();
  }
}

TEST(TrainingGraph, EveryOpOfTheListHasAGradientRule) {
  // Gradient rules exist for the ops of the list.
  for (const char* op : {"Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
                         "Add", "Mul", "Sum", "Flatten", "Reshape", "Gemm", "MatMul", "Identity",
                         "Dropout", "SoftmaxCrossEntropyLoss"})
    EXPECT_NE(autodiff::find_grad_rule("", op), nullptr) << op;
  EXPECT_NE(autodiff::find_grad_rule("oxtrain", "BatchNormTraining"), nullptr);
}
