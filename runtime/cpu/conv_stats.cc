// The CPU kernels of the convolution and batch-norm fusion (autodiff/fusion.h,
// fuse_conv_batchnorm), float32 and float64, channels-first; half values and channels-last
// nodes through the registry's emulations, as every CPU kernel. They are the reference of the
// GPU's fused cuDNN graphs and own kernels (runtime/cuda/conv_stats.cu):
//   oxtrain.ConvStats: the prologue Relu(X * scale + bias) into the workspace (when given), the
//     CPU's Conv kernel on it, then each output channel's sum and sum of squares in double.
//   oxtrain.ConvGradFilterScaleBiasRelu: the prologue, then the CPU's ConvGradFilter kernel.
//   oxtrain.BatchNormFinalize: math::batchnorm_finalize per channel.
//   oxtrain.ConvGradDataReluBatchNormWeight: the CPU's ConvGradData kernel into dS, then per
//     channel the ReLU's mask from batch norm's output recomputed (math::batchnorm_apply) and
//     the sums of dS and dS * (x - mean) in double, as BatchNormGrad sums them.
//   oxtrain.BatchNormGradApply: math::batchnorm_grad_input from those sums.
#include <string>

#include "graph/ops.h"
#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/inner_kernel.h"
#include "runtime/math/conv_batchnorm.h"

namespace oxtrain::runtime {
namespace {

using cpu::dispatch_float;
using cpu::kParallelMin;

using cpu::optional_out;
using cpu::required;

// p = Relu(x * scale + bias) per channel of x [N, C, ...].
template <typename T>
void prologue(const TensorView& x, const T* scale, const T* bias, T* p) {
  const int64_t channels = x.shape[1];
  const int64_t planes = x.shape[0] * channels;
  const int64_t spatial = planes > 0 ? x.numel() / planes : 0;
  const T* in = x.as<T>();
#pragma omp parallel for schedule(static) if (x.numel() >= kParallelMin && planes > 1)
  for (int64_t q = 0; q < planes; ++q) {
    const T s = scale[q % channels], b = bias[q % channels];
    const T* xp = in + q * spatial;
    T* pp = p + q * spatial;
    for (int64_t i = 0; i < spatial; ++i) pp[i] = math::scale_bias_relu(xp[i], s, b);
  }
}

// The node's X (input `slot`) through the prologue when the node has one: a view of the
// workspace's copy, else X itself.
template <typename T>
TensorView prologue_input(const KernelArgs& a, size_t slot, size_t scale_slot, bool has_prologue) {
  const TensorView& x = a.inputs[slot];
  if (!has_prologue) return x;
  T* p = static_cast<T*>(a.workspace);
  prologue<T>(x, a.inputs[scale_slot].as<T>(), a.inputs[scale_slot + 1].as<T>(), p);
  return TensorView{p, x.dtype, x.shape};
}

KernelArgs inner_args(const KernelArgs& a, std::vector<TensorView> inputs, std::vector<TensorView> outputs,
                      size_t own_bytes) {
  KernelArgs inner = a;
  inner.inputs = std::move(inputs);
  inner.outputs = std::move(outputs);
  inner.workspace = static_cast<uint8_t*>(a.workspace) + own_bytes;
  inner.workspace_bytes = a.workspace_bytes - own_bytes;
  return inner;
}

template <typename T>
class ConvStatsKernel final : public Kernel {
 public:
  explicit ConvStatsKernel(const KernelInit& init)
      : inner_(init, "", "Conv", {required(init.node, 0), required(init.node, 1)}, {required(init.node, 0, true)}) {
    const Node& n = init.node;
    prologue_ = n.input(2) != nullptr;
    if (prologue_) own_bytes_ = workspace_slice(static_cast<size_t>(n.input(0)->numel()) * sizeof(T));
  }
  size_t workspace_bytes() const override { return own_bytes_ + inner_.kernel->workspace_bytes(); }
  std::string describe() const override {
    return std::string(prologue_ ? "Relu(X * scale + bias) into the workspace, then " : "") + "the Conv kernel" +
           ", then the channel sums in a pass of their own";
  }
  void run(const KernelArgs& a) override {
    const TensorView x = prologue_input<T>(a, 0, 2, prologue_);
    inner_.kernel->run(inner_args(a, {x, a.inputs[1]}, {a.outputs[0]}, own_bytes_));
    const TensorView& y = a.outputs[0];
    const int64_t batch = y.shape[0], channels = y.shape[1];
    const int64_t spatial = batch * channels > 0 ? y.numel() / (batch * channels) : 0;
    const T* yd = y.as<T>();
    T* sum = optional_out<T>(a, 1);
    T* sq = optional_out<T>(a, 2);
#pragma omp parallel for schedule(static) if (y.numel() >= kParallelMin && channels > 1)
    for (int64_t c = 0; c < channels; ++c) {
      double s = 0, s2 = 0;
      for (int64_t b = 0; b < batch; ++b) {
        const T* yp = yd + (b * channels + c) * spatial;
        s += cpu::lane_sum(spatial, [yp](int64_t i) { return static_cast<double>(yp[i]); });
        s2 += cpu::lane_sum(spatial, [yp](int64_t i) { return static_cast<double>(yp[i]) * static_cast<double>(yp[i]); });
      }
      if (sum) sum[c] = static_cast<T>(s);
      if (sq) sq[c] = static_cast<T>(s2);
    }
  }

