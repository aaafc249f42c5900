// CUDA Softmax, oxtrain.SoftmaxGrad, SoftmaxCrossEntropyLoss and
// oxtrain.SoftmaxCrossEntropyLossGrad against their CPU twins (runtime/cpu/loss.cc) on odd
// shapes: rows shorter and longer than a block, softmax axes with elements apart (inner > 1),
// more rows than blocks, ties, signed zeros, -inf and NaN entries, every reduction, weights,
// ignore_index inside and outside [0, C), with and without log_prob. Skipped without a GPU.
//
// Tolerances, relative to the largest CPU value: Softmax computes exp in float32 (CUDA's expf
// is within 2 ulp, glibc's within 1) and scales in double: 2e-6 covers a few float32 ulp.
// The other kernels compute in double and round once to float32; their sums run in another
// order than the CPU's (a tree instead of eight lanes), which moves the double result by
// about 1e-16 and the float32 result by at most 1 ulp: 1e-6.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "graph/zoo.h"
#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::cuda_matches_cpu;
using test::element;
using test::KernelCase;
using test::OutputSpec;
using test::random_tensor;
using test::set_element;

namespace {

constexpr double kSoftmaxTolerance = 2e-6;
constexpr double kTolerance = 1e-6;
const double kInf = std::numeric_limits<double>::infinity();
const double kNan = std::numeric_limits<double>::quiet_NaN();

// Random values in [-4, 4) with the edge cases sprinkled in: every 7th a tie with its left
// neighbour, every 11th a -0.0 beside a +0.0.
Tensor logits(Shape shape, uint64_t seed, double scale = 4) {
  Tensor t = random_tensor(DType::f32, std::move(shape), seed, -scale, scale);
  for (int64_t i = 1; i < t.numel(); ++i) {
    if (i % 7 == 0) set_element(t, i, element(t, i - 1));
    if (i % 11 == 0) {
      set_element(t, i - 1, 0.0);
      set_element(t, i, -0.0);
    }
  }
  return t;
}

// Labels in [0, classes), every third one the ignore index where there is one.
Tensor labels_for(const Shape& positions, int64_t classes, bool ignore, int64_t ignore_index,
                  uint64_t seed) {
  Tensor t(DType::i64, positions);
  graph::Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t y = static_cast<int64_t>(rng.uniform() * static_cast<double>(classes));
    if (ignore && i % 3 == 1) y = ignore_index;
    t.data<int64_t>()[i] = y;
  }
  return t;
}

Shape positions_of(const Shape& scores) {
  Shape s{scores[0]};
  s.insert(s.end(), scores.begin() + 2, scores.end());
  return s;
}

// Runs the case on the CPU, then on the GPU; outputs must agree within rtol of the largest CPU
// magnitude, where NaN must meet NaN (cuda_matches_cpu refuses any NaN).
::testing::AssertionResult agree_with_nans(KernelCase& c, double rtol, int64_t opset = 17) {
  const std::vector<Tensor> want = test::run_cpu_then_cuda(c, opset);
  for (size_t o = 0; o < want.size(); ++o) {
    if (want[o].dtype == DType::undefined) continue;
    double scale = 0;
    for (int64_t i = 0; i < want[o].numel(); ++i)
      if (std::isfinite(element(want[o], i)))
        scale = std::max(scale, std::fabs(element(want[o], i)));
    for (int64_t i = 0; i < want[o].numel(); ++i) {
      const double g = element(c.output(o), i), w = element(want[o], i);
      const bool ok = std::isnan(w) ? std::isnan(g)
                      : std::isinf(w) ? g == w
                                      : std::fabs(g - w) <= rtol * std::max(scale, 1e-30);
      if (!ok)
        return ::testing::AssertionFailure()
               << c.node().describe() << " output " << o << " element " << i << ": CUDA " << g
               << ", CPU " << w;
    }
  }
  return ::testing::AssertionSuccess();
}

struct SoftmaxCase {
  Shape shape;
  int64_t opset;
  bool has_axis;
  int64_t axis;
};

// Rows of 1, 13, 33 (a warp and one), 1000, 1001 (coerced), 5000 (the 512-thread blocks)
// elements; inner strides of 11 * 13, 13, 143; 9000 rows (more than the blocks launched).
const SoftmaxCase kSoftmaxCases[] = {
    {{5, 7, 11, 13}, 13, false, -1}, {{5, 7, 11, 13}, 13, true, 1}, {{5, 7, 11, 13}, 13, true, 0},
    {{5, 7, 11, 13}, 13, true, 2},   {{5, 7, 11, 13}, 11, false, 1}, {{5, 7, 11, 13}, 11, true, 3},
    {{3, 1000}, 13, false, -1},      {{2, 5000}, 13, false, -1},     {{4, 33}, 13, false, -1},
    {{6, 1}, 13, false, -1},         {{9000, 3}, 13, false, -1},     {{3, 7, 1}, 13, true, 1},
};

