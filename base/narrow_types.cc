#include "base/narrow_types.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace oxtrain {

namespace {

struct Format {
  int exponent_bits, mantissa_bits, bias;
  bool fnuz;      // NaN is 0x80 (the negative zero's code); no negative zero, no infinity
  bool infinity;  // IEEE-style infinity and NaNs in the top exponent (E5M2)
};

Format format_of(NarrowFloat f) {
  switch (f) {
    case NarrowFloat::e4m3fn: return {4, 3, 7, false, false};
    case NarrowFloat::e4m3fnuz: return {4, 3, 8, true, false};
    case NarrowFloat::e5m2: return {5, 2, 15, false, true};
    case NarrowFloat::e5m2fnuz: return {5, 2, 16, true, false};
    case NarrowFloat::e2m1: return {2, 1, 1, false, false};
  }
  return {4, 3, 7, false, false};
}

uint8_t sign_bit(const Format& f) { return static_cast<uint8_t>(1u << (f.exponent_bits + f.mantissa_bits)); }

// The largest finite magnitude's code (without the sign).
uint8_t max_code(NarrowFloat n, const Format& f) {
  const uint8_t all = static_cast<uint8_t>(sign_bit(f) - 1);
  if (n == NarrowFloat::e4m3fn) return all - 1;  // 0x7F is NaN
  if (f.infinity) return static_cast<uint8_t>(all - (1u << f.mantissa_bits) - 0);  // exponent 30, mantissa 11
  return all;
}

uint8_t nan_code(NarrowFloat n, const Format& f, bool negative) {
  if (f.fnuz) return 0x80;
  if (n == NarrowFloat::e2m1) return sign_bit(f);  // no NaN: ml_dtypes gives -0
  const uint8_t quiet = n == NarrowFloat::e5m2 ? 0x7E : 0x7F;
  return static_cast<uint8_t>(quiet | (negative ? 0x80 : 0));
}

}  // namespace

double narrow_float_value(uint8_t code, NarrowFloat n) {
  const Format f = format_of(n);
  const uint8_t sign = sign_bit(f);
  code = static_cast<uint8_t>(code & (2 * sign - 1));
  if (f.fnuz && code == 0x80) return std::numeric_limits<double>::quiet_NaN();
  const bool negative = (code & sign) != 0;
  const int magnitude = code & (sign - 1);
  const int exponent = magnitude >> f.mantissa_bits, mantissa = magnitude & ((1 << f.mantissa_bits) - 1);
  const int top = (1 << f.exponent_bits) - 1;
  if (n == NarrowFloat::e4m3fn && exponent == top && mantissa == (1 << f.mantissa_bits) - 1)
    return std::numeric_limits<double>::quiet_NaN();
  if (f.infinity && exponent == top)
    return mantissa ? std::numeric_limits<double>::quiet_NaN()
                    : (negative ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity());
  const double value = exponent == 0 ? std::ldexp(mantissa, 1 - f.bias - f.mantissa_bits)
                                     : std::ldexp((1 << f.mantissa_bits) + mantissa, exponent - f.bias - f.mantissa_bits);
  return negative ? -value : value;
}

uint8_t narrow_float_code(double x, NarrowFloat n, bool saturate) {
  const Format f = format_of(n);
  const uint8_t sign = sign_bit(f);
  const bool negative = std::signbit(x);
  const uint8_t sign_of_x = negative ? sign : 0;
  if (std::isnan(x)) return nan_code(n, f, negative);
  const uint8_t largest = max_code(n, f);
  const double max_value = narrow_float_value(largest, n);
  // What an overflow gives: the largest value when saturating (E2M1 always), else infinity or NaN.
  auto overflow = [&]() -> uint8_t {
    if (saturate || n == NarrowFloat::e2m1) return static_cast<uint8_t>(largest | sign_of_x);
    if (f.infinity) return static_cast<uint8_t>(((1 << f.exponent_bits) - 1) << f.mantissa_bits | sign_of_x);
    return nan_code(n, f, negative);
  };
  const double a = std::fabs(x);
  if (std::isinf(a)) return overflow();
  const uint8_t zero = f.fnuz ? 0 : sign_of_x;
  if (a == 0) return zero;
  // Round to nearest even on the grid of a's binade (the subnormal one at the bottom).
  const int min_exponent = 1 - f.bias;
  int e = std::ilogb(a);
  if (e < min_exponent) e = min_exponent;
  double m = std::nearbyint(std::ldexp(a, f.mantissa_bits - e));  // in [0, 2^(mbits+1)]
  if (m >= std::ldexp(1.0, f.mantissa_bits + 1)) {
    m = std::ldexp(1.0, f.mantissa_bits);
    ++e;
  }
  if (m == 0) return zero;
  if (std::ldexp(m, e - f.mantissa_bits) > max_value) return overflow();
  const int mant = static_cast<int>(m);
  const int implicit = 1 << f.mantissa_bits;
  const int exponent_field = mant < implicit ? 0 : e + f.bias;
  return static_cast<uint8_t>((exponent_field << f.mantissa_bits | (mant & (implicit - 1))) | sign_of_x);
}

double e8m0_value(uint8_t code) {
  if (code == 0xFF) return std::numeric_limits<double>::quiet_NaN();
  return std::ldexp(1.0, static_cast<int>(code) - 127);
}

uint8_t e8m0_code(float x, bool saturate, const std::string& round_mode) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  uint32_t exponent = (bits >> 23) & 0xFF;
  if (exponent == 0xFF) return 0xFF;
  bool up = false;
  if (round_mode == "up") {
    up = (bits & 0x7FFFFF) != 0;
  } else if (round_mode == "nearest") {
    const bool guard = bits & 0x400000, round = bits & 0x200000, sticky = (bits & 0x1FFFFF) != 0;
    up = guard && (round || sticky || exponent > 0);
  }
  if (up && !(saturate && exponent == 0xFE)) ++exponent;
  return static_cast<uint8_t>(exponent);
}

int narrow_int_value(double x, int bits, bool is_signed) {
  const double lo = is_signed ? -std::ldexp(1.0, bits - 1) : 0.0;
  const double hi = is_signed ? std::ldexp(1.0, bits - 1) - 1 : std::ldexp(1.0, bits) - 1;
  if (!std::isfinite(x)) return 0;
  const double t = std::trunc(x);
  return t < lo || t > hi ? 0 : static_cast<int>(t);
}

}  // namespace oxtrain