 private:
  InnerKernel inner_;
  bool prologue_ = false;
  size_t own_bytes_ = 0;
};

template <typename T>
class ConvGradFilterSbrKernel final : public Kernel {
 public:
  explicit ConvGradFilterSbrKernel(const KernelInit& init)
      : inner_(init, graph::kOxtrainDomain, "ConvGradFilter", {required(init.node, 0), required(init.node, 1)},
               {required(init.node, 0, true)}) {
    own_bytes_ = workspace_slice(static_cast<size_t>(init.node.input(1)->numel()) * sizeof(T));
  }
  size_t workspace_bytes() const override { return own_bytes_ + inner_.kernel->workspace_bytes(); }
  std::string describe() const override {
    return "Relu(X * scale + bias) into the workspace, then the ConvGradFilter kernel";
  }
  void run(const KernelArgs& a) override {
    const TensorView x = prologue_input<T>(a, 1, 2, true);
    inner_.kernel->run(inner_args(a, {a.inputs[0], x}, {a.outputs[0]}, own_bytes_));
  }

 private:
  InnerKernel inner_;
  size_t own_bytes_ = 0;
};

template <typename T>
void batchnorm_finalize(const KernelArgs& a, int64_t count, double eps, double momentum, bool unbiased) {
  const int64_t channels = a.inputs[0].numel();
  const T* sum = a.inputs[0].as<T>();
  const T* sq = a.inputs[1].as<T>();
  const T* gamma = a.inputs[2].as<T>();
  const T* beta = a.inputs[3].as<T>();
  const T* run_mean = a.inputs[4].as<T>();
  const T* run_var = a.inputs[5].as<T>();
  T* out[6];
  for (size_t i = 0; i < 6; ++i) out[i] = optional_out<T>(a, i);
  for (int64_t c = 0; c < channels; ++c) {
    // Every input of the channel is read before its outputs are written: the running
    // statistics' outputs may share their inputs' buffers.
    const auto f = math::batchnorm_finalize<T>(sum[c], sq[c], count, gamma[c], beta[c], run_mean[c], run_var[c], eps,
                                               momentum, unbiased);
    if (out[0]) out[0][c] = f.running_mean;
    if (out[1]) out[1][c] = f.running_var;
    if (out[2]) out[2][c] = f.saved_mean;
    if (out[3]) out[3][c] = f.saved_inv_std;
    if (out[4]) out[4][c] = static_cast<T>(f.apply_scale);
    if (out[5]) out[5][c] = static_cast<T>(f.apply_bias);
  }
}

template <typename T>
class ConvGradDataReluBnKernel final : public Kernel {
 public:
  explicit ConvGradDataReluBnKernel(const KernelInit& init)
      : inner_(init, graph::kOxtrainDomain, "ConvGradData", {required(init.node, 0), required(init.node, 1)},
               {required(init.node, 0, true)}) {}
  size_t workspace_bytes() const override { return inner_.kernel->workspace_bytes(); }
  std::string describe() const override {
    return "the ConvGradData kernel, then the ReLU's mask and batch norm's weight gradients in a pass of their own";
  }
  void run(const KernelArgs& a) override {
    inner_.kernel->run(inner_args(a, {a.inputs[0], a.inputs[1]}, {a.outputs[0]}, 0));
    const TensorView& xv = a.inputs[2];
    const int64_t batch = xv.shape[0], channels = xv.shape[1];
    const int64_t spatial = batch * channels > 0 ? xv.numel() / (batch * channels) : 0;
    const T* x = xv.as<T>();
    const T *scale = a.inputs[3].as<T>(), *bias = a.inputs[4].as<T>();
    const T *mean = a.inputs[5].as<T>(), *inv_std = a.inputs[6].as<T>();
    T* ds = a.outputs[0].as<T>();
    T* dscale = optional_out<T>(a, 1);
    T* dbias = optional_out<T>(a, 2);
#pragma omp parallel for schedule(static) if (xv.numel() >= kParallelMin && channels > 1)
    for (int64_t c = 0; c < channels; ++c) {
      double sum = 0, sum_xc = 0;
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t off = (b * channels + c) * spatial;
        for (int64_t i = 0; i < spatial; ++i) {
          const T z = math::batchnorm_apply(x[off + i], mean[c], inv_std[c], scale[c], bias[c]);
          const T d = z > T(0) ? ds[off + i] : T(0);
          ds[off + i] = d;
          sum += static_cast<double>(d);
          sum_xc += static_cast<double>(d) * (static_cast<double>(x[off + i]) - static_cast<double>(mean[c]));
        }
      }
      if (dscale) dscale[c] = static_cast<T>(sum_xc * static_cast<double>(inv_std[c]));
      if (dbias) dbias[c] = static_cast<T>(sum);
    }
  }

