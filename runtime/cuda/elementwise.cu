// CUDA element-wise kernels, the twins of runtime/cpu/elementwise.cc: Add Sub Mul Div (numpy
// broadcasting), Neg, Relu, oxtrain.ReluGrad, Sum (variadic, broadcasting), the copies
// (Identity Flatten Reshape Dropout), Transpose, and the reductions ReduceMean,
// oxtrain.ReduceSumTo and oxtrain.ReduceMeanGrad. Every kernel writes (=) its outputs.
//
// The per-element math (runtime/math/elementwise.h) and the broadcast index math
// (runtime/math/broadcast.h) are the CPU kernels' own, so the element-wise ops give the CPU's
// results bit for bit. The arithmetic takes float32, float16 and bfloat16 (every operand of one
// type): half is widened on load, computed in float32 and rounded once on store, as the CPU's
// emulation of half computes it, so mixed precision costs no conversion passes. Copies and
// Transpose move elements of any size. Shapes, strides and axes are fixed when the kernel is
// made; a step only launches on the context's stream.
//
// Element-wise kernels read element i of every input before writing element i of the output,
// so the output may share a same-shape input's buffer. Copies are one cudaMemcpyAsync on the
// stream, none where output and input are one buffer.
//
// Reductions add in double, in an order fixed by the shapes alone: a warp or a block per
// output element (or a block per 32 columns where the innermost dim is kept), each thread
// summing a fixed set of elements, then a fixed-order tree in shared memory; very long
// reductions write per-segment sums to the workspace and a second kernel adds them in order.
// No atomics: results are identical from run to run. The order differs from the CPU's, so a
// result may differ from the CPU's in the last bit of float32.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "base/half.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/broadcast.h"
#include "runtime/math/elementwise.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

using math::StridedIndex;
using math::StridedPlan;

// ---------------------------------------------------------------------------------------
// Compile-time checks

// The arithmetic kernels' one element type, shared by every operand: float32, or float16 /
// bfloat16 computed in float32 and rounded once, as the CPU's emulation of half does.
int arithmetic_kind(const Node& n, std::initializer_list<const graph::Value*> values) {
  const graph::Value& first = **values.begin();
  for (const graph::Value* v : values)
    if (cuda::float_kind(v->dtype) < 0 || v->dtype != first.dtype)
      throw Error(n.describe() + ": the CUDA kernel takes float32, float16 or bfloat16 operands of one type, got " +
                  graph::dtype_name(v->dtype) + " '" + v->name + "'" +
                  (v->dtype != first.dtype
                       ? std::string(" beside ") + graph::dtype_name(first.dtype) + " '" + first.name + "'"
                       : std::string()));
  return cuda::float_kind(first.dtype);
}

// Copies and Transpose move elements of any type the CUDA runtime holds (not float64).
void require_movable(const Node& n, const graph::Value& v) {
  if (v.dtype == DType::f64 || v.dtype == DType::undefined)
    throw Error(n.describe() + ": the CUDA kernel takes float32, half or integer tensors, got " +
                graph::dtype_name(v.dtype) + " '" + v.name + "'");
}

// At run time: the buffer holds the element count the kernel was made for.
void check_numel(const TensorView& t, int64_t numel, const std::string& where, const char* role) {
  if (t.numel() != numel)
    throw Error(where + ": " + role + " has " + std::to_string(t.numel()) +
                " elements at run time, " + std::to_string(numel) + " when compiled");
}

void check_launch(const char* kernel, const std::string& where) {
  cuda::check(cudaGetLastError(), kernel, where);
}

// Calls Launcher<kind>::run(args...) for a kind known only at run time.
template <template <int> class Launcher, typename... Args>
void by_kind(int kind, Args&&... args) {
  cuda::with_float_kind(kind, [&](auto k) { Launcher<decltype(k)::value>::run(args...); });
}

// ---------------------------------------------------------------------------------------
// Element-wise kernels, grid-stride over the output. Where every operand is contiguous,
// 16-byte aligned and the count a multiple of 4, each thread moves four elements with one
// vector load per operand (float4, or four halves in 8 bytes).

// Four elements q * 4 ... q * 4 + 3 of a buffer of kKind as float32, and back.
template <int kKind>
__device__ __forceinline__ void load4(const void* p, int64_t q, float v[4]) {
  if constexpr (kKind == 0) {
    const float4 t = static_cast<const float4*>(p)[q];
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  } else {
    const uint2 t = static_cast<const uint2*>(p)[q];
    unpack_halves(t.x, t.y, kKind == 2, v);
  }
}
template <int kKind>
__device__ __forceinline__ void store4(void* p, int64_t q, const float v[4]) {
  if constexpr (kKind == 0) {
    static_cast<float4*>(p)[q] = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    uint2 t;
    pack_halves(v, kKind == 2, t.x, t.y);
    static_cast<uint2*>(p)[q] = t;
  }
}

// Whether n elements at each of `ptrs` can go four at a time.
bool vectorizable(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % 4 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

__device__ __forceinline__ int64_t first_thread() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ int64_t all_threads() { return static_cast<int64_t>(blockDim.x) * gridDim.x; }

template <int kKind, typename Op>
__global__ void unary_kernel(void* y, const void* x, int64_t n, Op op) {
  for (int64_t i = first_thread(); i < n; i += all_threads()) store_float<kKind>(y, i, op(load_float<kKind>(x, i)));
}

template <int kKind, typename Op>
__global__ void unary4_kernel(void* y, const void* x, int64_t n4, Op op) {
  for (int64_t q = first_thread(); q < n4; q += all_threads()) {
    float v[4];
    load4<kKind>(x, q, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = op(v[j]);
    store4<kKind>(y, q, v);
  }
}

template <int kKind, typename Op>
__global__ void binary_flat_kernel(void* y, const void* a, const void* b, int64_t n, Op op) {
  for (int64_t i = first_thread(); i < n; i += all_threads())
    store_float<kKind>(y, i, op(load_float<kKind>(a, i), load_float<kKind>(b, i)));
}

template <int kKind, typename Op>
__global__ void binary4_kernel(void* y, const void* a, const void* b, int64_t n4, Op op) {
  for (int64_t q = first_thread(); q < n4; q += all_threads()) {
    float u[4], v[4];
    load4<kKind>(a, q, u);
    load4<kKind>(b, q, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) u[j] = op(u[j], v[j]);
    store4<kKind>(y, q, u);
  }
}

// Index types: uint32_t where every offset fits (faster division), else int64_t.
template <int kKind, typename Op, typename I>
__global__ void binary_broadcast_kernel(void* y, const void* a, const void* b, I n, StridedIndex<2, I> p, Op op) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[2];
    math::strided_offsets(p, i, 2, off);
    store_float<kKind>(y, i, op(load_float<kKind>(a, off[0]), load_float<kKind>(b, off[1])));
  }
}

