// CPU kernels of the pointwise family: activations and element-wise math (float32, float64;
// Abs, Neg and Sign also on int64 and int32), Clip, Pow, Mod, Max/Min (variadic), the
// comparisons (numbers and bool), Not/And/Or/Xor, Where (any element type), Cast (float32,
// float64, int64, int32, int8, uint8, bool), and the gradient ops their rules emit:
// oxtrain.SigmoidGrad TanhGrad SqrtGrad ErfGrad GeluGrad HardSigmoidGrad HardSwishGrad
// ClipGrad PowGrad MaxMinGrad. Every kernel writes (=) its outputs.
//
// Element-wise loops read element i of every input before writing element i of the output,
// so the output may share a same-shape input's buffer (graph/ops_pointwise.cc's facts). Each
// output element is computed by one thread from its inputs alone: results do not depend on
// the thread count. The per-element math is runtime/math/pointwise.h, shared with the CUDA
// kernels; the broadcasting plans are runtime/math/broadcast.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "graph/ops.h"
#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/pointwise.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

namespace pm = math;
using cpu::broadcast_binary;
using cpu::dispatch_float;
using cpu::dispatch_number;
using cpu::for_each_segment;
using cpu::kSegment;
using cpu::make_broadcast_plan;
using cpu::parallel_chunks;
using cpu::StridedPlan;
using cpu::unary;

// ---------------------------------------------------------------------------------------
// Compile-time checks

// The one float type (float32 or float64) of inputs `which`.
DType float_type(const Node& n, std::vector<size_t> which = {0}) {
  DType dt = input_value(n, which.front()).dtype;
  if (dt != DType::f32 && dt != DType::f64)
    throw Error(n.describe() + ": element type " + graph::dtype_name(dt) +
                " is not supported on the CPU (float32 and float64 are)");
  for (size_t i : which)
    if (input_value(n, i).dtype != dt)
      throw Error(n.describe() + ": inputs have different element types (" + graph::dtype_name(dt) +
                  " and " + graph::dtype_name(input_value(n, i).dtype) + ")");
  return dt;
}

bool known(const graph::Value* v) { return v && v->rank_known && graph::shape_known(v->shape); }

// Fails at compile time, not at run time, when the inputs do not broadcast to the output.
void check_broadcast(const Node& n, size_t first_input = 0) {
  const graph::Value* y = n.output(0);
  if (!known(y)) return;
  std::vector<graph::Shape> shapes;
  for (size_t i = first_input; i < n.inputs.size(); ++i) {
    if (!n.input(i)) continue;
    if (!known(n.input(i))) return;
    shapes.push_back(n.input(i)->shape);
  }
  make_broadcast_plan(y->shape, shapes, n.describe());
}

// A constant scalar input's value as double (Clip's bounds); `fallback` when omitted.
double constant_scalar(const Node& n, size_t i, double fallback, const char* what) {
  const graph::Value* v = n.input(i);
  if (!v) return fallback;
  if (!v->has_data())
    throw Error(n.describe() + ": " + what + " '" + v->name +
                "' must be a constant (the kernel reads it when the graph is compiled)");
  if (v->data->numel() != 1)
    throw Error(n.describe() + ": " + what + " '" + v->name + "' must be a scalar, got " +
                graph::shape_str(v->data->shape));
  const graph::Tensor& t = *v->data;
  switch (t.dtype) {
    case DType::f32: return t.data<float>()[0];
    case DType::f64: return t.data<double>()[0];
    default: return static_cast<double>(t.to_int64().at(0));
  }
}

// ---------------------------------------------------------------------------------------
// Loops

template <typename T, typename Op>
void pairwise(const T* a, const T* b, T* y, int64_t n, Op op) {
  parallel_chunks(n, [&](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) y[i] = op(a[i], b[i]);
  });
}

// ---------------------------------------------------------------------------------------
// Unary ops

