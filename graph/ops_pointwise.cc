// Op schemas of the pointwise family (see graph/op_helpers.h): element-wise math and
// activations, comparisons and logic, Where, Max/Min, Mod, Pow, and the oxtrain gradient ops
// their rules emit.
//
// Every op here folds at import when its inputs are constants (exporters compute shapes with
// Equal, Where, Mod, Sqrt, Cast ...): folding evaluates in double (float types) or int64
// (integer types) with the runtime's per-element math (runtime/math/pointwise.h) and stores
// the result in the op's output type.
#include <cmath>
#include <cstring>
#include <limits>

#include "base/text.h"
#include "graph/op_helpers.h"
#include "runtime/math/pointwise.h"

namespace oxtrain::graph::detail {

// Cast's core inference and folding (graph/ops.cc).
void infer_cast(Node& n, const InferContext& ctx);
void fold_cast(Node& n, const InferContext& ctx);

namespace {

namespace pm = oxtrain::runtime::math;

std::string shape_text(const Shape& s) { return shape_str(s); }

bool is_integer(DType dt) {
  return dt == DType::i64 || dt == DType::i32 || dt == DType::i16 || dt == DType::i8 || dt == DType::u8 ||
         dt == DType::u16 || dt == DType::u32 || dt == DType::u64;
}
// Half types too: mixed precision (graph::to_mixed_precision) hands them to the ops whose
// HalfPolicy follows their input, and the kernels' half wrappers compute them in float32.
bool is_numeric(DType dt) { return is_float(dt) || is_integer(dt); }

// ---- element access for folding --------------------------------------------------------

double get_f(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32: return t.data<float>()[i];
    case DType::f64: return t.data<double>()[i];
    case DType::i64: return static_cast<double>(t.data<int64_t>()[i]);
    case DType::i32: return t.data<int32_t>()[i];
    case DType::i8: return t.data<int8_t>()[i];
    case DType::i16: return t.data<int16_t>()[i];
    case DType::u16: return t.data<uint16_t>()[i];
    case DType::u32: return t.data<uint32_t>()[i];
    case DType::u64: return static_cast<double>(t.data<uint64_t>()[i]);
    case DType::u8:
    case DType::boolean: return t.data<uint8_t>()[i];
    default: throw Error(std::string("cannot fold elements of type ") + dtype_name(t.dtype));
  }
}

// Folding computes integers in int64: a uint64 above its range is refused, not misread.
int64_t get_i(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::i64: return t.data<int64_t>()[i];
    case DType::i32: return t.data<int32_t>()[i];
    case DType::i8: return t.data<int8_t>()[i];
    case DType::i16: return t.data<int16_t>()[i];
    case DType::u16: return t.data<uint16_t>()[i];
    case DType::u32: return t.data<uint32_t>()[i];
    case DType::u64:
      if (t.data<uint64_t>()[i] > static_cast<uint64_t>(INT64_MAX))
        throw Error("cannot fold the uint64 value " + std::to_string(t.data<uint64_t>()[i]) + " (above 2^63 - 1)");
      return static_cast<int64_t>(t.data<uint64_t>()[i]);
    case DType::u8:
    case DType::boolean: return t.data<uint8_t>()[i];
    default: throw Error(std::string("cannot fold elements of type ") + dtype_name(t.dtype));
  }
}

// Stores a float result (float types) in output element i.
void put_f(Tensor& t, int64_t i, double v) {
  if (t.dtype == DType::f32) t.data<float>()[i] = static_cast<float>(v);
  else t.data<double>()[i] = v;
}

// Stores an integer result, wrapped to the output's integer type (as the runtime's kernels).
void put_i(Tensor& t, int64_t i, int64_t v) {
  switch (t.dtype) {
    case DType::i64: t.data<int64_t>()[i] = v; break;
    case DType::i32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::i8: t.data<int8_t>()[i] = static_cast<int8_t>(v); break;
    case DType::i16: t.data<int16_t>()[i] = static_cast<int16_t>(v); break;
    case DType::u16: t.data<uint16_t>()[i] = static_cast<uint16_t>(v); break;
    case DType::u32: t.data<uint32_t>()[i] = static_cast<uint32_t>(v); break;
    case DType::u64: t.data<uint64_t>()[i] = static_cast<uint64_t>(v); break;
    default: t.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
  }
}

