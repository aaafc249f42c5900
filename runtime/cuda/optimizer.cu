#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {

void register_cuda_optimizer_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
