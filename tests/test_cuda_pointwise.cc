// CUDA kernels of the pointwise family against their CPU twins on odd shapes (5x7x11x13 and
// broadcasts of it). Ops made of exact IEEE operations (Clip, Abs, Neg, Sign, Floor, Ceil,
// Max/Min and their gradient, the comparisons, logic, Where, Cast, Mod, the clip and
// hard-sigmoid/swish gradients) must agree bit for bit; ops that call the math library
// (exp, log, tanh, erf, pow, sqrt) within kMathTolerance. Every test skips where no GPU is at
// hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
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
using test::KernelCase;
using test::random_tensor;

namespace {

// CUDA's expf, logf, tanhf, erff and powf are within 2 ulps (CUDA C Programming Guide,
// "Mathematical Functions"), glibc's within 1-2: the two differ by a few ulps of float32
// (about 1e-7 each) relative to the element; 4e-6 of the largest output leaves room for a
// composite (Gelu's gradient) and still fails on a wrong formula.
constexpr double kMathTolerance = 4e-6;

const Shape kOdd{5, 7, 11, 13};


void make_constant(KernelCase& kc, size_t i) {
  graph::Value* v = kc.node().input(i);
  v->data = std::make_shared<Tensor>(kc.input(i));
  v->role = graph::Role::Constant;
}

Tensor scalar_f32(float v) { return Tensor::from_float({v}, {}); }

Tensor bools(Shape s, uint64_t seed) {
  Tensor r = random_tensor(DType::f32, s, seed);
  Tensor t(DType::boolean, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<uint8_t>()[i] = r.data<float>()[i] > 0;
  return t;
}

}  // namespace

TEST(CudaPointwise, UnaryOpsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  struct U {
    const char* op;
    double lo, hi;
    bool exact;
    int64_t opset;
    std::map<std::string, Attribute> attrs;
  };
  const U cases[] = {
      {"Sigmoid", -8, 8, false, 17, {}},     {"Tanh", -4, 4, false, 17, {}},
      {"Erf", -3, 3, false, 17, {}},         {"Sqrt", 0, 9, false, 17, {}},
      {"Exp", -5, 5, false, 17, {}},         {"Log", 0.01, 9, false, 17, {}},
      {"Reciprocal", 0.5, 3, true, 17, {}},  {"Abs", -3, 3, true, 17, {}},
      {"Sign", -3, 3, true, 17, {}},         {"Floor", -3, 3, true, 17, {}},
      {"Ceil", -3, 3, true, 17, {}},         {"HardSwish", -5, 5, false, 17, {}},
      {"HardSigmoid", -5, 5, false, 17, {{"alpha", Attribute{1.0f / 6}}, {"beta", Attribute{0.5f}}}},
      {"Gelu", -5, 5, false, 20, {}},
      {"Gelu", -5, 5, false, 20, {{"approximate", Attribute{std::string("tanh")}}}},
      {"Clip", -2, 8, true, 9, {{"min", Attribute{0.0f}}, {"max", Attribute{6.0f}}}},
  };
  uint64_t seed = 1;
  for (const U& u : cases) {
    KernelCase c(u.op, "", {random_tensor(DType::f32, kOdd, seed++, u.lo, u.hi)}, {{DType::f32, kOdd}});
    for (const auto& [k, v] : u.attrs) c.set_attr(k, v);
    if (u.exact) EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c, u.opset)) << u.op;
    else EXPECT_TRUE(cuda_matches_cpu(c, kMathTolerance, u.opset)) << u.op;
  }
  // Clip with constant inputs (opset 13).
  KernelCase clip("Clip", "", {random_tensor(DType::f32, kOdd, 50, -2, 8), scalar_f32(0), scalar_f32(6)},
                  {{DType::f32, kOdd}});
  make_constant(clip, 1);
  make_constant(clip, 2);
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(clip, 13));
  // Only a max (torch.clamp(x, max=...)): the omitted min is no bound; a bound shaped [1].
  KernelCase clamp_max("Clip", "", {random_tensor(DType::f32, kOdd, 51, -2, 8), Tensor(), Tensor::from_float({3}, {1})},
                       {{DType::f32, kOdd}});
  make_constant(clamp_max, 2);
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(clamp_max, 13));
}

