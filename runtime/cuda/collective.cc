// CUDA collectives: see runtime/cuda/kernels.h.
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {

void register_cuda_collective_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
