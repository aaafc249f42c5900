// CUDA pooling, 1-D to 3-D: MaxPool (with its optional Indices), AveragePool,
// GlobalAveragePool and their gradients oxtrain.MaxPoolGrad, oxtrain.MaxPoolGradFromInput,
// oxtrain.AveragePoolGrad, oxtrain.GlobalAveragePoolGrad; the twins of runtime/cpu/pool.cc.
// float32; 1-D and 2-D pooling and global average pooling also float16 and bfloat16, and 2-D
// pooling channels-last ([N, H, W, C]) as stored. Every kernel writes (=) its outputs, all of them; the gradients
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

using cpu::required;
using math::Pool2d;

constexpr unsigned kWarp = 32;

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// A loader for runtime/math/pool.h's element functions: element j of a buffer of kKind.
template <int kKind>
struct Loader {
  const void* p;
  __device__ __forceinline__ float operator()(int64_t j) const { return load_float<kKind>(p, j); }
};

// Output i of [N, C, oH, oW] (kNhwc: [N, oH, oW, C]) -> its window's maximum and position.
// Indices, where wanted, are written in [N, C, oH, oW] order either way.
template <int kKind, bool kNhwc>
__global__ void max_pool_kernel(const Pool2d g, int64_t count, const void* x, void* y, int64_t* indices,
                                bool column_major) {
  for (int64_t i = thread_index(); i < count; i += thread_count()) {
    math::PoolElement e;
    const math::MaxPick<float> m = math::max_pool_output_at<float>(g, kNhwc, i, Loader<kKind>{x}, e);
    store_float<kKind>(y, i, m.value);
    const int64_t plane = e.n * g.channels + e.c;
    if (indices)
      indices[(plane * g.rows.out + e.h) * g.cols.out + e.w] = math::max_pool_index(g, plane, m.at, column_major);
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
  for (int64_t i = thread_index(); i < count; i += thread_count())
    store_float<kKind>(dx, i,
                       math::max_pool_grad_from_input_element<float>(g, kNhwc, i, Loader<kKind>{dy}, Loader<kKind>{x}));
}

// AveragePool: one thread per output element; its gradient one per input element, gathering.
template <int kKind, bool kNhwc>
__global__ void avg_pool_kernel(const Pool2d g, bool include_pad, int64_t count, const void* x, void* y) {
  for (int64_t i = thread_index(); i < count; i += thread_count())
    store_float<kKind>(y, i, math::avg_pool_output_at<float>(g, include_pad, kNhwc, i, Loader<kKind>{x}));
}

template <int kKind, bool kNhwc>
__global__ void avg_pool_grad_kernel(const Pool2d g, bool include_pad, int64_t count, const void* dy, void* dx) {
  for (int64_t i = thread_index(); i < count; i += thread_count())
    store_float<kKind>(dx, i, math::avg_pool_grad_element<float>(g, include_pad, kNhwc, i, Loader<kKind>{dy}));
}

// GlobalAveragePool channels-first: one warp per plane (blockDim.x a multiple of 32): every
// lane of a warp takes the same planes, so the full-mask shuffles are uniform.
template <int kKind>
__global__ void global_avg_pool_kernel(int64_t planes, int64_t size, const void* x, void* y) {
  const unsigned lane = threadIdx.x % kWarp;
  const int64_t warps = thread_count() / kWarp;
  for (int64_t p = thread_index() / kWarp; p < planes; p += warps) {
    const int64_t base = p * size;
    double sum = 0;
    for (int64_t j = lane; j < size; j += kWarp) sum += load_float<kKind>(x, base + j);
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2)
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) store_float<kKind>(y, p, math::global_mean<float>(sum, size));
  }
}

// Channels-last: one thread per (n, c), the lanes of a warp on neighbouring channels (loads
// coalesced), each summing its plane in order as the CPU does.
template <int kKind>
__global__ void global_avg_pool_nhwc_kernel(int64_t count, int64_t channels, int64_t size, const void* x, void* y) {
  for (int64_t o = thread_index(); o < count; o += thread_count())
    store_float<kKind>(y, o, math::global_mean_output_at<float>(channels, size, true, o, Loader<kKind>{x}));
}

