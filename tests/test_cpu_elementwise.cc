// CPU element-wise kernels, copies, Transpose and the reductions, against naive references
// in double; the gradient reductions as adjoints of the forward ops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "runtime/kernel.h"
#include "runtime/math/broadcast.h"
#include "runtime/math/elementwise.h"
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
using test::random_tensor;

namespace {

std::vector<int64_t> coords(int64_t flat, const Shape& s) {
  std::vector<int64_t> c(s.size());
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    c[d] = flat % s[d];
    flat /= s[d];
  }
  return c;
}

// Flat index into a tensor of shape `s` (numpy-broadcast to `out`) of output coords `c`.
int64_t broadcast_index(const Shape& s, const Shape& out, const std::vector<int64_t>& c) {
  int64_t idx = 0;
  size_t lead = out.size() - s.size();
  for (size_t d = 0; d < s.size(); ++d) idx = idx * s[d] + (s[d] == 1 ? 0 : c[lead + d]);
  return idx;
}

Shape broadcast(const Shape& a, const Shape& b) {
  size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Runs the node's kernel with output o sharing input alias[o]'s buffer (alias[o] < 0: its own
// buffer). The results are then in those inputs.
void run_aliased(KernelCase& kc, const std::vector<int>& alias, int64_t opset = 17) {
  using namespace runtime;
  graph::Node& n = kc.node();
  const KernelFactory* f = KernelRegistry::global().find(n.domain, n.op_type, Device::cpu);
  ASSERT_NE(f, nullptr);
  auto kernel = (*f)(KernelInit{n, opset, Device::cpu});
  std::vector<uint8_t> ws(kernel->workspace_bytes() + 64);
  KernelArgs args;
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    Tensor& t = kc.input(i);
    args.inputs.push_back(TensorView{t.bytes.data(), t.dtype, t.shape});
  }
  for (size_t o = 0; o < n.outputs.size(); ++o) {
    Tensor& t = alias[o] >= 0 ? kc.input(alias[o]) : kc.output(o);
    args.outputs.push_back(TensorView{t.bytes.data(), t.dtype, t.shape});
  }
  args.workspace = ws.data();
  kernel->run(args);
}

using BinaryRef = std::function<double(double, double)>;

struct BinaryOp {
  const char* name;
  BinaryRef ref;
};

const BinaryOp kBinaryOps[] = {
    {"Add", [](double a, double b) { return a + b; }},
    {"Sub", [](double a, double b) { return a - b; }},
    {"Mul", [](double a, double b) { return a * b; }},
    {"Div", [](double a, double b) { return a / b; }},
};

std::vector<double> binary_reference(const Tensor& a, const Tensor& b, const BinaryRef& op) {
  Shape out = broadcast(a.shape, b.shape);
  std::vector<double> r(static_cast<size_t>(graph::shape_numel(out)));
  for (size_t i = 0; i < r.size(); ++i) {
    auto c = coords(static_cast<int64_t>(i), out);
    r[i] = op(element(a, broadcast_index(a.shape, out, c)),
              element(b, broadcast_index(b.shape, out, c)));
  }
  return r;
}

}  // namespace

TEST(CpuElementwise, BinaryBroadcasting) {
  const std::pair<Shape, Shape> cases[] = {
      {{5, 7, 11, 13}, {5, 7, 11, 13}},  // same shape
      {{5, 7, 11, 13}, {}},              // scalar
      {{}, {5, 7, 11, 13}},
      {{1}, {3, 1, 4}},
      {{5, 7, 11, 13}, {1, 7, 1, 1}},  // per channel
      {{5, 7, 11, 13}, {7, 1, 1}},
      {{7, 1, 1}, {5, 7, 11, 13}},
      {{3, 1, 5}, {1, 4, 1}},  // both sides
      {{3, 1, 4}, {4}},
      {{2, 3, 1, 5}, {3, 4, 1}},
      {{64, 32, 20, 20}, {32, 1, 1}},  // large enough for threads
      {{64, 32, 20, 20}, {64, 32, 20, 20}},
      {{1, 9000}, {7, 1}},  // long rows split into segments
      {{5, 1, 11, 1}, {7, 1, 13}},  // both sides broadcast, padded rank
      {{}, {}},                     // rank 0
  };
  for (const BinaryOp& op : kBinaryOps) {
    for (DType dt : kFloatTypes) {
      uint64_t seed = 1;
      for (const auto& [sa, sb] : cases) {
        Tensor a = random_tensor(dt, sa, seed++);
        // Divisors away from zero.
        Tensor b = random_tensor(dt, sb, seed++, 0.5, 1.5);
        Shape out = broadcast(sa, sb);
        KernelCase kc(op.name, "", {a, b}, {{dt, out}});
        kc.run();
        EXPECT_TRUE(close(kc.output(0), binary_reference(a, b, op.ref), tolerance(dt)))
            << op.name << " " << graph::shape_str(sa) << " " << graph::shape_str(sb) << " "
            << graph::dtype_name(dt);
      }
    }
  }
}

