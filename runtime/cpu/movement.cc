// CPU kernels of the movement family: Concat, Split, Slice, Squeeze, Unsqueeze, Expand, Gather,
// GatherND and the gradient ops oxtrain.SliceGrad and oxtrain.GatherGrad. Every kernel writes
// (=) its outputs.
//
// The ops that only move data work on any element type, by element size (bytes); GatherGrad
// adds, in float32 or float64. What to move (axes, split sizes, slice starts and steps,
// indices) is fixed when the kernel is made, from the node's shapes and constant inputs. Each
// output element is written by one thread, and GatherGrad adds a dX element's terms in the
// fixed order its `order` input gives, so results do not depend on the thread count.
//
// Squeeze and Unsqueeze may share their input's buffer (a copy of the same bytes); no other
// kernel here writes over an input. Index math shared with the CUDA twins is in
// runtime/math/movement.h and runtime/math/broadcast.h.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/movement.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

using cpu::for_each_segment;
using cpu::kParallelMin;
using cpu::StridedPlan;

void same_type(const Node& n, const graph::Value& a, const graph::Value& b) {
  if (a.dtype != b.dtype)
    throw Error(n.describe() + ": '" + b.name + "' is " + graph::dtype_name(b.dtype) + " but '" + a.name +
                "' is " + graph::dtype_name(a.dtype) + "; the op moves elements of one type");
}

size_t element_size(const Node& n, const graph::Value& v) {
  const size_t es = graph::dtype_size(v.dtype);
  if (es != 1 && es != 2 && es != 4 && es != 8)
    throw Error(n.describe() + ": cannot move elements of type " + graph::dtype_name(v.dtype));
  return es;
}

int64_t norm_axis(const Node& n, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

// Calls f(U{}) with an unsigned type of `size` bytes.
template <typename F>
auto by_size(size_t size, F&& f) {
  switch (size) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    default: return f(uint64_t{});
  }
}

// Runs f(i) for i < n, in parallel when the bytes moved are many.
template <typename F>
void parallel_for(int64_t n, int64_t bytes, F&& f) {
#pragma omp parallel for schedule(static) if (bytes >= kParallelMin * 8 && n > 1)
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Blocks along one axis: a tensor seen as [outer, axis, inner]; part k of the axis starts at
// offsets[k] and has sizes[k] elements.
struct AxisBlocks {
  int64_t outer = 1, inner = 1, axis_total = 0;
  std::vector<int64_t> sizes, offsets;
};

AxisBlocks axis_blocks(const graph::Shape& whole, int64_t axis, const std::vector<int64_t>& sizes) {
  AxisBlocks b;
  for (int64_t d = 0; d < axis; ++d) b.outer *= whole[d];
  for (size_t d = static_cast<size_t>(axis) + 1; d < whole.size(); ++d) b.inner *= whole[d];
  b.axis_total = whole[axis];
  b.sizes = sizes;
  int64_t at = 0;
  for (int64_t s : sizes) {
    b.offsets.push_back(at);
    at += s;
  }
  return b;
}

// Concat (to_whole) or Split: part k's rows move to or from the whole's rows.
void move_blocks(const AxisBlocks& b, size_t es, uint8_t* whole, const std::vector<uint8_t*>& parts, bool to_whole) {
  const int64_t nparts = static_cast<int64_t>(parts.size());
  const int64_t units = b.outer * nparts;
  const int64_t row = b.axis_total * b.inner * static_cast<int64_t>(es);
  parallel_for(units, b.outer * row, [&](int64_t u) {
    const int64_t o = u / nparts, k = u % nparts;
    if (!parts[k]) return;
    const size_t bytes = static_cast<size_t>(b.sizes[k] * b.inner) * es;
    if (bytes == 0) return;
    uint8_t* w = whole + o * row + b.offsets[k] * b.inner * static_cast<int64_t>(es);
    uint8_t* p = parts[k] + o * static_cast<int64_t>(bytes);
    if (to_whole) std::memcpy(w, p, bytes);
    else std::memcpy(p, w, bytes);
  });
}

// ---- Concat, Split ----

KernelFactory concat_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& y = output_value(n, 0);
    if (n.inputs.empty()) throw Error(n.describe() + ": needs at least one input");
    const int64_t rank = static_cast<int64_t>(y.shape.size());
    const int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
    std::vector<int64_t> sizes;
    int64_t total = 0;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const graph::Value& x = input_value(n, i);
      same_type(n, y, x);
      bool fits = x.shape.size() == y.shape.size();
      for (int64_t d = 0; fits && d < rank; ++d) fits = d == axis || x.shape[d] == y.shape[d];
      if (!fits)
        throw Error(n.describe() + ": input '" + x.name + "' " + x.shape_string() + " does not fit the output " +
                    y.shape_string() + " outside axis " + std::to_string(axis));
      sizes.push_back(x.shape[axis]);
      total += x.shape[axis];
    }
    if (total != y.shape[axis])
      throw Error(n.describe() + ": the inputs add up to " + std::to_string(total) + " along axis " +
                  std::to_string(axis) + " but the output " + y.shape_string() + " has " + std::to_string(y.shape[axis]));
    const AxisBlocks b = axis_blocks(y.shape, axis, sizes);
    const size_t es = element_size(n, y);
    return make_kernel([b, es](const KernelArgs& a) {
      std::vector<uint8_t*> parts;
      for (const TensorView& t : a.inputs) parts.push_back(static_cast<uint8_t*>(t.data));
      move_blocks(b, es, static_cast<uint8_t*>(a.outputs[0].data), parts, true);
    });
  };
}

