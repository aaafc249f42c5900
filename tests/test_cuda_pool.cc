// CUDA MaxPool, AveragePool, GlobalAveragePool and their oxtrain.*Grad kernels against their
// CPU twins on odd shapes: ResNet's stem (3x3 stride 2 pad 1), ceil_mode, overlapping windows,
// asymmetric and SAME pads, dilation; ties (constant input, +0 and -0), NaN, windows that hold
// only padding. Both devices run the arithmetic of runtime/math/pool.h in the same order, so
// everything but GlobalAveragePool's sum is expected bit for bit; the tests say so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::cuda_bitwise_matches_cpu;
using test::cuda_matches_cpu;
using test::element;
using test::KernelCase;
using test::random_tensor;
using test::set_element;

namespace {

// AveragePool and its gradient add the same elements in the same order on both devices and
// divide once (IEEE division: the build does not use fast math), so they should agree bit for
// bit. The bound (about 8 float32 ulps of the largest value) only allows for a division rounded
// differently; a wrong window, divisor or padding rule moves some output of these random
// inputs by 1e-2 or more.
constexpr double kAverageRtol = 1e-6;
// GlobalAveragePool: the GPU sums a plane in double in another order than the CPU's sequential
// double sum; the two sums differ by about size * 2^-53 relative, far below float32's rounding,
// so the means differ by at most one float32 rounding (2^-24 relative to the mean, at most
// 6e-8 of the largest mean). A wrong plane or size is off by far more.
constexpr double kGlobalRtol = 1e-6;

struct PoolParams {
  std::string label;
  Shape x;
  std::vector<int64_t> kernel, strides, pads, dilations;  // empty: attribute omitted
  std::string auto_pad;                                   // empty: attribute omitted
  int64_t ceil_mode = 0;
};

void set_pool_attrs(KernelCase& k, const PoolParams& p) {
  k.set_attr("kernel_shape", Attribute{p.kernel});
  if (!p.strides.empty()) k.set_attr("strides", Attribute{p.strides});
  if (!p.pads.empty()) k.set_attr("pads", Attribute{p.pads});
  if (!p.dilations.empty()) k.set_attr("dilations", Attribute{p.dilations});
  if (!p.auto_pad.empty()) k.set_attr("auto_pad", Attribute{p.auto_pad});
  k.set_attr("ceil_mode", Attribute{p.ceil_mode});
}

// The pooled shape as the graph infers it (the same window_geometry the kernels use).
Shape pooled_shape(const PoolParams& p) {
  int64_t out[2];
  for (int i = 0; i < 2; ++i) {
    const int64_t in = p.x[i + 2], k = p.kernel[i];
    const int64_t s = p.strides.empty() ? 1 : p.strides[i];
    const int64_t d = p.dilations.empty() ? 1 : p.dilations[i];
    int64_t pb = p.pads.empty() ? 0 : p.pads[i], pe = p.pads.empty() ? 0 : p.pads[i + 2];
    const int64_t eff = (k - 1) * d + 1;
    if (p.auto_pad == "SAME_UPPER" || p.auto_pad == "SAME_LOWER") {
      const int64_t o = (in + s - 1) / s;
      const int64_t total = std::max<int64_t>(0, (o - 1) * s + eff - in);
      pb = p.auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      pe = total - pb;
    } else if (p.auto_pad == "VALID") {
      pb = pe = 0;
    }
    const int64_t span = in + pb + pe - eff;
    out[i] = (p.ceil_mode ? (span + s - 1) / s : span / s) + 1;
    if (p.ceil_mode && (out[i] - 1) * s >= in + pb) --out[i];
  }
  return {p.x[0], p.x[1], out[0], out[1]};
}


// Values in {-2, -1, -0, +0, 1}: many ties, zeros of both signs.
Tensor tie_heavy(const Shape& shape, uint64_t seed) {
  Tensor t = random_tensor(DType::f32, shape, seed, -2.0, 2.0);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double v = std::floor(element(t, i));
    if (v == 0.0 && i % 2) v = -0.0;
    set_element(t, i, v);
  }
  return t;
}

