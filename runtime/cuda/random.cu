// CUDA kernels of one op family: Dropout and RandomUniformLike in training mode.
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {

void register_cuda_random_kernels(KernelRegistry& registry) { (void)registry; }

}  // namespace oxtrain::runtime
