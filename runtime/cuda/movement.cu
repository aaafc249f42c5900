// CUDA kernels of the movement family, the twins of runtime/cpu/movement.cc: Concat, Split,
// Slice, Squeeze, Unsqueeze, Expand, Gather, GatherND and the gradient ops oxtrain.SliceGrad
// and oxtrain.GatherGrad. Every kernel writes (=) its outputs.
//
// Data moves by element size, for float32, float16, bfloat16 and the integer and bool types
// (not float64, which the CUDA runtime does not hold); GatherGrad adds in float32 (its half
// sums rounded once, as the CPU's emulation of half). Concat and Split are one 2-D copy
// per part on the stream (cudaMemcpy2DAsync); Slice, Expand and the gathers read each output
// element from the offset the shared index math gives (runtime/math/broadcast.h,
// runtime/math/movement.h); SliceGrad zeroes dX and writes dY's elements to distinct places.
// GatherGrad gives each dX element to one thread, which adds its terms in the order the
// `order` input lists: no atomics, the CPU's result bit for bit. What to move is fixed when
// the kernel is made; a step only launches on the context's stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "base/half.h"
#include "graph/ops.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/broadcast.h"
#include "runtime/math/movement.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

using math::StridedIndex;
using math::StridedPlan;

// Elements the CUDA runtime holds, moved by size: float32, integers, bool (not float64).
size_t movable_size(const Node& n, const graph::Value& v) {
  const size_t es = graph::dtype_size(v.dtype);
  if (v.dtype == DType::f64 || v.dtype == DType::undefined || (es != 1 && es != 2 && es != 4 && es != 8))
    throw Error(n.describe() + ": the CUDA kernel moves float32, half, integer or bool tensors, got " +
                graph::dtype_name(v.dtype) + " '" + v.name + "'");
  return es;
}

void same_type(const Node& n, const graph::Value& a, const graph::Value& b) {
  if (a.dtype != b.dtype)
    throw Error(n.describe() + ": '" + b.name + "' is " + graph::dtype_name(b.dtype) + " but '" + a.name +
                "' is " + graph::dtype_name(a.dtype) + "; the op moves elements of one type");
}

