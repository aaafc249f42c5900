// CUDA twin of runtime/cpu/normalize.h. Pointers are device pointers; `mean` and `std` in
// the params are host pointers (copied into kernel arguments). Writes (=) its output.
#pragma once

#include <cuda_runtime.h>

#include "runtime/cpu/normalize.h"

namespace oxtrain::runtime::cuda {

// Up to 4 channels.
cudaError_t normalize_u8_nhwc_to_f32_nchw(float* out, const uint8_t* in, const NormalizeParams& p,
                                          cudaStream_t stream);

}  // namespace oxtrain::runtime::cuda
