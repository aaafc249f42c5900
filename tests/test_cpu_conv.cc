// CPU Conv, oxtrain.ConvGradData and oxtrain.ConvGradFilter against a direct reference
// (nested loops in double), the adjoint identities between them, determinism and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::element;
using test::KernelCase;
using test::random_tensor;

namespace {

struct ConvParams {
  std::string label;
  Shape x, w;
  std::vector<int64_t> strides, pads, dilations;  // empty: attribute omitted
  int64_t group = 1;
  std::string auto_pad;  // empty: attribute omitted
  bool bias = false;
};

// The geometry, derived here independently of graph/ops.cc, for 1, 2 or 3 spatial axes.
struct RefGeom {
  int64_t s[3], d[3], pb[3], pe[3], out[3];
};

size_t spatial_rank(const ConvParams& p) { return p.x.size() - 2; }

RefGeom ref_geometry(const ConvParams& p) {
  RefGeom g;
  const size_t r = spatial_rank(p);
  for (size_t i = 0; i < r; ++i) {
    g.s[i] = p.strides.empty() ? 1 : p.strides[i];
    g.d[i] = p.dilations.empty() ? 1 : p.dilations[i];
    g.pb[i] = p.pads.empty() ? 0 : p.pads[i];
    g.pe[i] = p.pads.empty() ? 0 : p.pads[i + r];
    int64_t in = p.x[i + 2], eff = (p.w[i + 2] - 1) * g.d[i] + 1;
    if (p.auto_pad == "SAME_UPPER" || p.auto_pad == "SAME_LOWER") {
      int64_t out = (in + g.s[i] - 1) / g.s[i];
      int64_t total = std::max<int64_t>(0, (out - 1) * g.s[i] + eff - in);
      g.pb[i] = p.auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      g.pe[i] = total - g.pb[i];
    } else if (p.auto_pad == "VALID") {
      g.pb[i] = g.pe[i] = 0;
    }
    g.out[i] = (in + g.pb[i] + g.pe[i] - eff) / g.s[i] + 1;
  }
  return g;
}

Shape out_shape(const ConvParams& p) {
  RefGeom g = ref_geometry(p);
  Shape y{p.x[0], p.w[0]};
  for (size_t i = 0; i < spatial_rank(p); ++i) y.push_back(g.out[i]);
  return y;
}

// Reference values plus, per element, the sum of |terms| (the scale of rounding errors).
struct Ref {
  std::vector<double> v, scale;
  explicit Ref(int64_t n = 0) : v(n, 0.0), scale(n, 0.0) {}
  void add(int64_t i, double t) {
    v[i] += t;
    scale[i] += std::fabs(t);
  }
};

struct ConvRef {
  Ref y, dx, dw;
};

int64_t product(const int64_t* d, size_t n) {
  int64_t p = 1;
  for (size_t i = 0; i < n; ++i) p *= d[i];
  return p;
}

// Y = conv(X, W) + B, dX = conv_transpose(dY, W), dW = corr(dY, X), all in double. Output
// pixels and kernel taps are enumerated as flat indices over the spatial axes.
ConvRef reference(const ConvParams& p, const Tensor& x, const Tensor& w, const Tensor* b,
                  const Tensor& dy) {
  RefGeom g = ref_geometry(p);
  const size_t r = spatial_rank(p);
  const int64_t N = p.x[0], C = p.x[1], M = p.w[0], Cg = p.w[1], Mg = M / p.group;
  const int64_t in_px = product(p.x.data() + 2, r), taps = product(p.w.data() + 2, r);
  const int64_t out_px = product(g.out, r);
  ConvRef r_{Ref(N * M * out_px), Ref(N * C * in_px), Ref(M * Cg * taps)};
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t o = 0; o < out_px; ++o) {
        const int64_t yi = (n * M + m) * out_px + o;
        if (b) r_.y.add(yi, element(*b, m));
        const double gy = element(dy, yi);
        for (int64_t cl = 0; cl < Cg; ++cl) {
          const int64_t c = (m / Mg) * Cg + cl;
          for (int64_t t = 0; t < taps; ++t) {
            // Split o and t into per-axis coordinates (last axis fastest).
            int64_t xi_sp = 0, oo = o, tt = t, stride_in = 1;
            bool inside = true;
            for (size_t i = r; i-- > 0;) {
              const int64_t oc = oo % g.out[i], k = tt % p.w[i + 2];
              oo /= g.out[i], tt /= p.w[i + 2];
              const int64_t ic = oc * g.s[i] - g.pb[i] + k * g.d[i];
              if (ic < 0 || ic >= p.x[i + 2]) inside = false;
              xi_sp += ic * stride_in;
              stride_in *= p.x[i + 2];
            }
            if (!inside) continue;
            const int64_t xi = (n * C + c) * in_px + xi_sp;
            const int64_t wi = (m * Cg + cl) * taps + t;
            const double xv = element(x, xi), wv = element(w, wi);
            r_.y.add(yi, xv * wv);
            r_.dx.add(xi, gy * wv);
            r_.dw.add(wi, gy * xv);
          }
        }
      }
  return r_;
}