// Maps flat indices of a broadcast output to flat indices of each input.
struct BroadcastMap {
  Shape out;
  std::vector<std::vector<int64_t>> strides;  // per input, per output dim (0: broadcast)
  int64_t index(size_t k, int64_t flat) const {
    int64_t idx = 0;
    for (int64_t d = static_cast<int64_t>(out.size()) - 1; d >= 0 && flat > 0; --d) {
      idx += (flat % out[d]) * strides[k][d];
      flat /= out[d];
    }
    return idx;
  }
};

BroadcastMap broadcast_map(const Node& n, const std::vector<const Tensor*>& ins) {
  BroadcastMap m;
  for (const Tensor* t : ins) m.out = broadcast_shapes(n, m.out, t->shape);
  for (const Tensor* t : ins) {
    std::vector<int64_t> own = strides_of(t->shape);
    std::vector<int64_t> st(m.out.size(), 0);
    size_t lead = m.out.size() - t->shape.size();
    for (size_t d = 0; d < t->shape.size(); ++d)
      if (t->shape[d] != 1) st[lead + d] = own[d];
    m.strides.push_back(std::move(st));
  }
  return m;
}

std::vector<const Tensor*> all_data(const Node& n) {
  std::vector<const Tensor*> ins;
  for (size_t i = 0; i < n.inputs.size(); ++i) ins.push_back(&in_data(n, i));
  return ins;
}

void require_type(const Node& n, size_t i, bool ok, const char* what) {
  if (!ok)
    throw Error(n.describe() + ": input '" + in(n, i).name + "' is " + dtype_name(in(n, i).dtype) +
                "; " + what);
}

void same_types(const Node& n, size_t first, size_t count) {
  DType dt = in(n, first).dtype;
  for (size_t i = first + 1; i < first + count; ++i)
    if (in(n, i).dtype != dt)
      throw Error(n.describe() + ": inputs '" + in(n, first).name + "' (" + dtype_name(dt) +
                  ") and '" + in(n, i).name + "' (" + dtype_name(in(n, i).dtype) +
                  ") must have one type; insert a Cast");
}

Shape broadcast_all(const Node& n, size_t first = 0) {
  Shape s = in_shape(n, first);
  for (size_t i = first + 1; i < n.inputs.size(); ++i)
    if (n.input(i)) s = broadcast_shapes(n, s, in_shape(n, i));
  return s;
}

// ---- unary math ----------------------------------------------------------------------------

enum class Domain { floats, signed_numbers };

struct UnaryDef {
  const char* op;
  int64_t since;
  Domain domain;
  double (*f)(double);
  int64_t (*i)(int64_t);  // integer form (signed_numbers), else nullptr
};

void check_since(const Node& n, const InferContext& ctx, int64_t since) {
  if (ctx.opset < since)
    throw Error(n.describe() + ": " + n.op_type + " exists from opset " + std::to_string(since) +
                " of ai.onnx, but the model imports opset " + std::to_string(ctx.opset));
}

void infer_unary(Node& n, const InferContext& ctx, const UnaryDef& def) {
  check_since(n, ctx, def.since);
  DType dt = in(n, 0).dtype;
  bool ok = def.domain == Domain::floats ? is_float(dt) : (is_numeric(dt) && dt != DType::u8);
  require_type(n, 0, ok, def.domain == Domain::floats ? "expected a float type" : "expected a signed number type");
  set_out(n, 0, dt, in_shape(n, 0));
}

void fold_unary(Node& n, const InferContext& ctx, const UnaryDef& def) {
  infer_unary(n, ctx, def);
  const Tensor& x = in_data(n, 0);
  Tensor& y = out_data(n, 0, x.dtype, x.shape);
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (is_float(x.dtype)) put_f(y, i, def.f(get_f(x, i)));
    else put_i(y, i, def.i(get_i(x, i)));
  }
}

OpSchema unary_schema(const UnaryDef& def, bool trainable = true) {
  OpSchema s{"", def.op,
             [def](Node& n, const InferContext& ctx) { infer_unary(n, ctx, def); },
             [def](Node& n, const InferContext& ctx) { fold_unary(n, ctx, def); }};
  s.facts.shares_input = {{0, 0}};
  if (!trainable) s.facts.non_trainable = {0};
  return s;
}

