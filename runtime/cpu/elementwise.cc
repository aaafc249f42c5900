// Element-wise arithmetic with numpy broadcasting, copies (Identity, Reshape, Flatten,
// inference Dropout), Transpose and the reductions (ReduceMean and the gradient ops
// oxtrain.ReduceSumTo and oxtrain.ReduceMeanGrad).
//
// Element-wise loops read element i of every input before writing element i of the output,
// so the planner may give an output the buffer of a same-shape input. Reductions give each
// output element to one thread and add in a fixed order, so results are bit-identical from
// run to run whatever the thread count.
//
// The per-element math and the reductions' layout are in runtime/math/elementwise.h and
// runtime/math/broadcast.h, shared with the CUDA kernels.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/elementwise.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

using cpu::broadcast_binary;
using cpu::dispatch_float;
using cpu::for_each_segment;
using cpu::kParallelMin;
using cpu::kSegment;
using cpu::lane_sum;
using cpu::make_broadcast_plan;
using cpu::make_strided_plan;
using cpu::parallel_chunks;
using cpu::StridedPlan;
using cpu::unary;

// The float element type of the node's inputs `which` (all must agree).
DType float_type(const Node& n, std::vector<size_t> which = {0}) {
  DType dt = input_value(n, which.front()).dtype;
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(n.describe() + ": element type " + graph::dtype_name(dt) +
                " is not supported on the CPU (float32 and float64 are)");
  for (size_t i : which)
    if (input_value(n, i).dtype != dt)
      throw Error(n.describe() + ": inputs have different element types (" +
                  graph::dtype_name(dt) + " and " +
                  graph::dtype_name(input_value(n, i).dtype) + ")");
  return dt;
}

int64_t offset_of(int64_t flat, const std::vector<int64_t>& dims,
                  const std::vector<int64_t>& strides) {
  return math::strided_offset<int64_t>(flat, static_cast<int>(dims.size()), dims.data(),
                                       strides.data());
}

std::vector<int64_t> int_data(const TensorView& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = t.dtype == DType::i32 ? t.as<int32_t>()[i] : t.as<int64_t>()[i];
  return v;
}

// ---------------------------------------------------------------------------------------
// Unary


template <typename Op>
KernelFactory unary_factory(Op op) {
  return [op](const KernelInit& init) {
    DType dt = float_type(init.node);
    return dispatch_float(dt, init.node.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([op](const KernelArgs& a) {
        unary(a.inputs[0].as<T>(), a.outputs[0].as<T>(), a.outputs[0].numel(),
              [&](T x) { return op(x); });
      });
    });
  };
}

KernelFactory relu_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = float_type(n, {0, 1});
    if (input_value(n, 0).shape != input_value(n, 1).shape)
      throw Error(n.describe() + ": dY " + input_value(n, 0).shape_string() + " and Y " +
                  input_value(n, 1).shape_string() + " differ in shape");
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([](const KernelArgs& a) {
        const T* dy = a.inputs[0].as<T>();
        const T* y = a.inputs[1].as<T>();
        T* dx = a.outputs[0].as<T>();
        parallel_chunks(a.outputs[0].numel(), [&](int64_t b, int64_t e) {
#pragma omp simd
          for (int64_t i = b; i < e; ++i) dx[i] = math::relu_grad(dy[i], y[i]);
        });
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// Binary with broadcasting. The plan collapses same-shape operands to one flat loop, a
// scalar operand to stride 0, and per-channel operands ([C,1,1] or [1,C,1,1] against
// [N,C,H,W]) to rows of H*W elements that read one value each: the fast paths are the
// inner loops of cpu::broadcast_binary (runtime/cpu/broadcast.h).

// Add, Sub, Mul and Div: floats and integers (wrapping; Div truncates).
template <typename Op>
KernelFactory binary_factory(Op op) {
  return [op](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = input_value(n, 0).dtype;
    if (dt == DType::boolean) throw Error(n.describe() + ": arithmetic on bool tensors is not defined");
    if (input_value(n, 1).dtype != dt)
      throw Error(n.describe() + ": inputs have different element types (" + graph::dtype_name(dt) + " and " +
                  graph::dtype_name(input_value(n, 1).dtype) + ")");
    std::string what = n.describe();
    const graph::Value* y = n.output(0);
    auto known = [](const graph::Value* v) { return v->rank_known && graph::shape_known(v->shape); };
    if (y && known(y) && known(n.input(0)) && known(n.input(1)))  // fail early, not at run time
      make_broadcast_plan(n.output(0)->shape, {n.input(0)->shape, n.input(1)->shape}, what);
    return cpu::dispatch_number(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([op, what](const KernelArgs& a) {
        broadcast_binary<T, T, T>(a.inputs[0], a.inputs[1], a.outputs[0],
                                  [&](T x, T y) { return op(x, y); }, what);
      });
    });
  };
}

// Reads len elements at stride s into dst (overwrite) or adds them (accumulate).
template <typename T, bool kAdd>
void gather_row(T* dst, const T* src, int64_t s, int64_t len) {
  if (s == 1) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = kAdd ? math::add(dst[i], src[i]) : src[i];
  } else if (s == 0) {
    const T v = src[0];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = kAdd ? math::add(dst[i], v) : v;
  } else {
    for (int64_t i = 0; i < len; ++i) dst[i] = kAdd ? math::add(dst[i], src[i * s]) : src[i * s];
  }
}

