// CUDA kernels of one op family: element-wise math, comparisons, Where, Cast.
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {

void register_cuda_pointwise_kernels(KernelRegistry& registry) { (void)registry; }

}  // namespace oxtrain::runtime
