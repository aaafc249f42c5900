// float16 and bfloat16 on the GPU for kernels that compute only float32: the node's float32
// twin (runtime/cpu/half_emulation.h) runs on float32 copies of the half inputs, made in the
// kernel's own workspace (so the static memory plan covers them), and each half output is
// rounded from float32 into place, all on the compute stream. The rounding is base/half.h's,
// the same as the CPU reference. Kernels that handle half themselves are not wrapped: cuDNN's
// convolutions and batch norm, the fused batch norms, NonFinite, CastTranspose, and
// (native_half_node) the element-wise arithmetic, reductions, activations, dropout, copies and
// movement ops, pooling and cuBLASLt's matrix products (emulated after all where cuBLASLt has no algorithm for the
// half form: KernelUnsupported); Cast between float32 and half is one conversion kernel.
//
// This makes every op run in mixed precision; it costs a conversion pass per half value and
// use. cuda::half_emulated names the nodes that still take it (`oxtrain graph --training
// --device cuda` lists them; for the models the tests know, none).
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
      {"oxtrain", "CastTranspose"},
  };
  return ops;
}

// Nodes whose CUDA kernels take half values as they are where every floating value of the node
// has one type: the element-wise arithmetic and reductions (runtime/cuda/elementwise.cu), the
// activations and their gradients (runtime/cuda/pointwise.cu), the copies and movement ops
// (moved by element size), cuBLASLt's matrix products, dropout, and pooling
// (runtime/cuda/pool.cu): 1-D and 2-D max and average pooling and their gradients, global
// average pooling at any rank. Clip's bounds are constants the kernel reads when it is made, of
// any type; Dropout's ratio is not read at all.
bool native_half_node(const Node& n) {
  static const std::set<std::pair<std::string, std::string>> same_type = {
      {"", "Neg"}, {"", "Relu"}, {"oxtrain", "ReluGrad"}, {"", "Add"}, {"", "Sub"}, {"", "Mul"}, {"", "Div"},
      {"", "Sum"}, {"", "ReduceMean"}, {"oxtrain", "ReduceSumTo"}, {"oxtrain", "ReduceMeanGrad"},
      // activations and element-wise math
      {"", "Sigmoid"}, {"", "Tanh"}, {"", "HardSwish"}, {"", "HardSigmoid"}, {"", "Erf"}, {"", "Gelu"},
      {"", "Sqrt"}, {"", "Exp"}, {"", "Log"}, {"", "Reciprocal"}, {"", "Floor"}, {"", "Ceil"}, {"", "Abs"},
      {"", "Sign"}, {"", "Clip"}, {"", "Max"}, {"", "Min"}, {"", "Where"},
      {"oxtrain", "SigmoidGrad"}, {"oxtrain", "TanhGrad"}, {"oxtrain", "SqrtGrad"}, {"oxtrain", "ErfGrad"},
      {"oxtrain", "HardSwishGrad"}, {"oxtrain", "HardSigmoidGrad"}, {"oxtrain", "GeluGrad"}, {"oxtrain", "ClipGrad"},
      // moved by element size
      {"", "Identity"}, {"", "Flatten"}, {"", "Reshape"}, {"", "Dropout"}, {"", "Transpose"}, {"", "Concat"},
      {"", "Split"}, {"", "Slice"}, {"", "Squeeze"}, {"", "Unsqueeze"}, {"", "Expand"}, {"", "Gather"},
      {"", "GatherND"}, {"oxtrain", "SliceGrad"}, {"oxtrain", "GatherGrad"},
      // runtime/cuda/random.cu
      {"oxtrain", "DropoutTraining"}, {"oxtrain", "DropoutGrad"},
      // runtime/cuda/matmul.cc (cuBLASLt; float32 on widened copies where it has no half algorithm)
      {"", "Gemm"}, {"", "MatMul"},
  };
  const std::string domain = n.domain == "ai.onnx" ? "" : n.domain;
  // Inputs from this one on are not operands: Clip's constant bounds, Dropout's ratio and mode
  // (its kernel copies X).
  const size_t bounds = domain.empty() && (n.op_type == "Clip" || n.op_type == "Dropout") ? 1
                        : domain == "oxtrain" && n.op_type == "ClipGrad"                  ? 2
                                                                                          : n.inputs.size();
  const graph::Value* first = nullptr;
  auto one_type = [&](const graph::Value* v) {
    if (!v || !graph::is_float(v->dtype)) return true;
    first = first ? first : v;
    return v->dtype == first->dtype;
  };
  for (size_t i = 0; i < n.inputs.size() && i < bounds; ++i)
    if (!one_type(n.input(i))) return false;
  for (const graph::Value* v : n.outputs)
    if (!one_type(v)) return false;
  if (same_type.count({domain, n.op_type})) return true;
  // 1-D pooling is 2-D pooling of one row; 3-D pooling computes float32 only.
  auto planar = [](const graph::Value* v) { return v && (v->shape.size() == 3 || v->shape.size() == 4); };
  if (domain.empty() && (n.op_type == "MaxPool" || n.op_type == "AveragePool")) return planar(n.input(0));
  if (domain == "oxtrain" && n.op_type == "MaxPoolGradFromInput") return planar(n.input(1));
  if (domain == "oxtrain" && n.op_type == "AveragePoolGrad") return planar(n.input(0));
  return (domain.empty() && n.op_type == "GlobalAveragePool") ||
         (domain == "oxtrain" && n.op_type == "GlobalAveragePoolGrad");
}

}  // namespace

