// CUDA kernels of the random family, the twins of runtime/cpu/random.cc (float32, and float16 /
// bfloat16 for DropoutTraining and DropoutGrad, computed in float32 and rounded once; the design
// is in autodiff/rules_random.cc, the generator in runtime/math/random.h, whose functions both
// files call, so the GPU draws the CPU's bits):
//   Dropout (ONNX, any mode)    the identity, mask all true (inference)
//   oxtrain.DropoutTraining     Y = X * (kept ? 1 / (1 - ratio) : 0), mask = kept
//   oxtrain.DropoutGrad         dX = dY * (mask ? 1 / (1 - ratio) : 0)            (writes, =)
//   oxtrain.RandomUniform/RandomNormal(step)           at the step read on the device
//   RandomUniform(Like), RandomNormal(Like) (ONNX)     at step 0, key from run seed 0
// One thread per generator block (four float32 elements), grid-stride. The step is read from
// device memory by the kernel, so a captured CUDA graph replays with each step's value.
// Element-wise kernels read element i before writing element i (Y may take X's buffer).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "base/half.h"
#include "graph/random.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/random.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

// The value's element count, which a CUDA kernel needs when it is made.
int64_t known_numel(const Node& n, const graph::Value& v) {
  if (!v.rank_known || !graph::shape_known(v.shape))
    throw Error(n.describe() + ": the CUDA kernel needs the shape of '" + v.name +
                "' when the graph is compiled, got " + v.shape_string());
  return graph::shape_numel(v.shape);
}

void require_f32(const Node& n, const graph::Value& v) {
  if (v.dtype != DType::f32)
    throw Error(n.describe() + ": the CUDA kernel takes float32, got " + graph::dtype_name(v.dtype) +
                " '" + v.name + "'");
}

void require_step(const Node& n, size_t i) {
  const graph::Value& s = input_value(n, i);
  if (s.dtype != DType::i64 || s.numel() != 1)
    throw Error(n.describe() + ": the step input '" + s.name + "' must be an int64 scalar, got " +
                graph::dtype_name(s.dtype) + " " + s.shape_string());
}

void require_same_count(const Node& n, const graph::Value& a, const graph::Value& b) {
  if (known_numel(n, a) != known_numel(n, b))
    throw Error(n.describe() + ": '" + a.name + "' " + a.shape_string() + " and '" + b.name + "' " +
                b.shape_string() + " differ in element count");
}

void check_launch(const char* kernel, const std::string& where) {
  cuda::check(cudaGetLastError(), kernel, where);
}

float ratio_of(const Node& n) {
  float ratio = n.attr_float("ratio", 0.5f);
  if (!(ratio >= 0 && ratio <= 1))
    throw Error(n.describe() + ": ratio " + std::to_string(ratio) + " is outside [0, 1]");
  return ratio;
}

uint64_t key_of(const Node& n) {
  if (!n.has_attr("key")) throw Error(n.describe() + ": attribute key is required");
  return static_cast<uint64_t>(n.attr_int("key", 0));
}

// ---------------------------------------------------------------------------------------
// Device kernels

__global__ void fill_ones_kernel(float* y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) y[i] = 1.0f;
}

template <int kKind>
__global__ void dropout_training_kernel(void* y, uint8_t* mask, const void* x, const int64_t* step,
                                        int64_t n, uint64_t key, float ratio, float scale) {
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t s = *step;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < blocks; b += stride) {
    uint32_t w[4];
    math::random_block(key, s, b, w);
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = b * 4 + lane;
      if (i >= n) break;
      const bool keep = math::dropout_keep(w, lane, ratio);
      store_float<kKind>(y, i, math::dropout_apply(load_float<kKind>(x, i), keep, scale));
      if (mask) mask[i] = keep;
    }
  }
}

template <int kKind>
__global__ void dropout_grad_kernel(void* dx, const void* dy, const uint8_t* mask, int64_t n, float scale) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    store_float<kKind>(dx, i, math::dropout_apply(load_float<kKind>(dy, i), mask[i] != 0, scale));
}

// Dropout's data: float32 (kind 0), float16 (1) or bfloat16 (2), one type for `a` and `b`.
int dropout_kind(const Node& n, const graph::Value& a, const graph::Value& b) {
  if (a.dtype != b.dtype || (a.dtype != DType::f32 && a.dtype != DType::f16 && a.dtype != DType::bf16))
    throw Error(n.describe() + ": the CUDA kernel takes float32, float16 or bfloat16 of one type, got " +
                graph::dtype_name(a.dtype) + " '" + a.name + "' and " + graph::dtype_name(b.dtype) + " '" + b.name +
                "'");
  return cuda::float_kind(a.dtype);
}

