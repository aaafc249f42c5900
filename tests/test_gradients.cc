// The gradient checker's cases for the core ops (tests/grad_check.h): every op with a
// gradient rule, attributes varied (stride, padding, dilation, groups, ceil_mode,
// broadcasting, transposes), odd shapes, and the set of inputs that need gradients varied.
// The op families' cases are in tests/test_gradients_<family>.cc.
#include <gtest/gtest.h>

#include "tests/grad_check.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using namespace oxtrain::test;

TEST(Gradients, Conv) {
  struct Variant {
    const char* label;
    Shape x, w;
    std::map<std::string, Attribute> attrs;
    bool bias;
  };
  const Variant variants[] = {
      {"3x3 pad 1", {2, 3, 7, 6}, {4, 3, 3, 3}, {{"pads", iv({1, 1, 1, 1})}}, true},
      {"stride 2, asymmetric pads", {2, 3, 7, 6}, {5, 3, 3, 2},
       {{"strides", iv({2, 2})}, {"pads", iv({1, 0, 0, 1})}}, true},
      {"dilation 2", {1, 2, 9, 8}, {3, 2, 3, 3}, {{"dilations", iv({2, 2})}, {"pads", iv({2, 2, 2, 2})}}, false},
      {"groups 3", {2, 6, 5, 5}, {6, 2, 3, 3}, {{"group", i1(3)}, {"pads", iv({1, 1, 1, 1})}}, true},
      {"depthwise", {1, 4, 6, 5}, {4, 1, 3, 3}, {{"group", i1(4)}, {"strides", iv({2, 1})}}, false},
      {"1x1", {2, 5, 4, 3}, {3, 5, 1, 1}, {}, true},
      {"SAME_UPPER stride 2", {1, 2, 7, 5}, {3, 2, 3, 3}, {{"auto_pad", s1("SAME_UPPER")}, {"strides", iv({2, 2})}}, false},
      // 1-D: [N, C, L] with [M, C / group, k].
      {"1-D pad 1", {2, 3, 9}, {4, 3, 3}, {{"pads", iv({1, 1})}}, true},
      {"1-D stride 2, dilation 2, groups 3", {2, 6, 11}, {3, 2, 3},
       {{"strides", iv({2})}, {"dilations", iv({2})}, {"group", i1(3)}, {"pads", iv({2, 0})}}, false},
      // 3-D: [N, C, D, H, W] with [M, C / group, kD, kH, kW].
      {"3-D pad 1", {2, 2, 4, 5, 3}, {3, 2, 3, 3, 2}, {{"pads", iv({1, 1, 0, 1, 1, 1})}}, true},
      {"3-D strides (2,1,2), dilation (1,2,1), groups 2", {1, 4, 5, 6, 5}, {4, 2, 2, 2, 3},
       {{"strides", iv({2, 1, 2})}, {"dilations", iv({1, 2, 1})}, {"group", i1(2)},
        {"pads", iv({0, 1, 1, 1, 0, 1})}}, false},
  };
  uint64_t seed = 1;
  for (const auto& v : variants) {
    GradCase c{"Conv", {{f64(v.x, seed++)}, {f64(v.w, seed++)}}, v.attrs};
    if (v.bias) c.inputs.push_back({f64({v.w[0]}, seed++)});
    check_gradients(c, v.label);
  }
  // Which inputs need gradients varies: only W; only X; only B.
  GradCase c{"Conv", {{f64({2, 3, 5, 5}, 50)}, {f64({4, 3, 3, 3}, 51)}, {f64({4}, 52)}},
             {{"pads", iv({1, 1, 1, 1})}}};
  for (int only = 0; only < 3; ++only) {
    GradCase v = c;
    for (int k = 0; k < 3; ++k) v.inputs[k].needs_grad = k == only;
    check_gradients(v, "only input " + std::to_string(only));
  }
}