// Sum: out = ((in0 + in1) + in2) + ..., per element, through a local row so that the output
// may share a buffer with any same-shape input.
KernelFactory sum_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    if (n.inputs.empty()) throw Error(n.describe() + ": needs at least one input");
    std::vector<size_t> all;
    for (size_t i = 0; i < n.inputs.size(); ++i) all.push_back(i);
    DType dt = float_type(n, all);
    std::string what = n.describe();
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([what](const KernelArgs& a) {
        std::vector<graph::Shape> shapes;
        for (const TensorView& t : a.inputs) shapes.push_back(t.shape);
        StridedPlan p = make_broadcast_plan(a.outputs[0].shape, shapes, what);
        T* py = a.outputs[0].as<T>();
        const size_t k = a.inputs.size();
        for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
          T acc[kSegment];
          gather_row<T, false>(acc, a.inputs[0].as<T>() + off[0], p.inner_stride(0), len);
          for (size_t i = 1; i < k; ++i)
            gather_row<T, true>(acc, a.inputs[i].as<T>() + off[i], p.inner_stride(i), len);
          std::memcpy(py + o, acc, static_cast<size_t>(len) * sizeof(T));
        });
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// Copies

void copy_view(const TensorView& x, const TensorView& y) {
  if (x.data == y.data) return;
  const int64_t bytes = static_cast<int64_t>(y.bytes());
  const uint8_t* src = static_cast<const uint8_t*>(x.data);
  uint8_t* dst = static_cast<uint8_t*>(y.data);
  constexpr int64_t kChunk = 1 << 20;
  const int64_t chunks = (bytes + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks >= 4)
  for (int64_t c = 0; c < chunks; ++c)
    std::memcpy(dst + c * kChunk, src + c * kChunk,
                static_cast<size_t>(std::min(kChunk, bytes - c * kChunk)));
}

KernelFactory copy_factory(bool is_dropout) {
  return [is_dropout](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const graph::Value* y = n.output(0);
    if (y && y->dtype != x.dtype)
      throw Error(n.describe() + ": output type " + graph::dtype_name(y->dtype) +
                  " differs from the input's " + graph::dtype_name(x.dtype));
    if (y && y->numel() >= 0 && x.numel() >= 0 && y->numel() != x.numel())
      throw Error(n.describe() + ": output " + y->shape_string() + " and input " +
                  x.shape_string() + " differ in element count");
    return make_kernel([is_dropout](const KernelArgs& a) {
      if (a.outputs[0].present()) copy_view(a.inputs[0], a.outputs[0]);
      // Inference Dropout keeps every element: the mask is all true.
      if (is_dropout && a.outputs.size() > 1 && a.outputs[1].present())
        std::memset(a.outputs[1].data, 1, a.outputs[1].bytes());
    });
  };
}

// ---------------------------------------------------------------------------------------
// Transpose: a strided copy, by element size (any dtype).