TEST(CudaPointwise, GradientOpsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  struct G {
    const char* op;
    double lo, hi;
    bool exact;
    std::map<std::string, Attribute> attrs;
  };
  const G cases[] = {
      {"SigmoidGrad", 0, 1, true, {}},
      {"TanhGrad", -1, 1, false, {}},  // 1 - y*y may contract to an FMA
      {"SqrtGrad", 0.1, 3, true, {}},
      {"ErfGrad", -3, 3, false, {}},
      {"GeluGrad", -5, 5, false, {}},
      {"GeluGrad", -5, 5, false, {{"approximate", Attribute{std::string("tanh")}}}},
      {"HardSwishGrad", -5, 5, false, {}},
      {"HardSigmoidGrad", -5, 5, false, {{"alpha", Attribute{1.0f / 6}}, {"beta", Attribute{0.5f}}}},
  };
  uint64_t seed = 100;
  for (const G& g : cases) {
    KernelCase c(g.op, "oxtrain",
                 {random_tensor(DType::f32, kOdd, seed, -2, 2), random_tensor(DType::f32, kOdd, seed + 1, g.lo, g.hi)},
                 {{DType::f32, kOdd}});
    seed += 2;
    for (const auto& [k, v] : g.attrs) c.set_attr(k, v);
    if (g.exact) EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c, 1)) << g.op;
    else EXPECT_TRUE(cuda_matches_cpu(c, kMathTolerance, 1)) << g.op;
  }
  KernelCase clip("ClipGrad", "oxtrain",
                  {random_tensor(DType::f32, kOdd, 120), random_tensor(DType::f32, kOdd, 121, -2, 8), scalar_f32(0),
                   scalar_f32(6)},
                  {{DType::f32, kOdd}});
  make_constant(clip, 2);
  make_constant(clip, 3);
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(clip, 1));
}

// float16 and bfloat16: widened on load, computed in float32, rounded once on store, as the
// CPU's emulation of half: exact ops give its bits. Where CUDA's math library and the CPU's
// libm differ by a few float32 ulps, rounding to half mostly hides it, but a value near a
// rounding boundary may still round one half ulp apart: the bound is that ulp of the largest
// output (a wrong formula is off by far more).
TEST(CudaPointwise, HalfActivationsAndGradientsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  struct U {
    const char* op;
    const char* domain;
    double lo, hi;
    bool exact;
    int inputs;
    std::map<std::string, Attribute> attrs;
  };
  const U cases[] = {
      {"Sigmoid", "", -8, 8, false, 1, {}},
      {"Tanh", "", -4, 4, false, 1, {}},
      {"Erf", "", -3, 3, false, 1, {}},
      {"Exp", "", -5, 5, false, 1, {}},
      {"Gelu", "", -5, 5, false, 1, {}},
      {"HardSwish", "", -5, 5, false, 1, {}},
      {"HardSigmoid", "", -5, 5, false, 1, {{"alpha", Attribute{1.0f / 6}}, {"beta", Attribute{0.5f}}}},
      {"Abs", "", -3, 3, true, 1, {}},
      {"Max", "", -3, 3, true, 3, {}},
      {"Min", "", -3, 3, true, 2, {}},
      {"SigmoidGrad", "oxtrain", 0, 1, true, 2, {}},
      {"TanhGrad", "oxtrain", -1, 1, false, 2, {}},
      {"GeluGrad", "oxtrain", -5, 5, false, 2, {}},
      {"HardSwishGrad", "oxtrain", -5, 5, false, 2, {}},
      {"HardSigmoidGrad", "oxtrain", -5, 5, false, 2, {{"alpha", Attribute{1.0f / 6}}, {"beta", Attribute{0.5f}}}},
  };
  for (DType h : {DType::f16, DType::bf16}) {
    SCOPED_TRACE(graph::dtype_name(h));
    const double ulp = h == DType::bf16 ? 1.0 / 128 : 1.0 / 1024;
    uint64_t seed = 300;
    for (const U& u : cases) {
      // A gradient op's dY in [-2, 2), then the value it saved in [lo, hi).
      const bool gradient = *u.domain != '\0';
      std::vector<Tensor> ins;
      for (int i = 0; i < u.inputs; ++i)
        ins.push_back(gradient && i == 0 ? random_tensor(h, kOdd, ++seed, -2, 2)
                                         : random_tensor(h, kOdd, ++seed, u.lo, u.hi));
      KernelCase c(u.op, u.domain, ins, {{h, kOdd}});
      for (const auto& [k, v] : u.attrs) c.set_attr(k, v);
      const int64_t opset = gradient ? 1 : u.op == std::string("Gelu") ? 20 : 17;
      if (u.exact) EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c, opset)) << u.op;
      else EXPECT_TRUE(cuda_matches_cpu(c, ulp, opset)) << u.op;
    }
    // MobileNet's ReLU6: Clip with constant bounds of float32 (as exported) or of the half type.
    for (DType bound : {DType::f32, h}) {
      Tensor lo = random_tensor(bound, {}, 1), hi = random_tensor(bound, {}, 2);
      test::set_element(lo, 0, 0.0);
      test::set_element(hi, 0, 6.0);
      KernelCase clip("Clip", "", {random_tensor(h, kOdd, ++seed, -2, 8), lo, hi}, {{h, kOdd}});
      make_constant(clip, 1);
      make_constant(clip, 2);
      EXPECT_TRUE(test::cuda_bitwise_matches_cpu(clip, 13)) << "Clip, bounds " << graph::dtype_name(bound);
      KernelCase grad("ClipGrad", "oxtrain",
                      {random_tensor(h, kOdd, ++seed), random_tensor(h, kOdd, ++seed, -2, 8), lo, hi}, {{h, kOdd}});
      make_constant(grad, 2);
      make_constant(grad, 3);
      EXPECT_TRUE(test::cuda_bitwise_matches_cpu(grad, 1)) << "ClipGrad, bounds " << graph::dtype_name(bound);
    }
  }
}