TEST(Gradients, BatchNormalizationTraining) {
  for (int64_t opset : {15, 9}) {
    GradCase c{"BatchNormalization",
               {{f64({4, 3, 5, 7}, 1)}, {f64({3}, 2, 0.5, 1.5)}, {f64({3}, 3)},
                {f64({3}, 4), false}, {f64({3}, 5, 0.5, 2), false}},
               {{"epsilon", f1(1e-5f)}, {"momentum", f1(0.9f)}},
               opset >= 14 ? 3u : 5u, opset};
    if (opset >= 14) c.attrs["training_mode"] = i1(1);
    check_gradients(c, "opset " + std::to_string(opset), 1e-5);
  }
  GradCase only_scale{"BatchNormalization",
                      {{f64({3, 2, 4, 3}, 11), false}, {f64({2}, 12, 0.5, 1.5)}, {f64({2}, 13), false},
                       {f64({2}, 14), false}, {f64({2}, 15, 0.5, 2), false}},
                      {{"training_mode", i1(1)}}, 3, 15};
  check_gradients(only_scale, "only scale", 1e-5);
}

TEST(Gradients, Relu) {
  check_gradients({"Relu", {{away_from_zero({5, 7, 11, 13}, 3)}}}, "5x7x11x13");
  check_gradients({"Relu", {{away_from_zero({3, 1}, 4)}}}, "3x1");
}

TEST(Gradients, MaxPool) {
  const std::pair<const char*, std::map<std::string, Attribute>> variants[] = {
      {"k3 s2 p1", {{"kernel_shape", iv({3, 3})}, {"strides", iv({2, 2})}, {"pads", iv({1, 1, 1, 1})}}},
      {"k2 s2 ceil", {{"kernel_shape", iv({2, 2})}, {"strides", iv({2, 2})}, {"ceil_mode", i1(1)}}},
      {"k3 s1 overlapping", {{"kernel_shape", iv({3, 3})}}},
      {"k2 dilation 2", {{"kernel_shape", iv({2, 2})}, {"dilations", iv({2, 2})}}},
  };
  uint64_t seed = 30;
  for (const auto& [label, attrs] : variants)
    check_gradients({"MaxPool", {{distinct({2, 3, 7, 6}, seed++)}}, attrs}, label);
  check_gradients({"MaxPool", {{distinct({2, 3, 11}, seed++)}},
                   {{"kernel_shape", iv({3})}, {"strides", iv({2})}, {"pads", iv({1, 1})}}},
                  "1-D k3 s2 p1");
  check_gradients({"MaxPool", {{distinct({2, 2, 5, 6, 4}, seed++)}},
                   {{"kernel_shape", iv({2, 3, 2})}, {"strides", iv({2, 1, 2})}, {"pads", iv({1, 1, 0, 0, 1, 1})},
                    {"dilations", iv({1, 2, 1})}}},
                  "3-D k2x3x2 dilated, padded");
}

TEST(Gradients, AveragePool) {
  const std::pair<const char*, std::map<std::string, Attribute>> variants[] = {
      {"k3 s2 p1 exclude pad", {{"kernel_shape", iv({3, 3})}, {"strides", iv({2, 2})}, {"pads", iv({1, 1, 1, 1})}}},
      {"k3 s2 p1 include pad",
       {{"kernel_shape", iv({3, 3})}, {"strides", iv({2, 2})}, {"pads", iv({1, 1, 1, 1})}, {"count_include_pad", i1(1)}}},
      {"k2 s2 ceil", {{"kernel_shape", iv({2, 2})}, {"strides", iv({2, 2})}, {"ceil_mode", i1(1)}}},
      {"k2x3 s1", {{"kernel_shape", iv({2, 3})}}},
  };
  uint64_t seed = 40;
  for (const auto& [label, attrs] : variants)
    check_gradients({"AveragePool", {{f64({2, 3, 7, 6}, seed++)}}, attrs}, label);
  check_gradients({"AveragePool", {{f64({2, 3, 11}, seed++)}},
                   {{"kernel_shape", iv({3})}, {"strides", iv({2})}, {"pads", iv({1, 1})}, {"ceil_mode", i1(1)}}},
                  "1-D k3 s2 p1 ceil");
  for (int64_t include_pad : {0, 1})
    check_gradients({"AveragePool", {{f64({2, 2, 5, 6, 4}, seed++)}},
                     {{"kernel_shape", iv({2, 3, 2})}, {"strides", iv({2, 1, 2})}, {"pads", iv({1, 1, 0, 0, 1, 1})},
                      {"dilations", iv({1, 2, 1})}, {"count_include_pad", i1(include_pad)}, {"ceil_mode", i1(1)}}},
                    include_pad ? "3-D dilated, padded, include pad, ceil" : "3-D dilated, padded, ceil");
}