const std::vector<PoolParams>& max_cases() {
  static const std::vector<PoolParams> all = {
      {"stem 3x3 stride 2 pad 1", {5, 7, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0},
      // Even sizes: ceil_mode adds a last window that starts on the last row / column.
      {"stem 3x3 stride 2 pad 1 ceil", {5, 7, 12, 14}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 1},
      {"3x3 stride 1 pad 1 (overlapping)", {3, 5, 9, 11}, {3, 3}, {1, 1}, {1, 1, 1, 1}, {}, "", 0},
      {"3x3 stride 2 ceil no pads", {3, 5, 8, 10}, {3, 3}, {2, 2}, {}, {}, "", 1},
      {"2x2 stride 2 pad 1 ceil, last window dropped", {2, 3, 7, 9}, {2, 2}, {2, 2},
       {1, 1, 1, 1}, {}, "", 1},
      {"3x2 stride (2,1) asym pads ceil", {2, 5, 12, 7}, {3, 2}, {2, 1}, {1, 0, 1, 1}, {}, "", 1},
      {"dilation (2,1) stride 2", {2, 4, 12, 11}, {3, 3}, {2, 2}, {2, 1, 2, 1}, {2, 1}, "", 0},
      {"dilation 2 stride 1 (overlapping)", {2, 3, 9, 8}, {2, 2}, {}, {1, 1, 1, 1}, {2, 2}, "", 0},
      {"SAME_UPPER", {2, 3, 11, 12}, {3, 3}, {2, 2}, {}, {}, "SAME_UPPER", 0},
      {"SAME_LOWER even kernel", {2, 3, 11, 12}, {2, 2}, {2, 2}, {}, {}, "SAME_LOWER", 0},
      {"VALID stride 3", {2, 3, 13, 10}, {3, 3}, {3, 3}, {}, {}, "VALID", 0},
  };
  return all;
}

const std::vector<PoolParams>& avg_cases() {
  static const std::vector<PoolParams> all = {
      {"3x3 stride 2 pad 1", {5, 7, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0},
      // ceil_mode's last window: 2 rows inside the padded input, 1 of them real.
      {"3x3 stride 2 pad 1 ceil", {5, 7, 12, 14}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 1},
      {"3x3 stride 1 asym pads (overlapping)", {3, 4, 7, 9}, {3, 3}, {}, {0, 1, 2, 1}, {}, "", 0},
      {"2x2 stride 2 pad 1 ceil, last window dropped", {2, 3, 7, 9}, {2, 2}, {2, 2},
       {1, 1, 1, 1}, {}, "", 1},
      {"3x2 stride (3,1) asym pads", {3, 4, 13, 7}, {3, 2}, {3, 1}, {1, 0, 2, 1}, {}, "", 0},
      {"SAME_LOWER even kernel", {2, 3, 11, 12}, {4, 4}, {2, 2}, {}, {}, "SAME_LOWER", 0},
      {"whole plane", {2, 3, 7, 7}, {7, 7}, {}, {}, {}, "", 0},
      {"3x3 stride 2 dilation (2,3) pad 2 ceil", {2, 3, 13, 14}, {3, 3}, {2, 2}, {2, 2, 2, 2}, {2, 3}, "", 1},
  };
  return all;
}

KernelCase max_pool_case(const PoolParams& p, const Tensor& x, bool with_indices = true) {
  Shape out = pooled_shape(p);
  KernelCase k("MaxPool", "", {x},
               {{DType::f32, out}, {with_indices ? DType::i64 : DType::undefined, out}});
  set_pool_attrs(k, p);
  return k;
}

// How MaxPoolGrad learns the forward window.
enum class GradWindow { own_attributes, from_producer, unknown };

const char* window_name(GradWindow w) {
  switch (w) {
    case GradWindow::own_attributes: return "window from its attributes (gather)";
    case GradWindow::from_producer: return "window from the MaxPool that made Indices (gather)";
    default: return "window unknown (scatter per plane)";
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// MaxPool.

TEST(CudaPool, MaxPoolMatchesCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 1000;
  for (const PoolParams& p : max_cases())
    for (bool ties : {false, true})
      for (bool with_indices : {true, false}) {
        SCOPED_TRACE(p.label + (ties ? ", ties" : "") + (with_indices ? "" : ", no Indices"));
        Tensor x = ties ? tie_heavy(p.x, ++seed) : random_tensor(DType::f32, p.x, ++seed);
        KernelCase k = max_pool_case(p, x, with_indices);
        // Y: 0 difference; Indices: equal integers, in both storage orders.
        EXPECT_TRUE(cuda_matches_cpu(k, 0.0));
        EXPECT_TRUE(cuda_bitwise_matches_cpu(k));
        k.set_attr("storage_order", Attribute{int64_t{1}});
        EXPECT_TRUE(cuda_bitwise_matches_cpu(k));
      }
}

// Constant input: every element of a window ties, so the index says which one wins (the first
// real element in row-major window order); the CPU's choice must be the GPU's. Zeros of both
// signs tie too: the first one's sign must come out.
TEST(CudaPool, MaxPoolTiesPickTheCpuIndex) {
  OXTRAIN_REQUIRE_GPU();
  const PoolParams cases[] = {
      {"stem", {5, 7, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0},
      {"3x3 stride 1 pad 1 ceil", {3, 4, 9, 10}, {3, 3}, {1, 1}, {1, 1, 1, 1}, {}, "", 1},
      {"dilation 2", {2, 3, 9, 8}, {2, 2}, {}, {1, 1, 1, 1}, {2, 2}, "", 0},
  };
  for (const PoolParams& p : cases) {
    SCOPED_TRACE(p.label);
    Tensor constant(DType::f32, p.x);
    for (int64_t i = 0; i < constant.numel(); ++i) set_element(constant, i, 0.75);
    KernelCase k = max_pool_case(p, constant);
    EXPECT_TRUE(cuda_bitwise_matches_cpu(k));
    // The indices are the first real element of each window, so the first and last windows of
    // a plane name different elements: a kernel that always took element 0 would fail here.
    const Shape out = pooled_shape(p);
    EXPECT_NE(element(k.output(1), 0), element(k.output(1), out[2] * out[3] - 1));

    Tensor zeros(DType::f32, p.x);
    for (int64_t i = 0; i < zeros.numel(); ++i) set_element(zeros, i, (i * 7) % 3 ? 0.0 : -0.0);
    KernelCase z = max_pool_case(p, zeros);
    EXPECT_TRUE(cuda_bitwise_matches_cpu(z));
  }
}

// NaN beats every number and the first NaN of a window wins; a window of padding alone gives
// -inf and index -1. cuda_matches_cpu refuses non-finite values, so these compare bytes.
TEST(CudaPool, MaxPoolNaNAndEmptyWindows) {
  OXTRAIN_REQUIRE_GPU();
  const PoolParams nan_case{"stem", {5, 7, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0};
  Tensor x = random_tensor(DType::f32, nan_case.x, 77);
  for (int64_t i = 0; i < x.numel(); i += 5) set_element(x, i, std::nan(""));
  set_element(x, 6, -std::numeric_limits<double>::quiet_NaN());
  KernelCase k = max_pool_case(nan_case, x);
  EXPECT_TRUE(cuda_bitwise_matches_cpu(k));

  // Pads as wide as the window: the first and last rows and columns of windows see no input.
  const PoolParams empty{"padding only", {2, 3, 5, 6}, {2, 2}, {1, 1}, {2, 2, 2, 2}, {}, "", 0};
  KernelCase e = max_pool_case(empty, random_tensor(DType::f32, empty.x, 78));
  EXPECT_TRUE(cuda_bitwise_matches_cpu(e));
  EXPECT_EQ(element(e.output(1), 0), -1.0);
  EXPECT_TRUE(std::isinf(element(e.output(0), 0)));
}

// dX = 0, dX[Indices] += dY, bit for bit: the gather adds a dX element's dY in ascending output
// order, which is the CPU's order. Ties make one element win several overlapping windows, so
// the order of its additions matters.
TEST(CudaPool, MaxPoolGradMatchesCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 2000;
  for (const PoolParams& p : max_cases())
    for (bool ties : {false, true})
      for (GradWindow window :
           {GradWindow::own_attributes, GradWindow::from_producer, GradWindow::unknown}) {
        SCOPED_TRACE(p.label + (ties ? ", ties, " : ", ") + window_name(window));
        Tensor x = ties ? tie_heavy(p.x, ++seed) : random_tensor(DType::f32, p.x, ++seed);
        KernelCase fwd = max_pool_case(p, x);
        fwd.run();
        Tensor dy = random_tensor(DType::f32, pooled_shape(p), ++seed);
        KernelCase k("MaxPoolGrad", "oxtrain", {dy, fwd.output(1)}, {{DType::f32, p.x}});
        k.set_attr("input_shape", Attribute{p.x});
        if (window == GradWindow::own_attributes) set_pool_attrs(k, p);
        if (window == GradWindow::from_producer) k.node().inputs[1]->producer = &fwd.node();
        EXPECT_TRUE(cuda_matches_cpu(k, 0.0));
        EXPECT_TRUE(cuda_bitwise_matches_cpu(k));
      }
}

// Column-major Indices (MaxPool storage_order=1) from a producer the gradient node knows, with
// the window in the gradient node's own attributes: the gather would compare them with
// row-major positions, so the kernel scatters, as the CPU does.
TEST(CudaPool, MaxPoolGradTakesColumnMajorIndices) {
  OXTRAIN_REQUIRE_GPU();
  const PoolParams p{"3x3 stride 2 pad 1", {2, 3, 9, 7}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0};
  KernelCase fwd = max_pool_case(p, random_tensor(DType::f32, p.x, 2101));
  fwd.set_attr("storage_order", Attribute{int64_t{1}});
  fwd.run();
  KernelCase k("MaxPoolGrad", "oxtrain", {random_tensor(DType::f32, pooled_shape(p), 2102), fwd.output(1)},
               {{DType::f32, p.x}});
  k.set_attr("input_shape", Attribute{p.x});
  set_pool_attrs(k, p);
  k.node().inputs[1]->producer = &fwd.node();
  EXPECT_TRUE(cuda_bitwise_matches_cpu(k));
}

// MaxPoolGradFromInput finds each window's maximum in X again: the same bits as the CPU's.
TEST(CudaPool, MaxPoolGradFromInputMatchesCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 2500;
  for (const PoolParams& p : max_cases())
    for (bool ties : {false, true}) {
      SCOPED_TRACE(p.label + (ties ? ", ties" : ""));
      Tensor x = ties ? tie_heavy(p.x, ++seed) : random_tensor(DType::f32, p.x, ++seed);
      Tensor dy = random_tensor(DType::f32, pooled_shape(p), ++seed);
      KernelCase k("MaxPoolGradFromInput", "oxtrain", {dy, x}, {{DType::f32, p.x}});
      set_pool_attrs(k, p);
      EXPECT_TRUE(cuda_bitwise_matches_cpu(k));
    }
}

// Rank 5 (3-D pooling's Indices): no 2-D window, so the per-plane scatter runs.
TEST(CudaPool, MaxPoolGradRank5Scatter) {
  OXTRAIN_REQUIRE_GPU();
  const Shape x_shape{2, 3, 4, 5, 6}, y_shape{2, 3, 2, 3, 3};
  Tensor dy = random_tensor(DType::f32, y_shape, 5);
  Tensor indices(DType::i64, y_shape);
  const int64_t in_plane = 4 * 5 * 6, out_plane = 2 * 3 * 3;
  for (int64_t i = 0; i < indices.numel(); ++i) {
    const int64_t plane = i / out_plane;
    // Repeats within a plane: several outputs name the same element.
    set_element(indices, i, static_cast<double>(plane * in_plane + (i * 37) % 11));
  }
  KernelCase k("MaxPoolGrad", "oxtrain", {dy, indices}, {{DType::f32, x_shape}});
  k.set_attr("input_shape", Attribute{x_shape});
  EXPECT_TRUE(cuda_bitwise_matches_cpu(k));
}

// ---------------------------------------------------------------------------------------
// AveragePool.

TEST(CudaPool, AveragePoolMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 3000;
  for (const PoolParams& p : avg_cases())
    for (bool include_pad : {false, true}) {
      SCOPED_TRACE(p.label + (include_pad ? ", count_include_pad" : ""));
      KernelCase fwd("AveragePool", "", {random_tensor(DType::f32, p.x, ++seed)},
                     {{DType::f32, pooled_shape(p)}});
      set_pool_attrs(fwd, p);
      fwd.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
      EXPECT_TRUE(cuda_matches_cpu(fwd, kAverageRtol));

      KernelCase grad("AveragePoolGrad", "oxtrain",
                      {random_tensor(DType::f32, pooled_shape(p), ++seed)}, {{DType::f32, p.x}});
      set_pool_attrs(grad, p);
      grad.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
      grad.set_attr("input_shape", Attribute{p.x});
      EXPECT_TRUE(cuda_matches_cpu(grad, kAverageRtol));
    }
}

// ---------------------------------------------------------------------------------------
// GlobalAveragePool.

TEST(CudaPool, GlobalAveragePoolMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  // ResNet's head (7x7 planes), odd planes, one plane much larger than a warp, ranks 3 and 5.
  const Shape shapes[] = {{5, 7, 11, 13}, {4, 64, 7, 7}, {2, 3, 112, 113}, {2, 3, 10},
                          {2, 3, 4, 5, 3}, {3, 5, 1, 1}};
  uint64_t seed = 4000;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(graph::shape_str(s));
    Shape pooled = s;
    std::fill(pooled.begin() + 2, pooled.end(), 1);
    // Inputs in [0.5, 1.5): no cancellation, so the bound is relative to each mean too.
    KernelCase fwd("GlobalAveragePool", "", {random_tensor(DType::f32, s, ++seed, 0.5, 1.5)},
                   {{DType::f32, pooled}});
    EXPECT_TRUE(cuda_matches_cpu(fwd, kGlobalRtol));
    KernelCase signed_fwd("GlobalAveragePool", "", {random_tensor(DType::f32, s, ++seed)},
                          {{DType::f32, pooled}});
    EXPECT_TRUE(cuda_matches_cpu(signed_fwd, kGlobalRtol));

    // dY / size, the same division on both devices.
    KernelCase grad("GlobalAveragePoolGrad", "oxtrain", {random_tensor(DType::f32, pooled, ++seed)},
                    {{DType::f32, s}});
    grad.set_attr("input_shape", Attribute{s});
    EXPECT_TRUE(cuda_bitwise_matches_cpu(grad));
  }
}

// ---------------------------------------------------------------------------------------
// What the CUDA kernels refuse at compile time, naming the node.

TEST(CudaPool, RejectsWhatItCannotDo) {
  OXTRAIN_REQUIRE_GPU();
  auto expect_refused = [](KernelCase& k, const std::string& words) {
    try {
      k.run(17, runtime::Device::cuda);
      ADD_FAILURE() << k.node().describe() << " was accepted on CUDA";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(k.node().describe()), std::string::npos) << what;
      EXPECT_NE(what.find(words), std::string::npos) << what;
    }
  };
  const PoolParams p{"", {2, 3, 6, 6}, {2, 2}, {2, 2}, {}, {}, "", 0};
  {
    KernelCase k("MaxPool", "", {random_tensor(DType::f64, p.x, 1)},
                 {{DType::f64, pooled_shape(p)}, {DType::i64, pooled_shape(p)}});
    set_pool_attrs(k, p);
    expect_refused(k, "takes float32, got float64");
  }
  {
    KernelCase k = max_pool_case(p, random_tensor(DType::f32, p.x, 2));
    k.set_attr("storage_order", Attribute{int64_t{2}});
    expect_refused(k, "storage_order=2 must be 0 (row-major) or 1 (column-major)");
  }
  {
    KernelCase k("MaxPool", "", {random_tensor(DType::f32, {1, 2, 2, 6, 6, 6}, 3)},
                 {{DType::f32, {1, 2, 1, 3, 3, 3}}});
    k.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2, 2, 2, 2}});
    k.set_attr("strides", Attribute{std::vector<int64_t>{2, 2, 2, 2}});
    expect_refused(k, "only 1-D, 2-D and 3-D pooling");
  }
  {
    KernelCase k("GlobalAveragePoolGrad", "oxtrain", {random_tensor(DType::f64, {2, 3, 1, 1}, 5)},
                 {{DType::f64, p.x}});
    k.set_attr("input_shape", Attribute{p.x});
    expect_refused(k, "takes float32, got float64");
  }
}

// 3-D pooling ([N, C, D, H, W]): every op and gradient, bit for bit the CPU's (both run the
// window arithmetic tests/test_cpu_pool.cc checks against the CPU's N-D kernels), with ties,
// NaN, dilation, ceil_mode and padding-only windows.
TEST(CudaPool, ThreeDimensionalMatchesCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    PoolParams p;
    Shape out;
  };
  const Case cases[] = {
      {{"3x3x3 stride 2 pad 1", {2, 3, 7, 9, 8}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1, 1, 1, 1}, {}, "", 0}, {2, 3, 4, 5, 4}},
      {{"2x2x2 dilation (2,1,2) ceil", {2, 2, 8, 6, 9}, {2, 2, 2}, {2, 2, 1}, {1, 0, 1, 1, 0, 0}, {2, 1, 2}, "", 1},
       {2, 2, 5, 3, 8}},
      {{"padding as wide as the window", {1, 2, 3, 4, 5}, {2, 2, 2}, {1, 1, 1}, {2, 2, 2, 2, 2, 2}, {}, "", 0},
       {1, 2, 6, 7, 8}},
  };
  uint64_t seed = 3100;
  for (const Case& c : cases)
    for (bool ties : {false, true}) {
      SCOPED_TRACE(c.p.label + (ties ? ", ties and NaN" : ""));
      Tensor x = ties ? tie_heavy(c.p.x, ++seed) : random_tensor(DType::f32, c.p.x, ++seed);
      if (ties)
        for (int64_t i = 3; i < x.numel(); i += 41) set_element(x, i, std::nan(""));
      const Tensor dy = random_tensor(DType::f32, c.out, ++seed);
      for (int64_t order : {0, 1}) {
        KernelCase k("MaxPool", "", {x}, {{DType::f32, c.out}, {DType::i64, c.out}});
        set_pool_attrs(k, c.p);
        k.set_attr("storage_order", Attribute{order});
        EXPECT_TRUE(cuda_bitwise_matches_cpu(k)) << "storage_order " << order;
      }
      KernelCase from_input("MaxPoolGradFromInput", "oxtrain", {dy, x}, {{DType::f32, c.p.x}});
      set_pool_attrs(from_input, c.p);
      EXPECT_TRUE(cuda_bitwise_matches_cpu(from_input));
      for (int64_t include_pad : {0, 1}) {
        KernelCase f("AveragePool", "", {x}, {{DType::f32, c.out}});
        set_pool_attrs(f, c.p);
        f.set_attr("count_include_pad", Attribute{include_pad});
        EXPECT_TRUE(cuda_bitwise_matches_cpu(f, 17, test::NanBits::any)) << "count_include_pad " << include_pad;
        KernelCase b("AveragePoolGrad", "oxtrain", {dy}, {{DType::f32, c.p.x}});
        set_pool_attrs(b, c.p);
        b.set_attr("count_include_pad", Attribute{include_pad});
        b.set_attr("input_shape", Attribute{c.p.x});
        EXPECT_TRUE(cuda_bitwise_matches_cpu(b)) << "count_include_pad " << include_pad;
      }
    }
}