KernelFactory split_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    const int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
    std::vector<int64_t> sizes;
    int64_t total = 0;
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      const graph::Value& y = output_value(n, i);
      same_type(n, x, y);
      bool fits = y.shape.size() == x.shape.size();
      for (int64_t d = 0; fits && d < rank; ++d) fits = d == axis || x.shape[d] == y.shape[d];
      if (!fits)
        throw Error(n.describe() + ": output '" + y.name + "' " + y.shape_string() + " does not fit the input " +
                    x.shape_string() + " outside axis " + std::to_string(axis));
      sizes.push_back(y.shape[axis]);
      total += y.shape[axis];
    }
    if (total != x.shape[axis])
      throw Error(n.describe() + ": the outputs add up to " + std::to_string(total) + " along axis " +
                  std::to_string(axis) + " but the input " + x.shape_string() + " has " + std::to_string(x.shape[axis]));
    const AxisBlocks b = axis_blocks(x.shape, axis, sizes);
    const size_t es = element_size(n, x);
    return make_kernel([b, es](const KernelArgs& a) {
      std::vector<uint8_t*> parts;
      for (const TensorView& t : a.outputs) parts.push_back(static_cast<uint8_t*>(t.data));
      move_blocks(b, es, static_cast<uint8_t*>(a.inputs[0].data), parts, false);
    });
  };
}

// ---- strided copies: Slice, Expand, and SliceGrad's scatter ----

// y[i] = x[base + offset of i] over the plan (gather), or y[base + offset of i] = x[i]
// (scatter, every target distinct).
template <typename U>
void strided_copy(const StridedPlan& p, int64_t base, const void* xv, void* yv, bool scatter) {
  const U* x = static_cast<const U*>(xv);
  U* y = static_cast<U*>(yv);
  const int64_t s = p.inner_stride(0);
  for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
    if (scatter) {
      U* dst = y + base + off[0];
      for (int64_t i = 0; i < len; ++i) dst[i * s] = x[o + i];
    } else {
      const U* src = x + base + off[0];
      U* dst = y + o;
      if (s == 1) std::memcpy(dst, src, static_cast<size_t>(len) * sizeof(U));
      else for (int64_t i = 0; i < len; ++i) dst[i] = src[i * s];
    }
  });
}

