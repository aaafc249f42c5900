#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {

void register_cuda_pool_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
