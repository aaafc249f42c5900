// CUDA pooling, 1-D to 3-D: MaxPool (with its optional Indices), AveragePool,
// GlobalAveragePool and their gradients oxtrain.MaxPoolGrad, oxtrain.MaxPoolGradFromInput,
// oxtrain.AveragePoolGrad, oxtrain.GlobalAveragePoolGrad; the twins of runtime/cpu/pool.cc.
// float32; 2-D MaxPool and MaxPoolGradFromInput also float16 and bfloat16, and channels-last
// ([N, H, W, C]) as stored. Every kernel writes (=) its outputs, all of them; the gradients
// included (none accumulates into dX).
//
// These are our own kernels on purpose. cuDNN's graph API has forward pooling (resample), but
// no max-pool backward that takes our Indices (flattened over the whole [N,C,H,W] tensor), and
// a forward of our own keeps ties, NaN and the chosen index identical to the CPU's: both
// devices run the window arithmetic of runtime/math/pool.h, which the CPU test suite checks.
//
// MaxPool and AveragePool: one thread per output element. The gradients gather, one thread
// per input element, from the outputs whose window covers it, adding in ascending output order
// (the order in which the CPU kernels add): no atomics, so dX is deterministic and bitwise the
// CPU's. MaxPoolGrad needs the forward window for that: the node's own attributes where it
// carries kernel_shape, else those of the MaxPool that made its Indices. Where neither is known
// (or the pooling is not 2-D) it scatters instead, one thread per N*C plane in the CPU's order;
// an index outside its own plane (MaxPool never makes one) is skipped there, and an index
// outside its window in the gather, where the CPU would still add it.
//
// GlobalAveragePool: one warp per plane, summed in double (lanes stride over the plane, then a
// fixed shuffle tree), so the mean agrees with the CPU's sequential double sum to float
// rounding. Its gradient: one thread per input element.
#include <cuda_runtime.h>

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>

#include "base/half.h"
#include "graph/ops.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/pool.h"

namespace oxtrain::runtime {
namespace {

using cpu::grad_input_shape;
using cpu::required;
using math::Pool2d;

constexpr unsigned kWarp = 32;

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Element i of a float32 (kKind 0), float16 (1) or bfloat16 (2) buffer as float32, and a
// float32 stored back rounded to nearest even: the CPU's emulation of half, so a max (a
// selection) and a gradient's float32 sum round as there.
template <int kKind>
__device__ __forceinline__ float load_as_float(const void* p, int64_t i) {
  if constexpr (kKind == 0) return static_cast<const float*>(p)[i];
  else return half_to_float(static_cast<const uint16_t*>(p)[i], kKind == 2);
}
template <int kKind>
__device__ __forceinline__ void store_float(void* p, int64_t i, float v) {
  if constexpr (kKind == 0) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = float_to_half(v, kKind == 2);
}

// Element i of an [N, C, H, W] tensor, or (kNhwc) of an [N, H, W, C] one.
struct Element {
  int64_t n, c, h, w;
};
template <bool kNhwc>
__device__ __forceinline__ Element element_at(int64_t i, int64_t C, int64_t H, int64_t W) {
  if constexpr (kNhwc) {
    const int64_t pixel = i / C;
    return {pixel / W / H, i % C, pixel / W % H, pixel % W};
  } else {
    const int64_t rest = i / W;
    return {rest / H / C, rest / H % C, rest % H, i % W};
  }
}

// Output i of [N, C, oH, oW] (kNhwc: [N, oH, oW, C]) -> its window's maximum and position.
// Indices, where wanted, are written in [N, C, oH, oW] order either way.
template <int kKind, bool kNhwc>
__global__ void max_pool_kernel(const Pool2d g, int64_t count, const void* x, void* y, int64_t* indices,
                                bool column_major) {
  const int64_t in_plane = g.in_plane(), C = g.channels;
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const Element e = element_at<kNhwc>(i, C, g.rows.out, g.cols.out);
    const int64_t n = e.n, c = e.c, oh = e.h, ow = e.w;
    const int64_t plane = n * C + c;
    const int64_t base = kNhwc ? n * in_plane * C + c : plane * in_plane, step = kNhwc ? C : 1;
    const math::MaxPick<float> m = math::max_window_at<float>(
        [&](int64_t at) { return load_as_float<kKind>(x, base + at * step); }, g.cols.in, math::pool_window(g, oh, ow));
    store_float<kKind>(y, i, m.value);
    if (indices)
      indices[(plane * g.rows.out + oh) * g.cols.out + ow] = math::max_pool_index(g, plane, m.at, column_major);
  }
}

// Input i of [planes, H, W] <- dY of the outputs whose window covers it and whose Indices
// name it.
__global__ void max_pool_grad_gather_kernel(const Pool2d g, int64_t count, const float* dy,
                                            const int64_t* indices, float* dx) {
  const int64_t out_plane = g.out_plane();
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const int64_t w = i % g.cols.in, rest = i / g.cols.in;
    const int64_t h = rest % g.rows.in, plane = rest / g.rows.in;
    dx[i] = math::max_pool_grad_at(g, dy + plane * out_plane, indices + plane * out_plane, plane,
                                   h, w);
  }
}

