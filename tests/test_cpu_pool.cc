// CPU MaxPool, AveragePool, GlobalAveragePool and their oxtrain.*Grad kernels against direct
// references (nested loops in double), adjoint identities, hand-computed MaxPool cases (ties,
// NaN, indices) and errors; and the window arithmetic of runtime/math/pool.h that the CUDA
// kernels run (which outputs cover an input element, MaxPoolGrad as a gather).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "base/half.h"
#include "graph/ir.h"
#include "graph/ops.h"
#include "runtime/math/pool.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::tolerance;
using test::element;
using test::KernelCase;
using test::random_tensor;
using test::set_element;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct PoolParams {
  std::string label;
  Shape x;
  std::vector<int64_t> kernel, strides, pads, dilations;  // empty: attribute omitted
  std::string auto_pad;                                   // empty: attribute omitted
  int64_t ceil_mode = 0;
};

// The window geometry, derived here (PyTorch's rule for ceil_mode: the last window must start
// inside the input or the leading padding).
struct RefGeom {
  int64_t k[2], s[2], d[2], pb[2], pe[2], out[2];
};

RefGeom ref_geometry(const PoolParams& p) {
  RefGeom g;
  for (int i = 0; i < 2; ++i) {
    g.k[i] = p.kernel[i];
    g.s[i] = p.strides.empty() ? 1 : p.strides[i];
    g.d[i] = p.dilations.empty() ? 1 : p.dilations[i];
    g.pb[i] = p.pads.empty() ? 0 : p.pads[i];
    g.pe[i] = p.pads.empty() ? 0 : p.pads[i + 2];
    const int64_t in = p.x[i + 2], eff = (g.k[i] - 1) * g.d[i] + 1;
    if (p.auto_pad == "SAME_UPPER" || p.auto_pad == "SAME_LOWER") {
      int64_t out = (in + g.s[i] - 1) / g.s[i];
      int64_t total = std::max<int64_t>(0, (out - 1) * g.s[i] + eff - in);
      g.pb[i] = p.auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      g.pe[i] = total - g.pb[i];
    } else if (p.auto_pad == "VALID") {
      g.pb[i] = g.pe[i] = 0;
    }
    const int64_t span = in + g.pb[i] + g.pe[i] - eff;
    int64_t out = (p.ceil_mode ? (span + g.s[i] - 1) / g.s[i] : span / g.s[i]) + 1;
    if (p.ceil_mode && (out - 1) * g.s[i] >= in + g.pb[i]) --out;
    g.out[i] = out;
  }
  return g;
}

Shape pooled_shape(const PoolParams& p) {
  RefGeom g = ref_geometry(p);
  return {p.x[0], p.x[1], g.out[0], g.out[1]};
}

void set_pool_attrs(KernelCase& k, const PoolParams& p) {
  k.set_attr("kernel_shape", Attribute{p.kernel});
  if (!p.strides.empty()) k.set_attr("strides", Attribute{p.strides});
  if (!p.pads.empty()) k.set_attr("pads", Attribute{p.pads});
  if (!p.dilations.empty()) k.set_attr("dilations", Attribute{p.dilations});
  if (!p.auto_pad.empty()) k.set_attr("auto_pad", Attribute{p.auto_pad});
  k.set_attr("ceil_mode", Attribute{p.ceil_mode});
}

// NaN-aware closeness: a non-finite result where a number is expected fails.
void expect_close(const Tensor& got, const std::vector<double>& ref,
                  const std::vector<double>& scale, double rtol, const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(ref.size())) << what;
  int failures = 0;
  for (int64_t i = 0; i < got.numel() && failures < 5; ++i) {
    const double g = element(got, i);
    const double tol = rtol * std::max(scale[i], 1e-3);
    if (!std::isfinite(g) || !(std::fabs(g - ref[i]) <= tol)) {
      ADD_FAILURE() << what << ": element " << i << " is " << g << ", expected " << ref[i];
      ++failures;
    }
  }
}

// Exact equality where NaN equals only NaN.
void expect_same(const Tensor& got, const std::vector<double>& ref, const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(ref.size())) << what;
  int failures = 0;
  for (int64_t i = 0; i < got.numel() && failures < 5; ++i) {
    const double g = element(got, i);
    const bool ok = std::isnan(ref[i]) ? std::isnan(g) : g == ref[i];
    if (!ok) {
      ADD_FAILURE() << what << ": element " << i << " is " << g << ", expected " << ref[i];
      ++failures;
    }
  }
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += element(a, i) * element(b, i);
  return s;
}

// ---------------------------------------------------------------------------------------
// MaxPool.

struct MaxRef {
  std::vector<double> y, indices;
};

// First maximum in row-major window order; padding never wins; NaN beats numbers.
MaxRef max_reference(const PoolParams& p, const Tensor& x) {
  RefGeom g = ref_geometry(p);
  const int64_t N = p.x[0], C = p.x[1], H = p.x[2], W = p.x[3];
  MaxRef r;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t oh = 0; oh < g.out[0]; ++oh)
        for (int64_t ow = 0; ow < g.out[1]; ++ow) {
          bool found = false;
          double best = 0;
          int64_t at = -1;
          for (int64_t kh = 0; kh < g.k[0]; ++kh)
            for (int64_t kw = 0; kw < g.k[1]; ++kw) {
              const int64_t h = oh * g.s[0] - g.pb[0] + kh * g.d[0];
              const int64_t w = ow * g.s[1] - g.pb[1] + kw * g.d[1];
              if (h < 0 || h >= H || w < 0 || w >= W) continue;
              const int64_t i = ((n * C + c) * H + h) * W + w;
              const double v = element(x, i);
              bool take = !found || (std::isnan(v) && !std::isnan(best)) || v > best;
              if (take) {
                found = true;
                best = v;
                at = i;
              }
            }
          r.y.push_back(best);
          r.indices.push_back(static_cast<double>(at));
        }
  return r;
}

struct MaxOut {
  Tensor y, indices;
};

MaxOut run_max_pool(const PoolParams& p, const Tensor& x, bool with_indices = true) {
  Shape out = pooled_shape(p);
  KernelCase k("MaxPool", "", {x},
               {{x.dtype, out}, {with_indices ? DType::i64 : DType::undefined, out}});
  set_pool_attrs(k, p);
  k.run();
  return {k.output(0), k.output(1)};
}

Tensor run_max_pool_grad(const Shape& x_shape, const Tensor& dy, const Tensor& indices) {
  KernelCase k("MaxPoolGrad", "oxtrain", {dy, indices}, {{dy.dtype, x_shape}});
  k.set_attr("input_shape", Attribute{x_shape});
  k.run();
  return k.output(0);
}

