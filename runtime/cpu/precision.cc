// fp16's dynamic loss scaling on the CPU (the reference for runtime/cuda/precision.cu):
//   oxtrain.NonFinite(G1..Gn) -> found_inf: 1 when any element is infinite or NaN, else 0;
//   oxtrain.LossScaleUpdate(scale, good_steps, found_inf) -> (scale_new, good_steps_new), the
//   rule of PyTorch's GradScaler (runtime/math/optimizer.h).
// Half inputs arrive here widened to float32 (runtime/cpu/half_emulation.h), which keeps
// infinities and NaNs.
#include <cmath>
#include <string>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/math/optimizer.h"

namespace oxtrain::runtime {
namespace {

template <typename T>
bool any_non_finite(const T* x, int64_t count) {
  bool found = false;
#pragma omp parallel for reduction(|| : found) if (count >= cpu::kParallelMin)
  for (int64_t i = 0; i < count; ++i) found = found || !std::isfinite(x[i]);
  return found;
}

KernelFactory non_finite_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    for (size_t i = 0; i < n.inputs.size(); ++i)
      cpu::dispatch_float(n.input(i)->dtype, n.describe(), [](auto) { return 0; });
    return make_kernel([](const KernelArgs& a) {
      bool found = false;
      for (const TensorView& g : a.inputs) {
        if (found) break;
        found = g.dtype == DType::f32 ? any_non_finite(g.as<float>(), g.numel())
                                      : any_non_finite(g.as<double>(), g.numel());
      }
      a.outputs[0].as<float>()[0] = found ? 1.0f : 0.0f;
    });
  };
}

KernelFactory loss_scale_update_factory() {
  return [](const KernelInit& init) {
    const cpu::LossScaleConfig c = cpu::loss_scale_config(init.node);
    return make_kernel([c](const KernelArgs& a) {
      const math::LossScaleState s =
          math::loss_scale_update(a.inputs[0].as<float>()[0], a.inputs[1].as<int64_t>()[0],
                                  a.inputs[2].as<float>()[0] != 0.0f, c.growth, c.backoff, c.interval);
      a.outputs[0].as<float>()[0] = s.scale;
      a.outputs[1].as<int64_t>()[0] = s.good_steps;
    });
  };
}

}  // namespace

void register_cpu_precision_kernels(KernelRegistry& registry) {
  registry.add("oxtrain", "NonFinite", Device::cpu, non_finite_factory());
  registry.add("oxtrain", "LossScaleUpdate", Device::cpu, loss_scale_update_factory());
}

}  // namespace oxtrain::runtime