// MaxPoolGradFromInput: one thread per input element of [N, C, H, W] (kNhwc: [N, H, W, C]),
// finding the windows' maxima in X again.
template <int kKind, bool kNhwc>
__global__ void max_pool_grad_from_input_kernel(const Pool2d g, int64_t count, const void* dy, const void* x,
                                                void* dx) {
  const int64_t out_plane = g.out_plane(), in_plane = g.in_plane(), C = g.channels;
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const Element e = element_at<kNhwc>(i, C, g.rows.in, g.cols.in);
    const int64_t n = e.n, c = e.c, h = e.h, w = e.w;
    const int64_t plane = n * C + c, step = kNhwc ? C : 1;
    const int64_t x_base = kNhwc ? n * in_plane * C + c : plane * in_plane;
    const int64_t dy_base = kNhwc ? n * out_plane * C + c : plane * out_plane;
    store_float<kKind>(dx, i,
                       math::max_pool_grad_from_input_with<float>(
                           g, [&](int64_t o) { return load_as_float<kKind>(dy, dy_base + o * step); },
                           [&](int64_t at) { return load_as_float<kKind>(x, x_base + at * step); }, h, w));
  }
}

// Launches one of the four forms of a templated pooling kernel for `dtype` and the layout.
template <template <int, bool> class Launcher, typename... Args>
void launch_typed(DType dtype, bool nhwc, Args&&... args) {
  const int kind = dtype == DType::f32 ? 0 : dtype == DType::f16 ? 1 : 2;
  switch (kind * 2 + (nhwc ? 1 : 0)) {
    case 0: Launcher<0, false>::run(args...); break;
    case 1: Launcher<0, true>::run(args...); break;
    case 2: Launcher<1, false>::run(args...); break;
    case 3: Launcher<1, true>::run(args...); break;
    case 4: Launcher<2, false>::run(args...); break;
    default: Launcher<2, true>::run(args...); break;
  }
}

template <int kKind, bool kNhwc>
struct MaxPoolLaunch {
  static void run(const cuda::Launch& l, cudaStream_t stream, const Pool2d& g, int64_t count, const void* x, void* y,
                  int64_t* indices, bool column_major) {
    max_pool_kernel<kKind, kNhwc><<<l.blocks, l.threads, 0, stream>>>(g, count, x, y, indices, column_major);
  }
};
template <int kKind, bool kNhwc>
struct MaxPoolGradFromInputLaunch {
  static void run(const cuda::Launch& l, cudaStream_t stream, const Pool2d& g, int64_t count, const void* dy,
                  const void* x, void* dx) {
    max_pool_grad_from_input_kernel<kKind, kNhwc><<<l.blocks, l.threads, 0, stream>>>(g, count, dy, x, dx);
  }
};

// One thread per plane; dX holds zeros before.
__global__ void max_pool_grad_scatter_kernel(int64_t planes, int64_t in_plane, int64_t out_plane,
                                             const float* dy, const int64_t* indices,
                                             float* dx) {
  for (int64_t p = thread_index(); p < planes; p += thread_count())
    math::max_pool_grad_scatter(math::MaxGradPlane{p * in_plane, in_plane, out_plane},
                                dy + p * out_plane, indices + p * out_plane, dx + p * in_plane);
}

