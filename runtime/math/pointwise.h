// Per-element math of the pointwise family (runtime/cpu/pointwise.cc and its CUDA twin
// runtime/cuda/pointwise.cu): activations and their gradients, Clip, Pow, comparisons, Max/Min
// and their gradient, Mod. Every function compiles for the host and, under nvcc, for the
// device, so the CPU test suite checks the arithmetic the GPU runs.
//
// The gradients follow PyTorch's autograd at the kinks (tools/autograd/derivatives.yaml and
// the backward kernels of PyTorch 2.15, checked against it):
//  - Clip (torch.clamp with scalar bounds, hardtanh, relu6): dY where min < x < max, else 0;
//    a missing bound does not limit. ReLU6 exports as Clip(0, 6), torch.clamp as Clip too:
//    both give 0 at a bound.
//  - HardSigmoid (hardsigmoid_backward): alpha * dY where 0 < alpha * x + beta < 1, else 0.
//  - HardSwish (hardswish_backward): 0 where x <= -3, dY * (x / 3 + 0.5) where -3 < x < 3,
//    dY where x >= 3.
//  - Gelu (gelu_backward), both approximations with PyTorch's formulas.
//  - Max/Min (maximum/minimum backward): dY goes to the inputs equal to the result, split
//    evenly between ties (dY / 2 for two inputs, as PyTorch's).
//  - Pow (pow_backward): base: dY * b * a^(b - 1), 0 where b == 0; exponent:
//    dY * a^b * log(a), 0 where a == 0 and b >= 0.
//
// The transcendental functions come from each device's math library (libm, CUDA's), so the
// two may differ by a few float32 ulps; the rest is exact IEEE arithmetic.
#pragma once

#include <math.h>

#include <cstdint>
#include <type_traits>

#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

// Overloads of the C math functions for float and double, usable in host and device code.
OXTRAIN_HD float m_exp(float x) { return ::expf(x); }
OXTRAIN_HD double m_exp(double x) { return ::exp(x); }
OXTRAIN_HD float m_log(float x) { return ::logf(x); }
OXTRAIN_HD double m_log(double x) { return ::log(x); }
OXTRAIN_HD float m_tanh(float x) { return ::tanhf(x); }
OXTRAIN_HD double m_tanh(double x) { return ::tanh(x); }
OXTRAIN_HD float m_erf(float x) { return ::erff(x); }
OXTRAIN_HD double m_erf(double x) { return ::erf(x); }
OXTRAIN_HD float m_sqrt(float x) { return ::sqrtf(x); }
OXTRAIN_HD double m_sqrt(double x) { return ::sqrt(x); }
OXTRAIN_HD float m_pow(float x, float y) { return ::powf(x, y); }
OXTRAIN_HD double m_pow(double x, double y) { return ::pow(x, y); }
OXTRAIN_HD float m_floor(float x) { return ::floorf(x); }
OXTRAIN_HD double m_floor(double x) { return ::floor(x); }
OXTRAIN_HD float m_ceil(float x) { return ::ceilf(x); }
OXTRAIN_HD double m_ceil(double x) { return ::ceil(x); }
OXTRAIN_HD float m_fmod(float x, float y) { return ::fmodf(x, y); }
OXTRAIN_HD double m_fmod(double x, double y) { return ::fmod(x, y); }

template <typename T>
OXTRAIN_HD bool is_nan(T x) {
  return x != x;
}

// ---- activations ------------------------------------------------------------------------

// 1 / (1 + e^-x), written so that neither branch overflows.
template <typename T>
OXTRAIN_HD T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + m_exp(-x));
  const T e = m_exp(x);
  return e / (T(1) + e);
}
// From the forward output y: dY * y * (1 - y), PyTorch's sigmoid_backward.
template <typename T>
OXTRAIN_HD T sigmoid_grad(T dy, T y) {
  return dy * ((T(1) - y) * y);
}

template <typename T>
OXTRAIN_HD T tanh_of(T x) {
  return m_tanh(x);
}
// From the forward output y: dY * (1 - y^2), PyTorch's tanh_backward.
template <typename T>
OXTRAIN_HD T tanh_grad(T dy, T y) {
  return dy * (T(1) - y * y);
}

// min(max(x, lo), hi) as torch.clamp: a NaN x stays NaN; lo > hi gives hi everywhere (ONNX).
// The bounds are +-infinity where the node has none.
template <typename T>
OXTRAIN_HD T clip(T x, T lo, T hi) {
  const T t = x < lo ? lo : x;
  return t > hi ? hi : t;
}
template <typename T>
OXTRAIN_HD T clip_grad(T dy, T x, T lo, T hi) {
  return (x > lo && x < hi) ? dy : T(0);
}

