// The gradient checker's cases for the movement family (tests/grad_check.h): Concat, Split,
// Slice, Transpose, Squeeze, Unsqueeze, Expand, Gather and GatherND, over the attribute and
// input forms of their opsets, negative axes and indices, and repeated indices (whose
// gradients add up).
#include <gtest/gtest.h>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "runtime/session.h"
#include "tests/grad_check.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using namespace oxtrain::test;

namespace {

In constant(Tensor t) { return {std::move(t), false, true}; }
Tensor scalar_int(int64_t v) { return Tensor::from_int64({v}, {}); }
Tensor int_matrix(std::vector<int64_t> v, Shape s) { return Tensor::from_int64(v, s); }

}  // namespace

TEST(GradientsMovement, Concat) {
  for (int64_t opset : {11, 13, 18}) {
    GradCase c{"Concat", {{f64({2, 3, 4}, 1)}, {f64({2, 1, 4}, 2)}, {f64({2, 5, 4}, 3)}}, {{"axis", i1(1)}}, 1, opset};
    check_gradients(c, "axis 1, opset " + std::to_string(opset));
  }
  check_gradients({"Concat", {{f64({3, 2}, 4)}, {f64({3, 4}, 5)}}, {{"axis", i1(-1)}}}, "axis -1");
  check_gradients({"Concat", {{f64({2, 3}, 6)}, {f64({1, 3}, 7)}, {f64({4, 3}, 8)}}, {{"axis", i1(0)}}}, "axis 0");
  // Only the middle input needs a gradient; a single input.
  GradCase middle{"Concat", {{f64({2, 2, 3}, 9), false}, {f64({2, 4, 3}, 10)}, {f64({2, 1, 3}, 11), false}},
                  {{"axis", i1(-2)}}};
  check_gradients(middle, "only the middle input");
  check_gradients({"Concat", {{f64({5, 7}, 12)}}, {{"axis", i1(1)}}}, "one input");
}

TEST(GradientsMovement, Split) {
  // Output 0 carries the loss: the other outputs' gradients are zeros.
  check_gradients({"Split", {{f64({2, 7, 3}, 20)}}, {{"axis", i1(1)}, {"split", iv({2, 4, 1})}}, 3, 11},
                  "split attribute, opset 11");
  check_gradients({"Split", {{f64({6, 4}, 21)}}, {}, 3, 11}, "equal parts, opset 11");
  check_gradients({"Split", {{f64({3, 5}, 22)}, constant(ints({3, 2}))}, {{"axis", i1(-1)}}, 2, 13},
                  "split input, axis -1, opset 13");
  check_gradients({"Split", {{f64({7, 2}, 23)}}, {{"num_outputs", i1(3)}}, 3, 18}, "num_outputs 3 of 7, opset 18");
  check_gradients({"Split", {{f64({4, 6}, 24)}}, {{"axis", i1(1)}}, 1, 18}, "one output");
}

TEST(GradientsMovement, Slice) {
  // Before opset 10: attributes.
  check_gradients({"Slice", {{f64({4, 6, 5}, 30)}},
                   {{"starts", iv({1, -4})}, {"ends", iv({3, 1000})}, {"axes", iv({0, 2})}}, 1, 9},
                  "attributes, opset 9");
  struct Variant {
    const char* label;
    std::vector<int64_t> starts, ends, axes, steps;
  };
  const Variant variants[] = {
      {"steps 2 and 3", {0, 1}, {6, 5}, {1, 2}, {2, 3}},
      {"negative step", {-1, 4}, {-1000, 0}, {0, 2}, {-1, -2}},
      {"clamped ends, negative axis", {-100, 2}, {100, -1}, {-1, 1}, {1, 1}},
      {"reverse one axis", {3}, {-5}, {0}, {-1}},
  };
  for (const auto& v : variants)
    check_gradients({"Slice",
                     {{f64({4, 6, 5}, 31)}, constant(ints(v.starts)), constant(ints(v.ends)), constant(ints(v.axes)),
                      constant(ints(v.steps))},
                     {}, 1, 13},
                    v.label);
  // Without axes and steps.
  check_gradients({"Slice", {{f64({5, 3}, 32)}, constant(ints({1})), constant(ints({4}))}, {}, 1, 10},
                  "starts and ends only");
}

TEST(GradientsMovement, Transpose) {
  check_gradients({"Transpose", {{f64({2, 3, 4, 5}, 40)}}, {{"perm", iv({2, 0, 3, 1})}}}, "perm 2031");
  check_gradients({"Transpose", {{f64({3, 4, 5}, 41)}}, {{"perm", iv({1, 2, 0})}}}, "perm 120");
  check_gradients({"Transpose", {{f64({3, 4, 5}, 42)}}}, "default perm");
  check_gradients({"Transpose", {{f64({2, 3, 4, 5}, 60)}}, {{"perm", iv({0, 2, 3, 1})}}}, "channels last");
  check_gradients({"Transpose", {{f64({2, 3, 4, 5}, 61)}}, {{"perm", iv({0, 2, 1, 3})}}}, "attention heads");
}