// ---- attribute-driven activations --------------------------------------------------------

float attr_or(const Node& n, const char* key, float fallback) { return n.attr_float(key, fallback); }

std::string gelu_mode(const Node& n) {
  std::string a = n.attr_string("approximate", "none");
  if (a != "none" && a != "tanh")
    throw Error(n.describe() + ": approximate='" + escape_name(a) + "' is not one of 'none', 'tanh'");
  return a;
}

// ---- Clip ----------------------------------------------------------------------------------

// The bounds of a Clip node: attributes before opset 11, constant scalar inputs from 11 (a
// missing one does not limit). Throws naming the node when a bound is computed at run time.
std::pair<double, double> clip_bounds(const Node& n, int64_t opset) {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  if (opset < 11) {
    if (n.has_attr("min")) lo = n.attr_float("min", 0);
    if (n.has_attr("max")) hi = n.attr_float("max", 0);
    return {lo, hi};
  }
  const char* names[] = {"", "min", "max"};
  for (size_t i = 1; i <= 2; ++i) {
    const Value* v = n.input(i);
    if (!v) continue;
    if (!v->data)
      throw Error(n.describe() + ": " + names[i] + " '" + v->name +
                  "' is computed at run time; oxtrain needs Clip's bounds as constants");
    if (v->data->numel() != 1)
      throw Error(n.describe() + ": " + names[i] + " '" + v->name + "' has shape " +
                  shape_text(v->data->shape) + "; a bound must be a scalar");
    (i == 1 ? lo : hi) = get_f(*v->data, 0);
  }
  return {lo, hi};
}

void infer_clip(Node& n, const InferContext& ctx) {
  DType dt = in(n, 0).dtype;
  require_type(n, 0, is_numeric(dt), "Clip takes numbers");
  if (ctx.opset >= 11)
    for (size_t i = 1; i <= 2; ++i) {
      const Value* v = n.input(i);
      if (!v) continue;
      if (v->dtype != dt)
        throw Error(n.describe() + ": bound '" + v->name + "' is " + dtype_name(v->dtype) +
                    " but the input is " + dtype_name(dt));
      if (v->rank_known && shape_known(v->shape) && shape_numel(v->shape) != 1)
        throw Error(n.describe() + ": bound '" + v->name + "' has shape " + shape_text(v->shape) +
                    "; a bound must be a scalar");
    }
  set_out(n, 0, dt, in_shape(n, 0));
}

void fold_clip(Node& n, const InferContext& ctx) {
  infer_clip(n, ctx);
  auto [lo, hi] = clip_bounds(n, ctx.opset);
  const Tensor& x = in_data(n, 0);
  Tensor& y = out_data(n, 0, x.dtype, x.shape);
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (is_float(x.dtype)) {
      put_f(y, i, pm::clip(get_f(x, i), lo, hi));
    } else {
      int64_t v = get_i(x, i);
      if (static_cast<double>(v) < lo) v = static_cast<int64_t>(lo);
      if (static_cast<double>(v) > hi) v = static_cast<int64_t>(hi);
      put_i(y, i, v);
    }
  }
}

// ---- binary and variadic ---------------------------------------------------------------

struct CompareDef {
  const char* op;
  int64_t since;
  pm::Compare c;
};

void infer_compare(Node& n, const InferContext& ctx, const CompareDef& def) {
  check_since(n, ctx, def.since);
  same_types(n, 0, 2);
  DType dt = in(n, 0).dtype;
  require_type(n, 0, is_numeric(dt) || dt == DType::boolean, "expected numbers or bools");
  set_out(n, 0, DType::boolean, broadcast_shapes(n, in_shape(n, 0), in_shape(n, 1)));
}

void fold_compare(Node& n, const InferContext& ctx, const CompareDef& def) {
  infer_compare(n, ctx, def);
  auto ins = all_data(n);
  BroadcastMap m = broadcast_map(n, ins);
  Tensor& y = out_data(n, 0, DType::boolean, m.out);
  bool floats = is_float(ins[0]->dtype);
  for (int64_t i = 0; i < y.numel(); ++i) {
    int64_t a = m.index(0, i), b = m.index(1, i);
    y.data<uint8_t>()[i] = floats ? pm::compare(def.c, get_f(*ins[0], a), get_f(*ins[1], b))
                                  : pm::compare(def.c, get_i(*ins[0], a), get_i(*ins[1], b));
  }
}

