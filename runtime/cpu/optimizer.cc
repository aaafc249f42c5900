#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_optimizer_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
