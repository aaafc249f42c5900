// Batch normalisation: the inference form (BatchNormalization with given statistics), the
// training form (oxtrain.BatchNormTraining: batch statistics, running-stat update), its
// gradient (oxtrain.BatchNormGrad) and its output recomputed from saved statistics
// (oxtrain.BatchNormApply).
//
// Every channel is handled by one thread, which sums its N*H*W elements in double in a fixed
// order, so results are bit-identical from run to run. The running-stat outputs may share a
// buffer with the running-stat inputs: a channel's inputs are all read before any of its
// outputs is written.
#include <cmath>
#include <string>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/normalization.h"

namespace oxtrain::runtime {
namespace {

using cpu::dispatch_float;
using cpu::kParallelMin;
using cpu::lane_sum;
using cpu::optional_out;

// Checks X [N,C,...] and that inputs first..last are [C] of X's type; returns X's type.
DType check_inputs(const Node& n, size_t first, size_t last, const char* const names[]) {
  const graph::Value* x = n.input(0);
  if (!x) throw Error(n.describe() + ": input 0 is missing");
  if (x->rank_known && x->shape.size() < 2)
    throw Error(n.describe() + ": input '" + x->name + "' has shape " + x->shape_string() +
                ", expected [N, C, ...]");
  DType dt = x->dtype;
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(n.describe() + ": element type " + graph::dtype_name(dt) +
                " is not supported on the CPU (float32 and float64 are)");
  for (size_t i = first; i <= last; ++i) {
    const graph::Value* v = n.input(i);
    if (!v) throw Error(n.describe() + ": input " + names[i] + " is missing");
    if (v->dtype != dt)
      throw Error(n.describe() + ": " + names[i] + " '" + v->name + "' is " +
                  graph::dtype_name(v->dtype) + " but the input is " + graph::dtype_name(dt) +
                  " (mixed precision is not supported on the CPU)");
    if (x->rank_known && v->rank_known && graph::shape_known(x->shape) &&
        graph::shape_known(v->shape) && v->shape != graph::Shape{x->shape[1]})
      throw Error(n.describe() + ": " + names[i] + " '" + v->name + "' has shape " +
                  v->shape_string() + " but the input " + x->shape_string() + " has " +
                  std::to_string(x->shape[1]) + " channels");
  }
  return dt;
}

struct Geometry {
  int64_t batch, channels, spatial;
};

Geometry geometry(const graph::Shape& x) {
  Geometry g{x[0], x[1], 1};
  for (size_t d = 2; d < x.size(); ++d) g.spatial *= x[d];
  return g;
}

// ---------------------------------------------------------------------------------------

template <typename T>
void batchnorm_inference(const KernelArgs& a, double eps) {
  const Geometry g = geometry(a.inputs[0].shape);
  const T* x = a.inputs[0].as<T>();
  const T* scale = a.inputs[1].as<T>();
  const T* bias = a.inputs[2].as<T>();
  const T* mean = a.inputs[3].as<T>();
  const T* var = a.inputs[4].as<T>();
  T* y = a.outputs[0].as<T>();
  const int64_t planes = g.batch * g.channels;
#pragma omp parallel for schedule(static) if (planes * g.spatial >= kParallelMin && planes > 1)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t c = p % g.channels;
    const T k = math::batchnorm_inference_factor(scale[c], var[c], eps);
    const T m = mean[c], b = bias[c];
    const T* xp = x + p * g.spatial;
    T* yp = y + p * g.spatial;
#pragma omp simd
    for (int64_t i = 0; i < g.spatial; ++i) yp[i] = math::batchnorm_inference(xp[i], m, k, b);
  }
}

KernelFactory inference_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    int present = 0;
    for (const graph::Value* v : n.outputs) present += v != nullptr;
    if (n.attr_int("training_mode", 0) != 0 || present > 1)
      throw Error(n.describe() +
                  ": training-mode BatchNormalization runs as oxtrain.BatchNormTraining inside "
                  "a training graph");
    static const char* const names[] = {"X", "scale", "B", "input_mean", "input_var"};
    DType dt = check_inputs(n, 1, 4, names);
    const double eps = n.attr_float("epsilon", 1e-5f);
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([eps](const KernelArgs& a) { batchnorm_inference<T>(a, eps); });
    });
  };
}

// ---------------------------------------------------------------------------------------

