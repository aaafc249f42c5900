#include "runtime/fused_batchnorm.h"

#include <vector>

#include "graph/ops.h"
#include "runtime/inner_kernel.h"

namespace oxtrain::runtime {
namespace {


// What the inner batch-norm nodes take from the fused one.
constexpr std::initializer_list<const char*> kBatchNormAttributes = {"epsilon", "momentum", "unbiased_running_var",
                                                                      graph::kChannelsLast};


// Z = Relu(inner(X, ...) + R): the inner op (BatchNormTraining, or BatchNormApply when
// recomputing) writes into Z's buffer, then one pass in place.
class BatchNormReluKernel final : public Kernel {
 public:
  BatchNormReluKernel(const KernelInit& init, FusedBatchNormPasses passes, const char* inner_op, size_t inner_outputs)
      : passes_(std::move(passes)), inner_(init, graph::kOxtrainDomain, inner_op, inputs(init.node), outputs(init.node, inner_outputs), kBatchNormAttributes) {
    const graph::Node& n = init.node;
    if (!n.output(0)) throw Error(n.describe() + ": output Z is missing");
    residual_ = n.input(5) != nullptr;
    dtype_ = n.output(0)->dtype;
    count_ = n.output(0)->numel();
  }
  size_t workspace_bytes() const override { return inner_.kernel->workspace_bytes(); }
  std::string describe() const override {
    const std::string inner = inner_.kernel->describe();
    return (inner.empty() ? std::string("own kernel") : inner) + ", then Relu(Y + R) in a pass of its own";
  }
  void run(const KernelArgs& args) override {
    KernelArgs a = args;
    a.inputs.resize(5);
    inner_.kernel->run(a);
    passes_.add_relu(args, args.outputs[0].data, residual_ ? args.inputs[5].data : nullptr, count_, dtype_);
  }

 private:
  static std::vector<const graph::Value*> inputs(const graph::Node& n) {
    return {n.input(0), n.input(1), n.input(2), n.input(3), n.input(4)};
  }
  static std::vector<const graph::Value*> outputs(const graph::Node& n, size_t count) {
    std::vector<const graph::Value*> out;
    for (size_t i = 0; i < count; ++i) out.push_back(n.output(i));
    return out;
  }

  FusedBatchNormPasses passes_;
  InnerKernel inner_;
  bool residual_ = false;
  DType dtype_ = DType::undefined;
  int64_t count_ = 0;
};

class BatchNormReluGradKernel final : public Kernel {
 public:
  BatchNormReluGradKernel(const KernelInit& init, FusedBatchNormPasses passes)
      : passes_(std::move(passes)),
        // BatchNormGrad(dS, X, scale, saved_mean, saved_inv_std); dS is shaped like dZ.
        inner_(init, graph::kOxtrainDomain, "BatchNormGrad",
               {init.node.input(0), init.node.input(2), init.node.input(3), init.node.input(4), init.node.input(5)},
               {init.node.output(0), init.node.output(1), init.node.output(2)}, kBatchNormAttributes) {
    const graph::Node& n = init.node;
    for (size_t i = 0; i < 6; ++i)
      if (!n.input(i)) throw Error(n.describe() + ": input " + std::to_string(i) + " is missing");
    dtype_ = n.input(0)->dtype;
    count_ = n.input(0)->numel();
    // Without dR, dS lives in the workspace, before the inner kernel's.
    if (!n.output(3)) own_bytes_ = workspace_slice(static_cast<size_t>(count_) * graph::dtype_size(dtype_));
  }
  size_t workspace_bytes() const override { return own_bytes_ + inner_.kernel->workspace_bytes(); }
  std::string describe() const override {
    const std::string inner = inner_.kernel->describe();
    return "ReluGrad in a pass of its own, then " + (inner.empty() ? std::string("own kernel") : inner);
  }
  void run(const KernelArgs& args) override {
    const bool to_residual = args.outputs.size() > 3 && args.outputs[3].present();
    void* ds = to_residual ? args.outputs[3].data : args.workspace;
    passes_.relu_grad(args, args.inputs[0].data, args.inputs[1].data, ds, count_, dtype_);
    KernelArgs a = args;
    a.inputs = {TensorView{ds, dtype_, args.inputs[0].shape}, args.inputs[2], args.inputs[3], args.inputs[4],
                args.inputs[5]};
    a.outputs.resize(3);
    a.workspace = own_bytes_ > 0 ? static_cast<uint8_t*>(args.workspace) + own_bytes_ : args.workspace;
    a.workspace_bytes = args.workspace_bytes - own_bytes_;
    inner_.kernel->run(a);
  }

 private:
  FusedBatchNormPasses passes_;
  InnerKernel inner_;
  DType dtype_ = DType::undefined;
  int64_t count_ = 0;
  size_t own_bytes_ = 0;
};

}  // namespace

KernelFactory batchnorm_relu_training_factory(FusedBatchNormPasses passes) {
  return [passes](const KernelInit& init) -> std::unique_ptr<Kernel> {
    return std::make_unique<BatchNormReluKernel>(init, passes, "BatchNormTraining", 5);
  };
}

KernelFactory batchnorm_relu_apply_factory(FusedBatchNormPasses passes) {
  return [passes](const KernelInit& init) -> std::unique_ptr<Kernel> {
    return std::make_unique<BatchNormReluKernel>(init, passes, "BatchNormApply", 1);
  };
}

KernelFactory batchnorm_relu_grad_factory(FusedBatchNormPasses passes) {
  return [passes](const KernelInit& init) -> std::unique_ptr<Kernel> {
    return std::make_unique<BatchNormReluGradKernel>(init, passes);
  };
}

}  // namespace oxtrain::runtime