struct SlicePlan {
  StridedPlan plan;  // over the slice's shape, strides into the whole tensor
  int64_t base = 0;  // offset of the slice's first element
};

SlicePlan slice_plan(const graph::Shape& whole, const graph::Shape& part, const std::vector<int64_t>& starts,
                     const std::vector<int64_t>& steps) {
  const std::vector<int64_t> st = cpu::contiguous_strides(whole);
  std::vector<int64_t> strides(whole.size());
  SlicePlan s;
  for (size_t d = 0; d < whole.size(); ++d) {
    strides[d] = st[d] * steps[d];
    s.base += starts[d] * st[d];
  }
  s.plan = cpu::make_strided_plan(part, {strides});
  return s;
}

KernelFactory slice_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    const graph::SliceGeometry g = graph::slice_geometry(n, x.shape, init.opset);
    if (g.output != y.shape)
      throw Error(n.describe() + ": the output " + y.shape_string() + " is not the slice's shape " +
                  graph::shape_str(g.output));
    const SlicePlan s = slice_plan(x.shape, y.shape, g.starts, g.steps);
    return by_size(element_size(n, x), [&](auto tag) {
      using U = decltype(tag);
      return make_kernel([s](const KernelArgs& a) {
        strided_copy<U>(s.plan, s.base, a.inputs[0].data, a.outputs[0].data, false);
      });
    });
  };
}

KernelFactory slice_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& dx = output_value(n, 0);
    same_type(n, dy, dx);
    const std::vector<int64_t> starts = n.attr_ints("starts"), steps = n.attr_ints("steps");
    if (n.attr_ints("input_shape") != dx.shape || starts.size() != dx.shape.size() ||
        steps.size() != dx.shape.size() || dy.shape.size() != dx.shape.size())
      throw Error(n.describe() + ": dY " + dy.shape_string() + ", starts " + graph::shape_str(starts) +
                  " and steps " + graph::shape_str(steps) + " do not fit dX " + dx.shape_string());
    for (size_t d = 0; d < dx.shape.size(); ++d) {
      const int64_t last = starts[d] + (dy.shape[d] - 1) * steps[d];
      if (dy.shape[d] > 0 && (starts[d] < 0 || starts[d] >= dx.shape[d] || last < 0 || last >= dx.shape[d]))
        throw Error(n.describe() + ": dY " + dy.shape_string() + " reaches outside dX " + dx.shape_string());
    }
    const SlicePlan s = slice_plan(dx.shape, dy.shape, starts, steps);
    return by_size(element_size(n, dx), [&](auto tag) {
      using U = decltype(tag);
      return make_kernel([s](const KernelArgs& a) {
        std::memset(a.outputs[0].data, 0, a.outputs[0].bytes());
        strided_copy<U>(s.plan, s.base, a.inputs[0].data, a.outputs[0].data, true);
      });
    });
  };
}

KernelFactory expand_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    const StridedPlan p = cpu::make_broadcast_plan(y.shape, {x.shape}, n.describe());
    return by_size(element_size(n, x), [&](auto tag) {
      using U = decltype(tag);
      return make_kernel([p](const KernelArgs& a) {
        strided_copy<U>(p, 0, a.inputs[0].data, a.outputs[0].data, false);
      });
    });
  };
}

// ---- Squeeze, Unsqueeze: the same bytes ----

KernelFactory copy_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    if (x.numel() != y.numel())
      throw Error(n.describe() + ": output " + y.shape_string() + " and input " + x.shape_string() +
                  " differ in element count");
    return make_kernel([](const KernelArgs& a) {
      if (a.outputs[0].data != a.inputs[0].data && a.outputs[0].bytes() > 0)
        std::memcpy(a.outputs[0].data, a.inputs[0].data, a.outputs[0].bytes());
    });
  };
}

// ---- Gather, GatherND ----

