// CUDA element-wise kernels, copies, Transpose and the reductions against their CPU twins.
//
// The element-wise ops, copies, Transpose, Sum and ReduceMeanGrad run the same IEEE operations
// in the same order on both devices (runtime/math/elementwise.h), so their outputs must agree
// bit for bit, -0 and NaN included. The reductions sum in double on both devices but in a
// different order, so they may differ in the last bit of the float32 result (see
// kReductionTolerance). Every test skips where no GPU is at hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device_runtime.h"
#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::cuda_bitwise_matches_cpu;
using test::cuda_matches_cpu;
using test::KernelCase;
using test::random_tensor;

namespace {

// Reductions: both devices add the float32 terms in double (exact to about 1e-16 of the sum
// of magnitudes whatever the order) and round the sum once to float32, so two results differ
// by at most one float32 ulp of the element, 2^-23 of its magnitude <= 1.2e-7 of the largest
// output. 1e-6 leaves room for the double sums' own rounding and still fails on any wrong
// element, which is off by a whole term.
constexpr double kReductionTolerance = 1e-6;


// Runs the node's CUDA kernel with output o in input alias[o]'s buffer (alias[o] < 0: its own
// buffer); the results are then in those inputs (or the outputs).
void run_cuda_aliased(KernelCase& kc, const std::vector<int>& alias) {
  using namespace runtime;
  graph::Node& n = kc.node();
  const KernelFactory* f = KernelRegistry::global().find(n.domain, n.op_type, Device::cuda);
  ASSERT_NE(f, nullptr);
  std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(Device::cuda, Precision::fp32);
  auto kernel = (*f)(KernelInit{n, 17, Device::cuda, &rt->context(), Precision::fp32});
  std::vector<void*> buffers;
  KernelArgs args;
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    Tensor& t = kc.input(i);
    void* p = rt->allocate(static_cast<int64_t>(t.bytes.size()), "a test input");
    buffers.push_back(p);
    rt->copy_to_device(p, t.bytes.data(), t.bytes.size());
    args.inputs.push_back(TensorView{p, t.dtype, t.shape});
  }
  for (size_t o = 0; o < n.outputs.size(); ++o) {
    Tensor& t = kc.output(o);
    void* p = nullptr;
    if (alias[o] >= 0) {
      p = args.inputs[alias[o]].data;
    } else {
      p = rt->allocate(static_cast<int64_t>(t.bytes.size()), "a test output");
      buffers.push_back(p);
    }
    args.outputs.push_back(TensorView{p, t.dtype, t.shape});
  }
  args.workspace_bytes = kernel->workspace_bytes();
  args.workspace = rt->allocate(static_cast<int64_t>(args.workspace_bytes), "the workspace");
  buffers.push_back(args.workspace);
  args.context = &rt->context();
  kernel->run(args);
  for (size_t o = 0; o < n.outputs.size(); ++o) {
    Tensor& t = alias[o] >= 0 ? kc.input(alias[o]) : kc.output(o);
    rt->copy_to_host(t.bytes.data(), args.outputs[o].data, t.bytes.size());
  }
  rt->synchronize();
  for (void* p : buffers) rt->release(p);
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

// Random values with special ones planted: -0, +0, infinities, a denormal, NaN (when
// `with_nan`), every 7th element.
Tensor special_tensor(Shape shape, uint64_t seed, bool with_nan) {
  Tensor t = random_tensor(DType::f32, std::move(shape), seed, -2.0, 2.0);
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> specials{-0.0f, 0.0f, inf, -inf, 1e-40f, -1e-40f};
  if (with_nan) specials.push_back(std::numeric_limits<float>::quiet_NaN());
  float* p = t.data<float>();
  for (int64_t i = 0, k = 0; i < t.numel(); i += 7, ++k) p[i] = specials[k % specials.size()];
  return t;
}

}  // namespace