template <typename Op>
std::unique_ptr<Kernel> unary_kernel(DType dt, const std::string& what, Op op) {
  return dispatch_float(dt, what, [&](auto tag) {
    using T = decltype(tag);
    return make_kernel([op](const KernelArgs& a) {
      unary(a.inputs[0].as<T>(), a.outputs[0].as<T>(), a.outputs[0].numel(), op);
    });
  });
}

// Float math; with kIntegers, int64 and int32 too (Abs, Neg, Sign).
template <bool kIntegers = false, typename Op>
KernelFactory unary_factory(Op op) {
  return [op](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const DType dt = input_value(n, 0).dtype;
    if constexpr (kIntegers) {
      if (dt == DType::i64)
        return make_kernel([op](const KernelArgs& a) {
          unary(a.inputs[0].as<int64_t>(), a.outputs[0].as<int64_t>(), a.outputs[0].numel(), op);
        });
      if (dt == DType::i32)
        return make_kernel([op](const KernelArgs& a) {
          unary(a.inputs[0].as<int32_t>(), a.outputs[0].as<int32_t>(), a.outputs[0].numel(), op);
        });
    }
    return unary_kernel(float_type(n), n.describe(), op);
  };
}

// Abs and Neg on integers: the wrapping forms of the float functions.
struct IntAbs {
  template <typename T>
  T operator()(T x) const { return x < T(0) ? static_cast<T>(T(0) - x) : x; }
};
struct AbsAny {
  float operator()(float x) const { return pm::abs_of(x); }
  double operator()(double x) const { return pm::abs_of(x); }
  int64_t operator()(int64_t x) const { return IntAbs{}(x); }
  int32_t operator()(int32_t x) const { return IntAbs{}(x); }
};
struct NegAny {
  template <typename T>
  T operator()(T x) const { return static_cast<T>(-x); }
};
struct SignAny {
  float operator()(float x) const { return pm::sign_of(x); }
  double operator()(double x) const { return pm::sign_of(x); }
  template <typename T>
  T operator()(T x) const { return static_cast<T>((x > T(0)) - (x < T(0))); }
};

// Clip's bounds: attributes before opset 11, constant scalar inputs from 11.
std::pair<double, double> clip_bounds(const Node& n, int64_t opset, size_t first_bound) {
  const double inf = std::numeric_limits<double>::infinity();
  if (opset < 11 && first_bound == 1)
    return {n.has_attr("min") ? n.attr_float("min", 0) : -inf,
            n.has_attr("max") ? n.attr_float("max", 0) : inf};
  return {constant_scalar(n, first_bound, -inf, "min"), constant_scalar(n, first_bound + 1, inf, "max")};
}

// Clip: floats, and integers with the bounds held to the type's range (the default bounds are
// infinite).
KernelFactory clip_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    auto [lo, hi] = clip_bounds(n, init.opset, 1);
    const DType dt = input_value(n, 0).dtype;
    if (dt == DType::f32 || dt == DType::f64) return unary_kernel(float_type(n), n.describe(), pm::ClipOp{lo, hi});
    if (dt == DType::boolean) throw Error(n.describe() + ": Clip of bool tensors is not defined");
    return dispatch_number(dt, n.describe(), [&, lo = lo, hi = hi](auto tag) {
      using T = decltype(tag);
      // Saturating: an infinite default bound is the type's end (2^63 and 2^64 have no int64
      // or uint64 to cast to).
      const T l = pm::convert<T, double>(lo), h = pm::convert<T, double>(hi);
      return make_kernel([l, h](const KernelArgs& a) {
        unary(a.inputs[0].as<T>(), a.outputs[0].as<T>(), a.outputs[0].numel(), [l, h](T x) { return pm::clip(x, l, h); });
      });
    });
  };
}

KernelFactory hard_sigmoid_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    pm::HardSigmoidOp op{n.attr_float("alpha", 0.2f), n.attr_float("beta", 0.5f)};
    return unary_kernel(float_type(n), n.describe(), op);
  };
}

