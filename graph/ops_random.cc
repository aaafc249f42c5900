// Op schemas of the random family (see graph/op_helpers.h): Dropout (every opset from 7),
// RandomUniform, RandomNormal, RandomUniformLike, RandomNormalLike, and the oxtrain-domain ops
// the training graph uses in their place (autodiff/rules_random.cc):
//   oxtrain.DropoutTraining(X, step) -> (Y, mask)   attributes ratio, key
//   oxtrain.DropoutGrad(dY, mask) -> dX             attribute ratio
//   oxtrain.RandomUniform(step) -> Y                attributes shape, dtype, low, high, key
//   oxtrain.RandomNormal(step) -> Y                 attributes shape, dtype, mean, scale, key
// `step` is the training graph's int64 scalar step input and `key` the node's generator key
// (graph/random.h, runtime/math/random.h).
//
// Dropout's ratio and training_mode inputs (opsets 12+) are read when the graph is built: one
// computed at run time is refused here, naming the node. The random ops' outputs take no
// gradient; a *Like op reads only its input's shape and type.
#include <cmath>

#include "base/checked.h"
#include "graph/op_helpers.h"
#include "graph/random.h"

namespace oxtrain::graph {
namespace detail {
namespace {

// A constant scalar input as a double; throws naming the node and what to do.
double constant_scalar(const Node& n, size_t i, const char* what) {
  const Value& v = in(n, i);
  if (!v.has_data())
    throw Error(n.describe() + ": its " + what + " input '" + v.name +
                "' is computed at run time; oxtrain reads it when the graph is built, so it "
                "must be a constant (an initializer or a Constant node)");
  const Tensor& t = *v.data;
  if (t.numel() != 1)
    throw Error(n.describe() + ": its " + what + " input '" + v.name + "' has shape " +
                shape_str(t.shape) + "; it must be a scalar");
  switch (t.dtype) {
    case DType::f32: return t.data<float>()[0];
    case DType::f64: return t.data<double>()[0];
    case DType::boolean:
    case DType::u8:
    case DType::i8:
    case DType::i32:
    case DType::i64:
    case DType::i16:
    case DType::u16:
    case DType::u32:
    case DType::u64: return static_cast<double>(t.to_int64()[0]);
    default:
      throw Error(n.describe() + ": its " + what + " input '" + v.name + "' is " +
                  dtype_name(t.dtype) + "; oxtrain reads float32, float64, bool or integer scalars");
  }
}

void require_float_output(const Node& n, DType dt, const std::string& whence) {
  if (dt != DType::f32 && dt != DType::f64 && dt != DType::f16 && dt != DType::bf16)
    throw Error(n.describe() + ": " + whence + " is " + dtype_name(dt) +
                "; the op makes floating-point values (float16, bfloat16, float32, float64)");
}

// The `dtype` attribute of the random ops (ONNX's numbering), or `fallback` without it.
DType random_dtype(const Node& n, DType fallback) {
  if (!n.has_attr("dtype")) return fallback;
  int64_t code = n.attr_int("dtype", 1);
  DType dt = code >= 0 && code <= 1000 ? dtype_from_onnx(static_cast<int>(code)) : DType::undefined;
  if (dt == DType::undefined)
    throw Error(n.describe() + ": dtype " + std::to_string(code) + " is not a type oxtrain handles");
  require_float_output(n, dt, "its dtype attribute");
  return dt;
}

void check_distribution(const Node& n, bool normal) {
  if (normal) {
    float scale = n.attr_float("scale", 1.0f), mean = n.attr_float("mean", 0.0f);
    if (!std::isfinite(mean) || !std::isfinite(scale) || scale < 0)
      throw Error(n.describe() + ": mean " + number_text(mean) + " and scale " + number_text(scale) +
                  " must be finite, the scale not negative");
  } else {
    float low = n.attr_float("low", 0.0f), high = n.attr_float("high", 1.0f);
    if (!std::isfinite(low) || !std::isfinite(high) || !(low <= high) || !std::isfinite(high - low))
      throw Error(n.describe() + ": low " + number_text(low) + " and high " + number_text(high) +
                  " must be finite with low <= high");
  }
}

Shape shape_attr(const Node& n) {
  if (!n.has_attr("shape")) throw Error(n.describe() + ": attribute shape is required");
  Shape s = n.attr_ints("shape");
  for (int64_t d : s)
    if (d < 0) throw Error(n.describe() + ": shape " + shape_str(s) + " has a negative dimension");
  numel_or_throw(s, n.describe() + ": shape");
  return s;
}

void require_step(const Node& n, size_t i) {
  const Value& step = in(n, i);
  if (step.dtype != DType::i64 || (step.rank_known && shape_numel(step.shape) != 1))
    throw Error(n.describe() + ": the step input '" + step.name + "' is " + dtype_name(step.dtype) + " " +
                step.shape_string() + "; it must be an int64 scalar");
}

void infer_dropout(Node& n, const InferContext& ctx) {
  const Value& x = in(n, 0);
  const Shape& s = in_shape(n, 0);
  require_float_output(n, x.dtype, "its input '" + x.name + "'");
  if (ctx.opset < 12 && n.inputs.size() > 1)
    throw Error(n.describe() + ": opset " + std::to_string(ctx.opset) +
                " Dropout takes one input (the ratio is an attribute until opset 12)");
  dropout_mode(n, ctx.opset);  // the ratio's range; constant ratio and training_mode inputs
  set_out(n, 0, x.dtype, s);
  // The mask is bool since opset 10; before, it has the input's type.
  set_out(n, 1, ctx.opset >= 10 ? DType::boolean : x.dtype, s);
}

void infer_random_like(Node& n, const InferContext&, bool normal) {
  const Value& x = in(n, 0);
  const Shape& s = in_shape(n, 0);
  DType dt = random_dtype(n, x.dtype);
  if (!n.has_attr("dtype")) require_float_output(n, dt, "its input '" + x.name + "' (the output's type without a dtype attribute)");
  check_distribution(n, normal);
  set_out(n, 0, dt, s);
}

void infer_random(Node& n, const InferContext&, bool normal) {
  if (!n.inputs.empty()) throw Error(n.describe() + ": takes no inputs");
  DType dt = random_dtype(n, DType::f32);
  check_distribution(n, normal);
  set_out(n, 0, dt, shape_attr(n));
}

void infer_dropout_training(Node& n, const InferContext&) {
  const Value& x = in(n, 0);
  const Shape& s = in_shape(n, 0);
  require_float_output(n, x.dtype, "its input '" + x.name + "'");
  require_step(n, 1);
  float ratio = n.attr_float("ratio", 0.5f);
  if (!(ratio >= 0 && ratio <= 1))
    throw Error(n.describe() + ": ratio " + number_text(ratio) + " is outside [0, 1]");
  set_out(n, 0, x.dtype, s);
  set_out(n, 1, DType::boolean, s);
}

void infer_dropout_grad(Node& n, const InferContext&) {
  const Value& dy = in(n, 0);
  const Value& mask = in(n, 1);
  const Shape& s = in_shape(n, 0);
  if (mask.dtype != DType::boolean || in_shape(n, 1) != s)
    throw Error(n.describe() + ": the mask '" + mask.name + "' is " + dtype_name(mask.dtype) + " " +
                mask.shape_string() + "; it must be bool of dY's shape " + shape_str(s));
  float ratio = n.attr_float("ratio", 0.5f);
  if (!(ratio >= 0 && ratio <= 1))
    throw Error(n.describe() + ": ratio " + number_text(ratio) + " is outside [0, 1]");
  set_out(n, 0, dy.dtype, s);
}

void infer_random_training(Node& n, const InferContext&, bool normal) {
  if (n.inputs.size() != 1) throw Error(n.describe() + ": takes one input, the step");
  require_step(n, 0);
  if (!n.has_attr("dtype")) throw Error(n.describe() + ": attribute dtype is required");
  DType dt = random_dtype(n, DType::f32);
  check_distribution(n, normal);
  set_out(n, 0, dt, shape_attr(n));
}

}  // namespace

std::vector<OpSchema> random_schemas() {
  auto bind = [](void (*f)(Node&, const InferContext&, bool), bool normal) {
    return [f, normal](Node& n, const InferContext& ctx) { f(n, ctx, normal); };
  };
  return {
      {"", "Dropout", infer_dropout, nullptr, {}, false, {.compile_time = {1, 2}, .shares_input = {{0, 0}}}},
      {"", "RandomUniform", bind(infer_random, false), nullptr},
      {"", "RandomNormal", bind(infer_random, true), nullptr},
      {"", "RandomUniformLike", bind(infer_random_like, false), nullptr, {}, false, {.non_trainable = {0}}},
      {"", "RandomNormalLike", bind(infer_random_like, true), nullptr, {}, false, {.non_trainable = {0}}},
      {kOxtrainDomain, "DropoutTraining", infer_dropout_training, nullptr, {}, false,
       {.non_trainable = {1}, .shares_input = {{0, 0}}}},
      {kOxtrainDomain, "DropoutGrad", infer_dropout_grad, nullptr, {}, false,
       {.non_trainable = {1}, .shares_input = {{0, 0}}}},
      {kOxtrainDomain, "RandomUniform", bind(infer_random_training, false), nullptr, {}, false, {.non_trainable = {0}}},
      {kOxtrainDomain, "RandomNormal", bind(infer_random_training, true), nullptr, {}, false, {.non_trainable = {0}}},
  };
}

}  // namespace detail

DropoutMode dropout_mode(const Node& n, int64_t opset) {
  DropoutMode m;
  if (opset >= 12) {
    if (n.input(1)) m.ratio = static_cast<float>(detail::constant_scalar(n, 1, "ratio"));
    if (n.input(2)) m.training = detail::constant_scalar(n, 2, "training_mode") != 0;
  } else {
    m.ratio = n.attr_float("ratio", 0.5f);
    m.training = n.attr_int("is_test", 0) == 0;
  }
  if (!(m.ratio >= 0 && m.ratio <= 1))
    throw Error(n.describe() + ": ratio " + detail::number_text(m.ratio) +
                " is outside [0, 1] (the fraction of elements dropped while training)");
  return m;
}

}  // namespace oxtrain::graph
