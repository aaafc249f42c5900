// CPU kernels of one op family: Dropout and RandomUniformLike in training mode.
#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_random_kernels(KernelRegistry& registry) { (void)registry; }

}  // namespace oxtrain::runtime