template <int kKind, bool kNhwc>
__global__ void global_avg_pool_grad_kernel(int64_t count, int64_t channels, int64_t size, const void* dy,
                                            void* dx) {
  for (int64_t i = thread_index(); i < count; i += thread_count())
    store_float<kKind>(
        dx, i,
        math::global_mean_grad(load_float<kKind>(dy, math::global_mean_grad_source(channels, size, kNhwc, i)), size));
}

// Launches one of the four forms of a templated pooling kernel for `dtype` and the layout.
template <template <int, bool> class Launcher, typename... Args>
void launch_typed(DType dtype, bool nhwc, Args&&... args) {
  cuda::with_float_kind(cuda::float_kind(dtype), [&](auto k) {
    if (nhwc) Launcher<decltype(k)::value, true>::run(args...);
    else Launcher<decltype(k)::value, false>::run(args...);
  });
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

template <int kKind, bool kNhwc>
struct AvgPoolLaunch {
  static void run(const cuda::Launch& l, cudaStream_t stream, bool grad, const Pool2d& g, bool include_pad,
                  int64_t count, const void* in, void* out) {
    if (grad)
      avg_pool_grad_kernel<kKind, kNhwc><<<l.blocks, l.threads, 0, stream>>>(g, include_pad, count, in, out);
    else
      avg_pool_kernel<kKind, kNhwc><<<l.blocks, l.threads, 0, stream>>>(g, include_pad, count, in, out);
  }
};
template <int kKind, bool kNhwc>
struct GlobalAvgPoolLaunch {
  static void run(const CudaContext& ctx, int64_t planes, int64_t channels, int64_t size, const void* x, void* y) {
    if (kNhwc) {
      const cuda::Launch l = cuda::launch_for(planes, ctx);
      global_avg_pool_nhwc_kernel<kKind><<<l.blocks, l.threads, 0, ctx.stream>>>(planes, channels, size, x, y);
    } else {
      const cuda::Launch l = cuda::launch_for(planes * kWarp, ctx);
      global_avg_pool_kernel<kKind><<<l.blocks, l.threads, 0, ctx.stream>>>(planes, size, x, y);
    }
  }
};
template <int kKind, bool kNhwc>
struct GlobalAvgPoolGradLaunch {
  static void run(const cuda::Launch& l, cudaStream_t stream, int64_t count, int64_t channels, int64_t size,
                  const void* dy, void* dx) {
    global_avg_pool_grad_kernel<kKind, kNhwc><<<l.blocks, l.threads, 0, stream>>>(count, channels, size, dy, dx);
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

// 1-D and 2-D pooling's one element type: float32, or float16 / bfloat16 for [N, C, L] and
// [N, C, H, W] (and channels-last) values, computed as the CPU's emulation of half does. Global
// average pooling (`any_rank`) takes half at every rank.
DType pool2d_type(const graph::Node& node, std::initializer_list<const graph::Value*> values, bool any_rank = false) {
  const graph::Value* first = *values.begin();
  const DType dt = first->dtype;
  for (const graph::Value* v : values)
    if (v && v->dtype != dt)
      throw Error(node.describe() + ": the CUDA kernel takes one element type, got " + graph::dtype_name(dt) + " and " +
                  graph::dtype_name(v->dtype) + " '" + v->name + "'");
  if (dt == DType::f32) return dt;
  const size_t rank = first->shape.size();
  if ((dt == DType::f16 || dt == DType::bf16) && (any_rank || rank == 3 || rank == 4)) return dt;
  throw Error(node.describe() + ": the CUDA kernel takes float32, got " + graph::dtype_name(dt) + " '" + first->name +
              "' (float16 and bfloat16 too for 1-D and 2-D pooling)");
}

// An activation's [N, C, H, W] dims: its shape, or on a channels-last node its [N, H, W, C]
// shape read channels-first (graph::to_channels_last).
graph::Shape logical_shape(const graph::Node& n, const graph::Shape& shape) {
  return graph::is_channels_last(n) && shape.size() == 4 ? graph::to_channels_first_shape(shape) : shape;
}

// A gradient's input_shape attribute ([N, C, H, W] on channels-last nodes too), checked
// against dX as stored.
graph::Shape logical_grad_input_shape(const graph::Node& n, const graph::Value* dx) {
  return cpu::grad_input_shape(n, dx, logical_shape(n, dx->shape));
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

  // AveragePool and its gradient: `grad` picks which, the input and output of the kernel.
  auto avg_pool = [](const KernelInit& init, bool grad) -> std::unique_ptr<Kernel> {
    const graph::Node& n = init.node;
    const graph::Value* in = required(n, 0);
    const graph::Value* out = required(n, 0, true);
    const bool include_pad = n.attr_int("count_include_pad", 0) != 0;
    const graph::Shape x_shape = grad ? logical_grad_input_shape(n, out) : logical_shape(n, in->shape);
    const graph::Shape y_shape = logical_shape(n, grad ? in->shape : out->shape);
    if (x_shape.size() == 5) {
      require_float32(n, {in, out});
      return avg_pool_3d(math::pool_geometry_3d(n, x_shape, y_shape, math::pool_ceil_mode(n, init.opset)), include_pad,
                         grad, n.describe());
    }
    const DType dt = pool2d_type(n, {in, out});
    const bool nhwc = graph::is_channels_last(n) && x_shape.size() == 4;
    const Pool2d g = node_window(init, x_shape, y_shape);
    const std::string where = n.describe();
    return make_kernel([g, include_pad, grad, dt, nhwc, where](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      Pool2d run = g;
      run.batch = a.inputs[0].shape[0];
      const int64_t count = run.planes() * (grad ? run.in_plane() : run.out_plane());
      if (count == 0) return;
      const cuda::Launch l = cuda::launch_for(count, ctx);
      launch_typed<AvgPoolLaunch>(dt, nhwc, l, ctx.stream, grad, run, include_pad, count, a.inputs[0].data,
                                  a.outputs[0].data);
      cuda::check(cudaGetLastError(), grad ? "avg_pool_grad_kernel launch" : "avg_pool_kernel launch", where);
    });
  };
  registry.add("", "AveragePool", Device::cuda, [avg_pool](const KernelInit& init) { return avg_pool(init, false); });
  registry.add(graph::kOxtrainDomain, "AveragePoolGrad", Device::cuda,
               [avg_pool](const KernelInit& init) { return avg_pool(init, true); });

  // Global average pooling and its gradient, any rank channels-first, rank 4 channels-last:
  // the planes of [N, C, ...] or [N, H, W, C], the pooled values [N, C] as both store them.
  registry.add("", "GlobalAveragePool", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    const DType dt = pool2d_type(n, {x, y}, true);
    const bool nhwc = graph::is_channels_last(n) && x->shape.size() == 4;
    const int64_t size =
        math::global_pool_planes(n, logical_shape(n, x->shape), logical_shape(n, y->shape), "output shape").size;
    const std::string where = n.describe();
    return make_kernel([size, dt, nhwc, where](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      const graph::Shape& s = a.inputs[0].shape;
      const int64_t channels = nhwc ? s[3] : s[1], planes = s[0] * channels;
      if (planes == 0) return;
      launch_typed<GlobalAvgPoolLaunch>(dt, nhwc, ctx, planes, channels, size, a.inputs[0].data, a.outputs[0].data);
      cuda::check(cudaGetLastError(), "global_avg_pool_kernel launch", where);
    });
  });

  registry.add(graph::kOxtrainDomain, "GlobalAveragePoolGrad", Device::cuda, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* dy = required(n, 0);
    const graph::Value* dx = required(n, 0, true);
    const DType dt = pool2d_type(n, {dy, dx}, true);
    const bool nhwc = graph::is_channels_last(n) && dx->shape.size() == 4;
    const int64_t size =
        math::global_pool_planes(n, logical_grad_input_shape(n, dx), logical_shape(n, dy->shape), "dY").size;
    const std::string where = n.describe();
    return make_kernel([size, dt, nhwc, where](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, where);
      const graph::Shape& s = a.inputs[0].shape;
      const int64_t channels = nhwc ? s[3] : s[1], count = s[0] * channels * size;
      if (count == 0) return;
      const cuda::Launch l = cuda::launch_for(count, ctx);
      launch_typed<GlobalAvgPoolGradLaunch>(dt, nhwc, l, ctx.stream, count, channels, size, a.inputs[0].data,
                                            a.outputs[0].data);
      cuda::check(cudaGetLastError(), "global_avg_pool_grad_kernel launch", where);
    });
  });
}

}  // namespace oxtrain::runtime