// y = op(x) on n contiguous elements.
template <int kKind>
struct UnaryLaunch {
  template <typename Op>
  static void run(void* y, const void* x, int64_t n, Op op, const CudaContext& ctx, const std::string& where) {
    if (n <= 0) return;
    if (vectorizable(n, {x, y})) {
      cuda::Launch l = cuda::launch_for(n / 4, ctx);
      unary4_kernel<kKind><<<l.blocks, l.threads, 0, ctx.stream>>>(y, x, n / 4, op);
      check_launch("unary4_kernel launch", where);
    } else {
      cuda::Launch l = cuda::launch_for(n, ctx);
      unary_kernel<kKind><<<l.blocks, l.threads, 0, ctx.stream>>>(y, x, n, op);
      check_launch("unary_kernel launch", where);
    }
  }
};

// y = op(a, b) on n contiguous elements of each.
template <int kKind>
struct BinaryFlatLaunch {
  template <typename Op>
  static void run(void* y, const void* a, const void* b, int64_t n, Op op, const CudaContext& ctx,
                  const std::string& where) {
    if (n <= 0) return;
    if (vectorizable(n, {a, b, y})) {
      cuda::Launch l = cuda::launch_for(n / 4, ctx);
      binary4_kernel<kKind><<<l.blocks, l.threads, 0, ctx.stream>>>(y, a, b, n / 4, op);
      check_launch("binary4_kernel launch", where);
    } else {
      cuda::Launch l = cuda::launch_for(n, ctx);
      binary_flat_kernel<kKind><<<l.blocks, l.threads, 0, ctx.stream>>>(y, a, b, n, op);
      check_launch("binary_flat_kernel launch", where);
    }
  }
};

template <typename Op>
KernelFactory unary_factory(Op op) {
  return [op](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    const int kind = arithmetic_kind(n, {&x, &y});
    const int64_t numel = graph::shape_numel(known_shape(n, x));
    if (graph::shape_numel(known_shape(n, y)) != numel)
      throw Error(what + ": output " + y.shape_string() + " and input " + x.shape_string() +
                  " differ in element count");
    return make_kernel([op, what, numel, kind](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], numel, what, "the output");
      by_kind<UnaryLaunch>(kind, a.outputs[0].data, a.inputs[0].data, numel, op, ctx, what);
    });
  };
}

KernelFactory relu_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& y = input_value(n, 1);
    const graph::Value& dx = output_value(n, 0);
    const int kind = arithmetic_kind(n, {&dy, &y, &dx});
    if (known_shape(n, dy) != known_shape(n, y) || known_shape(n, dx) != dy.shape)
      throw Error(what + ": dY " + dy.shape_string() + ", Y " + y.shape_string() + " and dX " +
                  dx.shape_string() + " differ in shape");
    const int64_t numel = graph::shape_numel(dy.shape);
    return make_kernel([what, numel, kind](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], numel, what, "dX");
      by_kind<BinaryFlatLaunch>(kind, a.outputs[0].data, a.inputs[0].data, a.inputs[1].data, numel,
                                math::ReluGrad{}, ctx, what);
    });
  };
}

// What a broadcasting binary op launches, fixed at compile time.
struct BinaryLayout {
  int64_t numel = 0;
  bool flat = false;  // both operands have the output's shape
  bool index32 = false;
  StridedIndex<2, uint32_t> index32_strides;
  StridedIndex<2, int64_t> index64_strides;
};

template <int kKind>
struct BinaryLaunch {
  template <typename Op>
  static void run(const BinaryLayout& l, void* y, const void* a, const void* b, Op op, const CudaContext& ctx,
                  const std::string& what) {
    if (l.numel <= 0) return;
    if (l.flat) {
      BinaryFlatLaunch<kKind>::run(y, a, b, l.numel, op, ctx, what);
      return;
    }
    cuda::Launch g = cuda::launch_for(l.numel, ctx);
    if (l.index32)
      binary_broadcast_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(
          y, a, b, static_cast<uint32_t>(l.numel), l.index32_strides, op);
    else
      binary_broadcast_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(y, a, b, l.numel, l.index64_strides, op);
    check_launch("binary_broadcast_kernel launch", what);
  }
};

template <typename Op>
KernelFactory binary_factory(Op op) {
  return [op](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& a = input_value(n, 0);
    const graph::Value& b = input_value(n, 1);
    const graph::Value& y = output_value(n, 0);
    const int kind = arithmetic_kind(n, {&a, &b, &y});
    StridedPlan plan =
        math::make_broadcast_plan(known_shape(n, y), {known_shape(n, a), known_shape(n, b)}, what);
    BinaryLayout l;
    l.numel = plan.numel;
    l.flat = plan.rank() == 1 && plan.inner_stride(0) == 1 && plan.inner_stride(1) == 1;
    l.index32 = math::fits_32_bits(plan);
    if (!l.flat) {
      if (l.index32)
        l.index32_strides = math::strided_index<2, uint32_t>(plan, {0, 1}, what);
      else
        l.index64_strides = math::strided_index<2, int64_t>(plan, {0, 1}, what);
    }
    return make_kernel([op, what, l, kind](const KernelArgs& args) {
      const CudaContext& ctx = cuda::context_of(args, what);
      check_numel(args.outputs[0], l.numel, what, "the output");
      by_kind<BinaryLaunch>(kind, l, args.outputs[0].data, args.inputs[0].data, args.inputs[1].data, op, ctx, what);
    });
  };
}

