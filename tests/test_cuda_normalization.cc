// CUDA kernels of the normalization family against their CPU twins on odd shapes:
// LayerNormalization and its gradient, ReduceSum and ReduceSumGrad, and the core kernels the
// family's models rely on at every axis (ReduceMean over every combination of axes, Softmax on
// every axis, MatMul on transformer shapes). Every test skips where no GPU is at hand.
//
// Tolerance (cuda_matches_cpu: max |GPU - CPU| over the largest |CPU| value):
// - LayerNormalization, its gradient, the reductions: both devices sum in double and differ
//   only in the order of the sums, so a statistic or a sum rounds to float32 the same or one
//   ulp apart (6e-8 relative); through y = (x - mean) * inv_std * scale + b with |x| <= 4 and
//   std >= 0.5 that stays below ~1e-6 of the largest output. 1e-5 leaves margin and still
//   fails on any wrong element, row or column (off by O(1)).
// - ReduceSumGrad is a copy: bit for bit.
// - MatMul: strict fp32 sums in different orders, see tests/test_cuda_matmul.cc: 1e-5 with
//   data in [0, 1).
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/device_runtime.h"
#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::cuda_matches_cpu;
using test::KernelCase;
using test::random_tensor;

namespace {

constexpr double kTolerance = 1e-5;  // see the file comment

Shape stats_shape(const Shape& x, int64_t axis) {
  if (axis < 0) axis += static_cast<int64_t>(x.size());
  Shape s(x.begin(), x.begin() + axis);
  s.resize(x.size(), 1);
  return s;
}

}  // namespace

TEST(CudaNormalization, LayerNormalizationMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    Shape x;
    int64_t axis;
    Shape scale, bias;  // bias {}: none
  };
  const Case cases[] = {
      {{5, 7, 11, 13}, -1, {13}, {13}},       {{5, 7, 11, 13}, 2, {11, 13}, {11, 13}},
      {{5, 7, 11, 13}, 1, {7, 11, 13}, {}},   {{5, 7, 11, 13}, 0, {5, 7, 11, 13}, {5, 7, 11, 13}},
      {{5, 7, 11, 13}, 2, {13}, {11, 1}},     // Scale and B broadcast over the normalized dims
      {{2, 197, 768}, -1, {768}, {768}},      // ViT
      {{2, 56, 56, 96}, 3, {96}, {96}},       // ConvNeXt, channels last
      {{3, 5000}, -1, {5000}, {5000}},        // rows longer than a block
      {{4, 1}, -1, {1}, {1}},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    std::vector<Tensor> ins{random_tensor(DType::f32, c.x, seed, -4.0, 4.0),
                            random_tensor(DType::f32, c.scale, seed + 1, 0.5, 1.5)};
    if (!c.bias.empty()) ins.push_back(random_tensor(DType::f32, c.bias, seed + 2));
    seed += 3;
    const Shape stats = stats_shape(c.x, c.axis);
    KernelCase kc("LayerNormalization", "", ins, {{DType::f32, c.x}, {DType::f32, stats}, {DType::f32, stats}});
    kc.set_attr("axis", Attribute{c.axis});
    EXPECT_TRUE(cuda_matches_cpu(kc, kTolerance)) << graph::shape_str(c.x) << " axis " << c.axis;
  }
  // Y alone.
  KernelCase y_only("LayerNormalization", "",
                    {random_tensor(DType::f32, {5, 7, 11, 13}, 50), random_tensor(DType::f32, {13}, 51)},
                    {{DType::f32, {5, 7, 11, 13}}});
  EXPECT_TRUE(cuda_matches_cpu(y_only, kTolerance));
}

TEST(CudaNormalization, LayerNormalizationInXsBuffer) {
  OXTRAIN_REQUIRE_GPU();
  using namespace runtime;
  // Y written over X (the planner may share the buffer): the same as the CPU's separate output.
  for (const Shape& xs : {Shape{5, 7, 11, 13}, Shape{3, 5000}}) {
    const Shape ss{xs.back()};
    Tensor x = random_tensor(DType::f32, xs, 60, -4.0, 4.0), scale = random_tensor(DType::f32, ss, 61, 0.5, 1.5);
    KernelCase kc("LayerNormalization", "", {x, scale}, {{DType::f32, xs}});
    kc.run(17);
    const Tensor want = kc.output(0);
    std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(Device::cuda, Precision::fp32);
    auto kernel = (*KernelRegistry::global().find("", "LayerNormalization", Device::cuda))(
        KernelInit{kc.node(), 17, Device::cuda, &rt->context(), Precision::fp32});
    void* px = rt->allocate(static_cast<int64_t>(x.bytes.size()), "X");
    void* ps = rt->allocate(static_cast<int64_t>(scale.bytes.size()), "Scale");
    rt->copy_to_device(px, x.bytes.data(), x.bytes.size());
    rt->copy_to_device(ps, scale.bytes.data(), scale.bytes.size());
    KernelArgs args;
    args.inputs = {TensorView{px, DType::f32, xs}, TensorView{ps, DType::f32, ss}};
    args.outputs = {TensorView{px, DType::f32, xs}};
    args.context = &rt->context();
    kernel->run(args);
    Tensor got(DType::f32, xs);
    rt->copy_to_host(got.bytes.data(), px, got.bytes.size());
    rt->synchronize();
    rt->release(px);
    rt->release(ps);
    EXPECT_LE(test::max_relative_difference(got, want), kTolerance) << graph::shape_str(xs);
  }
}