const std::vector<PoolParams>& max_cases() {
  static const std::vector<PoolParams> all = {
      {"3x3 stride 2 pad 1", {2, 3, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0},
      {"2x2 stride 2", {3, 4, 8, 9}, {2, 2}, {2, 2}, {}, {}, "", 0},
      {"3x3 stride 1 asym pads", {2, 3, 7, 9}, {3, 3}, {}, {0, 1, 2, 1}, {}, "", 0},
      {"3x3 stride 2 ceil", {2, 3, 8, 10}, {3, 3}, {2, 2}, {}, {}, "", 1},
      {"2x2 stride 2 pad 1 ceil, last window dropped", {2, 3, 7, 9}, {2, 2}, {2, 2},
       {1, 1, 1, 1}, {}, "", 1},
      {"3x2 stride (2,1) ceil", {2, 5, 12, 7}, {3, 2}, {2, 1}, {1, 0, 1, 1}, {}, "", 1},
      {"dilation 2", {2, 3, 9, 8}, {2, 2}, {}, {1, 1, 1, 1}, {2, 2}, "", 0},
      {"dilation (2,1) stride 2", {2, 4, 12, 11}, {3, 3}, {2, 2}, {2, 1, 2, 1}, {2, 1}, "", 0},
      {"SAME_UPPER", {2, 3, 11, 12}, {3, 3}, {2, 2}, {}, {}, "SAME_UPPER", 0},
      {"SAME_LOWER even kernel", {2, 3, 11, 12}, {2, 2}, {2, 2}, {}, {}, "SAME_LOWER", 0},
      {"VALID stride 3", {2, 3, 13, 10}, {3, 3}, {3, 3}, {}, {}, "VALID", 0},
  };
  return all;
}

// Values in {-2, -1, 0, 1}: many ties.
Tensor tie_heavy(DType dt, const Shape& shape, uint64_t seed) {
  Tensor t = random_tensor(dt, shape, seed, -2.0, 2.0);
  for (int64_t i = 0; i < t.numel(); ++i) set_element(t, i, std::floor(element(t, i)));
  return t;
}

// ---------------------------------------------------------------------------------------
// AveragePool.

struct AvgRef {
  std::vector<double> y, y_scale, dx, dx_scale;
};

// PyTorch's avg_pool2d, and ONNX's with dilations: with count_include_pad the window's taps
// inside the padded input count, else only its real elements.
AvgRef avg_reference(const PoolParams& p, bool include_pad, const Tensor& x, const Tensor& dy) {
  RefGeom g = ref_geometry(p);
  const int64_t N = p.x[0], C = p.x[1], H = p.x[2], W = p.x[3];
  AvgRef r;
  r.dx.assign(x.numel(), 0.0);
  r.dx_scale.assign(x.numel(), 0.0);
  int64_t yi = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t oh = 0; oh < g.out[0]; ++oh)
        for (int64_t ow = 0; ow < g.out[1]; ++ow, ++yi) {
          const int64_t h0 = oh * g.s[0] - g.pb[0], w0 = ow * g.s[1] - g.pb[1];
          std::vector<int64_t> rows, cols;  // the taps on real elements
          int64_t padded_rows = 0, padded_cols = 0;
          for (int64_t kh = 0; kh < g.k[0]; ++kh) {
            const int64_t h = h0 + kh * g.d[0];
            padded_rows += h < H + g.pe[0];
            if (h >= 0 && h < H) rows.push_back(h);
          }
          for (int64_t kw = 0; kw < g.k[1]; ++kw) {
            const int64_t w = w0 + kw * g.d[1];
            padded_cols += w < W + g.pe[1];
            if (w >= 0 && w < W) cols.push_back(w);
          }
          const double div = include_pad ? padded_rows * padded_cols : static_cast<double>(rows.size() * cols.size());
          double sum = 0, abs_sum = 0;
          for (int64_t h : rows)
            for (int64_t w : cols) {
              const int64_t i = ((n * C + c) * H + h) * W + w;
              sum += element(x, i);
              abs_sum += std::fabs(element(x, i));
              r.dx[i] += element(dy, yi) / div;
              r.dx_scale[i] += std::fabs(element(dy, yi) / div);
            }
          r.y.push_back(sum / div);
          r.y_scale.push_back(abs_sum / div);
        }
  return r;
}

Tensor run_avg_pool(const PoolParams& p, bool include_pad, const Tensor& x) {
  KernelCase k("AveragePool", "", {x}, {{x.dtype, pooled_shape(p)}});
  set_pool_attrs(k, p);
  k.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
  k.run();
  return k.output(0);
}

Tensor run_avg_pool_grad(const PoolParams& p, bool include_pad, const Tensor& dy) {
  KernelCase k("AveragePoolGrad", "oxtrain", {dy}, {{dy.dtype, p.x}});
  set_pool_attrs(k, p);
  k.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
  k.set_attr("input_shape", Attribute{p.x});
  k.run();
  return k.output(0);
}

