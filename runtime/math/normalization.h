// Per-row math of LayerNormalization and its gradient (oxtrain.LayerNormalizationGrad), shared
// by the CPU kernels (runtime/cpu/normalization.cc) and their CUDA twins
// (runtime/cuda/normalization.cu), and the layout both derive from the shapes.
//
// X is viewed as `rows` rows of `d` elements (d = the product of X's dims from `axis` on).
// Precision, on both devices:
//   statistics: mean = sum(x) / d and var = sum((x - mean)^2) / d, each sum in double (two
//   passes, so no cancellation); inv_std = 1 / sqrt(var + epsilon) in double. Mean and
//   InvStdDev are stored in U (float32 for a float32 X, as stash_type 1 says; float64 for a
//   float64 X) and the output is computed from the stored values, so the gradient sees the
//   statistics the forward used:
//     xhat = (x - mean) * inv_std, y = T(xhat * scale + bias), in double.
//   gradient, with g = dy * scale and sums over the row in double:
//     dx = T(inv_std * (g - sum(g) / d - xhat * sum(g * xhat) / d));
//     dScale[j] = T(sum over rows of dy * xhat), dB[j] = T(sum over rows of dy).
// Only the order of the sums differs between the devices (the CPU's eight lanes, the GPU's
// fixed tree), so results agree to rounding and each device is deterministic.
//
// Scale and B broadcast to the normalized dims X.shape[axis:]; `ScaleIndex` maps a position j
// of a row to their offsets.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "base/error.h"
#include "graph/ir.h"
#include "runtime/math/broadcast.h"
#include "runtime/math/elementwise.h"
#include "runtime/math/hd.h"
#include "runtime/math/pointwise.h"

