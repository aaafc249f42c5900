// CUDA kernels of the pointwise family, the twins of runtime/cpu/pointwise.cc: activations and
// element-wise math, Clip, Pow, Mod, Max/Min, the comparisons, Not/And/Or/Xor, Where, Cast and
// the gradient ops oxtrain.SigmoidGrad TanhGrad SqrtGrad ErfGrad GeluGrad HardSigmoidGrad
// HardSwishGrad ClipGrad PowGrad MaxMinGrad. Every kernel writes (=) its outputs.
//
// Types: float32 math (Mod and the comparisons also on int64 and int32, the comparisons on
// bool; Where moves elements of any size; Cast converts between float32, int64, int32, int8,
// uint8 and bool). The activations, their gradients and Max/Min also take float16 and bfloat16,
// widened on load, computed in float32 and rounded once on store, as the CPU's emulation of
// half computes them. Pow's exponent is a float32 tensor or a constant scalar of any number
// type.
//
// The per-element math is runtime/math/pointwise.h, the CPU kernels' own; transcendental
// functions come from CUDA's math library and may differ from the CPU's libm by a few ulps.
// One grid-stride kernel maps every op: each thread computes output element i from the
// inputs' elements at their broadcast offsets (runtime/math/broadcast.h, fixed when the
// kernel is made) and writes element i only, so an output may share a same-shape input's
// buffer, and results do not depend on the launch.
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "base/half.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/broadcast.h"
#include "runtime/math/pointwise.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

namespace pm = math;
using math::StridedIndex;
using math::StridedPlan;

// Operands one launch indexes: enough for Where and PowGrad; Max/Min and their gradient take
// up to this many inputs.
constexpr int kOperands = 8;

// ---------------------------------------------------------------------------------------
// Compile-time checks

void require_type(const Node& n, const graph::Value& v, std::initializer_list<DType> types,
                  const char* expected) {
  for (DType t : types)
    if (v.dtype == t) return;
  throw Error(n.describe() + ": the CUDA kernel takes " + expected + ", got " +
              graph::dtype_name(v.dtype) + " '" + v.name + "'");
}

void require_f32(const Node& n, const graph::Value& v) { require_type(n, v, {DType::f32}, "float32"); }

// The float math's one element type, shared by `values`: 0 float32, 1 float16, 2 bfloat16
// (base/half.h's load_float / store_float).
int float_kind(const Node& n, std::initializer_list<const graph::Value*> values) {
  const DType dt = (*values.begin())->dtype;
  for (const graph::Value* v : values) {
    require_type(n, *v, {DType::f32, DType::f16, DType::bf16}, "float32, float16 or bfloat16");
    if (v->dtype != dt)
      throw Error(n.describe() + ": the CUDA kernel takes operands of one type, got " + graph::dtype_name(dt) +
                  " and " + graph::dtype_name(v->dtype) + " '" + v->name + "'");
  }
  return cuda::float_kind(dt);
}

void check_numel(const TensorView& t, int64_t numel, const std::string& where, const char* role) {
  if (t.numel() != numel)
    throw Error(where + ": " + role + " has " + std::to_string(t.numel()) +
                " elements at run time, " + std::to_string(numel) + " when compiled");
}

void check_launch(const char* kernel, const std::string& where) {
  cuda::check(cudaGetLastError(), kernel, where);
}

// A constant scalar input's value as double (Clip's bounds, Pow's constant exponent).
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
  if (t.dtype == DType::f32) return t.data<float>()[0];
  if (t.dtype == DType::f64) return t.data<double>()[0];
  if (t.dtype == DType::f16 || t.dtype == DType::bf16) return half_to_float(t.data<uint16_t>()[0], t.dtype == DType::bf16);
  return static_cast<double>(t.to_int64().at(0));
}

// ---------------------------------------------------------------------------------------
// The one kernel: f(i, offsets) for every output element i.

struct Layout {
  int64_t numel = 0;
  int count = 0;  // operands
  bool index32 = true;
  StridedIndex<kOperands, uint32_t> i32;
  StridedIndex<kOperands, int64_t> i64;
};