// ---------------------------------------------------------------------------------------
// Sum: y = ((in0 + in1) + in2) + ..., per element in float32, as the CPU adds (and rounded
// once at the end for half). One launch adds up to kSumOperands operands; with more inputs the
// running sum goes through the workspace in float32 (operand 0 of the next launch), and only
// the last launch writes y, so y may share any same-shape input's buffer.

constexpr int kSumOperands = 16;

struct SumPointers {
  const void* in[kSumOperands];
  unsigned float32_mask;  // operands held as float32 (the running sum) whatever the kind
};

template <int kKind>
__device__ __forceinline__ float sum_operand(const SumPointers& ops, int k, int64_t at) {
  return (ops.float32_mask >> k) & 1u ? static_cast<const float*>(ops.in[k])[at] : load_float<kKind>(ops.in[k], at);
}

template <int kKind, typename I>
__global__ void sum_kernel(void* y, bool y_float32, SumPointers ops, int count, I n, StridedIndex<kSumOperands, I> p) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[kSumOperands];
    math::strided_offsets(p, i, count, off);
    float acc = sum_operand<kKind>(ops, 0, off[0]);
#pragma unroll
    for (int k = 1; k < kSumOperands; ++k)
      if (k < count) acc = math::add(acc, sum_operand<kKind>(ops, k, off[k]));
    if (y_float32) static_cast<float*>(y)[i] = acc;
    else store_float<kKind>(y, i, acc);
  }
}

// Every operand of y's shape: four elements per thread.
template <int kKind>
__global__ void sum4_kernel(void* y, bool y_float32, SumPointers ops, int count, int64_t n4) {
  for (int64_t q = first_thread(); q < n4; q += all_threads()) {
    float acc[4], v[4];
    if (ops.float32_mask & 1u) load4<0>(ops.in[0], q, acc);
    else load4<kKind>(ops.in[0], q, acc);
#pragma unroll
    for (int k = 1; k < kSumOperands; ++k)
      if (k < count) {
        if ((ops.float32_mask >> k) & 1u) load4<0>(ops.in[k], q, v);
        else load4<kKind>(ops.in[k], q, v);
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[j] = math::add(acc[j], v[j]);
      }
    if (y_float32) store4<0>(y, q, acc);
    else store4<kKind>(y, q, acc);
  }
}

struct SumLaunch {
  std::vector<int> operands;  // input indices; -1: the running sum in the workspace
  bool to_workspace = false;
  StridedIndex<kSumOperands, uint32_t> index32;
  StridedIndex<kSumOperands, int64_t> index64;
};

template <int kKind>
struct SumKernelLaunch {
  static void run(const SumLaunch& s, const SumPointers& ptrs, void* out, int64_t numel, bool flat, bool index32,
                  const CudaContext& ctx, const std::string& what) {
    const int count = static_cast<int>(s.operands.size());
    bool vector = flat && numel % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
    for (int k = 0; k < count; ++k) vector = vector && reinterpret_cast<uintptr_t>(ptrs.in[k]) % 16 == 0;
    if (vector) {
      cuda::Launch g = cuda::launch_for(numel / 4, ctx);
      sum4_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(out, s.to_workspace, ptrs, count, numel / 4);
      check_launch("sum4_kernel launch", what);
      return;
    }
    cuda::Launch g = cuda::launch_for(numel, ctx);
    if (index32)
      sum_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(out, s.to_workspace, ptrs, count,
                                                                static_cast<uint32_t>(numel), s.index32);
    else
      sum_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(out, s.to_workspace, ptrs, count, numel, s.index64);
    check_launch("sum_kernel launch", what);
  }
};

KernelFactory sum_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    if (n.inputs.empty()) throw Error(what + ": needs at least one input");
    const graph::Value& y = output_value(n, 0);
    std::vector<const graph::Value*> values{&y};
    // Operand 0 of the plan is the running sum (the output's shape), then the inputs.
    std::vector<graph::Shape> shapes{known_shape(n, y)};
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const graph::Value& v = input_value(n, i);
      values.push_back(&v);
      shapes.push_back(known_shape(n, v));
    }
    int kind = 0;
    for (const graph::Value* v : values) kind = arithmetic_kind(n, {values.front(), v});
    const StridedPlan plan = math::make_broadcast_plan(y.shape, shapes, what);
    const bool index32 = math::fits_32_bits(plan);
    bool flat = plan.rank() == 1;
    for (size_t k = 0; flat && k < shapes.size(); ++k) flat = plan.inner_stride(k) == 1;
    const int inputs = static_cast<int>(n.inputs.size());
    std::vector<SumLaunch> launches;
    for (int next = 0; next < inputs;) {
      SumLaunch s;
      if (next > 0) s.operands.push_back(-1);
      while (next < inputs && static_cast<int>(s.operands.size()) < kSumOperands)
        s.operands.push_back(next++);
      s.to_workspace = next < inputs;
      std::vector<size_t> which;
      for (int k : s.operands) which.push_back(static_cast<size_t>(k + 1));
      if (index32)
        s.index32 = math::strided_index<kSumOperands, uint32_t>(plan, which, what);
      else
        s.index64 = math::strided_index<kSumOperands, int64_t>(plan, which, what);
      launches.push_back(std::move(s));
    }
    const int64_t numel = plan.numel;
    const size_t workspace =
        launches.size() > 1 ? static_cast<size_t>(numel) * sizeof(float) : 0;
    return make_kernel(
        [what, launches, numel, index32, flat, kind](const KernelArgs& a) {
          const CudaContext& ctx = cuda::context_of(a, what);
          check_numel(a.outputs[0], numel, what, "the output");
          if (numel <= 0) return;
          float* running = static_cast<float*>(a.workspace);
          for (const SumLaunch& s : launches) {
            SumPointers ptrs{};
            for (size_t k = 0; k < s.operands.size(); ++k) {
              const bool is_running = s.operands[k] < 0;
              ptrs.in[k] = is_running ? static_cast<const void*>(running) : a.inputs[s.operands[k]].data;
              if (is_running) ptrs.float32_mask |= 1u << k;
            }
            void* out = s.to_workspace ? static_cast<void*>(running) : a.outputs[0].data;
            by_kind<SumKernelLaunch>(kind, s, ptrs, out, numel, flat, index32, ctx, what);
          }
        },
        workspace);
  };
}

