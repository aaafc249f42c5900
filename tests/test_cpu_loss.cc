// CPU Softmax and SoftmaxCrossEntropyLoss against references in double; their gradient ops
// as derivatives (central differences) of the forward kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "graph/zoo.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::close;
using test::element;
using test::kFloatTypes;
using test::tolerance;
using test::values;
using test::KernelCase;
using test::OutputSpec;
using test::random_tensor;

namespace {

Tensor scaled(Tensor t, double k, double shift = 0) {
  for (int64_t i = 0; i < t.numel(); ++i) test::set_element(t, i, element(t, i) * k + shift);
  return t;
}

// Softmax groups as (outer, d, inner): element (o, c, j) at (o * d + c) * inner + j.
struct Groups {
  int64_t outer = 1, d = 1, inner = 1;
};

Groups groups(const Shape& s, int64_t axis, bool coerce) {
  Groups g;
  if (axis < 0) axis += static_cast<int64_t>(s.size());
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
    if (i < axis) g.outer *= s[i];
    else if (i == axis || coerce) g.d *= s[i];
    else g.inner *= s[i];
  }
  return g;
}

std::vector<double> softmax_reference(const Tensor& x, const Groups& g) {
  std::vector<double> y(static_cast<size_t>(x.numel()));
  for (int64_t o = 0; o < g.outer; ++o)
    for (int64_t j = 0; j < g.inner; ++j) {
      auto idx = [&](int64_t c) { return (o * g.d + c) * g.inner + j; };
      double mx = -INFINITY, s = 0;
      for (int64_t c = 0; c < g.d; ++c) mx = std::max(mx, element(x, idx(c)));
      for (int64_t c = 0; c < g.d; ++c) s += std::exp(element(x, idx(c)) - mx);
      for (int64_t c = 0; c < g.d; ++c) y[idx(c)] = std::exp(element(x, idx(c)) - mx) / s;
    }
  return y;
}

struct SoftmaxCase {
  Shape shape;
  int64_t opset;
  bool has_axis;
  int64_t axis;
};

const SoftmaxCase kSoftmaxCases[] = {
    {{3, 5, 4, 2}, 13, false, -1}, {{3, 5, 4, 2}, 13, true, 1},  {{3, 5, 4, 2}, 13, true, 0},
    {{3, 5, 4, 2}, 13, true, -2},  {{6, 7}, 13, false, -1},      {{3, 5, 4, 2}, 11, false, 1},
    {{3, 5, 4, 2}, 11, true, 2},   {{3, 5, 4, 2}, 11, true, 0},  {{3, 5, 4, 2}, 11, true, -1},
    {{5, 1000}, 13, false, -1},    {{64, 100, 9}, 13, true, 1},
};

}  // namespace

TEST(CpuLoss, Softmax) {
  for (DType dt : kFloatTypes) {
    uint64_t seed = 1;
    for (const SoftmaxCase& c : kSoftmaxCases) {
      // Large logits: the kernel must subtract the maximum.
      for (double k : {3.0, 300.0}) {
        Tensor x = scaled(random_tensor(dt, c.shape, seed++), k, k > 100 ? 500 : 0);
        KernelCase kc("Softmax", "", {x}, {{dt, c.shape}});
        if (c.has_axis) kc.set_attr("axis", Attribute{c.axis});
        kc.run(c.opset);
        int64_t axis = c.has_axis ? c.axis : c.opset < 13 ? 1 : -1;
        auto want = softmax_reference(x, groups(c.shape, axis, c.opset < 13));
        EXPECT_TRUE(close(kc.output(0), want, tolerance(dt)))
            << graph::shape_str(c.shape) << " opset " << c.opset << " axis " << axis << " "
            << graph::dtype_name(dt);
      }
    }
  }
}

