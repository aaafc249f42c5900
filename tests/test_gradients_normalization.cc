// The gradient checker's cases for the normalization family (tests/grad_check.h):
// LayerNormalization (axes, Scale and B shapes, epsilon, opsets, which inputs need gradients),
// ReduceSum (both opset forms, keepdims, noop), ReduceMean over every combination of axes,
// MatMul on batched and 1-D operands (ViT's attention, ConvNeXt's MLP), Softmax on every axis.
#include <gtest/gtest.h>

#include "autodiff/gradients.h"
#include "autodiff/training.h"
#include "graph/ops.h"
#include "tests/grad_check.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using namespace oxtrain::test;

TEST(GradientsNormalization, LayerNormalization) {
  struct Variant {
    const char* label;
    Shape x;
    int64_t axis;
    Shape scale, bias;  // bias {} = none
    int64_t opset = 17;
    float epsilon = 1e-5f;
  };
  const Variant variants[] = {
      {"last axis", {2, 3, 5}, -1, {5}, {5}},
      {"axis 1, two normalized dims", {2, 3, 4}, 1, {3, 4}, {3, 4}},
      {"axis 0: one row", {3, 2, 2}, 0, {3, 2, 2}, {3, 2, 2}},
      {"no B", {4, 6}, -1, {6}, {}},
      {"Scale and B broadcast over the normalized dims", {2, 3, 4}, 1, {4}, {3, 1}},
      {"Scale with a leading 1", {2, 3, 4}, -1, {1, 4}, {4}},
      {"channels last 4-D, opset 18", {2, 3, 3, 5}, 3, {5}, {5}, 18},
      {"large epsilon, opset 21", {3, 7}, 1, {7}, {7}, 21, 0.3f},
  };
  uint64_t seed = 1;
  for (const auto& v : variants) {
    GradCase c{"LayerNormalization", {{f64(v.x, seed++, -1, 2)}, {f64(v.scale, seed++, 0.5, 1.5)}},
               {{"axis", i1(v.axis)}, {"epsilon", f1(v.epsilon)}}, 1, v.opset};
    if (!v.bias.empty()) c.inputs.push_back({f64(v.bias, seed++)});
    check_gradients(c, v.label);
  }
  // Which inputs need gradients varies; the node may already expose Mean and InvStdDev.
  GradCase c{"LayerNormalization", {{f64({3, 4, 5}, 50)}, {f64({5}, 51, 0.5, 1.5)}, {f64({5}, 52)}}, {{"axis", i1(-1)}}};
  for (int only = 0; only < 3; ++only) {
    GradCase v = c;
    for (int k = 0; k < 3; ++k) v.inputs[k].needs_grad = k == only;
    check_gradients(v, "only input " + std::to_string(only));
  }
  GradCase three = c;
  three.outputs = 3;
  check_gradients(three, "Mean and InvStdDev outputs in the model");
}

TEST(GradientsNormalization, LayerNormalizationSavesItsStatistics) {
  // The forward node gains Mean and InvStdDev and the gradient node reads them.
  Graph g;
  g.opsets = {{"", 17}};
  Value* x = g.add_value("x", DType::f32, {2, 3, 4}, Role::Input);
  x->rank_known = true;
  g.inputs.push_back(x);
  Value* s = g.add_initializer("scale", Tensor(DType::f32, {4}), Role::Parameter);
  Value* y = g.add_value("y");
  Node* ln = g.add_node("LayerNormalization", {x, s}, {y}, "ln");
  autodiff::infer_node(g, *ln);
  Value* loss = g.add_value("loss");
  Node* r = g.add_node("ReduceSum", {y}, {loss}, "sum");
  r->attrs["keepdims"].value = int64_t{0};
  autodiff::infer_node(g, *r);
  g.outputs.push_back(loss);
  autodiff::TrainingOptions options;
  options.loss_output = "loss";
  options.optimizer = false;
  options.expose_gradients = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), options);
  const Node* fwd = nullptr;
  const Node* grad = nullptr;
  for (const auto& n : tg.graph.nodes()) {
    if (n->op_type == "LayerNormalization") fwd = n.get();
    if (n->op_type == "LayerNormalizationGrad") grad = n.get();
  }
  ASSERT_TRUE(fwd && grad);
  ASSERT_EQ(fwd->outputs.size(), 3u);
  EXPECT_EQ(fwd->output(1)->shape, (Shape{2, 3, 1}));
  EXPECT_EQ(fwd->output(1)->dtype, DType::f32);
  EXPECT_EQ(grad->input(3), fwd->output(1));
  EXPECT_EQ(grad->input(4), fwd->output(2));
}

TEST(GradientsNormalization, ReduceSum) {
  check_gradients({"ReduceSum", {{f64({3, 4, 5, 2}, 5)}}, {{"axes", iv({1, 3})}}, 1, 11}, "opset 11, axes 1 3");
  check_gradients({"ReduceSum", {{f64({3, 4, 5}, 6)}}, {{"axes", iv({-1})}, {"keepdims", i1(0)}}, 1, 11},
                  "opset 11, last axis, keepdims 0");
  check_gradients({"ReduceSum", {{f64({3, 4, 5}, 7)}, {ints({0, 2}), false, true}}, {{"keepdims", i1(0)}}, 1, 13},
                  "opset 13, axes input");
  check_gradients({"ReduceSum", {{f64({2, 3}, 8)}}, {}, 1, 13}, "opset 13, all axes");
  check_gradients({"ReduceSum", {{f64({2, 3}, 9)}}, {{"noop_with_empty_axes", i1(1)}}, 1, 13}, "noop");
}