std::string gelu_approximation(const Node& n) {
  std::string a = n.attr_string("approximate", "none");
  if (a != "none" && a != "tanh")
    throw Error(n.describe() + ": approximate='" + a + "' is not one of 'none', 'tanh'");
  return a;
}

KernelFactory gelu_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    if (gelu_approximation(n) == "tanh") return unary_kernel(float_type(n), n.describe(), pm::GeluTanhOp{});
    return unary_kernel(float_type(n), n.describe(), pm::GeluOp{});
  };
}

// ---------------------------------------------------------------------------------------
// Gradient ops of one shape: dX = op(dY, saved).

template <typename Op>
std::unique_ptr<Kernel> pair_kernel(const Node& n, Op op) {
  DType dt = float_type(n, {0, 1});
  const graph::Value& dy = input_value(n, 0);
  const graph::Value& s = input_value(n, 1);
  if (known(&dy) && known(&s) && dy.shape != s.shape)
    throw Error(n.describe() + ": dY " + dy.shape_string() + " and '" + s.name + "' " +
                s.shape_string() + " differ in shape");
  return dispatch_float(dt, n.describe(), [&](auto tag) {
    using T = decltype(tag);
    return make_kernel([op](const KernelArgs& a) {
      pairwise(a.inputs[0].as<T>(), a.inputs[1].as<T>(), a.outputs[0].as<T>(), a.outputs[0].numel(), op);
    });
  });
}

template <typename Op>
KernelFactory pair_factory(Op op) {
  return [op](const KernelInit& init) { return pair_kernel(init.node, op); };
}

KernelFactory clip_grad_factory() {
  return [](const KernelInit& init) {
    auto [lo, hi] = clip_bounds(init.node, init.opset, 2);
    return pair_kernel(init.node, pm::ClipGradOp{lo, hi});
  };
}

KernelFactory hard_sigmoid_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    return pair_kernel(n, pm::HardSigmoidGradOp{n.attr_float("alpha", 0.2f), n.attr_float("beta", 0.5f)});
  };
}

KernelFactory gelu_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    if (gelu_approximation(n) == "tanh") return pair_kernel(n, pm::GeluTanhGradOp{});
    return pair_kernel(n, pm::GeluGradOp{});
  };
}

// ---------------------------------------------------------------------------------------
// Binary ops with broadcasting

// An input of another number type than T, converted (Pow's exponent from opset 12).
template <typename T>
TensorView as_type(const TensorView& v, std::vector<T>& buffer, const std::string& what) {
  if (v.dtype == graph::DType::f32 && std::is_same_v<T, float>) return v;
  if (v.dtype == graph::DType::f64 && std::is_same_v<T, double>) return v;
  buffer.resize(static_cast<size_t>(v.numel()));
  dispatch_number(v.dtype, what, [&](auto tag) {
    using U = decltype(tag);
    const U* src = v.as<U>();
    for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = static_cast<T>(src[i]);
    return 0;
  });
  return TensorView{buffer.data(), v.dtype, v.shape};
}

KernelFactory pow_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const DType base = input_value(n, 0).dtype;
    const std::string what = n.describe();
    check_broadcast(n);
    if (base == DType::i64 || base == DType::i32) {
      // An integer base: the power in double, truncated to the base's type (ONNX's reference).
      return dispatch_number(base, what, [&](auto tag) {
        using T = decltype(tag);
        return make_kernel([what](const KernelArgs& a) {
          std::vector<double> converted;
          TensorView b = as_type<double>(a.inputs[1], converted, what);
          broadcast_binary<T, double, T>(a.inputs[0], b, a.outputs[0],
                                         [](T x, double e) { return static_cast<T>(std::pow(static_cast<double>(x), e)); },
                                         what);
        });
      });
    }
    DType dt = float_type(n);
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([what](const KernelArgs& a) {
        std::vector<T> converted;
        TensorView b = as_type<T>(a.inputs[1], converted, what);
        broadcast_binary<T, T, T>(a.inputs[0], b, a.outputs[0], pm::PowOp{}, what);
      });
    });
  };
}