// The operands' shapes broadcast to `out` (operand k reads at offset off[k]).
Layout make_layout(const Node& n, const graph::Shape& out, const std::vector<graph::Shape>& ins) {
  const std::string what = n.describe();
  if (ins.size() > static_cast<size_t>(kOperands))
    throw Error(what + ": " + std::to_string(ins.size()) + " operands; the CUDA kernel takes at most " +
                std::to_string(kOperands));
  StridedPlan plan = math::make_broadcast_plan(out, ins, what);
  Layout l;
  l.numel = plan.numel;
  l.count = static_cast<int>(ins.size());
  l.index32 = math::fits_32_bits(plan);
  std::vector<size_t> ops(ins.size());
  std::iota(ops.begin(), ops.end(), size_t{0});
  if (l.index32) l.i32 = math::strided_index<kOperands, uint32_t>(plan, ops, what);
  else l.i64 = math::strided_index<kOperands, int64_t>(plan, ops, what);
  return l;
}

// Shapes of the node's inputs [first, end), output 0's shape as the target.
Layout node_layout(const Node& n, size_t first = 0) {
  std::vector<graph::Shape> ins;
  for (size_t i = first; i < n.inputs.size(); ++i) ins.push_back(known_shape(n, input_value(n, i)));
  return make_layout(n, known_shape(n, output_value(n, 0)), ins);
}

template <typename I, typename F>
__global__ void map_kernel(I n, StridedIndex<kOperands, I> p, int count, F f) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[kOperands];
    math::strided_offsets(p, i, count, off);
    f(i, off);
  }
}

template <typename F>
void launch_map(const Layout& l, const F& f, const KernelArgs& a, const std::string& what) {
  const CudaContext& ctx = cuda::context_of(a, what);
  if (!a.outputs.empty() && a.outputs[0].present()) check_numel(a.outputs[0], l.numel, what, "the output");
  if (l.numel <= 0) return;
  cuda::Launch g = cuda::launch_for(l.numel, ctx);
  if (l.index32)
    map_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(static_cast<uint32_t>(l.numel), l.i32, l.count, f);
  else
    map_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(l.numel, l.i64, l.count, f);
  check_launch("map_kernel launch", what);
}

// ---------------------------------------------------------------------------------------
// Element functors

template <typename TX, typename TY, typename Op>
struct UnaryF {
  const TX* x;
  TY* y;
  Op op;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const { y[i] = op(x[off[0]]); }
};

template <typename TA, typename TB, typename TY, typename Op>
struct BinaryF {
  const TA* a;
  const TB* b;
  TY* y;
  Op op;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const { y[i] = op(a[off[0]], b[off[1]]); }
};

// The float math on elements of kKind (float32, float16, bfloat16), computed in float32.
template <int kKind, typename Op>
struct FloatUnaryF {
  const void* x;
  void* y;
  Op op;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const {
    store_float<kKind>(y, i, op(load_float<kKind>(x, off[0])));
  }
};

template <int kKind, typename Op>
struct FloatPairF {
  const void* a;
  const void* b;
  void* y;
  Op op;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const {
    store_float<kKind>(y, i, op(load_float<kKind>(a, off[0]), load_float<kKind>(b, off[1])));
  }
};

struct PowScalarF {
  const float* a;
  float e;
  float* y;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const { y[i] = pm::power(a[off[0]], e); }
};

// PowGrad: operands dY, A and (unless the exponent is a constant scalar) B.
struct PowGradF {
  const float* dy;
  const float* a;
  const float* b;  // null: the constant e
  float e;
  float* y;
  bool exponent;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const {
    const float d = dy[off[0]], x = a[off[1]], p = b ? b[off[2]] : e;
    y[i] = exponent ? pm::pow_grad_exponent(d, x, p) : pm::pow_grad_base(d, x, p);
  }
};