template <typename U>
void transpose(const TensorView& x, const TensorView& y, const std::vector<int64_t>& perm) {
  std::vector<int64_t> xst = cpu::contiguous_strides(x.shape);
  std::vector<int64_t> st(perm.size());
  for (size_t d = 0; d < perm.size(); ++d) st[d] = xst[perm[d]];
  StridedPlan p = make_strided_plan(y.shape, {st});
  const U* px = x.as<U>();
  U* py = y.as<U>();
  const int64_t s = p.inner_stride(0);
  for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
    gather_row<U, false>(py + o, px + off[0], s, len);
  });
}

KernelFactory transpose_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    std::vector<int64_t> perm;
    if (n.has_attr("perm")) {
      perm = n.attr_ints("perm");
    } else {
      for (int64_t d = rank - 1; d >= 0; --d) perm.push_back(d);
    }
    std::vector<bool> seen(rank, false);
    bool ok = static_cast<int64_t>(perm.size()) == rank;
    for (size_t i = 0; ok && i < perm.size(); ++i) {
      ok = perm[i] >= 0 && perm[i] < rank && !seen[perm[i]];
      if (ok) seen[perm[i]] = true;
    }
    if (!ok)
      throw Error(n.describe() + ": perm " + graph::shape_str(perm) +
                  " is not a permutation of the axes of " + x.shape_string());
    switch (graph::dtype_size(x.dtype)) {
      case 1: return make_kernel([perm](const KernelArgs& a) { transpose<uint8_t>(a.inputs[0], a.outputs[0], perm); });
      case 2: return make_kernel([perm](const KernelArgs& a) { transpose<uint16_t>(a.inputs[0], a.outputs[0], perm); });
      case 4: return make_kernel([perm](const KernelArgs& a) { transpose<uint32_t>(a.inputs[0], a.outputs[0], perm); });
      case 8: return make_kernel([perm](const KernelArgs& a) { transpose<uint64_t>(a.inputs[0], a.outputs[0], perm); });
      default:
        throw Error(n.describe() + ": cannot transpose elements of type " +
                    graph::dtype_name(x.dtype));
    }
  };
}

// oxtrain.CastTranspose between float32, float16 and bfloat16: half values reach this kernel
// as float32 (runtime/cpu/half_emulation.h widens them exactly and rounds the output once, as
// a Cast does), so what is left is the transpose.
KernelFactory cast_transpose_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const DType from = input_value(n, 0).dtype, to = output_value(n, 0).dtype;
    if (from != to)
      throw Error(n.describe() + ": the CPU kernel converts between float32 and half only through the half "
                  "emulation, not " + graph::dtype_name(from) + " to " + graph::dtype_name(to));
    return transpose_factory()(init);
  };
}

// ---------------------------------------------------------------------------------------
// Reductions. reduce_to sums x (shape xs) into y (shape ys of the same rank, every dim equal
// to xs's or 1) and multiplies by scale, following math::make_reduce_plan:
//  - innermost run reduced: each output element is summed by one thread, over contiguous
//    inner runs;
//  - innermost run kept: blocks of the kept inner run are summed by one thread each, adding
//    whole rows.
// Sums are in double, in a fixed order.