TEST(CudaElementwise, BinaryBroadcastingIsExact) {
  OXTRAIN_REQUIRE_GPU();
  const std::pair<Shape, Shape> cases[] = {
      {{5, 7, 11, 13}, {5, 7, 11, 13}},  // same shape, 5005 elements: the scalar loop
      {{64, 32, 20, 20}, {64, 32, 20, 20}},  // same shape, float4 loads
      {{5, 1, 11, 1}, {7, 1, 13}},       // both sides broadcast, padded rank
      {{7, 1, 13}, {5, 1, 11, 1}},
      {{5, 7, 11, 13}, {}},              // scalar
      {{}, {5, 7, 11, 13}},
      {{}, {}},                          // rank 0
      {{5, 7, 11, 13}, {7, 1, 1}},       // per channel
      {{5, 7, 11, 13}, {1, 7, 1, 1}},
      {{3, 1, 5}, {1, 4, 1}},
      {{1, 9000}, {7, 1}},
      {{5, 0, 3}, {3}},                  // empty
  };
  for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
    uint64_t seed = 1;
    for (const auto& [sa, sb] : cases) {
      Tensor a = random_tensor(DType::f32, sa, seed++, -3.0, 3.0);
      // Divisors away from 0 (x/0 would give NaNs whose bits differ between devices).
      Tensor b = random_tensor(DType::f32, sb, seed++, 0.25, 2.0);
      KernelCase kc(op, "", {a, b}, {{DType::f32, broadcast(sa, sb)}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(kc))
          << op << " " << graph::shape_str(sa) << " " << graph::shape_str(sb);
    }
  }
  // Signed zeros and infinities (no NaN: arithmetic NaNs differ in their bits by device).
  Tensor a = special_tensor({5, 7, 11, 13}, 3, false);
  Tensor b = random_tensor(DType::f32, {7, 1, 13}, 4, 0.5, 1.5);
  for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
    KernelCase kc(op, "", {a, b}, {{DType::f32, {5, 7, 11, 13}}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(kc)) << op;
  }
  // The shared helper agrees: 0 difference.
  KernelCase add("Add", "", {random_tensor(DType::f32, {5, 1, 11, 1}, 5),
                             random_tensor(DType::f32, {7, 1, 13}, 6)},
                 {{DType::f32, {5, 7, 11, 13}}});
  EXPECT_TRUE(cuda_matches_cpu(add, 0.0));
}

