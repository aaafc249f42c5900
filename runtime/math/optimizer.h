// Per-element math of ai.onnx.preview.training.Momentum, shared by the CPU kernel
// (runtime/cpu/optimizer.cc) and its CUDA twin (runtime/cuda/optimizer.cu).
//
// With g' = g + norm_coefficient * x:
//   standard: v_new = alpha * v + beta * g',  x_new = x - lr * v_new
//   nesterov: v_new = alpha * v + beta * g',  x_new = x - lr * (g' + alpha * v_new)
// where beta is 1 on the first update (T <= 0). Everything is computed in T (the tensors'
// element type), as PyTorch's SGD does.
#pragma once

#include <cstdint>

#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

// The coefficients of one update, in the tensors' element type.
template <typename T>
struct MomentumCoefficients {
  T lr = 0, alpha = 0, beta = 0, norm_coefficient = 0;
  bool nesterov = false;
};

// beta as the update uses it: 1 on the first update (update count T <= 0).
template <typename T>
OXTRAIN_HD T momentum_beta(T beta, int64_t update_count) {
  return update_count <= 0 ? T(1) : beta;
}

template <typename T>
struct MomentumElement {
  T x, v;  // x_new, v_new
};

template <typename T>
OXTRAIN_HD MomentumElement<T> momentum_element(const MomentumCoefficients<T>& k, T x, T g, T v) {
  const T gd = k.norm_coefficient * x + g;
  const T vn = k.alpha * v + k.beta * gd;
  const T step = k.nesterov ? gd + k.alpha * vn : vn;
  return {x - k.lr * step, vn};
}

// fp16's dynamic loss scaling, as PyTorch's GradScaler does it. The gradients arrive multiplied
// by the loss scale S (backward starts from S instead of 1); oxtrain.ScaledMomentum updates
// with g * (1 / S), the reciprocal rounded to float32 first as torch's unscale does, and leaves
// X and V as they are when any gradient was not finite (found_inf != 0).
OXTRAIN_HD float loss_scale_inverse(float scale) { return static_cast<float>(1.0 / static_cast<double>(scale)); }

// oxtrain.LossScaleUpdate, per step: an overflow multiplies the scale by `backoff` and restarts
// the count of good steps; `interval` good steps in a row multiply it by `growth` (unless that
// overflows float32).
struct LossScaleState {
  float scale;
  int64_t good_steps;
};

OXTRAIN_HD LossScaleState loss_scale_update(float scale, int64_t good_steps, bool found_inf, float growth,
                                            float backoff, int64_t interval) {
  if (found_inf) return {scale * backoff, 0};
  const int64_t successful = good_steps + 1;
  if (successful < interval) return {scale, successful};
  const float grown = scale * growth;
  const bool finite = grown - grown == 0.0f;  // false for inf and NaN
  return {finite ? grown : scale, 0};
}

}  // namespace oxtrain::runtime::math