void infer_not(Node& n, const InferContext&) {
  require_type(n, 0, in(n, 0).dtype == DType::boolean, "Not takes bool");
  set_out(n, 0, DType::boolean, in_shape(n, 0));
}

void fold_not(Node& n, const InferContext& ctx) {
  infer_not(n, ctx);
  const Tensor& x = in_data(n, 0);
  Tensor& y = out_data(n, 0, DType::boolean, x.shape);
  for (int64_t i = 0; i < x.numel(); ++i) y.data<uint8_t>()[i] = x.data<uint8_t>()[i] == 0;
}

void infer_logic(Node& n, const InferContext&) {
  for (size_t i = 0; i < 2; ++i)
    require_type(n, i, in(n, i).dtype == DType::boolean, "logical ops take bool");
  set_out(n, 0, DType::boolean, broadcast_shapes(n, in_shape(n, 0), in_shape(n, 1)));
}

void fold_logic(Node& n, const InferContext& ctx, pm::Logic l) {
  infer_logic(n, ctx);
  auto ins = all_data(n);
  BroadcastMap m = broadcast_map(n, ins);
  Tensor& y = out_data(n, 0, DType::boolean, m.out);
  for (int64_t i = 0; i < y.numel(); ++i)
    y.data<uint8_t>()[i] =
        pm::logic(l, ins[0]->data<uint8_t>()[m.index(0, i)], ins[1]->data<uint8_t>()[m.index(1, i)]);
}

void infer_where(Node& n, const InferContext& ctx) {
  check_since(n, ctx, 9);
  require_type(n, 0, in(n, 0).dtype == DType::boolean, "Where's condition must be bool");
  same_types(n, 1, 2);
  Shape s = broadcast_shapes(n, in_shape(n, 0), in_shape(n, 1));
  s = broadcast_shapes(n, s, in_shape(n, 2));
  set_out(n, 0, in(n, 1).dtype, s);
}

void fold_where(Node& n, const InferContext& ctx) {
  infer_where(n, ctx);
  auto ins = all_data(n);
  BroadcastMap m = broadcast_map(n, ins);
  Tensor& y = out_data(n, 0, ins[1]->dtype, m.out);
  size_t es = dtype_size(y.dtype);
  for (int64_t i = 0; i < y.numel(); ++i) {
    bool c = ins[0]->data<uint8_t>()[m.index(0, i)] != 0;
    size_t k = c ? 1 : 2;
    std::memcpy(y.bytes.data() + i * es, ins[k]->bytes.data() + m.index(k, i) * es, es);
  }
}

// Max, Min (variadic), Mod, Pow: numbers of one type, broadcast.
void infer_numeric_broadcast(Node& n, const InferContext& ctx) {
  if (n.inputs.empty()) throw Error(n.describe() + ": needs at least one input");
  same_types(n, 0, n.inputs.size());
  require_type(n, 0, is_numeric(in(n, 0).dtype), "expected numbers");
  set_out(n, 0, in(n, 0).dtype, broadcast_all(n));
}

template <typename FF, typename FI>
void fold_numeric(Node& n, DType out_type, FF f, FI fi) {
  auto ins = all_data(n);
  BroadcastMap m = broadcast_map(n, ins);
  Tensor& y = out_data(n, 0, out_type, m.out);
  bool floats = is_float(ins[0]->dtype);
  for (int64_t i = 0; i < y.numel(); ++i) {
    if (floats) {
      double acc = get_f(*ins[0], m.index(0, i));
      for (size_t k = 1; k < ins.size(); ++k) acc = f(acc, get_f(*ins[k], m.index(k, i)));
      put_f(y, i, acc);
    } else {
      int64_t acc = get_i(*ins[0], m.index(0, i));
      for (size_t k = 1; k < ins.size(); ++k) acc = fi(acc, get_i(*ins[k], m.index(k, i)));
      put_i(y, i, acc);
    }
  }
}

OpFacts variadic_facts(const Node& n) {
  OpFacts f;
  for (size_t i = 0; i < n.inputs.size(); ++i) f.shares_input.push_back({0, i});
  return f;
}