template <typename T>
void batchnorm_training(const KernelArgs& a, double eps, double momentum, bool unbiased) {
  const Geometry g = geometry(a.inputs[0].shape);
  const T* x = a.inputs[0].as<T>();
  const T* scale = a.inputs[1].as<T>();
  const T* bias = a.inputs[2].as<T>();
  const T* run_mean = a.inputs[3].as<T>();
  const T* run_var = a.inputs[4].as<T>();
  T* y = a.outputs[0].as<T>();
  T* mean_out = optional_out<T>(a, 1);
  T* var_out = optional_out<T>(a, 2);
  T* saved_mean = optional_out<T>(a, 3);
  T* saved_inv_std = optional_out<T>(a, 4);
  const int64_t m = g.batch * g.spatial;
  const int64_t chw = g.channels * g.spatial;
#pragma omp parallel for schedule(static) if (m * g.channels >= kParallelMin && g.channels > 1)
  for (int64_t c = 0; c < g.channels; ++c) {
    // Read every per-channel input first: the running-stat outputs may alias them.
    const double sc = scale[c], b = bias[c], rm = run_mean[c], rv = run_var[c];
    double sum = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      const T* xp = x + n * chw + c * g.spatial;
      sum += lane_sum(g.spatial, [xp](int64_t i) { return xp[i]; });
    }
    const double mean = m > 0 ? sum / static_cast<double>(m) : 0.0;
    double sq = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      const T* xp = x + n * chw + c * g.spatial;
      sq += lane_sum(g.spatial, [xp, mean](int64_t i) {
        const double d = static_cast<double>(xp[i]) - mean;
        return d * d;
      });
    }
    const double var = m > 0 ? sq / static_cast<double>(m) : 0.0;
    const double inv_std = 1.0 / std::sqrt(var + eps);
    // Y from the statistics as stored, so oxtrain.BatchNormApply can recompute it exactly.
    const T mean_t = static_cast<T>(mean), inv_std_t = static_cast<T>(inv_std);
    const T sc_t = static_cast<T>(sc), b_t = static_cast<T>(b);
    for (int64_t n = 0; n < g.batch; ++n) {
      const T* xp = x + n * chw + c * g.spatial;
      T* yp = y + n * chw + c * g.spatial;
#pragma omp simd
      for (int64_t i = 0; i < g.spatial; ++i) yp[i] = math::batchnorm_apply(xp[i], mean_t, inv_std_t, sc_t, b_t);
    }
    // Running variance: unbiased, as PyTorch (biased when there is one element), or the
    // population variance as ONNX's text says (unbiased_running_var=0, `oxtrain run`).
    if (mean_out) mean_out[c] = static_cast<T>(math::batchnorm_running_mean(rm, mean, momentum));
    if (var_out) var_out[c] = static_cast<T>(math::batchnorm_running_var(rv, var, m, momentum, unbiased));
    if (saved_mean) saved_mean[c] = mean_t;
    if (saved_inv_std) saved_inv_std[c] = inv_std_t;
  }
}

KernelFactory training_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    static const char* const names[] = {"X", "scale", "B", "running_mean", "running_var"};
    DType dt = check_inputs(n, 1, 4, names);
    if (!n.output(0)) throw Error(n.describe() + ": output Y is missing");
    const double eps = n.attr_float("epsilon", 1e-5f);
    const double momentum = n.attr_float("momentum", 0.9f);
    const bool unbiased = n.attr_int("unbiased_running_var", 1) != 0;
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel(
          [eps, momentum, unbiased](const KernelArgs& a) { batchnorm_training<T>(a, eps, momentum, unbiased); });
    });
  };
}

// oxtrain.BatchNormApply(X, scale, B, mean, inv_std) -> Y: the training kernel's output from
// its saved statistics, bit for bit (math::batchnorm_apply).
template <typename T>
void batchnorm_apply(const KernelArgs& a) {
  const Geometry g = geometry(a.inputs[0].shape);
  const T* x = a.inputs[0].as<T>();
  const T* scale = a.inputs[1].as<T>();
  const T* bias = a.inputs[2].as<T>();
  const T* mean = a.inputs[3].as<T>();
  const T* inv_std = a.inputs[4].as<T>();
  T* y = a.outputs[0].as<T>();
  const int64_t planes = g.batch * g.channels;
#pragma omp parallel for schedule(static) if (planes * g.spatial >= kParallelMin && planes > 1)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t c = p % g.channels;
    const T* xp = x + p * g.spatial;
    T* yp = y + p * g.spatial;
#pragma omp simd
    for (int64_t i = 0; i < g.spatial; ++i) yp[i] = math::batchnorm_apply(xp[i], mean[c], inv_std[c], scale[c], bias[c]);
  }
}

