#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_conv_kernels(KernelRegistry& registry) {}

}  // namespace oxtrain::runtime