// max(0, min(1, alpha * x + beta)); NaN stays NaN.
template <typename T>
OXTRAIN_HD T hard_sigmoid(T x, T alpha, T beta) {
  const T t = alpha * x + beta;
  const T u = t > T(1) ? T(1) : t;
  return u < T(0) ? T(0) : u;
}
template <typename T>
OXTRAIN_HD T hard_sigmoid_grad(T dy, T x, T alpha, T beta) {
  const T t = alpha * x + beta;
  return (t > T(0) && t < T(1)) ? dy * alpha : T(0);
}

// x * relu6(x + 3) / 6, PyTorch's formula (ONNX's x * max(0, min(1, x / 6 + 0.5)) up to
// rounding).
template <typename T>
OXTRAIN_HD T hard_swish(T x) {
  const T t = x + T(3);
  const T r = t < T(0) ? T(0) : (t > T(6) ? T(6) : t);
  return x * r / T(6);
}
template <typename T>
OXTRAIN_HD T hard_swish_grad(T dy, T x) {
  if (x <= T(-3)) return T(0);
  if (x < T(3)) return dy * (x / T(3) + T(0.5));
  return is_nan(x) ? x : dy;
}

template <typename T>
OXTRAIN_HD T erf_of(T x) {
  return m_erf(x);
}
// dY * 2 / sqrt(pi) * e^(-x^2).
template <typename T>
OXTRAIN_HD T erf_grad(T dy, T x) {
  const T k = T(1.12837916709551257390);  // 2 / sqrt(pi)
  return dy * (k * m_exp(-(x * x)));
}

// Gelu, approximate = "none": x / 2 * (1 + erf(x / sqrt(2))).
template <typename T>
OXTRAIN_HD T gelu(T x) {
  const T kAlpha = T(0.70710678118654752440);  // 1 / sqrt(2)
  return x * T(0.5) * (T(1) + m_erf(x * kAlpha));
}
template <typename T>
OXTRAIN_HD T gelu_grad(T dy, T x) {
  const T kAlpha = T(0.70710678118654752440);       // 1 / sqrt(2)
  const T kBeta = T(0.39894228040143267794);        // 1 / sqrt(2 pi)
  const T cdf = T(0.5) * (T(1) + m_erf(x * kAlpha));
  const T pdf = kBeta * m_exp(x * x * T(-0.5));
  return dy * (cdf + x * pdf);
}
// Gelu, approximate = "tanh": x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))).
template <typename T>
OXTRAIN_HD T gelu_tanh(T x) {
  const T kBeta = T(0.79788456080286535588);  // sqrt(2 / pi)
  const T kKappa = T(0.044715);
  const T inner = kBeta * (x + kKappa * (x * x * x));
  return T(0.5) * x * (T(1) + m_tanh(inner));
}
template <typename T>
OXTRAIN_HD T gelu_tanh_grad(T dy, T x) {
  const T kBeta = T(0.79788456080286535588);
  const T kKappa = T(0.044715);
  const T x_sq = x * x;
  const T inner = kBeta * (x + kKappa * (x_sq * x));
  const T t = m_tanh(inner);
  const T left = T(0.5) * x;
  const T right = T(1) + t;
  const T left_derivative = T(0.5) * right;
  const T right_derivative = left * (T(1) - t * t) * kBeta * (T(1) + T(3) * kKappa * x_sq);
  return dy * (left_derivative + right_derivative);
}

// ---- simple math --------------------------------------------------------------------------

template <typename T>
OXTRAIN_HD T sqrt_of(T x) {
  return m_sqrt(x);
}
// From the forward output y: dY / (2 y), PyTorch's.
template <typename T>
OXTRAIN_HD T sqrt_grad(T dy, T y) {
  return dy / (T(2) * y);
}
template <typename T>
OXTRAIN_HD T exp_of(T x) {
  return m_exp(x);
}
template <typename T>
OXTRAIN_HD T log_of(T x) {
  return m_log(x);
}
template <typename T>
OXTRAIN_HD T reciprocal(T x) {
  return T(1) / x;
}
// |x| that keeps NaN (and maps -0 to +0).
template <typename T>
OXTRAIN_HD T abs_of(T x) {
  return x < T(0) ? -x : (x == T(0) ? T(0) : x);
}
// -1, 0 or 1 (NaN for NaN); 0 at +-0, as torch.sign.
template <typename T>
OXTRAIN_HD T sign_of(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : (x == T(0) ? T(0) : x));
}
template <typename T>
OXTRAIN_HD T floor_of(T x) {
  return m_floor(x);
}
template <typename T>
OXTRAIN_HD T ceil_of(T x) {
  return m_ceil(x);
}