// ---------------------------------------------------------------------------------------
// Copies: one device-to-device copy on the stream, nothing where the planner gave the output
// the input's buffer. Inference Dropout keeps every element: its mask is all true.

void copy_on_stream(const TensorView& x, const TensorView& y, const CudaContext& ctx,
                    const std::string& where) {
  if (x.data == y.data || y.bytes() == 0) return;
  cuda::check(cudaMemcpyAsync(y.data, x.data, y.bytes(), cudaMemcpyDeviceToDevice, ctx.stream),
              "cudaMemcpyAsync", where);
}

KernelFactory copy_factory(bool is_dropout) {
  return [is_dropout](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value* y = n.output(0);
    require_movable(n, x);
    const int64_t numel = graph::shape_numel(known_shape(n, x));
    if (y) {
      if (y->dtype != x.dtype)
        throw Error(what + ": output type " + graph::dtype_name(y->dtype) +
                    " differs from the input's " + graph::dtype_name(x.dtype));
      if (graph::shape_numel(known_shape(n, *y)) != numel)
        throw Error(what + ": output " + y->shape_string() + " and input " + x.shape_string() +
                    " differ in element count");
    }
    const graph::Value* mask = is_dropout ? n.output(1) : nullptr;
    if (mask && mask->dtype != DType::boolean)
      throw Error(what + ": the mask output is " + graph::dtype_name(mask->dtype) +
                  ", not bool");
    return make_kernel([is_dropout, what, numel](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      if (a.outputs[0].present()) {
        check_numel(a.outputs[0], numel, what, "the output");
        copy_on_stream(a.inputs[0], a.outputs[0], ctx, what);
      }
      if (is_dropout && a.outputs.size() > 1 && a.outputs[1].present() &&
          a.outputs[1].bytes() > 0)
        cuda::check(cudaMemsetAsync(a.outputs[1].data, 1, a.outputs[1].bytes(), ctx.stream),
                    "cudaMemsetAsync", what);
    });
  };
}

// ---------------------------------------------------------------------------------------
// Transpose: y[i] = x[offset of i], the output written contiguously, by element size.

template <typename U, typename I>
__global__ void gather_kernel(U* y, const U* x, I n, StridedIndex<1, I> p) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[1];
    math::strided_offsets(p, i, 1, off);
    y[i] = x[off[0]];
  }
}

template <typename U>
void launch_gather(void* y, const void* x, int64_t numel, bool index32,
                   const StridedIndex<1, uint32_t>& s32, const StridedIndex<1, int64_t>& s64,
                   const CudaContext& ctx, const std::string& where) {
  cuda::Launch g = cuda::launch_for(numel, ctx);
  if (index32)
    gather_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(
        static_cast<U*>(y), static_cast<const U*>(x), static_cast<uint32_t>(numel), s32);
  else
    gather_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(
        static_cast<U*>(y), static_cast<const U*>(x), numel, s64);
  check_launch("gather_kernel launch", where);
}

// Where each element of a transposed output comes from, fixed when the kernel is made.
struct TransposeGather {
  bool contiguous = false;  // a permutation that moves only dims of size 1
  bool index32 = false;
  StridedIndex<1, uint32_t> s32;
  StridedIndex<1, int64_t> s64;
  int64_t numel = 0;
};

// Checks the node's perm (default: reversed axes) and output shape against input 0.
TransposeGather transpose_gather(const Node& n, const std::string& what) {
  const graph::Value& x = input_value(n, 0);
  const graph::Value& y = output_value(n, 0);
  const graph::Shape& xs = known_shape(n, x);
  const int64_t rank = static_cast<int64_t>(xs.size());
  std::vector<int64_t> perm;
  if (n.has_attr("perm")) {
    perm = n.attr_ints("perm");
  } else {
    for (int64_t d = rank - 1; d >= 0; --d) perm.push_back(d);
  }
  std::vector<bool> seen(static_cast<size_t>(rank), false);
  bool ok = static_cast<int64_t>(perm.size()) == rank;
  for (size_t i = 0; ok && i < perm.size(); ++i) {
    ok = perm[i] >= 0 && perm[i] < rank && !seen[perm[i]];
    if (ok) seen[perm[i]] = true;
  }
  if (!ok)
    throw Error(what + ": perm " + graph::shape_str(perm) + " is not a permutation of the axes of " +
                x.shape_string());
  graph::Shape ys(perm.size());
  for (size_t d = 0; d < perm.size(); ++d) ys[d] = xs[perm[d]];
  if (known_shape(n, y) != ys)
    throw Error(what + ": output " + y.shape_string() + " is not the input " + x.shape_string() +
                " transposed by " + graph::shape_str(perm) + " (" + graph::shape_str(ys) + ")");
  const std::vector<int64_t> xst = math::contiguous_strides(xs);
  std::vector<int64_t> st(perm.size());
  for (size_t d = 0; d < perm.size(); ++d) st[d] = xst[perm[d]];
  const StridedPlan plan = math::make_strided_plan(ys, {st});
  TransposeGather t;
  t.contiguous = plan.rank() == 1 && plan.inner_stride(0) == 1;
  t.index32 = math::fits_32_bits(plan);
  if (t.index32)
    t.s32 = math::strided_index<1, uint32_t>(plan, {0}, what);
  else
    t.s64 = math::strided_index<1, int64_t>(plan, {0}, what);
  t.numel = plan.numel;
  return t;
}