// NaN-aware: a non-finite result where a number is expected fails.
void expect_matches(const Tensor& got, const Ref& ref, double rtol, const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(ref.v.size())) << what;
  int failures = 0;
  for (int64_t i = 0; i < got.numel() && failures < 5; ++i) {
    const double g = element(got, i);
    const double tol = rtol * std::max(ref.scale[i], 1e-3);
    if (!std::isfinite(g) || !(std::fabs(g - ref.v[i]) <= tol)) {
      ADD_FAILURE() << what << ": element " << i << " is " << g << ", expected " << ref.v[i]
                    << " (tolerance " << tol << ")";
      ++failures;
    }
  }
}

void set_conv_attrs(KernelCase& k, const ConvParams& p) {
  if (!p.strides.empty()) k.set_attr("strides", Attribute{p.strides});
  if (!p.pads.empty()) k.set_attr("pads", Attribute{p.pads});
  if (!p.dilations.empty()) k.set_attr("dilations", Attribute{p.dilations});
  if (!p.auto_pad.empty()) k.set_attr("auto_pad", Attribute{p.auto_pad});
  k.set_attr("group", Attribute{p.group});
  k.set_attr("kernel_shape", Attribute{std::vector<int64_t>(p.w.begin() + 2, p.w.end())});
}

Tensor run_conv(const ConvParams& p, const Tensor& x, const Tensor& w, const Tensor* b) {
  std::vector<Tensor> ins{x, w};
  if (b) ins.push_back(*b);
  KernelCase k("Conv", "", ins, {{x.dtype, out_shape(p)}});
  set_conv_attrs(k, p);
  k.run();
  return k.output(0);
}

Tensor run_grad_data(const ConvParams& p, const Tensor& dy, const Tensor& w) {
  KernelCase k("ConvGradData", "oxtrain", {dy, w}, {{dy.dtype, p.x}});
  set_conv_attrs(k, p);
  k.set_attr("input_shape", Attribute{p.x});
  k.run();
  return k.output(0);
}

Tensor run_grad_filter(const ConvParams& p, const Tensor& dy, const Tensor& x) {
  KernelCase k("ConvGradFilter", "oxtrain", {dy, x}, {{dy.dtype, p.w}});
  set_conv_attrs(k, p);
  k.set_attr("filter_shape", Attribute{p.w});
  k.run();
  return k.output(0);
}

