// The gradient checker's cases for the pointwise family (tests/grad_check.h): every op with a
// rule, inputs away from its kinks, attributes, opsets and broadcasting varied, and which
// inputs need gradients varied.
#include <gtest/gtest.h>

#include <cmath>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "runtime/session.h"
#include "tests/grad_check.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using namespace oxtrain::test;

namespace {

// Values in [lo, hi) kept at least `gap` away from each of `kinks`.
Tensor away_from(Shape shape, uint64_t seed, double lo, double hi, std::vector<double> kinks,
                 double gap = 0.05) {
  Tensor t = f64(std::move(shape), seed, lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double& x = t.data<double>()[i];
    for (double k : kinks)
      if (std::fabs(x - k) < gap) x = k + (x < k ? -gap : gap);
  }
  return t;
}

Tensor scalar(double v) {
  Tensor t(DType::f64, {});
  t.data<double>()[0] = v;
  return t;
}

}  // namespace

TEST(GradientsPointwise, Activations) {
  check_gradients({"Sigmoid", {{f64({5, 7, 3}, 1, -6, 6)}}}, "Sigmoid");
  check_gradients({"Tanh", {{f64({5, 7, 3}, 2, -3, 3)}}}, "Tanh");
  check_gradients({"Erf", {{f64({4, 6}, 3, -2.5, 2.5)}}, {}, 1, 13}, "Erf");
  check_gradients({"HardSwish", {{away_from({5, 9}, 4, -5, 5, {-3, 3})}}, {}, 1, 14}, "HardSwish");
  check_gradients({"HardSigmoid", {{away_from({5, 9}, 5, -4, 4, {-2.5, 2.5})}}}, "HardSigmoid defaults");
  check_gradients({"HardSigmoid", {{away_from({5, 9}, 6, -4, 4, {-3, 3})}},
                   {{"alpha", f1(1.0f / 6)}, {"beta", f1(0.5f)}}},
                  "HardSigmoid as PyTorch's");
  check_gradients({"Gelu", {{f64({5, 9}, 7, -4, 4)}}, {}, 1, 20}, "Gelu none");
  check_gradients({"Gelu", {{f64({5, 9}, 8, -4, 4)}}, {{"approximate", s1("tanh")}}, 1, 20}, "Gelu tanh");
}

TEST(GradientsPointwise, Clip) {
  // Opset 9: attributes; opset 13: constant inputs (both, only min, only max).
  check_gradients({"Clip", {{away_from({4, 9}, 10, -2, 8, {0, 6})}}, {{"min", f1(0)}, {"max", f1(6)}}, 1, 9},
                  "ReLU6, attributes");
  check_gradients({"Clip", {{away_from({4, 9}, 11, -2, 8, {0, 6})}, {scalar(0), false, true}, {scalar(6), false, true}},
                   {}, 1, 13},
                  "ReLU6, inputs");
  check_gradients({"Clip", {{away_from({4, 9}, 12, -2, 2, {-0.5})}, {scalar(-0.5), false, true}}, {}, 1, 13},
                  "min only");
  check_gradients({"Clip", {{away_from({4, 9}, 13, -2, 2, {0.5})}, {Tensor(), false}, {scalar(0.5), false, true}},
                   {}, 1, 13},
                  "max only");
}

TEST(GradientsPointwise, ElementwiseMath) {
  check_gradients({"Sqrt", {{f64({3, 4, 5}, 20, 0.2, 4)}}}, "Sqrt");
  check_gradients({"Exp", {{f64({3, 4, 5}, 21, -2, 2)}}}, "Exp");
  check_gradients({"Log", {{f64({3, 4, 5}, 22, 0.2, 4)}}}, "Log");
  check_gradients({"Reciprocal", {{away_from_zero({3, 4, 5}, 23)}}}, "Reciprocal");
  check_gradients({"Abs", {{away_from_zero({3, 4, 5}, 24)}}}, "Abs");
  check_gradients({"Neg", {{f64({3, 4, 5}, 25)}}}, "Neg");
}

