// CPU kernels of the pointwise family against values computed here (closed forms in long
// double, naive broadcasting loops, PyTorch's values at the kinks written out), NaN-aware;
// folding of constant inputs at import; errors for bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::close;
using test::element;
using test::kFloatTypes;
using test::KernelCase;
using test::random_tensor;
using test::tolerance;
using test::values;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

Tensor filled(DType dt, Shape shape, const std::vector<double>& v) {
  Tensor t(dt, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) {
    double x = v[static_cast<size_t>(i) % v.size()];
    switch (dt) {
      case DType::f32: t.data<float>()[i] = static_cast<float>(x); break;
      case DType::f64: t.data<double>()[i] = x; break;
      case DType::i64: t.data<int64_t>()[i] = static_cast<int64_t>(x); break;
      case DType::i32: t.data<int32_t>()[i] = static_cast<int32_t>(x); break;
      case DType::i16: t.data<int16_t>()[i] = static_cast<int16_t>(x); break;
      case DType::u16: t.data<uint16_t>()[i] = static_cast<uint16_t>(x); break;
      case DType::u32: t.data<uint32_t>()[i] = static_cast<uint32_t>(x); break;
      case DType::u64: t.data<uint64_t>()[i] = static_cast<uint64_t>(x); break;
      default: t.data<uint8_t>()[i] = static_cast<uint8_t>(x); break;
    }
  }
  return t;
}

// Any element as double (ints and bools too).
double any_element(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32:
    case DType::f64: return element(t, i);
    case DType::i64: return static_cast<double>(t.data<int64_t>()[i]);
    case DType::i32: return t.data<int32_t>()[i];
    case DType::i8: return t.data<int8_t>()[i];
    case DType::i16: return t.data<int16_t>()[i];
    case DType::u16: return t.data<uint16_t>()[i];
    case DType::u32: return t.data<uint32_t>()[i];
    case DType::u64: return static_cast<double>(t.data<uint64_t>()[i]);
    default: return t.data<uint8_t>()[i];
  }
}

// Exact comparison, NaN equal to NaN.
::testing::AssertionResult same(const Tensor& got, const std::vector<double>& want) {
  if (got.numel() != static_cast<int64_t>(want.size()))
    return ::testing::AssertionFailure() << "size " << got.numel() << " vs " << want.size();
  for (int64_t i = 0; i < got.numel(); ++i) {
    double g = any_element(got, i), w = want[static_cast<size_t>(i)];
    if (!(g == w || (std::isnan(g) && std::isnan(w))))
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", want " << w;
  }
  return ::testing::AssertionSuccess();
}

// Makes input i of the case a constant (an initializer), as the compiled graph has it.
void make_constant(KernelCase& kc, size_t i) {
  graph::Value* v = kc.node().input(i);
  v->data = std::make_shared<Tensor>(kc.input(i));
  v->role = graph::Role::Constant;
}

Tensor run1(const char* op, std::vector<Tensor> ins, DType out_type, Shape out_shape,
            std::map<std::string, Attribute> attrs = {}, int64_t opset = 17,
            const std::string& domain = "", std::vector<size_t> constants = {}) {
  KernelCase kc(op, domain, std::move(ins), {{out_type, std::move(out_shape)}});
  for (auto& [k, v] : attrs) kc.set_attr(k, v);
  for (size_t i : constants) make_constant(kc, i);
  kc.run(opset);
  return kc.output(0);
}

// Unary float op checked against a long-double reference on values spanning its domain.
void check_unary(const char* op, std::function<long double(long double)> ref, double lo, double hi,
                 std::map<std::string, Attribute> attrs = {}, int64_t opset = 17) {
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, {5, 7, 3}, 11, lo, hi);
    Tensor y = run1(op, {x}, dt, x.shape, attrs, opset);
    std::vector<double> want;
    for (int64_t i = 0; i < x.numel(); ++i) want.push_back(static_cast<double>(ref(element(x, i))));
    EXPECT_TRUE(close(y, want, dt == DType::f32 ? 4e-6 : 1e-13)) << op << " " << graph::dtype_name(dt);
  }
}

long double gelu_ref(long double x) { return 0.5L * x * (1 + std::erf(x / std::sqrt(2.0L))); }
long double gelu_tanh_ref(long double x) {
  long double k = std::sqrt(2.0L / 3.14159265358979323846L);
  return 0.5L * x * (1 + std::tanh(k * (x + 0.044715L * x * x * x)));
}

}  // namespace