 private:
  InnerKernel inner_;
};

template <typename T>
void batchnorm_grad_apply(const KernelArgs& a) {
  const TensorView& xv = a.inputs[1];
  const int64_t batch = xv.shape[0], channels = xv.shape[1];
  const int64_t spatial = batch * channels > 0 ? xv.numel() / (batch * channels) : 0;
  const double m = static_cast<double>(batch * spatial);
  const T *ds = a.inputs[0].as<T>(), *x = xv.as<T>();
  const T *scale = a.inputs[2].as<T>(), *mean = a.inputs[3].as<T>(), *inv_std = a.inputs[4].as<T>();
  const T *dscale = a.inputs[5].as<T>(), *dbias = a.inputs[6].as<T>();
  T* dx = a.outputs[0].as<T>();
  const int64_t planes = batch * channels;
#pragma omp parallel for schedule(static) if (xv.numel() >= kParallelMin && planes > 1)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t c = p % channels;
    const double mu = mean[c], is = inv_std[c];
    const double k = m > 0 ? static_cast<double>(scale[c]) * is / m : 0.0;
    for (int64_t i = p * spatial; i < (p + 1) * spatial; ++i)
      dx[i] = static_cast<T>(math::batchnorm_grad_input(ds[i], x[i], mu, is, k, m, dbias[c], dscale[c]));
  }
}

DType float_type(const Node& n, std::initializer_list<size_t> inputs) {
  const DType dt = required(n, *inputs.begin())->dtype;
  for (size_t i : inputs)
    if (n.input(i) && n.input(i)->dtype != dt)
      throw Error(n.describe() + ": input '" + n.input(i)->name + "' is " + graph::dtype_name(n.input(i)->dtype) +
                  ", expected " + graph::dtype_name(dt));
  return dt;
}

}  // namespace

void register_cpu_conv_stats_kernels(KernelRegistry& r) {
  r.add(graph::kOxtrainDomain, "ConvStats", Device::cpu, [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const DType dt = float_type(init.node, {0, 1, 2, 3});
    return dispatch_float(dt, init.node.describe(), [&](auto tag) -> std::unique_ptr<Kernel> {
      return std::make_unique<ConvStatsKernel<decltype(tag)>>(init);
    });
  });
  r.add(graph::kOxtrainDomain, "ConvGradFilterScaleBiasRelu", Device::cpu,
        [](const KernelInit& init) -> std::unique_ptr<Kernel> {
          const DType dt = float_type(init.node, {0, 1, 2, 3});
          return dispatch_float(dt, init.node.describe(), [&](auto tag) -> std::unique_ptr<Kernel> {
            return std::make_unique<ConvGradFilterSbrKernel<decltype(tag)>>(init);
          });
        });
  r.add(graph::kOxtrainDomain, "ConvGradDataReluBatchNormWeight", Device::cpu,
        [](const KernelInit& init) -> std::unique_ptr<Kernel> {
          const DType dt = float_type(init.node, {0, 1, 2, 3, 4, 5, 6});
          return dispatch_float(dt, init.node.describe(), [&](auto tag) -> std::unique_ptr<Kernel> {
            return std::make_unique<ConvGradDataReluBnKernel<decltype(tag)>>(init);
          });
        });
  r.add(graph::kOxtrainDomain, "BatchNormGradApply", Device::cpu, [](const KernelInit& init) {
    const DType dt = float_type(init.node, {0, 1, 2, 3, 4, 5, 6});
    return dispatch_float(dt, init.node.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([](const KernelArgs& a) { batchnorm_grad_apply<T>(a); });
    });
  });
  r.add(graph::kOxtrainDomain, "BatchNormFinalize", Device::cpu, [](const KernelInit& init) {
    const Node& n = init.node;
    const DType dt = float_type(n, {0, 1, 2, 3, 4, 5});
    for (size_t i = 0; i < n.outputs.size(); ++i)
      if (n.output(i) && n.output(i)->dtype != dt)
        throw Error(n.describe() + ": output '" + n.output(i)->name + "' is " + graph::dtype_name(n.output(i)->dtype) +
                    "; the CPU kernel writes " + graph::dtype_name(dt));
    const int64_t count = n.attr_int("count", 0);
    if (count < 1) throw Error(n.describe() + ": attribute count must be positive");
    const double eps = n.attr_float("epsilon", 1e-5f);
    const double momentum = n.attr_float("momentum", 0.9f);
    const bool unbiased = n.attr_int("unbiased_running_var", 1) != 0;
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([=](const KernelArgs& a) { batchnorm_finalize<T>(a, count, eps, momentum, unbiased); });
    });
  });
}

}  // namespace oxtrain::runtime