int64_t norm_axis(const Node& n, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

void check_launch(const char* kernel, const std::string& where) {
  cuda::check(cudaGetLastError(), kernel, where);
}

void check_numel(const TensorView& t, int64_t numel, const std::string& where, const char* role) {
  if (t.numel() != numel)
    throw Error(where + ": " + role + " has " + std::to_string(t.numel()) +
                " elements at run time, " + std::to_string(numel) + " when compiled");
}

// ---------------------------------------------------------------------------------------
// Concat and Split: part k is a [outer, size_k * inner] block of the whole's
// [outer, total * inner] rows, starting at column offset_k * inner.

struct Blocks {
  int64_t outer = 1, inner = 1, total = 0;
  size_t es = 4;
  std::vector<int64_t> sizes, offsets;
};

Blocks blocks_along(const graph::Shape& whole, int64_t axis, const std::vector<int64_t>& sizes, size_t es) {
  Blocks b;
  b.es = es;
  for (int64_t d = 0; d < axis; ++d) b.outer *= whole[d];
  for (size_t d = static_cast<size_t>(axis) + 1; d < whole.size(); ++d) b.inner *= whole[d];
  b.total = whole[axis];
  b.sizes = sizes;
  int64_t at = 0;
  for (int64_t s : sizes) {
    b.offsets.push_back(at);
    at += s;
  }
  return b;
}

void copy_block(const Blocks& b, size_t k, void* whole, void* part, bool to_whole, const CudaContext& ctx,
                const std::string& where) {
  const size_t width = static_cast<size_t>(b.sizes[k] * b.inner) * b.es;
  if (width == 0 || b.outer == 0) return;
  const size_t pitch = static_cast<size_t>(b.total * b.inner) * b.es;
  uint8_t* w = static_cast<uint8_t*>(whole) + static_cast<size_t>(b.offsets[k] * b.inner) * b.es;
  const size_t height = static_cast<size_t>(b.outer);
  auto* p = static_cast<uint8_t*>(part);
  // A single row, or rows wider than a 2-D copy's pitch may be (2^31 - 1 bytes on current
  // GPUs): plain copies, one per row.
  if (height == 1 || pitch > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    for (size_t r = 0; r < height; ++r) {
      uint8_t* wr = w + r * pitch;
      uint8_t* pr = p + r * width;
      cuda::check(cudaMemcpyAsync(to_whole ? wr : pr, to_whole ? pr : wr, width, cudaMemcpyDeviceToDevice,
                                  ctx.stream),
                  "cudaMemcpyAsync", where);
    }
    return;
  }
  cudaError_t status =
      to_whole ? cudaMemcpy2DAsync(w, pitch, p, width, width, height, cudaMemcpyDeviceToDevice, ctx.stream)
               : cudaMemcpy2DAsync(p, width, w, pitch, width, height, cudaMemcpyDeviceToDevice, ctx.stream);
  cuda::check(status, "cudaMemcpy2DAsync", where);
}

// The parts' sizes along the axis; each part must match the whole outside it.
std::vector<int64_t> part_sizes(const Node& n, const graph::Value& whole, int64_t axis,
                                const std::vector<const graph::Value*>& parts) {
  std::vector<int64_t> sizes;
  int64_t total = 0;
  const graph::Shape& ws = known_shape(n, whole);
  for (const graph::Value* p : parts) {
    same_type(n, whole, *p);
    const graph::Shape& s = known_shape(n, *p);
    bool fits = s.size() == ws.size();
    for (size_t d = 0; fits && d < s.size(); ++d) fits = static_cast<int64_t>(d) == axis || s[d] == ws[d];
    if (!fits)
      throw Error(n.describe() + ": '" + p->name + "' " + p->shape_string() + " does not fit '" + whole.name +
                  "' " + whole.shape_string() + " outside axis " + std::to_string(axis));
    sizes.push_back(s[axis]);
    total += s[axis];
  }
  if (total != ws[axis])
    throw Error(n.describe() + ": the parts add up to " + std::to_string(total) + " along axis " +
                std::to_string(axis) + ", not the " + std::to_string(ws[axis]) + " of " + whole.shape_string());
  return sizes;
}

KernelFactory concat_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& y = output_value(n, 0);
    if (n.inputs.empty()) throw Error(what + ": needs at least one input");
    const int64_t axis = norm_axis(n, n.attr_int("axis", 0), static_cast<int64_t>(known_shape(n, y).size()));
    std::vector<const graph::Value*> parts;
    for (size_t i = 0; i < n.inputs.size(); ++i) parts.push_back(&input_value(n, i));
    const Blocks b = blocks_along(y.shape, axis, part_sizes(n, y, axis, parts), movable_size(n, y));
    return make_kernel([b, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      for (size_t k = 0; k < a.inputs.size(); ++k)
        copy_block(b, k, a.outputs[0].data, a.inputs[k].data, true, ctx, what);
    });
  };
}

KernelFactory split_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const int64_t axis = norm_axis(n, n.attr_int("axis", 0), static_cast<int64_t>(known_shape(n, x).size()));
    std::vector<const graph::Value*> parts;
    for (size_t i = 0; i < n.outputs.size(); ++i) parts.push_back(&output_value(n, i));
    const Blocks b = blocks_along(x.shape, axis, part_sizes(n, x, axis, parts), movable_size(n, x));
    return make_kernel([b, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      for (size_t k = 0; k < a.outputs.size(); ++k)
        copy_block(b, k, a.inputs[0].data, a.outputs[k].data, false, ctx, what);
    });
  };
}

// ---------------------------------------------------------------------------------------
// Strided copies: y[i] = x[base + offset(i)] (gather) or y[base + offset(i)] = x[i] (scatter,
// distinct targets). Offsets may be negative (negative slice steps): int64_t indexing then.

template <typename U, typename I>
__global__ void strided_kernel(U* y, const U* x, I n, int64_t base, StridedIndex<1, I> p, bool scatter) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[1];
    math::strided_offsets(p, i, 1, off);
    const int64_t at = base + static_cast<int64_t>(off[0]);
    if (scatter) y[at] = x[i];
    else y[i] = x[at];
  }
}

struct StridedCopy {
  int64_t numel = 0, base = 0;
  size_t es = 4;
  bool index32 = false;
  StridedIndex<1, uint32_t> s32;
  StridedIndex<1, int64_t> s64;
};

StridedCopy strided_copy_plan(const StridedPlan& plan, int64_t base, size_t es, const std::string& what) {
  StridedCopy c;
  c.numel = plan.numel;
  c.base = base;
  c.es = es;
  bool negative = false;
  for (int64_t s : plan.strides[0]) negative = negative || s < 0;
  c.index32 = !negative && math::fits_32_bits(plan);
  if (c.index32) c.s32 = math::strided_index<1, uint32_t>(plan, {0}, what);
  else c.s64 = math::strided_index<1, int64_t>(plan, {0}, what);
  return c;
}

