// CUDA ai.onnx.preview.training.Momentum against its CPU twin (runtime/cpu/optimizer.cc):
// one tensor, a few of odd sizes (1 element, one more than a block's chunk, 5x7x11x13), and
// 150 tensors (more than one launch's table holds), standard and Nesterov, on the first update
// (T = 0: beta taken as 1) and a later one, with and without weight decay. Skipped without a
// GPU.
//
// Tolerance: the update runs in float32 on both, but nvcc fuses a * b + c into one rounding
// (FMA) where the CPU rounds twice; each of the three fused steps moves a result by at most
// about 1 ulp of the operands' magnitude, so 2e-6 of the largest value (16 ulp) bounds it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

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

namespace {

const char* kDomain = "ai.onnx.preview.training";
constexpr double kTolerance = 2e-6;

struct Config {
  float alpha, beta, norm_coefficient;
  std::string mode;
};

// A Momentum node over tensors of the given shapes, with random X, G and V.
KernelCase momentum_case(const Config& cfg, float lr, int64_t t, const std::vector<Shape>& shapes,
                         uint64_t seed) {
  std::vector<Tensor> ins{Tensor::from_float({lr}, {}), Tensor::from_int64({t}, {})};
  for (int group = 0; group < 3; ++group)
    for (const Shape& s : shapes) ins.push_back(random_tensor(DType::f32, s, seed++));
  std::vector<OutputSpec> outs;
  for (int k = 0; k < 2; ++k)
    for (const Shape& s : shapes) outs.push_back({DType::f32, s});
  KernelCase kc("Momentum", kDomain, ins, outs);
  kc.set_attr("alpha", Attribute{cfg.alpha});
  kc.set_attr("beta", Attribute{cfg.beta});
  kc.set_attr("norm_coefficient", Attribute{cfg.norm_coefficient});
  kc.set_attr("mode", Attribute{cfg.mode});
  return kc;
}

const Config kConfigs[] = {
    {0.9f, 1.0f, 1e-4f, "standard"},
    {0.9f, 1.0f, 1e-4f, "nesterov"},
    {0.5f, 0.7f, 0.0f, "standard"},
    {0.5f, 0.7f, 0.3f, "nesterov"},
};

std::string describe(const Config& cfg, int64_t t) {
  return cfg.mode + " alpha " + std::to_string(cfg.alpha) + " beta " + std::to_string(cfg.beta) +
         " decay " + std::to_string(cfg.norm_coefficient) + " T " + std::to_string(t);
}

}  // namespace

TEST(CudaOptimizer, MomentumMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  // 2049 = one more than a block's chunk of 2048 elements.
  const std::vector<std::vector<Shape>> sets = {
      {{5, 7, 11, 13}}, {{1}, {2049}, {5, 7, 11, 13}, {3, 3}, {64, 3, 7, 7}}};
  uint64_t seed = 1;
  for (const auto& shapes : sets)
    for (const Config& cfg : kConfigs)
      for (int64_t t : {0, 3}) {
        KernelCase kc = momentum_case(cfg, 0.1f, t, shapes, seed);
        seed += 100;
        EXPECT_TRUE(cuda_matches_cpu(kc, kTolerance, 1))
            << shapes.size() << " tensors, " << describe(cfg, t);
      }
}

TEST(CudaOptimizer, MomentumOverManyTensors) {
  OXTRAIN_REQUIRE_GPU();
  // 150 tensors (three launches of at most 64), of sizes from 1 to a few chunks.
  std::vector<Shape> shapes;
  for (int64_t i = 0; i < 150; ++i) shapes.push_back({(i * 397) % 5000 + 1});
  for (const Config& cfg : {kConfigs[0], kConfigs[3]}) {
    KernelCase kc = momentum_case(cfg, 0.05f, 7, shapes, 1000);
    EXPECT_TRUE(cuda_matches_cpu(kc, kTolerance, 1)) << describe(cfg, 7);
    // Each tensor moved: a launch that skipped some would leave the zero-filled outputs.
    for (size_t i = 0; i < shapes.size(); ++i)
      EXPECT_NE(element(kc.output(i), 0), 0.0) << "X" << i + 1;
  }
}

TEST(CudaOptimizer, MomentumFirstStepUsesBetaOne) {
  OXTRAIN_REQUIRE_GPU();
  // One element by hand: x 1, g 0.5, v 2, alpha 0.5, beta 0.25, lr 0.1, no decay.
  // T = 0: v_new = 0.5 * 2 + 1 * 0.5 = 1.5, x_new = 1 - 0.15 = 0.85.
  // T = 1: v_new = 0.5 * 2 + 0.25 * 0.5 = 1.125, x_new = 1 - 0.1125 = 0.8875.
  for (int64_t t : {0, 1}) {
    KernelCase kc("Momentum", kDomain,
                  {Tensor::from_float({0.1f}, {}), Tensor::from_int64({t}, {}),
                   Tensor::from_float({1.0f}, {1}), Tensor::from_float({0.5f}, {1}),
                   Tensor::from_float({2.0f}, {1})},
                  {{DType::f32, {1}}, {DType::f32, {1}}});
    kc.set_attr("alpha", Attribute{0.5f});
    kc.set_attr("beta", Attribute{0.25f});
    kc.run(1, runtime::Device::cuda);
    EXPECT_FLOAT_EQ(static_cast<float>(element(kc.output(1), 0)), t == 0 ? 1.5f : 1.125f);
    EXPECT_FLOAT_EQ(static_cast<float>(element(kc.output(0), 0)), t == 0 ? 0.85f : 0.8875f);
  }
}

TEST(CudaOptimizer, MomentumRefusesOtherTypes) {
  OXTRAIN_REQUIRE_GPU();
  auto refusal = [](KernelCase& kc) -> std::string {
    const runtime::KernelFactory* f =
        runtime::KernelRegistry::global().find(kDomain, "Momentum", runtime::Device::cuda);
    if (!f) return "no CUDA Momentum kernel";
    try {
      (*f)(runtime::KernelInit{kc.node(), 1, runtime::Device::cuda});
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  Tensor x64 = random_tensor(DType::f64, {3}, 1);
  KernelCase f64("Momentum", kDomain,
                 {Tensor::from_float({0.1f}, {}), Tensor::from_int64({0}, {}), x64, x64, x64},
                 {{DType::f64, {3}}, {DType::f64, {3}}});
  f64.set_attr("alpha", Attribute{0.9f});
  f64.set_attr("beta", Attribute{1.0f});
  const std::string msg = refusal(f64);
  EXPECT_NE(msg.find("float64"), std::string::npos) << msg;
  EXPECT_NE(msg.find(f64.node().describe()), std::string::npos) << msg;

  Tensor x = random_tensor(DType::f32, {3}, 2);
  Tensor t32(DType::i32, {});
  KernelCase count32("Momentum", kDomain, {Tensor::from_float({0.1f}, {}), t32, x, x, x},
                     {{DType::f32, {3}}, {DType::f32, {3}}});
  count32.set_attr("alpha", Attribute{0.9f});
  count32.set_attr("beta", Attribute{1.0f});
  EXPECT_NE(refusal(count32).find("int64"), std::string::npos) << refusal(count32);
}
