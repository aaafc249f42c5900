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

}  // namespace oxtrain::runtime::math
