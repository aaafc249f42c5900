// The gradient checker: for every op with a gradient rule, a one-node graph goes through the
// real autodiff pass and runs forward and backward in float64 on the CPU runtime; every input
// gradient is compared with central differences of L = sum(Y * R) for a fixed random R.
// Attributes vary (stride, padding, dilation, groups, ceil_mode, broadcasting, transposes),
// shapes are odd, and the set of inputs that need gradients varies. Inputs avoid kinks.
#include <gtest/gtest.h>

#include <cmath>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/session.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

struct In {
  Tensor value;
  bool needs_grad = true;
  bool constant = false;  // an initializer (shapes, axes, labels) instead of a graph input
};

struct GradCase {
  std::string op;
  std::vector<In> inputs;
  std::map<std::string, Attribute> attrs = {};
  size_t outputs = 1;
  int64_t opset = 17;
};

Tensor f64(Shape shape, uint64_t seed, double lo = -1, double hi = 1) {
  return test::random_tensor(DType::f64, std::move(shape), seed, lo, hi);
}

// Values in +-[0.1, 1]: away from ReLU's kink at 0.
Tensor away_from_zero(Shape shape, uint64_t seed) {
  Tensor t = f64(std::move(shape), seed, 0.1, 1.0);
  Rng rng(seed + 99);
  for (int64_t i = 0; i < t.numel(); ++i)
    if (rng.uniform() < 0.5) t.data<double>()[i] = -t.data<double>()[i];
  return t;
}

// Distinct values spaced 1/numel apart, shuffled: no ties for MaxPool.
Tensor distinct(Shape shape, uint64_t seed) {
  Tensor t(DType::f64, std::move(shape));
  int64_t n = t.numel();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.next_u64() % (i + 1)]);
  for (int64_t i = 0; i < n; ++i) t.data<double>()[i] = -1.0 + 2.0 * static_cast<double>(order[i]) / n;
  return t;
}

Tensor ints(std::vector<int64_t> v) {
  return Tensor::from_int64(v, {static_cast<int64_t>(v.size())});
}

struct Built {
  std::unique_ptr<runtime::Session> session;
  std::vector<std::string> grad_of;  // per input: gradient value name, or ""
};

Built build(const GradCase& c, const Tensor& r) {
  Graph g;
  g.opsets = {{"", c.opset}};
  std::vector<Value*> ins;
  std::vector<std::string> wrt;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const In& in = c.inputs[i];
    std::string name = "x" + std::to_string(i);
    if (in.value.dtype == DType::undefined) {
      ins.push_back(nullptr);
      continue;
    }
    Value* v;
    if (in.constant) {
      v = g.add_initializer(name, in.value, Role::Constant);
    } else {
      v = g.add_value(name, in.value.dtype, in.value.shape, Role::Input);
      v->rank_known = true;
      g.inputs.push_back(v);
    }
    ins.push_back(v);
    if (in.needs_grad) wrt.push_back(name);
  }
  std::vector<Value*> outs;
  for (size_t i = 0; i < c.outputs; ++i) outs.push_back(g.add_value("y" + std::to_string(i)));
  Node* n = g.add_node(c.op, ins, outs, "op");
  n->attrs = c.attrs;
  // L = mean(y0 * r) * count = sum(y0 * r); r and count are inputs so they are not trained.
  Value* rv = g.add_value("r", DType::f64, r.shape, Role::Input);
  rv->rank_known = true;
  Value* count = g.add_value("count", DType::f64, {}, Role::Input);
  count->rank_known = true;
  g.inputs.push_back(rv);
  g.inputs.push_back(count);
  Value* prod = g.add_value("prod");
  g.add_node("Mul", {outs[0], rv}, {prod}, "weigh");
  Value* mean = g.add_value("mean");
  Node* reduce = g.add_node("ReduceMean", {prod}, {mean}, "reduce");
  reduce->attrs["keepdims"].value = int64_t{0};
  Value* loss = g.add_value("L");
  g.add_node("Mul", {mean, count}, {loss}, "scale");
  g.outputs.push_back(loss);
  prepare(g);
  autodiff::TrainingOptions options;
  options.loss_output = "L";
  options.optimizer = false;
  options.wrt = wrt;
  options.expose_gradients = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), options);
  Built b;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    std::string name = "x" + std::to_string(i), grad;
    for (const auto& [v, d] : tg.gradients)
      if (v == name) grad = d;
    b.grad_of.push_back(grad);
  }
  b.session = std::make_unique<runtime::Session>(std::move(tg.graph));
  return b;
}

void feed_all(runtime::Session& s, const GradCase& c, const std::vector<Tensor>& values,
              const Tensor& r) {
  for (size_t i = 0; i < c.inputs.size(); ++i)
    if (c.inputs[i].value.dtype != DType::undefined && !c.inputs[i].constant)
      s.feed("x" + std::to_string(i), values[i]);
  s.feed("r", r);
  Tensor count(DType::f64, {});
  count.data<double>()[0] = static_cast<double>(std::max<int64_t>(r.numel(), 1));
  s.feed("count", count);
}

double loss_at(runtime::Session& s, const GradCase& c, const std::vector<Tensor>& values,
               const Tensor& r) {
  feed_all(s, c, values, r);
  s.run();
  return s.fetch("L").data<double>()[0];
}