// The layout of a gather of `data` by `indices` (depth values per entry) on `axis`, with every
// constant index checked against its dim.
math::GatherLayout gather_layout(const Node& n, const graph::Shape& data, int64_t axis, int depth,
                                 const graph::Value& indices) {
  if (depth < 1 || depth > math::kMaxRank || axis + depth > static_cast<int64_t>(data.size()))
    throw Error(n.describe() + ": indices of depth " + std::to_string(depth) + " do not fit data " +
                graph::shape_str(data));
  math::GatherLayout g;
  g.depth = depth;
  for (int64_t d = 0; d < static_cast<int64_t>(data.size()); ++d) {
    if (d < axis) g.outer *= data[d];
    else if (d < axis + depth) g.rows *= (g.dims[d - axis] = data[d]);
    else g.inner *= data[d];
  }
  if (indices.dtype != DType::i64 && indices.dtype != DType::i32)
    throw Error(n.describe() + ": indices must be int64 or int32, not " + graph::dtype_name(indices.dtype));
  if (!indices.data)
    throw Error(n.describe() + ": indices '" + indices.name +
                "' must be known when the graph is compiled (a constant)");
  const std::vector<int64_t> v = indices.data->to_int64();
  for (size_t j = 0; j < v.size(); ++j) {
    const int64_t dim = g.dims[j % static_cast<size_t>(depth)];
    if (v[j] < -dim || v[j] >= dim)
      throw Error(n.describe() + ": index " + std::to_string(v[j]) + " is out of range for a dim of " +
                  std::to_string(dim) + " (data " + graph::shape_str(data) + ")");
  }
  g.entries = static_cast<int64_t>(v.size()) / depth;
  return g;
}

template <typename Index>
void gather_rows(const math::GatherLayout& g, size_t es, const void* data, const void* indices, void* out) {
  const Index* idx = static_cast<const Index*>(indices);
  const size_t row_bytes = static_cast<size_t>(g.inner) * es;
  const uint8_t* x = static_cast<const uint8_t*>(data);
  uint8_t* y = static_cast<uint8_t*>(out);
  if (row_bytes == 0) return;
  parallel_for(g.outer * g.entries, g.outer * g.entries * static_cast<int64_t>(row_bytes), [&](int64_t u) {
    const int64_t src = math::gather_source(idx, u * g.inner, g);
    std::memcpy(y + u * static_cast<int64_t>(row_bytes), x + src * static_cast<int64_t>(es), row_bytes);
  });
}

KernelFactory gather_factory(bool nd) {
  return [nd](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const graph::Value& idx = input_value(n, 1);
    const graph::Value& y = output_value(n, 0);
    same_type(n, x, y);
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    int64_t axis = 0;
    int depth = 1;
    graph::Shape want;
    if (nd) {
      if (n.attr_int("batch_dims", 0) != 0) throw Error(n.describe() + ": only batch_dims=0 is supported");
      if (idx.shape.empty()) throw Error(n.describe() + ": indices must have rank 1 or more");
      depth = static_cast<int>(std::min<int64_t>(idx.shape.back(), math::kMaxRank + 1));
      want.assign(idx.shape.begin(), idx.shape.end() - 1);
    } else {
      if (rank == 0) throw Error(n.describe() + ": cannot gather from a scalar");
      axis = norm_axis(n, n.attr_int("axis", 0), rank);
      want.assign(x.shape.begin(), x.shape.begin() + axis);
      want.insert(want.end(), idx.shape.begin(), idx.shape.end());
    }
    const math::GatherLayout g = gather_layout(n, x.shape, axis, depth, idx);
    want.insert(want.end(), x.shape.begin() + axis + depth, x.shape.end());
    if (want != y.shape)
      throw Error(n.describe() + ": the output " + y.shape_string() + " is not the gathered shape " +
                  graph::shape_str(want));
    const size_t es = element_size(n, x);
    const bool i32 = idx.dtype == DType::i32;
    return make_kernel([g, es, i32](const KernelArgs& a) {
      if (i32) gather_rows<int32_t>(g, es, a.inputs[0].data, a.inputs[1].data, a.outputs[0].data);
      else gather_rows<int64_t>(g, es, a.inputs[0].data, a.inputs[1].data, a.outputs[0].data);
    });
  };
}