TEST(CpuLoss, SoftmaxGradIsTheDerivative) {
  uint64_t seed = 100;
  for (const SoftmaxCase& c : kSoftmaxCases) {
    if (graph::shape_numel(c.shape) > 200) continue;  // central differences: keep it small
    const bool coerce = c.opset < 13;
    const int64_t axis = c.has_axis ? c.axis : coerce ? 1 : -1;
    Tensor x = random_tensor(DType::f64, c.shape, seed++, -2, 2);
    Tensor dy = random_tensor(DType::f64, c.shape, seed++);
    auto forward = [&](const Tensor& in) {
      KernelCase kc("Softmax", "", {in}, {{DType::f64, c.shape}});
      kc.set_attr("axis", Attribute{axis});
      kc.run(c.opset);
      return kc.output(0);
    };
    Tensor y = forward(x);
    KernelCase grad("SoftmaxGrad", "oxtrain", {dy, y}, {{DType::f64, c.shape}});
    grad.set_attr("axis", Attribute{axis});
    grad.set_attr("coerce_2d", Attribute{int64_t{coerce ? 1 : 0}});
    grad.run();
    std::vector<double> fd;
    const double h = 1e-5;
    for (int64_t i = 0; i < x.numel(); ++i) {
      Tensor up = x, down = x;
      test::set_element(up, i, element(x, i) + h);
      test::set_element(down, i, element(x, i) - h);
      Tensor yu = forward(up), yd = forward(down);
      double s = 0;
      for (int64_t k = 0; k < dy.numel(); ++k) s += (element(yu, k) - element(yd, k)) * element(dy, k);
      fd.push_back(s / (2 * h));
    }
    EXPECT_TRUE(close(grad.output(0), fd, 1e-6))
        << graph::shape_str(c.shape) << " axis " << axis << " coerce " << coerce;

    // float32 against the formula.
    Tensor dy32(DType::f32, c.shape), y32(DType::f32, c.shape);
    for (int64_t i = 0; i < dy.numel(); ++i) {
      test::set_element(dy32, i, element(dy, i));
      test::set_element(y32, i, element(y, i));
    }
    KernelCase grad32("SoftmaxGrad", "oxtrain", {dy32, y32}, {{DType::f32, c.shape}});
    grad32.set_attr("axis", Attribute{axis});
    grad32.set_attr("coerce_2d", Attribute{int64_t{coerce ? 1 : 0}});
    grad32.run();
    Groups g = groups(c.shape, axis, coerce);
    std::vector<double> want(static_cast<size_t>(dy.numel()));
    for (int64_t o = 0; o < g.outer; ++o)
      for (int64_t j = 0; j < g.inner; ++j) {
        auto idx = [&](int64_t k) { return (o * g.d + k) * g.inner + j; };
        double dot = 0;
        for (int64_t k = 0; k < g.d; ++k) dot += element(dy32, idx(k)) * element(y32, idx(k));
        for (int64_t k = 0; k < g.d; ++k)
          want[idx(k)] = element(y32, idx(k)) * (element(dy32, idx(k)) - dot);
      }
    EXPECT_TRUE(close(grad32.output(0), want, 1e-5));
  }
}