TEST(CpuPointwise, UnaryMathAgainstClosedForms) {
  check_unary("Sigmoid", [](long double x) { return 1 / (1 + std::exp(-x)); }, -30, 30);
  check_unary("Tanh", [](long double x) { return std::tanh(x); }, -5, 5);
  check_unary("Erf", [](long double x) { return std::erf(x); }, -3, 3);
  check_unary("Sqrt", [](long double x) { return std::sqrt(x); }, 0, 100);
  check_unary("Exp", [](long double x) { return std::exp(x); }, -10, 10);
  check_unary("Log", [](long double x) { return std::log(x); }, 1e-3, 100);
  check_unary("Reciprocal", [](long double x) { return 1 / x; }, 0.5, 4);
  check_unary("Abs", [](long double x) { return std::fabs(x); }, -4, 4);
  check_unary("Neg", [](long double x) { return -x; }, -4, 4);
  check_unary("Floor", [](long double x) { return std::floor(x); }, -4, 4);
  check_unary("Ceil", [](long double x) { return std::ceil(x); }, -4, 4);
  check_unary("Sign", [](long double x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }, -4, 4);
  check_unary("HardSwish", [](long double x) { return x * std::min<long double>(std::max<long double>(x + 3, 0), 6) / 6; }, -5, 5);
  check_unary("HardSigmoid", [](long double x) { return std::min<long double>(std::max<long double>(static_cast<long double>(0.2f) * x + 0.5L, 0), 1); },
              -4, 4);
  check_unary("Gelu", gelu_ref, -5, 5, {}, 20);
  check_unary("Gelu", gelu_tanh_ref, -5, 5, {{"approximate", Attribute{std::string("tanh")}}}, 20);
}

TEST(CpuPointwise, SpecialValues) {
  for (DType dt : kFloatTypes) {
    Tensor x = filled(dt, {6}, {kNaN, kInf, -kInf, 0.0, -0.0, -800.0});
    EXPECT_TRUE(same(run1("Sigmoid", {x}, dt, {6}), {kNaN, 1, 0, 0.5, 0.5, 0}));
    EXPECT_TRUE(same(run1("Abs", {x}, dt, {6}), {kNaN, kInf, kInf, 0, 0, 800}));
    EXPECT_TRUE(same(run1("Sign", {x}, dt, {6}), {kNaN, 1, -1, 0, 0, -1}));
    EXPECT_TRUE(same(run1("HardSwish", {x}, dt, {6}), {kNaN, kInf, kNaN, 0, 0, 0}));
    EXPECT_TRUE(same(run1("Sqrt", {x}, dt, {6}), {kNaN, kInf, kNaN, 0, 0, kNaN}));
    EXPECT_TRUE(same(run1("Exp", {x}, dt, {6}), {kNaN, kInf, 0, 1, 1, 0}));
  }
  // Abs, Neg and Sign on integers.
  Tensor xi = filled(DType::i64, {4}, {-5, 0, 7, -1});
  EXPECT_TRUE(same(run1("Abs", {xi}, DType::i64, {4}), {5, 0, 7, 1}));
  EXPECT_TRUE(same(run1("Neg", {xi}, DType::i64, {4}), {5, 0, -7, 1}));
  EXPECT_TRUE(same(run1("Sign", {filled(DType::i32, {4}, {-5, 0, 7, -1})}, DType::i32, {4}), {-1, 0, 1, -1}));
}

TEST(CpuPointwise, ClipAttributesAndInputs) {
  for (DType dt : kFloatTypes) {
    Tensor x = filled(dt, {7}, {-1, 0, 3, 6, 7, kNaN, -kInf});
    // Opset 9: attributes.
    EXPECT_TRUE(same(run1("Clip", {x}, dt, {7}, {{"min", Attribute{0.0f}}, {"max", Attribute{6.0f}}}, 9),
                     {0, 0, 3, 6, 6, kNaN, 0}));
    // Opset 13: constant inputs; only max; min > max gives max everywhere.
    Tensor lo = filled(dt, {}, {0}), hi = filled(dt, {}, {6});
    EXPECT_TRUE(same(run1("Clip", {x, lo, hi}, dt, {7}, {}, 13, "", {1, 2}), {0, 0, 3, 6, 6, kNaN, 0}));
    EXPECT_TRUE(same(run1("Clip", {x, Tensor(), hi}, dt, {7}, {}, 13, "", {2}), {-1, 0, 3, 6, 6, kNaN, -kInf}));
    EXPECT_TRUE(same(run1("Clip", {x, filled(dt, {}, {5}), filled(dt, {}, {2})}, dt, {7}, {}, 13, "", {1, 2}),
                     {2, 2, 2, 2, 2, kNaN, 2}));
    EXPECT_TRUE(same(run1("Clip", {x}, dt, {7}, {}, 13), {-1, 0, 3, 6, 7, kNaN, -kInf}));
  }
  // Integers: the default (infinite) bounds are the type's ends, the largest int64 and uint64
  // included; a bound beyond the type's range is its end.
  Tensor big(DType::u64, {2});
  big.data<uint64_t>()[0] = UINT64_MAX;
  Tensor clipped = run1("Clip", {big}, DType::u64, {2}, {}, 13);
  EXPECT_EQ(clipped.data<uint64_t>()[0], UINT64_MAX);
  EXPECT_EQ(clipped.data<uint64_t>()[1], 0u);
  Tensor ends = Tensor::from_int64({INT64_MAX, INT64_MIN}, {2});
  EXPECT_EQ(run1("Clip", {ends}, DType::i64, {2}, {}, 13).to_int64(), (std::vector<int64_t>{INT64_MAX, INT64_MIN}));
  EXPECT_TRUE(same(run1("Clip", {filled(DType::u16, {3}, {7, 400, 65535}), filled(DType::u16, {}, {10}), filled(DType::u16, {}, {300})},
                        DType::u16, {3}, {}, 13, "", {1, 2}),
                   {10, 300, 300}));
  // A bound computed at run time is refused when the kernel is made.
  KernelCase kc("Clip", "", {filled(DType::f32, {3}, {1}), filled(DType::f32, {}, {0}), Tensor()},
                {{DType::f32, {3}}});
  try {
    kc.run(13);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be a constant"), std::string::npos) << e.what();
  }
}

