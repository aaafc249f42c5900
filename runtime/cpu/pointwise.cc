// CPU kernels of one op family: element-wise math, comparisons, Where, Cast.
#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_pointwise_kernels(KernelRegistry& registry) { (void)registry; }

}  // namespace oxtrain::runtime