TEST(CudaNormalization, LayerNormalizationGradMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    Shape x;
    int64_t axis;
    Shape scale;
  };
  const Case cases[] = {
      {{5, 7, 11, 13}, 3, {13}},      {{5, 7, 11, 13}, 2, {11, 13}}, {{5, 7, 11, 13}, 1, {13}},
      {{5, 7, 11, 13}, 0, {7, 11, 13}}, {{2, 197, 768}, 2, {768}},   {{2, 56, 56, 96}, 3, {96}},
      {{20000, 3}, 1, {3}},  // many chunks of rows
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    const Shape stats = stats_shape(c.x, c.axis);
    const Shape normalized(c.x.begin() + c.axis, c.x.end());
    Tensor x = random_tensor(DType::f32, c.x, seed++, -4.0, 4.0);
    Tensor scale = random_tensor(DType::f32, c.scale, seed++, 0.5, 1.5);
    // The statistics from the CPU forward, as training would save them.
    KernelCase fwd("LayerNormalization", "", {x, scale}, {{DType::f32, c.x}, {DType::f32, stats}, {DType::f32, stats}});
    fwd.set_attr("axis", Attribute{c.axis});
    fwd.run(17);
    KernelCase kc("LayerNormalizationGrad", "oxtrain",
                  {random_tensor(DType::f32, c.x, seed++), x, scale, fwd.output(1), fwd.output(2)},
                  {{DType::f32, c.x}, {DType::f32, normalized}, {DType::f32, normalized}});
    kc.set_attr("axis", Attribute{c.axis});
    EXPECT_TRUE(cuda_matches_cpu(kc, kTolerance)) << graph::shape_str(c.x) << " axis " << c.axis;
    // Deterministic: the same bits on every run.
    kc.run(17, runtime::Device::cuda);
    const std::vector<uint8_t> first = kc.output(1).bytes;
    kc.run(17, runtime::Device::cuda);
    EXPECT_EQ(kc.output(1).bytes, first) << graph::shape_str(c.x);
  }
}

