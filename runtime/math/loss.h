// Per-row math of Softmax, SoftmaxCrossEntropyLoss and their gradients (oxtrain.SoftmaxGrad,
// oxtrain.SoftmaxCrossEntropyLossGrad), shared by the CPU kernels (runtime/cpu/loss.cc) and
// their CUDA twins (runtime/cuda/loss.cu).
//
// A row is one softmax vector: `d` elements `stride` apart. The CPU walks a row serially
// (first = 0, step = 1); a CUDA block splits it among its threads (first = thread index,
// step = block size) and combines the partial results with the same functions. Sums run in
// double on both; only their order differs (the CPU's eight lanes, the GPU's fixed tree).
//
// Precision, as the CPU kernels have always computed it:
//   Softmax: maximum and exp in T, sum of the exps in double, y = T(e / sum).
//   SoftmaxGrad: dot = sum(double(dy) * double(y)), dx = T(y * (dy - dot)) in double.
//   LogSoftmax: maximum and exp in T, sum of the exps in double, y = T((x - max) - log(sum)),
//     x - max in T, the rest in double.
//   LogSoftmaxGrad: sum = sum(double(dy)), dx = T(dy - exp(double(y)) * sum) in double.
//   SoftmaxCrossEntropyLoss: maximum, exp and log-sum-exp in double; log_prob = T(x - lse).
//   SoftmaxCrossEntropyLossGrad: dx = T((exp(double(log_prob)) - onehot) * k) in double.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

// exp in the argument's own precision (expf for float), on the host and on the device.
OXTRAIN_HD float exp_of(float v) { return ::expf(v); }
OXTRAIN_HD double exp_of(double v) { return ::exp(v); }

// The identity of max_step: -infinity.
template <typename T>
OXTRAIN_HD T lowest() {
  return -static_cast<T>(INFINITY);
}

// One step of a running maximum: a NaN never replaces the running value (a row holding a NaN
// still ends all NaN: its exp term is NaN, so is the row's sum).
template <typename T>
OXTRAIN_HD T max_step(T running, T v) {
  return v > running ? v : running;
}

// Maximum of a row's elements first, first + step, ... < d, in T; lowest<T>() when empty.
template <typename T>
OXTRAIN_HD T row_max(const T* row, int64_t d, int64_t stride, int64_t first, int64_t step) {
  T mx = lowest<T>();
  for (int64_t c = first; c < d; c += step) mx = max_step(mx, row[c * stride]);
  return mx;
}

// Maximum of the same elements, read as double (the loss computes in double).
template <typename T>
OXTRAIN_HD double row_max_double(const T* row, int64_t d, int64_t stride, int64_t first,
                                 int64_t step) {
  double mx = lowest<double>();
  for (int64_t c = first; c < d; c += step) mx = max_step(mx, static_cast<double>(row[c * stride]));
  return mx;
}

// ---------------------------------------------------------------------------------------
// Softmax: y = exp(x - max) / sum(exp(x - max)).

// The exp term of one element, in T.
template <typename T>
OXTRAIN_HD T softmax_exp(T x, T mx) {
  return exp_of(static_cast<T>(x - mx));
}

// The output of one element from its exp term and 1 / (the row's sum of exp terms).
template <typename T>
OXTRAIN_HD T softmax_normalize(T e, double inv_sum) {
  return static_cast<T>(static_cast<double>(e) * inv_sum);
}

// LogSoftmax: y = (x - max) - log(sum(exp(x - max))), from the row's log of that sum.
template <typename T>
OXTRAIN_HD T log_softmax_element(T x, T mx, double log_sum) {
  return static_cast<T>(static_cast<double>(static_cast<T>(x - mx)) - log_sum);
}

// ---------------------------------------------------------------------------------------
// SoftmaxGrad: dx = y * (dy - sum(dy * y)).

template <typename T>
OXTRAIN_HD double softmax_grad_term(T dy, T y) {
  return static_cast<double>(dy) * static_cast<double>(y);
}

template <typename T>
OXTRAIN_HD T softmax_grad_element(T dy, T y, double dot) {
  return static_cast<T>(static_cast<double>(y) * (static_cast<double>(dy) - dot));
}

// LogSoftmaxGrad: dx = dy - exp(y) * sum(dy), the row's sum of dy in double.
template <typename T>
OXTRAIN_HD T log_softmax_grad_element(T dy, T y, double dy_sum) {
  return static_cast<T>(static_cast<double>(dy) - ::exp(static_cast<double>(y)) * dy_sum);
}

// ---------------------------------------------------------------------------------------
// SoftmaxCrossEntropyLoss: lse = max + log(sum(exp(x - max))) in double,
// log_prob = x - lse, loss at a position = -w[label] * log_prob[label].

// The exp term of one element for the log-sum-exp.
template <typename T>
OXTRAIN_HD double lse_term(T x, double mx) {
  return ::exp(static_cast<double>(x) - mx);
}

OXTRAIN_HD double log_sum_exp(double mx, double sum_of_terms) { return mx + ::log(sum_of_terms); }

template <typename T>
OXTRAIN_HD T log_prob_of(T x, double lse) {
  return static_cast<T>(static_cast<double>(x) - lse);
}

// How the labels are read: each is in [0, classes) or, where has_ignore, the ignore index
// (which may lie outside [0, classes)).
struct LabelRule {
  int64_t classes = 0;
  bool has_ignore = false;
  int64_t ignore_index = 0;
};

enum class LabelKind { valid, ignored, out_of_range };

OXTRAIN_HD LabelKind label_kind(int64_t label, const LabelRule& rule) {
  if (rule.has_ignore && label == rule.ignore_index) return LabelKind::ignored;
  if (label < 0 || label >= rule.classes) return LabelKind::out_of_range;
  return LabelKind::valid;
}

// The weight of a valid label: w[label], or 1 without weights.
template <typename T>
OXTRAIN_HD double label_weight(const T* weights, int64_t label) {
  return weights ? static_cast<double>(weights[label]) : 1.0;
}

// The loss at one position with a valid label: -weight * (x[label] - lse).
template <typename T>
OXTRAIN_HD double position_loss(T x_label, double lse, double weight) {
  return -weight * (static_cast<double>(x_label) - lse);
}

// ---------------------------------------------------------------------------------------
// SoftmaxCrossEntropyLossGrad: dx = (exp(log_prob) - onehot(label)) * k, where
// k = w[label] * dLoss[position] (reduction none), w[label] * dLoss (sum) or
// w[label] * dLoss / sum of the weights of the positions not ignored (mean).

template <typename T>
OXTRAIN_HD T sce_grad_element(T log_prob, bool is_label, double k) {
  return static_cast<T>((::exp(static_cast<double>(log_prob)) - (is_label ? 1.0 : 0.0)) * k);
}

}  // namespace oxtrain::runtime::math