const std::vector<ConvParams>& cases() {
  static const std::vector<ConvParams> all = {
      {"3x3 pad 1 bias", {2, 3, 7, 9}, {5, 3, 3, 3}, {}, {1, 1, 1, 1}, {}, 1, "", true},
      {"stride 2 asym pads", {3, 4, 11, 13}, {5, 4, 3, 3}, {2, 2}, {0, 1, 2, 1}, {}, 1, "", false},
      {"stride 3 dilation 2", {2, 3, 9, 10}, {5, 3, 3, 2}, {3, 3}, {1, 2, 1, 0}, {2, 2}, 1, "",
       true},
      {"stride (1,2) dilation (2,1)", {2, 5, 12, 11}, {5, 5, 2, 3}, {1, 2}, {2, 0, 0, 1}, {2, 1},
       1, "", false},
      {"depthwise", {2, 6, 10, 9}, {6, 1, 3, 3}, {}, {1, 1, 1, 1}, {}, 6, "", true},
      {"depthwise x2 stride 2 dil 2", {2, 3, 8, 9}, {6, 1, 3, 3}, {2, 2}, {1, 1, 1, 1}, {2, 2}, 3,
       "", false},
      {"group 2", {3, 6, 9, 11}, {4, 3, 3, 3}, {}, {1, 0, 0, 1}, {}, 2, "", true},
      {"SAME_UPPER stride 2", {2, 3, 11, 13}, {5, 3, 3, 3}, {2, 2}, {}, {}, 1, "SAME_UPPER", true},
      {"SAME_LOWER even kernel", {2, 3, 11, 13}, {5, 3, 4, 4}, {2, 2}, {}, {}, 1, "SAME_LOWER",
       false},
      {"SAME_UPPER even kernel", {2, 4, 10, 7}, {5, 4, 2, 4}, {1, 1}, {}, {}, 1, "SAME_UPPER",
       false},
      {"VALID stride 2 dil 2", {2, 3, 12, 7}, {5, 3, 3, 3}, {2, 2}, {}, {2, 2}, 1, "VALID", true},
      {"7x7 stride 2 pad 3", {2, 3, 15, 17}, {5, 3, 7, 7}, {2, 2}, {3, 3, 3, 3}, {}, 1, "", true},
      {"1x1 chunked", {4, 7, 13, 11}, {5, 7, 1, 1}, {}, {}, {}, 1, "", true},
      {"1x1 direct", {2, 3, 33, 32}, {5, 3, 1, 1}, {}, {}, {}, 1, "", true},
      {"1x1 direct group 2", {2, 4, 32, 33}, {6, 2, 1, 1}, {}, {}, {}, 2, "", false},
      {"1x1 stride 2", {3, 5, 9, 9}, {5, 5, 1, 1}, {2, 2}, {}, {}, 1, "", true},
      {"1x1 pad 1", {2, 3, 7, 8}, {5, 3, 1, 1}, {}, {1, 0, 0, 1}, {}, 1, "", false},
      {"large sample, one per chunk", {2, 3, 33, 34}, {5, 3, 3, 3}, {}, {1, 1, 1, 1}, {}, 1, "",
       true},
      {"chunks of 3 with remainder", {5, 3, 17, 22}, {5, 3, 3, 3}, {}, {1, 1, 1, 1}, {}, 1, "",
       true},
      {"kernel as large as input", {3, 2, 7, 8}, {5, 2, 7, 8}, {}, {}, {}, 1, "", true},
      {"5 samples chunked", {5, 3, 7, 8}, {5, 3, 3, 3}, {}, {1, 1, 0, 0}, {}, 1, "", true},
      {"5 samples chunked group 2", {5, 6, 8, 7}, {4, 3, 3, 3}, {2, 2}, {1, 1, 1, 1}, {}, 2, "",
       true},
      {"one sample", {1, 3, 9, 8}, {5, 3, 3, 3}, {}, {1, 1, 1, 1}, {}, 1, "", true},
      {"one sample 1x1 direct", {1, 4, 33, 32}, {5, 4, 1, 1}, {}, {}, {}, 1, "", true},
      {"one sample small", {1, 5, 7, 7}, {5, 5, 3, 3}, {2, 2}, {0, 1, 1, 0}, {2, 1}, 1, "",
       false},
      // 1-D: [N, C, L] with [M, C / group, k].
      {"1-D stride 2 group 2", {3, 4, 13}, {6, 2, 3}, {2}, {1, 0}, {}, 2, "", true},
      {"1-D dilation 3 SAME_LOWER", {2, 3, 11}, {4, 3, 4}, {}, {}, {3}, 1, "SAME_LOWER", false},
      // 3-D: [N, C, D, H, W] with [M, C / group, kD, kH, kW].
      {"3-D 3x3x3 pad 1 bias", {2, 3, 5, 6, 7}, {4, 3, 3, 3, 3}, {}, {1, 1, 1, 1, 1, 1}, {}, 1,
       "", true},
      {"3-D strides (2,1,2) asym pads", {2, 2, 7, 5, 8}, {5, 2, 3, 2, 3}, {2, 1, 2},
       {1, 0, 2, 0, 1, 1}, {}, 1, "", false},
      {"3-D dilation (2,1,1) group 2", {3, 4, 8, 5, 5}, {6, 2, 2, 3, 3}, {}, {1, 1, 1, 1, 1, 1},
       {2, 1, 1}, 2, "", true},
      {"3-D depthwise stride 2", {2, 3, 6, 7, 6}, {3, 1, 3, 3, 3}, {2, 2, 2}, {1, 1, 1, 1, 1, 1},
       {}, 3, "", false},
      {"3-D (3,1,1) temporal", {2, 4, 6, 5, 4}, {5, 4, 3, 1, 1}, {}, {1, 0, 0, 1, 0, 0}, {}, 1, "",
       true},
      {"3-D 1x1x1 chunked", {5, 6, 3, 4, 5}, {4, 6, 1, 1, 1}, {}, {}, {}, 1, "", true},
      {"3-D 1x1x1 direct", {2, 3, 8, 8, 8}, {5, 3, 1, 1, 1}, {}, {}, {}, 1, "", false},
      {"3-D SAME_UPPER stride 2", {2, 3, 5, 7, 6}, {4, 3, 3, 2, 3}, {2, 2, 2}, {}, {}, 1,
       "SAME_UPPER", true},
      {"3-D kernel as deep as input", {2, 2, 3, 5, 5}, {3, 2, 3, 3, 3}, {}, {0, 1, 1, 0, 1, 1}, {},
       1, "", true},
  };
  return all;
}