template <int kKind, typename Op>
struct VariadicF {
  const void* x[kOperands];
  int count;
  void* y;
  Op op;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const {
    float acc = load_float<kKind>(x[0], off[0]);
#pragma unroll
    for (int k = 1; k < kOperands; ++k)
      if (k < count) acc = op(acc, load_float<kKind>(x[k], off[k]));
    store_float<kKind>(y, i, acc);
  }
};

// MaxMinGrad: operand 0 is dY, 1..count-1 the inputs; output j for input j (null: omitted).
struct MaxMinGradF {
  const float* x[kOperands];
  float* dx[kOperands];
  int count;
  bool is_max;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const {
    float v[kOperands];
#pragma unroll
    for (int k = 1; k < kOperands; ++k) v[k] = k < count ? x[k][off[k]] : 0.0f;
    float y = v[1];
#pragma unroll
    for (int k = 2; k < kOperands; ++k)
      if (k < count) y = is_max ? pm::max_of(y, v[k]) : pm::min_of(y, v[k]);
    int ties = 0;
#pragma unroll
    for (int k = 1; k < kOperands; ++k)
      if (k < count) ties += v[k] == y;
    const float d = x[0][off[0]];
    const float share = ties > 0 ? d / static_cast<float>(ties) : 0.0f;
#pragma unroll
    for (int k = 1; k < kOperands; ++k)
      if (k < count && dx[k - 1]) dx[k - 1][i] = v[k] == y ? share : 0.0f;
  }
};

template <typename U>
struct WhereF {
  const uint8_t* c;
  const U* x;
  const U* z;
  U* y;
  template <typename I>
  __device__ void operator()(I i, const I (&off)[kOperands]) const {
    y[i] = c[off[0]] ? x[off[1]] : z[off[2]];
  }
};

struct CompareOp {
  pm::Compare c;
  template <typename T>
  __device__ uint8_t operator()(T a, T b) const { return pm::compare(c, a, b); }
};
struct LogicOp {
  pm::Logic l;
  __device__ uint8_t operator()(uint8_t a, uint8_t b) const { return pm::logic(l, a, b); }
};
struct NotOp {
  __device__ uint8_t operator()(uint8_t a) const { return a == 0; }
};
template <typename To>
struct ConvertOp {
  template <typename From>
  __device__ To operator()(From x) const { return pm::convert<To, From>(x); }
};
struct ToBoolOp {
  template <typename From>
  __device__ uint8_t operator()(From x) const { return pm::to_bool(x); }
};

// ---------------------------------------------------------------------------------------
// Factories

// Float unary op (also: a unary op with parameters fixed here).
template <typename Op>
std::unique_ptr<Kernel> unary_f32(const Node& n, Op op) {
  const std::string what = n.describe();
  const int kind = float_kind(n, {&input_value(n, 0), &output_value(n, 0)});
  // Only X is read (Clip's bounds are fixed here), so only X shapes the launch: a bound may be
  // omitted or shaped [1].
  const Layout l = make_layout(n, known_shape(n, output_value(n, 0)), {known_shape(n, input_value(n, 0))});
  return cuda::with_float_kind(kind, [&](auto k) {
    return make_kernel([what, l, op](const KernelArgs& a) {
      launch_map(l, FloatUnaryF<decltype(k)::value, Op>{a.inputs[0].data, a.outputs[0].data, op}, a, what);
    });
  });
}

template <typename Op>
KernelFactory unary_factory(Op op) {
  return [op](const KernelInit& init) { return unary_f32(init.node, op); };
}

std::pair<double, double> clip_bounds(const Node& n, int64_t opset, size_t first_bound) {
  const double inf = std::numeric_limits<double>::infinity();
  if (opset < 11 && first_bound == 1)
    return {n.has_attr("min") ? n.attr_float("min", 0) : -inf,
            n.has_attr("max") ? n.attr_float("max", 0) : inf};
  return {constant_scalar(n, first_bound, -inf, "min"), constant_scalar(n, first_bound + 1, inf, "max")};
}

std::string gelu_approximation(const Node& n) {
  std::string a = n.attr_string("approximate", "none");
  if (a != "none" && a != "tanh")
    throw Error(n.describe() + ": approximate='" + a + "' is not one of 'none', 'tanh'");
  return a;
}

