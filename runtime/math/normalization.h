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
#include "runtime/math/hd.h"

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