template <typename U>
void launch_strided(const StridedCopy& c, void* y, const void* x, bool scatter, const CudaContext& ctx,
                    const std::string& where) {
  cuda::Launch g = cuda::launch_for(c.numel, ctx);
  if (c.index32)
    strided_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(static_cast<U*>(y), static_cast<const U*>(x),
                                                           static_cast<uint32_t>(c.numel), c.base, c.s32, scatter);
  else
    strided_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(static_cast<U*>(y), static_cast<const U*>(x), c.numel,
                                                           c.base, c.s64, scatter);
  check_launch("strided_kernel launch", where);
}

void run_strided(const StridedCopy& c, void* y, const void* x, bool scatter, const CudaContext& ctx,
                 const std::string& where) {
  if (c.numel <= 0) return;
  switch (c.es) {
    case 1: launch_strided<uint8_t>(c, y, x, scatter, ctx, where); break;
    case 2: launch_strided<uint16_t>(c, y, x, scatter, ctx, where); break;
    case 4: launch_strided<uint32_t>(c, y, x, scatter, ctx, where); break;
    default: launch_strided<uint64_t>(c, y, x, scatter, ctx, where); break;
  }
}

// The plan of a slice (`part`, starting at `starts` with `steps`) of `whole`.
StridedCopy slice_copy(const graph::Shape& whole, const graph::Shape& part, const std::vector<int64_t>& starts,
                       const std::vector<int64_t>& steps, size_t es, const std::string& what) {
  const std::vector<int64_t> st = math::contiguous_strides(whole);
  std::vector<int64_t> strides(whole.size());
  int64_t base = 0;
  for (size_t d = 0; d < whole.size(); ++d) {
    strides[d] = st[d] * steps[d];
    base += starts[d] * st[d];
  }
  return strided_copy_plan(math::make_strided_plan(part, {strides}), base, es, what);
}

KernelFactory slice_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    const graph::SliceGeometry g = graph::slice_geometry(n, known_shape(n, x), init.opset);
    if (g.output != known_shape(n, y))
      throw Error(what + ": the output " + y.shape_string() + " is not the slice's shape " + graph::shape_str(g.output));
    const StridedCopy c = slice_copy(x.shape, y.shape, g.starts, g.steps, movable_size(n, x), what);
    return make_kernel([c, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], c.numel, what, "the output");
      run_strided(c, a.outputs[0].data, a.inputs[0].data, false, ctx, what);
    });
  };
}

KernelFactory slice_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& dx = output_value(n, 0);
    same_type(n, dy, dx);
    const graph::Shape& xs = known_shape(n, dx);
    const graph::Shape& ys = known_shape(n, dy);
    const std::vector<int64_t> starts = n.attr_ints("starts"), steps = n.attr_ints("steps");
    bool ok = n.attr_ints("input_shape") == xs && starts.size() == xs.size() && steps.size() == xs.size() &&
              ys.size() == xs.size();
    for (size_t d = 0; ok && d < xs.size(); ++d) {
      const int64_t last = starts[d] + (ys[d] - 1) * steps[d];
      ok = ys[d] == 0 || (starts[d] >= 0 && starts[d] < xs[d] && last >= 0 && last < xs[d]);
    }
    if (!ok)
      throw Error(what + ": dY " + dy.shape_string() + ", starts " + graph::shape_str(starts) + " and steps " +
                  graph::shape_str(steps) + " do not fit dX " + dx.shape_string());
    const StridedCopy c = slice_copy(xs, ys, starts, steps, movable_size(n, dx), what);
    return make_kernel([c, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      if (a.outputs[0].bytes() > 0)
        cuda::check(cudaMemsetAsync(a.outputs[0].data, 0, a.outputs[0].bytes(), ctx.stream), "cudaMemsetAsync", what);
      run_strided(c, a.outputs[0].data, a.inputs[0].data, true, ctx, what);
    });
  };
}

KernelFactory expand_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    const StridedPlan p = math::make_broadcast_plan(known_shape(n, y), {known_shape(n, x)}, what);
    const StridedCopy c = strided_copy_plan(p, 0, movable_size(n, x), what);
    return make_kernel([c, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], c.numel, what, "the output");
      run_strided(c, a.outputs[0].data, a.inputs[0].data, false, ctx, what);
    });
  };
}