// LogSoftmax against log of the float64 reference softmax, with logits large enough that
// log(softmax) computed naively would underflow to -inf; its gradient against the formula.
TEST(CpuLoss, LogSoftmax) {
  for (DType dt : kFloatTypes) {
    uint64_t seed = 7;
    for (const SoftmaxCase& c : kSoftmaxCases) {
      for (double k : {3.0, 300.0}) {
        Tensor x = scaled(random_tensor(dt, c.shape, seed++), k, k > 100 ? 500 : 0);
        KernelCase kc("LogSoftmax", "", {x}, {{dt, c.shape}});
        if (c.has_axis) kc.set_attr("axis", Attribute{c.axis});
        kc.run(c.opset);
        const int64_t axis = c.has_axis ? c.axis : c.opset < 13 ? 1 : -1;
        const Groups g = groups(c.shape, axis, c.opset < 13);
        std::vector<double> want(static_cast<size_t>(x.numel()));
        for (int64_t o = 0; o < g.outer; ++o)
          for (int64_t j = 0; j < g.inner; ++j) {
            auto idx = [&](int64_t k) { return (o * g.d + k) * g.inner + j; };
            double mx = -INFINITY, sum = 0;
            for (int64_t q = 0; q < g.d; ++q) mx = std::max(mx, element(x, idx(q)));
            for (int64_t q = 0; q < g.d; ++q) sum += std::exp(element(x, idx(q)) - mx);
            for (int64_t q = 0; q < g.d; ++q) want[idx(q)] = element(x, idx(q)) - mx - std::log(sum);
          }
        // Absolute: the values reach -1000 and more at scale 300, all finite.
        double worst = 0;
        for (int64_t i = 0; i < x.numel(); ++i)
          worst = std::max(worst, std::fabs(element(kc.output(0), i) - want[i]) / std::max(1.0, std::fabs(want[i])));
        EXPECT_LT(worst, dt == DType::f64 ? 1e-12 : 1e-6)
            << graph::shape_str(c.shape) << " opset " << c.opset << " axis " << axis << " " << graph::dtype_name(dt);
      }
    }
  }
  // dX = dY - exp(Y) * sum(dY), in float32 against the formula in double.
  uint64_t seed = 300;
  for (const SoftmaxCase& c : kSoftmaxCases) {
    const bool coerce = c.opset < 13;
    const int64_t axis = c.has_axis ? c.axis : coerce ? 1 : -1;
    Tensor x = random_tensor(DType::f32, c.shape, seed++, -3, 3);
    KernelCase fwd("LogSoftmax", "", {x}, {{DType::f32, c.shape}});
    fwd.set_attr("axis", Attribute{axis});
    fwd.run(c.opset);
    Tensor y = fwd.output(0), dy = random_tensor(DType::f32, c.shape, seed++);
    KernelCase grad("LogSoftmaxGrad", "oxtrain", {dy, y}, {{DType::f32, c.shape}});
    grad.set_attr("axis", Attribute{axis});
    grad.set_attr("coerce_2d", Attribute{int64_t{coerce ? 1 : 0}});
    grad.run();
    const Groups g = groups(c.shape, axis, coerce);
    std::vector<double> want(static_cast<size_t>(dy.numel()));
    for (int64_t o = 0; o < g.outer; ++o)
      for (int64_t j = 0; j < g.inner; ++j) {
        auto idx = [&](int64_t k) { return (o * g.d + k) * g.inner + j; };
        double sum = 0;
        for (int64_t k = 0; k < g.d; ++k) sum += element(dy, idx(k));
        for (int64_t k = 0; k < g.d; ++k) want[idx(k)] = element(dy, idx(k)) - std::exp(element(y, idx(k))) * sum;
      }
    EXPECT_TRUE(close(grad.output(0), want, 1e-5)) << graph::shape_str(c.shape) << " axis " << axis;
  }
}

namespace {

struct LossCase {
  Shape scores;
  std::string reduction;
  bool weights;
  bool ignore;
  int64_t ignore_index;
  DType labels;
};

Shape label_shape(const Shape& scores) {
  Shape s{scores[0]};
  s.insert(s.end(), scores.begin() + 2, scores.end());
  return s;
}

// Labels in [0, C), every third one set to the ignore index when there is one.
Tensor make_labels(const LossCase& c, uint64_t seed) {
  const int64_t classes = c.scores[1];
  Tensor t(c.labels, label_shape(c.scores));
  graph::Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t y = static_cast<int64_t>(rng.uniform() * static_cast<double>(classes));
    if (c.ignore && i % 3 == 1) y = c.ignore_index;
    test::set_element(t, i, static_cast<double>(y));
  }
  return t;
}

struct LossReference {
  std::vector<double> loss;      // reduced (one value) or per position
  std::vector<double> log_prob;  // like scores
};

LossReference loss_reference(const LossCase& c, const Tensor& x, const Tensor& labels,
                             const Tensor* w) {
  Groups g{c.scores[0], c.scores[1], 1};
  for (size_t i = 2; i < c.scores.size(); ++i) g.inner *= c.scores[i];
  LossReference r;
  r.log_prob.resize(static_cast<size_t>(x.numel()));
  std::vector<double> per(static_cast<size_t>(g.outer * g.inner));
  double total = 0, denom = 0;
  for (int64_t o = 0; o < g.outer; ++o)
    for (int64_t j = 0; j < g.inner; ++j) {
      auto idx = [&](int64_t k) { return (o * g.d + k) * g.inner + j; };
      double mx = -INFINITY, s = 0;
      for (int64_t k = 0; k < g.d; ++k) mx = std::max(mx, element(x, idx(k)));
      for (int64_t k = 0; k < g.d; ++k) s += std::exp(element(x, idx(k)) - mx);
      for (int64_t k = 0; k < g.d; ++k) r.log_prob[idx(k)] = element(x, idx(k)) - mx - std::log(s);
      const int64_t p = o * g.inner + j;
      const int64_t y = static_cast<int64_t>(element(labels, p));
      if (c.ignore && y == c.ignore_index) continue;
      const double wy = w ? element(*w, y) : 1.0;
      per[p] = -wy * r.log_prob[idx(y)];
      total += per[p];
      denom += wy;
    }
  if (c.reduction == "none") r.loss = per;
  else if (c.reduction == "sum") r.loss = {total};
  else r.loss = {total / denom};
  return r;
}