TEST(GradientsPointwise, DivWithBroadcasting) {
  const std::pair<Shape, Shape> shapes[] = {
      {{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4}, {3, 1}}, {{2, 3, 4}, {1}}, {{4}, {2, 3, 4}}, {{3, 1, 5}, {1, 4, 1}}};
  uint64_t seed = 30;
  for (const auto& [a, b] : shapes)
    check_gradients({"Div", {{f64(a, seed++)}, {away_from_zero(b, seed++)}}},
                    "Div " + shape_str(a) + " " + shape_str(b));
  check_gradients({"Div", {{f64({2, 3}, 40)}, {away_from_zero({3}, 41), false}}}, "Div, only A");
  check_gradients({"Div", {{f64({2, 3}, 42), false}, {away_from_zero({3}, 43)}}}, "Div, only B");
}

TEST(GradientsPointwise, PowBaseAndExponent) {
  check_gradients({"Pow", {{f64({2, 3, 4}, 50, 0.3, 2)}, {f64({3, 1}, 51, -2, 2)}}}, "tensor exponent, broadcast");
  check_gradients({"Pow", {{f64({4}, 52, 0.3, 2)}, {f64({2, 3, 4}, 53, -2, 2)}}}, "broadcast base");
  check_gradients({"Pow", {{away_from_zero({3, 5}, 54)}, {scalar(3), false}}}, "scalar exponent, no gradient");
  Tensor two = Tensor::from_int64({2}, {});
  check_gradients({"Pow", {{away_from_zero({3, 5}, 55)}, {two, false, true}}, {}, 1, 13}, "int64 exponent");
  check_gradients({"Pow", {{f64({3, 5}, 56, 0.3, 2), false}, {f64({5}, 57, -2, 2)}}}, "only the exponent");
}

TEST(GradientsPointwise, WhereRoutesToTheSelectedInput) {
  Tensor cond(DType::boolean, {2, 1, 4});
  for (int64_t i = 0; i < cond.numel(); ++i) cond.data<uint8_t>()[i] = (i * 7 + 3) % 3 != 0;
  check_gradients({"Where", {{cond, false, true}, {f64({2, 3, 4}, 60)}, {f64({3, 1}, 61)}}}, "broadcast");
  check_gradients({"Where", {{cond, false, true}, {f64({4}, 62)}, {f64({2, 3, 4}, 63), false}}}, "only X");
}

TEST(GradientsPointwise, CastFloatToFloat) {
  check_gradients({"Cast", {{f64({3, 4}, 70)}}, {{"to", i1(11)}}}, "double to double");
}

TEST(GradientsPointwise, MaxMin) {
  for (const char* op : {"Max", "Min"}) {
    // distinct() values never tie: each element's gradient goes to one input.
    check_gradients({op, {{distinct({2, 3, 4}, 80)}, {distinct({3, 1}, 81)}, {distinct({4}, 82)}}},
                    std::string(op) + " three inputs, broadcast");
    check_gradients({op, {{distinct({2, 3}, 83)}, {distinct({2, 3}, 84), false}}}, std::string(op) + " only the first");
  }
}

TEST(GradientsPointwise, Mod) {
  // Quotients a / b in (2, 10), away from whole numbers (where Mod jumps).
  Tensor a = f64({3, 4}, 90, 1, 3);
  Tensor b = f64({4}, 91, 0.3, 0.5);
  for (int64_t i = 0; i < a.numel(); ++i) {
    double q = a.data<double>()[i] / b.data<double>()[i % 4];
    double frac = q - std::floor(q);
    if (frac < 0.05 || frac > 0.95) a.data<double>()[i] += 0.2 * b.data<double>()[i % 4];
  }
  check_gradients({"Mod", {{a}, {b}}, {{"fmod", i1(1)}}}, "fmod 1");
  Tensor neg = a;
  for (int64_t i = 0; i < neg.numel(); ++i) neg.data<double>()[i] = -neg.data<double>()[i];
  check_gradients({"Mod", {{neg}, {b}}, {{"fmod", i1(1)}}}, "fmod 1, negative dividends");
  check_gradients({"Mod", {{neg}, {b}}, {{"fmod", i1(0)}}}, "fmod 0, negative dividends");
}