// Squeeze, Unsqueeze: the same bytes, nothing to do where the output took the input's buffer.
KernelFactory copy_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    movable_size(n, x);
    const int64_t numel = graph::shape_numel(known_shape(n, x));
    if (graph::shape_numel(known_shape(n, y)) != numel)
      throw Error(what + ": output " + y.shape_string() + " and input " + x.shape_string() + " differ in element count");
    return make_kernel([what, numel](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], numel, what, "the output");
      if (a.outputs[0].data == a.inputs[0].data || a.outputs[0].bytes() == 0) return;
      cuda::check(cudaMemcpyAsync(a.outputs[0].data, a.inputs[0].data, a.outputs[0].bytes(),
                                  cudaMemcpyDeviceToDevice, ctx.stream),
                  "cudaMemcpyAsync", what);
    });
  };
}

// ---------------------------------------------------------------------------------------
// Gather, GatherND: y[i] = data[gather_source(i)]; the indices are the constant input's
// device buffer (checked against the data's dims when the kernel is made).

template <typename U, typename Index>
__global__ void gather_kernel(U* y, const U* x, const Index* indices, int64_t n, math::GatherLayout g) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    y[i] = x[math::gather_source(indices, i, g)];
}

template <typename U>
void launch_gather(const math::GatherLayout& g, int64_t numel, bool i32, const KernelArgs& a, const CudaContext& ctx,
                   const std::string& where) {
  cuda::Launch l = cuda::launch_for(numel, ctx);
  U* y = a.outputs[0].as<U>();
  const U* x = a.inputs[0].as<U>();
  if (i32)
    gather_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(y, x, a.inputs[1].as<int32_t>(), numel, g);
  else
    gather_kernel<<<l.blocks, l.threads, 0, ctx.stream>>>(y, x, a.inputs[1].as<int64_t>(), numel, g);
  check_launch("gather_kernel launch", where);
}

KernelFactory gather_factory(bool nd) {
  return [nd](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0);
    const graph::Value& idx = input_value(n, 1);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    const graph::Shape& xs = known_shape(n, x);
    const graph::Shape& is = known_shape(n, idx);
    const int64_t rank = static_cast<int64_t>(xs.size());
    int64_t axis = 0, depth = 1;
    graph::Shape want;
    if (nd) {
      if (n.attr_int("batch_dims", 0) != 0) throw Error(what + ": only batch_dims=0 is supported");
      if (is.empty()) throw Error(what + ": indices must have rank 1 or more");
      depth = is.back();
      want.assign(is.begin(), is.end() - 1);
    } else {
      if (rank == 0) throw Error(what + ": cannot gather from a scalar");
      axis = norm_axis(n, n.attr_int("axis", 0), rank);
      want.assign(xs.begin(), xs.begin() + axis);
      want.insert(want.end(), is.begin(), is.end());
    }
    if (depth < 1 || depth > math::kMaxRank || axis + depth > rank)
      throw Error(what + ": indices " + idx.shape_string() + " do not fit data " + x.shape_string());
    math::GatherLayout g;
    g.depth = static_cast<int>(depth);
    for (int64_t d = 0; d < rank; ++d) {
      if (d < axis) g.outer *= xs[d];
      else if (d < axis + depth) g.rows *= (g.dims[d - axis] = xs[d]);
      else g.inner *= xs[d];
    }
    if (idx.dtype != DType::i64 && idx.dtype != DType::i32)
      throw Error(what + ": indices must be int64 or int32, not " + graph::dtype_name(idx.dtype));
    if (!idx.data)
      throw Error(what + ": indices '" + idx.name + "' must be known when the graph is compiled (a constant)");
    const std::vector<int64_t> v = idx.data->to_int64();
    for (size_t j = 0; j < v.size(); ++j) {
      const int64_t dim = g.dims[j % static_cast<size_t>(depth)];
      if (v[j] < -dim || v[j] >= dim)
        throw Error(what + ": index " + std::to_string(v[j]) + " is out of range for a dim of " + std::to_string(dim) +
                    " (data " + x.shape_string() + ")");
    }
    g.entries = static_cast<int64_t>(v.size()) / depth;
    want.insert(want.end(), xs.begin() + axis + depth, xs.end());
    if (want != known_shape(n, y))
      throw Error(what + ": the output " + y.shape_string() + " is not the gathered shape " + graph::shape_str(want));
    const size_t es = movable_size(n, x);
    const bool i32 = idx.dtype == DType::i32;
    const int64_t numel = graph::shape_numel(want);
    return make_kernel([g, es, i32, numel, what](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], numel, what, "the output");
      if (numel <= 0) return;
      switch (es) {
        case 1: launch_gather<uint8_t>(g, numel, i32, a, ctx, what); break;
        case 2: launch_gather<uint16_t>(g, numel, i32, a, ctx, what); break;
        case 4: launch_gather<uint32_t>(g, numel, i32, a, ctx, what); break;
        default: launch_gather<uint64_t>(g, numel, i32, a, ctx, what); break;
      }
    });
  };
}

