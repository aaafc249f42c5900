// The CUDA kernels of the convolution and batch-norm fusion (autodiff::fuse_conv_batchnorm):
//   oxtrain.ConvStats and oxtrain.ConvGradFilterScaleBiasRelu as one cuDNN graph each where
//     cuDNN builds a plan for it (runtime/cuda/conv.cc: "conv + genstats", with the
//     scale-bias-ReLU prologue "SBRCS", and "scale-bias-relu-wgrad"; cuDNN 9.19 has engines for
//     these on an H100 in float16 channels-last, not in bfloat16), else composed: the prologue
//     into the workspace (own kernel), cuDNN's plain convolution, the channel sums (own kernel);
//   oxtrain.ConvGradDataReluBatchNormWeight likewise ("Dgrad Drelu DBNweight"), else cuDNN's data
//     gradient, then the ReLU's mask and the weight gradients (own kernel, one block per channel);
//   oxtrain.BatchNormFinalize: an own kernel, one thread per channel;
//   oxtrain.BatchNormGradApply: an own element-wise kernel.
// The own kernels (runtime/cuda/batchnorm_own.h) share their math with the CPU's
// (runtime/math/conv_batchnorm.h). Channels-last and half values are taken as they are.
#define OXTRAIN_CUDNN_FRONTEND
#include "runtime/cuda/cudnn_common.h"

#include <algorithm>
#include <string>

#include "graph/ops.h"
#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/cuda/batchnorm_own.h"
#include "runtime/cuda/kernels.h"
#include "runtime/inner_kernel.h"

namespace oxtrain::runtime {
namespace {

using cpu::optional_out;

// The node's input (or output) i, which it must have.
const graph::Value& required(const graph::Node& n, size_t i, bool output = false) { return *cpu::required(n, i, output); }

// v's geometry as the own batch-norm kernels see it: [N, C, positions], or channels-last
// [N, positions, C] for a channels-last node's 4-D value.
cuda::BatchNormView view_of(const graph::Node& n, const graph::Value& v) {
  const graph::Shape& s = v.shape;
  if (s.size() < 3) throw Error(n.describe() + ": '" + v.name + "' must be [N, C, ...], got " + v.shape_string());
  if (cuda::float_kind(v.dtype) < 0)
    throw Error(n.describe() + ": '" + v.name + "' is " + graph::dtype_name(v.dtype) +
                "; the CUDA kernel takes float32, float16 or bfloat16");
  const bool last = graph::is_channels_last(n) && s.size() == 4;
  cuda::BatchNormView view{v.dtype, s[0], last ? s[3] : s[1], 1, last};
  view.spatial = view.batch * view.channels > 0 ? v.numel() / (view.batch * view.channels) : 0;
  return view;
}

// X through the prologue into the workspace (when the node has one), then `inner` on it.
class PrologueThen {
 public:
  PrologueThen(const KernelInit& init, size_t x_slot, const char* domain, const char* op,
               std::vector<const graph::Value*> inner_inputs, const graph::Value& output)
      : where_(init.node.describe()),
        x_slot_(x_slot),
        prologue_(init.node.input(2) != nullptr),
        x_(view_of(init.node, required(init.node, x_slot))),
        inner_(init, domain, op, inner_inputs, {&output}) {
    if (prologue_) {
      for (size_t i = 2; i < 4; ++i)
        if (required(init.node, i).dtype != x_.data || required(init.node, i).numel() != x_.channels)
          throw Error(where_ + ": the prologue's '" + init.node.input(i)->name + "' must be " +
                      graph::dtype_name(x_.data) + " [" + std::to_string(x_.channels) + "]");
      own_bytes_ = workspace_slice(static_cast<size_t>(required(init.node, x_slot).numel()) * graph::dtype_size(x_.data));
    }
  }
  size_t workspace_bytes() const { return own_bytes_ + inner_.kernel->workspace_bytes(); }
  std::string describe(const char* op) const {
    const std::string inner = inner_.kernel->describe();
    return std::string(prologue_ ? "Relu(X * scale + bias) in a pass of its own, then " : "") + op +
           (inner.empty() ? std::string() : " (" + inner + ")");
  }
  const CudaContext& context(const KernelArgs& a) const { return cuda::context_of(a, where_); }
  void run(const KernelArgs& a) {
    KernelArgs inner = a;
    inner.inputs.resize(2);
    inner.outputs.resize(1);
    if (prologue_) {
      cuda::scale_bias_relu(x_, a.inputs[x_slot_].data, a.inputs[2].data, a.inputs[3].data, a.workspace, context(a),
                            where_);
      inner.inputs[x_slot_].data = a.workspace;
    }
    inner.workspace = static_cast<uint8_t*>(a.workspace) + own_bytes_;
    inner.workspace_bytes = a.workspace_bytes - own_bytes_;
    inner_.kernel->run(inner);
  }
  const std::string& where() const { return where_; }