TEST(CudaPointwise, BroadcastingBinaryOpsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  const Shape a{5, 1, 11, 13}, b{7, 1, 1};
  {
    KernelCase c("Pow", "", {random_tensor(DType::f32, a, 1, 0.1, 3), random_tensor(DType::f32, b, 2, -2, 2)},
                 {{DType::f32, kOdd}});
    EXPECT_TRUE(cuda_matches_cpu(c, kMathTolerance));
  }
  {
    KernelCase c("Pow", "", {random_tensor(DType::f32, kOdd, 3, -3, 3), Tensor::from_int64({2}, {})},
                 {{DType::f32, kOdd}});
    make_constant(c, 1);
    EXPECT_TRUE(cuda_matches_cpu(c, kMathTolerance));
  }
  // A trained one-element exponent (GeM pooling's p): its data is the initial value, the
  // buffer holds the current one, and both kernels must read the buffer.
  {
    KernelCase c("Pow", "", {random_tensor(DType::f32, kOdd, 31, 0.1, 3), Tensor::from_float({3}, {1})},
                 {{DType::f32, kOdd}});
    graph::Value* e = c.node().input(1);
    e->data = std::make_shared<Tensor>(Tensor::from_float({2}, {1}));
    e->role = graph::Role::Parameter;
    EXPECT_TRUE(cuda_matches_cpu(c, kMathTolerance));
    for (int64_t wrt : {0, 1}) {
      KernelCase g("PowGrad", "oxtrain",
                   {random_tensor(DType::f32, kOdd, 32), random_tensor(DType::f32, kOdd, 33, 0.1, 3),
                    Tensor::from_float({3}, {1})},
                   {{DType::f32, kOdd}});
      g.set_attr("wrt", Attribute{wrt});
      graph::Value* ge = g.node().input(2);
      ge->data = std::make_shared<Tensor>(Tensor::from_float({2}, {1}));
      ge->role = graph::Role::Parameter;
      EXPECT_TRUE(cuda_matches_cpu(g, kMathTolerance, 1)) << "trained exponent, wrt " << wrt;
    }
  }
  for (int64_t wrt : {0, 1}) {
    KernelCase c("PowGrad", "oxtrain",
                 {random_tensor(DType::f32, kOdd, 4), random_tensor(DType::f32, a, 5, 0.1, 3),
                  random_tensor(DType::f32, b, 6, -2, 2)},
                 {{DType::f32, kOdd}});
    c.set_attr("wrt", Attribute{wrt});
    EXPECT_TRUE(cuda_matches_cpu(c, kMathTolerance, 1)) << "wrt " << wrt;
  }
  for (int64_t fmod : {0, 1}) {
    KernelCase f("Mod", "", {random_tensor(DType::f32, a, 7, -9, 9), random_tensor(DType::f32, b, 8, 0.5, 3)},
                 {{DType::f32, kOdd}});
    f.set_attr("fmod", Attribute{fmod});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(f)) << "float fmod " << fmod;
    Tensor ia(DType::i64, a), ib(DType::i64, b);
    for (int64_t i = 0; i < ia.numel(); ++i) ia.data<int64_t>()[i] = (i * 37) % 41 - 20;
    for (int64_t i = 0; i < ib.numel(); ++i) ib.data<int64_t>()[i] = (i % 2 ? -1 : 1) * (i + 2);
    KernelCase m("Mod", "", {ia, ib}, {{DType::i64, kOdd}});
    m.set_attr("fmod", Attribute{fmod});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(m)) << "int64 fmod " << fmod;
  }
  for (const char* op : {"Max", "Min"}) {
    KernelCase c(op, "", {random_tensor(DType::f32, a, 9), random_tensor(DType::f32, b, 10), random_tensor(DType::f32, kOdd, 11)},
                 {{DType::f32, kOdd}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c)) << op;
  }
  for (const char* mode : {"max", "min"}) {
    // Values on a coarse grid so that ties happen.
    auto grid = [](Shape s, uint64_t seed) {
      Tensor t = random_tensor(DType::f32, s, seed, -3, 3);
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = std::round(t.data<float>()[i]);
      return t;
    };
    KernelCase c("MaxMinGrad", "oxtrain", {random_tensor(DType::f32, kOdd, 12), grid(a, 13), grid(b, 14), grid(kOdd, 15)},
                 {{DType::f32, kOdd}, {DType::f32, kOdd}, {DType::f32, kOdd}});
    c.set_attr("mode", Attribute{std::string(mode)});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c, 1)) << mode;
  }
}