std::string describe(const SoftmaxCase& c) {
  return graph::shape_str(c.shape) + " opset " + std::to_string(c.opset) +
         (c.has_axis ? " axis " + std::to_string(c.axis) : std::string(" default axis"));
}

}  // namespace

TEST(CudaLoss, SoftmaxMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 1;
  for (const SoftmaxCase& c : kSoftmaxCases)
    for (double shift : {0.0, 500.0}) {  // large logits: the maximum must be subtracted
      Tensor x = logits(c.shape, seed++);
      for (int64_t i = 0; i < x.numel(); ++i) set_element(x, i, element(x, i) + shift);
      KernelCase kc("Softmax", "", {x}, {{DType::f32, c.shape}});
      if (c.has_axis) kc.set_attr("axis", Attribute{c.axis});
      EXPECT_TRUE(cuda_matches_cpu(kc, kSoftmaxTolerance, c.opset)) << describe(c);
    }
}

TEST(CudaLoss, LogSoftmaxAndItsGradientMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 500;
  for (const SoftmaxCase& c : kSoftmaxCases) {
    const bool coerce = c.opset < 13;
    const int64_t axis = c.has_axis ? c.axis : coerce ? 1 : -1;
    for (double shift : {0.0, 500.0}) {
      Tensor x = logits(c.shape, seed++);
      for (int64_t i = 0; i < x.numel(); ++i) set_element(x, i, element(x, i) + shift);
      KernelCase kc("LogSoftmax", "", {x}, {{DType::f32, c.shape}});
      kc.set_attr("axis", Attribute{axis});
      EXPECT_TRUE(cuda_matches_cpu(kc, kSoftmaxTolerance, c.opset)) << describe(c);
    }
    KernelCase fwd("LogSoftmax", "", {logits(c.shape, seed++)}, {{DType::f32, c.shape}});
    fwd.set_attr("axis", Attribute{axis});
    fwd.run(c.opset);
    KernelCase grad("LogSoftmaxGrad", "oxtrain", {logits(c.shape, seed++, 1), fwd.output(0)}, {{DType::f32, c.shape}});
    grad.set_attr("axis", Attribute{axis});
    grad.set_attr("coerce_2d", Attribute{int64_t{coerce ? 1 : 0}});
    EXPECT_TRUE(cuda_matches_cpu(grad, kTolerance)) << describe(c);
  }
}

TEST(CudaLoss, SoftmaxWithInfinitiesAndNans) {
  OXTRAIN_REQUIRE_GPU();
  // [6, 9] rows: one -inf (its output is 0), all but one -inf (a one-hot), a NaN (the row is
  // NaN), every element -inf (NaN), a +inf (NaN), and an ordinary row.
  Tensor x = logits({6, 9}, 3);
  set_element(x, 0 * 9 + 4, -kInf);
  for (int64_t c = 0; c < 9; ++c)
    if (c != 6) set_element(x, 1 * 9 + c, -kInf);
  set_element(x, 2 * 9 + 5, kNan);
  for (int64_t c = 0; c < 9; ++c) set_element(x, 3 * 9 + c, -kInf);
  set_element(x, 4 * 9 + 0, kInf);
  KernelCase kc("Softmax", "", {x}, {{DType::f32, {6, 9}}});
  EXPECT_TRUE(agree_with_nans(kc, kSoftmaxTolerance));
  // The GPU's own values, so that agreement on a wrong answer cannot pass.
  EXPECT_EQ(element(kc.output(0), 0 * 9 + 4), 0.0);
  EXPECT_EQ(element(kc.output(0), 1 * 9 + 6), 1.0);
  EXPECT_TRUE(std::isnan(element(kc.output(0), 2 * 9 + 0)));
  EXPECT_TRUE(std::isnan(element(kc.output(0), 3 * 9 + 8)));
  double sum = 0;
  for (int64_t c = 0; c < 9; ++c) sum += element(kc.output(0), 5 * 9 + c);
  EXPECT_NEAR(sum, 1.0, 1e-6);
}

TEST(CudaLoss, SoftmaxGradMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const SoftmaxCase& c : kSoftmaxCases) {
    const bool coerce = c.opset < 13;
    const int64_t axis = c.has_axis ? c.axis : coerce ? 1 : -1;
    // Y from the CPU softmax, so that the rows sum to 1 as in training.
    KernelCase fwd("Softmax", "", {logits(c.shape, seed++)}, {{DType::f32, c.shape}});
    fwd.set_attr("axis", Attribute{axis});
    fwd.run(c.opset);
    Tensor dy = logits(c.shape, seed++, 1);
    KernelCase grad("SoftmaxGrad", "oxtrain", {dy, fwd.output(0)}, {{DType::f32, c.shape}});
    grad.set_attr("axis", Attribute{axis});
    grad.set_attr("coerce_2d", Attribute{int64_t{coerce ? 1 : 0}});
    EXPECT_TRUE(cuda_matches_cpu(grad, kTolerance)) << describe(c);
  }
}