// ---------------------------------------------------------------------------------------
// GatherGrad: one thread per dX element, its terms added in the listed order.

template <int kKind>  // float32, float16, bfloat16: added in float32, rounded once
__global__ void gather_grad_kernel(void* dx, const void* dy, const int64_t* order, const int64_t* row_start,
                                   int64_t n, math::GatherLayout g) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    store_float<kKind>(dx, i,
                       math::gather_grad_element_with<float>([dy](int64_t j) { return load_float<kKind>(dy, j); },
                                                             order, row_start, i, g));
}

KernelFactory gather_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& order = input_value(n, 1);
    const graph::Value& row_start = input_value(n, 2);
    const graph::Value& dx = output_value(n, 0);
    same_type(n, dy, dx);
    if (dx.dtype != DType::f32 && dx.dtype != DType::f16 && dx.dtype != DType::bf16)
      throw Error(what + ": the CUDA kernel takes float32, float16 or bfloat16, got " + graph::dtype_name(dx.dtype) +
                  " '" + dx.name + "'");
    const int kind = cuda::float_kind(dx.dtype);
    const graph::Shape& xs = known_shape(n, dx);
    const int64_t axis = n.attr_int("axis", 0), count = n.attr_int("count", 1);
    const int64_t rank = static_cast<int64_t>(xs.size());
    if (n.attr_ints("input_shape") != xs || axis < 0 || count < 1 || count > math::kMaxRank || axis + count > rank)
      throw Error(what + ": input_shape, axis " + std::to_string(axis) + " and count " + std::to_string(count) +
                  " do not fit dX " + dx.shape_string());
    math::GatherLayout g;
    g.depth = static_cast<int>(count);
    for (int64_t d = 0; d < rank; ++d) (d < axis ? g.outer : d < axis + count ? g.rows : g.inner) *= xs[d];
    if (!order.data || !row_start.data || order.dtype != DType::i64 || row_start.dtype != DType::i64)
      throw Error(what + ": order and row_start must be int64 constants");
    const std::vector<int64_t> ord = order.data->to_int64(), starts = row_start.data->to_int64();
    g.entries = static_cast<int64_t>(ord.size());
    bool ok = static_cast<int64_t>(starts.size()) == g.rows + 1 && starts.front() == 0 && starts.back() == g.entries &&
              graph::shape_numel(known_shape(n, dy)) == g.outer * g.entries * g.inner;
    for (size_t r = 1; ok && r < starts.size(); ++r) ok = starts[r] >= starts[r - 1];
    for (int64_t j : ord) ok = ok && j >= 0 && j < g.entries;
    if (!ok)
      throw Error(what + ": order " + order.shape_string() + " and row_start " + row_start.shape_string() +
                  " do not describe dY " + dy.shape_string() + " gathered from dX " + dx.shape_string());
    const int64_t numel = graph::shape_numel(xs);
    return make_kernel([g, numel, what, kind](const KernelArgs& a) {
      const CudaContext& ctx = cuda::context_of(a, what);
      check_numel(a.outputs[0], numel, what, "dX");
      if (numel <= 0) return;
      cuda::Launch l = cuda::launch_for(numel, ctx);
      void* dx = a.outputs[0].data;
      const void* dy = a.inputs[0].data;
      const int64_t* order = a.inputs[1].as<int64_t>();
      const int64_t* starts = a.inputs[2].as<int64_t>();
      cuda::with_float_kind(kind, [&](auto k) {
        gather_grad_kernel<decltype(k)::value><<<l.blocks, l.threads, 0, ctx.stream>>>(dx, dy, order, starts, numel, g);
      });
      check_launch("gather_grad_kernel launch", what);
    });
  };
}

}  // namespace

void register_cuda_movement_kernels(KernelRegistry& registry) {
  const Device cuda = Device::cuda;
  registry.add("", "Concat", cuda, concat_factory());
  registry.add("", "Split", cuda, split_factory());
  registry.add("", "Slice", cuda, slice_factory());
  registry.add("", "Expand", cuda, expand_factory());
  registry.add("", "Squeeze", cuda, copy_factory());
  registry.add("", "Unsqueeze", cuda, copy_factory());
  registry.add("", "Gather", cuda, gather_factory(false));
  registry.add("", "GatherND", cuda, gather_factory(true));
  registry.add("oxtrain", "SliceGrad", cuda, slice_grad_factory());
  registry.add("oxtrain", "GatherGrad", cuda, gather_grad_factory());
}

}  // namespace oxtrain::runtime