TEST(CudaElementwise, UnaryAndReluGradAreExact) {
  OXTRAIN_REQUIRE_GPU();
  for (const Shape& s : {Shape{5, 7, 11, 13}, Shape{64, 32, 20, 20}, Shape{}, Shape{3}}) {
    Tensor x = special_tensor(s, 7, true);
    Tensor dy = special_tensor(s, 8, true);
    // Relu selects, so NaNs pass with their bits; negating a NaN may give any NaN (PTX
    // neg.f32), so Neg sees none.
    KernelCase relu("Relu", "", {x}, {{DType::f32, s}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(relu)) << graph::shape_str(s);
    KernelCase neg("Neg", "", {special_tensor(s, 7, false)}, {{DType::f32, s}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(neg)) << graph::shape_str(s);
    // ReluGrad at Y = 0, -0, NaN, denormals (x holds them all).
    KernelCase g("ReluGrad", "oxtrain", {dy, x}, {{DType::f32, s}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(g)) << graph::shape_str(s);
  }
  // The convention at 0, on the GPU itself.
  Tensor y = Tensor::from_float({0.0f, -0.0f, 1e-40f, -1.0f, 2.0f}, {5});
  Tensor dy = Tensor::from_float({1, 2, 3, 4, 5}, {5});
  KernelCase g("ReluGrad", "oxtrain", {dy, y}, {{DType::f32, {5}}});
  g.run(17, runtime::Device::cuda);
  EXPECT_EQ(test::values(g.output(0)), (std::vector<double>{0, 0, 3, 0, 5}));
  KernelCase r("Relu", "", {y}, {{DType::f32, {5}}});
  r.run(17, runtime::Device::cuda);
  EXPECT_TRUE(std::signbit(r.output(0).data<float>()[1]));  // -0 stays -0
}

TEST(CudaElementwise, InPlace) {
  OXTRAIN_REQUIRE_GPU();
  const Shape s{5, 7, 11, 13};
  Tensor x = special_tensor(s, 9, false);
  KernelCase cpu_relu("Relu", "", {x}, {{DType::f32, s}});
  cpu_relu.run();
  KernelCase relu("Relu", "", {x}, {{DType::f32, s}});
  run_cuda_aliased(relu, {0});
  EXPECT_EQ(relu.input(0).bytes, cpu_relu.output(0).bytes);

  // Add with the output in either same-shape operand's buffer, the other broadcast or not.
  for (int target : {0, 1}) {
    for (bool per_channel : {false, true}) {
      if (per_channel && target == 1) continue;  // the output never takes a smaller input's
      Tensor a = random_tensor(DType::f32, s, 10);
      Tensor b = random_tensor(DType::f32, per_channel ? Shape{7, 1, 1} : s, 11);
      KernelCase want("Add", "", {a, b}, {{DType::f32, s}});
      want.run();
      KernelCase add("Add", "", {a, b}, {{DType::f32, s}});
      run_cuda_aliased(add, {target});
      EXPECT_EQ(add.input(target).bytes, want.output(0).bytes)
          << "target " << target << " per_channel " << per_channel;
    }
  }

  // Sum of 3 and of 20 inputs (past one launch's operands: the running sum goes through the
  // workspace), the output in the last input's buffer.
  for (int count : {3, 20}) {
    std::vector<Tensor> ins;
    for (int i = 0; i < count; ++i) ins.push_back(random_tensor(DType::f32, s, 20 + i));
    KernelCase want("Sum", "", ins, {{DType::f32, s}});
    want.run();
    KernelCase sum("Sum", "", ins, {{DType::f32, s}});
    run_cuda_aliased(sum, {count - 1});
    EXPECT_EQ(sum.input(count - 1).bytes, want.output(0).bytes) << count;
  }

  // A copy into its own input's buffer: nothing to do, nothing lost.
  KernelCase id("Identity", "", {x}, {{DType::f32, s}});
  run_cuda_aliased(id, {0});
  EXPECT_EQ(id.input(0).bytes, x.bytes);
}

TEST(CudaElementwise, SumIsExact) {
  OXTRAIN_REQUIRE_GPU();
  // Broadcasting operands.
  KernelCase three("Sum", "", {random_tensor(DType::f32, {5, 1, 11, 1}, 30),
                               random_tensor(DType::f32, {7, 1, 13}, 31),
                               random_tensor(DType::f32, {13}, 32)},
                   {{DType::f32, {5, 7, 11, 13}}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(three));
  // One input: a copy.
  KernelCase one("Sum", "", {random_tensor(DType::f32, {5, 7, 11, 13}, 33)},
                 {{DType::f32, {5, 7, 11, 13}}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(one));
  // 33 inputs, broadcast ones among them: three launches through the workspace, added in the
  // CPU's order ((in0 + in1) + in2) + ... (values of mixed magnitudes, so order shows).
  std::vector<Tensor> many;
  for (int i = 0; i < 33; ++i) {
    Shape s = i % 5 == 3 ? Shape{7, 1, 13} : i % 5 == 4 ? Shape{} : Shape{5, 7, 11, 13};
    double scale = i % 3 == 0 ? 1e4 : 1e-3;
    many.push_back(random_tensor(DType::f32, s, 40 + i, -scale, scale));
  }
  KernelCase lots("Sum", "", many, {{DType::f32, {5, 7, 11, 13}}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(lots));
  // Rank 0.
  KernelCase scalars("Sum", "", {Tensor::from_float({1.5f}, {}), Tensor::from_float({2.25f}, {})},
                     {{DType::f32, {}}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(scalars));
}

TEST(CudaElementwise, CopiesAndDropoutMask) {
  OXTRAIN_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::i64}) {
    Tensor x = random_tensor(dt, {5, 7, 11, 13}, 50, -100, 100);
    for (const char* op : {"Identity", "Flatten", "Reshape", "Dropout"}) {
      std::vector<Tensor> ins{x};
      Shape out = x.shape;
      if (std::string(op) == "Flatten") out = {5, 1001};
      if (std::string(op) == "Reshape") {
        out = {35, 143};
        ins.push_back(Tensor::from_int64({35, 143}, {2}));
      }
      std::vector<test::OutputSpec> outs{{dt, out}};
      if (std::string(op) == "Dropout") outs.push_back({DType::boolean, x.shape});
      KernelCase kc(op, "", ins, outs);
      EXPECT_TRUE(cuda_bitwise_matches_cpu(kc)) << op;
      EXPECT_EQ(kc.output(0).bytes, x.bytes) << op;
      if (std::string(op) == "Dropout") {
        for (uint8_t m : kc.output(1).bytes) ASSERT_EQ(m, 1);
      }
    }
  }
  // Dropout without its mask, with ratio and training_mode inputs (inference).
  Tensor x = random_tensor(DType::f32, {4, 6}, 51);
  Tensor mode(DType::boolean, {});
  KernelCase kc("Dropout", "", {x, Tensor::from_float({0.5f}, {}), mode}, {{DType::f32, x.shape}});
  kc.run(13, runtime::Device::cuda);
  EXPECT_EQ(kc.output(0).bytes, x.bytes);
}

TEST(CudaElementwise, Transpose) {
  OXTRAIN_REQUIRE_GPU();
  const Shape s{5, 7, 11, 13};
  const std::vector<std::vector<int64_t>> perms = {
      {2, 0, 3, 1}, {0, 1, 3, 2}, {1, 0, 2, 3}, {3, 2, 1, 0}, {0, 1, 2, 3}, {}};
  for (DType dt : {DType::f32, DType::i64}) {
    Tensor x = random_tensor(dt, s, 60, -1000, 1000);
    for (const auto& p : perms) {
      std::vector<int64_t> perm = p.empty() ? std::vector<int64_t>{3, 2, 1, 0} : p;
      Shape out(4);
      for (size_t d = 0; d < 4; ++d) out[d] = s[perm[d]];
      KernelCase kc("Transpose", "", {x}, {{dt, out}});
      if (!p.empty()) kc.set_attr("perm", Attribute{p});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(kc)) << graph::shape_str(perm);
    }
  }
  // Only size-1 dims move: one contiguous copy.
  KernelCase ones("Transpose", "", {random_tensor(DType::f32, {5, 1, 7}, 61)},
                  {{DType::f32, {1, 5, 7}}});
  ones.set_attr("perm", Attribute{std::vector<int64_t>{1, 0, 2}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(ones));
  // A large 2-D transpose.
  KernelCase big("Transpose", "", {random_tensor(DType::f32, {300, 257}, 62)},
                 {{DType::f32, {257, 300}}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(big));
}

// One kernel that converts while it transposes: the CPU's Cast then Transpose, bit for bit,
// for a filter made [K, R, S, C] in half, its gradient made [K, C, R, S] in float32, and every
// other pair of float32 and the halves (NaN compared by bits: the conversion keeps its payload's
// quiet form on both devices, base/half.h). Large enough for many blocks, and one dimension of
// size 1 that the permutation moves.
TEST(CudaElementwise, CastTransposeConvertsAndTransposesInOnePass) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    Shape x;
    std::vector<int64_t> perm;
  };
  const Case cases[] = {{{256, 64, 3, 3}, {0, 2, 3, 1}}, {{256, 3, 3, 64}, {0, 3, 1, 2}},
                        {{64, 3, 7, 7}, {0, 2, 3, 1}},   {{5, 1, 7, 9}, {3, 2, 1, 0}}};
  uint64_t seed = 63;
  for (const Case& c : cases)
    for (DType from : {DType::f32, DType::f16, DType::bf16})
      for (DType to : {DType::f32, DType::f16, DType::bf16}) {
        Tensor x = random_tensor(from, c.x, seed++, -7e4, 7e4);
        test::set_element(x, 0, std::numeric_limits<double>::quiet_NaN());
        test::set_element(x, 1, -INFINITY);
        test::set_element(x, 2, -0.0);
        Shape out(4);
        for (size_t d = 0; d < 4; ++d) out[d] = c.x[c.perm[d]];
        KernelCase kc("CastTranspose", "oxtrain", {x}, {{to, out}});
        kc.set_attr("to", Attribute{int64_t{graph::dtype_to_onnx(to)}});
        kc.set_attr("perm", Attribute{c.perm});
        EXPECT_TRUE(cuda_bitwise_matches_cpu(kc)) << graph::dtype_name(from) << " to " << graph::dtype_name(to) << " "
                                                  << graph::shape_str(c.x) << " by " << graph::shape_str(c.perm);
      }
}

TEST(CudaElementwise, ReduceMean) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    Shape x;
    std::vector<int64_t> axes;  // empty: all
    int64_t keepdims;
  };
  const Case cases[] = {
      {{5, 7, 11, 13}, {2, 3}, 1}, {{5, 7, 11, 13}, {-1, -2}, 0}, {{5, 7, 11, 13}, {0, 2}, 1},
      {{5, 7, 11, 13}, {1}, 0},    {{5, 7, 11, 13}, {1, 3}, 1},   {{5, 7, 11, 13}, {}, 0},
      {{3, 1, 4}, {0}, 1},         {{32, 64, 7, 7}, {2, 3}, 1},   {{64, 8, 56, 56}, {0, 2, 3}, 1},
  };
  uint64_t seed = 70;
  for (const Case& c : cases) {
    Tensor x = random_tensor(DType::f32, c.x, seed++);
    const int64_t rank = static_cast<int64_t>(c.x.size());
    std::vector<bool> reduced(c.x.size(), c.axes.empty());
    for (int64_t a : c.axes) reduced[a < 0 ? a + rank : a] = true;
    Shape out;
    for (int64_t d = 0; d < rank; ++d) {
      if (!reduced[d]) out.push_back(c.x[d]);
      else if (c.keepdims) out.push_back(1);
    }
    // Opset 17: axes as an attribute.
    KernelCase a("ReduceMean", "", {x}, {{DType::f32, out}});
    if (!c.axes.empty()) a.set_attr("axes", Attribute{c.axes});
    a.set_attr("keepdims", Attribute{c.keepdims});
    EXPECT_TRUE(cuda_matches_cpu(a, kReductionTolerance, 17)) << graph::shape_str(c.axes);
    // Opset 18: axes as a constant input.
    std::vector<Tensor> ins{x};
    if (!c.axes.empty())
      ins.push_back(Tensor::from_int64(c.axes, {static_cast<int64_t>(c.axes.size())}));
    KernelCase b("ReduceMean", "", ins, {{DType::f32, out}});
    if (!c.axes.empty()) b.node().input(1)->data = std::make_shared<Tensor>(ins[1]);
    b.set_attr("keepdims", Attribute{c.keepdims});
    EXPECT_TRUE(cuda_matches_cpu(b, kReductionTolerance, 18)) << graph::shape_str(c.axes);
  }
  // Rank 0, and noop_with_empty_axes: copies.
  KernelCase scalar("ReduceMean", "", {Tensor::from_float({-2.5f}, {})}, {{DType::f32, {}}});
  scalar.set_attr("keepdims", Attribute{int64_t{0}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(scalar));
  Tensor x = random_tensor(DType::f32, {3, 1, 4}, 80);
  KernelCase noop("ReduceMean", "", {x}, {{DType::f32, x.shape}});
  noop.set_attr("noop_with_empty_axes", Attribute{int64_t{1}});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(noop, 18));
  // Axes that are not a constant of the graph cannot be read at compile time.
  KernelCase fed("ReduceMean", "", {x, Tensor::from_int64({0}, {1})}, {{DType::f32, {1, 1, 4}}});
  try {
    fed.run(18, runtime::Device::cuda);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("constant"), std::string::npos) << e.what();
  }
}

TEST(CudaElementwise, ReduceSumTo) {
  OXTRAIN_REQUIRE_GPU();
  const std::pair<Shape, Shape> cases[] = {
      {{5, 7, 11, 13}, {13}},          {{5, 7, 11, 13}, {1, 7, 1, 1}}, {{5, 7, 11, 13}, {7, 1, 1}},
      {{5, 7, 11, 13}, {5, 7, 11, 13}}, {{5, 7, 11, 13}, {5, 1, 11, 1}}, {{5, 7, 11, 13}, {}},
      {{6, 10}, {10}},                 {{6, 10}, {6, 1}},              {{3, 4, 5}, {3, 1, 5}},
      {{300, 700}, {700}},             {{2, 5, 3, 5}, {5}},            {{3, 1, 4}, {1, 4}},
      // Outputs of up to 2048 elements take a warp each, larger ones a block each; one
      // output summing 200704 elements is split into segments through the workspace.
      {{7, 9, 33, 40}, {9, 1, 1}},     {{64, 8, 56, 56}, {1, 8, 1, 1}},
      {{0, 4}, {4}},  // nothing to sum: zeros
  };
  uint64_t seed = 90;
  for (const auto& [xs, ys] : cases) {
    Tensor x = random_tensor(DType::f32, xs, seed++);
    KernelCase kc("ReduceSumTo", "oxtrain", {x}, {{DType::f32, ys}});
    kc.set_attr("shape", Attribute{std::vector<int64_t>(ys)});
    EXPECT_TRUE(cuda_matches_cpu(kc, kReductionTolerance))
        << graph::shape_str(xs) << " -> " << graph::shape_str(ys);
  }
  // Deterministic: the same bits on every run.
  Tensor x = random_tensor(DType::f32, {64, 8, 56, 56}, 99);
  KernelCase kc("ReduceSumTo", "oxtrain", {x}, {{DType::f32, {1, 8, 1, 1}}});
  kc.set_attr("shape", Attribute{std::vector<int64_t>{1, 8, 1, 1}});
  kc.run(17, runtime::Device::cuda);
  const std::vector<uint8_t> first = kc.output(0).bytes;
  for (int i = 0; i < 3; ++i) {
    kc.run(17, runtime::Device::cuda);
    EXPECT_EQ(kc.output(0).bytes, first) << "run " << i;
  }
}

TEST(CudaElementwise, ReduceMeanGradIsExact) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    Shape x;
    std::vector<int64_t> axes;
    int64_t keepdims;
  };
  const Case cases[] = {
      {{5, 7, 11, 13}, {2, 3}, 1}, {{5, 7, 11, 13}, {2, 3}, 0}, {{5, 7, 11, 13}, {0, 2}, 0},
      {{5, 7, 11, 13}, {1, 3}, 1}, {{3, 1, 4}, {0, 1, 2}, 0},   {{32, 64, 7, 7}, {2, 3}, 0},
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    Shape out;
    for (int64_t d = 0; d < static_cast<int64_t>(c.x.size()); ++d) {
      bool reduced = std::count(c.axes.begin(), c.axes.end(), d) != 0;
      if (!reduced) out.push_back(c.x[d]);
      else if (c.keepdims) out.push_back(1);
    }
    KernelCase grad("ReduceMeanGrad", "oxtrain", {random_tensor(DType::f32, out, seed++)},
                    {{DType::f32, c.x}});
    grad.set_attr("input_shape", Attribute{std::vector<int64_t>(c.x)});
    grad.set_attr("axes", Attribute{c.axes});
    grad.set_attr("keepdims", Attribute{c.keepdims});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(grad)) << graph::shape_str(c.axes);
  }
}