__global__ void avg_pool_kernel(const Pool2d g, bool include_pad, int64_t count, const float* x,
                                float* y) {
  const int64_t in_plane = g.in_plane();
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const int64_t ow = i % g.cols.out, rest = i / g.cols.out;
    const int64_t oh = rest % g.rows.out, plane = rest / g.rows.out;
    y[i] = math::avg_window(x + plane * in_plane, g.cols.in, math::pool_window(g, oh, ow),
                            include_pad);
  }
}

__global__ void avg_pool_grad_kernel(const Pool2d g, bool include_pad, int64_t count,
                                     const float* dy, float* dx) {
  const int64_t out_plane = g.out_plane();
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const int64_t w = i % g.cols.in, rest = i / g.cols.in;
    const int64_t h = rest % g.rows.in, plane = rest / g.rows.in;
    dx[i] = math::avg_pool_grad_at(g, include_pad, dy + plane * out_plane, h, w);
  }
}

// One warp per plane (blockDim.x a multiple of 32): every lane of a warp takes the same planes,
// so the full-mask shuffles are uniform.
__global__ void global_avg_pool_kernel(int64_t planes, int64_t size, const float* x, float* y) {
  const unsigned lane = threadIdx.x % kWarp;
  const int64_t warps = thread_count() / kWarp;
  for (int64_t p = thread_index() / kWarp; p < planes; p += warps) {
    const float* xp = x + p * size;
    double sum = 0;
    for (int64_t j = lane; j < size; j += kWarp) sum += xp[j];
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2)
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) y[p] = math::global_mean<float>(sum, size);
  }
}

__global__ void global_avg_pool_grad_kernel(int64_t count, int64_t size, const float* dy,
                                            float* dx) {
  for (int64_t i = thread_index(); i < count; i += thread_count())
    dx[i] = math::global_mean_grad(dy[i / size], size);
}

// ---------------------------------------------------------------------------------------
// 3-D pooling ([N, C, D, H, W]): the same schemes, with runtime/math/pool.h's Pool3d functions.

__global__ void max_pool_3d_kernel(const math::Pool3d g, int64_t count, const float* x, float* y, int64_t* indices,
                                   bool column_major) {
  const int64_t in_plane = g.in_plane();
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const int64_t o2 = i % g.axes[2].out, r = i / g.axes[2].out;
    const int64_t o1 = r % g.axes[1].out, r2 = r / g.axes[1].out;
    const int64_t o0 = r2 % g.axes[0].out, plane = r2 / g.axes[0].out;
    const math::MaxPick<float> m = math::max_window_3d(g, x + plane * in_plane, math::pool_window_3d(g, o0, o1, o2));
    y[i] = m.value;
    if (indices) indices[i] = math::max_pool_index_3d(g, plane, m.at, column_major);
  }
}

__global__ void avg_pool_3d_kernel(const math::Pool3d g, bool include_pad, int64_t count, const float* x, float* y) {
  const int64_t in_plane = g.in_plane();
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const int64_t o2 = i % g.axes[2].out, r = i / g.axes[2].out;
    const int64_t o1 = r % g.axes[1].out, r2 = r / g.axes[1].out;
    const int64_t o0 = r2 % g.axes[0].out, plane = r2 / g.axes[0].out;
    y[i] = math::avg_window_3d(g, x + plane * in_plane, math::pool_window_3d(g, o0, o1, o2), include_pad);
  }
}

__global__ void max_pool_grad_from_input_3d_kernel(const math::Pool3d g, int64_t count, const float* dy,
                                                   const float* x, float* dx) {
  const int64_t in_plane = g.in_plane(), out_plane = g.out_plane();
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const int64_t plane = i / in_plane;
    dx[i] = math::max_pool_grad_from_input_at_3d(g, dy + plane * out_plane, x + plane * in_plane, i % in_plane);
  }
}