TEST(CpuElementwise, BinaryRejectsMixedTypes) {
  KernelCase kc("Add", "", {Tensor(DType::f32, {3}), Tensor(DType::f64, {3})},
                {{DType::f32, {3}}});
  EXPECT_THROW(kc.run(), Error);
}

// Integer arithmetic as numpy and ONNX's reference do it: wrapping, Div truncated toward
// zero, and no trap where C++ would have one (a zero divisor, the lowest value over -1).
TEST(CpuElementwise, IntegerArithmeticWrapsAndTruncates) {
  auto bytes = [](DType dt, std::vector<int64_t> v) {
    Tensor t(dt, {static_cast<int64_t>(v.size())});
    for (size_t i = 0; i < v.size(); ++i) {
      if (dt == DType::i8) t.data<int8_t>()[i] = static_cast<int8_t>(v[i]);
      if (dt == DType::u8) t.data<uint8_t>()[i] = static_cast<uint8_t>(v[i]);
      if (dt == DType::i32) t.data<int32_t>()[i] = static_cast<int32_t>(v[i]);
      if (dt == DType::i64) t.data<int64_t>()[i] = v[i];
    }
    return t;
  };
  auto run = [&](const char* op, DType dt, std::vector<int64_t> a, std::vector<int64_t> b) {
    KernelCase kc(op, "", {bytes(dt, a), bytes(dt, b)}, {{dt, {static_cast<int64_t>(a.size())}}});
    kc.run();
    return kc.output(0).to_int64();
  };
  using V = std::vector<int64_t>;
  EXPECT_EQ(run("Add", DType::i8, {127, -128, 5}, {1, -1, -7}), (V{-128, 127, -2}));
  EXPECT_EQ(run("Add", DType::u8, {255, 3}, {1, 4}), (V{0, 7}));
  EXPECT_EQ(run("Sub", DType::u8, {0, 9}, {1, 4}), (V{255, 5}));
  EXPECT_EQ(run("Mul", DType::i8, {64, -3}, {2, 5}), (V{-128, -15}));
  EXPECT_EQ(run("Mul", DType::i64, {INT64_MAX, 3}, {2, -4}), (V{-2, -12}));
  EXPECT_EQ(run("Div", DType::i32, {7, -7, 7, -7, 5, INT32_MIN}, {2, 2, -2, -2, 0, -1}),
            (V{3, -3, -3, 3, 0, INT32_MIN}));
  EXPECT_EQ(run("Div", DType::u8, {200, 7}, {3, 0}), (V{66, 0}));
  // Mod (Python's sign) by 255 in uint8, and -128 mod -1 in int8.
  EXPECT_EQ(run("Mod", DType::u8, {7, 254}, {255, 255}), (V{7, 254}));
  EXPECT_EQ(run("Mod", DType::i8, {-7, 7, -128}, {3, -3, -1}), (V{2, -2, 0}));
  EXPECT_EQ(run("Max", DType::u8, {3, 200}, {250, 1}), (V{250, 200}));
  EXPECT_EQ(run("Min", DType::i8, {-3, 100}, {-128, 1}), (V{-128, 1}));
  // Clip with its default (infinite) bounds keeps every int8; with bounds, clamps.
  KernelCase open_clip("Clip", "", {bytes(DType::i8, {-128, 0, 127})}, {{DType::i8, {3}}});
  open_clip.run(13);
  EXPECT_EQ(open_clip.output(0).to_int64(), (V{-128, 0, 127}));
  Tensor lo = bytes(DType::i8, {-5}), hi = bytes(DType::i8, {5});
  lo.shape = hi.shape = {};
  KernelCase clip("Clip", "", {bytes(DType::i8, {-128, 3, 127}), lo, hi}, {{DType::i8, {3}}});
  clip.node().input(1)->data = std::make_shared<Tensor>(lo);
  clip.node().input(2)->data = std::make_shared<Tensor>(hi);
  clip.run(13);
  EXPECT_EQ(clip.output(0).to_int64(), (V{-5, 3, 5}));
  // Pow of an integer base: the power truncated to the base's type.
  KernelCase pow("Pow", "", {bytes(DType::i32, {2, 3, -2}), Tensor::from_float({10, 0.5f, 3}, {3})}, {{DType::i32, {3}}});
  pow.run(15);
  EXPECT_EQ(pow.output(0).to_int64(), (V{1024, 1, -8}));
}