// dX = op(dY, saved), all of one float type and shape.
template <typename Op>
std::unique_ptr<Kernel> pair_f32(const Node& n, Op op) {
  const std::string what = n.describe();
  const int kind = float_kind(n, {&input_value(n, 0), &input_value(n, 1), &output_value(n, 0)});
  if (known_shape(n, input_value(n, 0)) != known_shape(n, input_value(n, 1)))
    throw Error(what + ": dY " + input_value(n, 0).shape_string() + " and '" + input_value(n, 1).name +
                "' " + input_value(n, 1).shape_string() + " differ in shape");
  const Layout l = make_layout(n, known_shape(n, output_value(n, 0)),
                               {input_value(n, 0).shape, input_value(n, 1).shape});
  return cuda::with_float_kind(kind, [&](auto k) {
    return make_kernel([what, l, op](const KernelArgs& a) {
      launch_map(l, FloatPairF<decltype(k)::value, Op>{a.inputs[0].data, a.inputs[1].data, a.outputs[0].data, op}, a,
                 what);
    });
  });
}

template <typename Op>
KernelFactory pair_factory(Op op) {
  return [op](const KernelInit& init) { return pair_f32(init.node, op); };
}

// Binary op on operands of one type T (out of `types`), output of type TY (T when void).
template <typename Op, typename TY = void>
std::unique_ptr<Kernel> binary_same_type(const Node& n, Op op) {
  const std::string what = n.describe();
  const DType dt = input_value(n, 0).dtype;
  if (input_value(n, 1).dtype != dt)
    throw Error(what + ": inputs have different element types (" + graph::dtype_name(dt) + " and " +
                graph::dtype_name(input_value(n, 1).dtype) + ")");
  const Layout l = node_layout(n);
  auto make = [&](auto tag) {
    using T = decltype(tag);
    using Y = std::conditional_t<std::is_void_v<TY>, T, TY>;
    return make_kernel([what, l, op](const KernelArgs& a) {
      launch_map(l, BinaryF<T, T, Y, Op>{a.inputs[0].as<T>(), a.inputs[1].as<T>(), a.outputs[0].as<Y>(), op},
                 a, what);
    });
  };
  switch (dt) {
    case DType::f32: return make(float{});
    case DType::i64: return make(int64_t{});
    case DType::i32: return make(int32_t{});
    case DType::u8:
    case DType::boolean:
      if constexpr (!std::is_void_v<TY>) return make(uint8_t{});  // comparisons only
      [[fallthrough]];
    default:
      throw Error(what + ": the CUDA kernel takes float32, int64 or int32" +
                  std::string(std::is_void_v<TY> ? "" : " or bool") + ", got " + graph::dtype_name(dt));
  }
}

// A one-element value fixed for the run. A parameter's initial data is no such thing: the
// kernel reads its buffer each step.
bool fixed_scalar(const graph::Value& v) {
  return v.role == graph::Role::Constant && v.has_data() && v.data->numel() == 1;
}

KernelFactory pow_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const std::string what = n.describe();
    require_f32(n, input_value(n, 0));
    const graph::Value& b = input_value(n, 1);
    if (b.dtype != DType::f32 || fixed_scalar(b)) {
      // A constant scalar exponent, of any number type: passed by value.
      const float e = static_cast<float>(constant_scalar(n, 1, 0, "exponent"));
      const Layout l = make_layout(n, known_shape(n, output_value(n, 0)), {known_shape(n, input_value(n, 0))});
      return make_kernel([what, l, e](const KernelArgs& a) {
        launch_map(l, PowScalarF{a.inputs[0].as<float>(), e, a.outputs[0].as<float>()}, a, what);
      });
    }
    const Layout l = node_layout(n);
    return make_kernel([what, l](const KernelArgs& a) {
      launch_map(l,
                 BinaryF<float, float, float, pm::PowOp>{a.inputs[0].as<float>(), a.inputs[1].as<float>(),
                                                         a.outputs[0].as<float>(), pm::PowOp{}},
                 a, what);
    });
  };
}

