#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_elementwise_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