// PowGrad(dY, A, B), wrt 0 (base) or 1 (exponent): the broadcast shape, reduced by the rule.
KernelFactory pow_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = float_type(n, {0, 1});
    const std::string what = n.describe();
    const bool exponent = n.attr_int("wrt", 0) != 0;
    check_broadcast(n);
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([what, exponent](const KernelArgs& a) {
        std::vector<T> converted;
        TensorView bv = as_type<T>(a.inputs[2], converted, what);
        const TensorView& y = a.outputs[0];
        std::vector<graph::Shape> shapes{a.inputs[0].shape, a.inputs[1].shape, bv.shape};
        StridedPlan p = make_broadcast_plan(y.shape, shapes, what);
        const T* dy = a.inputs[0].as<T>();
        const T* pa = a.inputs[1].as<T>();
        const T* pb = bv.as<T>();
        T* py = y.as<T>();
        const int64_t s0 = p.inner_stride(0), s1 = p.inner_stride(1), s2 = p.inner_stride(2);
        for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
          for (int64_t i = 0; i < len; ++i) {
            const T d = dy[off[0] + i * s0], x = pa[off[1] + i * s1], e = pb[off[2] + i * s2];
            py[o + i] = exponent ? pm::pow_grad_exponent(d, x, e) : pm::pow_grad_base(d, x, e);
          }
        });
      });
    });
  };
}

KernelFactory mod_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const std::string what = n.describe();
    const DType dt = input_value(n, 0).dtype;
    if (input_value(n, 1).dtype != dt)
      throw Error(what + ": inputs have different element types (" + graph::dtype_name(dt) + " and " +
                  graph::dtype_name(input_value(n, 1).dtype) + ")");
    check_broadcast(n);
    const pm::ModOp op{n.attr_int("fmod", 0) != 0};
    auto make = [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([op, what](const KernelArgs& a) {
        broadcast_binary<T, T, T>(a.inputs[0], a.inputs[1], a.outputs[0], op, what);
      });
    };
    return dispatch_number(dt, what, make);
  };
}

// Max/Min (variadic): acc = op(op(x0, x1), x2) ..., per element, through a local row so that
// the output may share any same-shape input's buffer.
template <typename Op>
KernelFactory variadic_factory(Op op) {
  return [op](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const std::string what = n.describe();
    if (n.inputs.empty()) throw Error(what + ": needs at least one input");
    const DType dt = input_value(n, 0).dtype;
    for (size_t i = 1; i < n.inputs.size(); ++i)
      if (input_value(n, i).dtype != dt)
        throw Error(what + ": inputs have different element types (" + graph::dtype_name(dt) +
                    " and " + graph::dtype_name(input_value(n, i).dtype) + ")");
    check_broadcast(n);
    auto make = [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([op, what](const KernelArgs& a) {
        std::vector<graph::Shape> shapes;
        for (const TensorView& t : a.inputs) shapes.push_back(t.shape);
        StridedPlan p = make_broadcast_plan(a.outputs[0].shape, shapes, what);
        T* py = a.outputs[0].as<T>();
        for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
          T acc[kSegment];
          const T* x0 = a.inputs[0].as<T>() + off[0];
          const int64_t s0 = p.inner_stride(0);
          for (int64_t i = 0; i < len; ++i) acc[i] = x0[i * s0];
          for (size_t k = 1; k < a.inputs.size(); ++k) {
            const T* xk = a.inputs[k].as<T>() + off[k];
            const int64_t sk = p.inner_stride(k);
            for (int64_t i = 0; i < len; ++i) acc[i] = op(acc[i], xk[i * sk]);
          }
          std::memcpy(py + o, acc, static_cast<size_t>(len) * sizeof(T));
        });
      });
    };
    return dispatch_number(dt, what, make);
  };
}

