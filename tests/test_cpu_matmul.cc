// CPU Gemm and MatMul against naive references in double.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

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

}  // namespace

TEST(CpuMatmul, GemmAllTransposesAndCShapes) {
  const int64_t m = 5, k = 7, n = 3;
  const std::vector<Shape> c_shapes = {{}, {1}, {n}, {m, 1}, {1, n}, {m, n}};
  for (DType dt : kFloatTypes) {
    uint64_t seed = 1;
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        for (int ci = -1; ci < static_cast<int>(c_shapes.size()); ++ci) {
          Tensor a = random_tensor(dt, ta ? Shape{k, m} : Shape{m, k}, seed++);
          Tensor b = random_tensor(dt, tb ? Shape{n, k} : Shape{k, n}, seed++);
          std::vector<Tensor> ins{a, b};
          Tensor c;
          if (ci >= 0) {
            c = random_tensor(dt, c_shapes[ci], seed++);
            ins.push_back(c);
          }
          std::vector<double> want(m * n);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              double s = 0;
              for (int64_t p = 0; p < k; ++p)
                s += element(a, ta ? p * m + i : i * k + p) * element(b, tb ? j * k + p : p * n + j);
              double cv = 0;
              if (ci >= 0) {
                const Shape& cs = c_shapes[ci];
                int64_t idx = 0;
                if (cs.size() == 1) idx = cs[0] == 1 ? 0 : j;
                if (cs.size() == 2) idx = (cs[0] == 1 ? 0 : i) * cs[1] + (cs[1] == 1 ? 0 : j);
                cv = element(c, idx);
              }
              want[i * n + j] = 0.5 * s + 2.0 * cv;
            }
          KernelCase kc("Gemm", "", ins, {{dt, {m, n}}});
          kc.set_attr("transA", Attribute{int64_t{ta}});
          kc.set_attr("transB", Attribute{int64_t{tb}});
          kc.set_attr("alpha", Attribute{0.5f});
          kc.set_attr("beta", Attribute{2.0f});
          kc.run();
          EXPECT_TRUE(close(kc.output(0), want, tolerance(dt)))
              << "transA " << ta << " transB " << tb << " C "
              << (ci >= 0 ? graph::shape_str(c_shapes[ci]) : "none") << " "
              << graph::dtype_name(dt);
        }
      }
    }
  }
}

TEST(CpuMatmul, GemmDefaultsAndBigger) {
  // Default alpha = beta = 1, a Linear layer's shapes: X [N, K] * W^T [K, M] + b [M].
  for (DType dt : kFloatTypes) {
    const int64_t batch = 33, in = 130, out = 17;
    Tensor x = random_tensor(dt, {batch, in}, 10);
    Tensor w = random_tensor(dt, {out, in}, 11);
    Tensor b = random_tensor(dt, {out}, 12);
    KernelCase kc("Gemm", "", {x, w, b}, {{dt, {batch, out}}});
    kc.set_attr("transB", Attribute{int64_t{1}});
    kc.run();
    std::vector<double> want;
    for (int64_t i = 0; i < batch; ++i)
      for (int64_t j = 0; j < out; ++j) {
        double s = element(b, j);
        for (int64_t p = 0; p < in; ++p) s += element(x, i * in + p) * element(w, j * in + p);
        want.push_back(s);
      }
    EXPECT_TRUE(close(kc.output(0), want, dt == DType::f32 ? 1e-5 * 4 : 1e-12));
  }
}

namespace {

// Reference numpy matmul in double.
std::vector<double> matmul_reference(const Tensor& a, const Tensor& b, Shape* out_shape) {
  Shape as = a.shape, bs = b.shape;
  bool a1 = as.size() == 1, b1 = bs.size() == 1;
  if (a1) as.insert(as.begin(), 1);
  if (b1) bs.push_back(1);
  int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  size_t r = std::max(ab.size(), bb.size());
  ab.insert(ab.begin(), r - ab.size(), 1);
  bb.insert(bb.begin(), r - bb.size(), 1);
  Shape batch(r);
  for (size_t i = 0; i < r; ++i) batch[i] = std::max(ab[i], bb[i]);
  *out_shape = batch;
  if (!a1) out_shape->push_back(m);
  if (!b1) out_shape->push_back(n);
  int64_t nb = graph::shape_numel(batch);
  std::vector<double> out;
  for (int64_t bi = 0; bi < nb; ++bi) {
    // Batch coordinates -> flat batch index of each operand.
    int64_t rem = bi, ia = 0, ib = 0, sa = 1, sb = 1;
    for (int64_t d = static_cast<int64_t>(r) - 1; d >= 0; --d) {
      int64_t c = rem % batch[d];
      rem /= batch[d];
      ia += (ab[d] == 1 ? 0 : c) * sa;
      ib += (bb[d] == 1 ? 0 : c) * sb;
      sa *= ab[d];
      sb *= bb[d];
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p)
          s += element(a, ia * m * k + i * k + p) * element(b, ib * k * n + p * n + j);
        out.push_back(s);
      }
  }
  return out;
}

}  // namespace

TEST(CpuMatmul, MatMulNumpySemantics) {
  const std::pair<Shape, Shape> cases[] = {
      {{7}, {7}},                    // dot: []
      {{7}, {7, 3}},                 // [3]
      {{5, 7}, {7}},                 // [5]
      {{5, 7}, {7, 3}},              // plain
      {{2, 3, 5, 7}, {7, 3}},        // batched A, one B (folded into one GEMM)
      {{5, 7}, {3, 7, 4}},           // one A, batched B
      {{2, 1, 5, 7}, {1, 3, 7, 4}},  // both batched, broadcast
      {{3, 5, 7}, {7}},              // batched A, 1-D B: [3, 5]
      {{7}, {2, 7, 4}},              // 1-D A, batched B: [2, 4]
      {{4, 5, 7}, {4, 7, 3}},        // same batch
      {{1, 5, 7}, {7, 3}},
  };
  for (DType dt : kFloatTypes) {
    uint64_t seed = 20;
    for (const auto& [sa, sb] : cases) {
      Tensor a = random_tensor(dt, sa, seed++);
      Tensor b = random_tensor(dt, sb, seed++);
      Shape out;
      auto want = matmul_reference(a, b, &out);
      KernelCase kc("MatMul", "", {a, b}, {{dt, out}});
      kc.run();
      EXPECT_TRUE(close(kc.output(0), want, tolerance(dt)))
          << graph::shape_str(sa) << " x " << graph::shape_str(sb) << " "
          << graph::dtype_name(dt);
    }
  }
}

TEST(CpuMatmul, MixedTypesAreAnError) {
  KernelCase kc("MatMul", "", {Tensor(DType::f32, {2, 3}), Tensor(DType::f64, {3, 2})},
                {{DType::f32, {2, 2}}});
  EXPECT_THROW(kc.run(), Error);
}