namespace cuda {

namespace {

// The ops with_half_emulation wrapped (all registered before it, but the native ones).
std::set<std::pair<std::string, std::string>>& wrapped_ops() {
  static std::set<std::pair<std::string, std::string>> ops;
  return ops;
}

bool is_cast(const Node& n) { return (n.domain.empty() || n.domain == "ai.onnx") && n.op_type == "Cast"; }

// A Cast between float32 and half, or between the halves: one conversion kernel.
bool half_cast(const Node& n) {
  if (!is_cast(n) || !n.input(0) || !n.output(0)) return false;
  const DType from = n.input(0)->dtype, to = n.output(0)->dtype;
  return (is_half(from) || is_half(to)) && (is_half(from) || from == DType::f32) && (is_half(to) || to == DType::f32);
}

// Whether a node of a wrapped op goes through DeviceHalfEmulation.
bool emulated_in_float32(const Node& n) {
  return !native_half_node(n) && cpu::has_half_values(n) && !half_cast(n);
}

}  // namespace

KernelFactory with_half_emulation(const std::string& domain, const std::string& op_type, KernelFactory float_factory) {
  if (native_half_ops().count({domain == "ai.onnx" ? "" : domain, op_type}) != 0) return float_factory;
  wrapped_ops().insert({domain == "ai.onnx" ? "" : domain, op_type});
  return [float_factory = std::move(float_factory)](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    if (half_cast(n)) return half_cast_kernel(n);
    if (!emulated_in_float32(n)) {
      if (!cpu::has_half_values(n)) return float_factory(init);
      // A library with no algorithm for the half form (cuBLASLt) still runs it in float32.
      try {
        return float_factory(init);
      } catch (const KernelUnsupported&) {
        return std::make_unique<DeviceHalfEmulation>(init, float_factory);
      }
    }
    return std::make_unique<DeviceHalfEmulation>(init, float_factory);
  };
}

bool half_emulated(const Node& n) {
  KernelRegistry::global();  // the wrapper has seen every op
  return wrapped_ops().count({n.domain == "ai.onnx" ? "" : n.domain, n.op_type}) != 0 && emulated_in_float32(n);
}

}  // namespace cuda
}  // namespace oxtrain::runtime