std::vector<LossCase> loss_cases() {
  std::vector<LossCase> cases;
  for (const Shape& s : {Shape{6, 5}, Shape{3, 5, 2, 4}, Shape{2, 4, 7}, Shape{70, 10}})
    for (const char* red : {"mean", "sum", "none"})
      for (bool w : {false, true})
        for (int ig = 0; ig < 3; ++ig)
          cases.push_back({s, red, w, ig > 0, ig == 2 ? 2 : -100,
                           ig == 1 ? DType::i32 : DType::i64});
  return cases;
}

KernelCase loss_case(const LossCase& c, DType dt, const Tensor& x, const Tensor& labels,
                     const Tensor* w, bool log_prob) {
  std::vector<Tensor> ins{x, labels};
  if (w) ins.push_back(*w);
  std::vector<OutputSpec> outs{{dt, c.reduction == "none" ? label_shape(c.scores) : Shape{}}};
  if (log_prob) outs.push_back({dt, c.scores});
  KernelCase kc("SoftmaxCrossEntropyLoss", "", ins, outs);
  if (c.reduction != "mean") kc.set_attr("reduction", Attribute{c.reduction});
  if (c.ignore) kc.set_attr("ignore_index", Attribute{c.ignore_index});
  return kc;
}

}  // namespace

TEST(CpuLoss, SoftmaxCrossEntropyLoss) {
  for (DType dt : kFloatTypes) {
    uint64_t seed = 200;
    for (const LossCase& c : loss_cases()) {
      Tensor x = scaled(random_tensor(dt, c.scores, seed++), 4);
      Tensor labels = make_labels(c, seed++);
      Tensor w = random_tensor(dt, {c.scores[1]}, seed++, 0.2, 2);
      const Tensor* wp = c.weights ? &w : nullptr;
      LossReference ref = loss_reference(c, x, labels, wp);
      const std::string what = graph::shape_str(c.scores) + " " + c.reduction +
                               (c.weights ? " weights" : "") +
                               (c.ignore ? " ignore " + std::to_string(c.ignore_index) : "") +
                               " " + graph::dtype_name(dt);
      for (bool log_prob : {true, false}) {
        KernelCase kc = loss_case(c, dt, x, labels, wp, log_prob);
        kc.run();
        EXPECT_TRUE(close(kc.output(0), ref.loss, tolerance(dt))) << what;
        if (log_prob) {
          EXPECT_TRUE(close(kc.output(1), ref.log_prob, tolerance(dt))) << what;
        }
      }
    }
  }
}