const std::vector<PoolParams>& avg_cases() {
  static const std::vector<PoolParams> all = {
      {"3x3 stride 2 pad 1", {2, 3, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0},
      {"3x3 stride 1 asym pads", {2, 3, 7, 9}, {3, 3}, {}, {0, 1, 2, 1}, {}, "", 0},
      {"2x2 stride 2", {3, 4, 8, 9}, {2, 2}, {2, 2}, {}, {}, "", 0},
      {"3x3 stride 2 pad 1 ceil", {2, 5, 10, 12}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 1},
      {"2x2 stride 2 pad 1 ceil, last window dropped", {2, 3, 7, 9}, {2, 2}, {2, 2},
       {1, 1, 1, 1}, {}, "", 1},
      {"3x3 stride 2 ceil no pads", {2, 3, 8, 10}, {3, 3}, {2, 2}, {}, {}, "", 1},
      {"3x2 stride (3,1) asym pads", {3, 4, 13, 7}, {3, 2}, {3, 1}, {1, 0, 2, 1}, {}, "", 0},
      {"SAME_UPPER", {2, 3, 11, 12}, {3, 3}, {2, 2}, {}, {}, "SAME_UPPER", 0},
      {"SAME_LOWER even kernel", {2, 3, 11, 12}, {4, 4}, {2, 2}, {}, {}, "SAME_LOWER", 0},
      {"VALID stride 3", {2, 3, 13, 10}, {3, 3}, {3, 3}, {}, {}, "VALID", 0},
      {"whole plane", {2, 3, 7, 7}, {7, 7}, {}, {}, {}, "", 0},
      {"2x2 dilation 2", {2, 3, 9, 8}, {2, 2}, {}, {}, {2, 2}, "", 0},
      {"3x3 stride 2 dilation (2,3) pad 2 ceil", {2, 3, 13, 14}, {3, 3}, {2, 2}, {2, 2, 2, 2}, {2, 3}, "", 1},
      {"3x2 dilation 3 asym pads", {2, 2, 11, 9}, {3, 2}, {1, 2}, {0, 3, 2, 1}, {3, 3}, "", 0},
  };
  return all;
}

// ---------------------------------------------------------------------------------------
// GlobalAveragePool.

Shape global_shape(Shape x) {
  std::fill(x.begin() + 2, x.end(), 1);
  return x;
}

Tensor run_global(const Tensor& x) {
  KernelCase k("GlobalAveragePool", "", {x}, {{x.dtype, global_shape(x.shape)}});
  k.run();
  return k.output(0);
}

Tensor run_global_grad(const Shape& x_shape, const Tensor& dy) {
  KernelCase k("GlobalAveragePoolGrad", "oxtrain", {dy}, {{dy.dtype, x_shape}});
  k.set_attr("input_shape", Attribute{x_shape});
  k.run();
  return k.output(0);
}

}  // namespace

// ---------------------------------------------------------------------------------------

TEST(CpuPool, MaxPoolMatchesReference) {
  uint64_t seed = 10;
  for (DType dt : {DType::f32, DType::f64})
    for (const PoolParams& p : max_cases())
      for (bool ties : {false, true}) {
        SCOPED_TRACE(p.label + (ties ? ", ties" : "") +
                     (dt == DType::f32 ? " (float32)" : " (float64)"));
        Tensor x = ties ? tie_heavy(dt, p.x, ++seed) : random_tensor(dt, p.x, ++seed);
        MaxRef ref = max_reference(p, x);
        MaxOut out = run_max_pool(p, x);
        expect_same(out.y, ref.y, "Y");
        expect_same(out.indices, ref.indices, "Indices");
        // Without the optional Indices output.
        expect_same(run_max_pool(p, x, false).y, ref.y, "Y without Indices");
      }
}

// Hand-computed: 2x2 stride 2 on [1,2,4,4]; ties keep the first, NaN wins over numbers
// (also over a larger number before it), the first NaN stays, and indices count the channel.
TEST(CpuPool, MaxPoolTiesNaNAndIndices) {
  const std::vector<double> values = {
      1,    3, 3, 0,     //
      2,    3, 1, 1,     //
      7,    0, 5, kNaN,  //
      kNaN, 4, 5, kNaN,  //
      // channel 1: all equal
      -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x(dt, {1, 2, 4, 4});
    for (size_t i = 0; i < values.size(); ++i) set_element(x, static_cast<int64_t>(i), values[i]);
    PoolParams p{"", x.shape, {2, 2}, {2, 2}, {}, {}, "", 0};
    MaxOut out = run_max_pool(p, x);
    expect_same(out.y, {3, 3, kNaN, kNaN, -1, -1, -1, -1}, "Y");
    expect_same(out.indices, {1, 2, 12, 11, 16, 18, 24, 26}, "Indices");
  }
}

TEST(CpuPool, MaxPoolPaddingNeverWins) {
  Tensor x(DType::f32, {2, 3, 5, 6});
  for (int64_t i = 0; i < x.numel(); ++i) set_element(x, i, -2.0 - (i % 3));
  PoolParams p{"", x.shape, {3, 3}, {1, 1}, {1, 1, 1, 1}, {}, "", 0};
  MaxOut out = run_max_pool(p, x);
  MaxRef ref = max_reference(p, x);
  for (int64_t i = 0; i < out.y.numel(); ++i) EXPECT_LE(element(out.y, i), -2.0) << i;
  expect_same(out.y, ref.y, "Y");
  expect_same(out.indices, ref.indices, "Indices");
}