__global__ void avg_pool_grad_3d_kernel(const math::Pool3d g, bool include_pad, int64_t count, const float* dy,
                                        float* dx) {
  const int64_t in_plane = g.in_plane(), out_plane = g.out_plane();
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    const int64_t plane = i / in_plane;
    dx[i] = math::avg_pool_grad_at_3d(g, include_pad, dy + plane * out_plane, i % in_plane);
  }
}

// ---------------------------------------------------------------------------------------
// Factories.

void require_float32(const graph::Node& node, std::initializer_list<const graph::Value*> values) {
  for (const graph::Value* v : values)
    if (v && v->dtype != DType::f32)
      throw Error(node.describe() + ": the CUDA kernel takes float32, got " +
                  graph::dtype_name(v->dtype) + " '" + v->name + "'");
}

// 2-D max pooling's one element type: float32, or float16 / bfloat16 for [N, C, H, W] (and
// channels-last) values, computed as the CPU's emulation of half does.
DType pool2d_type(const graph::Node& node, std::initializer_list<const graph::Value*> values) {
  const graph::Value* first = *values.begin();
  const DType dt = first->dtype;
  for (const graph::Value* v : values)
    if (v && v->dtype != dt)
      throw Error(node.describe() + ": the CUDA kernel takes one element type, got " + graph::dtype_name(dt) + " and " +
                  graph::dtype_name(v->dtype) + " '" + v->name + "'");
  if (dt == DType::f32) return dt;
  if ((dt == DType::f16 || dt == DType::bf16) && first->shape.size() == 4) return dt;
  throw Error(node.describe() + ": the CUDA kernel takes float32, got " + graph::dtype_name(dt) + " '" + first->name +
              "' (float16 and bfloat16 too for 2-D pooling)");
}

// An activation's [N, C, H, W] dims: its shape, or on a channels-last node its [N, H, W, C]
// shape read channels-first (graph::to_channels_last).
graph::Shape logical_shape(const graph::Node& n, const graph::Shape& shape) {
  return graph::is_channels_last(n) && shape.size() == 4 ? graph::to_channels_first_shape(shape) : shape;
}

// The window of MaxPool / AveragePool / AveragePoolGrad over input `x`, pooled `y`.
Pool2d node_window(const KernelInit& init, const graph::Shape& x, const graph::Shape& y) {
  Pool2d g = math::pool_window_2d(init.node, x, math::pool_ceil_mode(init.node, init.opset),
                                  Device::cuda);
  math::check_pooled_shape(init.node, g, y);
  return g;
}

// The window MaxPool used, for MaxPoolGrad's gather: the gradient node's own attributes where
// it carries kernel_shape, else those of the MaxPool whose Indices it takes. nullopt where
// neither is known or the pooling is not 2-D.
std::optional<Pool2d> max_grad_window(const KernelInit& init, const graph::Shape& x,
                                      const graph::Shape& dy) {
  const graph::Node& n = init.node;
  if (x.size() != 4) return std::nullopt;
  const graph::Node* fwd = n.input(1)->producer;
  // The gather compares each Indices entry with row-major positions; column-major Indices
  // (MaxPool storage_order=1) take the scatter, which puts each gradient where it points.
  if (fwd && fwd->op_type == "MaxPool" && fwd->attr_int("storage_order", 0) != 0) return std::nullopt;
  if (n.has_attr("kernel_shape")) return node_window(init, x, dy);
  // Indices (int64, checked) made by a MaxPool are its output 1, over an input of our shape.
  if (!fwd || fwd->op_type != "MaxPool" || !(fwd->domain.empty() || fwd->domain == "ai.onnx") ||
      !fwd->input(0) || fwd->input(0)->shape != x || !fwd->has_attr("kernel_shape") ||
      fwd->attr_int("storage_order", 0) != 0)
    return std::nullopt;
  // ceil_mode counts from opset 10 of ai.onnx, whose version is not known here: the pooled
  // shape decides (ceil_mode changes only how many windows there are, not where they lie).
  for (bool ceil_mode : {fwd->attr_int("ceil_mode", 0) != 0, false}) {
    Pool2d g = math::pool_window_2d(*fwd, x, ceil_mode, Device::cuda);
    if (g.rows.out == dy[2] && g.cols.out == dy[3]) return g;
  }
  return std::nullopt;
}