void infer_mod(Node& n, const InferContext& ctx) {
  check_since(n, ctx, 10);
  if (n.inputs.size() != 2) throw Error(n.describe() + ": needs two inputs");
  infer_numeric_broadcast(n, ctx);
  int64_t fmod = n.attr_int("fmod", 0);
  if (fmod != 0 && fmod != 1)
    throw Error(n.describe() + ": fmod=" + std::to_string(fmod) + " must be 0 or 1");
}

void fold_mod(Node& n, const InferContext& ctx) {
  infer_mod(n, ctx);
  bool fmod = n.attr_int("fmod", 0) != 0;
  const std::string what = n.describe();
  fold_numeric(
      n, in(n, 0).dtype, [fmod](double a, double b) { return pm::mod_float(a, b, fmod); },
      [fmod, what](int64_t a, int64_t b) {
        if (b == 0) throw Error(what + ": the folded integer Mod divides by zero");
        return pm::mod_int(a, b, fmod);
      });
}

// Pow: the base's type; from opset 12 the exponent may be of another number type.
void infer_pow(Node& n, const InferContext& ctx) {
  DType a = in(n, 0).dtype, b = in(n, 1).dtype;
  require_type(n, 0, is_numeric(a), "Pow takes numbers");
  require_type(n, 1, is_numeric(b), "Pow takes numbers");
  if (ctx.opset < 12 && a != b) same_types(n, 0, 2);
  set_out(n, 0, a, broadcast_shapes(n, in_shape(n, 0), in_shape(n, 1)));
}

void fold_pow(Node& n, const InferContext& ctx) {
  infer_pow(n, ctx);
  auto ins = all_data(n);
  BroadcastMap m = broadcast_map(n, ins);
  Tensor& y = out_data(n, 0, ins[0]->dtype, m.out);
  for (int64_t i = 0; i < y.numel(); ++i) {
    double v = std::pow(get_f(*ins[0], m.index(0, i)), get_f(*ins[1], m.index(1, i)));
    if (is_float(y.dtype)) {
      put_f(y, i, v);
    } else {
      if (!std::isfinite(v) || std::fabs(v) > 9.2e18)
        throw Error(n.describe() + ": the folded integer power " + number_text(v) +
                    " is not a finite int64");
      put_i(y, i, static_cast<int64_t>(v));
    }
  }
}

// Cast: the input takes a gradient only when both sides are float types.
OpFacts cast_facts(const Node& n) {
  OpFacts f;
  DType to = dtype_from_onnx(static_cast<int>(n.attr_int("to", 0)));
  const Value* x = n.input(0);
  bool float_to_float = is_float(to) && (!x || x->dtype == DType::undefined || is_float(x->dtype));
  if (!float_to_float) f.non_trainable = {0};
  return f;
}

// ---- the oxtrain gradient ops --------------------------------------------------------------

// dX from (dY, saved) of one shape: like input 0.
void infer_grad_pair(Node& n, const InferContext&) {
  const Shape& dy = in_shape(n, 0);
  if (in_shape(n, 1) != dy || in(n, 1).dtype != in(n, 0).dtype)
    throw Error(n.describe() + ": dY " + dtype_name(in(n, 0).dtype) + " " + shape_text(dy) +
                " and '" + in(n, 1).name + "' " + dtype_name(in(n, 1).dtype) + " " +
                shape_text(in_shape(n, 1)) + " must agree in type and shape");
  set_out(n, 0, in(n, 0).dtype, dy);
}

// PowGrad(dY, A, B), attribute wrt (0: base, 1: exponent): the broadcast shape.
void infer_pow_grad(Node& n, const InferContext&) {
  Shape s = broadcast_shapes(n, in_shape(n, 1), in_shape(n, 2));
  if (in_shape(n, 0) != s)
    throw Error(n.describe() + ": dY " + shape_text(in_shape(n, 0)) + " is not the broadcast shape " +
                shape_text(s) + " of the base and exponent");
  int64_t wrt = n.attr_int("wrt", 0);
  if (wrt != 0 && wrt != 1) throw Error(n.describe() + ": wrt must be 0 or 1");
  set_out(n, 0, in(n, 0).dtype, s);
}

