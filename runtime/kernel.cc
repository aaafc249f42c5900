#include "runtime/kernel.h"

#include <omp.h>

#include "graph/ops.h"
#include "runtime/cpu/half_emulation.h"
#include "runtime/cpu/kernels.h"
#include "runtime/layout_emulation.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/kernels.h"
#endif

extern "C" void openblas_set_num_threads(int num_threads);

namespace oxtrain::runtime {

const char* device_name(Device device) { return device == Device::cpu ? "cpu" : "cuda"; }

const char* precision_name(Precision precision) { return precision == Precision::fp32 ? "fp32" : "tf32"; }

namespace {
std::string key(const std::string& domain, const std::string& op_type, Device device) {
  std::string d = domain == "ai.onnx" ? "" : domain;
  return d + "|" + op_type + "|" + device_name(device);
}

// The CUDA ops whose channels-last nodes run through the layout emulation.
[[maybe_unused]] OpNames& cuda_layout_emulated_ops() {
  static OpNames ops;
  return ops;
}
}  // namespace

void KernelRegistry::add(const std::string& domain, const std::string& op_type, Device device,
                         KernelFactory factory) {
  factories_[key(domain, op_type, device)] = std::move(factory);
}

const KernelFactory* KernelRegistry::find(const std::string& domain, const std::string& op_type,
                                          Device device) const {
  auto it = factories_.find(key(domain, op_type, device));
  return it == factories_.end() ? nullptr : &it->second;
}

void KernelRegistry::wrap(Device device, const Wrapper& wrap) {
  const std::string suffix = std::string("|") + device_name(device);
  for (auto& [k, factory] : factories_) {
    if (k.size() <= suffix.size() || k.compare(k.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const size_t bar = k.find('|');
    const std::string domain = k.substr(0, bar);
    const std::string op_type = k.substr(bar + 1, k.size() - suffix.size() - bar - 1);
    factory = wrap(domain, op_type, std::move(factory));
  }
}

const KernelRegistry& KernelRegistry::global() {
  static const KernelRegistry registry = [] {
    KernelRegistry r;
    register_cpu_conv_kernels(r);
    register_cpu_conv_stats_kernels(r);
    register_cpu_pool_kernels(r);
    register_cpu_norm_kernels(r);
    register_cpu_elementwise_kernels(r);
    register_cpu_matmul_kernels(r);
    register_cpu_loss_kernels(r);
    register_cpu_optimizer_kernels(r);
    register_cpu_collective_kernels(r);
    register_cpu_pointwise_kernels(r);
    register_cpu_movement_kernels(r);
    register_cpu_normalization_kernels(r);
    register_cpu_random_kernels(r);
    register_cpu_precision_kernels(r);
    register_cpu_normalize_kernels(r);
    // float16 and bfloat16 on the CPU: computed in float32, rounded (runtime/cpu/half_emulation.h).
    r.wrap(Device::cpu, [](const std::string&, const std::string&, KernelFactory f) {
      return cpu::with_half_emulation(std::move(f));
    });
    register_cpu_fused_kernels(r);
    // Channels-last nodes, channels-first kernels (runtime/layout_emulation.h).
    r.wrap(Device::cpu, layout_emulation(layout_transparent_ops()));
#ifdef OXTRAIN_HAVE_CUDA
    register_cuda_elementwise_kernels(r);
    register_cuda_loss_kernels(r);
    register_cuda_optimizer_kernels(r);
    register_cuda_pool_kernels(r);
    register_cuda_conv_kernels(r);
    register_cuda_norm_kernels(r);
    register_cuda_matmul_kernels(r);
    register_cuda_collective_kernels(r);
    register_cuda_pointwise_kernels(r);
    register_cuda_movement_kernels(r);
    register_cuda_normalization_kernels(r);
    register_cuda_random_kernels(r);
    register_cuda_precision_kernels(r);
    register_cuda_normalize_kernels(r);
    // float16 and bfloat16 for the kernels that compute only float32 (runtime/cuda/half_emulation.cu).
    r.wrap(Device::cuda, cuda::with_half_emulation);
    register_cuda_fused_kernels(r);
    register_cuda_conv_stats_kernels(r);
    // cuDNN's convolutions and batch norms, BatchNormApply and 2-D pooling take channels-last
    // as it is.
    OpNames native = layout_transparent_ops();
    for (const char* op : {"MaxPool", "AveragePool", "GlobalAveragePool"}) native.insert({"", op});
    for (const char* op : {"MaxPoolGradFromInput", "AveragePoolGrad", "GlobalAveragePoolGrad"})
      native.insert({graph::kOxtrainDomain, op});
    for (const char* op : {"ConvGradData", "ConvGradFilter", "BatchNormTraining", "BatchNormGrad", "BatchNormApply",
                           "ConvStats", "ConvGradFilterScaleBiasRelu", "ConvGradDataReluBatchNormWeight",
                           "BatchNormGradApply"})
      native.insert({graph::kOxtrainDomain, op});
    native.insert({graph::kOxtrainDomain, "NormalizeImages"});
    native.insert({"", "Conv"});
    native.insert({"", "BatchNormalization"});
    r.wrap(Device::cuda, layout_emulation(std::move(native), &cuda_layout_emulated_ops()));
#endif
    return r;
  }();
  return registry;
}

std::string cuda_emulation(const graph::Node& node) {
  std::string out;
#ifdef OXTRAIN_HAVE_CUDA
  KernelRegistry::global();  // the wrappers have seen every op
  if (cuda::half_emulated(node)) out = "half widened to float32";
  if (graph::is_channels_last(node) &&
      cuda_layout_emulated_ops().count({node.domain == "ai.onnx" ? "" : node.domain, node.op_type}))
    out += std::string(out.empty() ? "" : ", ") + "channels-first between transposes";
#else
  (void)node;
#endif
  return out;
}

namespace {
class LambdaKernel : public Kernel {
 public:
  LambdaKernel(std::function<void(const KernelArgs&)> run, size_t workspace)
      : run_(std::move(run)), workspace_(workspace) {}
  size_t workspace_bytes() const override { return workspace_; }
  void run(const KernelArgs& args) override { run_(args); }

 private:
  std::function<void(const KernelArgs&)> run_;
  size_t workspace_;
};
}  // namespace

std::unique_ptr<Kernel> make_kernel(std::function<void(const KernelArgs&)> run,
                                    size_t workspace_bytes) {
  return std::make_unique<LambdaKernel>(std::move(run), workspace_bytes);
}

void set_cpu_threads(int threads) {
  if (threads < 1) threads = omp_get_num_procs();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int cpu_threads() { return omp_get_max_threads(); }

}  // namespace oxtrain::runtime