// float16 and bfloat16 natively: every operand widened on load, the op in float32, the result
// rounded once on store, as the CPU's emulation of half computes it (widened copies, the
// float32 kernel, rounded outputs): the same bits, in both the four-at-a-time path (a multiple
// of 4 elements) and the one-at-a-time path, broadcasting, and a Sum whose running float32
// total crosses launches. Reductions differ from the CPU only in their double sums' order: at
// most one unit in the last place of the half result.
TEST(CudaElementwise, HalfIsTheCpuEmulationBitForBit) {
  OXTRAIN_REQUIRE_GPU();
  for (DType h : {DType::f16, DType::bf16}) {
    SCOPED_TRACE(graph::dtype_name(h));
    uint64_t seed = 500;
    for (const Shape& s : {Shape{64, 32, 20, 20}, Shape{5, 7, 11, 13}, Shape{3}}) {
      SCOPED_TRACE(graph::shape_str(s));
      const Tensor a = random_tensor(h, s, ++seed, -3.0, 3.0);
      const Tensor b = random_tensor(h, s, ++seed, 0.25, 2.0);
      for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
        KernelCase kc(op, "", {a, b}, {{h, s}});
        EXPECT_TRUE(cuda_bitwise_matches_cpu(kc)) << op;
      }
      KernelCase relu("Relu", "", {a}, {{h, s}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(relu)) << "Relu";
      KernelCase neg("Neg", "", {a}, {{h, s}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(neg)) << "Neg";
      KernelCase relu_grad("ReluGrad", "oxtrain", {b, a}, {{h, s}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(relu_grad)) << "ReluGrad";
      // The residual join's gradient: two same-shape terms; and three.
      KernelCase sum2("Sum", "", {a, b}, {{h, s}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(sum2)) << "Sum of 2";
      KernelCase sum3("Sum", "", {a, b, random_tensor(h, s, ++seed)}, {{h, s}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(sum3)) << "Sum of 3";
    }
    // Broadcasting: a per-channel bias, both sides broadcast.
    const Shape big{5, 7, 11, 13};
    for (const char* op : {"Add", "Mul"}) {
      KernelCase bias(op, "", {random_tensor(h, big, ++seed), random_tensor(h, {7, 1, 1}, ++seed)}, {{h, big}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(bias)) << op << " per channel";
      KernelCase both(op, "", {random_tensor(h, {5, 1, 11, 1}, ++seed), random_tensor(h, {7, 1, 13}, ++seed)},
                      {{h, big}});
      EXPECT_TRUE(cuda_bitwise_matches_cpu(both)) << op << " both broadcast";
    }
    // 20 terms of mixed magnitudes, some broadcast: two launches, the running sum kept in
    // float32 between them and rounded once, as the CPU's emulation does (rounding it to half
    // between launches would show here).
    std::vector<Tensor> many;
    for (int i = 0; i < 20; ++i) {
      const Shape s = i % 7 == 3 ? Shape{7, 1, 13} : big;
      const double scale = i % 3 == 0 ? 100.0 : 1e-2;
      many.push_back(random_tensor(h, s, ++seed, -scale, scale));
    }
    KernelCase lots("Sum", "", many, {{h, big}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(lots)) << "Sum of 20";
    std::vector<Tensor> flat_many;
    for (int i = 0; i < 20; ++i) flat_many.push_back(random_tensor(h, {64, 32, 20, 20}, ++seed, -10.0, 10.0));
    KernelCase flat_lots("Sum", "", flat_many, {{h, {64, 32, 20, 20}}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(flat_lots)) << "Sum of 20, four at a time";

    // Reductions and ReduceMean's gradient.
    const double ulp = h == DType::bf16 ? 1.0 / 128 : 1.0 / 1024;
    const Tensor x = random_tensor(h, big, ++seed, 0.5, 1.5);  // one sign: the bound is relative to each output
    KernelCase sum_to("ReduceSumTo", "oxtrain", {x}, {{h, {7, 1, 1}}});
    sum_to.set_attr("shape", Attribute{std::vector<int64_t>{7, 1, 1}});
    EXPECT_TRUE(cuda_matches_cpu(sum_to, ulp)) << "ReduceSumTo";
    KernelCase sum_rows("ReduceSumTo", "oxtrain", {x}, {{h, {13}}});
    sum_rows.set_attr("shape", Attribute{std::vector<int64_t>{13}});
    EXPECT_TRUE(cuda_matches_cpu(sum_rows, ulp)) << "ReduceSumTo, inner dim kept";
    KernelCase mean("ReduceMean", "", {x}, {{h, {5, 1, 11, 1}}});
    mean.set_attr("axes", Attribute{std::vector<int64_t>{1, 3}});
    EXPECT_TRUE(cuda_matches_cpu(mean, ulp)) << "ReduceMean";
    KernelCase mean_grad("ReduceMeanGrad", "oxtrain", {random_tensor(h, {5, 1, 11, 1}, ++seed)}, {{h, big}});
    mean_grad.set_attr("axes", Attribute{std::vector<int64_t>{1, 3}});
    mean_grad.set_attr("input_shape", Attribute{big});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(mean_grad)) << "ReduceMeanGrad";

    // Moved by element size: a transpose as the channels-last pass writes them, a reshape.
    KernelCase to_last("Transpose", "", {random_tensor(h, big, ++seed)}, {{h, {5, 11, 13, 7}}});
    to_last.set_attr("perm", Attribute{std::vector<int64_t>{0, 2, 3, 1}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(to_last)) << "Transpose";
    KernelCase reshape("Reshape", "", {random_tensor(h, big, ++seed), Tensor::from_int64({35, 143}, {2})},
                       {{h, {35, 143}}});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(reshape)) << "Reshape";
  }
}

TEST(CudaElementwise, RefusesWhatItCannotDo) {
  OXTRAIN_REQUIRE_GPU();
  // float64: the CUDA kernels take float32.
  KernelCase f64("Add", "", {Tensor(DType::f64, {3}), Tensor(DType::f64, {3})},
                 {{DType::f64, {3}}});
  try {
    f64.run(17, runtime::Device::cuda);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("test_Add"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("float32"), std::string::npos) << e.what();
  }
  // Shapes that do not broadcast.
  KernelCase bad("Add", "", {Tensor(DType::f32, {3, 4}), Tensor(DType::f32, {5})},
                 {{DType::f32, {3, 4}}});
  EXPECT_THROW(bad.run(17, runtime::Device::cuda), Error);
  // A target that does not broadcast to the input.
  KernelCase sum_to("ReduceSumTo", "oxtrain", {Tensor(DType::f32, {5, 7, 11, 13})},
                    {{DType::f32, {7}}});
  sum_to.set_attr("shape", Attribute{std::vector<int64_t>{7}});
  EXPECT_THROW(sum_to.run(17, runtime::Device::cuda), Error);
  // A perm that is not a permutation.
  KernelCase perm("Transpose", "", {Tensor(DType::f32, {3, 4})}, {{DType::f32, {4, 3}}});
  perm.set_attr("perm", Attribute{std::vector<int64_t>{0, 0}});
  EXPECT_THROW(perm.run(17, runtime::Device::cuda), Error);
}