KernelFactory transpose_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    require_movable(n, x);
    if (y.dtype != x.dtype)
      throw Error(what + ": output type " + graph::dtype_name(y.dtype) +
                  " differs from the input's " + graph::dtype_name(x.dtype));
    const TransposeGather t = transpose_gather(n, what);
    const size_t size = graph::dtype_size(x.dtype);
    if (size != 1 && size != 2 && size != 4 && size != 8)
      throw Error(what + ": cannot transpose elements of type " + graph::dtype_name(x.dtype));
    return make_kernel([=](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], t.numel, what, "the output");
      if (t.numel <= 0) return;
      if (t.contiguous) {
        copy_on_stream(a.inputs[0], a.outputs[0], ctx, what);
        return;
      }
      void* py = a.outputs[0].data;
      const void* px = a.inputs[0].data;
      switch (size) {
        case 1: launch_gather<uint8_t>(py, px, t.numel, t.index32, t.s32, t.s64, ctx, what); break;
        case 2: launch_gather<uint16_t>(py, px, t.numel, t.index32, t.s32, t.s64, ctx, what); break;
        case 4: launch_gather<uint32_t>(py, px, t.numel, t.index32, t.s32, t.s64, ctx, what); break;
        default: launch_gather<uint64_t>(py, px, t.numel, t.index32, t.s32, t.s64, ctx, what); break;
      }
    });
  };
}

// oxtrain.CastTranspose: y[i] = x[offset of i] converted between float32, float16 and bfloat16
// (base/half.h: widening exact, narrowing rounded to nearest even, as Cast), in one pass.
template <int kIn, int kOut, typename I>
__global__ void cast_gather_kernel(void* y, const void* x, I n, StridedIndex<1, I> p) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[1];
    math::strided_offsets(p, i, 1, off);
    store_float<kOut>(y, i, load_float<kIn>(x, off[0]));
  }
}

template <int kIn>
struct CastGather {
  template <int kOut>
  struct To {
    static void run(void* y, const void* x, const TransposeGather& t, const CudaContext& ctx,
                    const std::string& what) {
      cuda::Launch g = cuda::launch_for(t.numel, ctx);
      if (t.index32)
        cast_gather_kernel<kIn, kOut><<<g.blocks, g.threads, 0, ctx.stream>>>(y, x, static_cast<uint32_t>(t.numel),
                                                                             t.s32);
      else
        cast_gather_kernel<kIn, kOut><<<g.blocks, g.threads, 0, ctx.stream>>>(y, x, t.numel, t.s64);
      check_launch("cast_gather_kernel launch", what);
    }
  };
};

KernelFactory cast_transpose_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const int in_kind = cuda::float_kind(input_value(n, 0).dtype);
    const int out_kind = cuda::float_kind(output_value(n, 0).dtype);
    if (in_kind < 0 || out_kind < 0)
      throw Error(what + ": converts between float32, float16 and bfloat16, not " +
                  graph::dtype_name(input_value(n, 0).dtype) + " to " + graph::dtype_name(output_value(n, 0).dtype));
    const TransposeGather t = transpose_gather(n, what);
    return make_kernel([=](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], t.numel, what, "the output");
      if (t.numel <= 0) return;
      cuda::with_float_kind(in_kind, [&](auto in) {
        by_kind<CastGather<decltype(in)::value>::template To>(out_kind, a.outputs[0].data, a.inputs[0].data, t, ctx,
                                                             what);
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// Reductions, following math::make_reduce_plan.
//
// inner_reduced: output j sums `rows` rows of `inner` contiguous elements, by a group of
// `lanes` threads (a warp where an output has few elements, the whole block of kReduceThreads
// where it has many): lane t adds elements t, t + lanes, ... in order, then a tree in shared
// memory combines the lanes' sums. Where one output has very many elements, its reduction is
// split into `segments` blocks whose sums go to the workspace, and reduce_segments_kernel adds
// each output's segments in order.
//
// inner_kept: output (o, c) sums column c of `rows` rows; blocks of 32 x kKeptRows threads,
// threadIdx.x over 32 neighbouring columns (coalesced), threadIdx.y over rows y, y +
// kKeptRows, ..., then a tree over threadIdx.y.

constexpr int kReduceThreads = 256;
constexpr int kWarp = 32;
// Outputs of at most this many elements are summed by one warp each.
constexpr int64_t kWarpElements = 2048;
constexpr int kKeptColumns = 32;
constexpr int kKeptRows = 8;
// Elements one block of an inner_reduced reduction sums, at least, before it is split.
constexpr int64_t kSegmentElements = int64_t{1} << 16;
constexpr int64_t kMaxSegments = 64;

struct ReduceIndex {
  StridedIndex<1, int64_t> kept;     // base offset of an output (or output row)
  StridedIndex<1, int64_t> reduced;  // offset of a reduced row
  int64_t ny = 0;
  int64_t inner = 1;
  int64_t rows = 1;          // numel of the reduced runs outside the innermost run
  int64_t segment = 0;       // elements per segment (inner_reduced)
  int64_t segments = 1;
  double scale = 1.0;
};

__device__ __forceinline__ int64_t offset1(const StridedIndex<1, int64_t>& p, int64_t flat) {
  int64_t off[1];
  math::strided_offsets(p, flat, 1, off);
  return off[0];
}

// Grid: (output groups, segments), blocks of kReduceThreads threads in groups of kLanes, one
// output per group. With segments > 1, block (b, s) writes output j's sum to
// partials[j * segments + s]; with one segment, y[j] = scaled sum.
template <int kLanes, int kKind>
__global__ void reduce_inner_kernel(void* y, double* partials, const void* x, ReduceIndex r) {
  constexpr int kGroups = kReduceThreads / kLanes;
  __shared__ double partial[kReduceThreads];
  const int lane = static_cast<int>(threadIdx.x) % kLanes;
  const int group = static_cast<int>(threadIdx.x) / kLanes;
  const int64_t total = r.rows * r.inner;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * r.segment;
  const int64_t end = begin + r.segment < total ? begin + r.segment : total;
  // Every thread of the block runs the same iterations (the barriers need it); groups past
  // the last output add nothing.
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kGroups; first < r.ny;
       first += static_cast<int64_t>(gridDim.x) * kGroups) {
    const int64_t j = first + group;
    double acc = 0;
    int64_t q = begin + lane;
    if (j < r.ny && q < end) {
      const int64_t xj = offset1(r.kept, j);
      // Walk (row, col) = (q / inner, q % inner) by steps of kLanes without dividing.
      int64_t row = q / r.inner, col = q % r.inner;
      const int64_t row_step = kLanes / r.inner, col_step = kLanes % r.inner;
      int64_t row_base = offset1(r.reduced, row), based_row = row;
      for (; q < end; q += kLanes) {
        if (row != based_row) {
          row_base = offset1(r.reduced, row);
          based_row = row;
        }
        acc += static_cast<double>(load_float<kKind>(x, xj + row_base + col));
        col += col_step;
        row += row_step;
        if (col >= r.inner) {
          col -= r.inner;
          ++row;
        }
      }
    }
    double* mine = partial + group * kLanes;
    mine[lane] = acc;
    __syncthreads();
#pragma unroll
    for (int s = kLanes / 2; s > 0; s >>= 1) {
      if (lane < s) mine[lane] += mine[lane + s];
      __syncthreads();
    }
    if (lane == 0 && j < r.ny) {
      if (r.segments > 1)
        partials[j * r.segments + blockIdx.y] = mine[0];
      else
        store_float<kKind>(y, j, math::scaled_sum<float>(mine[0], r.scale));
    }
    __syncthreads();  // partial[] is reused by the next outputs
  }
}

template <int kKind>
__global__ void reduce_segments_kernel(void* y, const double* partials, ReduceIndex r) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < r.ny;
       j += stride) {
    double acc = 0;
    for (int64_t s = 0; s < r.segments; ++s) acc += partials[j * r.segments + s];
    store_float<kKind>(y, j, math::scaled_sum<float>(acc, r.scale));
  }
}