namespace oxtrain::runtime::math {

// Offsets of Scale (k = 0) and B (k = 1) for position j of a row. contiguous: both are the
// full normalized shape (offset j), the index is then unused.
struct ScaleIndex {
  bool contiguous = true;
  StridedIndex<2, int64_t> index;
};

OXTRAIN_HD void scale_offsets(const ScaleIndex& s, int64_t j, int64_t& scale_at, int64_t& bias_at) {
  if (s.contiguous) {
    scale_at = bias_at = j;
    return;
  }
  int64_t off[2];
  strided_offsets(s.index, j, 2, off);
  scale_at = off[0];
  bias_at = off[1];
}

template <typename T>
OXTRAIN_HD double ln_centered_square(T x, double mean) {
  const double c = static_cast<double>(x) - mean;
  return c * c;
}

OXTRAIN_HD double ln_inv_std(double var, double epsilon) { return 1.0 / ::sqrt(var + epsilon); }

// The normalized value of x from the stored statistics.
template <typename T, typename U>
OXTRAIN_HD double ln_xhat(T x, U mean, U inv_std) {
  return (static_cast<double>(x) - static_cast<double>(mean)) * static_cast<double>(inv_std);
}

// y from x, the stored statistics, the element's scale and bias (bias 0 without B).
template <typename T, typename U>
OXTRAIN_HD T ln_output(T x, U mean, U inv_std, T scale, T bias) {
  return static_cast<T>(ln_xhat(x, mean, inv_std) * static_cast<double>(scale) +
                        static_cast<double>(bias));
}

// g = dy * scale, and its product with xhat: the two terms summed over a row for dX.
template <typename T>
OXTRAIN_HD double ln_grad_g(T dy, T scale) {
  return static_cast<double>(dy) * static_cast<double>(scale);
}

// dX of one element from g, xhat, inv_std and the row's sums of g and g * xhat.
template <typename T>
OXTRAIN_HD T ln_grad_input(double g, double xhat, double inv_std, double sum_g, double sum_gx,
                           int64_t d) {
  const double inv_d = 1.0 / static_cast<double>(d);
  return static_cast<T>(inv_std * (g - sum_g * inv_d - xhat * (sum_gx * inv_d)));
}

// ---------------------------------------------------------------------------------------
// The layout, on the host: rows, d, and the Scale/B index, from the shapes. Throws naming
// `what` when Scale or B does not broadcast to X.shape[axis:] (ONNX lets them broadcast to all
// of X; oxtrain takes those that do not vary along the dims before axis).

struct LayerNormLayout {
  int64_t rows = 1, d = 1;
  ScaleIndex scale;
};

inline LayerNormLayout layer_norm_layout(const graph::Shape& x, int64_t axis,
                                         const graph::Shape& scale, const graph::Shape* bias,
                                         const std::string& what) {
  LayerNormLayout l;
  const graph::Shape normalized(x.begin() + axis, x.end());
  for (int64_t i = 0; i < axis; ++i) l.rows *= x[i];
  l.d = graph::shape_numel(normalized);
  // Scale and B right-aligned to the normalized dims; leading dims beyond them must be 1.
  auto aligned = [&](const graph::Shape& s, const char* role) {
    graph::Shape out;
    const size_t n = normalized.size();
    bool ok = true;
    for (size_t i = 0; i + n < s.size(); ++i) ok = ok && s[i] == 1;
    out.assign(s.end() - static_cast<int64_t>(std::min(n, s.size())), s.end());
    for (size_t i = 0; ok && i < out.size(); ++i) {
      const int64_t want = normalized[n - out.size() + i];
      ok = out[i] == want || out[i] == 1;
    }
    if (!ok)
      throw Error(what + ": " + role + " of shape " + graph::shape_str(s) +
                  " does not broadcast to the normalized dims " + graph::shape_str(normalized) +
                  " of X " + graph::shape_str(x) + " (axis " + std::to_string(axis) +
                  "); oxtrain takes a " + role + " that does not vary along the dims before axis");
    return out;
  };
  const graph::Shape sa = aligned(scale, "Scale");
  const graph::Shape ba = bias ? aligned(*bias, "B") : normalized;
  l.scale.contiguous = graph::shape_numel(sa) == l.d && graph::shape_numel(ba) == l.d;
  if (!l.scale.contiguous) {
    const StridedPlan p = make_broadcast_plan(normalized, {sa, ba}, what);
    l.scale.index = strided_index<2, int64_t>(p, {0, 1}, what);
  }
  return l;
}

// ---------------------------------------------------------------------------------------
// ReduceSum: X's shape with the reduced axes kept as 1 (axes empty: every axis, or none with
// noop_with_empty_axes). Throws naming `what` on an axis out of range.
// The shape a ReduceSum / ReduceMax / ReduceMin node reduces its input `x` to, with the reduced
// dims kept as 1: axes an attribute before `axes_input_opset` (13 for ReduceSum, 18 for the
// others), else the optional constant input 1 with noop_with_empty_axes. Throws naming the node
// where the axes are computed at run time or the output does not hold the reduction.
graph::Shape reduce_node_keep_shape(const graph::Node& n, int64_t opset, int64_t axes_input_opset,
                                    const graph::Shape& x);

inline graph::Shape reduced_keep_shape(const graph::Shape& x, const std::vector<int64_t>& axes, bool noop,
                                       const std::string& what) {
  graph::Shape kept = x;
  const int64_t rank = static_cast<int64_t>(x.size());
  if (axes.empty() && !noop)
    for (int64_t& d : kept) d = 1;
  for (int64_t a : axes) {
    if (a < -rank || a >= rank)
      throw Error(what + ": axis " + std::to_string(a) + " is out of range for rank " + std::to_string(rank));
    kept[a < 0 ? a + rank : a] = 1;
  }
  return kept;
}

// ---------------------------------------------------------------------------------------
// ReduceMax / ReduceMin over any axes: output j is the extreme of its reduced elements, found
// by one thread (a CPU loop iteration, a CUDA thread) in the same order on both devices, so
// the results are the same. NaN wins (numpy's maximum.reduce); an empty reduction gives -inf
// (ReduceMax) or +inf (ReduceMin), as ONNX says.

struct ExtremePlan {
  enum Kind : int { nothing, fill, copy, reduce };
  int kind = nothing;
  int64_t ny = 0;
  int64_t inner = 1;          // the innermost run's length
  bool inner_reduced = true;  // the innermost run is reduced (else kept: outputs j = o * inner + c)
  int64_t rows = 1;           // elements of the other reduced runs
  int nk = 0, nr = 0;
  int64_t kdims[kMaxRank] = {}, kst[kMaxRank] = {};  // kept runs, outermost first
  int64_t rdims[kMaxRank] = {}, rst[kMaxRank] = {};  // reduced runs, outermost first
};

// x of shape `xs` reduced to `kept` (xs with the reduced dims as 1).
inline ExtremePlan make_extreme_plan(const graph::Shape& xs, const graph::Shape& kept, const std::string& what) {
  const ReducePlan r = make_reduce_plan(xs, kept);
  ExtremePlan p;
  p.ny = r.ny;
  switch (r.kind) {
    case ReduceKind::nothing: p.kind = ExtremePlan::nothing; return p;
    case ReduceKind::fill: p.kind = ExtremePlan::fill; return p;
    case ReduceKind::copy: p.kind = ExtremePlan::copy; return p;
    default: break;
  }
  if (r.kdims.size() > static_cast<size_t>(kMaxRank) || r.rdims.size() > static_cast<size_t>(kMaxRank))
    throw Error(what + ": too many dimensions to reduce");
  p.kind = ExtremePlan::reduce;
  p.inner = r.inner;
  p.inner_reduced = r.kind == ReduceKind::inner_reduced;
  p.nk = static_cast<int>(r.kdims.size());
  p.nr = static_cast<int>(r.rdims.size());
  for (int i = 0; i < p.nk; ++i) p.kdims[i] = r.kdims[i], p.kst[i] = r.kst[i];
  for (int i = 0; i < p.nr; ++i) {
    p.rdims[i] = r.rdims[i], p.rst[i] = r.rst[i];
    p.rows *= r.rdims[i];
  }
  return p;
}

// The offset of element `flat` of runs `dims` (outermost first) with strides `st`.
OXTRAIN_HD int64_t run_offset(int64_t flat, const int64_t* dims, const int64_t* st, int n) {
  int64_t off = 0;
  for (int d = n - 1; d >= 0; --d) {
    off += (flat % dims[d]) * st[d];
    flat /= dims[d];
  }
  return off;
}

// The reduction of nothing: -inf for a float maximum, +inf for a minimum; an integer type's
// lowest or highest value (for bool, stored as uint8_t, the caller writes 0 or 1).
template <typename T, bool kMax>
OXTRAIN_HD T extreme_identity() {
  if constexpr (std::is_floating_point_v<T>) return kMax ? -static_cast<T>(INFINITY) : static_cast<T>(INFINITY);
  else return kMax ? IntRange<T>::min : IntRange<T>::max;
}

template <typename T, bool kMax>
OXTRAIN_HD T extreme_step(T acc, T v) {
  if (acc != acc) return acc;
  if (v != v) return v;
  return kMax ? (v > acc ? v : acc) : (v < acc ? v : acc);
}

// Output j of a reduce plan.
template <typename T, bool kMax>
OXTRAIN_HD T reduce_extreme_at(const T* x, const ExtremePlan& p, int64_t j) {
  T acc = extreme_identity<T, kMax>();
  if (p.inner_reduced) {
    const T* base = x + run_offset(j, p.kdims, p.kst, p.nk);
    for (int64_t r = 0; r < p.rows; ++r) {
      const T* src = base + run_offset(r, p.rdims, p.rst, p.nr);
      for (int64_t i = 0; i < p.inner; ++i) acc = extreme_step<T, kMax>(acc, src[i]);
    }
  } else {
    const T* base = x + run_offset(j / p.inner, p.kdims, p.kst, p.nk) + j % p.inner;
    for (int64_t r = 0; r < p.rows; ++r) acc = extreme_step<T, kMax>(acc, base[run_offset(r, p.rdims, p.rst, p.nr)]);
  }
  return acc;
}

// BatchNormalization with given statistics (inference), on the CPU and the GPU alike: the
// per-channel factor k = scale / sqrt(var + eps) in double, rounded to T, then
// y = (x - mean) * k + bias in T.
template <typename T>
OXTRAIN_HD T batchnorm_inference_factor(T scale, T var, double eps) {
  return static_cast<T>(static_cast<double>(scale) / ::sqrt(static_cast<double>(var) + eps));
}
template <typename T>
OXTRAIN_HD T batchnorm_inference(T x, T mean, T k, T bias) {
  return (x - mean) * k + bias;
}

// The running statistics a training step leaves, from the batch's mean and (population)
// variance over m elements, ONNX's momentum weighing the previous value: the variance update
// is unbiased, as PyTorch's (biased when m is 1), unless `unbiased` is false (ONNX's text).
OXTRAIN_HD double batchnorm_running_mean(double previous, double mean, double momentum) {
  return momentum * previous + (1.0 - momentum) * mean;
}
OXTRAIN_HD double batchnorm_running_var(double previous, double var, int64_t m, double momentum,
                                               bool unbiased) {
  const double update = unbiased && m > 1 ? var * static_cast<double>(m) / static_cast<double>(m - 1) : var;
  return momentum * previous + (1.0 - momentum) * update;
}

// dX of batch norm from the channel's sums (sum of dY and of dY * xhat over m elements):
// k * (m * dy - sum_dy - xhat * sum_dy_xhat), k = scale * inv_std / m.
OXTRAIN_HD double batchnorm_grad_input(double dy, double x, double mean, double inv_std, double k, double m,
                                              double sum_dy, double sum_dy_xhat) {
  const double xhat = (x - mean) * inv_std;
  return k * (m * dy - sum_dy - xhat * sum_dy_xhat);
}

// Batch norm's output from the statistics it stored (oxtrain.BatchNormTraining's saved mean
// and inverse std, in the statistics' type U): y = T((x - mean) * (inv_std * scale) + bias),
// in double. The training kernel writes its output with this function, and
// oxtrain.BatchNormApply recomputes that output in backward (autodiff/fusion.h), so on the
// CPU the recomputed values are the forward's bits.
// (The GPU's explicit roundings keep nvcc from contracting into a fused multiply-add, so both
// devices give the same bits.)
template <typename T, typename U>
OXTRAIN_HD T batchnorm_apply(T x, U mean, U inv_std, U scale, U bias) {
  const double xc = static_cast<double>(x) - static_cast<double>(mean);
#ifdef __CUDA_ARCH__
  const double k = __dmul_rn(static_cast<double>(inv_std), static_cast<double>(scale));
  return static_cast<T>(__dadd_rn(__dmul_rn(xc, k), static_cast<double>(bias)));
#else
  const double k = static_cast<double>(inv_std) * static_cast<double>(scale);
  return static_cast<T>(xc * k + static_cast<double>(bias));
#endif
}

}  // namespace oxtrain::runtime::math
