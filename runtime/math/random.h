// The counter-based random generator of the random ops (Dropout in training mode,
// RandomUniform(Like), RandomNormal(Like)), shared by the CPU kernels and their CUDA twins so
// both draw the same bits.
//
// Design. Every random number is a pure function of (key, step, element index):
//   - key: 64 bits per node, fixed when the graph is built (graph/random.h): a hash of the
//     run's seed (`oxtrain train --seed`), the node's name and its output's name, and the
//     node's ONNX `seed` attribute when it has one. It travels as the node's `key` attribute.
//   - step: the training step (the training graph's int64 `step` input: 0 on the first step,
//     restored from the checkpoint on resume), read by the kernel from device memory, so a
//     captured CUDA graph replays with the step of each run.
//   - element index: the position in the output, flattened.
// No state is carried from one step to the next, so a mask is the same whatever the thread
// count, the device, and whether the run was resumed; another step or another node gives
// other numbers.
//
// The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
// 3", SC'11; the generator of cuRAND and PyTorch's CUDA kernels): counter (c0, c1) = block
// index (64 bits), (c2, c3) = step (64 bits), key (k0, k1) = the node's key. One call gives
// four 32-bit words: block b serves elements 4b..4b+3 (float32 values, masks) or 2b..2b+1
// (float64 values, which take two words each; normal pairs take all four).
//
// Conversions use only integer operations, exact scalings by powers of two, correctly rounded
// fma, division and square root (IEEE on both the host and the GPU), and polynomials evaluated
// with fma, so the CPU and the GPU give the same bits:
//   uniform float32 in [0, 1): (w >> 8) * 2^-24;   float64: 53 bits of two words * 2^-53
//   U(low, high): fma(high - low, u, low) in the output type
//   normal: Box-Muller in float64, r = sqrt(-2 log u1) with u1 in (0, 1], angle 2 pi u2, with
//   this file's own log and sin/cos (accurate to a few units in the last place of float64);
//   mean + scale * z by fma in float64, then rounded to the output type.
//   Dropout: element i is dropped when its float32 uniform is below the ratio (a fraction
//   `ratio` of elements on average); Y = X * (kept ? scale : 0) with scale = 1 / (1 - ratio)
//   rounded to the element type, 0 when ratio is 1 (PyTorch's CPU dropout multiplies by its
//   noise tensor the same way: a dropped infinity or NaN gives NaN).
#pragma once

#include <math.h>

#include <cstdint>

#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

OXTRAIN_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32 with 10 rounds: counter c[4], key (k0, k1) -> out[4].
OXTRAIN_HD void philox4x32_10(const uint32_t c[4], uint32_t k0, uint32_t k1, uint32_t out[4]) {
  uint32_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// The four words of block `block` at `step` for `key`.
OXTRAIN_HD void random_block(uint64_t key, int64_t step, int64_t block, uint32_t out[4]) {
  const uint64_t b = static_cast<uint64_t>(block), s = static_cast<uint64_t>(step);
  const uint32_t c[4] = {static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32),
                         static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)};
  philox4x32_10(c, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32), out);
}

// Uniform in [0, 1) from one word: 24 bits, exact in float32.
OXTRAIN_HD float uniform24(uint32_t w) { return static_cast<float>(w >> 8) * 5.9604644775390625e-8f; }
// Uniform in [0, 1) from two words: 53 bits, exact in float64.
OXTRAIN_HD double uniform53(uint32_t a, uint32_t b) {
  const uint64_t bits = (static_cast<uint64_t>(a >> 5) << 26) | (b >> 6);
  return static_cast<double>(bits) * 1.1102230246251565e-16;  // 2^-53
}

// Elements of one block per output type: float64 values take two words.
template <typename T>
OXTRAIN_HD int values_per_block() {
  return sizeof(T) == 8 ? 2 : 4;
}

// U(low, high) for lane `lane` of a block's words.
OXTRAIN_HD float uniform_value(const uint32_t w[4], int lane, float low, float high) {
  return fmaf(high - low, uniform24(w[lane]), low);
}
OXTRAIN_HD double uniform_value(const uint32_t w[4], int lane, double low, double high) {
  return fma(high - low, uniform53(w[2 * lane], w[2 * lane + 1]), low);
}

// Natural logarithm of u in (0, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)), log m by the
// series of atanh: 2 (s + s^3/3 + ... + s^23/23), s = (m - 1) / (m + 1), |s| < 0.172.
OXTRAIN_HD double log_unit(double u) {
  int e = 0;
  double m = frexp(u, &e);  // m in [0.5, 1)
  if (m < 0.70710678118654752) {
    m *= 2.0;
    e -= 1;
  }
  const double s = (m - 1.0) / (m + 1.0);
  const double z = s * s;
  double p = 1.0 / 23;
  p = fma(p, z, 1.0 / 21);
  p = fma(p, z, 1.0 / 19);
  p = fma(p, z, 1.0 / 17);
  p = fma(p, z, 1.0 / 15);
  p = fma(p, z, 1.0 / 13);
  p = fma(p, z, 1.0 / 11);
  p = fma(p, z, 1.0 / 9);
  p = fma(p, z, 1.0 / 7);
  p = fma(p, z, 1.0 / 5);
  p = fma(p, z, 1.0 / 3);
  const double t = 2.0 * s;
  const double log_m = fma(t * z, p, t);
  return fma(static_cast<double>(e), 0.69314718055994531, log_m);
}

