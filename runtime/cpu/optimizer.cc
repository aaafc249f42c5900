// ai.onnx.preview.training.Momentum: SGD with momentum (standard or Nesterov) and weight
// decay, over n tensors at once. Inputs R (learning rate), T (update count), X1..Xn,
// G1..Gn, V1..Vn; outputs X1_new..Xn_new, V1_new..Vn_new. The outputs may share buffers
// with X and V: every element is read before it is written. Outputs are written (=). The
// per-element update (runtime/math/optimizer.h) is shared with the CUDA kernel.
//
// With alpha = momentum, beta = 1, norm_coefficient = weight_decay and V starting at 0 this
// is PyTorch's SGD(momentum, weight_decay, dampening=0, nesterov).
//
// oxtrain.ScaledMomentum (fp16's loss scaling) takes found_inf and loss_scale after T: the
// gradients are multiplied by 1 / loss_scale, and nothing changes when found_inf is nonzero.
#include <cstring>
#include <string>
#include <vector>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/math/optimizer.h"

namespace oxtrain::runtime {
namespace {

using cpu::parallel_chunks;

struct MomentumConfig {
  double alpha = 0, beta = 0, norm_coefficient = 0;
  bool nesterov = false;
};

template <typename T>
void momentum_update(const MomentumConfig& cfg, double lr, int64_t update_count, T grad_scale, const T* x,
                     const T* g, const T* v, T* x_new, T* v_new, int64_t count) {
  math::MomentumCoefficients<T> k;
  k.lr = static_cast<T>(lr);
  k.alpha = static_cast<T>(cfg.alpha);
  k.beta = math::momentum_beta(static_cast<T>(cfg.beta), update_count);
  k.norm_coefficient = static_cast<T>(cfg.norm_coefficient);
  k.nesterov = cfg.nesterov;
  parallel_chunks(count, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const math::MomentumElement<T> out = math::momentum_element(k, x[i], g[i] * grad_scale, v[i]);
      x_new[i] = out.x;
      v_new[i] = out.v;
    }
  });
}

double scalar_value(const TensorView& t) {
  switch (t.dtype) {
    case DType::f32: return t.as<float>()[0];
    case DType::f64: return t.as<double>()[0];
    case DType::i64: return static_cast<double>(t.as<int64_t>()[0]);
    case DType::i32: return t.as<int32_t>()[0];
    default: return 0;
  }
}

KernelFactory momentum_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const size_t count = cpu::momentum_tensor_count(n);
    const size_t lead = graph::momentum_leading_inputs(n);
    DType rt = n.input(0)->dtype, tt = n.input(1)->dtype;
    if (rt != DType::f32 && rt != DType::f64)
      throw Error(what + ": learning rate must be float32 or float64, not " +
                  graph::dtype_name(rt));
    if (tt != DType::i64 && tt != DType::i32)
      throw Error(what + ": update count T must be int64, not " + graph::dtype_name(tt));
    std::vector<DType> types;
    for (size_t i = 0; i < count; ++i) {
      DType dt = n.input(lead + i)->dtype;
      if (dt != DType::f32 && dt != DType::f64)
        throw Error(what + ": '" + n.input(lead + i)->name + "' is " + graph::dtype_name(dt) +
                    "; the CPU kernel updates float32 and float64 tensors");
      for (size_t j : {lead + count + i, lead + 2 * count + i})
        if (n.input(j)->dtype != dt || n.input(j)->shape != n.input(lead + i)->shape)
          throw Error(what + ": '" + n.input(j)->name + "' " + n.input(j)->shape_string() +
                      " differs in type or shape from '" + n.input(lead + i)->name + "' " +
                      n.input(lead + i)->shape_string());
      types.push_back(dt);
    }
    for (const char* key : {"alpha", "beta"})
      if (!n.has_attr(key)) throw Error(what + ": attribute " + key + " is required");
    MomentumConfig cfg;
    cfg.alpha = n.attr_float("alpha", 0.0f);
    cfg.beta = n.attr_float("beta", 0.0f);
    cfg.norm_coefficient = n.attr_float("norm_coefficient", 0.0f);
    const std::string mode = n.attr_string("mode", "standard");
    if (mode != "standard" && mode != "nesterov")
      throw Error(what + ": unknown mode '" + mode + "' (standard or nesterov)");
    cfg.nesterov = mode == "nesterov";
    return make_kernel([cfg, count, lead, types](const KernelArgs& a) {
      const double lr = scalar_value(a.inputs[0]);
      const TensorView& t = a.inputs[1];
      const int64_t update_count =
          t.dtype == DType::i32 ? t.as<int32_t>()[0] : t.as<int64_t>()[0];
      const bool skip = lead == 4 && a.inputs[2].as<float>()[0] != 0.0f;
      const float grad_scale = lead == 4 ? math::loss_scale_inverse(a.inputs[3].as<float>()[0]) : 1.0f;
      for (size_t i = 0; i < count; ++i) {
        const TensorView& x = a.inputs[lead + i];
        const TensorView& g = a.inputs[lead + count + i];
        const TensorView& v = a.inputs[lead + 2 * count + i];
        const TensorView& xn = a.outputs[i];
        const TensorView& vn = a.outputs[count + i];
        if (skip) {  // the state stays; outputs that have their own buffers get a copy of it
          if (xn.data != x.data) std::memmove(xn.data, x.data, x.bytes());
          if (vn.data != v.data) std::memmove(vn.data, v.data, v.bytes());
        } else if (types[i] == DType::f32) {
          momentum_update(cfg, lr, update_count, grad_scale, x.as<float>(), g.as<float>(), v.as<float>(),
                          xn.as<float>(), vn.as<float>(), x.numel());
        } else {
          momentum_update(cfg, lr, update_count, static_cast<double>(grad_scale), x.as<double>(), g.as<double>(),
                          v.as<double>(), xn.as<double>(), vn.as<double>(), x.numel());
        }
      }
    });
  };
}

}  // namespace

void register_cpu_optimizer_kernels(KernelRegistry& registry) {
  registry.add("ai.onnx.preview.training", "Momentum", Device::cpu, momentum_factory());
  registry.add("oxtrain", "ScaledMomentum", Device::cpu, momentum_factory());
}

}  // namespace oxtrain::runtime
