// Gemm and MatMul through OpenBLAS (cblas, row-major).
#include <cblas.h>

#include <climits>
#include <cstring>
#include <string>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {
namespace {

using cpu::dispatch_float;
using cpu::for_each_segment;
using cpu::make_broadcast_plan;
using cpu::StridedPlan;

void check_blas_size(int64_t v, const std::string& what) {
  if (v > INT_MAX)
    throw Error(what + ": dimension " + std::to_string(v) + " is too large for BLAS");
}

// C = alpha * op(A) * op(B) + beta * C, row-major; lda/ldb are A's and B's row lengths.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

DType check_types(const Node& n, size_t count) {
  const graph::Value* a = n.input(0);
  if (!a) throw Error(n.describe() + ": input 0 is missing");
  DType dt = a->dtype;
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(n.describe() + ": element type " + graph::dtype_name(dt) +
                " is not supported on the CPU (float32 and float64 are)");
  for (size_t i = 1; i < count; ++i) {
    const graph::Value* v = n.input(i);
    if (v && v->dtype != dt)
      throw Error(n.describe() + ": inputs have different element types (" +
                  graph::dtype_name(dt) + " and " + graph::dtype_name(v->dtype) + ")");
  }
  return dt;
}

// ---------------------------------------------------------------------------------------
// Gemm: Y = alpha * op(A) * op(B) + beta * C, C broadcast to [M, N].

template <typename T>
void run_gemm(const KernelArgs& args, bool ta, bool tb, double alpha, double beta,
              const std::string& what) {
  const TensorView& a = args.inputs[0];
  const TensorView& b = args.inputs[1];
  const TensorView& y = args.outputs[0];
  const bool has_c = args.inputs.size() > 2 && args.inputs[2].present() && beta != 0.0;
  const int64_t m = ta ? a.shape[1] : a.shape[0];
  const int64_t k = ta ? a.shape[0] : a.shape[1];
  const int64_t n = tb ? b.shape[0] : b.shape[1];
  if (m == 0 || n == 0) return;
  T* py = y.as<T>();
  if (has_c) {
    // Y = C (broadcast), then BLAS scales it by beta.
    const TensorView& c = args.inputs[2];
    StridedPlan p = make_broadcast_plan(y.shape, {c.shape}, what);
    const T* pc = c.as<T>();
    const int64_t s = p.inner_stride(0);
    for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
      const T* src = pc + off[0];
      for (int64_t i = 0; i < len; ++i) py[o + i] = src[i * s];
    });
  }
  if (k == 0) {
    const int64_t count = m * n;
    for (int64_t i = 0; i < count; ++i) py[i] = has_c ? static_cast<T>(beta * py[i]) : T(0);
    return;
  }
  gemm(ta, tb, m, n, k, static_cast<T>(alpha), a.as<T>(), a.shape[1], b.as<T>(), b.shape[1],
       has_c ? static_cast<T>(beta) : T(0), py, n);
}

KernelFactory gemm_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = check_types(n, 3);
    const bool ta = n.attr_int("transA", 0) != 0, tb = n.attr_int("transB", 0) != 0;
    const double alpha = n.attr_float("alpha", 1.0f), beta = n.attr_float("beta", 1.0f);
    const std::string what = n.describe();
    for (size_t i = 0; i < 2; ++i) {
      const graph::Value* v = n.input(i);
      if (!v) throw Error(what + ": input " + std::to_string(i) + " is missing");
      if (v->rank_known && v->shape.size() != 2)
        throw Error(what + ": input '" + v->name + "' has shape " + v->shape_string() +
                    ", expected a matrix");
      for (int64_t d : v->shape) check_blas_size(d, what);
    }
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([=](const KernelArgs& a) { run_gemm<T>(a, ta, tb, alpha, beta, what); });
    });
  };
}

// ---------------------------------------------------------------------------------------
// MatMul: numpy semantics. A 1-D A is a row [1, K], a 1-D B a column [K, 1] (and the
// dimension is dropped from the output); batch dims broadcast.

template <typename T>
void run_matmul(const KernelArgs& args, const std::string& what) {
  graph::Shape as = args.inputs[0].shape, bs = args.inputs[1].shape;
  if (as.size() == 1) as.insert(as.begin(), 1);
  if (bs.size() == 1) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k)
    throw Error(what + ": shapes " + graph::shape_str(args.inputs[0].shape) + " and " +
                graph::shape_str(args.inputs[1].shape) + " disagree on the inner dimension");
  graph::Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  // The output's batch shape: everything but its matrix dims.
  const graph::Shape& ys = args.outputs[0].shape;
  const int64_t out_count = args.outputs[0].numel();
  const int64_t batch = m * n > 0 ? out_count / (m * n) : 0;
  const T* pa = args.inputs[0].as<T>();
  const T* pb = args.inputs[1].as<T>();
  T* py = args.outputs[0].as<T>();
  if (out_count == 0) return;
  if (k == 0) {
    std::memset(py, 0, static_cast<size_t>(out_count) * sizeof(T));
    return;
  }
  check_blas_size(m * batch, what);
  const int64_t a_batch = graph::shape_numel(ab), b_batch = graph::shape_numel(bb);
  if (b_batch == 1 && a_batch == batch) {
    // One GEMM: A's batch folds into its rows.
    gemm(false, false, m * batch, n, k, T(1), pa, k, pb, n, T(0), py, n);
    return;
  }
  size_t matrix_dims = (args.inputs[0].shape.size() == 1 ? 0 : 1) +
                       (args.inputs[1].shape.size() == 1 ? 0 : 1);
  graph::Shape yb(ys.begin(), ys.end() - static_cast<int64_t>(matrix_dims));
  StridedPlan p = make_broadcast_plan(yb, {ab, bb}, what);
  for (int64_t i = 0; i < batch; ++i) {
    const T* ai = pa + p.offset(0, i) * m * k;
    const T* bi = pb + p.offset(1, i) * k * n;
    gemm(false, false, m, n, k, T(1), ai, k, bi, n, T(0), py + i * m * n, n);
  }
}

KernelFactory matmul_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = check_types(n, 2);
    const std::string what = n.describe();
    for (size_t i = 0; i < 2; ++i) {
      const graph::Value* v = n.input(i);
      if (!v) throw Error(what + ": input " + std::to_string(i) + " is missing");
      if (v->rank_known && v->shape.empty())
        throw Error(what + ": input '" + v->name + "' is a scalar");
      for (int64_t d : v->shape) check_blas_size(d, what);
    }
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([what](const KernelArgs& a) { run_matmul<T>(a, what); });
    });
  };
}

}  // namespace

void register_cpu_matmul_kernels(KernelRegistry& registry) {
  registry.add("", "Gemm", Device::cpu, gemm_factory());
  registry.add("", "MatMul", Device::cpu, matmul_factory());
}

}  // namespace oxtrain::runtime
