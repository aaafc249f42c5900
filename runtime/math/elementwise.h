// Per-element math of the element-wise kernels and the layout of their reductions, shared by
// the CPU kernels (runtime/cpu/elementwise.cc) and their CUDA twins
// (runtime/cuda/elementwise.cu), so the CPU test suite checks the arithmetic the GPU runs.
//
// Each function is one IEEE operation (or a comparison and a select), so the two devices give
// bit-identical results for the element-wise ops. Functors wrap them for kernel templates.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "graph/ir.h"
#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

template <typename T>
OXTRAIN_HD T neg(T x) {
  return -x;
}

// max(x, 0) that keeps -0 and NaN as they are (x < 0 is false for both).
template <typename T>
OXTRAIN_HD T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// dX of Relu from dY and the forward output Y: dY where Y > 0, else 0. At Y == 0 (and for a
// NaN Y) the gradient is 0, PyTorch's convention.
template <typename T>
OXTRAIN_HD T relu_grad(T dy, T y) {
  return y > T(0) ? dy : T(0);
}

template <typename T>
OXTRAIN_HD T add(T a, T b) {
  if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  return a + b;
}
template <typename T>
OXTRAIN_HD T subtract(T a, T b) {
  if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
  return a - b;
}
template <typename T>
OXTRAIN_HD T multiply(T a, T b) {
  if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
  return a * b;
}
// Integers: truncated toward zero, as ONNX's Div; wrapping like the others (the lowest value
// over -1 is itself); 0 for a zero divisor, as numpy gives.
template <typename T>
OXTRAIN_HD T divide(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if (b == 0) return 0;
    if constexpr (std::is_signed_v<T>)
      if (b == static_cast<T>(-1)) return subtract(static_cast<T>(0), a);
  }
  return a / b;
}

// A reduction's output element from its sum (in double) and the scale (1 for a sum, 1/count
// for a mean; NaN for the mean of nothing).
template <typename T>
OXTRAIN_HD T scaled_sum(double sum, double scale) {
  return static_cast<T>(sum * scale);
}

struct Neg {
  template <typename T>
  OXTRAIN_HD T operator()(T x) const { return neg(x); }
};
struct Relu {
  template <typename T>
  OXTRAIN_HD T operator()(T x) const { return relu(x); }
};
struct ReluGrad {
  template <typename T>
  OXTRAIN_HD T operator()(T dy, T y) const { return relu_grad(dy, y); }
};
struct Add {
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const { return add(a, b); }
};
struct Sub {
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const { return subtract(a, b); }
};
struct Mul {
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const { return multiply(a, b); }
};
struct Div {
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const { return divide(a, b); }
};

// How a reduction sums x (shape xs) into y (shape ys of the same rank, every dim equal to
// xs's or 1). Dims of x are collapsed into alternating kept/reduced runs; then
//  - inner_reduced (conv bias [N,C,H,W] -> [C]: runs N|C|HW): output element j sums, over
//    the reduced runs' offsets r, the `inner` contiguous elements at base(j) + r;
//  - inner_kept (Gemm bias [N,K] -> [K]): output element (o, c), c < inner, sums the elements
//    at base(o) + c + r over the reduced runs' offsets r.
// base() walks kdims/kst, r walks rdims/rst; the innermost run is in neither.
enum class ReduceKind {
  nothing,        // y is empty
  fill,           // x is empty: y = 0 * scale
  copy,           // nothing is reduced: y = x * scale
  inner_reduced,
  inner_kept,
};

struct ReducePlan {
  ReduceKind kind = ReduceKind::nothing;
  int64_t nx = 0, ny = 0;
  int64_t inner = 1;                // length of the innermost run
  std::vector<int64_t> kdims, kst;  // kept runs, outermost first
  std::vector<int64_t> rdims, rst;  // reduced runs, outermost first
  int64_t reduced() const { return ny > 0 ? nx / ny : 0; }  // elements summed per output
};

inline ReducePlan make_reduce_plan(const graph::Shape& xs, const graph::Shape& ys) {
  ReducePlan p;
  p.nx = graph::shape_numel(xs);
  p.ny = graph::shape_numel(ys);
  if (p.ny <= 0) return p;
  if (p.nx == 0) {
    p.kind = ReduceKind::fill;
    return p;
  }
  if (p.nx == p.ny) {
    p.kind = ReduceKind::copy;
    return p;
  }
  std::vector<int64_t> size;
  std::vector<bool> kept;
  for (size_t d = 0; d < xs.size(); ++d) {
    if (xs[d] == 1) continue;
    const bool k = ys[d] != 1;
    if (!size.empty() && kept.back() == k) {
      size.back() *= xs[d];
    } else {
      size.push_back(xs[d]);
      kept.push_back(k);
    }
  }
  std::vector<int64_t> xst(size.size(), 1);
  for (int64_t d = static_cast<int64_t>(size.size()) - 2; d >= 0; --d)
    xst[d] = xst[d + 1] * size[d + 1];
  for (size_t d = 0; d < size.size(); ++d) {
    (kept[d] ? p.kdims : p.rdims).push_back(size[d]);
    (kept[d] ? p.kst : p.rst).push_back(xst[d]);
  }
  if (!kept.back()) {
    p.kind = ReduceKind::inner_reduced;
    p.inner = p.rdims.back();
    p.rdims.pop_back();
    p.rst.pop_back();
  } else {
    p.kind = ReduceKind::inner_kept;
    p.inner = p.kdims.back();
    p.kdims.pop_back();
    p.kst.pop_back();
  }
  return p;
}

}  // namespace oxtrain::runtime::math