// Runs `body` with 1, 2 and 3 CPU threads (the kernels split batches differently for each),
// restoring the thread count afterwards.
template <typename F>
void for_thread_counts(F&& body) {
  const int saved = runtime::cpu_threads();
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    runtime::set_cpu_threads(threads);
    body();
  }
  runtime::set_cpu_threads(saved);
}

void check_against_reference(DType dt, double rtol) {
  uint64_t seed = dt == DType::f32 ? 100 : 200;
  for (const ConvParams& p : cases()) {
    SCOPED_TRACE(p.label + (dt == DType::f32 ? " (float32)" : " (float64)"));
    Tensor x = random_tensor(dt, p.x, ++seed);
    Tensor w = random_tensor(dt, p.w, ++seed);
    Tensor b = random_tensor(dt, {p.w[0]}, ++seed);
    Tensor dy = random_tensor(dt, out_shape(p), ++seed);
    ConvRef ref = reference(p, x, w, p.bias ? &b : nullptr, dy);
    for_thread_counts([&] {
      expect_matches(run_conv(p, x, w, p.bias ? &b : nullptr), ref.y, rtol, "Conv");
      expect_matches(run_grad_data(p, dy, w), ref.dx, rtol, "ConvGradData");
      expect_matches(run_grad_filter(p, dy, x), ref.dw, rtol, "ConvGradFilter");
    });
  }
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += element(a, i) * element(b, i);
  return s;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.bytes.size() == b.bytes.size() &&
         std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
}

}  // namespace

TEST(CpuConv, Float32MatchesReference) { check_against_reference(DType::f32, 1e-5); }

TEST(CpuConv, Float64MatchesReference) { check_against_reference(DType::f64, 1e-12); }

