#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_norm_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