// ---- GatherGrad ----

KernelFactory gather_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& order = input_value(n, 1);
    const graph::Value& row_start = input_value(n, 2);
    const graph::Value& dx = output_value(n, 0);
    same_type(n, dy, dx);
    if (dx.dtype != DType::f32 && dx.dtype != DType::f64)
      throw Error(n.describe() + ": the CPU kernel adds float32 or float64, not " + graph::dtype_name(dx.dtype));
    const int64_t axis = n.attr_int("axis", 0), count = n.attr_int("count", 1);
    const int64_t rank = static_cast<int64_t>(dx.shape.size());
    if (n.attr_ints("input_shape") != dx.shape || axis < 0 || count < 1 || count > math::kMaxRank ||
        axis + count > rank)
      throw Error(n.describe() + ": input_shape, axis " + std::to_string(axis) + " and count " +
                  std::to_string(count) + " do not fit dX " + dx.shape_string());
    math::GatherLayout g;
    g.depth = static_cast<int>(count);
    for (int64_t d = 0; d < rank; ++d) (d < axis ? g.outer : d < axis + count ? g.rows : g.inner) *= dx.shape[d];
    // order and row_start are made by the gradient rule; checked here all the same, since a
    // wrong entry would read or write outside the buffers.
    if (!order.data || !row_start.data || order.dtype != DType::i64 || row_start.dtype != DType::i64)
      throw Error(n.describe() + ": order and row_start must be int64 constants");
    const std::vector<int64_t> ord = order.data->to_int64(), starts = row_start.data->to_int64();
    g.entries = static_cast<int64_t>(ord.size());
    bool ok = static_cast<int64_t>(starts.size()) == g.rows + 1 && starts.front() == 0 && starts.back() == g.entries &&
              dy.numel() == g.outer * g.entries * g.inner;
    for (size_t r = 1; ok && r < starts.size(); ++r) ok = starts[r] >= starts[r - 1];
    for (int64_t j : ord) ok = ok && j >= 0 && j < g.entries;
    if (!ok)
      throw Error(n.describe() + ": order " + order.shape_string() + " and row_start " + row_start.shape_string() +
                  " do not describe dY " + dy.shape_string() + " gathered from dX " + dx.shape_string());
    return cpu::dispatch_float(dx.dtype, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([g](const KernelArgs& a) {
        const T* pdy = a.inputs[0].as<T>();
        const int64_t* ord = a.inputs[1].as<int64_t>();
        const int64_t* starts = a.inputs[2].as<int64_t>();
        T* pdx = a.outputs[0].as<T>();
        cpu::parallel_chunks(a.outputs[0].numel(), [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) pdx[i] = math::gather_grad_element(pdy, ord, starts, i, g);
        });
      });
    });
  };
}

}  // namespace

void register_cpu_movement_kernels(KernelRegistry& registry) {
  const Device cpu = Device::cpu;
  registry.add("", "Concat", cpu, concat_factory());
  registry.add("", "Split", cpu, split_factory());
  registry.add("", "Slice", cpu, slice_factory());
  registry.add("", "Expand", cpu, expand_factory());
  registry.add("", "Squeeze", cpu, copy_factory());
  registry.add("", "Unsqueeze", cpu, copy_factory());
  registry.add("", "Gather", cpu, gather_factory(false));
  registry.add("", "GatherND", cpu, gather_factory(true));
  registry.add("oxtrain", "SliceGrad", cpu, slice_grad_factory());
  registry.add("oxtrain", "GatherGrad", cpu, gather_grad_factory());
}

}  // namespace oxtrain::runtime