template <typename T>
OXTRAIN_HD T power(T a, T b) {
  return m_pow(a, b);
}
template <typename T>
OXTRAIN_HD T pow_grad_base(T dy, T a, T b) {
  return b == T(0) ? T(0) : dy * (b * m_pow(a, b - T(1)));
}
template <typename T>
OXTRAIN_HD T pow_grad_exponent(T dy, T a, T b) {
  return (a == T(0) && b >= T(0)) ? T(0) : dy * (m_pow(a, b) * m_log(a));
}

// Mod of floats: fmod = 1 is C's fmod (the dividend's sign); fmod = 0 takes the divisor's
// sign, as Python's %, numpy's mod and torch.remainder, a zero remainder included (-4 mod 2
// is +0, 4 mod -2 is -0).
template <typename T>
OXTRAIN_HD T mod_float(T a, T b, bool fmod) {
  const T r = m_fmod(a, b);
  if (fmod) return r;
  if (r == T(0)) return b < T(0) ? -T(0) : T(0);
  return ((r < T(0)) != (b < T(0))) ? r + b : r;
}
// Mod of integers; division by zero gives 0 rather than a trap.
template <typename T>
OXTRAIN_HD T mod_int(T a, T b, bool fmod) {
  if (b == T(0)) return T(0);
  if constexpr (std::is_unsigned_v<T>) {
    return static_cast<T>(a % b);  // no signs to reconcile
  } else {
    if (b == T(-1)) return T(0);  // INT_MIN % -1 overflows
    const T r = static_cast<T>(a % b);
    if (fmod) return r;
    return (r != T(0) && ((r < T(0)) != (b < T(0)))) ? static_cast<T>(r + b) : r;
  }
}

// ---- selection --------------------------------------------------------------------------

// max and min that propagate NaN, as torch.maximum and torch.minimum.
template <typename T>
OXTRAIN_HD T max_of(T a, T b) {
  return is_nan(a) ? a : (is_nan(b) ? b : (a < b ? b : a));
}
template <typename T>
OXTRAIN_HD T min_of(T a, T b) {
  return is_nan(a) ? a : (is_nan(b) ? b : (b < a ? b : a));
}

// ---- functors for the kernel templates ----------------------------------------------------

#define OXTRAIN_UNARY_FUNCTOR(Name, fn)                  \
  struct Name {                                          \
    template <typename T>                                \
    OXTRAIN_HD T operator()(T x) const { return fn(x); } \
  };
OXTRAIN_UNARY_FUNCTOR(SigmoidOp, sigmoid)
OXTRAIN_UNARY_FUNCTOR(TanhOp, tanh_of)
OXTRAIN_UNARY_FUNCTOR(HardSwishOp, hard_swish)
OXTRAIN_UNARY_FUNCTOR(ErfOp, erf_of)
OXTRAIN_UNARY_FUNCTOR(GeluOp, gelu)
OXTRAIN_UNARY_FUNCTOR(GeluTanhOp, gelu_tanh)
OXTRAIN_UNARY_FUNCTOR(SqrtOp, sqrt_of)
OXTRAIN_UNARY_FUNCTOR(ExpOp, exp_of)
OXTRAIN_UNARY_FUNCTOR(LogOp, log_of)
OXTRAIN_UNARY_FUNCTOR(ReciprocalOp, reciprocal)
OXTRAIN_UNARY_FUNCTOR(AbsOp, abs_of)
OXTRAIN_UNARY_FUNCTOR(SignOp, sign_of)
OXTRAIN_UNARY_FUNCTOR(FloorOp, floor_of)
OXTRAIN_UNARY_FUNCTOR(CeilOp, ceil_of)
#undef OXTRAIN_UNARY_FUNCTOR

// Gradients of one input from (dY, saved) where saved is the forward input or output.
#define OXTRAIN_GRAD_FUNCTOR(Name, fn)                          \
  struct Name {                                                 \
    template <typename T>                                       \
    OXTRAIN_HD T operator()(T dy, T s) const { return fn(dy, s); } \
  };