namespace {

struct LossCase {
  Shape scores;
  std::string reduction;
  bool weights;
  bool ignore;
  int64_t ignore_index;
};

std::string describe(const LossCase& c) {
  return graph::shape_str(c.scores) + " " + c.reduction + (c.weights ? " weights" : "") +
         (c.ignore ? " ignore " + std::to_string(c.ignore_index) : "");
}

// [5, 7]: short rows; [5, 7, 11, 13]: classes 143 apart; [3, 1000]: rows longer than a block;
// [5, 3, 64, 32]: 10240 positions (more than the blocks launched).
std::vector<LossCase> loss_cases() {
  std::vector<LossCase> cases;
  for (const Shape& s : {Shape{5, 7}, Shape{5, 7, 11, 13}, Shape{3, 1000}, Shape{5, 3, 64, 32}})
    for (const char* red : {"mean", "sum", "none"})
      for (bool w : {false, true})
        for (int ig = 0; ig < 3; ++ig)  // none, -100 (outside [0, C)), 2 (a class)
          cases.push_back({s, red, w, ig > 0, ig == 2 ? 2 : -100});
  return cases;
}

KernelCase loss_case(const LossCase& c, const Tensor& x, const Tensor& labels, const Tensor* w,
                     bool log_prob) {
  std::vector<Tensor> ins{x, labels};
  if (w) ins.push_back(*w);
  std::vector<OutputSpec> outs{
      {DType::f32, c.reduction == "none" ? positions_of(c.scores) : Shape{}}};
  if (log_prob) outs.push_back({DType::f32, c.scores});
  KernelCase kc("SoftmaxCrossEntropyLoss", "", ins, outs);
  if (c.reduction != "mean") kc.set_attr("reduction", Attribute{c.reduction});
  if (c.ignore) kc.set_attr("ignore_index", Attribute{c.ignore_index});
  return kc;
}

KernelCase grad_case(const LossCase& c, const Tensor& dloss, const Tensor& log_prob,
                     const Tensor& labels, const Tensor* w) {
  std::vector<Tensor> ins{dloss, log_prob, labels};
  if (w) ins.push_back(*w);
  KernelCase kc("SoftmaxCrossEntropyLossGrad", "oxtrain", ins, {{DType::f32, c.scores}});
  if (c.reduction != "mean") kc.set_attr("reduction", Attribute{c.reduction});
  if (c.ignore) kc.set_attr("ignore_index", Attribute{c.ignore_index});
  return kc;
}

}  // namespace

TEST(CudaLoss, SoftmaxCrossEntropyLossMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 200;
  for (const LossCase& c : loss_cases()) {
    Tensor x = logits(c.scores, seed++);
    Tensor labels =
        labels_for(positions_of(c.scores), c.scores[1], c.ignore, c.ignore_index, seed++);
    Tensor w = random_tensor(DType::f32, {c.scores[1]}, seed++, 0.2, 2);
    const Tensor* wp = c.weights ? &w : nullptr;
    for (bool log_prob : {true, false}) {
      KernelCase kc = loss_case(c, x, labels, wp, log_prob);
      EXPECT_TRUE(cuda_matches_cpu(kc, kTolerance))
          << describe(c) << (log_prob ? " with log_prob" : "");
    }
  }
}

TEST(CudaLoss, SoftmaxCrossEntropyLossGradMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 300;
  for (const LossCase& c : loss_cases()) {
    Tensor x = logits(c.scores, seed++);
    Tensor labels =
        labels_for(positions_of(c.scores), c.scores[1], c.ignore, c.ignore_index, seed++);
    Tensor w = random_tensor(DType::f32, {c.scores[1]}, seed++, 0.2, 2);
    const Tensor* wp = c.weights ? &w : nullptr;
    KernelCase fwd = loss_case(c, x, labels, wp, true);
    fwd.run();
    const Shape dloss_shape = c.reduction == "none" ? positions_of(c.scores) : Shape{};
    Tensor dloss = random_tensor(DType::f32, dloss_shape, seed++, 0.5, 2);
    KernelCase grad = grad_case(c, dloss, fwd.output(1), labels, wp);
    EXPECT_TRUE(cuda_matches_cpu(grad, kTolerance)) << describe(c);
  }
}