const float* in_f32(const KernelArgs& a, size_t i) { return a.inputs[i].as<const float>(); }
float* out_f32(const KernelArgs& a, size_t i) { return a.outputs[i].as<float>(); }

// A 3-D pooling's geometry at the batch it runs with (the node's may be another).
math::Pool3d at_batch(math::Pool3d g, const graph::Shape& s) {
  g.planes = s[0] * s[1];
  return g;
}

// The 3-D forms of MaxPool, AveragePool, AveragePoolGrad and MaxPoolGradFromInput: `in`, `out`
// are the indices of the input and output whose planes the kernel walks.
std::unique_ptr<Kernel> max_pool_3d(const math::Pool3d g, bool column_major, const std::string& where) {
  return make_kernel([g, column_major, where](const KernelArgs& a) {
    const CudaContext& ctx = cuda::context_of(a, where);
    const math::Pool3d run = at_batch(g, a.inputs[0].shape);
    const int64_t count = run.planes * run.out_plane();
    if (count == 0) return;
    int64_t* indices = a.outputs.size() > 1 && a.outputs[1].present() ? a.outputs[1].as<int64_t>() : nullptr;
    const cuda::Launch l = cuda::launch_for(count, ctx);
    max_pool_3d_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(run, count, in_f32(a, 0), out_f32(a, 0), indices,
                                                               column_major);
    cuda::check(cudaGetLastError(), "max_pool_3d_kernel launch", where);
  });
}

std::unique_ptr<Kernel> avg_pool_3d(const math::Pool3d g, bool include_pad, bool grad, const std::string& where) {
  return make_kernel([g, include_pad, grad, where](const KernelArgs& a) {
    const CudaContext& ctx = cuda::context_of(a, where);
    const math::Pool3d run = at_batch(g, a.inputs[0].shape);
    const int64_t count = run.planes * (grad ? run.in_plane() : run.out_plane());
    if (count == 0) return;
    const cuda::Launch l = cuda::launch_for(count, ctx);
    if (grad)
      avg_pool_grad_3d_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(run, include_pad, count, in_f32(a, 0),
                                                                      out_f32(a, 0));
    else
      avg_pool_3d_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(run, include_pad, count, in_f32(a, 0), out_f32(a, 0));
    cuda::check(cudaGetLastError(), grad ? "avg_pool_grad_3d_kernel launch" : "avg_pool_3d_kernel launch", where);
  });
}

std::unique_ptr<Kernel> max_pool_grad_from_input_3d(const math::Pool3d g, const std::string& where) {
  return make_kernel([g, where](const KernelArgs& a) {
    const CudaContext& ctx = cuda::context_of(a, where);
    const math::Pool3d run = at_batch(g, a.inputs[1].shape);
    const int64_t count = run.planes * run.in_plane();
    if (count == 0) return;
    const cuda::Launch l = cuda::launch_for(count, ctx);
    max_pool_grad_from_input_3d_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(run, count, in_f32(a, 0), in_f32(a, 1),
                                                                                out_f32(a, 0));
    cuda::check(cudaGetLastError(), "max_pool_grad_from_input_3d_kernel launch", where);
  });
}

}  // namespace