OXTRAIN_GRAD_FUNCTOR(SigmoidGradOp, sigmoid_grad)
OXTRAIN_GRAD_FUNCTOR(TanhGradOp, tanh_grad)
OXTRAIN_GRAD_FUNCTOR(HardSwishGradOp, hard_swish_grad)
OXTRAIN_GRAD_FUNCTOR(ErfGradOp, erf_grad)
OXTRAIN_GRAD_FUNCTOR(GeluGradOp, gelu_grad)
OXTRAIN_GRAD_FUNCTOR(GeluTanhGradOp, gelu_tanh_grad)
OXTRAIN_GRAD_FUNCTOR(SqrtGradOp, sqrt_grad)
#undef OXTRAIN_GRAD_FUNCTOR

// Unary ops with two float parameters fixed when the kernel is made.
struct ClipOp {
  double lo, hi;
  template <typename T>
  OXTRAIN_HD T operator()(T x) const { return clip(x, static_cast<T>(lo), static_cast<T>(hi)); }
};
struct ClipGradOp {
  double lo, hi;
  template <typename T>
  OXTRAIN_HD T operator()(T dy, T x) const {
    return clip_grad(dy, x, static_cast<T>(lo), static_cast<T>(hi));
  }
};
struct HardSigmoidOp {
  float alpha, beta;
  template <typename T>
  OXTRAIN_HD T operator()(T x) const {
    return hard_sigmoid(x, static_cast<T>(alpha), static_cast<T>(beta));
  }
};
struct HardSigmoidGradOp {
  float alpha, beta;
  template <typename T>
  OXTRAIN_HD T operator()(T dy, T x) const {
    return hard_sigmoid_grad(dy, x, static_cast<T>(alpha), static_cast<T>(beta));
  }
};

struct PowOp {
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const { return power(a, b); }
};
struct MaxOp {
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const { return max_of(a, b); }
};
struct MinOp {
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const { return min_of(a, b); }
};
struct ModOp {
  bool fmod;
  template <typename T>
  OXTRAIN_HD T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) return mod_float(a, b, fmod);
    else return mod_int(a, b, fmod);
  }
};

// Comparisons: bool (uint8_t 0/1) from two operands of one type.
enum class Compare : int { equal, less, greater, less_equal, greater_equal };
template <typename T>
OXTRAIN_HD uint8_t compare(Compare c, T a, T b) {
  switch (c) {
    case Compare::equal: return a == b;
    case Compare::less: return a < b;
    case Compare::greater: return a > b;
    case Compare::less_equal: return a <= b;
    case Compare::greater_equal: return a >= b;
  }
  return 0;
}

// Logical ops on bools (any nonzero byte is true); the result is 0 or 1.
enum class Logic : int { land, lor, lxor };
OXTRAIN_HD uint8_t logic(Logic l, uint8_t a, uint8_t b) {
  const bool x = a != 0, y = b != 0;
  return l == Logic::land ? (x && y) : l == Logic::lor ? (x || y) : (x != y);
}

// Conversion of one element for Cast. To bool: nonzero (NaN included) is true, stored as 1.
// Float to integer truncates toward zero; NaN gives 0 and values beyond the target's range
// saturate (C++ leaves both undefined, PyTorch's CPU and CUDA disagree there). Between
// integers the value wraps, as a C++ conversion; everything else is C++'s conversion.
// An integer type's range, and its ends as doubles (compared in double: every end of a type up
// to 32 bits is exact there; int64's and uint64's tops round up to 2^63 and 2^64, which no
// in-range value reaches).
template <typename T>
struct IntRange {
  using U = std::make_unsigned_t<T>;
  static constexpr T max = static_cast<T>(static_cast<U>(~U(0)) >> (std::is_signed_v<T> ? 1 : 0));
  static constexpr T min = std::is_signed_v<T> ? static_cast<T>(-max - 1) : T(0);
  static constexpr double lo = static_cast<double>(min), hi = static_cast<double>(max);
};

template <typename To, typename From>
OXTRAIN_HD To convert(From x) {
  constexpr bool from_float = From(0.5) != From(0);
  constexpr bool to_float = To(0.5) != To(0);
  if constexpr (from_float && !to_float) {
    if (is_nan(x)) return To(0);
    const double v = static_cast<double>(x);
    if (v <= IntRange<To>::lo) return IntRange<To>::min;
    if (v >= IntRange<To>::hi) return IntRange<To>::max;
    return static_cast<To>(x);
  } else {
    return static_cast<To>(x);
  }
}
template <typename From>
OXTRAIN_HD uint8_t to_bool(From x) {
  return x != From(0) ? 1 : 0;
}

}  // namespace oxtrain::runtime::math