TEST(CpuPointwise, GradientsAtKinksFollowPyTorch) {
  // Values at and around the kinks; PyTorch 2.15's gradients with dY = 1 (relu6/clamp(0, 6),
  // hardsigmoid, hardswish: F.*(x).sum().backward()).
  for (DType dt : kFloatTypes) {
    Tensor x = filled(dt, {5}, {-1, 0, 3, 6, 7});
    Tensor ones = filled(dt, {5}, {1});
    EXPECT_TRUE(same(run1("ClipGrad", {ones, x, filled(dt, {}, {0}), filled(dt, {}, {6})}, dt, {5}, {}, 1,
                          "oxtrain", {2, 3}),
                     {0, 0, 1, 0, 0}));
    EXPECT_TRUE(same(run1("ClipGrad", {ones, x, filled(dt, {}, {0}), Tensor()}, dt, {5}, {}, 1, "oxtrain", {2}),
                     {0, 0, 1, 1, 1}));
    Tensor h = filled(dt, {5}, {-4, -3, 0, 3, 4});
    Tensor got = run1("HardSigmoidGrad", {ones, h}, dt, {5},
                      {{"alpha", Attribute{static_cast<float>(1.0 / 6)}}, {"beta", Attribute{0.5f}}}, 1, "oxtrain");
    EXPECT_TRUE(close(got, {0, 0, static_cast<float>(1.0 / 6), 0, 0}, tolerance(dt)));
    EXPECT_TRUE(same(run1("HardSwishGrad", {filled(dt, {7}, {1}), filled(dt, {7}, {-4, -3, -1.5, 0, 1.5, 3, 4})}, dt, {7}, {}, 1,
                          "oxtrain"),
                     {0, 0, 0, 0.5, 1, 1, 1}));
    // Sigmoid, Tanh, Sqrt from the forward output; dY scales.
    Tensor dy = filled(dt, {3}, {2, -1, 0.5});
    Tensor y = filled(dt, {3}, {0.25, 0.5, 0.75});
    EXPECT_TRUE(close(run1("SigmoidGrad", {dy, y}, dt, {3}, {}, 1, "oxtrain"), {2 * 0.1875, -0.25, 0.5 * 0.1875},
                      tolerance(dt)));
    EXPECT_TRUE(close(run1("TanhGrad", {dy, y}, dt, {3}, {}, 1, "oxtrain"), {2 * 0.9375, -0.75, 0.5 * 0.4375},
                      tolerance(dt)));
    EXPECT_TRUE(close(run1("SqrtGrad", {dy, y}, dt, {3}, {}, 1, "oxtrain"), {4, -1, 1.0 / 3}, tolerance(dt)));
  }
}

TEST(CpuPointwise, ErfAndGeluGradientsMatchDerivatives) {
  // Against central differences of the long-double forms.
  auto derivative = [](long double (*f)(long double), long double x) {
    const long double h = 1e-6L;
    return static_cast<double>((f(x + h) - f(x - h)) / (2 * h));
  };
  auto erf_ld = [](long double x) { return std::erf(x); };
  Tensor x = random_tensor(DType::f64, {40}, 5, -4, 4);
  Tensor dy = random_tensor(DType::f64, {40}, 6, -2, 2);
  struct Case {
    const char* op;
    long double (*f)(long double);
    std::map<std::string, Attribute> attrs;
  };
  const Case cases[] = {{"ErfGrad", erf_ld, {}},
                        {"GeluGrad", gelu_ref, {}},
                        {"GeluGrad", gelu_tanh_ref, {{"approximate", Attribute{std::string("tanh")}}}}};
  for (const Case& c : cases) {
    Tensor got = run1(c.op, {dy, x}, DType::f64, {40}, c.attrs, 1, "oxtrain");
    std::vector<double> want;
    for (int64_t i = 0; i < 40; ++i) want.push_back(element(dy, i) * derivative(c.f, element(x, i)));
    EXPECT_TRUE(close(got, want, 1e-8)) << c.op;
  }
}

TEST(CpuPointwise, PowBroadcastingAndGradients) {
  for (DType dt : kFloatTypes) {
    Tensor a = filled(dt, {2, 3}, {0.5, 2, 3, 0, 4, 9});
    Tensor b = filled(dt, {3}, {2, 0.5, -1});
    EXPECT_TRUE(close(run1("Pow", {a, b}, dt, {2, 3}), {0.25, std::sqrt(2.0), 1.0 / 3, 0, 2, 1.0 / 9}, tolerance(dt)));
    // A constant int64 exponent (opset 12+).
    EXPECT_TRUE(close(run1("Pow", {a, filled(DType::i64, {}, {2})}, dt, {2, 3}, {}, 13, "", {1}),
                      {0.25, 4, 9, 0, 16, 81}, tolerance(dt)));
    // Gradients: base dY * b * a^(b-1), 0 where b == 0; exponent dY a^b log a, 0 at a == 0, b >= 0.
    Tensor base = filled(dt, {4}, {0, 0, 2, 3});
    Tensor exps = filled(dt, {4}, {0, 2, 0, 2});
    Tensor ones = filled(dt, {4}, {1});
    EXPECT_TRUE(same(run1("PowGrad", {ones, base, exps}, dt, {4}, {{"wrt", Attribute{int64_t{0}}}}, 1, "oxtrain"),
                     {0, 0, 0, 6}));
    EXPECT_TRUE(close(run1("PowGrad", {ones, base, exps}, dt, {4}, {{"wrt", Attribute{int64_t{1}}}}, 1, "oxtrain"),
                      {0, 0, std::log(2.0), 9 * std::log(3.0)}, tolerance(dt)));
  }
}