// dX = 0, dX[Indices] += dY, with overlapping windows (kernel 3, stride 1 and 2).
TEST(CpuPool, MaxPoolGradOverlappingWindows) {
  const PoolParams cases[] = {
      {"3x3 stride 1 pad 1", {2, 3, 9, 11}, {3, 3}, {1, 1}, {1, 1, 1, 1}, {}, "", 0},
      {"3x3 stride 1", {3, 4, 8, 7}, {3, 3}, {1, 1}, {}, {}, "", 0},
      {"3x3 stride 2 pad 1 ceil", {2, 3, 10, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 1},
  };
  uint64_t seed = 50;
  for (DType dt : {DType::f32, DType::f64})
    for (const PoolParams& p : cases)
      for (bool ties : {false, true}) {
        SCOPED_TRACE(p.label + (ties ? ", ties" : ""));
        Tensor x = ties ? tie_heavy(dt, p.x, ++seed) : random_tensor(dt, p.x, ++seed);
        MaxOut fwd = run_max_pool(p, x);
        MaxRef ref = max_reference(p, x);
        expect_same(fwd.indices, ref.indices, "Indices");
        Tensor dy = random_tensor(dt, pooled_shape(p), ++seed);
        std::vector<double> dx(x.numel(), 0.0), scale(x.numel(), 0.0);
        for (int64_t i = 0; i < dy.numel(); ++i) {
          const auto at = static_cast<int64_t>(ref.indices[i]);
          dx[at] += element(dy, i);
          scale[at] += std::fabs(element(dy, i));
        }
        expect_close(run_max_pool_grad(p.x, dy, fwd.indices), dx, scale, tolerance(dt), "dX");
      }
}

TEST(CpuPool, AveragePoolMatchesReference) {
  uint64_t seed = 100;
  for (DType dt : {DType::f32, DType::f64})
    for (const PoolParams& p : avg_cases())
      for (bool include_pad : {false, true}) {
        SCOPED_TRACE(p.label + (include_pad ? ", count_include_pad" : "") +
                     (dt == DType::f32 ? " (float32)" : " (float64)"));
        Tensor x = random_tensor(dt, p.x, ++seed);
        Tensor dy = random_tensor(dt, pooled_shape(p), ++seed);
        AvgRef ref = avg_reference(p, include_pad, x, dy);
        expect_close(run_avg_pool(p, include_pad, x), ref.y, ref.y_scale, tolerance(dt), "Y");
        expect_close(run_avg_pool_grad(p, include_pad, dy), ref.dx, ref.dx_scale, tolerance(dt),
                     "dX");
      }
}

// <AveragePool(X), dY> == <X, AveragePoolGrad(dY)>.
TEST(CpuPool, AveragePoolGradIsAdjoint) {
  uint64_t seed = 200;
  for (const PoolParams& p : avg_cases())
    for (bool include_pad : {false, true}) {
      SCOPED_TRACE(p.label + (include_pad ? ", count_include_pad" : ""));
      Tensor x = random_tensor(DType::f64, p.x, ++seed);
      Tensor dy = random_tensor(DType::f64, pooled_shape(p), ++seed);
      const double forward = dot(run_avg_pool(p, include_pad, x), dy);
      const double backward = dot(x, run_avg_pool_grad(p, include_pad, dy));
      ASSERT_TRUE(std::isfinite(forward) && std::isfinite(backward));
      EXPECT_NEAR(backward, forward, 1e-10 * std::max(1.0, std::fabs(forward)));
    }
}

TEST(CpuPool, GlobalAveragePool) {
  const Shape shapes[] = {{3, 5, 7, 9}, {2, 3, 13, 11}, {2, 3, 10}, {2, 3, 4, 5, 3}};
  uint64_t seed = 300;
  for (DType dt : {DType::f32, DType::f64})
    for (const Shape& s : shapes) {
      SCOPED_TRACE(graph::shape_str(s));
      Tensor x = random_tensor(dt, s, ++seed);
      Shape ys = global_shape(s);
      Tensor dy = random_tensor(dt, ys, ++seed);
      const int64_t planes = s[0] * s[1], size = x.numel() / planes;
      std::vector<double> y(planes, 0.0), y_scale(planes, 0.0), dx(x.numel()), dx_scale(x.numel());
      for (int64_t pl = 0; pl < planes; ++pl) {
        for (int64_t i = 0; i < size; ++i) {
          y[pl] += element(x, pl * size + i) / size;
          y_scale[pl] += std::fabs(element(x, pl * size + i)) / size;
          dx[pl * size + i] = element(dy, pl) / size;
          dx_scale[pl * size + i] = std::fabs(element(dy, pl)) / size;
        }
      }
      expect_close(run_global(x), y, y_scale, tolerance(dt), "Y");
      expect_close(run_global_grad(s, dy), dx, dx_scale, tolerance(dt), "dX");
      if (dt == DType::f64) {
        const double forward = dot(run_global(x), dy);
        const double backward = dot(x, run_global_grad(s, dy));
        ASSERT_TRUE(std::isfinite(forward) && std::isfinite(backward));
        EXPECT_NEAR(backward, forward, 1e-10 * std::max(1.0, std::fabs(forward)));
      }
    }
}

// The kernels write (=) their outputs: stale contents do not leak in (the gradients start from
// zero rather than adding to what the buffer held).
TEST(CpuPool, GradientsOverwriteOutputs) {
  const PoolParams p{"", {2, 3, 7, 9}, {3, 3}, {1, 1}, {1, 1, 1, 1}, {}, "", 0};
  Tensor x = random_tensor(DType::f64, p.x, 1);
  Tensor dy = random_tensor(DType::f64, pooled_shape(p), 2);
  MaxOut fwd = run_max_pool(p, x);
  KernelCase cases[] = {
      {"MaxPoolGrad", "oxtrain", {dy, fwd.indices}, {{DType::f64, p.x}}},
      {"AveragePoolGrad", "oxtrain", {dy}, {{DType::f64, p.x}}},
      {"GlobalAveragePoolGrad", "oxtrain", {random_tensor(DType::f64, {2, 3, 1, 1}, 3)},
       {{DType::f64, p.x}}},
  };
  for (KernelCase& k : cases) {
    set_pool_attrs(k, p);
    k.set_attr("input_shape", Attribute{p.x});
    k.run();
    Tensor first = k.output(0);
    for (int64_t i = 0; i < first.numel(); ++i) set_element(k.output(0), i, 1e30);
    k.run();
    EXPECT_EQ(0, std::memcmp(first.bytes.data(), k.output(0).bytes.data(), first.bytes.size()))
        << k.node().op_type;
  }
}

// storage_order=1: each index names the maximum's element in a column-major plane (h + w * H,
// ONNX's reference), the plane offset as before; Y is the same.
TEST(CpuPool, MaxPoolColumnMajorIndices) {
  const PoolParams p{"", {2, 3, 7, 5}, {3, 2}, {2, 1}, {1, 0, 1, 1}, {}, "", 0};
  Tensor x = random_tensor(DType::f32, p.x, 9);
  MaxOut rows = run_max_pool(p, x);
  KernelCase k("MaxPool", "", {x}, {{DType::f32, pooled_shape(p)}, {DType::i64, pooled_shape(p)}});
  set_pool_attrs(k, p);
  k.set_attr("storage_order", Attribute{int64_t{1}});
  k.run();
  EXPECT_EQ(0, std::memcmp(k.output(0).bytes.data(), rows.y.bytes.data(), rows.y.bytes.size()));
  const int64_t H = 7, W = 5, HW = H * W;
  for (int64_t i = 0; i < rows.indices.numel(); ++i) {
    const int64_t r = rows.indices.data<int64_t>()[i];
    const int64_t plane = r / HW, h = (r % HW) / W, w = r % W;
    EXPECT_EQ(k.output(1).data<int64_t>()[i], plane * HW + h + w * H) << i;
  }
}

// 3-D pooling (the N-D path) of [N, C, 1, H, W] with a depth-1 window gives the 2-D result of
// [N, C, H, W] bit for bit: values, Indices in both storage orders, and AveragePool's gradient.
// ONNX's 3-D node tests check real depth.
TEST(CpuPool, ThreeDimensionalPoolingOfOneSliceIsTwoDimensional) {
  uint64_t seed = 900;
  auto lift = [](const PoolParams& p) {
    PoolParams q = p;
    q.x.insert(q.x.begin() + 2, 1);
    q.kernel.insert(q.kernel.begin(), 1);
    if (!q.strides.empty()) q.strides.insert(q.strides.begin(), 1);
    if (!q.dilations.empty()) q.dilations.insert(q.dilations.begin(), 1);
    if (!q.pads.empty()) q.pads = {0, p.pads[0], p.pads[1], 0, p.pads[2], p.pads[3]};
    return q;
  };
  auto pooled3 = [](const PoolParams& p) {
    Shape s = pooled_shape(p);
    s.insert(s.begin() + 2, 1);
    return s;
  };
  auto same_bytes = [](const Tensor& a, const Tensor& b) {
    return a.bytes.size() == b.bytes.size() && std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
  };
  for (const PoolParams& p : max_cases()) {
    SCOPED_TRACE(p.label);
    const PoolParams q = lift(p);
    Tensor x = random_tensor(DType::f32, p.x, ++seed);
    for (int64_t order : {0, 1}) {
      KernelCase k2("MaxPool", "", {x}, {{DType::f32, pooled_shape(p)}, {DType::i64, pooled_shape(p)}});
      set_pool_attrs(k2, p);
      k2.set_attr("storage_order", Attribute{order});
      k2.run();
      Tensor x3 = x;
      x3.shape = q.x;
      KernelCase k3("MaxPool", "", {x3}, {{DType::f32, pooled3(p)}, {DType::i64, pooled3(p)}});
      set_pool_attrs(k3, q);
      k3.set_attr("storage_order", Attribute{order});
      k3.run();
      EXPECT_TRUE(same_bytes(k3.output(0), k2.output(0))) << "Y, storage_order " << order;
      EXPECT_TRUE(same_bytes(k3.output(1), k2.output(1))) << "Indices, storage_order " << order;
    }
  }
  for (const PoolParams& p : avg_cases())
    for (bool include_pad : {false, true}) {
      SCOPED_TRACE(p.label + (include_pad ? ", count_include_pad" : ""));
      const PoolParams q = lift(p);
      Tensor x = random_tensor(DType::f64, p.x, ++seed), dy = random_tensor(DType::f64, pooled_shape(p), ++seed);
      Tensor x3 = x, dy3 = dy;
      x3.shape = q.x;
      dy3.shape = pooled3(p);
      KernelCase f3("AveragePool", "", {x3}, {{DType::f64, pooled3(p)}});
      set_pool_attrs(f3, q);
      f3.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
      f3.run();
      Tensor y3 = f3.output(0);
      EXPECT_TRUE(same_bytes(y3, run_avg_pool(p, include_pad, x)));
      KernelCase g3("AveragePoolGrad", "oxtrain", {dy3}, {{DType::f64, q.x}});
      set_pool_attrs(g3, q);
      g3.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
      g3.set_attr("input_shape", Attribute{q.x});
      g3.run();
      // The 2-D gradient gathers per input, the N-D one scatters per output: the same sums
      // in another order, so within rounding; and the adjoint holds exactly in float64.
      expect_close(g3.output(0), test::values(run_avg_pool_grad(p, include_pad, dy)), std::vector<double>(x.numel(), 1.0),
                   1e-12, "dX");
      const double forward = dot(y3, dy3), backward = dot(x3, g3.output(0));
      EXPECT_NEAR(backward, forward, 1e-10 * std::max(1.0, std::fabs(forward)));
    }
}

TEST(CpuPool, RejectsUnsupported) {
  {
    KernelCase k("MaxPool", "", {Tensor(DType::f32, {1, 2, 6, 6})},
                 {{DType::f32, {1, 2, 3, 3}}, {DType::i64, {1, 2, 3, 3}}});
    k.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2, 2}});
    k.set_attr("strides", Attribute{std::vector<int64_t>{2, 2}});
    k.set_attr("storage_order", Attribute{int64_t{2}});
    try {
      k.run();
      FAIL() << "storage_order=2 was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("MaxPool 'test_MaxPool'"), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("storage_order"), std::string::npos) << e.what();
    }
  }
  {  // 3-D: the pooled shape must be what the window gives.
    KernelCase k("MaxPool", "", {Tensor(DType::f32, {1, 2, 6, 6, 6})},
                 {{DType::f32, {1, 2, 3, 3, 2}}});
    k.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2, 2, 2}});
    k.set_attr("strides", Attribute{std::vector<int64_t>{2, 2, 2}});
    EXPECT_THROW(k.run(), Error);
  }
  // A gradient whose output is not the shape its input_shape attribute names.
  {
    KernelCase k("GlobalAveragePoolGrad", "oxtrain", {Tensor(DType::f32, {1, 2, 1, 1})},
                 {{DType::f32, {1, 2, 4, 4}}});
    k.set_attr("input_shape", Attribute{std::vector<int64_t>{1, 2, 4, 5}});
    try {
      k.run();
      FAIL() << "a dX shape other than input_shape was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("[1,2,4,4] differs from input_shape [1,2,4,5]"),
                std::string::npos)
          << e.what();
    }
  }
}