// Analytic and numeric agree to 1e-6 relative (absolute below 1); NaN never agrees.
bool agree(double analytic, double numeric) {
  return std::isfinite(analytic) && std::isfinite(numeric) &&
         std::fabs(analytic - numeric) <= 1e-6 * std::max(1.0, std::fabs(numeric));
}

// Runs the checker and returns every mismatch found.
std::vector<std::string> gradient_problems(const GradCase& c, double h) {
  std::vector<std::string> problems;
  // Output shape: build once with a placeholder r to learn it.
  Graph probe;
  probe.opsets = {{"", c.opset}};
  std::vector<Value*> ins;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const In& in = c.inputs[i];
    if (in.value.dtype == DType::undefined) {
      ins.push_back(nullptr);
      continue;
    }
    Value* v = in.constant ? probe.add_initializer("x" + std::to_string(i), in.value, Role::Constant)
                           : probe.add_value("x" + std::to_string(i), in.value.dtype, in.value.shape,
                                             Role::Input);
    v->rank_known = true;
    if (!in.constant) probe.inputs.push_back(v);
    ins.push_back(v);
  }
  std::vector<Value*> outs;
  for (size_t i = 0; i < c.outputs; ++i) outs.push_back(probe.add_value("y" + std::to_string(i)));
  probe.add_node(c.op, ins, outs, "op")->attrs = c.attrs;
  probe.outputs.push_back(outs[0]);
  prepare(probe);
  Tensor r = f64(outs[0]->shape, 7777);

  Built b = build(c, r);
  std::vector<Tensor> values;
  for (const In& in : c.inputs) values.push_back(in.value);
  feed_all(*b.session, c, values, r);
  b.session->run();
  int checked_inputs = 0;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (!c.inputs[i].needs_grad || c.inputs[i].value.dtype == DType::undefined) continue;
    if (b.grad_of[i].empty()) return {"no gradient for input " + std::to_string(i)};
    ++checked_inputs;
  }
  if (checked_inputs == 0) return {"no input needs a gradient"};
  std::vector<Tensor> analytic(c.inputs.size());
  for (size_t i = 0; i < c.inputs.size(); ++i)
    if (!b.grad_of[i].empty()) analytic[i] = b.session->fetch(b.grad_of[i]);

  Rng rng(123);
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (b.grad_of[i].empty()) continue;
    const Tensor& a = analytic[i];
    if (a.shape != c.inputs[i].value.shape) return {"gradient " + std::to_string(i) + " has the wrong shape"};
    int64_t n = a.numel();
    // A gradient that is zero everywhere would match a broken kernel that outputs zeros.
    double largest = 0;
    for (int64_t j = 0; j < n; ++j) largest = std::max(largest, std::fabs(a.data<double>()[j]));
    if (!(largest > 1e-3))
      problems.push_back("input " + std::to_string(i) + ": gradient is (almost) zero everywhere");
    // Every element of small tensors, a random sample of 48 of larger ones.
    std::vector<int64_t> picks;
    if (n <= 48)
      for (int64_t j = 0; j < n; ++j) picks.push_back(j);
    else
      for (int k = 0; k < 48; ++k) picks.push_back(static_cast<int64_t>(rng.next_u64() % n));
    for (int64_t j : picks) {
      std::vector<Tensor> plus = values, minus = values;
      double x = values[i].data<double>()[j];
      plus[i].data<double>()[j] = x + h;
      minus[i].data<double>()[j] = x - h;
      double numeric = (loss_at(*b.session, c, plus, r) - loss_at(*b.session, c, minus, r)) / (2 * h);
      double got = a.data<double>()[j];
      if (!agree(got, numeric))
        problems.push_back("input " + std::to_string(i) + " element " + std::to_string(j) +
                           ": analytic " + std::to_string(got) + ", numeric " + std::to_string(numeric));
    }
    // All elements at once: the derivative along a random direction.
    Tensor dir = f64(a.shape, 4242 + i);
    std::vector<Tensor> plus = values, minus = values;
    double dot = 0;
    for (int64_t j = 0; j < n; ++j) {
      plus[i].data<double>()[j] += h * dir.data<double>()[j];
      minus[i].data<double>()[j] -= h * dir.data<double>()[j];
      dot += a.data<double>()[j] * dir.data<double>()[j];
    }
    double numeric = (loss_at(*b.session, c, plus, r) - loss_at(*b.session, c, minus, r)) / (2 * h);
    if (!agree(dot, numeric))
      problems.push_back("input " + std::to_string(i) + " along a random direction: analytic " +
                         std::to_string(dot) + ", numeric " + std::to_string(numeric));
  }
  return problems;
}

void check_gradients(const GradCase& c, const std::string& label, double h = 1e-6) {
  SCOPED_TRACE(label);
  std::vector<std::string> problems = gradient_problems(c, h);
  std::string all;
  for (const auto& p : problems) all += "\n  " + p;
  EXPECT_TRUE(problems.empty()) << problems.size() << " gradient mismatches:" << all;
}

Attribute iv(std::vector<int64_t> v) { return Attribute{v}; }
Attribute i1(int64_t v) { return Attribute{v}; }
Attribute f1(float v) { return Attribute{v}; }
Attribute s1(const char* v) { return Attribute{std::string(v)}; }

}  // namespace

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