TEST(CpuPointwise, ComparisonsWithBroadcasting) {
  const Shape as{2, 1, 3}, bs{4, 1};
  for (DType dt : {DType::f32, DType::f64, DType::i64, DType::i32}) {
    Tensor a = filled(dt, as, {1, 2, 3, 4, 5, 6});
    Tensor b = filled(dt, bs, {2, 4, 5, 0});
    struct C {
      const char* op;
      std::function<bool(double, double)> f;
    };
    const C cs[] = {{"Equal", [](double x, double y) { return x == y; }},
                    {"Less", [](double x, double y) { return x < y; }},
                    {"Greater", [](double x, double y) { return x > y; }},
                    {"LessOrEqual", [](double x, double y) { return x <= y; }},
                    {"GreaterOrEqual", [](double x, double y) { return x >= y; }}};
    for (const C& c : cs) {
      Tensor y = run1(c.op, {a, b}, DType::boolean, {2, 4, 3});
      std::vector<double> want;
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 4; ++j)
          for (int64_t k = 0; k < 3; ++k) want.push_back(c.f(any_element(a, i * 3 + k), any_element(b, j)));
      EXPECT_TRUE(same(y, want)) << c.op << " " << graph::dtype_name(dt);
    }
  }
  // NaN compares unequal and unordered; bools compare too.
  Tensor n = filled(DType::f32, {3}, {kNaN, 1, kNaN});
  Tensor m = filled(DType::f32, {3}, {kNaN, 1, 0});
  EXPECT_TRUE(same(run1("Equal", {n, m}, DType::boolean, {3}), {0, 1, 0}));
  EXPECT_TRUE(same(run1("GreaterOrEqual", {n, m}, DType::boolean, {3}), {0, 1, 0}));
  EXPECT_TRUE(same(run1("Equal", {filled(DType::boolean, {2}, {1, 0}), filled(DType::boolean, {2}, {1, 1})},
                        DType::boolean, {2}),
                   {1, 0}));
}

TEST(CpuPointwise, LogicAndWhere) {
  Tensor p = filled(DType::boolean, {2, 2}, {1, 0, 1, 0});
  Tensor q = filled(DType::boolean, {2, 1}, {1, 0});
  EXPECT_TRUE(same(run1("And", {p, q}, DType::boolean, {2, 2}), {1, 0, 0, 0}));
  EXPECT_TRUE(same(run1("Or", {p, q}, DType::boolean, {2, 2}), {1, 1, 1, 0}));
  EXPECT_TRUE(same(run1("Xor", {p, q}, DType::boolean, {2, 2}), {0, 1, 1, 0}));
  EXPECT_TRUE(same(run1("Not", {p}, DType::boolean, {2, 2}), {0, 1, 0, 1}));
  // Where(C[2,1,3], X[4,1], Y[3]) for float and int64.
  Tensor c = filled(DType::boolean, {2, 1, 3}, {1, 0, 1, 0, 0, 1});
  for (DType dt : {DType::f32, DType::f64, DType::i64, DType::i32}) {
    Tensor x = filled(dt, {4, 1}, {10, 20, 30, 40});
    Tensor y = filled(dt, {3}, {-1, -2, -3});
    Tensor got = run1("Where", {c, x, y}, dt, {2, 4, 3});
    std::vector<double> want;
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 4; ++j)
        for (int64_t k = 0; k < 3; ++k)
          want.push_back(any_element(c, i * 3 + k) != 0 ? any_element(x, j) : any_element(y, k));
    EXPECT_TRUE(same(got, want)) << graph::dtype_name(dt);
  }
}

TEST(CpuPointwise, CastConversions) {
  Tensor f = filled(DType::f32, {8}, {1.9, -1.9, 0, kNaN, 3e10, -3e10, 255.5, -0.0});
  const double f3e10 = static_cast<float>(3e10);  // 30000001024
  EXPECT_TRUE(same(run1("Cast", {f}, DType::i64, {8}), {1, -1, 0, 0, f3e10, -f3e10, 255, 0}));
  EXPECT_TRUE(same(run1("Cast", {f}, DType::i32, {8}), {1, -1, 0, 0, 2147483647, -2147483648.0, 255, 0}));
  EXPECT_TRUE(same(run1("Cast", {f}, DType::u8, {8}), {1, 0, 0, 0, 255, 0, 255, 0}));
  EXPECT_TRUE(same(run1("Cast", {f}, DType::boolean, {8}), {1, 1, 0, 1, 1, 1, 1, 0}));
  EXPECT_TRUE(same(run1("Cast", {f}, DType::f64, {8}),
                   {static_cast<float>(1.9), static_cast<float>(-1.9), 0, kNaN, f3e10, -f3e10, 255.5, 0}));
  Tensor b = filled(DType::boolean, {3}, {1, 0, 1});
  EXPECT_TRUE(same(run1("Cast", {b}, DType::f32, {3}), {1, 0, 1}));
  EXPECT_TRUE(same(run1("Cast", {b}, DType::i64, {3}), {1, 0, 1}));
  Tensor big(DType::i64, {2});
  big.data<int64_t>()[0] = (int64_t{1} << 32) + 5;  // wraps to 5 in int32
  big.data<int64_t>()[1] = -7;
  EXPECT_TRUE(same(run1("Cast", {big}, DType::i32, {2}), {5, -7}));
  EXPECT_TRUE(same(run1("Cast", {big}, DType::f64, {2}), {4294967301.0, -7}));
  EXPECT_TRUE(same(run1("Cast", {filled(DType::f64, {2}, {1e300, 0.1})}, DType::f32, {2}),
                   {kInf, static_cast<float>(0.1)}));
}

