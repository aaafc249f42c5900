// Bilinear resampling of RGB images by precomputed taps, shared by the loader's CPU transforms
// (io/transforms.cc) and the GPU's resampling of images decoded by nvJPEG
// (runtime/cuda/jpeg_decoder.cc): output pixel (y, x) blends source rows rows[y].i0 and
// rows[y].i1, then columns cols[x].i0 and cols[x].i1, in float32, each operation rounded once
// (the host build stops contraction into a fused multiply-add, the CUDA build uses
// --fmad=false), and rounds to the nearest byte, ties to even. Both devices give the same bits.
#pragma once

#include <cstdint>

#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

// One output coordinate: value = v[i0] + w * (v[i1] - v[i0]).
struct ResampleTap {
  int i0 = 0, i1 = 0;
  float w = 0;
};

// a + w * (b - a): the blend of two rows at one column, then of two columns.
OXTRAIN_HD float resample_lerp(float a, float b, float w) { return a + w * (b - a); }

// The byte a blended value becomes: nearest, ties to even, saturated to [0, 255] (what SSE2's
// cvtps2dq and packus do on the host's vector path).
OXTRAIN_HD uint8_t resample_round(float v) {
#ifdef __CUDA_ARCH__
  const float r = rintf(v);
#else
  const float r = __builtin_rintf(v);
#endif
  return static_cast<uint8_t>(r < 0.0f ? 0.0f : r > 255.0f ? 255.0f : r);
}

// Channel c of output pixel (row tap r, column tap t) of an interleaved RGB image whose rows
// start `stride` bytes apart.
OXTRAIN_HD uint8_t resample_pixel(const uint8_t* src, int64_t stride, const ResampleTap& r,
                                  const ResampleTap& t, int c) {
  const uint8_t* a = src + stride * r.i0;
  const uint8_t* b = src + stride * r.i1;
  const int c0 = t.i0 * 3 + c, c1 = t.i1 * 3 + c;
  // A zero row weight copies row i0, as the host's row pass does (a + 0 * (b - a) == a).
  const float p = resample_lerp(float(a[c0]), float(b[c0]), r.w);
  const float q = resample_lerp(float(a[c1]), float(b[c1]), r.w);
  return resample_round(resample_lerp(p, q, t.w));
}

}  // namespace oxtrain::runtime::math