// step == nullptr: step 0.
__global__ void random_kernel(float* y, const int64_t* step, int64_t n, uint64_t key, bool normal,
                              float a, float b) {
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t s = step ? *step : 0;
  for (int64_t blk = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; blk < blocks; blk += stride) {
    uint32_t w[4];
    math::random_block(key, s, blk, w);
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = blk * 4 + lane;
      if (i >= n) break;
      y[i] = normal ? math::normal_value(w, lane, a, b) : math::uniform_value(w, lane, a, b);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Factories

KernelFactory inference_dropout_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    if (x.dtype == DType::f64 || x.dtype == DType::undefined)
      throw Error(what + ": the CUDA kernel takes float32 or integer tensors, got " + graph::dtype_name(x.dtype));
    const int64_t numel = known_numel(n, x);
    if (const graph::Value* y = n.output(0)) {
      if (y->dtype != x.dtype)
        throw Error(what + ": output type " + graph::dtype_name(y->dtype) + " differs from the input's " +
                    graph::dtype_name(x.dtype));
      require_same_count(n, x, *y);
    }
    if (const graph::Value* m = n.output(1)) {
      if (m->dtype != DType::boolean && m->dtype != DType::f32)
        throw Error(what + ": the mask output is " + graph::dtype_name(m->dtype) +
                    "; the CUDA kernel writes bool or float32 masks");
      require_same_count(n, x, *m);
    }
    return make_kernel([what, numel](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      const TensorView& x = a.inputs[0];
      if (a.outputs[0].present() && a.outputs[0].data != x.data && x.bytes() > 0)
        cuda::check(cudaMemcpyAsync(a.outputs[0].data, x.data, x.bytes(), cudaMemcpyDeviceToDevice, ctx.stream),
                    "cudaMemcpyAsync", what);
      if (a.outputs.size() > 1 && a.outputs[1].present() && numel > 0) {
        const TensorView& m = a.outputs[1];
        if (m.dtype == DType::f32) {
          cuda::Launch l = cuda::launch_for(numel, ctx);
          fill_ones_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(m.as<float>(), numel);
          check_launch("fill_ones_kernel launch", what);
        } else {
          cuda::check(cudaMemsetAsync(m.data, 1, m.bytes(), ctx.stream), "cudaMemsetAsync", what);
        }
      }
    });
  };
}

KernelFactory dropout_training_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    const int kind = dropout_kind(n, x, y);
    require_step(n, 1);
    require_same_count(n, x, y);
    if (const graph::Value* m = n.output(1)) {
      if (m->dtype != DType::boolean) throw Error(what + ": the mask output must be bool");
      require_same_count(n, x, *m);
    }
    const int64_t numel = known_numel(n, x);
    const float ratio = ratio_of(n);
    const float scale = static_cast<float>(math::dropout_scale(ratio));
    const uint64_t key = key_of(n);
    return make_kernel([what, numel, ratio, scale, key, kind](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      if (numel == 0) return;
      uint8_t* mask = a.outputs.size() > 1 && a.outputs[1].present() ? a.outputs[1].as<uint8_t>() : nullptr;
      cuda::Launch l = cuda::launch_for((numel + 3) / 4, ctx);
      void* y = a.outputs[0].data;
      const void* x = a.inputs[0].data;
      const int64_t* step = a.inputs[1].as<int64_t>();
      cuda::with_float_kind(kind, [&](auto k) {
        dropout_training_kernel<decltype(k)::value>
            <<<l.blocks, l.threads, 0, ctx.stream>>>(y, mask, x, step, numel, key, ratio, scale);
      });
      check_launch("dropout_training_kernel launch", what);
    });
  };
}

KernelFactory dropout_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& mask = input_value(n, 1);
    const graph::Value& dx = output_value(n, 0);
    const int kind = dropout_kind(n, dy, dx);
    if (mask.dtype != DType::boolean) throw Error(what + ": the mask input must be bool");
    require_same_count(n, dy, mask);
    require_same_count(n, dy, dx);
    const int64_t numel = known_numel(n, dy);
    const float scale = static_cast<float>(math::dropout_scale(ratio_of(n)));
    return make_kernel([what, numel, scale, kind](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      if (numel == 0) return;
      cuda::Launch l = cuda::launch_for(numel, ctx);
      void* dx = a.outputs[0].data;
      const void* dy = a.inputs[0].data;
      const uint8_t* mask = a.inputs[1].as<uint8_t>();
      cuda::with_float_kind(kind, [&](auto k) {
        dropout_grad_kernel<decltype(k)::value><<<l.blocks, l.threads, 0, ctx.stream>>>(dx, dy, mask, numel, scale);
      });
      check_launch("dropout_grad_kernel launch", what);
    });
  };
}

KernelFactory random_factory(bool normal, bool training) {
  return [normal, training](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& y = output_value(n, 0);
    require_f32(n, y);
    if (training) require_step(n, 0);
    const int64_t numel = known_numel(n, y);
    const uint64_t key = training ? key_of(n) : graph::random_node_key(0, n);
    const float a = normal ? n.attr_float("mean", 0.0f) : n.attr_float("low", 0.0f);
    const float b = normal ? n.attr_float("scale", 1.0f) : n.attr_float("high", 1.0f);
    return make_kernel([what, numel, key, normal, training, a, b](const KernelArgs& args) {
      const CudaContext& ctx = cuda::context_of(args, what);
      if (numel == 0) return;
      const int64_t* step = training ? args.inputs[0].as<int64_t>() : nullptr;
      cuda::Launch l = cuda::launch_for((numel + 3) / 4, ctx);
      random_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(args.outputs[0].as<float>(), step, numel, key, normal,
                                                             a, b);
      check_launch("random_kernel launch", what);
    });
  };
}

}  // namespace

void register_cuda_random_kernels(KernelRegistry& registry) {
  const Device cuda = Device::cuda;
  registry.add("", "Dropout", cuda, inference_dropout_factory());
  registry.add("oxtrain", "DropoutTraining", cuda, dropout_training_factory());
  registry.add("oxtrain", "DropoutGrad", cuda, dropout_grad_factory());
  registry.add("oxtrain", "RandomUniform", cuda, random_factory(false, true));
  registry.add("oxtrain", "RandomNormal", cuda, random_factory(true, true));
  registry.add("", "RandomUniform", cuda, random_factory(false, false));
  registry.add("", "RandomNormal", cuda, random_factory(true, false));
  registry.add("", "RandomUniformLike", cuda, random_factory(false, false));
  registry.add("", "RandomNormalLike", cuda, random_factory(true, false));
}

}  // namespace oxtrain::runtime