TEST(CpuPointwise, CastWiderIntegerTypes) {
  // Floats truncate toward zero; NaN gives 0; beyond the range saturates.
  Tensor f = filled(DType::f32, {6}, {1.9, -1.9, kNaN, 70000, -70000, 1e19});
  const double f1e19 = static_cast<float>(1e19);  // 9999999980506447872, exact in uint64
  EXPECT_TRUE(same(run1("Cast", {f}, DType::i16, {6}), {1, -1, 0, 32767, -32768, 32767}));
  EXPECT_TRUE(same(run1("Cast", {f}, DType::u16, {6}), {1, 0, 0, 65535, 0, 65535}));
  EXPECT_TRUE(same(run1("Cast", {f}, DType::u32, {6}), {1, 0, 0, 70000, 0, 4294967295.0}));
  EXPECT_TRUE(same(run1("Cast", {f}, DType::u64, {6}), {1, 0, 0, 70000, 0, f1e19}));
  // Between integers the value wraps, as numpy's astype.
  Tensor big(DType::i64, {2});
  big.data<int64_t>()[0] = (int64_t{1} << 32) + 5;
  big.data<int64_t>()[1] = -7;
  EXPECT_TRUE(same(run1("Cast", {big}, DType::u16, {2}), {5, 65529}));
  EXPECT_TRUE(same(run1("Cast", {big}, DType::i16, {2}), {5, -7}));
  EXPECT_TRUE(same(run1("Cast", {big}, DType::u32, {2}), {5, 4294967289.0}));
  Tensor u = run1("Cast", {big}, DType::u64, {2});
  EXPECT_EQ(u.data<uint64_t>()[0], (uint64_t{1} << 32) + 5);
  EXPECT_EQ(u.data<uint64_t>()[1], UINT64_MAX - 6);
  // uint64 above int64's range reads as itself.
  Tensor top(DType::u64, {1});
  top.data<uint64_t>()[0] = UINT64_MAX;
  EXPECT_TRUE(same(run1("Cast", {top}, DType::f64, {1}), {18446744073709551616.0}));
  EXPECT_TRUE(same(run1("Cast", {top}, DType::i32, {1}), {-1}));
}

// Narrow targets: float8 E4M3FN saturates by default (saturate=0: overflow is NaN); E8M0 rounds
// the exponent by round_mode; an unknown round_mode is refused naming the node.
TEST(CpuPointwise, CastToNarrowTypesHonoursSaturateAndRoundMode) {
  Tensor f = filled(DType::f32, {3}, {1.1, 500, -0.25});
  Tensor sat = run1("Cast", {f}, DType::f8e4m3fn, {3});
  EXPECT_EQ(std::vector<uint8_t>(sat.data<uint8_t>(), sat.data<uint8_t>() + 3), (std::vector<uint8_t>{0x39, 0x7E, 0xA8}));
  Tensor nan = run1("Cast", {f}, DType::f8e4m3fn, {3}, {{"saturate", Attribute{int64_t{0}}}});
  EXPECT_EQ(nan.data<uint8_t>()[1], 0x7F);
  Tensor up = run1("Cast", {f}, DType::f8e8m0, {3});
  Tensor down = run1("Cast", {f}, DType::f8e8m0, {3}, {{"round_mode", Attribute{std::string("down")}}});
  EXPECT_EQ(up.data<uint8_t>()[0], 128);    // 1.1 -> 2
  EXPECT_EQ(down.data<uint8_t>()[0], 127);  // 1.1 -> 1
  // Back to float32: exact.
  EXPECT_TRUE(same(run1("Cast", {sat}, DType::f32, {3}), {1.125, 448, -0.25}));
  try {
    run1("Cast", {f}, DType::f8e8m0, {3}, {{"round_mode", Attribute{std::string("sideways")}}});
    FAIL() << "an unknown round_mode was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("round_mode 'sideways' must be up, down or nearest"), std::string::npos)
        << e.what();
  }
}

