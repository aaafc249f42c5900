// float16 and bfloat16 as 16-bit patterns, converted to and from float32 the way the GPU's
// conversion instructions do it (__float2half_rn, __float2bfloat16_rn): round to nearest, ties
// to even; float16 overflows to infinity (65520 and above), NaN stays NaN (quiet). Widening is
// exact. The CPU runtime computes half-precision ops in float32 and rounds their outputs with
// these, import and the mixed-precision pass convert constants with them, and CUDA kernels use
// the same functions where they convert by hand.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define OXTRAIN_HALF_HD __host__ __device__ __forceinline__
#else
#define OXTRAIN_HALF_HD inline
#endif

namespace oxtrain {

OXTRAIN_HALF_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

OXTRAIN_HALF_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

OXTRAIN_HALF_HD uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // ties to even
  return static_cast<uint16_t>(u >> 16);
}

OXTRAIN_HALF_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

OXTRAIN_HALF_HD uint16_t float_to_fp16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // 65520 and up: infinity
  if (a < 0x38800000u) {
    // Below 2^-14, float16's subnormals (steps of 2^-24): adding 0.5f, whose last place is
    // 2^-24, rounds the magnitude to that step, ties to even; the low bits are then the result.
    const float rounded = bits_float(a) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(rounded) - 0x3f000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  a += 0xc8000fffu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | (a >> 13));
}

OXTRAIN_HALF_HD float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
    return bits_float(sign | float_bits(magnitude));
  }
  return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// Either half type: bfloat16 when `bf16`, else float16.
OXTRAIN_HALF_HD float half_to_float(uint16_t h, bool bf16) { return bf16 ? bf16_to_float(h) : fp16_to_float(h); }
OXTRAIN_HALF_HD uint16_t float_to_half(float f, bool bf16) { return bf16 ? float_to_bf16(f) : float_to_fp16(f); }

// Element i of a buffer of float32 (kind 0), float16 (1) or bfloat16 (2) as float32, and a
// float32 stored into one, rounded as above: kernels that take all three through one body
// compute in float32 and round once, as the CPU's emulation of half does.
template <int kKind>
OXTRAIN_HALF_HD float load_float(const void* p, int64_t i) {
  if constexpr (kKind == 0) return static_cast<const float*>(p)[i];
  else return half_to_float(static_cast<const uint16_t*>(p)[i], kKind == 2);
}
template <int kKind>
OXTRAIN_HALF_HD void store_float(void* p, int64_t i, float v) {
  if constexpr (kKind == 0) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = float_to_half(v, kKind == 2);
}

// Four half values as one 8-byte load gives them: two 32-bit words, element 0 in the low half
// of `lo` (little-endian, as the GPU and the hosts oxtrain runs on).
OXTRAIN_HALF_HD void unpack_halves(uint32_t lo, uint32_t hi, bool bf16, float v[4]) {
  v[0] = half_to_float(static_cast<uint16_t>(lo & 0xffffu), bf16);
  v[1] = half_to_float(static_cast<uint16_t>(lo >> 16), bf16);
  v[2] = half_to_float(static_cast<uint16_t>(hi & 0xffffu), bf16);
  v[3] = half_to_float(static_cast<uint16_t>(hi >> 16), bf16);
}
OXTRAIN_HALF_HD void pack_halves(const float v[4], bool bf16, uint32_t& lo, uint32_t& hi) {
  lo = static_cast<uint32_t>(float_to_half(v[0], bf16)) | (static_cast<uint32_t>(float_to_half(v[1], bf16)) << 16);
  hi = static_cast<uint32_t>(float_to_half(v[2], bf16)) | (static_cast<uint32_t>(float_to_half(v[3], bf16)) << 16);
}

}  // namespace oxtrain