// Grid: outer * column tiles blocks (grid-stride); block (kKeptColumns, kKeptRows).
template <int kKind>
__global__ void reduce_kept_kernel(void* y, const void* x, ReduceIndex r) {
  __shared__ double partial[kKeptRows][kKeptColumns + 1];
  const int64_t tiles = (r.inner + kKeptColumns - 1) / kKeptColumns;
  const int64_t outer = r.ny / r.inner;
  for (int64_t u = blockIdx.x; u < outer * tiles; u += gridDim.x) {
    const int64_t o = u / tiles;
    const int64_t c = (u % tiles) * kKeptColumns + threadIdx.x;
    double acc = 0;
    if (c < r.inner) {
      const int64_t xo = offset1(r.kept, o) + c;
      for (int64_t row = threadIdx.y; row < r.rows; row += kKeptRows)
        acc += static_cast<double>(load_float<kKind>(x, xo + offset1(r.reduced, row)));
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
#pragma unroll
    for (int s = kKeptRows / 2; s > 0; s >>= 1) {
      if (static_cast<int>(threadIdx.y) < s)
        partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + s][threadIdx.x];
      __syncthreads();
    }
    if (threadIdx.y == 0 && c < r.inner)
      store_float<kKind>(y, o * r.inner + c, math::scaled_sum<float>(partial[0][threadIdx.x], r.scale));
    __syncthreads();
  }
}

// y[i] = scaled_sum(x[i], scale) (nothing reduced), or scaled_sum(0, scale) with x null
// (nothing to reduce).
template <int kKind>
__global__ void reduce_copy_kernel(void* y, const void* x, int64_t n, double scale) {
  for (int64_t i = first_thread(); i < n; i += all_threads())
    store_float<kKind>(y, i, math::scaled_sum<float>(x ? static_cast<double>(load_float<kKind>(x, i)) : 0.0, scale));
}

// A reduction of x (shape xs) to y (shape ys, same rank, each dim xs's or 1) times scale,
// planned at compile time.
class Reduction {
 public:
  Reduction(const graph::Shape& xs, const graph::Shape& ys, double scale, int kind, const std::string& what)
      : plan_(math::make_reduce_plan(xs, ys)), kind_(kind), what_(what) {
    r_.ny = plan_.ny;
    r_.scale = scale;
    r_.inner = plan_.inner;
    if (plan_.kind != math::ReduceKind::inner_reduced && plan_.kind != math::ReduceKind::inner_kept)
      return;
    r_.kept = math::strided_index<int64_t>(plan_.kdims, plan_.kst, what);
    r_.reduced = math::strided_index<int64_t>(plan_.rdims, plan_.rst, what);
    r_.rows = graph::shape_numel(plan_.rdims);
    if (plan_.kind == math::ReduceKind::inner_reduced) {
      const int64_t total = r_.rows * r_.inner;
      r_.segments = std::clamp<int64_t>(total / kSegmentElements, 1, kMaxSegments);
      // Segments of whole blocks' strides, so every segment but the last is full.
      r_.segment = (total + r_.segments - 1) / r_.segments;
      r_.segment = (r_.segment + kReduceThreads - 1) / kReduceThreads * kReduceThreads;
      r_.segments = (total + r_.segment - 1) / r_.segment;
      warp_per_output_ = total <= kWarpElements;
    }
  }

  size_t workspace_bytes() const {
    return r_.segments > 1 ? static_cast<size_t>(r_.ny * r_.segments) * sizeof(double) : 0;
  }
  int64_t input_numel() const { return plan_.nx; }
  int64_t output_numel() const { return plan_.ny; }