TEST(CudaPointwise, ComparisonsLogicWhereCastMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  const Shape a{5, 1, 11, 13}, b{7, 1, 1};
  Tensor fa = random_tensor(DType::f32, a, 1, -2, 2), fb = random_tensor(DType::f32, b, 2, -2, 2);
  for (int64_t i = 0; i < fb.numel(); i += 2) fa.data<float>()[i] = fb.data<float>()[i];  // some equal
  Tensor ia(DType::i64, a), ib(DType::i64, b);
  for (int64_t i = 0; i < ia.numel(); ++i) ia.data<int64_t>()[i] = i % 5;
  for (int64_t i = 0; i < ib.numel(); ++i) ib.data<int64_t>()[i] = i % 4;
  for (const char* op : {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}) {
    KernelCase f(op, "", {fa, fb}, {{DType::boolean, kOdd}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(f)) << op << " float32";
    KernelCase i(op, "", {ia, ib}, {{DType::boolean, kOdd}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(i)) << op << " int64";
  }
  for (const char* op : {"And", "Or", "Xor"}) {
    KernelCase c(op, "", {bools(a, 3), bools(b, 4)}, {{DType::boolean, kOdd}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c)) << op;
  }
  KernelCase n("Not", "", {bools(kOdd, 5)}, {{DType::boolean, kOdd}});
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(n));
  KernelCase wf("Where", "", {bools(a, 6), random_tensor(DType::f32, b, 7), random_tensor(DType::f32, kOdd, 8)},
                {{DType::f32, kOdd}});
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(wf));
  KernelCase wi("Where", "", {bools(b, 9), ia, ib}, {{DType::i64, kOdd}});
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(wi));
  // Cast: float32 with NaN, out-of-range and fractional values to every type, and back.
  Tensor f = random_tensor(DType::f32, kOdd, 10, -300, 300);
  f.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  f.data<float>()[1] = 3e10f;
  f.data<float>()[2] = -3e10f;
  for (DType to : {DType::i64, DType::i32, DType::i8, DType::u8, DType::boolean, DType::f32}) {
    KernelCase c("Cast", "", {f}, {{to, kOdd}});
    c.set_attr("to", Attribute{int64_t{graph::dtype_to_onnx(to)}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c)) << "float32 to " << graph::dtype_name(to);
  }
  for (const Tensor& src : {ia, bools(a, 11)}) {
    KernelCase c("Cast", "", {src}, {{DType::f32, a}});
    c.set_attr("to", Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(c)) << graph::dtype_name(src.dtype) << " to float32";
  }
}