 private:
  std::string where_;
  size_t x_slot_;
  bool prologue_;
  cuda::BatchNormView x_;
  InnerKernel inner_;
  size_t own_bytes_ = 0;
};

class ComposedConvStats final : public Kernel {
 public:
  explicit ComposedConvStats(const KernelInit& init)
      : conv_(init, 0, "", "Conv", {&required(init.node, 0), &required(init.node, 1)}, required(init.node, 0, true)),
        y_(view_of(init.node, required(init.node, 0, true))) {
    for (size_t i = 1; i < 3; ++i)
      if (init.node.output(i) && (init.node.output(i)->dtype != DType::f32 || init.node.output(i)->numel() != y_.channels))
        throw Error(init.node.describe() + ": output " + std::to_string(i) + " must be float32 [" +
                    std::to_string(y_.channels) + "]");
  }
  // The sums' partials after the convolution's workspace (not needed once it has run).
  size_t workspace_bytes() const override {
    return std::max(conv_.workspace_bytes(), cuda::channel_sums_workspace(y_));
  }
  std::string describe() const override { return conv_.describe("Conv") + ", then the channel sums in a pass of their own"; }
  void run(const KernelArgs& a) override {
    conv_.run(a);
    cuda::channel_sums(y_, a.outputs[0].data, optional_out<float>(a, 1), optional_out<float>(a, 2), a.workspace,
                       conv_.context(a), conv_.where());
  }

 private:
  PrologueThen conv_;
  cuda::BatchNormView y_;
};

class ComposedGradFilterSbr final : public Kernel {
 public:
  explicit ComposedGradFilterSbr(const KernelInit& init)
      : wgrad_(init, 1, graph::kOxtrainDomain, "ConvGradFilter", {&required(init.node, 0), &required(init.node, 1)},
               required(init.node, 0, true)) {
    if (!init.node.input(2)) throw Error(init.node.describe() + ": the prologue's scale and bias are missing");
  }
  size_t workspace_bytes() const override { return wgrad_.workspace_bytes(); }
  std::string describe() const override { return wgrad_.describe("ConvGradFilter"); }
  void run(const KernelArgs& a) override { wgrad_.run(a); }

 private:
  PrologueThen wgrad_;
};

class ComposedGradDataReluBn final : public Kernel {
 public:
  explicit ComposedGradDataReluBn(const KernelInit& init)
      : where_(init.node.describe()),
        x_(view_of(init.node, required(init.node, 2))),
        dgrad_(init, graph::kOxtrainDomain, "ConvGradData", {&required(init.node, 0), &required(init.node, 1)},
               {&required(init.node, 0, true)}) {
    const graph::Node& n = init.node;
    if (required(n, 0, true).dtype != x_.data || required(n, 0, true).numel() != required(n, 2).numel())
      throw Error(where_ + ": dS must be X's type and size");
    for (size_t i = 3; i < 7; ++i)
      if (required(n, i).dtype != DType::f32 || required(n, i).numel() != x_.channels)
        throw Error(where_ + ": input " + std::to_string(i) + " must be float32 [" + std::to_string(x_.channels) + "]");
  }
  size_t workspace_bytes() const override { return dgrad_.kernel->workspace_bytes(); }
  std::string describe() const override {
    const std::string inner = dgrad_.kernel->describe();
    return "ConvGradData" + (inner.empty() ? std::string() : " (" + inner + ")") +
           ", then the ReLU's mask and the weight gradients in a pass of their own";
  }
  void run(const KernelArgs& a) override {
    KernelArgs inner = a;
    inner.inputs.resize(2);
    inner.outputs.resize(1);
    dgrad_.kernel->run(inner);
    cuda::relu_mask_weight_grads(x_, a.inputs[2].data, a.outputs[0].data, a.inputs[3].as<float>(), a.inputs[4].as<float>(),
                                 a.inputs[5].as<float>(), a.inputs[6].as<float>(), optional_out<float>(a, 1),
                                 optional_out<float>(a, 2), cuda::context_of(a, where_), where_);
  }