  void run(const void* x, void* y, void* workspace, const CudaContext& ctx) const {
    switch (kind_) {
      case 0: run_kind<0>(x, y, workspace, ctx); break;
      case 1: run_kind<1>(x, y, workspace, ctx); break;
      default: run_kind<2>(x, y, workspace, ctx); break;
    }
  }

 private:
  template <int kKind>
  void run_kind(const void* x, void* y, void* workspace, const CudaContext& ctx) const {
    switch (plan_.kind) {
      case math::ReduceKind::nothing:
        return;
      case math::ReduceKind::fill:
      case math::ReduceKind::copy: {
        const void* src = plan_.kind == math::ReduceKind::copy ? x : nullptr;
        if (src && r_.scale == 1.0) {
          const size_t element = kKind == 0 ? sizeof(float) : sizeof(uint16_t);
          if (src != y)
            cuda::check(cudaMemcpyAsync(y, src, static_cast<size_t>(r_.ny) * element, cudaMemcpyDeviceToDevice,
                                        ctx.stream),
                        "cudaMemcpyAsync", what_);
          return;
        }
        cuda::Launch g = cuda::launch_for(r_.ny, ctx);
        reduce_copy_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(y, src, r_.ny, r_.scale);
        check_launch("reduce_copy_kernel launch", what_);
        return;
      }
      case math::ReduceKind::inner_reduced: {
        const int lanes = warp_per_output_ ? kWarp : kReduceThreads;
        const int64_t groups = (r_.ny + kReduceThreads / lanes - 1) / (kReduceThreads / lanes);
        const unsigned blocks = static_cast<unsigned>(
            std::min<int64_t>(groups, std::numeric_limits<int32_t>::max()));
        dim3 grid(blocks, static_cast<unsigned>(r_.segments));
        double* partials = static_cast<double*>(workspace);
        if (warp_per_output_)
          reduce_inner_kernel<kWarp, kKind><<<grid, kReduceThreads, 0, ctx.stream>>>(y, partials, x, r_);
        else
          reduce_inner_kernel<kReduceThreads, kKind><<<grid, kReduceThreads, 0, ctx.stream>>>(y, partials, x, r_);
        check_launch("reduce_inner_kernel launch", what_);
        if (r_.segments > 1) {
          cuda::Launch g = cuda::launch_for(r_.ny, ctx);
          reduce_segments_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(y, partials, r_);
          check_launch("reduce_segments_kernel launch", what_);
        }
        return;
      }
      case math::ReduceKind::inner_kept: {
        const int64_t tiles = (r_.inner + kKeptColumns - 1) / kKeptColumns;
        const int64_t blocks = (r_.ny / r_.inner) * tiles;
        const unsigned grid = static_cast<unsigned>(
            std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max()));
        reduce_kept_kernel<kKind><<<grid, dim3(kKeptColumns, kKeptRows), 0, ctx.stream>>>(y, x, r_);
        check_launch("reduce_kept_kernel launch", what_);
        return;
      }
    }
  }

  math::ReducePlan plan_;
  int kind_ = 0;
  ReduceIndex r_;
  bool warp_per_output_ = false;
  std::string what_;
};

std::unique_ptr<Kernel> reduction_kernel(std::shared_ptr<const Reduction> red,
                                         const std::string& what) {
  const size_t workspace = red->workspace_bytes();
  return make_kernel(
      [red, what](const KernelArgs& a) {
        const CudaContext& ctx = cuda::context_of(a, what);
        check_numel(a.inputs[0], red->input_numel(), what, "the input");
        check_numel(a.outputs[0], red->output_numel(), what, "the output");
        red->run(a.inputs[0].data, a.outputs[0].data, a.workspace, ctx);
      },
      workspace);
}

// The target Y as a shape of X's rank (1 where X is summed): Y broadcasts to X numpy-style,
// padded with leading 1s. Throws otherwise.
graph::Shape aligned_target(const graph::Shape& xs, const graph::Shape& ys,
                            const std::string& what) {
  bool ok = ys.size() <= xs.size();
  graph::Shape out(xs.size(), 1);
  for (size_t i = 0; ok && i < ys.size(); ++i) {
    const int64_t xd = xs[xs.size() - ys.size() + i];
    ok = ys[i] == xd || ys[i] == 1;
    out[xs.size() - ys.size() + i] = ys[i];
  }
  if (ok) return out;
  throw Error(what + ": shape " + graph::shape_str(ys) + " does not broadcast to the input " +
              graph::shape_str(xs));
}

KernelFactory reduce_sum_to_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    const int kind = arithmetic_kind(n, {&x, &y});
    if (n.has_attr("shape") && n.attr_ints("shape") != known_shape(n, y))
      throw Error(what + ": attribute shape " + graph::shape_str(n.attr_ints("shape")) +
                  " disagrees with the output " + y.shape_string());
    const graph::Shape ys = aligned_target(known_shape(n, x), known_shape(n, y), what);
    return reduction_kernel(std::make_shared<const Reduction>(x.shape, ys, 1.0, kind, what), what);
  };
}

KernelFactory reduce_mean_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    const int kind = arithmetic_kind(n, {&x, &y});
    const graph::Shape& xs = known_shape(n, x);
    // Before opset 18 the axes are an attribute; from 18 an optional input, a constant of
    // the graph.
    std::vector<int64_t> axes;
    if (init.opset < 18) {
      axes = n.attr_ints("axes");
    } else if (const graph::Value* a = n.input(1)) {
      if (a->dtype != DType::i64 && a->dtype != DType::i32)
        throw Error(what + ": axes must be int64, not " + graph::dtype_name(a->dtype));
      if (!a->has_data())
        throw Error(what + ": the CUDA kernel needs the axes '" + a->name +
                    "' as a constant of the graph");
      axes = a->data->to_int64();
    }
    const bool noop = n.attr_int("noop_with_empty_axes", 0) != 0;
    const int64_t rank = static_cast<int64_t>(xs.size());
    graph::Shape ys = xs;
    if (axes.empty()) {
      if (!noop) std::fill(ys.begin(), ys.end(), 1);
    } else {
      for (int64_t ax : axes) {
        if (ax < -rank || ax >= rank)
          throw Error(what + ": axis " + std::to_string(ax) + " is out of range for rank " +
                      std::to_string(rank));
        ys[ax < 0 ? ax + rank : ax] = 1;
      }
    }
    if (graph::shape_numel(known_shape(n, y)) != graph::shape_numel(ys))
      throw Error(what + ": output " + y.shape_string() + " does not hold the mean of " +
                  x.shape_string() + " over axes " + graph::shape_str(axes));
    const int64_t count = graph::shape_numel(xs) / std::max<int64_t>(1, graph::shape_numel(ys));
    // The mean of nothing is NaN, as numpy's (and the CPU kernel's).
    const double scale = count > 0 ? 1.0 / static_cast<double>(count)
                                   : std::numeric_limits<double>::quiet_NaN();
    return reduction_kernel(std::make_shared<const Reduction>(xs, ys, scale, kind, what), what);
  };
}

