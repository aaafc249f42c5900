// float16 and bfloat16 on the GPU for kernels that compute only float32: the node's float32
// twin (runtime/cpu/half_emulation.h) runs on float32 copies of the half inputs, made in the
// kernel's own workspace (so the static memory plan covers them), and each half output is
// rounded from float32 into place, all on the compute stream. The rounding is base/half.h's,
// the same as the CPU reference. Kernels that handle half themselves (cuDNN's convolutions and
// batch norm, NonFinite) and Cast between float32 and half (one conversion kernel) are not
// wrapped.
//
// This makes every op run in mixed precision; it costs a conversion pass per half value and
// use, so the element-wise ops that matter for speed get native half kernels in time.
#include <cuda_runtime.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/half.h"
#include "runtime/cpu/half_emulation.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {
namespace {

constexpr unsigned kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr size_t kAlign = 256;

bool is_half(DType dt) { return dt == DType::f16 || dt == DType::bf16; }

__global__ void widen_kernel(const uint16_t* in, float* out, int64_t count, bool bf16) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = half_to_float(in[i], bf16);
}

__global__ void narrow_kernel(const float* in, uint16_t* out, int64_t count, bool bf16) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = float_to_half(in[i], bf16);
}

__global__ void half_to_half_kernel(const uint16_t* in, uint16_t* out, int64_t count, bool in_bf16,
                                    bool out_bf16) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = float_to_half(half_to_float(in[i], in_bf16), out_bf16);
  }
}

unsigned blocks_for(int64_t count) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (count + kThreads - 1) / kThreads)));
}

void widen(const TensorView& in, float* out, cudaStream_t stream, const std::string& what) {
  const int64_t n = in.numel();
  if (n == 0) return;
  widen_kernel<<<blocks_for(n), kThreads, 0, stream>>>(in.as<uint16_t>(), out, n, in.dtype == DType::bf16);
  cuda::check(cudaGetLastError(), "widen_kernel launch", what);
}

void narrow(const float* in, const TensorView& out, cudaStream_t stream, const std::string& what) {
  const int64_t n = out.numel();
  if (n == 0) return;
  narrow_kernel<<<blocks_for(n), kThreads, 0, stream>>>(in, out.as<uint16_t>(), n, out.dtype == DType::bf16);
  cuda::check(cudaGetLastError(), "narrow_kernel launch", what);
}

size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

class DeviceHalfEmulation final : public Kernel {
 public:
  DeviceHalfEmulation(const KernelInit& init, const KernelFactory& float_factory)
      : twin_(cpu::float_twin(init.node)), what_(init.node.describe()) {
    inner_ = float_factory(KernelInit{*twin_.node, init.opset, init.device, init.context, init.precision});
    auto place = [&](const std::vector<graph::Value*>& values, const std::vector<DType>& halves,
                     std::vector<size_t>& offsets) {
      for (size_t i = 0; i < halves.size(); ++i) {
        offsets.push_back(own_bytes_);
        if (halves[i] != DType::undefined && values[i])
          own_bytes_ += aligned(static_cast<size_t>(values[i]->numel()) * sizeof(float));
      }
    };
    place(init.node.inputs, twin_.input_half, input_offsets_);
    place(init.node.outputs, twin_.output_half, output_offsets_);
  }

  size_t workspace_bytes() const override { return own_bytes_ + inner_->workspace_bytes(); }

  std::string describe() const override {
    const std::string inner = inner_->describe();
    return (inner.empty() ? std::string() : inner + "; ") + "float32 kernel on widened half values";
  }

