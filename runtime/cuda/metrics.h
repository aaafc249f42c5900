// Loss and top-k accuracy accumulated on the device, so that a training loop need not copy
// the logits to the host every step: the CUDA twin of accumulate_metrics_cpu
// (runtime/math/metrics.h), with the same top-k order and the same sums.
#pragma once

#include <cuda_runtime.h>

#include "runtime/math/metrics.h"

namespace oxtrain::runtime::cuda {

// Adds (+=) to a.sums[0..2] the loss times the batch size, the top-1 hits and the top-5 hits
// of the batch; every pointer of `a` is a device pointer. Launches on `stream` and returns
// the launch's status (cudaErrorInvalidValue for a negative batch or classes, or null
// pointers with a non-empty batch). Deterministic: the hits are integer counts added in a
// fixed order, and each sum gets one addition per call.
cudaError_t accumulate_metrics(const MetricsArgs& a, cudaStream_t stream);

}  // namespace oxtrain::runtime::cuda