// pool_cover + pool_tap_lands (the outputs whose window holds input x, which the CUDA gradients
// gather from) name exactly the outputs whose taps (pool_taps) land on x, over every small
// geometry: padding, strides larger than the kernel, dilation, ceil_mode's extra window.
TEST(CpuPool, CoverFindsExactlyTheWindowsOfAnInput) {
  namespace math = runtime::math;
  int64_t geometries = 0, hits = 0;
  for (int64_t in = 1; in <= 9; ++in)
    for (int64_t k = 1; k <= 4; ++k)
      for (int64_t s = 1; s <= 3; ++s)
        for (int64_t d = 1; d <= 3; ++d)
          for (int64_t pb = 0; pb <= 2; ++pb)
            for (int64_t pe = 0; pe <= 2; ++pe)
              for (bool ceil_mode : {false, true}) {
                const int64_t eff = (k - 1) * d + 1, span = in + pb + pe - eff;
                if (span < 0) continue;
                int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
                if (ceil_mode && (out - 1) * s >= in + pb) --out;
                const math::PoolAxis a{in, out, k, s, d, pb, pe};
                ++geometries;
                for (int64_t x = 0; x < in; ++x) {
                  std::vector<int64_t> want, got;
                  for (int64_t o = 0; o < out; ++o) {
                    const math::PoolTaps t = math::pool_taps(a, o);
                    for (int64_t tap = t.k_lo; tap < t.k_hi; ++tap)
                      if (t.start + tap * d == x) want.push_back(o);
                  }
                  const math::PoolRange r = math::pool_cover(a, x);
                  for (int64_t o = r.lo; o < r.hi; ++o)
                    if (math::pool_tap_lands(a, o, x)) got.push_back(o);
                  ASSERT_EQ(got, want) << "in " << in << " kernel " << k << " stride " << s
                                       << " dilation " << d << " pads " << pb << "," << pe
                                       << (ceil_mode ? " ceil" : "") << ", input " << x;
                  hits += static_cast<int64_t>(want.size());
                }
              }
  EXPECT_GT(geometries, 1000);
  EXPECT_GT(hits, 10000);  // the loops did look at windows
}