  void run(const KernelArgs& args) override {
    const CudaContext& ctx = cuda::context_of(args, what_);
    auto* ws = static_cast<uint8_t*>(args.workspace);
    KernelArgs a = args;
    a.workspace = own_bytes_ < args.workspace_bytes ? ws + own_bytes_ : nullptr;
    a.workspace_bytes = args.workspace_bytes - own_bytes_;
    for (size_t i = 0; i < twin_.input_half.size() && i < a.inputs.size(); ++i) {
      const TensorView& v = args.inputs[i];
      if (twin_.input_half[i] == DType::undefined || !v.present()) continue;
      auto* buffer = reinterpret_cast<float*>(ws + input_offsets_[i]);
      widen(v, buffer, ctx.stream, what_);
      a.inputs[i] = TensorView{buffer, DType::f32, v.shape};
    }
    for (size_t i = 0; i < twin_.output_half.size() && i < a.outputs.size(); ++i) {
      const TensorView& v = args.outputs[i];
      if (twin_.output_half[i] == DType::undefined || !v.present()) continue;
      a.outputs[i] = TensorView{ws + output_offsets_[i], DType::f32, v.shape};
    }
    inner_->run(a);
    for (size_t i = 0; i < twin_.output_half.size() && i < a.outputs.size(); ++i) {
      const TensorView& v = args.outputs[i];
      if (twin_.output_half[i] == DType::undefined || !v.present()) continue;
      narrow(a.outputs[i].as<float>(), v, ctx.stream, what_);
    }
  }

 private:
  cpu::FloatTwin twin_;
  std::string what_;
  size_t own_bytes_ = 0;
  std::vector<size_t> input_offsets_, output_offsets_;
  std::unique_ptr<Kernel> inner_;
};

// Cast with a half type on either side: one conversion kernel.
std::unique_ptr<Kernel> half_cast_kernel(const Node& n) {
  const DType from = n.input(0)->dtype, to = n.output(0)->dtype;
  const std::string what = n.describe();
  return make_kernel([from, to, what](const KernelArgs& a) {
    const CudaContext& ctx = cuda::context_of(a, what);
    const TensorView& x = a.inputs[0];
    const TensorView& y = a.outputs[0];
    const int64_t count = y.numel();
    if (count == 0) return;
    if (from == DType::f32) {
      narrow(x.as<float>(), y, ctx.stream, what);
    } else if (to == DType::f32) {
      widen(x, y.as<float>(), ctx.stream, what);
    } else {
      half_to_half_kernel<<<blocks_for(count), kThreads, 0, ctx.stream>>>(x.as<uint16_t>(), y.as<uint16_t>(), count,
                                                                         from == DType::bf16, to == DType::bf16);
      cuda::check(cudaGetLastError(), "half_to_half_kernel launch", what);
    }
  });
}

// Ops whose CUDA kernels take half values as they are.
const std::set<std::pair<std::string, std::string>>& native_half_ops() {
  static const std::set<std::pair<std::string, std::string>> ops = {
      {"", "Conv"},
      {"oxtrain", "ConvGradData"},
      {"oxtrain", "ConvGradFilter"},
      {"", "BatchNormalization"},
      {"oxtrain", "BatchNormTraining"},
      {"oxtrain", "BatchNormGrad"},
      {"oxtrain", "BatchNormApply"},
      {"oxtrain", "NormalizeImages"},
      {"oxtrain", "NonFinite"},
  };
  return ops;
}

// Nodes whose CUDA kernels take half values as they are in some forms only: 2-D max pooling
// (MaxPool and its gradient from the input over [N, C, H, W] values, either layout).
bool native_half_node(const Node& n) {
  const bool onnx = n.domain.empty() || n.domain == "ai.onnx";
  if (onnx && n.op_type == "MaxPool") return n.input(0) && n.input(0)->shape.size() == 4;
  if (n.domain == "oxtrain" && n.op_type == "MaxPoolGradFromInput") return n.input(1) && n.input(1)->shape.size() == 4;
  return false;
}

}  // namespace

namespace cuda {

KernelFactory with_half_emulation(const std::string& domain, const std::string& op_type, KernelFactory float_factory) {
  const bool native = native_half_ops().count({domain == "ai.onnx" ? "" : domain, op_type}) != 0;
  const bool cast = (domain.empty() || domain == "ai.onnx") && op_type == "Cast";
  return [float_factory = std::move(float_factory), native, cast](const KernelInit& init) -> std::unique_ptr<Kernel> {
    if (native || native_half_node(init.node) || !cpu::has_half_values(init.node)) return float_factory(init);
    const Node& n = init.node;
    if (cast && n.input(0) && n.output(0)) {
      const DType from = n.input(0)->dtype, to = n.output(0)->dtype;
      if ((is_half(from) || from == DType::f32) && (is_half(to) || to == DType::f32)) return half_cast_kernel(n);
    }
    return std::make_unique<DeviceHalfEmulation>(init, float_factory);
  };
}

}  // namespace cuda
}  // namespace oxtrain::runtime