void register_cuda_pool_kernels(KernelRegistry& registry) {
  registry.add("", "MaxPool", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    const bool column_major = math::check_max_pool_outputs(n, logical_shape(n, y->shape));
    if (x->shape.size() == 5) {
      require_float32(n, {x, y});
      return max_pool_3d(math::pool_geometry_3d(n, x->shape, y->shape, math::pool_ceil_mode(n, init.opset)),
                         column_major, n.describe());
    }
    const DType dt = pool2d_type(n, {x, y});
    const bool nhwc = graph::is_channels_last(n) && x->shape.size() == 4;
    const Pool2d g = node_window(init, logical_shape(n, x->shape), logical_shape(n, y->shape));
    const std::string where = n.describe();
    return make_kernel([g, where, column_major, dt, nhwc](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      Pool2d run = g;
      run.batch = a.inputs[0].shape[0];
      const int64_t count = run.planes() * run.out_plane();
      if (count == 0) return;
      int64_t* indices = a.outputs.size() > 1 && a.outputs[1].present()
                             ? a.outputs[1].as<int64_t>()
                             : nullptr;
      const cuda::Launch l = cuda::launch_for(count, ctx);
      launch_typed<MaxPoolLaunch>(dt, nhwc, l, ctx.stream, run, count, a.inputs[0].data, a.outputs[0].data, indices,
                                  column_major);
      cuda::check(cudaGetLastError(), "max_pool_kernel launch", where);
    });
  });

  registry.add(graph::kOxtrainDomain, "MaxPoolGrad", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* dy = required(n, 0);
    require_float32(n, {dy, required(n, 0, true)});
    const graph::Shape x_shape = math::check_max_pool_grad(n);
    const std::string where = n.describe();
    if (std::optional<Pool2d> window = max_grad_window(init, x_shape, dy->shape)) {
      const Pool2d g = *window;
      return make_kernel([g, where](const KernelArgs& a) {
        const CudaContext& ctx = cuda::context_of(a, where);
        Pool2d run = g;
        run.batch = a.inputs[0].shape[0];
        const int64_t count = run.planes() * run.in_plane();
        if (count == 0) return;
        const cuda::Launch l = cuda::launch_for(count, ctx);
        max_pool_grad_gather_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(
            run, count, in_f32(a, 0), a.inputs[1].as<const int64_t>(), out_f32(a, 0));
        cuda::check(cudaGetLastError(), "max_pool_grad_gather_kernel launch", where);
      });
    }
    int64_t in_plane = 1, out_plane = 1;
    for (size_t i = 2; i < x_shape.size(); ++i) in_plane *= x_shape[i], out_plane *= dy->shape[i];
    return make_kernel([in_plane, out_plane, where](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      const graph::Shape& s = a.inputs[0].shape;
      const int64_t planes = s[0] * s[1];
      if (planes * in_plane == 0) return;
      float* dx = out_f32(a, 0);
      cuda::check(cudaMemsetAsync(dx, 0, a.outputs[0].bytes(), ctx.stream),
                  "MaxPoolGrad cudaMemsetAsync", where);
      const cuda::Launch l = cuda::launch_for(planes, ctx);
      max_pool_grad_scatter_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(
          planes, in_plane, out_plane, in_f32(a, 0), a.inputs[1].as<const int64_t>(), dx);
      cuda::check(cudaGetLastError(), "max_pool_grad_scatter_kernel launch", where);
    });
  });

  registry.add(graph::kOxtrainDomain, "MaxPoolGradFromInput", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    math::check_max_pool_grad_from_input_values(n);
    if (n.input(1)->shape.size() == 5) {
      require_float32(n, {n.input(0), n.input(1), n.output(0)});
      return max_pool_grad_from_input_3d(
          math::pool_geometry_3d(n, n.input(1)->shape, n.input(0)->shape, math::pool_ceil_mode(n, init.opset)),
          n.describe());
    }
    const DType dt = pool2d_type(n, {n.input(0), n.input(1), n.output(0)});
    const bool nhwc = graph::is_channels_last(n) && n.input(1)->shape.size() == 4;
    const Pool2d g = node_window(init, logical_shape(n, n.input(1)->shape), logical_shape(n, n.input(0)->shape));
    const std::string where = n.describe();
    return make_kernel([g, where, dt, nhwc](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      Pool2d run = g;
      run.batch = a.inputs[1].shape[0];
      const int64_t count = run.planes() * run.in_plane();
      if (count == 0) return;
      const cuda::Launch l = cuda::launch_for(count, ctx);
      launch_typed<MaxPoolGradFromInputLaunch>(dt, nhwc, l, ctx.stream, run, count, a.inputs[0].data, a.inputs[1].data,
                                               a.outputs[0].data);
      cuda::check(cudaGetLastError(), "max_pool_grad_from_input_kernel launch", where);
    });
  });

  registry.add("", "AveragePool", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    require_float32(n, {x, y});
    const bool include_pad = n.attr_int("count_include_pad", 0) != 0;
    if (x->shape.size() == 5)
      return avg_pool_3d(math::pool_geometry_3d(n, x->shape, y->shape, math::pool_ceil_mode(n, init.opset)),
                         include_pad, false, n.describe());
    const Pool2d g = node_window(init, x->shape, y->shape);
    const std::string where = n.describe();
    return make_kernel([g, include_pad, where](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      Pool2d run = g;
      run.batch = a.inputs[0].shape[0];
      const int64_t count = run.planes() * run.out_plane();
      if (count == 0) return;
      const cuda::Launch l = cuda::launch_for(count, ctx);
      avg_pool_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(run, include_pad, count,
                                                              in_f32(a, 0), out_f32(a, 0));
      cuda::check(cudaGetLastError(), "avg_pool_kernel launch", where);
    });
  });

  registry.add(graph::kOxtrainDomain, "AveragePoolGrad", Device::cuda,
               [](const KernelInit& init) {
                 const graph::Node& n = init.node;
                 const graph::Value* dy = required(n, 0);
                 const graph::Value* dx = required(n, 0, true);
                 require_float32(n, {dy, dx});
                 const bool include_pad = n.attr_int("count_include_pad", 0) != 0;
                 const graph::Shape x_shape = grad_input_shape(n, dx);
                 if (x_shape.size() == 5)
                   return avg_pool_3d(
                       math::pool_geometry_3d(n, x_shape, dy->shape, math::pool_ceil_mode(n, init.opset)),
                       include_pad, true, n.describe());
                 const Pool2d g = node_window(init, x_shape, dy->shape);
                 const std::string where = n.describe();
                 return make_kernel([g, include_pad, where](const KernelArgs& a) {
                   const CudaContext& ctx = cuda::context_of(a, where);
                   Pool2d run = g;
                   run.batch = a.inputs[0].shape[0];
                   const int64_t count = run.planes() * run.in_plane();
                   if (count == 0) return;
                   const cuda::Launch l = cuda::launch_for(count, ctx);
                   avg_pool_grad_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(
                       run, include_pad, count, in_f32(a, 0), out_f32(a, 0));
                   cuda::check(cudaGetLastError(), "avg_pool_grad_kernel launch", where);
                 });
               });

  registry.add("", "GlobalAveragePool", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    require_float32(n, {x, y});
    const int64_t size = math::global_pool_planes(n, x->shape, y->shape, "output shape").size;
    const std::string where = n.describe();
    return make_kernel([size, where](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      const graph::Shape& s = a.inputs[0].shape;
      const int64_t planes = s[0] * s[1];
      if (planes == 0) return;
      const cuda::Launch l = cuda::launch_for(planes * kWarp, ctx);
      global_avg_pool_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(planes, size, in_f32(a, 0),
                                                                     out_f32(a, 0));
      cuda::check(cudaGetLastError(), "global_avg_pool_kernel launch", where);
    });
  });

  registry.add(graph::kOxtrainDomain, "GlobalAveragePoolGrad", Device::cuda,
               [](const KernelInit& init) {
                 const graph::Node& n = init.node;
                 const graph::Value* dy = required(n, 0);
                 const graph::Value* dx = required(n, 0, true);
                 require_float32(n, {dy, dx});
                 const int64_t size =
                     math::global_pool_planes(n, grad_input_shape(n, dx), dy->shape, "dY").size;
                 const std::string where = n.describe();
                 return make_kernel([size, where](const KernelArgs& a) {
                   const CudaContext& ctx = cuda::context_of(a, where);
                   const graph::Shape& s = a.inputs[0].shape;
                   const int64_t count = s[0] * s[1] * size;
                   if (count == 0) return;
                   const cuda::Launch l = cuda::launch_for(count, ctx);
                   global_avg_pool_grad_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(
                       count, size, in_f32(a, 0), out_f32(a, 0));
                   cuda::check(cudaGetLastError(), "global_avg_pool_grad_kernel launch", where);
                 });
               });
}

}  // namespace oxtrain::runtime
