// Per-element and per-channel math of the convolution and batch-norm fusion
// (autodiff/fusion.h, fuse_conv_batchnorm), shared by the CPU kernels (runtime/cpu/conv_stats.cc)
// and their CUDA twins (runtime/cuda/conv_stats.cu):
//   oxtrain.ConvStats's prologue P(x) = Relu(x * scale + bias), and the sums of its output;
//   oxtrain.BatchNormFinalize: batch norm's statistics from those sums, and the affine form of
//   its output that the next convolution's prologue applies.
// Where cuDNN runs a fused graph it does its own arithmetic; the own kernels use these.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/math/hd.h"
#include "runtime/math/normalization.h"

namespace oxtrain::runtime::math {

// The prologue, in T (float32 for half values): Relu(x * scale + bias), the product rounded
// before the sum on both devices (the build keeps either compiler from fusing them:
// -ffp-contract=off, --fmad=false), so the CPU and the GPU give the same bits.
template <typename T>
OXTRAIN_HD T scale_bias_relu(T x, T scale, T bias) {
  const T y = x * scale + bias;
  return y > T(0) ? y : T(0);
}

// One channel of oxtrain.BatchNormFinalize. Inputs: the channel's sum and sum of squares over
// `count` elements, its scale and bias (gamma, beta), the previous running statistics.
// In double: mean = sum / count, var = max(sum_sq / count - mean^2, 0) (the population
// variance), inv_std = 1 / sqrt(var + eps); the running statistics as
// oxtrain.BatchNormTraining updates them (batchnorm_running_mean / _var). The saved statistics
// are rounded to U (the statistics' type) and the affine form is computed from them, as
// oxtrain.BatchNormApply computes the output from them:
//   apply_scale = inv_std * gamma, apply_bias = beta - mean * apply_scale (in double; the
//   caller rounds both to the activations' type).
template <typename U>
struct BatchNormFinalized {
  U running_mean, running_var, saved_mean, saved_inv_std;
  double apply_scale, apply_bias;
};

template <typename U>
OXTRAIN_HD BatchNormFinalized<U> batchnorm_finalize(double sum, double sum_sq, int64_t count, U gamma, U beta,
                                                    U running_mean, U running_var, double eps, double momentum,
                                                    bool unbiased) {
  const double m = static_cast<double>(count);
  const double mean = sum / m;
  double var = sum_sq / m - mean * mean;
  if (!(var > 0.0)) var = var == var ? 0.0 : var;  // cancellation below zero; NaN stays NaN
  const double inv_std = 1.0 / ::sqrt(var + eps);
  BatchNormFinalized<U> f;
  f.running_mean = static_cast<U>(batchnorm_running_mean(static_cast<double>(running_mean), mean, momentum));
  f.running_var = static_cast<U>(batchnorm_running_var(static_cast<double>(running_var), var, count, momentum, unbiased));
  f.saved_mean = static_cast<U>(mean);
  f.saved_inv_std = static_cast<U>(inv_std);
  f.apply_scale = static_cast<double>(f.saved_inv_std) * static_cast<double>(gamma);
  f.apply_bias = static_cast<double>(beta) - static_cast<double>(f.saved_mean) * f.apply_scale;
  return f;
}

}  // namespace oxtrain::runtime::math