 private:
  std::string where_;
  cuda::BatchNormView x_;
  InnerKernel dgrad_;
};

// cuDNN's fused graph for the node where it builds a plan, else `Composed`.
template <typename Composed>
KernelFactory cudnn_graph_or() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    try {
      return cudnn::make_cudnn_kernel(cudnn::conv_recipe(init.node), init, init.node.describe());
    } catch (const Error&) {
      // No fused graph cuDNN takes here (a type or shape it has no engine for): the composed
      // kernels run the node, and report what is wrong with it, if anything is.
    }
    return std::make_unique<Composed>(init);
  };
}

}  // namespace

void register_cuda_conv_stats_kernels(KernelRegistry& registry) {
  registry.add(graph::kOxtrainDomain, "ConvStats", Device::cuda, cudnn_graph_or<ComposedConvStats>());
  registry.add(graph::kOxtrainDomain, "ConvGradFilterScaleBiasRelu", Device::cuda,
               cudnn_graph_or<ComposedGradFilterSbr>());
  registry.add(graph::kOxtrainDomain, "ConvGradDataReluBatchNormWeight", Device::cuda,
               cudnn_graph_or<ComposedGradDataReluBn>());
  registry.add(graph::kOxtrainDomain, "BatchNormGradApply", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const std::string where = n.describe();
    const cuda::BatchNormView v = view_of(n, required(n, 1));
    if (required(n, 0).dtype != v.data || required(n, 0).numel() != required(n, 1).numel() ||
        required(n, 0, true).dtype != v.data || required(n, 0, true).numel() != required(n, 1).numel())
      throw Error(where + ": dS, X and dX must have one type and size");
    for (size_t i = 2; i < 7; ++i)
      if (required(n, i).dtype != DType::f32 || required(n, i).numel() != v.channels)
        throw Error(where + ": input " + std::to_string(i) + " must be float32 [" + std::to_string(v.channels) + "]");
    return make_kernel([v, where](const KernelArgs& a) {
      cuda::batchnorm_grad_apply(v, a, cuda::context_of(a, where), where);
    });
  });
  registry.add(graph::kOxtrainDomain, "BatchNormFinalize", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const std::string where = n.describe();
    const int64_t channels = required(n, 0).numel();
    for (size_t i = 0; i < 6; ++i)
      if (required(n, i).dtype != DType::f32 || required(n, i).numel() != channels)
        throw Error(where + ": input " + std::to_string(i) + " must be float32 [" + std::to_string(channels) + "]");
    DType affine = DType::f32;
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      const graph::Value* v = n.output(i);
      if (!v) continue;
      if (i >= 4) affine = v->dtype;
      const bool ok = i < 4 ? v->dtype == DType::f32 : cuda::float_kind(v->dtype) >= 0;
      if (!ok || v->numel() != channels)
        throw Error(where + ": output " + std::to_string(i) + " '" + v->name + "' is " + graph::dtype_name(v->dtype) +
                    " " + v->shape_string());
    }
    if (n.output(4) && n.output(5) && n.output(4)->dtype != n.output(5)->dtype)
      throw Error(where + ": the affine form's scale and bias must have one type");
    const int64_t count = n.attr_int("count", 0);
    if (count < 1) throw Error(where + ": attribute count must be positive");
    const double eps = n.attr_float("epsilon", 1e-5f);
    const double momentum = n.attr_float("momentum", 0.9f);
    const bool unbiased = n.attr_int("unbiased_running_var", 1) != 0;
    return make_kernel([=](const KernelArgs& a) {
      cuda::batchnorm_finalize(a, channels, count, eps, momentum, unbiased, affine, cuda::context_of(a, where), where);
    });
  });
}

}  // namespace oxtrain::runtime