TEST(CpuElementwise, UnaryAndReluGrad) {
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, {5, 7, 11, 13}, 3);
    Tensor dy = random_tensor(dt, {5, 7, 11, 13}, 4);
    std::vector<double> neg, relu, grad;
    for (int64_t i = 0; i < x.numel(); ++i) {
      double v = element(x, i);
      neg.push_back(-v);
      relu.push_back(v > 0 ? v : 0);
      grad.push_back(v > 0 ? element(dy, i) : 0);
    }
    KernelCase n("Neg", "", {x}, {{dt, x.shape}});
    n.run();
    EXPECT_TRUE(close(n.output(0), neg, 0));
    KernelCase r("Relu", "", {x}, {{dt, x.shape}});
    r.run();
    EXPECT_TRUE(close(r.output(0), relu, 0));
    // ReluGrad takes the forward output Y; Relu(x) > 0 exactly where x > 0.
    KernelCase g("ReluGrad", "oxtrain", {dy, r.output(0)}, {{dt, x.shape}});
    g.run();
    EXPECT_TRUE(close(g.output(0), grad, 0));
  }
}

TEST(CpuElementwise, InPlaceReluAndAdd) {
  for (DType dt : kFloatTypes) {
    const Shape s{64, 32, 20, 20};  // large enough for threads
    Tensor x = random_tensor(dt, s, 5);
    std::vector<double> want;
    for (double v : values(x)) want.push_back(v > 0 ? v : 0);
    KernelCase r("Relu", "", {x}, {{dt, s}});
    run_aliased(r, {0});
    EXPECT_TRUE(close(r.input(0), want, 0));

    // Add with the output in either operand's buffer, the other operand broadcast or not.
    for (int target : {0, 1}) {
      for (bool per_channel : {false, true}) {
        Tensor a = random_tensor(dt, s, 6);
        Tensor b = random_tensor(dt, per_channel ? Shape{32, 1, 1} : s, 7);
        if (per_channel && target == 1) continue;  // the output never aliases a smaller input
        auto ref = binary_reference(a, b, [](double p, double q) { return p + q; });
        KernelCase add("Add", "", {a, b}, {{dt, s}});
        run_aliased(add, {target});
        EXPECT_TRUE(close(add.input(target), ref, tolerance(dt)))
            << "target " << target << " per_channel " << per_channel;
      }
    }
  }
}