// <Conv(X), dY> == <X, ConvGradData(dY)> == <W, ConvGradFilter(dY, X)>.
TEST(CpuConv, GradientsAreAdjoints) {
  uint64_t seed = 300;
  for (const ConvParams& p : cases()) {
    SCOPED_TRACE(p.label);
    Tensor x = random_tensor(DType::f64, p.x, ++seed);
    Tensor w = random_tensor(DType::f64, p.w, ++seed);
    Tensor dy = random_tensor(DType::f64, out_shape(p), ++seed);
    const double forward = dot(run_conv(p, x, w, nullptr), dy);
    const double data = dot(x, run_grad_data(p, dy, w));
    const double filter = dot(w, run_grad_filter(p, dy, x));
    ASSERT_TRUE(std::isfinite(forward) && std::isfinite(data) && std::isfinite(filter));
    const double tol = 1e-10 * std::max(1.0, std::fabs(forward));
    EXPECT_NEAR(data, forward, tol);
    EXPECT_NEAR(filter, forward, tol);
  }
}

TEST(CpuConv, Deterministic) {
  const ConvParams shapes[] = {
      {"3x3", {6, 16, 20, 20}, {24, 16, 3, 3}, {}, {1, 1, 1, 1}, {}, 1, "", true},
      {"chunked", {9, 16, 12, 12}, {24, 16, 3, 3}, {2, 2}, {1, 1, 1, 1}, {}, 1, "", true},
      {"1x1", {3, 16, 40, 40}, {24, 16, 1, 1}, {}, {}, {}, 1, "", false},
      {"one sample", {1, 16, 40, 40}, {24, 16, 3, 3}, {}, {1, 1, 1, 1}, {}, 1, "", true},
  };
  for (DType dt : {DType::f32, DType::f64}) {
    for (const ConvParams& p : shapes) {
      SCOPED_TRACE(p.label);
      Tensor x = random_tensor(dt, p.x, 1);
      Tensor w = random_tensor(dt, p.w, 2);
      Tensor b = random_tensor(dt, {p.w[0]}, 3);
      Tensor dy = random_tensor(dt, out_shape(p), 4);
      EXPECT_TRUE(same_bytes(run_conv(p, x, w, &b), run_conv(p, x, w, &b)));
      EXPECT_TRUE(same_bytes(run_grad_data(p, dy, w), run_grad_data(p, dy, w)));
      EXPECT_TRUE(same_bytes(run_grad_filter(p, dy, x), run_grad_filter(p, dy, x)));
    }
  }
}

// The kernels write (=) their outputs: stale contents of the output buffer do not leak in.
TEST(CpuConv, OverwritesOutputs) {
  const ConvParams p{"", {2, 3, 7, 9}, {5, 3, 3, 3}, {}, {1, 1, 1, 1}, {}, 1, "", false};
  Tensor x = random_tensor(DType::f64, p.x, 5);
  Tensor w = random_tensor(DType::f64, p.w, 6);
  Tensor dy = random_tensor(DType::f64, out_shape(p), 7);
  for (int kind = 0; kind < 3; ++kind) {
    std::vector<Tensor> ins = kind == 0 ? std::vector<Tensor>{x, w}
                              : kind == 1 ? std::vector<Tensor>{dy, w}
                                          : std::vector<Tensor>{dy, x};
    Shape out = kind == 0 ? out_shape(p) : kind == 1 ? p.x : p.w;
    const char* op = kind == 0 ? "Conv" : kind == 1 ? "ConvGradData" : "ConvGradFilter";
    KernelCase k(op, kind == 0 ? "" : "oxtrain", ins, {{DType::f64, out}});
    set_conv_attrs(k, p);
    k.set_attr("input_shape", Attribute{p.x});
    k.set_attr("filter_shape", Attribute{p.w});
    k.run();
    Tensor first = k.output(0);
    for (int64_t i = 0; i < k.output(0).numel(); ++i) test::set_element(k.output(0), i, 1e30);
    k.run();
    EXPECT_TRUE(same_bytes(first, k.output(0))) << op;
  }
}