TEST(CudaLoss, EveryPositionIgnoredGivesNanMeanAndZeroGradient) {
  OXTRAIN_REQUIRE_GPU();
  const LossCase c{{4, 5}, "mean", false, true, 3};
  Tensor x = logits(c.scores, 7);
  Tensor labels = Tensor::from_int64({3, 3, 3, 3}, {4});
  KernelCase kc = loss_case(c, x, labels, nullptr, true);
  EXPECT_TRUE(agree_with_nans(kc, kTolerance));
  EXPECT_TRUE(std::isnan(element(kc.output(0), 0)));  // 0 / 0, as on the CPU
  KernelCase grad = grad_case(c, Tensor::from_float({1.0f}, {}), kc.output(1), labels, nullptr);
  EXPECT_TRUE(agree_with_nans(grad, kTolerance));
  for (int64_t i = 0; i < grad.output(0).numel(); ++i)
    EXPECT_EQ(element(grad.output(0), i), 0.0) << i;
}

TEST(CudaLoss, LabelOutOfRangeGivesNan) {
  OXTRAIN_REQUIRE_GPU();
  // The CPU kernels refuse such a label; the GPU cannot, and marks it with NaN instead.
  Tensor x = logits({4, 5}, 9);
  Tensor labels = Tensor::from_int64({0, 4, 5, 1}, {4});
  for (const char* red : {"mean", "none"}) {
    const LossCase c{{4, 5}, red, false, false, 0};
    KernelCase kc = loss_case(c, x, labels, nullptr, true);
    kc.run(17, runtime::Device::cuda);
    if (c.reduction == "none") {
      EXPECT_TRUE(std::isnan(element(kc.output(0), 2)));
      EXPECT_TRUE(std::isfinite(element(kc.output(0), 1)));
    } else {
      EXPECT_TRUE(std::isnan(element(kc.output(0), 0)));
    }
    Tensor dloss = c.reduction == "none" ? Tensor::from_float({1, 1, 1, 1}, {4})
                                         : Tensor::from_float({1.0f}, {});
    KernelCase grad = grad_case(c, dloss, kc.output(1), labels, nullptr);
    grad.run(17, runtime::Device::cuda);
    EXPECT_TRUE(std::isnan(element(grad.output(0), 2 * 5 + 3))) << red;
    // With reduction none the other rows keep their gradient; with mean the denominator is NaN.
    EXPECT_EQ(std::isfinite(element(grad.output(0), 0)), c.reduction == "none") << red;
  }
}

TEST(CudaLoss, MeanLossIsDeterministic) {
  OXTRAIN_REQUIRE_GPU();
  // 8192 positions summed by one block in a fixed order: the same bits on every run.
  const LossCase c{{8192, 10}, "mean", true, true, 1};
  Tensor x = logits(c.scores, 11);
  Tensor labels = labels_for(positions_of(c.scores), 10, true, 1, 12);
  Tensor w = random_tensor(DType::f32, {10}, 13, 0.2, 2);
  KernelCase kc = loss_case(c, x, labels, &w, false);
  kc.run(17, runtime::Device::cuda);
  const float first = kc.output(0).data<float>()[0];
  for (int run = 0; run < 5; ++run) {
    kc.run(17, runtime::Device::cuda);
    EXPECT_EQ(kc.output(0).data<float>()[0], first) << "run " << run;
  }
}

TEST(CudaLoss, FactoriesRefuseWhatTheyCannotRun) {
  OXTRAIN_REQUIRE_GPU();
  using runtime::Device;
  auto make = [](KernelCase& kc) {
    const runtime::KernelFactory* f =
        runtime::KernelRegistry::global().find(kc.node().domain, kc.node().op_type, Device::cuda);
    ASSERT_NE(f, nullptr);
    (*f)(runtime::KernelInit{kc.node(), 17, Device::cuda});
  };
  auto expect_refusal = [&](KernelCase& kc, const std::string& words) {
    try {
      make(kc);
      ADD_FAILURE() << "no error for " << kc.node().describe();
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(kc.node().describe()), std::string::npos) << msg;
      EXPECT_NE(msg.find(words), std::string::npos) << msg;
    }
  };
  Tensor x64 = random_tensor(DType::f64, {3, 4}, 1);
  KernelCase softmax("Softmax", "", {x64}, {{DType::f64, {3, 4}}});
  expect_refusal(softmax, "float64");
  Tensor x = random_tensor(DType::f32, {3, 4}, 2);
  Tensor labels32(DType::i32, {3});
  KernelCase loss("SoftmaxCrossEntropyLoss", "", {x, labels32}, {{DType::f32, {}}});
  expect_refusal(loss, "int32");
  Tensor five_weights = random_tensor(DType::f32, {5}, 3);  // 4 classes
  KernelCase grad("SoftmaxCrossEntropyLossGrad", "oxtrain",
                  {Tensor(DType::f32, {}), x, Tensor(DType::i64, {3}), five_weights},
                  {{DType::f32, {3, 4}}});
  expect_refusal(grad, "weights");
}