// MaxPoolGrad as the CUDA kernel computes it (math::max_pool_grad_at, gathered per input
// element from the windows that cover it) equals the CPU kernel's scatter bit for bit: the same
// additions in the same order. Overlapping windows and ties make elements win several windows.
TEST(CpuPool, MaxPoolGradGatherMatchesScatterBitwise) {  // and MaxPoolGradFromInput
  namespace math = runtime::math;
  const PoolParams cases[] = {
      {"stem 3x3 stride 2 pad 1", {5, 7, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0},
      {"3x3 stride 1 pad 1", {2, 3, 9, 11}, {3, 3}, {1, 1}, {1, 1, 1, 1}, {}, "", 0},
      {"3x3 stride 2 pad 1 ceil", {2, 3, 10, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 1},
      {"dilation 2 stride 1", {2, 3, 9, 8}, {2, 2}, {}, {1, 1, 1, 1}, {2, 2}, "", 0},
      {"SAME_LOWER even kernel", {2, 3, 11, 12}, {2, 2}, {2, 2}, {}, {}, "SAME_LOWER", 0},
      {"padding as wide as the window", {2, 3, 5, 6}, {2, 2}, {1, 1}, {2, 2, 2, 2}, {}, "", 0},
  };
  uint64_t seed = 700;
  for (DType dt : {DType::f32, DType::f64})
    for (const PoolParams& p : cases)
      for (bool ties : {false, true}) {
        SCOPED_TRACE(p.label + (ties ? ", ties" : "") +
                     (dt == DType::f32 ? " (float32)" : " (float64)"));
        Tensor x = ties ? tie_heavy(dt, p.x, ++seed) : random_tensor(dt, p.x, ++seed);
        // Some NaN too: the first NaN of a window is its maximum.
        if (ties)
          for (int64_t i = 5; i < x.numel(); i += 37) set_element(x, i, std::nan(""));
        const Shape out = pooled_shape(p);
        KernelCase fwd("MaxPool", "", {x}, {{dt, out}, {DType::i64, out}});
        set_pool_attrs(fwd, p);
        fwd.run();
        const Tensor& indices = fwd.output(1);
        Tensor dy = random_tensor(dt, out, ++seed);
        Tensor dx = run_max_pool_grad(p.x, dy, indices);

        const math::Pool2d g =
            math::pool_window_2d(fwd.node(), p.x, p.ceil_mode != 0, runtime::Device::cpu);
        ASSERT_EQ(g.rows.out, out[2]);
        ASSERT_EQ(g.cols.out, out[3]);
        Tensor gathered(dt, p.x);
        const int64_t HW = g.in_plane(), P = g.out_plane();
        for (int64_t pl = 0; pl < g.planes(); ++pl)
          for (int64_t h = 0; h < g.rows.in; ++h)
            for (int64_t w = 0; w < g.cols.in; ++w) {
              const int64_t i = pl * HW + h * g.cols.in + w;
              const int64_t* idx = indices.data<int64_t>() + pl * P;
              if (dt == DType::f32)
                gathered.data<float>()[i] =
                    math::max_pool_grad_at(g, dy.data<float>() + pl * P, idx, pl, h, w);
              else
                gathered.data<double>()[i] =
                    math::max_pool_grad_at(g, dy.data<double>() + pl * P, idx, pl, h, w);
            }
        EXPECT_EQ(0, std::memcmp(gathered.bytes.data(), dx.bytes.data(), dx.bytes.size()));
        // MaxPoolGradFromInput finds the maxima in X again, and its gather form (the GPU's)
        // adds in the same order: both give the Indices' result bit for bit.
        KernelCase from_input("MaxPoolGradFromInput", "oxtrain", {dy, x}, {{dt, p.x}});
        set_pool_attrs(from_input, p);
        from_input.run();
        EXPECT_EQ(0, std::memcmp(from_input.output(0).bytes.data(), dx.bytes.data(), dx.bytes.size()));
        Tensor gathered_from_input(dt, p.x);
        for (int64_t pl = 0; pl < g.planes(); ++pl)
          for (int64_t h = 0; h < g.rows.in; ++h)
            for (int64_t w = 0; w < g.cols.in; ++w) {
              const int64_t i = pl * HW + h * g.cols.in + w;
              if (dt == DType::f32)
                gathered_from_input.data<float>()[i] = math::max_pool_grad_from_input_at(
                    g, dy.data<float>() + pl * P, x.data<float>() + pl * HW, h, w);
              else
                gathered_from_input.data<double>()[i] = math::max_pool_grad_from_input_at(
                    g, dy.data<double>() + pl * P, x.data<double>() + pl * HW, h, w);
            }
        EXPECT_EQ(0, std::memcmp(gathered_from_input.bytes.data(), dx.bytes.data(), dx.bytes.size()));
        // Not all zero: the gradient did reach the input.
        double total = 0;
        for (int64_t i = 0; i < dx.numel(); ++i) total += std::fabs(element(dx, i));
        EXPECT_GT(total, 0.0);
      }
}

// The GPU's 2-D pooling kernels take channels-first and channels-last, float32 and half, as
// stored: one element per thread through runtime/math/pool.h's element functions (which
// element a thread is, where its planes lie, the window arithmetic), widening half on load and
// rounding on store. Run here on the host, those bodies give the CPU kernels' bits; the CPU
// sees channels-last through transposes and half through its float32 emulation. Every op of
// the GPU's 2-D pooling: MaxPool (values and Indices, ties, NaN), MaxPoolGradFromInput,
// AveragePool with and without the padding counted, AveragePoolGrad, GlobalAveragePool and its
// gradient.
TEST(CpuPool, GpuKernelBodiesMatchTheKernelsInEveryLayoutAndTypeBitwise) {
  namespace math = runtime::math;
  const PoolParams cases[] = {
      {"stem 3x3 stride 2 pad 1", {5, 7, 11, 13}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 0},
      {"3x3 stride 2 pad 1 ceil", {2, 3, 12, 14}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {}, "", 1},
      {"3x2 stride (2,1) dilation (2,1) asym pads", {2, 4, 12, 11}, {3, 2}, {2, 1}, {2, 0, 1, 1}, {2, 1}, "", 0},
      {"whole plane", {3, 5, 7, 7}, {7, 7}, {}, {}, {}, "", 0},
  };
  auto load = [](const Tensor& t) {
    return [&t](int64_t j) -> float {
      if (t.dtype == DType::f32) return t.data<float>()[j];
      return half_to_float(t.data<uint16_t>()[j], t.dtype == DType::bf16);
    };
  };
  auto store = [](Tensor& t, int64_t i, float v) {
    if (t.dtype == DType::f32) t.data<float>()[i] = v;
    else t.data<uint16_t>()[i] = float_to_half(v, t.dtype == DType::bf16);
  };
  auto same_bits = [](const Tensor& a, const Tensor& b) {
    return a.bytes.size() == b.bytes.size() && std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
  };
  uint64_t seed = 900;
  for (const PoolParams& p : cases)
    for (DType dt : {DType::f32, DType::f16, DType::bf16})
      for (bool nhwc : {false, true}) {
        SCOPED_TRACE(p.label + " " + graph::dtype_name(dt) + (nhwc ? " channels-last" : ""));
        const Shape y_logical = pooled_shape(p);
        const Shape xs = nhwc ? graph::to_channels_last_shape(p.x) : p.x;
        const Shape ys = nhwc ? graph::to_channels_last_shape(y_logical) : y_logical;
        const Shape pooled{p.x[0], p.x[1], 1, 1};
        const Shape gs = nhwc ? graph::to_channels_last_shape(pooled) : pooled;
        auto layout = [&](KernelCase& k) {
          set_pool_attrs(k, p);
          if (nhwc) k.set_attr(graph::kChannelsLast, Attribute{int64_t{1}});
        };
        Tensor x = tie_heavy(dt, xs, ++seed);
        for (int64_t i = 3; i < x.numel(); i += 41) set_element(x, i, kNaN);
        const Tensor smooth = random_tensor(dt, xs, ++seed);
        const Tensor dy = random_tensor(dt, ys, ++seed);
        const Tensor dg = random_tensor(dt, gs, ++seed);

        KernelCase cpu_for_window("MaxPool", "", {random_tensor(DType::f32, p.x, 1)}, {{DType::f32, y_logical}});
        set_pool_attrs(cpu_for_window, p);
        const math::Pool2d g = [&] {
          math::Pool2d r = math::pool_window_2d(cpu_for_window.node(), p.x, p.ceil_mode != 0, runtime::Device::cpu);
          r.batch = p.x[0];
          return r;
        }();
        ASSERT_EQ(g.rows.out, y_logical[2]);
        ASSERT_EQ(g.cols.out, y_logical[3]);

        // MaxPool, with Indices ([N, C, oH, oW] in either layout).
        KernelCase max_pool("MaxPool", "", {x}, {{dt, ys}, {DType::i64, y_logical}});
        layout(max_pool);
        max_pool.run();
        Tensor y(dt, ys), indices(DType::i64, y_logical);
        for (int64_t i = 0; i < y.numel(); ++i) {
          math::PoolElement e;
          const math::MaxPick<float> m = math::max_pool_output_at<float>(g, nhwc, i, load(x), e);
          store(y, i, m.value);
          const int64_t plane = e.n * g.channels + e.c;
          indices.data<int64_t>()[(plane * g.rows.out + e.h) * g.cols.out + e.w] =
              math::max_pool_index(g, plane, m.at, false);
        }
        EXPECT_TRUE(same_bits(y, max_pool.output(0))) << "MaxPool";
        EXPECT_TRUE(same_bits(indices, max_pool.output(1))) << "MaxPool Indices";

        KernelCase max_grad("MaxPoolGradFromInput", "oxtrain", {dy, x}, {{dt, xs}});
        layout(max_grad);
        max_grad.run();
        Tensor dx(dt, xs);
        for (int64_t i = 0; i < dx.numel(); ++i)
          store(dx, i, math::max_pool_grad_from_input_element<float>(g, nhwc, i, load(dy), load(x)));
        EXPECT_TRUE(same_bits(dx, max_grad.output(0))) << "MaxPoolGradFromInput";

        for (int64_t include_pad : {0, 1}) {
          SCOPED_TRACE(include_pad ? "count_include_pad" : "padding not counted");
          KernelCase avg("AveragePool", "", {smooth}, {{dt, ys}});
          layout(avg);
          avg.set_attr("count_include_pad", Attribute{include_pad});
          avg.run();
          Tensor ya(dt, ys);
          for (int64_t i = 0; i < ya.numel(); ++i)
            store(ya, i, math::avg_pool_output_at<float>(g, include_pad != 0, nhwc, i, load(smooth)));
          EXPECT_TRUE(same_bits(ya, avg.output(0))) << "AveragePool";

          KernelCase avg_grad("AveragePoolGrad", "oxtrain", {dy}, {{dt, xs}});
          layout(avg_grad);
          avg_grad.set_attr("count_include_pad", Attribute{include_pad});
          avg_grad.set_attr("input_shape", Attribute{std::vector<int64_t>(p.x)});
          avg_grad.run();
          Tensor da(dt, xs);
          for (int64_t i = 0; i < da.numel(); ++i)
            store(da, i, math::avg_pool_grad_element<float>(g, include_pad != 0, nhwc, i, load(dy)));
          EXPECT_TRUE(same_bits(da, avg_grad.output(0))) << "AveragePoolGrad";
        }

        const int64_t C = p.x[1], size = p.x[2] * p.x[3];
        KernelCase gap("GlobalAveragePool", "", {smooth}, {{dt, gs}});
        if (nhwc) gap.set_attr(graph::kChannelsLast, Attribute{int64_t{1}});
        gap.run();
        Tensor yg(dt, gs);
        for (int64_t o = 0; o < yg.numel(); ++o)
          store(yg, o, math::global_mean_output_at<float>(C, size, nhwc, o, load(smooth)));
        EXPECT_TRUE(same_bits(yg, gap.output(0))) << "GlobalAveragePool";

        KernelCase gap_grad("GlobalAveragePoolGrad", "oxtrain", {dg}, {{dt, xs}});
        if (nhwc) gap_grad.set_attr(graph::kChannelsLast, Attribute{int64_t{1}});
        gap_grad.set_attr("input_shape", Attribute{std::vector<int64_t>(p.x)});
        gap_grad.run();
        Tensor dgx(dt, xs);
        for (int64_t i = 0; i < dgx.numel(); ++i)
          store(dgx, i, math::global_mean_grad(load(dg)(math::global_mean_grad_source(C, size, nhwc, i)), size));
        EXPECT_TRUE(same_bits(dgx, gap_grad.output(0))) << "GlobalAveragePoolGrad";
      }
}

// The GPU's 3-D pooling (runtime/math/pool.h's Pool3d functions, one output or one input
// element at a time) against the CPU's N-D kernels, bit for bit: values and Indices in both
// storage orders, averages with and without padding counted, and both gradients, over windows
// with real depth, ties, NaN, dilation, ceil_mode, SAME padding and padding-only windows.
TEST(CpuPool, ThreeDimensionalWindowMathMatchesTheKernelsBitwise) {
  namespace math = runtime::math;
  struct Case {
    PoolParams p;
    Shape out;
  };
  const Case cases[] = {
      {{"3x3x3 stride 2 pad 1", {2, 3, 7, 9, 8}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1, 1, 1, 1}, {}, "", 0}, {2, 3, 4, 5, 4}},
      {{"1x3x3 stride (1,2,2)", {2, 2, 5, 9, 9}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1, 0, 1, 1}, {}, "", 0}, {2, 2, 5, 5, 5}},
      {{"2x2x2 dilation (2,1,2) ceil", {2, 2, 8, 6, 9}, {2, 2, 2}, {2, 2, 1}, {1, 0, 1, 1, 0, 0}, {2, 1, 2}, "", 1},
       {2, 2, 5, 3, 8}},
      {{"padding as wide as the window", {1, 2, 3, 4, 5}, {2, 2, 2}, {1, 1, 1}, {2, 2, 2, 2, 2, 2}, {}, "", 0},
       {1, 2, 6, 7, 8}},
      {{"SAME_UPPER", {2, 2, 6, 7, 5}, {3, 2, 3}, {2, 2, 2}, {}, {}, "SAME_UPPER", 0}, {2, 2, 3, 4, 3}},
  };
  auto same_bytes = [](const Tensor& a, const Tensor& b) {
    return a.bytes.size() == b.bytes.size() && std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
  };
  uint64_t seed = 1300;
  for (const Case& c : cases)
    for (bool ties : {false, true}) {
      const PoolParams& p = c.p;
      SCOPED_TRACE(p.label + (ties ? ", ties and NaN" : ""));
      Tensor x = ties ? tie_heavy(DType::f32, p.x, ++seed) : random_tensor(DType::f32, p.x, ++seed);
      if (ties)
        for (int64_t i = 3; i < x.numel(); i += 41) set_element(x, i, std::nan(""));
      Tensor dy = random_tensor(DType::f32, c.out, ++seed);
      const float* xf = x.data<float>();
      const float* dyf = dy.data<float>();
      for (int64_t order : {0, 1}) {
        KernelCase k("MaxPool", "", {x}, {{DType::f32, c.out}, {DType::i64, c.out}});
        set_pool_attrs(k, p);
        k.set_attr("storage_order", Attribute{order});
        k.run();
        const math::Pool3d g = math::pool_geometry_3d(k.node(), p.x, c.out, p.ceil_mode != 0);
        Tensor y(DType::f32, c.out), indices(DType::i64, c.out);
        int64_t i = 0;
        for (int64_t pl = 0; pl < g.planes; ++pl)
          for (int64_t o0 = 0; o0 < g.axes[0].out; ++o0)
            for (int64_t o1 = 0; o1 < g.axes[1].out; ++o1)
              for (int64_t o2 = 0; o2 < g.axes[2].out; ++o2, ++i) {
                const math::MaxPick<float> m =
                    math::max_window_3d(g, xf + pl * g.in_plane(), math::pool_window_3d(g, o0, o1, o2));
                y.data<float>()[i] = m.value;
                indices.data<int64_t>()[i] = math::max_pool_index_3d(g, pl, m.at, order != 0);
              }
        EXPECT_TRUE(same_bytes(y, k.output(0))) << "MaxPool Y, storage_order " << order;
        EXPECT_TRUE(same_bytes(indices, k.output(1))) << "MaxPool Indices, storage_order " << order;
      }
      {
        KernelCase k("MaxPoolGradFromInput", "oxtrain", {dy, x}, {{DType::f32, p.x}});
        set_pool_attrs(k, p);
        k.run();
        const math::Pool3d g = math::pool_geometry_3d(k.node(), p.x, c.out, p.ceil_mode != 0);
        Tensor dx(DType::f32, p.x);
        for (int64_t i = 0; i < dx.numel(); ++i) {
          const int64_t pl = i / g.in_plane();
          dx.data<float>()[i] = math::max_pool_grad_from_input_at_3d(g, dyf + pl * g.out_plane(),
                                                                     xf + pl * g.in_plane(), i % g.in_plane());
        }
        EXPECT_TRUE(same_bytes(dx, k.output(0))) << "MaxPoolGradFromInput";
        double total = 0;
        for (int64_t i = 0; i < dx.numel(); ++i) total += std::fabs(element(dx, i));
        EXPECT_GT(total, 0.0);
      }
      for (bool include_pad : {false, true}) {
        KernelCase f("AveragePool", "", {x}, {{DType::f32, c.out}});
        set_pool_attrs(f, p);
        f.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
        f.run();
        const math::Pool3d g = math::pool_geometry_3d(f.node(), p.x, c.out, p.ceil_mode != 0);
        Tensor y(DType::f32, c.out);
        int64_t i = 0;
        for (int64_t pl = 0; pl < g.planes; ++pl)
          for (int64_t o0 = 0; o0 < g.axes[0].out; ++o0)
            for (int64_t o1 = 0; o1 < g.axes[1].out; ++o1)
              for (int64_t o2 = 0; o2 < g.axes[2].out; ++o2, ++i)
                y.data<float>()[i] = math::avg_window_3d(g, xf + pl * g.in_plane(), math::pool_window_3d(g, o0, o1, o2),
                                                         include_pad);
        EXPECT_TRUE(same_bytes(y, f.output(0))) << "AveragePool, count_include_pad " << include_pad;
        KernelCase b("AveragePoolGrad", "oxtrain", {dy}, {{DType::f32, p.x}});
        set_pool_attrs(b, p);
        b.set_attr("count_include_pad", Attribute{int64_t{include_pad}});
        b.set_attr("input_shape", Attribute{p.x});
        b.run();
        Tensor dx(DType::f32, p.x);
        for (int64_t j = 0; j < dx.numel(); ++j) {
          const int64_t pl = j / g.in_plane();
          dx.data<float>()[j] = math::avg_pool_grad_at_3d(g, include_pad, dyf + pl * g.out_plane(), j % g.in_plane());
        }
        EXPECT_TRUE(same_bytes(dx, b.output(0))) << "AveragePoolGrad, count_include_pad " << include_pad;
      }
    }
}