// ReduceMeanGrad: dX[i] = dY[broadcast offset of i] * (kept / total), the float product the
// CPU computes.
template <int kKind, typename I>
__global__ void broadcast_scale_kernel(void* y, const void* x, I n, StridedIndex<1, I> p, float k) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[1];
    math::strided_offsets(p, i, 1, off);
    store_float<kKind>(y, i, math::multiply(load_float<kKind>(x, off[0]), k));
  }
}

template <int kKind>
struct BroadcastScaleLaunch {
  static void run(void* y, const void* x, int64_t total, bool index32, const StridedIndex<1, uint32_t>& s32,
                  const StridedIndex<1, int64_t>& s64, float k, const CudaContext& ctx, const std::string& what) {
    cuda::Launch g = cuda::launch_for(total, ctx);
    if (index32)
      broadcast_scale_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(y, x, static_cast<uint32_t>(total), s32, k);
    else
      broadcast_scale_kernel<kKind><<<g.blocks, g.threads, 0, ctx.stream>>>(y, x, total, s64, k);
    check_launch("broadcast_scale_kernel launch", what);
  }
};

KernelFactory reduce_mean_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& dx = output_value(n, 0);
    const int kind = arithmetic_kind(n, {&dy, &dx});
    graph::Shape in_shape = n.attr_ints("input_shape");
    if (!n.has_attr("input_shape")) in_shape = known_shape(n, dx);
    if (known_shape(n, dx) != in_shape)
      throw Error(what + ": output " + dx.shape_string() + " differs from input_shape " +
                  graph::shape_str(in_shape));
    const std::vector<int64_t> axes = n.attr_ints("axes");
    const int64_t rank = static_cast<int64_t>(in_shape.size());
    graph::Shape aligned = in_shape;
    for (int64_t ax : axes) {
      if (ax < 0 || ax >= rank)
        throw Error(what + ": axis " + std::to_string(ax) + " is out of range for input_shape " +
                    graph::shape_str(in_shape));
      aligned[ax] = 1;
    }
    const int64_t dy_numel = graph::shape_numel(known_shape(n, dy));
    if (axes.empty() && dy_numel != graph::shape_numel(in_shape))
      std::fill(aligned.begin(), aligned.end(), 1);  // no axes: everything was reduced
    if (dy_numel != graph::shape_numel(aligned))
      throw Error(what + ": dY " + dy.shape_string() + " does not fit input_shape " +
                  graph::shape_str(in_shape) + " reduced over axes " + graph::shape_str(axes));
    const int64_t total = graph::shape_numel(in_shape), kept = graph::shape_numel(aligned);
    const double scale = kept > 0 ? static_cast<double>(kept) / static_cast<double>(total) : 0.0;
    const float k = static_cast<float>(scale);
    const StridedPlan plan = math::make_broadcast_plan(in_shape, {aligned}, what);
    const bool index32 = math::fits_32_bits(plan);
    StridedIndex<1, uint32_t> s32;
    StridedIndex<1, int64_t> s64;
    if (index32)
      s32 = math::strided_index<1, uint32_t>(plan, {0}, what);
    else
      s64 = math::strided_index<1, int64_t>(plan, {0}, what);
    return make_kernel([=](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.inputs[0], dy_numel, what, "dY");
      check_numel(a.outputs[0], total, what, "dX");
      if (total <= 0) return;
      by_kind<BroadcastScaleLaunch>(kind, a.outputs[0].data, a.inputs[0].data, total, index32, s32, s64, k, ctx, what);
    });
  };
}

}  // namespace

void register_cuda_elementwise_kernels(KernelRegistry& registry) {
  const Device cuda = Device::cuda;
  registry.add("", "Neg", cuda, unary_factory(math::Neg{}));
  registry.add("", "Relu", cuda, unary_factory(math::Relu{}));
  registry.add("oxtrain", "ReluGrad", cuda, relu_grad_factory());
  registry.add("", "Add", cuda, binary_factory(math::Add{}));
  registry.add("", "Sub", cuda, binary_factory(math::Sub{}));
  registry.add("", "Mul", cuda, binary_factory(math::Mul{}));
  registry.add("", "Div", cuda, binary_factory(math::Div{}));
  registry.add("", "Sum", cuda, sum_factory());
  registry.add("", "Identity", cuda, copy_factory(false));
  registry.add("", "Flatten", cuda, copy_factory(false));
  registry.add("", "Reshape", cuda, copy_factory(false));
  registry.add("", "Dropout", cuda, copy_factory(true));
  registry.add("", "Transpose", cuda, transpose_factory());
  registry.add("oxtrain", "CastTranspose", cuda, cast_transpose_factory());
  registry.add("", "ReduceMean", cuda, reduce_mean_factory());
  registry.add("oxtrain", "ReduceSumTo", cuda, reduce_sum_to_factory());
  registry.add("oxtrain", "ReduceMeanGrad", cuda, reduce_mean_grad_factory());
}

}  // namespace oxtrain::runtime