TEST(Gradients, GlobalAveragePool) {
  check_gradients({"GlobalAveragePool", {{f64({5, 7, 11, 13}, 4)}}}, "5x7x11x13");
  check_gradients({"GlobalAveragePool", {{f64({2, 3, 1, 1}, 5)}}}, "1x1 spatial");
}

TEST(Gradients, ReduceMean) {
  check_gradients({"ReduceMean", {{f64({3, 4, 5, 2}, 5)}}, {{"axes", iv({2, 3})}}, 1, 13},
                  "axes attribute, keepdims");
  check_gradients({"ReduceMean", {{f64({3, 4, 5}, 6)}}, {{"axes", iv({-1})}, {"keepdims", i1(0)}}, 1, 13},
                  "negative axis, no keepdims");
  check_gradients({"ReduceMean", {{f64({3, 4, 5}, 7)}, {ints({0, 2}), false, true}}, {}, 1, 18},
                  "axes input (opset 18)");
  check_gradients({"ReduceMean", {{f64({2, 3}, 8)}}, {{"keepdims", i1(0)}}, 1, 13}, "all axes");
}

TEST(Gradients, AddSubMulWithBroadcasting) {
  const std::pair<Shape, Shape> shapes[] = {
      {{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4}, {3, 1}}, {{2, 3, 4}, {1}}, {{3, 1, 5}, {1, 4, 1}}, {{4}, {2, 3, 4}}};
  uint64_t seed = 60;
  for (const char* op : {"Add", "Sub", "Mul"})
    for (const auto& [a, b] : shapes)
      check_gradients({op, {{f64(a, seed++)}, {f64(b, seed++)}}},
                      std::string(op) + " " + shape_str(a) + " " + shape_str(b));
  // Only one side needs a gradient.
  check_gradients({"Mul", {{f64({2, 3}, 90)}, {f64({3}, 91), false}}}, "Mul, only A");
}

TEST(Gradients, Sum) {
  check_gradients({"Sum", {{f64({2, 3, 4}, 1)}, {f64({3, 1}, 2)}, {f64({4}, 3)}}}, "three, broadcast");
  check_gradients({"Sum", {{f64({5}, 4)}}}, "one");
}

TEST(Gradients, FlattenAndReshape) {
  check_gradients({"Flatten", {{f64({2, 3, 4, 5}, 1)}}, {{"axis", i1(2)}}}, "axis 2");
  check_gradients({"Flatten", {{f64({2, 3, 4}, 2)}}}, "default axis");
  check_gradients({"Flatten", {{f64({2, 3, 4, 5}, 5)}}, {{"axis", i1(-1)}}}, "axis -1: all but the last");
  check_gradients({"Reshape", {{f64({2, 3, 4}, 3)}, {ints({4, -1}), false, true}}}, "[4,-1]");
  check_gradients({"Reshape", {{f64({2, 3, 4}, 4)}, {ints({0, 12}), false, true}}}, "[0,12]");
}

TEST(Gradients, Gemm) {
  uint64_t seed = 100;
  for (int ta : {0, 1})
    for (int tb : {0, 1}) {
      Shape a = ta ? Shape{5, 3} : Shape{3, 5};
      Shape b = tb ? Shape{4, 5} : Shape{5, 4};
      for (const Shape& cshape : {Shape{4}, Shape{3, 4}, Shape{3, 1}, Shape{}}) {
        GradCase c{"Gemm", {{f64(a, seed++)}, {f64(b, seed++)}, {f64(cshape, seed++)}},
                   {{"transA", i1(ta)}, {"transB", i1(tb)}, {"alpha", f1(0.5f)}, {"beta", f1(2.0f)}}};
        check_gradients(c, "transA " + std::to_string(ta) + " transB " + std::to_string(tb) +
                               " C " + shape_str(cshape));
      }
    }
  GradCase no_c{"Gemm", {{f64({3, 5}, 7)}, {f64({4, 5}, 8)}}, {{"transB", i1(1)}}};
  check_gradients(no_c, "no C");
}