TEST(CpuPointwise, WiderIntegerArithmeticWrapsAndComparesUnsigned) {
  // uint64: 2^64 - 1 + 2 wraps to 1, and compares above every int64-range value.
  Tensor a(DType::u64, {2}), b(DType::u64, {2});
  a.data<uint64_t>()[0] = UINT64_MAX;
  a.data<uint64_t>()[1] = 10;
  b.data<uint64_t>()[0] = 2;
  b.data<uint64_t>()[1] = 3;
  Tensor sum = run1("Add", {a, b}, DType::u64, {2});
  EXPECT_EQ(sum.data<uint64_t>()[0], 1u);
  EXPECT_EQ(sum.data<uint64_t>()[1], 13u);
  Tensor quotient = run1("Div", {a, b}, DType::u64, {2});
  EXPECT_EQ(quotient.data<uint64_t>()[0], UINT64_MAX / 2);
  EXPECT_EQ(quotient.data<uint64_t>()[1], 3u);
  EXPECT_TRUE(same(run1("Greater", {a, b}, DType::boolean, {2}), {1, 1}));
  EXPECT_TRUE(same(run1("Mod", {a, b}, DType::u64, {2}), {1, 1}));
  // int16 wraps at 2^15; uint16's 0 - 1 is 65535.
  EXPECT_TRUE(same(run1("Mul", {filled(DType::i16, {2}, {300, -300}), filled(DType::i16, {1}, {200})}, DType::i16, {2}),
                   {static_cast<int16_t>(60000), static_cast<int16_t>(-60000)}));
  EXPECT_TRUE(same(run1("Sub", {filled(DType::u16, {1}, {0}), filled(DType::u16, {1}, {1})}, DType::u16, {1}), {65535}));
  EXPECT_TRUE(same(run1("Min", {filled(DType::u32, {2}, {4000000000.0, 1}), filled(DType::u32, {1}, {7})}, DType::u32, {2}),
                   {7, 1}));
}

TEST(CpuPointwise, MaxMinVariadicAndTies) {
  for (DType dt : kFloatTypes) {
    Tensor a = filled(dt, {2, 3}, {1, 5, kNaN, -2, 0, 3});
    Tensor b = filled(dt, {3}, {4, 5, 1});
    Tensor c = filled(dt, {2, 1}, {2, -1});
    EXPECT_TRUE(same(run1("Max", {a, b, c}, dt, {2, 3}), {4, 5, kNaN, 4, 5, 3}));
    EXPECT_TRUE(same(run1("Min", {a, b, c}, dt, {2, 3}), {1, 2, kNaN, -2, -1, -1}));
    // The gradient: dY split between inputs equal to the result (PyTorch: 0.5 each for 2).
    Tensor dy = filled(dt, {2, 3}, {6, 6, 6, 6, 6, 6});
    Tensor x0 = filled(dt, {2, 3}, {1, 5, 2, 5, 3, 7});
    Tensor x1 = filled(dt, {2, 3}, {4, 5, 2, 1, 3, 0});
    Tensor x2 = filled(dt, {2, 3}, {0, 0, 2, 5, 9, 7});
    KernelCase kc("MaxMinGrad", "oxtrain", {dy, x0, x1, x2}, {{dt, {2, 3}}, {dt, {2, 3}}, {dt, {2, 3}}});
    kc.set_attr("mode", Attribute{std::string("max")});
    kc.run(1);
    EXPECT_TRUE(same(kc.output(0), {0, 3, 2, 3, 0, 3}));
    EXPECT_TRUE(same(kc.output(1), {6, 3, 2, 0, 0, 0}));
    EXPECT_TRUE(same(kc.output(2), {0, 0, 2, 3, 6, 3}));
    kc.set_attr("mode", Attribute{std::string("min")});
    kc.run(1);
    EXPECT_TRUE(same(kc.output(0), {0, 0, 2, 0, 3, 0}));
    EXPECT_TRUE(same(kc.output(1), {0, 0, 2, 6, 3, 6}));
    EXPECT_TRUE(same(kc.output(2), {6, 6, 2, 0, 0, 0}));
  }
  EXPECT_TRUE(same(run1("Max", {filled(DType::i64, {3}, {1, 9, -4}), filled(DType::i64, {1}, {2})}, DType::i64, {3}),
                   {2, 9, 2}));
}

TEST(CpuPointwise, ModBothConventions) {
  // fmod = 0: the divisor's sign (Python's %); fmod = 1: the dividend's (C's fmod).
  Tensor a = filled(DType::i64, {4}, {7, -7, 7, -7});
  Tensor b = filled(DType::i64, {4}, {3, 3, -3, -3});
  EXPECT_TRUE(same(run1("Mod", {a, b}, DType::i64, {4}), {1, 2, -2, -1}));
  EXPECT_TRUE(same(run1("Mod", {a, b}, DType::i64, {4}, {{"fmod", Attribute{int64_t{1}}}}), {1, -1, 1, -1}));
  for (DType dt : kFloatTypes) {
    Tensor x = filled(dt, {4}, {5.5, -5.5, 5.5, -5.5});
    Tensor y = filled(dt, {4}, {2, 2, -2, -2});
    EXPECT_TRUE(same(run1("Mod", {x, y}, dt, {4}, {{"fmod", Attribute{int64_t{1}}}}), {1.5, -1.5, 1.5, -1.5}));
    EXPECT_TRUE(same(run1("Mod", {x, y}, dt, {4}), {1.5, 0.5, -0.5, -1.5}));
  }
}