// MaxMinGrad(dY, X0..Xn-1) -> dX0..dXn-1 of dY's shape: dY / k to each of the k inputs equal
// to the result (recomputed as the forward did), 0 to the others.
KernelFactory max_min_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    std::vector<size_t> all;
    for (size_t i = 0; i < n.inputs.size(); ++i) all.push_back(i);
    DType dt = float_type(n, all);
    const std::string what = n.describe();
    const bool is_max = n.attr_string("mode", "max") == "max";
    if (n.inputs.size() < 2 || n.outputs.size() + 1 != n.inputs.size())
      throw Error(what + ": expects dY, X0..Xn-1 and n outputs");
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([what, is_max](const KernelArgs& a) {
        const size_t k = a.outputs.size();
        std::vector<graph::Shape> shapes;
        for (const TensorView& t : a.inputs) shapes.push_back(t.shape);
        StridedPlan p = make_broadcast_plan(a.inputs[0].shape, shapes, what);
        for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
          for (int64_t i = 0; i < len; ++i) {
            auto x = [&](size_t j) { return a.inputs[j + 1].as<T>()[off[j + 1] + i * p.inner_stride(j + 1)]; };
            T y = x(0);
            for (size_t j = 1; j < k; ++j) y = is_max ? pm::max_of(y, x(j)) : pm::min_of(y, x(j));
            int ties = 0;
            for (size_t j = 0; j < k; ++j) ties += x(j) == y;
            const T dy = a.inputs[0].as<T>()[off[0] + i * p.inner_stride(0)];
            const T share = ties > 0 ? dy / static_cast<T>(ties) : T(0);
            for (size_t j = 0; j < k; ++j)
              if (a.outputs[j].present()) a.outputs[j].as<T>()[o + i] = x(j) == y ? share : T(0);
          }
        });
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// Comparisons, logic, Where

KernelFactory compare_factory(pm::Compare c) {
  return [c](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const DType dt = input_value(n, 0).dtype;
    if (input_value(n, 1).dtype != dt)
      throw Error(what + ": inputs have different element types (" + graph::dtype_name(dt) + " and " +
                  graph::dtype_name(input_value(n, 1).dtype) + ")");
    check_broadcast(n);
    return dispatch_number(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([c, what](const KernelArgs& a) {
        broadcast_binary<T, T, uint8_t>(a.inputs[0], a.inputs[1], a.outputs[0],
                                        [c](T x, T y) { return pm::compare(c, x, y); }, what);
      });
    });
  };
}

void require_bool(const Node& n, size_t i) {
  if (input_value(n, i).dtype != DType::boolean)
    throw Error(n.describe() + ": input '" + input_value(n, i).name + "' is " +
                graph::dtype_name(input_value(n, i).dtype) + ", expected bool");
}

KernelFactory logic_factory(pm::Logic l) {
  return [l](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    require_bool(n, 0);
    require_bool(n, 1);
    check_broadcast(n);
    return make_kernel([l, what](const KernelArgs& a) {
      broadcast_binary<uint8_t, uint8_t, uint8_t>(
          a.inputs[0], a.inputs[1], a.outputs[0], [l](uint8_t x, uint8_t y) { return pm::logic(l, x, y); },
          what);
    });
  };
}

KernelFactory not_factory() {
  return [](const KernelInit& init) {
    require_bool(init.node, 0);
    return make_kernel([](const KernelArgs& a) {
      unary(a.inputs[0].as<uint8_t>(), a.outputs[0].as<uint8_t>(), a.outputs[0].numel(),
            [](uint8_t x) { return static_cast<uint8_t>(x == 0); });
    });
  };
}

// Where: elements moved by size, so any type of 1, 2, 4 or 8 bytes.
template <typename U>
void where(const KernelArgs& a, const std::string& what) {
  const TensorView& y = a.outputs[0];
  StridedPlan p = make_broadcast_plan(y.shape, {a.inputs[0].shape, a.inputs[1].shape, a.inputs[2].shape}, what);
  const uint8_t* pc = a.inputs[0].as<uint8_t>();
  const U* px = a.inputs[1].as<U>();
  const U* pyv = a.inputs[2].as<U>();
  U* out = y.as<U>();
  const int64_t sc = p.inner_stride(0), sx = p.inner_stride(1), sy = p.inner_stride(2);
  for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
    for (int64_t i = 0; i < len; ++i)
      out[o + i] = pc[off[0] + i * sc] ? px[off[1] + i * sx] : pyv[off[2] + i * sy];
  });
}