TEST(GradientsMovement, SqueezeUnsqueeze) {
  check_gradients({"Squeeze", {{f64({3, 1, 4, 1}, 50)}}, {{"axes", iv({1, -1})}}, 1, 11}, "Squeeze attr, opset 11");
  check_gradients({"Squeeze", {{f64({3, 1, 4, 1}, 51)}, constant(ints({3}))}, {}, 1, 13}, "Squeeze input, opset 13");
  check_gradients({"Squeeze", {{f64({1, 4, 1}, 52)}}, {}, 1, 13}, "Squeeze every 1");
  check_gradients({"Unsqueeze", {{f64({3, 4}, 53)}}, {{"axes", iv({0, 3})}}, 1, 11}, "Unsqueeze attr, opset 11");
  check_gradients({"Unsqueeze", {{f64({3, 4}, 54)}, constant(ints({-1, 1}))}, {}, 1, 13}, "Unsqueeze input, opset 13");
}

TEST(GradientsMovement, Expand) {
  check_gradients({"Expand", {{f64({3, 1}, 60)}, constant(ints({2, 3, 4}))}}, "3x1 to 2x3x4");
  // ViT's class token: [1, 1, D] to [N, 1, D].
  check_gradients({"Expand", {{f64({1, 1, 8}, 61)}, constant(ints({2, 1, 8}))}}, "class token");
  // A target smaller than the input broadcasts the other way.
  check_gradients({"Expand", {{f64({2, 1, 5}, 62)}, constant(ints({3, 1}))}}, "target of lower rank");
  check_gradients({"Expand", {{f64({4, 5}, 63)}, constant(ints({4, 5}))}}, "no change");
}

TEST(GradientsMovement, Gather) {
  // Repeated and negative indices: their gradients add up.
  check_gradients({"Gather", {{f64({5, 3}, 70)}, constant(ints({0, 4, -1, 2, 0}))}}, "axis 0, repeats");
  // ViT's x[:, 0]: a scalar index on axis 1.
  check_gradients({"Gather", {{f64({2, 5, 4}, 71)}, constant(scalar_int(0))}, {{"axis", i1(1)}}}, "scalar index");
  check_gradients({"Gather", {{f64({3, 4, 6}, 72)}, constant(int_matrix({5, -6, 1, 1}, {2, 2}))}, {{"axis", i1(-1)}}},
                  "2-D indices, axis -1");
  Tensor i32(DType::i32, {3});
  i32.data<int32_t>()[0] = 2;
  i32.data<int32_t>()[1] = -3;
  i32.data<int32_t>()[2] = 2;
  check_gradients({"Gather", {{f64({3, 4}, 73)}, constant(i32)}, {{"axis", i1(0)}}, 1, 11}, "int32 indices, opset 11");
}

TEST(GradientsMovement, GatherND) {
  check_gradients({"GatherND", {{f64({4, 3, 5}, 80)}, constant(int_matrix({0, 1, 3, 2, 0, 1, -1, -3}, {2, 2, 2}))}},
                  "depth 2 with a repeat");
  check_gradients({"GatherND", {{f64({4, 3}, 81)}, constant(int_matrix({2, 0, 2}, {3, 1}))}}, "depth 1");
  check_gradients({"GatherND", {{f64({2, 3}, 82)}, constant(int_matrix({1, 2, 0, 0}, {2, 2}))}}, "full depth");
  // batch_dims: each batch gathers from its own slice (import lowers it to batch_dims 0).
  check_gradients({"GatherND", {{f64({2, 4, 3}, 83)}, constant(int_matrix({3, 1, 1, 0, 2, 2}, {2, 3, 1}))},
                   {{"batch_dims", i1(1)}}, 1, 13},
                  "batch_dims 1, a repeat in the second batch");
  check_gradients({"GatherND", {{f64({2, 2, 3, 2}, 84)}, constant(int_matrix({2, 0, 1, 1, 0, 2, 2, 2}, {2, 2, 2, 1}))},
                   {{"batch_dims", i1(2)}}, 1, 13},
                  "batch_dims 2");
}

TEST(GradientsMovement, SplitWhoseFirstOutputCarriesNoGradient) {
  // L = mean(y1 * r) with [y0, y1] = Split(x) on axis 0: dX is 0 on y0's row, r / 9 on y1's.
  Graph g;
  g.opsets = {{"", 13}};
  Value* x = g.add_value("x", DType::f64, {4, 3}, Role::Input);
  Value* r = g.add_value("r", DType::f64, {3, 3}, Role::Input);
  for (Value* v : {x, r}) {
    v->rank_known = true;
    g.inputs.push_back(v);
  }
  Value* sizes = g.add_initializer("sizes", ints({1, 3}), Role::Constant);
  Value* y0 = g.add_value("y0");
  Value* y1 = g.add_value("y1");
  g.add_node("Split", {x, sizes}, {y0, y1}, "split");
  Value* prod = g.add_value("prod");
  g.add_node("Mul", {y1, r}, {prod}, "weigh");
  Value* loss = g.add_value("L");
  Node* sum = g.add_node("ReduceMean", {prod}, {loss}, "mean");
  sum->attrs["keepdims"].value = int64_t{0};
  g.outputs = {loss, y0};
  prepare(g);
  autodiff::TrainingOptions options;
  options.loss_output = "L";
  options.optimizer = false;
  options.wrt = {"x"};
  options.expose_gradients = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), options);
  std::string grad;
  for (const auto& [v, d] : tg.gradients)
    if (v == "x") grad = d;
  ASSERT_FALSE(grad.empty());
  runtime::Session s(std::move(tg.graph));
  Tensor rv = f64({3, 3}, 91);
  s.feed("x", f64({4, 3}, 90));
  s.feed("r", rv);
  s.run();
  std::vector<double> want(3, 0.0);
  for (int64_t i = 0; i < 9; ++i) want.push_back(rv.data<double>()[i] / 9);
  EXPECT_TRUE(close(s.fetch(grad), want, 1e-12));
}