TEST(GradientsNormalization, ReduceMeanOverEveryAxisCombination) {
  const Shape xs{2, 3, 4};
  uint64_t seed = 20;
  for (int64_t mask = 1; mask < 8; ++mask)
    for (int64_t keepdims : {0, 1}) {
      std::vector<int64_t> axes;
      for (int64_t d = 0; d < 3; ++d)
        if (mask >> d & 1) axes.push_back(keepdims ? d : d - 3);
      const std::string label = "axes " + shape_str(axes) + " keepdims " + std::to_string(keepdims);
      check_gradients({"ReduceMean", {{f64(xs, seed++)}}, {{"axes", iv(axes)}, {"keepdims", i1(keepdims)}}, 1, 13},
                      "opset 13 " + label);
      check_gradients({"ReduceMean", {{f64(xs, seed++)}, {ints(axes), false, true}}, {{"keepdims", i1(keepdims)}}, 1, 18},
                      "opset 18 " + label);
    }
}

// Distinct values (no ties): the gradient goes to the extreme of each reduction.
TEST(GradientsNormalization, ReduceMaxAndReduceMin) {
  uint64_t seed = 90;
  for (const char* op : {"ReduceMax", "ReduceMin"}) {
    check_gradients({op, {{distinct({3, 4, 5}, seed++)}}, {{"axes", iv({1})}}, 1, 13}, std::string(op) + " axis 1");
    check_gradients({op, {{distinct({3, 4, 5}, seed++)}}, {{"axes", iv({0, -1})}, {"keepdims", i1(0)}}, 1, 13},
                    std::string(op) + " axes 0, -1, no keepdims");
    check_gradients({op, {{distinct({3, 4}, seed++)}, {ints({1}), false, true}}, {}, 1, 18},
                    std::string(op) + " axes input (opset 18)");
    check_gradients({op, {{distinct({2, 3}, seed++)}}, {}, 1, 13}, std::string(op) + " all axes");
    // Ties share the gradient evenly, as torch.amax / amin: central differences at a tie of
    // two give 1/2 to each.
    graph::Tensor tied(graph::DType::f64, {2, 4});
    const double v[] = {2, 5, 5, 1, 0.5, -3, 0.5, -3};
    std::copy(v, v + 8, tied.data<double>());
    check_gradients({op, {{tied}}, {{"axes", iv({1})}}, 1, 13}, std::string(op) + " ties", 1e-3);
  }
}

TEST(GradientsNormalization, MatMul) {
  check_gradients({"MatMul", {{f64({2, 3, 5, 4}, 1)}, {f64({2, 3, 4, 5}, 2)}}}, "ViT attention scores");
  check_gradients({"MatMul", {{f64({2, 3, 5, 5}, 3)}, {f64({2, 3, 5, 4}, 4)}}}, "ViT attention context");
  check_gradients({"MatMul", {{f64({2, 3, 3, 4}, 5)}, {f64({4, 6}, 6)}}}, "ConvNeXt MLP: one B for the batch");
  check_gradients({"MatMul", {{f64({2, 3, 3, 4}, 7), false}, {f64({4, 6}, 8)}}}, "one B, only B");
  check_gradients({"MatMul", {{f64({2, 3, 3, 4}, 9)}, {f64({4, 6}, 10), false}}}, "one B, only A");
  check_gradients({"MatMul", {{f64({3, 4}, 11)}, {f64({2, 4, 5}, 12)}}}, "one A, batched B");
  check_gradients({"MatMul", {{f64({2, 1, 3, 4}, 13)}, {f64({1, 3, 4, 2}, 14)}}}, "both broadcast");
  check_gradients({"MatMul", {{f64({4}, 15)}, {f64({2, 4, 3}, 16)}}}, "1-D A, batched B");
  check_gradients({"MatMul", {{f64({4}, 17)}, {f64({4, 3}, 18)}}}, "1-D A");
  check_gradients({"MatMul", {{f64({2, 3, 4}, 19)}, {f64({4}, 20)}}}, "batched A, 1-D B");
  check_gradients({"MatMul", {{f64({5, 4}, 21)}, {f64({4}, 22)}}}, "1-D B");
  check_gradients({"MatMul", {{f64({6}, 23)}, {f64({6}, 24)}}}, "dot product");
}

TEST(GradientsNormalization, SoftmaxOnEveryAxis) {
  uint64_t seed = 40;
  for (int64_t opset : {11, 13})
    for (int64_t axis = -3; axis < 3; ++axis)
      check_gradients({"Softmax", {{f64({2, 3, 4}, seed++, -2, 2)}}, {{"axis", i1(axis)}}, 1, opset},
                      "opset " + std::to_string(opset) + " axis " + std::to_string(axis));
}

