#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_matmul_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