TEST(CpuElementwise, SumVariadic) {
  for (DType dt : kFloatTypes) {
    Tensor a = random_tensor(dt, {3, 1, 5}, 8);
    Tensor b = random_tensor(dt, {1, 4, 1}, 9);
    Tensor c = random_tensor(dt, {5}, 10);
    auto ab = binary_reference(a, b, [](double p, double q) { return p + q; });
    std::vector<double> want(ab.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = ab[i] + element(c, i % 5);
    KernelCase kc("Sum", "", {a, b, c}, {{dt, {3, 4, 5}}});
    kc.run();
    EXPECT_TRUE(close(kc.output(0), want, tolerance(dt)));

    // One input: a copy.
    KernelCase one("Sum", "", {a}, {{dt, a.shape}});
    one.run();
    EXPECT_TRUE(close(one.output(0), values(a), 0));

    // Same shapes, the output in the last input's buffer.
    Shape s{5, 7, 11, 13};
    Tensor x = random_tensor(dt, s, 11), y = random_tensor(dt, s, 12), z = random_tensor(dt, s, 13);
    std::vector<double> sum3;
    for (int64_t i = 0; i < x.numel(); ++i)
      sum3.push_back(element(x, i) + element(y, i) + element(z, i));
    KernelCase in_place("Sum", "", {x, y, z}, {{dt, s}});
    run_aliased(in_place, {2});
    EXPECT_TRUE(close(in_place.input(2), sum3, tolerance(dt)));
  }
}

TEST(CpuElementwise, CopiesAndDropout) {
  for (DType dt : {DType::f32, DType::f64, DType::i64}) {
    Tensor x = random_tensor(dt, {3, 1, 4, 5}, 14, -100, 100);
    for (const char* op : {"Identity", "Flatten", "Reshape", "Dropout"}) {
      std::vector<Tensor> ins{x};
      Shape out = x.shape;
      if (std::string(op) == "Flatten") out = {3, 20};
      if (std::string(op) == "Reshape") {
        out = {12, 5};
        ins.push_back(Tensor::from_int64({12, 5}, {2}));
      }
      std::vector<test::OutputSpec> outs{{dt, out}};
      if (std::string(op) == "Dropout") outs.push_back({DType::boolean, x.shape});
      KernelCase kc(op, "", ins, outs);
      kc.run();
      EXPECT_EQ(kc.output(0).bytes, x.bytes) << op;
      EXPECT_EQ(kc.output(0).shape, out);
      if (std::string(op) == "Dropout") {
        for (uint8_t m : kc.output(1).bytes) EXPECT_EQ(m, 1);
      }
      // In place: nothing to copy, nothing lost.
      KernelCase same(op, "", ins, outs);
      std::vector<int> alias{0};
      if (outs.size() > 1) alias.push_back(-1);
      run_aliased(same, alias);
      EXPECT_EQ(same.input(0).bytes, x.bytes) << op;
    }
  }
  // Dropout with ratio and training_mode inputs runs as inference.
  Tensor x = random_tensor(DType::f32, {4, 6}, 15);
  Tensor ratio = Tensor::from_float({0.5f}, {});
  Tensor mode(DType::boolean, {});
  mode.bytes[0] = 0;
  KernelCase kc("Dropout", "", {x, ratio, mode}, {{DType::f32, x.shape}, {DType::boolean, x.shape}});
  kc.run(13);
  EXPECT_EQ(kc.output(0).bytes, x.bytes);
}

TEST(CpuElementwise, Transpose) {
  const Shape s{3, 4, 5, 6};
  const std::vector<std::vector<int64_t>> perms = {
      {2, 0, 3, 1}, {0, 1, 3, 2}, {1, 0, 2, 3}, {3, 2, 1, 0}, {0, 1, 2, 3}, {}};
  for (DType dt : {DType::f32, DType::f64, DType::i64}) {
    Tensor x = random_tensor(dt, s, 16, -1000, 1000);
    for (const auto& p : perms) {
      std::vector<int64_t> perm = p.empty() ? std::vector<int64_t>{3, 2, 1, 0} : p;
      Shape out(4);
      for (size_t d = 0; d < 4; ++d) out[d] = s[perm[d]];
      std::vector<double> want(static_cast<size_t>(x.numel()));
      auto xst = std::vector<int64_t>{120, 30, 6, 1};
      for (size_t i = 0; i < want.size(); ++i) {
        auto c = coords(static_cast<int64_t>(i), out);
        int64_t src = 0;
        for (size_t d = 0; d < 4; ++d) src += c[d] * xst[perm[d]];
        want[i] = element(x, src);
      }
      KernelCase kc("Transpose", "", {x}, {{dt, out}});
      if (!p.empty()) kc.set_attr("perm", Attribute{p});
      kc.run();
      EXPECT_TRUE(close(kc.output(0), want, 0)) << graph::shape_str(perm);
    }
  }
  // A big 2-D transpose (threads, strided rows).
  Tensor big = random_tensor(DType::f32, {300, 257}, 17);
  KernelCase kc("Transpose", "", {big}, {{DType::f32, {257, 300}}});
  kc.run();
  std::vector<double> want;
  for (int64_t i = 0; i < 257; ++i)
    for (int64_t j = 0; j < 300; ++j) want.push_back(element(big, j * 257 + i));
  EXPECT_TRUE(close(kc.output(0), want, 0));

  KernelCase bad("Transpose", "", {big}, {{DType::f32, {257, 300}}});
  bad.set_attr("perm", Attribute{std::vector<int64_t>{0, 0}});
  EXPECT_THROW(bad.run(), Error);
}

namespace {

// Values where a cast to half decides something: NaN, infinities, signed zeros, float16's
// overflow edge (65504 stays, 65520 rounds to infinity), subnormals of both halves, and ties
// between two halves (1 + 2^-11 and 1 + 2^-8: float16's and bfloat16's midpoints above 1).
Tensor with_cast_edges(Tensor x) {
  const double edges[] = {std::numeric_limits<double>::quiet_NaN(), INFINITY, -INFINITY, 0.0, -0.0, 65504.0, 65520.0,
                          -70000.0, 3e-8, -6e-5, 1e-39, 1.0 + 1.0 / 2048, 1.0 + 1.0 / 256, 1.0 + 3.0 / 256};
  for (size_t i = 0; i < std::size(edges) && static_cast<int64_t>(i) < x.numel(); ++i)
    test::set_element(x, static_cast<int64_t>(i) * 7 % x.numel(), edges[i]);
  return x;
}

}  // namespace

// oxtrain.CastTranspose is Cast then Transpose, bit for bit, between every pair of float32,
// float16 and bfloat16 (the CPU converts through its half emulation, rounding once).
TEST(CpuElementwise, CastTransposeIsCastThenTranspose) {
  const Shape s{6, 3, 5, 7};
  const std::vector<std::vector<int64_t>> perms = {{0, 2, 3, 1}, {0, 3, 1, 2}, {3, 2, 1, 0}, {}};
  int checked = 0;
  for (DType from : {DType::f32, DType::f16, DType::bf16})
    for (DType to : {DType::f32, DType::f16, DType::bf16})
      for (const auto& p : perms) {
        SCOPED_TRACE(std::string(graph::dtype_name(from)) + " to " + graph::dtype_name(to) + " perm " +
                     graph::shape_str(p));
        Tensor x = with_cast_edges(random_tensor(from, s, 18, -3e4, 3e4));
        std::vector<int64_t> perm = p.empty() ? std::vector<int64_t>{3, 2, 1, 0} : p;
        Shape out(4);
        for (size_t d = 0; d < 4; ++d) out[d] = s[perm[d]];
        test::KernelCase cast("Cast", "", {x}, {{to, s}});
        cast.set_attr("to", Attribute{int64_t{graph::dtype_to_onnx(to)}});
        cast.run();
        test::KernelCase transpose("Transpose", "", {cast.output(0)}, {{to, out}});
        if (!p.empty()) transpose.set_attr("perm", Attribute{p});
        transpose.run();
        test::KernelCase fused("CastTranspose", "oxtrain", {x}, {{to, out}});
        fused.set_attr("to", Attribute{int64_t{graph::dtype_to_onnx(to)}});
        if (!p.empty()) fused.set_attr("perm", Attribute{p});
        fused.run();
        ASSERT_EQ(fused.output(0).bytes, transpose.output(0).bytes);
        ++checked;
      }
  EXPECT_EQ(checked, 36);
  // Only float32 and the halves: an integer input is refused, naming the op.
  test::KernelCase ints("CastTranspose", "oxtrain", {random_tensor(DType::i64, s, 19, -9, 9)}, {{DType::f32, s}});
  ints.set_attr("to", Attribute{int64_t{graph::dtype_to_onnx(DType::f32)}});
  ints.set_attr("perm", Attribute{std::vector<int64_t>{0, 1, 2, 3}});
  EXPECT_THROW(ints.run(), Error);
}

namespace {

// Reference reduction: sums x over the dims where `target` (same rank) is 1 and x is not.
std::vector<double> reduce_reference(const Tensor& x, const Shape& target, double scale) {
  std::vector<double> out(static_cast<size_t>(graph::shape_numel(target)), 0.0);
  for (int64_t i = 0; i < x.numel(); ++i)
    out[broadcast_index(target, x.shape, coords(i, x.shape))] += element(x, i);
  for (double& v : out) v *= scale;
  return out;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += element(a, i) * element(b, i);
  return s;
}

}  // namespace

TEST(CpuElementwise, ReduceMean) {
  struct Case {
    Shape x;
    std::vector<int64_t> axes;  // empty: all
    int64_t keepdims;
  };
  const Case cases[] = {
      {{5, 7, 11, 13}, {2, 3}, 1}, {{5, 7, 11, 13}, {-1, -2}, 0}, {{5, 7, 11, 13}, {0, 2}, 1},
      {{5, 7, 11, 13}, {1}, 0},    {{3, 1, 4}, {}, 1},            {{3, 1, 4}, {}, 0},
      {{3, 1, 4}, {0}, 1},         {{32, 64, 7, 7}, {2, 3}, 1},
  };
  for (DType dt : kFloatTypes) {
    uint64_t seed = 20;
    for (const Case& c : cases) {
      Tensor x = random_tensor(dt, c.x, seed++);
      const int64_t rank = static_cast<int64_t>(c.x.size());
      std::vector<bool> reduced(c.x.size(), c.axes.empty());
      for (int64_t a : c.axes) reduced[a < 0 ? a + rank : a] = true;
      Shape aligned = c.x, out;
      for (int64_t d = 0; d < rank; ++d) {
        if (reduced[d]) aligned[d] = 1;
        if (!reduced[d]) out.push_back(c.x[d]);
        else if (c.keepdims) out.push_back(1);
      }
      auto want = reduce_reference(x, aligned,
                                   static_cast<double>(graph::shape_numel(aligned)) /
                                       static_cast<double>(x.numel()));
      // Opset 17: axes as an attribute.
      KernelCase a("ReduceMean", "", {x}, {{dt, out}});
      if (!c.axes.empty()) a.set_attr("axes", Attribute{c.axes});
      a.set_attr("keepdims", Attribute{c.keepdims});
      a.run(17);
      EXPECT_TRUE(close(a.output(0), want, tolerance(dt))) << graph::shape_str(c.axes);
      // Opset 18: axes as an input.
      std::vector<Tensor> ins{x};
      if (!c.axes.empty())
        ins.push_back(Tensor::from_int64(c.axes, {static_cast<int64_t>(c.axes.size())}));
      KernelCase b("ReduceMean", "", ins, {{dt, out}});
      b.set_attr("keepdims", Attribute{c.keepdims});
      b.run(18);
      EXPECT_TRUE(close(b.output(0), want, tolerance(dt))) << graph::shape_str(c.axes);
    }
    // noop_with_empty_axes: a copy.
    Tensor x = random_tensor(dt, {3, 1, 4}, 30);
    KernelCase noop("ReduceMean", "", {x}, {{dt, x.shape}});
    noop.set_attr("noop_with_empty_axes", Attribute{int64_t{1}});
    noop.run(18);
    EXPECT_TRUE(close(noop.output(0), values(x), 0));
  }
}

TEST(CpuElementwise, ReduceSumTo) {
  const std::pair<Shape, Shape> cases[] = {
      {{5, 7, 11, 13}, {13}},         {{5, 7, 11, 13}, {1, 7, 1, 1}}, {{5, 7, 11, 13}, {7, 1, 1}},
      {{5, 7, 11, 13}, {5, 7, 11, 13}}, {{6, 10}, {10}},              {{6, 10}, {1, 10}},
      {{6, 10}, {6, 1}},              {{3, 4, 5}, {4, 1}},            {{3, 4, 5}, {3, 1, 5}},
      {{2, 3, 4, 5}, {1}},            {{2, 3, 4, 5}, {}},             {{3, 1, 4}, {1, 4}},
      {{16, 64, 20, 20}, {1, 64, 1, 1}}, {{300, 700}, {700}},         {{2, 3, 4, 5}, {3, 1, 5}},
      {{2, 5, 3, 5}, {5}},  // the last axis, as numpy reads it
  };
  for (DType dt : kFloatTypes) {
    uint64_t seed = 40;
    for (const auto& [xs, ys] : cases) {
      Tensor x = random_tensor(dt, xs, seed++);
      Shape aligned(xs.size(), 1);
      std::copy(ys.begin(), ys.end(), aligned.end() - static_cast<int64_t>(ys.size()));
      KernelCase kc("ReduceSumTo", "oxtrain", {x}, {{dt, ys}});
      kc.set_attr("shape", Attribute{std::vector<int64_t>(ys)});
      kc.run();
      // Sums of thousands of float32 values: relative to the magnitude of the terms.
      double rtol = dt == DType::f32 ? 1e-5 * std::sqrt(static_cast<double>(x.numel()) /
                                                        std::max<int64_t>(1, graph::shape_numel(ys)))
                                     : 1e-12;
      EXPECT_TRUE(close(kc.output(0), reduce_reference(x, aligned, 1.0), rtol))
          << graph::shape_str(xs) << " -> " << graph::shape_str(ys) << " " << graph::dtype_name(dt);

      if (dt == DType::f64) {
        // The adjoint of broadcasting: <ReduceSumTo(x), y> == <x, broadcast(y)>.
        Tensor y = random_tensor(dt, ys, seed++);
        Tensor by(dt, xs);
        for (int64_t i = 0; i < by.numel(); ++i)
          test::set_element(by, i, element(y, broadcast_index(aligned, xs, coords(i, xs))));
        double lhs = dot(kc.output(0), y), rhs = dot(x, by);
        EXPECT_NEAR(lhs, rhs, 1e-12 * std::max(1.0, std::fabs(rhs)));
      }
    }
  }
  KernelCase bad("ReduceSumTo", "oxtrain", {Tensor(DType::f32, {3, 4, 5})}, {{DType::f32, {2}}});
  bad.set_attr("shape", Attribute{std::vector<int64_t>{2}});
  EXPECT_THROW(bad.run(), Error);
}

TEST(CpuElementwise, ReduceSumToRefusesShapesThatDoNotBroadcast) {
  // [C] against [N, C, H, W] is not a numpy broadcast: a channel sum asks for [1, C, 1, 1].
  Tensor x = random_tensor(DType::f32, {5, 7, 11, 13}, 1);
  KernelCase kc("ReduceSumTo", "oxtrain", {x}, {{DType::f32, {7}}});
  kc.set_attr("shape", Attribute{std::vector<int64_t>{7}});
  EXPECT_THROW(kc.run(), Error);
}

TEST(CpuElementwise, ReduceMeanGradIsTheAdjointOfReduceMean) {
  struct Case {
    Shape x;
    std::vector<int64_t> axes;
    int64_t keepdims;
  };
  const Case cases[] = {
      {{5, 7, 11, 13}, {2, 3}, 1}, {{5, 7, 11, 13}, {2, 3}, 0}, {{5, 7, 11, 13}, {0, 2}, 0},
      {{3, 1, 4}, {0, 1, 2}, 1},   {{3, 1, 4}, {0, 1, 2}, 0},   {{3, 1, 4}, {1}, 0},
      {{32, 64, 7, 7}, {2, 3}, 0},
  };
  uint64_t seed = 60;
  for (const Case& c : cases) {
    for (DType dt : kFloatTypes) {
      Tensor x = random_tensor(dt, c.x, seed++);
      Shape out;
      for (int64_t d = 0; d < static_cast<int64_t>(c.x.size()); ++d) {
        bool reduced = std::count(c.axes.begin(), c.axes.end(), d) != 0;
        if (!reduced) out.push_back(c.x[d]);
        else if (c.keepdims) out.push_back(1);
      }
      KernelCase fwd("ReduceMean", "", {x}, {{dt, out}});
      fwd.set_attr("axes", Attribute{c.axes});
      fwd.set_attr("keepdims", Attribute{c.keepdims});
      fwd.run(17);
      Tensor dy = random_tensor(dt, out, seed++);
      KernelCase grad("ReduceMeanGrad", "oxtrain", {dy}, {{dt, c.x}});
      grad.set_attr("input_shape", Attribute{std::vector<int64_t>(c.x)});
      grad.set_attr("axes", Attribute{c.axes});
      grad.set_attr("keepdims", Attribute{c.keepdims});
      grad.run();
      // Direct: dX = dY broadcast / count.
      Shape aligned = c.x;
      for (int64_t a : c.axes) aligned[a] = 1;
      double count = static_cast<double>(x.numel()) / static_cast<double>(graph::shape_numel(aligned));
      std::vector<double> want;
      for (int64_t i = 0; i < x.numel(); ++i)
        want.push_back(element(dy, broadcast_index(aligned, c.x, coords(i, c.x))) / count);
      EXPECT_TRUE(close(grad.output(0), want, tolerance(dt)));
      if (dt == DType::f64) {
        double lhs = dot(fwd.output(0), dy), rhs = dot(x, grad.output(0));
        EXPECT_NEAR(lhs, rhs, 1e-12 * std::max(1.0, std::fabs(rhs)));
      }
    }
  }
}

TEST(CpuElementwise, UnsupportedTypeIsAnError) {
  KernelCase kc("Relu", "", {Tensor(DType::i64, {3})}, {{DType::i64, {3}}});
  try {
    kc.run();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("test_Relu"), std::string::npos) << e.what();
  }
}