template <typename T>
void reduce_to(const T* x, const graph::Shape& xs, T* y, const graph::Shape& ys, double scale) {
  const math::ReducePlan p = math::make_reduce_plan(xs, ys);
  const int64_t nx = p.nx, ny = p.ny;
  switch (p.kind) {
    case math::ReduceKind::nothing:
      return;
    case math::ReduceKind::fill:
      for (int64_t i = 0; i < ny; ++i) y[i] = math::scaled_sum<T>(0.0, scale);
      return;
    case math::ReduceKind::copy:
      if (scale == 1.0) {
        if (x != y) std::memcpy(y, x, static_cast<size_t>(ny) * sizeof(T));
      } else {
        unary(x, y, ny, [scale](T v) { return math::scaled_sum<T>(v, scale); });
      }
      return;
    case math::ReduceKind::inner_reduced: {
      const int64_t inner = p.inner;
      const int64_t nr = graph::shape_numel(p.rdims);
#pragma omp parallel for schedule(static) if (nx >= kParallelMin && ny > 1)
      for (int64_t j = 0; j < ny; ++j) {
        const int64_t base = offset_of(j, p.kdims, p.kst);
        double acc = 0;
        for (int64_t r = 0; r < nr; ++r) {
          const T* src = x + base + offset_of(r, p.rdims, p.rst);
          acc += lane_sum(inner, [src](int64_t i) { return src[i]; });
        }
        y[j] = math::scaled_sum<T>(acc, scale);
      }
      return;
    }
    case math::ReduceKind::inner_kept: {
      constexpr int64_t kBlock = 256;
      const int64_t inner = p.inner;
      const int64_t outer = ny / inner;
      const int64_t nb = (inner + kBlock - 1) / kBlock;
      const int64_t nr = graph::shape_numel(p.rdims);
#pragma omp parallel for schedule(static) if (nx >= kParallelMin && outer * nb > 1)
      for (int64_t u = 0; u < outer * nb; ++u) {
        const int64_t o = u / nb, b0 = (u % nb) * kBlock;
        const int64_t len = std::min(kBlock, inner - b0);
        const int64_t base = offset_of(o, p.kdims, p.kst) + b0;
        double acc[kBlock];
        for (int64_t i = 0; i < len; ++i) acc[i] = 0;
        for (int64_t r = 0; r < nr; ++r) {
          const T* src = x + base + offset_of(r, p.rdims, p.rst);
#pragma omp simd
          for (int64_t i = 0; i < len; ++i) acc[i] += static_cast<double>(src[i]);
        }
        T* dst = y + o * inner + b0;
        for (int64_t i = 0; i < len; ++i) dst[i] = math::scaled_sum<T>(acc[i], scale);
      }
      return;
    }
  }
}

// The target Y as a shape of X's rank (1 where X is summed): Y broadcasts to X numpy-style,
// padded with leading 1s (a Conv bias gradient asks for [1, C, 1, ...]). Throws otherwise.
graph::Shape aligned_target(const graph::Shape& xs, const graph::Shape& ys,
                            const std::string& what) {
  bool ok = ys.size() <= xs.size();
  graph::Shape out(xs.size(), 1);
  for (size_t i = 0; ok && i < ys.size(); ++i) {
    int64_t xd = xs[xs.size() - ys.size() + i];
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
    DType dt = float_type(n);
    std::string what = n.describe();
    const graph::Value* y = n.output(0);
    const graph::Value& x = input_value(n, 0);
    if (y && y->rank_known && x.rank_known && graph::shape_known(y->shape) &&
        graph::shape_known(x.shape))
      aligned_target(x.shape, y->shape, what);
    if (n.has_attr("shape") && y && y->rank_known && n.attr_ints("shape") != y->shape)
      throw Error(what + ": attribute shape " + graph::shape_str(n.attr_ints("shape")) +
                  " disagrees with the output " + y->shape_string());
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([what](const KernelArgs& a) {
        const TensorView& x = a.inputs[0];
        const TensorView& y = a.outputs[0];
        reduce_to(x.as<T>(), x.shape, y.as<T>(), aligned_target(x.shape, y.shape, what), 1.0);
      });
    });
  };
}

KernelFactory reduce_mean_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = float_type(n);
    std::string what = n.describe();
    const bool axes_input = init.opset >= 18;
    // Before opset 18 the axes are an attribute; from 18 an input, read at run time (or, when
    // the runtime passes no buffer for it, the constant the graph holds).
    std::vector<int64_t> attr_axes = axes_input ? std::vector<int64_t>{} : n.attr_ints("axes");
    if (axes_input && n.input(1) && n.input(1)->has_data()) attr_axes = n.input(1)->data->to_int64();
    const bool noop = n.attr_int("noop_with_empty_axes", 0) != 0;
    if (axes_input && n.input(1) && n.input(1)->dtype != DType::i64 &&
        n.input(1)->dtype != DType::i32)
      throw Error(what + ": axes must be int64, not " + graph::dtype_name(n.input(1)->dtype));
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([=](const KernelArgs& a) {
        const TensorView& x = a.inputs[0];
        std::vector<int64_t> axes = attr_axes;
        if (axes_input && a.inputs.size() > 1 && a.inputs[1].present())
          axes = int_data(a.inputs[1]);
        const int64_t rank = static_cast<int64_t>(x.shape.size());
        graph::Shape ys = x.shape;
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
        const int64_t count = x.numel() / std::max<int64_t>(1, graph::shape_numel(ys));
        // The mean of nothing is NaN, as numpy's.
        const double scale = count > 0 ? 1.0 / static_cast<double>(count)
                                       : std::numeric_limits<double>::quiet_NaN();
        reduce_to(x.as<T>(), x.shape, a.outputs[0].as<T>(), ys, scale);
      });
    });
  };
}