KernelFactory pow_grad_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const std::string what = n.describe();
    require_f32(n, input_value(n, 0));
    require_f32(n, input_value(n, 1));
    const bool exponent = n.attr_int("wrt", 0) != 0;
    const graph::Value& b = input_value(n, 2);
    const bool scalar = b.dtype != DType::f32 || fixed_scalar(b);
    const float e = scalar ? static_cast<float>(constant_scalar(n, 2, 0, "exponent")) : 0.0f;
    std::vector<graph::Shape> shapes{known_shape(n, input_value(n, 0)), known_shape(n, input_value(n, 1))};
    if (!scalar) shapes.push_back(known_shape(n, b));
    const Layout l = make_layout(n, known_shape(n, output_value(n, 0)), shapes);
    return make_kernel([what, l, e, scalar, exponent](const KernelArgs& a) {
      launch_map(l,
                 PowGradF{a.inputs[0].as<float>(), a.inputs[1].as<float>(),
                          scalar ? nullptr : a.inputs[2].as<float>(), e, a.outputs[0].as<float>(), exponent},
                 a, what);
    });
  };
}

KernelFactory mod_factory() {
  return [](const KernelInit& init) {
    return binary_same_type(init.node, pm::ModOp{init.node.attr_int("fmod", 0) != 0});
  };
}

KernelFactory compare_factory(pm::Compare c) {
  return [c](const KernelInit& init) { return binary_same_type<CompareOp, uint8_t>(init.node, CompareOp{c}); };
}

KernelFactory logic_factory(pm::Logic lg) {
  return [lg](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    for (size_t i = 0; i < 2; ++i) require_type(n, input_value(n, i), {DType::boolean}, "bool");
    const Layout l = node_layout(n);
    return make_kernel([what, l, lg](const KernelArgs& a) {
      launch_map(l,
                 BinaryF<uint8_t, uint8_t, uint8_t, LogicOp>{a.inputs[0].as<uint8_t>(), a.inputs[1].as<uint8_t>(),
                                                             a.outputs[0].as<uint8_t>(), LogicOp{lg}},
                 a, what);
    });
  };
}

KernelFactory not_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    require_type(n, input_value(n, 0), {DType::boolean}, "bool");
    const Layout l = node_layout(n);
    return make_kernel([what, l](const KernelArgs& a) {
      launch_map(l, UnaryF<uint8_t, uint8_t, NotOp>{a.inputs[0].as<uint8_t>(), a.outputs[0].as<uint8_t>(), NotOp{}},
                 a, what);
    });
  };
}

template <typename Op>
KernelFactory variadic_factory(Op op) {
  return [op](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    if (n.inputs.empty()) throw Error(what + ": needs at least one input");
    int kind = 0;
    for (size_t i = 0; i < n.inputs.size(); ++i) kind = float_kind(n, {&output_value(n, 0), &input_value(n, i)});
    const Layout l = node_layout(n);
    return cuda::with_float_kind(kind, [&](auto k) {
      return make_kernel([what, l, op](const KernelArgs& a) {
        VariadicF<decltype(k)::value, Op> f{};
        for (size_t j = 0; j < a.inputs.size(); ++j) f.x[j] = a.inputs[j].data;
        f.count = static_cast<int>(a.inputs.size());
        f.y = a.outputs[0].data;
        f.op = op;
        launch_map(l, f, a, what);
      });
    });
  };
}