TEST(Gradients, MatMul) {
  check_gradients({"MatMul", {{f64({3, 4}, 1)}, {f64({4, 5}, 2)}}}, "2-D");
  check_gradients({"MatMul", {{f64({2, 1, 3, 4}, 3)}, {f64({5, 4, 2}, 4)}}}, "batched broadcast");
  check_gradients({"MatMul", {{f64({3, 4}, 5), false}, {f64({2, 4, 3}, 6)}}}, "only B");
}

TEST(Gradients, IdentityAndDropout) {
  check_gradients({"Identity", {{f64({3, 4}, 1)}}}, "Identity");
  check_gradients({"Dropout", {{f64({3, 4}, 2)}}}, "Dropout (inference)");
}

TEST(Gradients, Softmax) {
  check_gradients({"Softmax", {{f64({3, 4, 5}, 1)}}, {}, 1, 13}, "opset 13, last axis");
  check_gradients({"Softmax", {{f64({3, 4, 5}, 2)}}, {{"axis", i1(1)}}, 1, 13}, "opset 13, axis 1");
  check_gradients({"Softmax", {{f64({3, 4, 5}, 3)}}, {{"axis", i1(1)}}, 1, 11}, "opset 11, coerced 2-D");
}

TEST(Gradients, LogSoftmax) {
  check_gradients({"LogSoftmax", {{f64({3, 4, 5}, 4, -3, 3)}}, {}, 1, 13}, "opset 13, last axis");
  check_gradients({"LogSoftmax", {{f64({3, 4, 5}, 5, -3, 3)}}, {{"axis", i1(0)}}, 1, 13}, "opset 13, axis 0");
  check_gradients({"LogSoftmax", {{f64({3, 4, 5}, 6, -3, 3)}}, {{"axis", i1(1)}}, 1, 11}, "opset 11, coerced 2-D");
}

TEST(Gradients, SoftmaxCrossEntropyLoss) {
  Tensor labels = Tensor::from_int64({2, 0, 4, 1, 3, 4}, {6});
  for (const char* reduction : {"mean", "sum", "none"})
    check_gradients({"SoftmaxCrossEntropyLoss", {{f64({6, 5}, 1, -3, 3)}, {labels, false, true}},
                     {{"reduction", s1(reduction)}}, 2},
                    reduction);
  check_gradients({"SoftmaxCrossEntropyLoss",
                   {{f64({6, 5}, 2)}, {labels, false, true}, {f64({5}, 3, 0.5, 2), false, true}},
                   {{"reduction", s1("mean")}, {"ignore_index", i1(4)}}, 2},
                  "weights and ignore_index");
}

TEST(Gradients, CheckerCatchesAWrongGradient) {
  // Relu with inputs within 0.001 of its kink and a step of 0.01: the central difference sees
  // a different function than the analytic gradient, so the checker must complain about
  // every element.
  auto problems = gradient_problems({"Relu", {{f64({4}, 1, -0.001, 0.001)}}}, 0.01);
  EXPECT_EQ(problems.size(), 5u);  // 4 elements and the random direction
}

// The fused batch norm + ReLU (autodiff/fusion.h), with and without the residual input.
TEST(Gradients, BatchNormReluTraining) {
  const std::map<std::string, Attribute> attrs = {{"epsilon", f1(1e-5f)}, {"momentum", f1(0.9f)}};
  GradCase plain{"BatchNormReluTraining",
                 {{f64({4, 3, 5, 7}, 21)}, {f64({3}, 22, 0.5, 1.5)}, {f64({3}, 23)}, {f64({3}, 24), false},
                  {f64({3}, 25, 0.5, 2), false}},
                 attrs, 5, 17, "oxtrain"};
  check_gradients(plain, "without residual", 1e-5);
  GradCase residual = plain;
  residual.inputs.push_back({f64({4, 3, 5, 7}, 26)});
  check_gradients(residual, "with residual", 1e-5);
  residual.inputs[5].needs_grad = false;
  check_gradients(residual, "residual without gradient", 1e-5);
}