KernelFactory apply_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    static const char* const names[] = {"X", "scale", "B", "mean", "inv_std"};
    DType dt = check_inputs(n, 1, 4, names);
    if (!n.output(0)) throw Error(n.describe() + ": output Y is missing");
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([](const KernelArgs& a) { batchnorm_apply<T>(a); });
    });
  };
}

// ---------------------------------------------------------------------------------------

template <typename T>
void batchnorm_grad(const KernelArgs& a) {
  const Geometry g = geometry(a.inputs[1].shape);
  const T* dy = a.inputs[0].as<T>();
  const T* x = a.inputs[1].as<T>();
  const T* scale = a.inputs[2].as<T>();
  const T* saved_mean = a.inputs[3].as<T>();
  const T* saved_inv_std = a.inputs[4].as<T>();
  T* dx = optional_out<T>(a, 0);
  T* dscale = optional_out<T>(a, 1);
  T* dbias = optional_out<T>(a, 2);
  const int64_t m = g.batch * g.spatial;
  const int64_t chw = g.channels * g.spatial;
#pragma omp parallel for schedule(static) if (m * g.channels >= kParallelMin && g.channels > 1)
  for (int64_t c = 0; c < g.channels; ++c) {
    const double mean = saved_mean[c], inv_std = saved_inv_std[c], sc = scale[c];
    // One pass for both sums: sum(dY) and sum(dY * (x - mean)), times inv_std for dScale.
    double sum_dy = 0, sum_dy_xc = 0;
    for (int64_t n = 0; n < g.batch; ++n) {
      const int64_t off = n * chw + c * g.spatial;
      const T* dyp = dy + off;
      const T* xp = x + off;
      double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= g.spatial; i += 8)
        for (int j = 0; j < 8; ++j) {
          const double d = dyp[i + j];
          a[j] += d;
          b[j] += d * (static_cast<double>(xp[i + j]) - mean);
        }
      for (int j = 0; i < g.spatial; ++i, ++j) {
        const double d = dyp[i];
        a[j] += d;
        b[j] += d * (static_cast<double>(xp[i]) - mean);
      }
      sum_dy += ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
      sum_dy_xc += ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
    }
    const double sum_dy_xhat = sum_dy_xc * inv_std;
    if (dx) {
      const double md = static_cast<double>(m);
      const double k = m > 0 ? sc * inv_std / md : 0.0;
      for (int64_t n = 0; n < g.batch; ++n) {
        const int64_t off = n * chw + c * g.spatial;
        const T* dyp = dy + off;
        const T* xp = x + off;
        T* dxp = dx + off;
#pragma omp simd
        for (int64_t i = 0; i < g.spatial; ++i)
          dxp[i] = static_cast<T>(math::batchnorm_grad_input(dyp[i], xp[i], mean, inv_std, k, md, sum_dy,
                                                             sum_dy_xhat));
      }
    }
    if (dscale) dscale[c] = static_cast<T>(sum_dy_xhat);
    if (dbias) dbias[c] = static_cast<T>(sum_dy);
  }
}

KernelFactory grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    // Inputs: dY, X, scale, saved_mean, saved_inv_std; X is input 1 here.
    const graph::Value* dy = n.input(0);
    const graph::Value* x = n.input(1);
    if (!dy || !x) throw Error(n.describe() + ": inputs dY and X are required");
    if (dy->dtype != x->dtype || (dy->rank_known && x->rank_known && dy->shape != x->shape))
      throw Error(n.describe() + ": dY " + dy->shape_string() + " " + graph::dtype_name(dy->dtype) +
                  " and X " + x->shape_string() + " " + graph::dtype_name(x->dtype) + " differ");
    // check_inputs looks at input 0 for X's shape and type; dY has both.
    static const char* const names[] = {"dY", "X", "scale", "saved_mean", "saved_inv_std"};
    DType dt = check_inputs(n, 2, 4, names);
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([](const KernelArgs& a) { batchnorm_grad<T>(a); });
    });
  };
}

}  // namespace

void register_cpu_norm_kernels(KernelRegistry& registry) {
  registry.add("", "BatchNormalization", Device::cpu, inference_factory());
  registry.add("oxtrain", "BatchNormTraining", Device::cpu, training_factory());
  registry.add("oxtrain", "BatchNormGrad", Device::cpu, grad_factory());
  registry.add("oxtrain", "BatchNormApply", Device::cpu, apply_factory());
}

}  // namespace oxtrain::runtime