TEST(CpuLoss, LabelOutOfRangeIsAnError) {
  Tensor x = random_tensor(DType::f32, {4, 5}, 1);
  for (int64_t bad : {5, -1, 100}) {
    Tensor labels = Tensor::from_int64({0, 4, bad, 1}, {4});
    LossCase c{{4, 5}, "mean", false, false, 0, DType::i64};
    KernelCase kc = loss_case(c, DType::f32, x, labels, nullptr, true);
    try {
      kc.run();
      ADD_FAILURE() << "no error for label " << bad;
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("test_SoftmaxCrossEntropyLoss"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
    }
    // The gradient checks its labels too.
    KernelCase grad("SoftmaxCrossEntropyLossGrad", "oxtrain",
                    {Tensor(DType::f32, {}), x, labels}, {{DType::f32, {4, 5}}});
    EXPECT_THROW(grad.run(), Error);
  }
  // The ignore index may lie outside [0, C).
  Tensor labels = Tensor::from_int64({0, 4, -1, 1}, {4});
  LossCase c{{4, 5}, "mean", false, true, -1, DType::i64};
  KernelCase ok = loss_case(c, DType::f32, x, labels, nullptr, false);
  EXPECT_NO_THROW(ok.run());
}

TEST(CpuLoss, SoftmaxCrossEntropyLossGradIsTheDerivative) {
  uint64_t seed = 500;
  for (const LossCase& c : loss_cases()) {
    if (graph::shape_numel(c.scores) > 100) continue;  // central differences: keep it small
    Tensor x = scaled(random_tensor(DType::f64, c.scores, seed++), 3);
    Tensor labels = make_labels(c, seed++);
    Tensor w = random_tensor(DType::f64, {c.scores[1]}, seed++, 0.2, 2);
    const Tensor* wp = c.weights ? &w : nullptr;
    const bool none = c.reduction == "none";
    Tensor dloss = random_tensor(DType::f64, none ? label_shape(c.scores) : Shape{}, seed++);
    // L = <loss(x), dLoss>
    auto objective = [&](const Tensor& in) {
      KernelCase kc = loss_case(c, DType::f64, in, labels, wp, false);
      kc.run();
      double s = 0;
      for (int64_t i = 0; i < dloss.numel(); ++i) s += element(kc.output(0), i) * element(dloss, i);
      return s;
    };
    KernelCase fwd = loss_case(c, DType::f64, x, labels, wp, true);
    fwd.run();
    std::vector<Tensor> ins{dloss, fwd.output(1), labels};
    if (wp) ins.push_back(w);
    KernelCase grad("SoftmaxCrossEntropyLossGrad", "oxtrain", ins, {{DType::f64, c.scores}});
    if (c.reduction != "mean") grad.set_attr("reduction", Attribute{c.reduction});
    if (c.ignore) grad.set_attr("ignore_index", Attribute{c.ignore_index});
    grad.run();
    std::vector<double> fd;
    const double h = 1e-5;
    for (int64_t i = 0; i < x.numel(); ++i) {
      Tensor up = x, down = x;
      test::set_element(up, i, element(x, i) + h);
      test::set_element(down, i, element(x, i) - h);
      fd.push_back((objective(up) - objective(down)) / (2 * h));
    }
    const std::string what = graph::shape_str(c.scores) + " " + c.reduction +
                             (c.weights ? " weights" : "") +
                             (c.ignore ? " ignore " + std::to_string(c.ignore_index) : "");
    EXPECT_TRUE(close(grad.output(0), fd, 1e-6)) << what;

    // float32 agrees with float64.
    std::vector<Tensor> ins32;
    for (const Tensor& t : ins) {
      if (t.dtype != DType::f64) {
        ins32.push_back(t);
        continue;
      }
      Tensor f(DType::f32, t.shape);
      for (int64_t i = 0; i < t.numel(); ++i) test::set_element(f, i, element(t, i));
      ins32.push_back(f);
    }
    KernelCase grad32("SoftmaxCrossEntropyLossGrad", "oxtrain", ins32, {{DType::f32, c.scores}});
    grad32.node().attrs = grad.node().attrs;
    grad32.run();
    EXPECT_TRUE(close(grad32.output(0), values(grad.output(0)), 1e-5)) << what << " float32";
  }
}

TEST(CpuLoss, SoftmaxWithInfinitiesAndNans) {
  // The semantics the CUDA kernel is compared against (runtime/math/loss.h): an element at
  // -inf gets 0; a row whose every other element is -inf is one-hot; a row holding a NaN or a
  // +inf, or all -inf, is NaN.
  const double inf = std::numeric_limits<double>::infinity();
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, {5, 4}, 3);
    test::set_element(x, 1, -inf);
    for (int64_t c : {0, 1, 3}) test::set_element(x, 4 + c, -inf);
    test::set_element(x, 8 + 2, std::numeric_limits<double>::quiet_NaN());
    test::set_element(x, 12 + 0, inf);
    for (int64_t c = 0; c < 4; ++c) test::set_element(x, 16 + c, -inf);
    KernelCase kc("Softmax", "", {x}, {{dt, {5, 4}}});
    kc.run();
    const Tensor& y = kc.output(0);
    EXPECT_EQ(element(y, 1), 0.0);
    EXPECT_GT(element(y, 0), 0.0);
    EXPECT_NEAR(element(y, 0) + element(y, 2) + element(y, 3), 1.0, tolerance(dt));
    EXPECT_EQ(element(y, 4 + 2), 1.0);
    EXPECT_EQ(element(y, 4 + 0), 0.0);
    for (int64_t row : {2, 3, 4})
      for (int64_t c = 0; c < 4; ++c)
        EXPECT_TRUE(std::isnan(element(y, row * 4 + c))) << "row " << row << " " << c;
  }
}