// sin and cos of 2 pi t for t in [0, 1): the quadrant from 4t (exact), then Taylor series of
// the angle a in [0, pi/2) to a^21 and a^22 (truncation below 2^-60).
OXTRAIN_HD void sincos_turns(double t, double* sin_out, double* cos_out) {
  const double q = t * 4.0;
  const int quadrant = static_cast<int>(q);
  const double a = (q - quadrant) * 1.5707963267948966;
  const double z = a * a;
  // sin a = a (1 - z/3! + z^2/5! - ... - z^10/21!)
  double sp = -1.9572941063391263e-20;  // -1/21!
  sp = fma(sp, z, 8.2206352466243297e-18);   // 1/19!
  sp = fma(sp, z, -2.8114572543455206e-15);  // -1/17!
  sp = fma(sp, z, 7.6471637318198164e-13);   // 1/15!
  sp = fma(sp, z, -1.6059043836821613e-10);  // -1/13!
  sp = fma(sp, z, 2.5052108385441720e-08);   // 1/11!
  sp = fma(sp, z, -2.7557319223985893e-06);  // -1/9!
  sp = fma(sp, z, 1.9841269841269841e-04);   // 1/7!
  sp = fma(sp, z, -8.3333333333333332e-03);  // -1/5!
  sp = fma(sp, z, 1.6666666666666666e-01);   // 1/3!
  const double s = fma(-a * z, sp, a);
  // cos a = 1 - z/2! + z^2/4! - ... + z^11/22!
  double cp = -8.8967913924505741e-22;       // -1/22!
  cp = fma(cp, z, 4.1103176233121648e-19);   // 1/20!
  cp = fma(cp, z, -1.5619206968586225e-16);  // -1/18!
  cp = fma(cp, z, 4.7794773323873853e-14);   // 1/16!
  cp = fma(cp, z, -1.1470745597729725e-11);  // -1/14!
  cp = fma(cp, z, 2.0876756987868099e-09);   // 1/12!
  cp = fma(cp, z, -2.7557319223985888e-07);  // -1/10!
  cp = fma(cp, z, 2.4801587301587302e-05);   // 1/8!
  cp = fma(cp, z, -1.3888888888888889e-03);  // -1/6!
  cp = fma(cp, z, 4.1666666666666664e-02);   // 1/4!
  cp = fma(cp, z, -0.5);                     // -1/2!
  const double c = fma(z, cp, 1.0);
  switch (quadrant & 3) {
    case 0: *sin_out = s; *cos_out = c; break;
    case 1: *sin_out = c; *cos_out = -s; break;
    case 2: *sin_out = -s; *cos_out = -c; break;
    default: *sin_out = -c; *cos_out = s; break;
  }
}

// A standard normal for lane `lane` of a block (Box-Muller). Float32 outputs: lanes 0-3, the
// pairs (w0, w1) and (w2, w3) with 24-bit uniforms; float64 outputs: lanes 0-1, one pair of
// 53-bit uniforms (w0 w1, w2 w3).
OXTRAIN_HD double standard_normal(const uint32_t w[4], int lane, bool wide) {
  double u1, u2;
  int which;
  if (wide) {
    u1 = uniform53(w[0], w[1]) + 1.1102230246251565e-16;  // (0, 1]
    u2 = uniform53(w[2], w[3]);
    which = lane;
  } else {
    const int pair = lane >> 1;
    u1 = static_cast<double>(uniform24(w[2 * pair])) + 5.9604644775390625e-8;
    u2 = static_cast<double>(uniform24(w[2 * pair + 1]));
    which = lane & 1;
  }
  const double r = sqrt(-2.0 * log_unit(u1));
  double s, c;
  sincos_turns(u2, &s, &c);
  return r * (which == 0 ? c : s);
}

OXTRAIN_HD float normal_value(const uint32_t w[4], int lane, float mean, float scale) {
  return static_cast<float>(fma(static_cast<double>(scale), standard_normal(w, lane, false),
                                static_cast<double>(mean)));
}
OXTRAIN_HD double normal_value(const uint32_t w[4], int lane, double mean, double scale) {
  return fma(scale, standard_normal(w, lane, true), mean);
}

// Dropout: whether lane `lane` of a block survives (its uniform is not below the ratio).
OXTRAIN_HD bool dropout_keep(const uint32_t w[4], int lane, float ratio) {
  return !(uniform24(w[lane]) < ratio);
}
// The factor of the kept elements: 1 / (1 - ratio), 0 when every element is dropped.
OXTRAIN_HD double dropout_scale(float ratio) {
  return ratio < 1.0f ? 1.0 / (1.0 - static_cast<double>(ratio)) : 0.0;
}
template <typename T>
OXTRAIN_HD T dropout_apply(T x, bool keep, T scale) {
  return x * (keep ? scale : T(0));
}

}  // namespace oxtrain::runtime::math