KernelFactory reduce_mean_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = float_type(n);
    std::string what = n.describe();
    graph::Shape in_shape = n.attr_ints("input_shape");
    if (!n.has_attr("input_shape") && n.output(0)) in_shape = n.output(0)->shape;
    std::vector<int64_t> axes = n.attr_ints("axes");
    const int64_t rank = static_cast<int64_t>(in_shape.size());
    graph::Shape aligned = in_shape;
    for (int64_t ax : axes) {
      if (ax < 0 || ax >= rank)
        throw Error(what + ": axis " + std::to_string(ax) + " is out of range for input_shape " +
                    graph::shape_str(in_shape));
      aligned[ax] = 1;
    }
    const graph::Value& dy = input_value(n, 0);
    if (axes.empty() && dy.numel() >= 0 && dy.numel() != graph::shape_numel(in_shape))
      std::fill(aligned.begin(), aligned.end(), 1);  // no axes: everything was reduced
    if (dy.numel() >= 0 && dy.numel() != graph::shape_numel(aligned))
      throw Error(what + ": dY " + dy.shape_string() + " does not fit input_shape " +
                  graph::shape_str(in_shape) + " reduced over axes " + graph::shape_str(axes));
    const int64_t total = graph::shape_numel(in_shape), kept = graph::shape_numel(aligned);
    const double scale = kept > 0 ? static_cast<double>(kept) / static_cast<double>(total) : 0.0;
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([=](const KernelArgs& a) {
        StridedPlan p = make_broadcast_plan(a.outputs[0].shape, {aligned}, what);
        const T* dyp = a.inputs[0].as<T>();
        T* dx = a.outputs[0].as<T>();
        const int64_t s = p.inner_stride(0);
        const T k = static_cast<T>(scale);
        for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
          const T* src = dyp + off[0];
          T* dst = dx + o;
          if (s == 0) {
            const T v = math::multiply(src[0], k);
            for (int64_t i = 0; i < len; ++i) dst[i] = v;
          } else {
            for (int64_t i = 0; i < len; ++i) dst[i] = math::multiply(src[i * s], k);
          }
        });
      });
    });
  };
}

}  // namespace

void register_cpu_elementwise_kernels(KernelRegistry& registry) {
  const Device cpu = Device::cpu;
  registry.add("", "Neg", cpu, unary_factory(math::Neg{}));
  registry.add("", "Relu", cpu, unary_factory(math::Relu{}));
  registry.add("oxtrain", "ReluGrad", cpu, relu_grad_factory());
  registry.add("", "Add", cpu, binary_factory(math::Add{}));
  registry.add("", "Sub", cpu, binary_factory(math::Sub{}));
  registry.add("", "Mul", cpu, binary_factory(math::Mul{}));
  registry.add("", "Div", cpu, binary_factory(math::Div{}));
  registry.add("", "Sum", cpu, sum_factory());
  registry.add("", "Identity", cpu, copy_factory(false));
  registry.add("", "Flatten", cpu, copy_factory(false));
  registry.add("", "Reshape", cpu, copy_factory(false));
  registry.add("", "Dropout", cpu, copy_factory(true));
  registry.add("", "Transpose", cpu, transpose_factory());
  registry.add("oxtrain", "CastTranspose", cpu, cast_transpose_factory());
  registry.add("", "ReduceMean", cpu, reduce_mean_factory());
  registry.add("oxtrain", "ReduceSumTo", cpu, reduce_sum_to_factory());
  registry.add("oxtrain", "ReduceMeanGrad", cpu, reduce_mean_grad_factory());
}

}  // namespace oxtrain::runtime