TEST(CpuPointwise, OutputMaySharesItsInputBuffer) {
  // The planner may give Sigmoid's output its input's buffer: the kernel reads element i
  // before writing it.
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, {3, 50000}, 9, -5, 5);
    Tensor want = run1("Sigmoid", {x}, dt, x.shape);
    KernelCase kc("Sigmoid", "", {x}, {{dt, x.shape}});
    const runtime::KernelFactory* f =
        runtime::KernelRegistry::global().find("", "Sigmoid", runtime::Device::cpu);
    ASSERT_NE(f, nullptr);
    auto kernel = (*f)(runtime::KernelInit{kc.node(), 17, runtime::Device::cpu});
    runtime::KernelArgs args;
    Tensor& buf = kc.input(0);
    args.inputs.push_back({buf.bytes.data(), dt, buf.shape});
    args.outputs.push_back({buf.bytes.data(), dt, buf.shape});
    kernel->run(args);
    EXPECT_EQ(buf.bytes, want.bytes);
  }
}

TEST(CpuPointwise, ResultsDoNotDependOnThreads) {
  Tensor a = random_tensor(DType::f32, {4, 1, 300, 100}, 3, -2, 2);
  Tensor b = random_tensor(DType::f32, {5, 300, 1}, 4, -2, 2);
  runtime::set_cpu_threads(1);
  Tensor one = run1("Max", {a, b}, DType::f32, {4, 5, 300, 100});
  Tensor one_pow = run1("Pow", {a, b}, DType::f32, {4, 5, 300, 100});
  runtime::set_cpu_threads(4);
  Tensor four = run1("Max", {a, b}, DType::f32, {4, 5, 300, 100});
  Tensor four_pow = run1("Pow", {a, b}, DType::f32, {4, 5, 300, 100});
  runtime::set_cpu_threads(0);
  EXPECT_EQ(one.bytes, four.bytes);
  EXPECT_EQ(one_pow.bytes, four_pow.bytes);
  // And the broadcast is right: spot checks.
  for (int64_t i : {int64_t{0}, int64_t{123457}, int64_t{599999}}) {
    int64_t n = i / (5 * 300 * 100), c = i / (300 * 100) % 5, h = i / 100 % 300, w = i % 100;
    double want = std::max(element(a, (n * 300 + h) * 100 + w), element(b, c * 300 + h));
    EXPECT_EQ(element(one, i), want);
  }
}

// ---- schemas: inference, folding at import, facts, errors ----

namespace {

using graph::Graph;
using graph::Role;
using graph::Value;

Value* constant(Graph& g, const std::string& name, Tensor t) {
  return g.add_initializer(name, std::move(t), Role::Constant);
}

}  // namespace

TEST(OpsPointwise, ShapeComputationsFoldAtImport) {
  // vit_b_16's TorchScript export: Equal, Where, Mod, Cast and Sqrt on constant shapes.
  Graph g;
  g.opsets = {{"", 17}};
  Value* x = g.add_value("x", DType::f32, {2, 3}, Role::Input);
  x->rank_known = true;
  g.inputs.push_back(x);
  Value* shape = constant(g, "shape", filled(DType::i64, {3}, {4, -1, 7}));
  Value* minus = constant(g, "minus", filled(DType::i64, {}, {-1}));
  Value* ones = constant(g, "ones", filled(DType::i64, {3}, {1}));
  auto v = [&](const char* name) { return g.add_value(name); };
  Value *eq = v("eq"), *wh = v("wh"), *md = v("md"), *ca = v("ca"), *sq = v("sq");
  g.add_node("Equal", {shape, minus}, {eq}, "equal");
  g.add_node("Where", {eq, ones, shape}, {wh}, "where");
  g.add_node("Mod", {wh, constant(g, "five", filled(DType::i64, {}, {5}))}, {md}, "mod");
  g.add_node("Cast", {md}, {ca}, "cast")->attrs["to"] = Attribute{int64_t{1}};
  g.add_node("Sqrt", {ca}, {sq}, "sqrt");
  Value* out = g.add_value("out");
  g.add_node("Mul", {x, constant(g, "row", filled(DType::f32, {3}, {1, 1, 1}))}, {out}, "mul0");
  Value* out2 = g.add_value("out2");
  g.add_node("Add", {out, sq}, {out2}, "add");
  g.outputs.push_back(out2);
  graph::prepare(g);
  // Only the float math on x is left; the folded values are right: Where gives [4, 1, 7],
  // Mod [4, 1, 2].
  for (const auto& n : g.nodes()) EXPECT_TRUE(n->op_type == "Mul" || n->op_type == "Add") << n->op_type;
  ASSERT_TRUE(sq->has_data());
  EXPECT_EQ(sq->dtype, DType::f32);
  EXPECT_TRUE(close(*sq->data, {2, 1, std::sqrt(2.0)}, 1e-7));
}