// The index math the CUDA kernels run (math::strided_offsets over a StridedIndex, dims
// innermost first) against the CPU plan's offsets and a naive numpy-broadcast index.
TEST(CpuElementwise, StridedIndexMatchesThePlan) {
  using runtime::math::StridedIndex;
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{5, 1, 11, 1}, {7, 1, 13}}, {{5, 7, 11, 13}, {7, 1, 1}}, {{5, 7, 11, 13}, {}},
      {{}, {}},                    {{3, 1, 5}, {1, 4, 1}},      {{2, 3, 1, 5}, {3, 4, 1}},
  };
  for (const auto& [sa, sb] : cases) {
    const Shape out = broadcast(sa, sb);
    const auto plan = runtime::math::make_broadcast_plan(out, {sa, sb}, "test");
    const auto i32 = runtime::math::strided_index<2, uint32_t>(plan, {0, 1}, "test");
    const auto i64 = runtime::math::strided_index<2, int64_t>(plan, {0, 1}, "test");
    EXPECT_TRUE(runtime::math::fits_32_bits(plan));
    for (int64_t i = 0; i < plan.numel; ++i) {
      uint32_t o32[2];
      int64_t o64[2];
      runtime::math::strided_offsets(i32, static_cast<uint32_t>(i), 2, o32);
      runtime::math::strided_offsets(i64, i, 2, o64);
      const auto c = coords(i, out);
      const int64_t want[2] = {broadcast_index(sa, out, c), broadcast_index(sb, out, c)};
      for (int k = 0; k < 2; ++k) {
        ASSERT_EQ(plan.offset(k, i), want[k]) << graph::shape_str(sa) << graph::shape_str(sb);
        ASSERT_EQ(o64[k], want[k]) << graph::shape_str(sa) << graph::shape_str(sb) << " " << i;
        ASSERT_EQ(static_cast<int64_t>(o32[k]), want[k]);
      }
    }
  }
  // (5,1,11,1) + (7,1,13): size-1 dims dropped, nothing merges: three dims.
  const auto plan = runtime::math::make_broadcast_plan({5, 7, 11, 13}, {{5, 1, 11, 1}, {7, 1, 13}}, "t");
  EXPECT_EQ(plan.dims, (std::vector<int64_t>{5, 7, 11, 13}));
  // Same shapes merge into one flat dim.
  const auto flat = runtime::math::make_broadcast_plan({5, 7, 11, 13}, {{5, 7, 11, 13}, {5, 7, 11, 13}}, "t");
  EXPECT_EQ(flat.dims, (std::vector<int64_t>{5005}));
  // Only the first `count` operands get offsets; the rest read 0.
  const auto i2 = runtime::math::strided_index<2, int64_t>(flat, {0, 1}, "t");
  int64_t off[2] = {-1, -1};
  runtime::math::strided_offsets(i2, int64_t{77}, 1, off);
  EXPECT_EQ(off[0], 77);
  EXPECT_EQ(off[1], 0);
  // Rank 0 (every offset 0) and too many dims for the CUDA index.
  const auto none = runtime::math::strided_index<int64_t>({}, {}, "t");
  int64_t one_off[1] = {-1};
  runtime::math::strided_offsets(none, int64_t{5}, 1, one_off);
  EXPECT_EQ(one_off[0], 0);
  EXPECT_THROW((runtime::math::strided_index<int64_t>(std::vector<int64_t>(9, 2),
                                                      std::vector<int64_t>(9, 1), "t")),
               Error);
}