// MaxMinGrad(dY, X0..Xn-1), attribute mode ("max" | "min"): n outputs of dY's shape.
void infer_max_min_grad(Node& n, const InferContext&) {
  if (n.inputs.size() < 2 || n.outputs.size() + 1 != n.inputs.size())
    throw Error(n.describe() + ": expects dY, X0..Xn-1 and n outputs");
  std::string mode = n.attr_string("mode", "");
  if (mode != "max" && mode != "min")
    throw Error(n.describe() + ": mode must be 'max' or 'min', got '" + escape_name(mode) + "'");
  Shape s = broadcast_all(n, 1);
  if (in_shape(n, 0) != s)
    throw Error(n.describe() + ": dY " + shape_text(in_shape(n, 0)) + " is not the broadcast shape " +
                shape_text(s));
  for (size_t i = 0; i < n.outputs.size(); ++i) set_out(n, i, in(n, 0).dtype, s);
}

}  // namespace

std::vector<OpSchema> pointwise_schemas() {
  using F = std::function<void(Node&, const InferContext&)>;
  std::vector<OpSchema> r;
  auto no_int = static_cast<int64_t (*)(int64_t)>(nullptr);
  const UnaryDef unary[] = {
      {"Sigmoid", 6, Domain::floats, [](double x) { return pm::sigmoid(x); }, no_int},
      {"Tanh", 6, Domain::floats, [](double x) { return std::tanh(x); }, no_int},
      {"HardSwish", 14, Domain::floats, [](double x) { return pm::hard_swish(x); }, no_int},
      {"Erf", 9, Domain::floats, [](double x) { return std::erf(x); }, no_int},
      {"Sqrt", 6, Domain::floats, [](double x) { return std::sqrt(x); }, no_int},
      {"Exp", 6, Domain::floats, [](double x) { return std::exp(x); }, no_int},
      {"Log", 6, Domain::floats, [](double x) { return std::log(x); }, no_int},
      {"Reciprocal", 6, Domain::floats, [](double x) { return 1.0 / x; }, no_int},
      {"Abs", 6, Domain::signed_numbers, [](double x) { return pm::abs_of(x); },
       [](int64_t x) { return x < 0 ? -x : x; }},
  };
  for (const UnaryDef& d : unary) r.push_back(unary_schema(d));
  // Floor, Ceil and Sign have a zero gradient: their input is not trainable, so no gradient
  // flows through them (PyTorch's zeros, without computing them).
  const UnaryDef zero_grad[] = {
      {"Floor", 6, Domain::floats, [](double x) { return std::floor(x); }, no_int},
      {"Ceil", 6, Domain::floats, [](double x) { return std::ceil(x); }, no_int},
      {"Sign", 9, Domain::signed_numbers, [](double x) { return pm::sign_of(x); },
       [](int64_t x) { return int64_t{x > 0} - int64_t{x < 0}; }},
  };
  for (const UnaryDef& d : zero_grad) r.push_back(unary_schema(d, false));
  // Neg (core op): its schema again, with folding and integers.
  r.push_back(unary_schema({"Neg", 6, Domain::signed_numbers, [](double x) { return -x; },
                            [](int64_t x) { return -x; }}));

  // HardSigmoid (alpha 0.2, beta 0.5 by default) and Gelu (opset 20).
  {
    UnaryDef d{"HardSigmoid", 6, Domain::floats, nullptr, no_int};
    OpSchema s = unary_schema(d);
    s.fold = [d](Node& n, const InferContext& ctx) {
      infer_unary(n, ctx, d);
      double alpha = attr_or(n, "alpha", 0.2f), beta = attr_or(n, "beta", 0.5f);
      const Tensor& x = in_data(n, 0);
      Tensor& y = out_data(n, 0, x.dtype, x.shape);
      for (int64_t i = 0; i < x.numel(); ++i) put_f(y, i, pm::hard_sigmoid(get_f(x, i), alpha, beta));
    };
    r.push_back(s);
  }
  {
    UnaryDef d{"Gelu", 20, Domain::floats, nullptr, no_int};
    OpSchema s = unary_schema(d);
    s.infer = [d](Node& n, const InferContext& ctx) {
      gelu_mode(n);
      infer_unary(n, ctx, d);
    };
    s.fold = [d](Node& n, const InferContext& ctx) {
      bool tanh = gelu_mode(n) == "tanh";
      infer_unary(n, ctx, d);
      const Tensor& x = in_data(n, 0);
      Tensor& y = out_data(n, 0, x.dtype, x.shape);
      for (int64_t i = 0; i < x.numel(); ++i)
        put_f(y, i, tanh ? pm::gelu_tanh(get_f(x, i)) : pm::gelu(get_f(x, i)));
    };
    r.push_back(s);
  }

  // Clip: bounds are compile-time inputs from opset 11.
  r.push_back({"", "Clip", infer_clip, fold_clip, {}, false,
               {.compile_time = {1, 2}, .shares_input = {{0, 0}}}});

  // Comparisons and logic: bool results, no gradient through them.
  const CompareDef compares[] = {
      {"Equal", 7, pm::Compare::equal},
      {"Less", 7, pm::Compare::less},
      {"Greater", 7, pm::Compare::greater},
      {"LessOrEqual", 12, pm::Compare::less_equal},
      {"GreaterOrEqual", 12, pm::Compare::greater_equal},
  };
  for (const CompareDef& d : compares)
    r.push_back({"", d.op, [d](Node& n, const InferContext& c) { infer_compare(n, c, d); },
                 [d](Node& n, const InferContext& c) { fold_compare(n, c, d); }, {}, false,
                 {.non_trainable = {0, 1}}});
  r.push_back({"", "Not", infer_not, fold_not, {}, false, {.non_trainable = {0}, .shares_input = {{0, 0}}}});
  const std::pair<const char*, pm::Logic> logic[] = {
      {"And", pm::Logic::land}, {"Or", pm::Logic::lor}, {"Xor", pm::Logic::lxor}};
  for (const auto& [op, l] : logic) {
    pm::Logic lg = l;
    r.push_back({"", op, infer_logic, [lg](Node& n, const InferContext& c) { fold_logic(n, c, lg); },
                 {}, false, {.non_trainable = {0, 1}}});
  }

  r.push_back({"", "Where", infer_where, fold_where, {}, false,
               {.non_trainable = {0}, .shares_input = {{0, 1}, {0, 2}}}});

  {
    OpSchema cast{"", "Cast", infer_cast, fold_cast};
    cast.facts_of = cast_facts;
    r.push_back(cast);
  }

  F fold_max = [](Node& n, const InferContext& ctx) {
    infer_numeric_broadcast(n, ctx);
    fold_numeric(n, in(n, 0).dtype, [](double a, double b) { return pm::max_of(a, b); },
                 [](int64_t a, int64_t b) { return std::max(a, b); });
  };
  F fold_min = [](Node& n, const InferContext& ctx) {
    infer_numeric_broadcast(n, ctx);
    fold_numeric(n, in(n, 0).dtype, [](double a, double b) { return pm::min_of(a, b); },
                 [](int64_t a, int64_t b) { return std::min(a, b); });
  };
  r.push_back({"", "Max", infer_numeric_broadcast, fold_max, {}, false, {}, variadic_facts});
  r.push_back({"", "Min", infer_numeric_broadcast, fold_min, {}, false, {}, variadic_facts});
  r.push_back({"", "Mod", infer_mod, fold_mod, {}, false, {.shares_input = {{0, 0}, {0, 1}}}});
  r.push_back({"", "Pow", infer_pow, fold_pow, {}, false, {.shares_input = {{0, 0}}}});

  // Gradient ops. (dY, saved) -> dX, elementwise; dX may take dY's buffer.
  const char* pair_grads[] = {"SigmoidGrad", "TanhGrad", "HardSigmoidGrad", "HardSwishGrad",
                              "ErfGrad", "GeluGrad", "SqrtGrad"};
  for (const char* op : pair_grads)
    r.push_back({kOxtrainDomain, op, infer_grad_pair, nullptr, {}, false,
                 {.shares_input = {{0, 0}, {0, 1}}}});
  // ClipGrad(dY, X, min?, max?): the bounds as Clip's, constant.
  r.push_back({kOxtrainDomain, "ClipGrad", infer_grad_pair, nullptr, {}, false,
               {.compile_time = {2, 3}, .shares_input = {{0, 0}, {0, 1}}}});
  r.push_back({kOxtrainDomain, "PowGrad", infer_pow_grad, nullptr});
  r.push_back({kOxtrainDomain, "MaxMinGrad", infer_max_min_grad, nullptr});
  return r;
}

}  // namespace oxtrain::graph::detail
