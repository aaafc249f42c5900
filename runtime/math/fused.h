// Per-element math of the batch-norm fusions' element-wise passes (runtime/fused_batchnorm.h),
// shared by the CPU pass (runtime/cpu/fused.cc) and its CUDA twin (runtime/cuda/fused.cu). Each
// is the composition of the unfused ops' own functions (runtime/math/elementwise.h), with half
// values rounded after the addition as the unfused Add rounds its output, so the fused graph
// gives the unfused graph's bits.
#pragma once

#include <cstdint>

#include "base/half.h"
#include "runtime/math/elementwise.h"
#include "runtime/math/hd.h"
#include "runtime/math/normalization.h"

namespace oxtrain::runtime::math {

template <typename T>
OXTRAIN_HD T add_relu(T y, T r) {
  return relu(add(y, r));
}

// Relu of a half value: +0 for a negative one, else the value itself (-0 and NaN stay).
OXTRAIN_HD uint16_t relu_half(uint16_t h, bool bf16) { return half_to_float(h, bf16) < 0.0f ? uint16_t{0} : h; }

OXTRAIN_HD uint16_t add_relu_half(uint16_t y, uint16_t r, bool bf16) {
  return relu_half(float_to_half(add(half_to_float(y, bf16), half_to_float(r, bf16)), bf16), bf16);
}

OXTRAIN_HD uint16_t relu_grad_half(uint16_t dz, uint16_t z, bool bf16) {
  return half_to_float(z, bf16) > 0.0f ? dz : uint16_t{0};
}

// Element i of oxtrain.BatchNormReluApply in one step, as the GPU's single pass computes it:
// batch norm's output from the saved statistics (batchnorm_apply) rounded to the element type
// (kind 0 float32, 1 float16, 2 bfloat16: base/half.h), then Relu(Y + R) (r null: Relu(Y))
// rounded again. The CPU's two passes (BatchNormApply, then add_relu) give the same bits.
template <int kKind>
OXTRAIN_HD void batchnorm_relu_apply_element(const void* x, const void* r, void* z, int64_t i, float mean,
                                             float inv_std, float scale, float bias) {
  if constexpr (kKind == 0) {
    const float y = batchnorm_apply(static_cast<const float*>(x)[i], mean, inv_std, scale, bias);
    static_cast<float*>(z)[i] = r ? add_relu(y, static_cast<const float*>(r)[i]) : relu(y);
  } else {
    constexpr bool bf16 = kKind == 2;
    const uint16_t y = float_to_half(
        batchnorm_apply(half_to_float(static_cast<const uint16_t*>(x)[i], bf16), mean, inv_std, scale, bias), bf16);
    static_cast<uint16_t*>(z)[i] =
        r ? add_relu_half(y, static_cast<const uint16_t*>(r)[i], bf16) : relu_half(y, bf16);
  }
}

}  // namespace oxtrain::runtime::math