TEST(OpsPointwise, InferenceAndFacts) {
  Graph g;
  g.opsets = {{"", 17}};
  auto input = [&](const char* name, DType dt, Shape s) {
    Value* v = g.add_value(name, dt, s, Role::Input);
    v->rank_known = true;
    g.inputs.push_back(v);
    return v;
  };
  Value* a = input("a", DType::f32, {2, 1, 5});
  Value* b = input("b", DType::f32, {3, 1});
  Value* c = input("c", DType::boolean, {5});
  Value *lt = g.add_value("lt"), *w = g.add_value("w"), *m = g.add_value("m");
  g.add_node("Less", {a, b}, {lt}, "less");
  g.add_node("Where", {c, a, b}, {w}, "where");
  g.add_node("Max", {a, b, a}, {m}, "max");
  g.outputs = {lt, w, m};
  graph::prepare(g);
  EXPECT_EQ(lt->dtype, DType::boolean);
  EXPECT_EQ(lt->shape, (Shape{2, 3, 5}));
  EXPECT_EQ(w->dtype, DType::f32);
  EXPECT_EQ(w->shape, (Shape{2, 3, 5}));
  EXPECT_EQ(m->shape, (Shape{2, 3, 5}));
  // Facts: no gradient through comparisons, Floor/Ceil/Sign or a Where condition; Clip's
  // bounds are compile-time; Cast float->int takes none.
  auto facts = [](const char* op, std::vector<graph::Value*> ins = {}, int64_t to = 1) {
    graph::Node n;
    n.op_type = op;
    n.inputs = ins;
    n.attrs["to"] = Attribute{to};
    return graph::node_facts(n);
  };
  EXPECT_FALSE(facts("Less").trainable(0));
  EXPECT_FALSE(facts("Equal").trainable(1));
  EXPECT_FALSE(facts("Floor").trainable(0));
  EXPECT_FALSE(facts("Sign").trainable(0));
  EXPECT_FALSE(facts("Where").trainable(0));
  EXPECT_TRUE(facts("Where").trainable(1));
  EXPECT_FALSE(facts("Clip").trainable(1));
  EXPECT_TRUE(facts("Clip").trainable(0));
  EXPECT_TRUE(facts("Pow").trainable(1));
  EXPECT_FALSE(facts("Cast", {}, 7).trainable(0));
  EXPECT_TRUE(facts("Cast", {}, 11).trainable(0));
}

TEST(OpsPointwise, ErrorsNameTheNodeAndTheProblem) {
  auto prepare_error = [](const std::function<void(Graph&)>& build) {
    Graph g;
    g.opsets = {{"", 17}};
    build(g);
    try {
      graph::prepare(g);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto in = [](Graph& g, const char* name, DType dt, Shape s) {
    Value* v = g.add_value(name, dt, s, Role::Input);
    v->rank_known = true;
    g.inputs.push_back(v);
    return v;
  };
  std::string e = prepare_error([&](Graph& g) {
    Value* y = g.add_value("y");
    g.add_node("Where", {in(g, "c", DType::f32, {3}), in(g, "x", DType::f32, {3}), in(g, "z", DType::f32, {3})}, {y},
               "sel");
    g.outputs.push_back(y);
  });
  EXPECT_NE(e.find("Where 'sel'"), std::string::npos) << e;
  EXPECT_NE(e.find("must be bool"), std::string::npos) << e;
  e = prepare_error([&](Graph& g) {
    Value* y = g.add_value("y");
    g.add_node("Less", {in(g, "a", DType::f32, {3}), in(g, "b", DType::i64, {3})}, {y}, "lt");
    g.outputs.push_back(y);
  });
  EXPECT_NE(e.find("Less 'lt'"), std::string::npos) << e;
  EXPECT_NE(e.find("insert a Cast"), std::string::npos) << e;
  e = prepare_error([&](Graph& g) {
    Value* y = g.add_value("y");
    g.add_node("Max", {in(g, "a", DType::f32, {3, 2}), in(g, "b", DType::f32, {4})}, {y}, "mx");
    g.outputs.push_back(y);
  });
  EXPECT_NE(e.find("do not broadcast"), std::string::npos) << e;
  e = prepare_error([&](Graph& g) {
    Value* y = g.add_value("y");
    g.add_node("Gelu", {in(g, "a", DType::f32, {3})}, {y}, "gelu");
    g.outputs.push_back(y);
  });
  EXPECT_NE(e.find("from opset 20"), std::string::npos) << e;
  e = prepare_error([&](Graph& g) {
    g.opsets = {{"", 20}};
    Value* y = g.add_value("y");
    g.add_node("Gelu", {in(g, "a", DType::f32, {3})}, {y}, "gelu")->attrs["approximate"] =
        Attribute{std::string("fast")};
    g.outputs.push_back(y);
  });
  EXPECT_NE(e.find("approximate='fast'"), std::string::npos) << e;
  e = prepare_error([&](Graph& g) {
    Value* y = g.add_value("y");
    Value* lo = in(g, "lo", DType::f32, {});
    g.add_node("Clip", {in(g, "a", DType::f32, {3}), lo, nullptr}, {y}, "clip");
    g.outputs.push_back(y);
  });
  EXPECT_EQ(e, "no error");  // inference accepts it; the kernel refuses a run-time bound
  e = prepare_error([&](Graph& g) {
    Value* y = g.add_value("y");
    g.add_node("Clip", {in(g, "a", DType::f32, {3}), constant(g, "lo", filled(DType::f32, {2}, {0, 1})), nullptr},
               {y}, "clip");
    g.outputs.push_back(y);
  });
  EXPECT_NE(e.find("a bound must be a scalar"), std::string::npos) << e;
}