// The per-element conventions both devices share: Relu keeps -0 and NaN, ReluGrad is 0 at
// Y == 0 (and -0, and NaN).
TEST(CpuElementwise, ReluConventions) {
  namespace m = runtime::math;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::signbit(m::relu(-0.0f)));
  EXPECT_EQ(m::relu(-0.0f), 0.0f);
  EXPECT_TRUE(std::isnan(m::relu(nan)));
  EXPECT_EQ(m::relu(-1e-40f), 0.0f);
  EXPECT_EQ(m::relu(1e-40f), 1e-40f);  // a denormal passes
  EXPECT_EQ(m::relu(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(m::relu_grad(3.0f, 0.0f), 0.0f);
  EXPECT_EQ(m::relu_grad(3.0f, -0.0f), 0.0f);
  EXPECT_EQ(m::relu_grad(3.0f, nan), 0.0f);
  EXPECT_EQ(m::relu_grad(3.0f, 1e-40f), 3.0f);
  EXPECT_EQ(m::relu_grad(3.0, 2.0), 3.0);

  // The CPU kernels run the same functions.
  Tensor x = Tensor::from_float({-0.0f, 0.0f, nan, -2.0f, 2.0f, 1e-40f}, {6});
  KernelCase r("Relu", "", {x}, {{DType::f32, {6}}});
  r.run();
  const float* y = r.output(0).data<float>();
  EXPECT_TRUE(std::signbit(y[0]));
  EXPECT_FALSE(std::signbit(y[1]));
  EXPECT_TRUE(std::isnan(y[2]));
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_EQ(y[4], 2.0f);
  EXPECT_EQ(y[5], 1e-40f);
  Tensor dy = Tensor::from_float({1, 2, 3, 4, 5, 6}, {6});
  KernelCase g("ReluGrad", "oxtrain", {dy, x}, {{DType::f32, {6}}});
  g.run();
  EXPECT_EQ(values(g.output(0)), (std::vector<double>{0, 0, 0, 0, 5, 6}));
  // Long enough for the vectorised loops: every element as the scalar function gives it, bit
  // for bit.
  std::vector<float> many;
  for (int i = 0; i < 4096; ++i) many.push_back(std::vector<float>{-0.0f, 0.0f, nan, -1.5f, 2.5f, 1e-40f, -1e-40f}[i % 7]);
  Tensor big = Tensor::from_float(many, {4096});
  KernelCase rb("Relu", "", {big}, {{DType::f32, {4096}}});
  rb.run();
  KernelCase gb("ReluGrad", "oxtrain", {big, big}, {{DType::f32, {4096}}});
  gb.run();
  for (int i = 0; i < 4096; ++i) {
    const float want = m::relu(many[i]), want_grad = m::relu_grad(many[i], many[i]);
    ASSERT_EQ(std::memcmp(&rb.output(0).data<float>()[i], &want, 4), 0) << i;
    ASSERT_EQ(std::memcmp(&gb.output(0).data<float>()[i], &want_grad, 4), 0) << i;
  }
}

// The reductions' layout, which the CUDA kernels follow too.
TEST(CpuElementwise, ReducePlanLayouts) {
  namespace m = runtime::math;
  // Conv bias: [N,C,H,W] -> [1,C,1,1]: runs N | C | HW, innermost reduced.
  m::ReducePlan conv = m::make_reduce_plan({5, 7, 11, 13}, {1, 7, 1, 1});
  EXPECT_EQ(conv.kind, m::ReduceKind::inner_reduced);
  EXPECT_EQ(conv.inner, 143);
  EXPECT_EQ(conv.kdims, (std::vector<int64_t>{7}));
  EXPECT_EQ(conv.kst, (std::vector<int64_t>{143}));
  EXPECT_EQ(conv.rdims, (std::vector<int64_t>{5}));
  EXPECT_EQ(conv.rst, (std::vector<int64_t>{1001}));
  EXPECT_EQ(conv.reduced(), 715);
  // Gemm bias: [N,K] -> [1,K]: innermost kept.
  m::ReducePlan gemm = m::make_reduce_plan({6, 10}, {1, 10});
  EXPECT_EQ(gemm.kind, m::ReduceKind::inner_kept);
  EXPECT_EQ(gemm.inner, 10);
  EXPECT_TRUE(gemm.kdims.empty());
  EXPECT_EQ(gemm.rdims, (std::vector<int64_t>{6}));
  // (5,1,11,1) pattern: size-1 dims of x vanish; kept 5 | reduced 7 | kept 11 | reduced 13.
  m::ReducePlan mixed = m::make_reduce_plan({5, 7, 11, 13}, {5, 1, 11, 1});
  EXPECT_EQ(mixed.kind, m::ReduceKind::inner_reduced);
  EXPECT_EQ(mixed.inner, 13);
  EXPECT_EQ(mixed.kdims, (std::vector<int64_t>{5, 11}));
  EXPECT_EQ(mixed.rdims, (std::vector<int64_t>{7}));
  EXPECT_EQ(m::make_reduce_plan({3, 4}, {3, 4}).kind, m::ReduceKind::copy);
  EXPECT_EQ(m::make_reduce_plan({}, {}).kind, m::ReduceKind::copy);
  EXPECT_EQ(m::make_reduce_plan({0, 4}, {1, 4}).kind, m::ReduceKind::fill);
  EXPECT_EQ(m::make_reduce_plan({4, 0}, {4, 0}).kind, m::ReduceKind::nothing);
}