KernelFactory max_min_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    if (n.inputs.size() < 2 || n.outputs.size() + 1 != n.inputs.size())
      throw Error(what + ": expects dY, X0..Xn-1 and n outputs");
    for (size_t i = 0; i < n.inputs.size(); ++i) require_f32(n, input_value(n, i));
    const bool is_max = n.attr_string("mode", "max") == "max";
    std::vector<graph::Shape> shapes;
    for (size_t i = 0; i < n.inputs.size(); ++i) shapes.push_back(known_shape(n, input_value(n, i)));
    const Layout l = make_layout(n, shapes[0], shapes);
    return make_kernel([what, l, is_max](const KernelArgs& a) {
      MaxMinGradF f{};
      for (size_t k = 0; k < a.inputs.size(); ++k) f.x[k] = a.inputs[k].as<float>();
      for (size_t k = 0; k < a.outputs.size(); ++k) {
        f.dx[k] = a.outputs[k].present() ? a.outputs[k].as<float>() : nullptr;
        if (a.outputs[k].present()) check_numel(a.outputs[k], l.numel, what, "an output");
      }
      f.count = static_cast<int>(a.inputs.size());
      f.is_max = is_max;
      launch_map(l, f, a, what);
    });
  };
}

KernelFactory where_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const std::string what = n.describe();
    require_type(n, input_value(n, 0), {DType::boolean}, "a bool condition");
    const DType dt = input_value(n, 1).dtype;
    if (input_value(n, 2).dtype != dt)
      throw Error(what + ": X and Y have different element types (" + graph::dtype_name(dt) + " and " +
                  graph::dtype_name(input_value(n, 2).dtype) + ")");
    if (dt == DType::f64) throw Error(what + ": the CUDA kernel does not take float64");
    const Layout l = node_layout(n);
    auto make = [&](auto tag) {
      using U = decltype(tag);
      return make_kernel([what, l](const KernelArgs& a) {
        launch_map(l,
                   WhereF<U>{a.inputs[0].as<uint8_t>(), a.inputs[1].as<U>(), a.inputs[2].as<U>(),
                             a.outputs[0].as<U>()},
                   a, what);
      });
    };
    switch (graph::dtype_size(dt)) {
      case 1: return make(uint8_t{});
      case 2: return make(uint16_t{});
      case 4: return make(uint32_t{});
      case 8: return make(uint64_t{});
      default: throw Error(what + ": cannot select elements of type " + graph::dtype_name(dt));
    }
  };
}

// Calls f(T{}) for the types Cast converts on the GPU.
template <typename F>
std::unique_ptr<Kernel> dispatch_cast_type(DType dt, const std::string& what, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::i64: return f(int64_t{});
    case DType::i32: return f(int32_t{});
    case DType::i8: return f(int8_t{});
    case DType::u8:
    case DType::boolean: return f(uint8_t{});
    default:
      throw Error(what + ": the CUDA Cast converts float32, int64, int32, int8, uint8 and bool, not " +
                  graph::dtype_name(dt));
  }
}

KernelFactory cast_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const DType from = input_value(n, 0).dtype;
    const DType to = output_value(n, 0).dtype;
    const Layout l = node_layout(n);
    return dispatch_cast_type(from, what, [&](auto from_tag) {
      using From = decltype(from_tag);
      if (to == DType::boolean)
        return make_kernel([what, l](const KernelArgs& a) {
          launch_map(l, UnaryF<From, uint8_t, ToBoolOp>{a.inputs[0].as<From>(), a.outputs[0].as<uint8_t>(), {}},
                     a, what);
        });
      return dispatch_cast_type(to, what, [&](auto to_tag) {
        using To = decltype(to_tag);
        return make_kernel([what, l](const KernelArgs& a) {
          launch_map(l, UnaryF<From, To, ConvertOp<To>>{a.inputs[0].as<From>(), a.outputs[0].as<To>(), {}}, a,
                     what);
        });
      });
    });
  };
}

}  // namespace