TEST(CpuConv, RejectsFourSpatialAxes) {
  KernelCase four_d("Conv", "",
                    {Tensor(DType::f32, {1, 2, 3, 5, 5, 5}), Tensor(DType::f32, {3, 2, 1, 3, 3, 3})},
                    {{DType::f32, {1, 3, 3, 3, 3, 3}}});
  try {
    four_d.run();
    FAIL() << "a 4-D convolution was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Conv 'test_Conv'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("only 1-D, 2-D and 3-D convolution"), std::string::npos)
        << e.what();
  }
}

// A 2-D convolution is the 3-D one of a single plane: the same values, bit for bit, in all
// three kernels.
TEST(CpuConv, TwoDimensionalIsOnePlane) {
  const ConvParams p2{"", {3, 4, 9, 10}, {6, 2, 3, 3}, {2, 1}, {1, 0, 1, 2}, {1, 2}, 2, "", true};
  const ConvParams p3{"", {3, 4, 1, 9, 10}, {6, 2, 1, 3, 3}, {1, 2, 1}, {0, 1, 0, 0, 1, 2},
                      {1, 1, 2}, 2, "", true};
  Tensor x = random_tensor(DType::f32, p2.x, 11), w = random_tensor(DType::f32, p2.w, 12);
  Tensor b = random_tensor(DType::f32, {6}, 13), dy = random_tensor(DType::f32, out_shape(p2), 14);
  Tensor x3 = x, w3 = w, dy3 = dy;
  x3.shape = p3.x, w3.shape = p3.w, dy3.shape = out_shape(p3);
  EXPECT_EQ(run_conv(p2, x, w, &b).bytes, run_conv(p3, x3, w3, &b).bytes);
  EXPECT_EQ(run_grad_data(p2, dy, w).bytes, run_grad_data(p3, dy3, w3).bytes);
  EXPECT_EQ(run_grad_filter(p2, dy, x).bytes, run_grad_filter(p3, dy3, x3).bytes);
  double sum = 0;
  Tensor y = run_conv(p3, x3, w3, &b);
  for (int64_t i = 0; i < y.numel(); ++i) sum += std::fabs(element(y, i));
  EXPECT_GT(sum, 1.0);  // it computed something
}

// A 1-D convolution is the 2-D one of a single row: the same values, bit for bit.
TEST(CpuConv, OneDimensionalIsOneRow) {
  Tensor x = random_tensor(DType::f32, {2, 4, 13}, 1), w = random_tensor(DType::f32, {6, 2, 3}, 2);
  KernelCase one_d("Conv", "", {x, w}, {{DType::f32, {2, 6, 6}}});
  one_d.set_attr("group", Attribute{int64_t{2}});
  one_d.set_attr("strides", Attribute{std::vector<int64_t>{2}});
  one_d.set_attr("pads", Attribute{std::vector<int64_t>{1, 0}});
  one_d.run();
  Tensor x2 = x, w2 = w;
  x2.shape = {2, 4, 1, 13};
  w2.shape = {6, 2, 1, 3};
  KernelCase two_d("Conv", "", {x2, w2}, {{DType::f32, {2, 6, 1, 6}}});
  two_d.set_attr("group", Attribute{int64_t{2}});
  two_d.set_attr("strides", Attribute{std::vector<int64_t>{1, 2}});
  two_d.set_attr("pads", Attribute{std::vector<int64_t>{0, 1, 0, 0}});
  two_d.run();
  EXPECT_EQ(one_d.output(0).bytes, two_d.output(0).bytes);
  double sum = 0;
  for (int64_t i = 0; i < one_d.output(0).numel(); ++i) sum += std::fabs(element(one_d.output(0), i));
  EXPECT_GT(sum, 1.0);  // it computed something
}

TEST(CpuConv, RejectsOtherDtypes) {
  KernelCase k("Conv", "", {Tensor(DType::i64, {1, 2, 5, 5}), Tensor(DType::i64, {3, 2, 3, 3})},
               {{DType::i64, {1, 3, 3, 3}}});
  EXPECT_THROW(k.run(), Error);
}