TEST(CudaNormalization, ReductionsOverEveryAxisCombination) {
  OXTRAIN_REQUIRE_GPU();
  const Shape xs{5, 7, 11, 13};
  Tensor x = random_tensor(DType::f32, xs, 200);
  for (int64_t mask = 0; mask < 16; ++mask)
    for (int64_t keepdims : {0, 1}) {
      std::vector<int64_t> axes;
      Shape out;
      for (int64_t d = 0; d < 4; ++d) {
        const bool reduced = mask == 0 || (mask >> d & 1);
        if (mask != 0 && reduced) axes.push_back(keepdims ? d : d - 4);
        if (!reduced) out.push_back(xs[d]);
        else if (keepdims) out.push_back(1);
      }
      const std::string label = graph::shape_str(axes) + " keepdims " + std::to_string(keepdims);
      for (const char* op : {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"}) {
        const int64_t input_opset = std::string(op) == "ReduceSum" ? 13 : 18;
        // ReduceMax and ReduceMin: the same order of comparisons on both devices, so exact.
        const bool extreme = std::string(op) == "ReduceMax" || std::string(op) == "ReduceMin";
        const double tolerance = extreme ? 0.0 : kTolerance;
        // Axes as an attribute (the older opsets), then as a constant input.
        KernelCase a(op, "", {x}, {{DType::f32, out}});
        if (!axes.empty()) a.set_attr("axes", Attribute{axes});
        a.set_attr("keepdims", Attribute{keepdims});
        EXPECT_TRUE(cuda_matches_cpu(a, tolerance, 11)) << op << " " << label;
        std::vector<Tensor> ins{x};
        if (!axes.empty()) ins.push_back(Tensor::from_int64(axes, {static_cast<int64_t>(axes.size())}));
        KernelCase b(op, "", ins, {{DType::f32, out}});
        if (!axes.empty()) b.node().input(1)->data = std::make_shared<Tensor>(ins[1]);
        b.set_attr("keepdims", Attribute{keepdims});
        EXPECT_TRUE(cuda_matches_cpu(b, tolerance, input_opset)) << op << " " << label;
      }
      // The gradient of ReduceSum: a copy, bit for bit.
      std::vector<int64_t> sorted;
      for (int64_t d = 0; d < 4; ++d)
        if (mask == 0 || (mask >> d & 1)) sorted.push_back(d);
      KernelCase grad("ReduceSumGrad", "oxtrain", {random_tensor(DType::f32, out, 300 + mask)}, {{DType::f32, xs}});
      grad.set_attr("input_shape", Attribute{std::vector<int64_t>(xs)});
      grad.set_attr("axes", Attribute{sorted});
      grad.set_attr("keepdims", Attribute{keepdims});
      EXPECT_TRUE(cuda_matches_cpu(grad, 0.0)) << "ReduceSumGrad " << label;
    }
}

TEST(CudaNormalization, SoftmaxOnEveryAxis) {
  OXTRAIN_REQUIRE_GPU();
  const Shape xs{5, 7, 11, 13};
  uint64_t seed = 400;
  for (int64_t opset : {11, 13})
    for (int64_t axis = -4; axis < 4; ++axis) {
      KernelCase kc("Softmax", "", {random_tensor(DType::f32, xs, seed++, -4.0, 4.0)}, {{DType::f32, xs}});
      kc.set_attr("axis", Attribute{axis});
      EXPECT_TRUE(cuda_matches_cpu(kc, kTolerance, opset)) << "opset " << opset << " axis " << axis;
      KernelCase grad("SoftmaxGrad", "oxtrain",
                      {random_tensor(DType::f32, xs, seed++), random_tensor(DType::f32, xs, seed++, 0.0, 1.0)},
                      {{DType::f32, xs}});
      grad.set_attr("axis", Attribute{axis});
      grad.set_attr("coerce_2d", Attribute{int64_t{opset < 13}});
      EXPECT_TRUE(cuda_matches_cpu(grad, kTolerance, opset)) << "SoftmaxGrad opset " << opset << " axis " << axis;
    }
}

TEST(CudaNormalization, MatMulOnTransformerShapes) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    Shape a, b, y;
  };
  const Case cases[] = {{{2, 12, 197, 64}, {2, 12, 64, 197}, {2, 12, 197, 197}},  // ViT scores
                        {{2, 12, 197, 197}, {2, 12, 197, 64}, {2, 12, 197, 64}},  // ViT context
                        {{2, 7, 7, 96}, {96, 384}, {2, 7, 7, 384}},               // ConvNeXt MLP
                        {{5, 7, 11, 13}, {13, 3}, {5, 7, 11, 3}},
                        {{5, 1, 11, 13}, {7, 13, 3}, {5, 7, 11, 3}},
                        {{13}, {5, 7, 13, 3}, {5, 7, 3}}};
  uint64_t seed = 500;
  for (const Case& c : cases) {
    KernelCase kc("MatMul", "", {random_tensor(DType::f32, c.a, seed, 0.0), random_tensor(DType::f32, c.b, seed + 1, 0.0)},
                  {{DType::f32, c.y}});
    seed += 2;
    EXPECT_TRUE(cuda_matches_cpu(kc, kTolerance)) << graph::shape_str(c.a) << " x " << graph::shape_str(c.b);
  }
}

TEST(CudaNormalization, FactoriesRefuseWhatTheyCannotRun) {
  if (!runtime::KernelRegistry::global().find("", "LayerNormalization", runtime::Device::cuda))
    GTEST_SKIP() << "this build has no CUDA runtime";
  // float64 and a Scale varying along the dims before axis are refused when compiled.
  KernelCase f64("LayerNormalization", "", {random_tensor(DType::f64, {2, 3}, 1), random_tensor(DType::f64, {3}, 2)},
                 {{DType::f64, {2, 3}}});
  KernelCase lead("LayerNormalization", "", {random_tensor(DType::f32, {2, 3}, 1), random_tensor(DType::f32, {2, 1}, 2)},
                  {{DType::f32, {2, 3}}});
  lead.set_attr("axis", Attribute{int64_t{1}});
  KernelCase fed("ReduceSum", "", {random_tensor(DType::f32, {2, 3}, 3), Tensor::from_int64({0}, {1})},
                 {{DType::f32, {1, 3}}});
  for (auto [kc, op, words] : {std::tuple{&f64, "LayerNormalization", "float32"},
                               std::tuple{&lead, "LayerNormalization", "before axis"},
                               std::tuple{&fed, "ReduceSum", "constant"}}) {
    const runtime::KernelFactory* f = runtime::KernelRegistry::global().find("", op, runtime::Device::cuda);
    try {
      (*f)(runtime::KernelInit{kc->node(), 17, runtime::Device::cuda, nullptr, runtime::Precision::fp32});
      ADD_FAILURE() << "no error: " << words;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  }
}