void register_cuda_pointwise_kernels(KernelRegistry& registry) {
  const Device cuda = Device::cuda;
  registry.add("", "Sigmoid", cuda, unary_factory(pm::SigmoidOp{}));
  registry.add("", "Tanh", cuda, unary_factory(pm::TanhOp{}));
  registry.add("", "HardSwish", cuda, unary_factory(pm::HardSwishOp{}));
  registry.add("", "Erf", cuda, unary_factory(pm::ErfOp{}));
  registry.add("", "Sqrt", cuda, unary_factory(pm::SqrtOp{}));
  registry.add("", "Exp", cuda, unary_factory(pm::ExpOp{}));
  registry.add("", "Log", cuda, unary_factory(pm::LogOp{}));
  registry.add("", "Reciprocal", cuda, unary_factory(pm::ReciprocalOp{}));
  registry.add("", "Floor", cuda, unary_factory(pm::FloorOp{}));
  registry.add("", "Ceil", cuda, unary_factory(pm::CeilOp{}));
  registry.add("", "Abs", cuda, unary_factory(pm::AbsOp{}));
  registry.add("", "Sign", cuda, unary_factory(pm::SignOp{}));
  registry.add("", "Clip", cuda, [](const KernelInit& init) {
    auto [lo, hi] = clip_bounds(init.node, init.opset, 1);
    return unary_f32(init.node, pm::ClipOp{lo, hi});
  });
  registry.add("", "HardSigmoid", cuda, [](const KernelInit& init) {
    const Node& n = init.node;
    return unary_f32(n, pm::HardSigmoidOp{n.attr_float("alpha", 0.2f), n.attr_float("beta", 0.5f)});
  });
  registry.add("", "Gelu", cuda, [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    if (gelu_approximation(init.node) == "tanh") return unary_f32(init.node, pm::GeluTanhOp{});
    return unary_f32(init.node, pm::GeluOp{});
  });
  registry.add("", "Pow", cuda, pow_factory());
  registry.add("", "Mod", cuda, mod_factory());
  registry.add("", "Max", cuda, variadic_factory(pm::MaxOp{}));
  registry.add("", "Min", cuda, variadic_factory(pm::MinOp{}));
  registry.add("", "Equal", cuda, compare_factory(pm::Compare::equal));
  registry.add("", "Less", cuda, compare_factory(pm::Compare::less));
  registry.add("", "Greater", cuda, compare_factory(pm::Compare::greater));
  registry.add("", "LessOrEqual", cuda, compare_factory(pm::Compare::less_equal));
  registry.add("", "GreaterOrEqual", cuda, compare_factory(pm::Compare::greater_equal));
  registry.add("", "And", cuda, logic_factory(pm::Logic::land));
  registry.add("", "Or", cuda, logic_factory(pm::Logic::lor));
  registry.add("", "Xor", cuda, logic_factory(pm::Logic::lxor));
  registry.add("", "Not", cuda, not_factory());
  registry.add("", "Where", cuda, where_factory());
  registry.add("", "Cast", cuda, cast_factory());
  const char* ox = "oxtrain";
  registry.add(ox, "SigmoidGrad", cuda, pair_factory(pm::SigmoidGradOp{}));
  registry.add(ox, "TanhGrad", cuda, pair_factory(pm::TanhGradOp{}));
  registry.add(ox, "SqrtGrad", cuda, pair_factory(pm::SqrtGradOp{}));
  registry.add(ox, "ErfGrad", cuda, pair_factory(pm::ErfGradOp{}));
  registry.add(ox, "HardSwishGrad", cuda, pair_factory(pm::HardSwishGradOp{}));
  registry.add(ox, "HardSigmoidGrad", cuda, [](const KernelInit& init) {
    const Node& n = init.node;
    return pair_f32(n, pm::HardSigmoidGradOp{n.attr_float("alpha", 0.2f), n.attr_float("beta", 0.5f)});
  });
  registry.add(ox, "GeluGrad", cuda, [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    if (gelu_approximation(init.node) == "tanh") return pair_f32(init.node, pm::GeluTanhGradOp{});
    return pair_f32(init.node, pm::GeluGradOp{});
  });
  registry.add(ox, "ClipGrad", cuda, [](const KernelInit& init) {
    auto [lo, hi] = clip_bounds(init.node, init.opset, 2);
    return pair_f32(init.node, pm::ClipGradOp{lo, hi});
  });
  registry.add(ox, "PowGrad", cuda, pow_grad_factory());
  registry.add(ox, "MaxMinGrad", cuda, max_min_grad_factory());
}

}  // namespace oxtrain::runtime