// Cast float32 -> float64 inside a graph: the gradient reaches the float32 parameter as
// float32, and its value is the float64 gradient cast back.
TEST(GradientsPointwise, CastBackToTheInputType) {
  Graph g;
  g.opsets = {{"", 17}};
  Value* w = g.add_initializer("w", Tensor::from_float({0.5f, -2.0f, 3.0f}, {3}), Role::Parameter);
  Value* wd = g.add_value("wd");
  g.add_node("Cast", {w}, {wd}, "cast")->attrs["to"] = Attribute{int64_t{11}};
  Value* x = g.add_value("x", DType::f64, {3}, Role::Input);
  x->rank_known = true;
  g.inputs.push_back(x);
  Value* p = g.add_value("p");
  g.add_node("Mul", {wd, x}, {p}, "mul");
  Value* l = g.add_value("L");
  g.add_node("ReduceMean", {p}, {l}, "mean")->attrs["keepdims"] = Attribute{int64_t{0}};
  g.outputs.push_back(l);
  prepare(g);
  autodiff::TrainingOptions options;
  options.loss_output = "L";
  options.optimizer = false;
  options.expose_gradients = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), options);
  ASSERT_EQ(tg.gradients.size(), 1u);
  const std::string grad_name = tg.gradients[0].second;
  EXPECT_EQ(tg.graph.value(grad_name)->dtype, DType::f32);
  runtime::Session s(std::move(tg.graph));
  Tensor xv(DType::f64, {3});
  for (int i = 0; i < 3; ++i) xv.data<double>()[i] = 1.5 * (i + 1);
  s.feed("x", xv);
  s.run();
  Tensor grad = s.fetch(grad_name);
  EXPECT_TRUE(close(grad, {0.5, 1.0, 1.5}, 1e-7));
}

// Stochastic depth as the exporters write it (efficientnet, mnasnet, convnext):
// U -> Less(U, p) -> Cast(float) -> Div(., p) -> Mul(x, .). The comparison and the Cast carry
// no gradient; Div and Mul carry it to the parameter; p (a Constant node, as TorchScript
// writes it) is not trained.
TEST(GradientsPointwise, StochasticDepthChain) {
  Graph g;
  g.opsets = {{"", 17}};
  Value* w = g.add_initializer("w", Tensor::from_float({0.5f, -2.0f, 3.0f}, {3}), Role::Parameter);
  auto input = [&](const char* name, Shape s) {
    Value* v = g.add_value(name, DType::f32, s, Role::Input);
    v->rank_known = true;
    g.inputs.push_back(v);
    return v;
  };
  Value* x = input("x", {2, 3});
  Value* u = input("u", {2, 1});
  Value* p = g.add_value("p");
  g.add_node("Constant", {}, {p}, "keep_prob")->attrs["value"] = Attribute{Tensor::from_float({0.8f}, {})};
  auto v = [&](const char* name) { return g.add_value(name); };
  Value *keep = v("keep"), *keep_f = v("keep_f"), *scale = v("scale"), *xw = v("xw"), *y = v("y"), *l = v("L");
  g.add_node("Less", {u, p}, {keep}, "less");
  g.add_node("Cast", {keep}, {keep_f}, "cast")->attrs["to"] = Attribute{int64_t{1}};
  g.add_node("Div", {keep_f, p}, {scale}, "div");
  g.add_node("Mul", {x, w}, {xw}, "mul_w");
  g.add_node("Mul", {xw, scale}, {y}, "mul");
  g.add_node("ReduceMean", {y}, {l}, "mean")->attrs["keepdims"] = Attribute{int64_t{0}};
  g.outputs.push_back(l);
  prepare(g);
  EXPECT_EQ(w->role, Role::Parameter);
  autodiff::TrainingOptions options;
  options.loss_output = "L";
  options.optimizer = false;
  options.expose_gradients = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), options);
  ASSERT_EQ(tg.gradients.size(), 1u);  // only w
  EXPECT_EQ(tg.gradients[0].first, "w");
  const std::string grad = tg.gradients[0].second;
  runtime::Session s(std::move(tg.graph));
  s.feed("x", Tensor::from_float({1, 2, 3, 4, 5, 6}, {2, 3}));
  s.feed("u", Tensor::from_float({0.5f, 0.9f}, {2, 1}));  // row 0 kept (scaled by 1/0.8), row 1 dropped
  s.run();
  // L = mean(x * w * mask): dL/dw_j = x[0][j] / 0.8 / 6.
  const double k = 1.0 / static_cast<double>(0.8f) / 6;
  EXPECT_TRUE(close(s.fetch(grad), {1 * k, 2 * k, 3 * k}, 1e-6));
  EXPECT_TRUE(close(s.fetch("L"), {(0.5 * 1 - 2 * 2 + 3 * 3) * k}, 1e-6));
}