KernelFactory where_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const std::string what = n.describe();
    require_bool(n, 0);
    const DType dt = input_value(n, 1).dtype;
    if (input_value(n, 2).dtype != dt)
      throw Error(what + ": X and Y have different element types (" + graph::dtype_name(dt) + " and " +
                  graph::dtype_name(input_value(n, 2).dtype) + ")");
    check_broadcast(n);
    switch (graph::dtype_size(dt)) {
      case 1: return make_kernel([what](const KernelArgs& a) { where<uint8_t>(a, what); });
      case 2: return make_kernel([what](const KernelArgs& a) { where<uint16_t>(a, what); });
      case 4: return make_kernel([what](const KernelArgs& a) { where<uint32_t>(a, what); });
      case 8: return make_kernel([what](const KernelArgs& a) { where<uint64_t>(a, what); });
      default: throw Error(what + ": cannot select elements of type " + graph::dtype_name(dt));
    }
  };
}

// ---------------------------------------------------------------------------------------
// Cast

template <typename From, typename To, typename F>
void cast_loop(const KernelArgs& a, F f) {
  const From* x = a.inputs[0].as<From>();
  To* y = a.outputs[0].as<To>();
  parallel_chunks(a.outputs[0].numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
}

// Casts to and from the narrow storage types (base/narrow_types.h), element by element through
// double: every narrow value, and every value a narrow type is made from, is exact there.
std::unique_ptr<Kernel> narrow_cast_kernel(const Node& n, DType from, DType to) {
  const std::string what = n.describe();
  const bool saturate = n.attr_int("saturate", 1) != 0;
  const std::string round_mode = graph::cast_round_mode(n);
  std::function<double(const void*, int64_t)> read;
  if (graph::is_narrow(from)) {
    read = [from](const void* p, int64_t i) { return graph::narrow_value(from, static_cast<const uint8_t*>(p)[i]); };
  } else {
    read = dispatch_number(from, what, [](auto tag) -> std::function<double(const void*, int64_t)> {
      using T = decltype(tag);
      return [](const void* p, int64_t i) { return static_cast<double>(static_cast<const T*>(p)[i]); };
    });
  }
  std::function<void(void*, int64_t, double)> write;
  if (graph::is_narrow(to)) {
    write = [to, saturate, round_mode](void* p, int64_t i, double x) {
      static_cast<uint8_t*>(p)[i] = graph::narrow_byte(to, x, saturate, round_mode);
    };
  } else if (to == DType::boolean) {
    write = [](void* p, int64_t i, double x) { static_cast<uint8_t*>(p)[i] = x != 0 ? 1 : 0; };
  } else {
    write = dispatch_number(to, what, [](auto tag) -> std::function<void(void*, int64_t, double)> {
      using T = decltype(tag);
      return [](void* p, int64_t i, double x) { static_cast<T*>(p)[i] = pm::convert<T, double>(x); };
    });
  }
  return make_kernel([read, write](const KernelArgs& a) {
    const void* x = a.inputs[0].data;
    void* y = a.outputs[0].data;
    for (int64_t i = 0, count = a.outputs[0].numel(); i < count; ++i) write(y, i, read(x, i));
  });
}

KernelFactory cast_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const DType from = input_value(n, 0).dtype;
    const DType to = output_value(n, 0).dtype;
    if (graph::is_narrow(from) || graph::is_narrow(to)) return narrow_cast_kernel(n, from, to);
    const bool to_bool = to == DType::boolean;
    return dispatch_number(from, what, [&](auto from_tag) {
      using From = decltype(from_tag);
      if (to_bool)
        return make_kernel([](const KernelArgs& a) {
          cast_loop<From, uint8_t>(a, [](From x) { return pm::to_bool(x); });
        });
      return dispatch_number(to, what, [&](auto to_tag) {
        using To = decltype(to_tag);
        return make_kernel([](const KernelArgs& a) {
          cast_loop<From, To>(a, [](From x) { return pm::convert<To, From>(x); });
        });
      });
    });
  };
}

}  // namespace

void register_cpu_pointwise_kernels(KernelRegistry& registry) {
  const Device cpu = Device::cpu;
  registry.add("", "Sigmoid", cpu, unary_factory(pm::SigmoidOp{}));
  registry.add("", "Tanh", cpu, unary_factory(pm::TanhOp{}));
  registry.add("", "HardSwish", cpu, unary_factory(pm::HardSwishOp{}));
  registry.add("", "Erf", cpu, unary_factory(pm::ErfOp{}));
  registry.add("", "Sqrt", cpu, unary_factory(pm::SqrtOp{}));
  registry.add("", "Exp", cpu, unary_factory(pm::ExpOp{}));
  registry.add("", "Log", cpu, unary_factory(pm::LogOp{}));
  registry.add("", "Reciprocal", cpu, unary_factory(pm::ReciprocalOp{}));
  registry.add("", "Floor", cpu, unary_factory(pm::FloorOp{}));
  registry.add("", "Ceil", cpu, unary_factory(pm::CeilOp{}));
  registry.add("", "Abs", cpu, unary_factory<true>(AbsAny{}));
  registry.add("", "Neg", cpu, unary_factory<true>(NegAny{}));
  registry.add("", "Sign", cpu, unary_factory<true>(SignAny{}));
  registry.add("", "Clip", cpu, clip_factory());
  registry.add("", "HardSigmoid", cpu, hard_sigmoid_factory());
  registry.add("", "Gelu", cpu, gelu_factory());
  registry.add("", "Pow", cpu, pow_factory());
  registry.add("", "Mod", cpu, mod_factory());
  registry.add("", "Max", cpu, variadic_factory(pm::MaxOp{}));
  registry.add("", "Min", cpu, variadic_factory(pm::MinOp{}));
  registry.add("", "Equal", cpu, compare_factory(pm::Compare::equal));
  registry.add("", "Less", cpu, compare_factory(pm::Compare::less));
  registry.add("", "Greater", cpu, compare_factory(pm::Compare::greater));
  registry.add("", "LessOrEqual", cpu, compare_factory(pm::Compare::less_equal));
  registry.add("", "GreaterOrEqual", cpu, compare_factory(pm::Compare::greater_equal));
  registry.add("", "And", cpu, logic_factory(pm::Logic::land));
  registry.add("", "Or", cpu, logic_factory(pm::Logic::lor));
  registry.add("", "Xor", cpu, logic_factory(pm::Logic::lxor));
  registry.add("", "Not", cpu, not_factory());
  registry.add("", "Where", cpu, where_factory());
  registry.add("", "Cast", cpu, cast_factory());
  const char* ox = "oxtrain";
  registry.add(ox, "SigmoidGrad", cpu, pair_factory(pm::SigmoidGradOp{}));
  registry.add(ox, "TanhGrad", cpu, pair_factory(pm::TanhGradOp{}));
  registry.add(ox, "SqrtGrad", cpu, pair_factory(pm::SqrtGradOp{}));
  registry.add(ox, "ErfGrad", cpu, pair_factory(pm::ErfGradOp{}));
  registry.add(ox, "HardSwishGrad", cpu, pair_factory(pm::HardSwishGradOp{}));
  registry.add(ox, "HardSigmoidGrad", cpu, hard_sigmoid_grad_factory());
  registry.add(ox, "GeluGrad", cpu, gelu_grad_factory());
  registry.add(ox, "ClipGrad", cpu, clip_grad_factory());
  registry.add(ox, "PowGrad", cpu, pow_grad_factory());
  registry.add(ox, "MaxMinGrad", cpu, max_min_grad_factory());
}

}  // namespace oxtrain::runtime
