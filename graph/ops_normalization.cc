// Op schemas of the normalization family (see graph/op_helpers.h): LayerNormalization and its
// gradient oxtrain.LayerNormalizationGrad, ReduceSum and its gradient oxtrain.ReduceSumGrad,
// ReduceMax and ReduceMin (their gradients are made of core ops).
// ReduceMean, MatMul and Softmax keep their core schemas (graph/ops.cc).
#include <algorithm>

#include "graph/op_helpers.h"

namespace oxtrain::graph::detail {
namespace {

std::string dims(const Shape& s) { return shape_str(s); }

// ---------------------------------------------------------------------------------------
// LayerNormalization (opset 17+): X, Scale, optional B -> Y, optional Mean, InvStdDev.
// Mean and InvStdDev have X's dims before axis and 1 from axis on; their type is U: float32
// (stash_type 1) for a float32/float16/bfloat16 X, float64 for a float64 X (oxtrain's
// reference precision: the statistics are computed in double then).

// `s` broadcasts unidirectionally to `x` (numpy rules, s never grows).
bool unidirectional(const Shape& s, const Shape& x) {
  if (s.size() > x.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const int64_t xd = x[x.size() - s.size() + i];
    if (s[i] != xd && s[i] != 1) return false;
  }
  return true;
}

DType stash_dtype(const Node& n, DType x) {
  const int64_t stash = n.attr_int("stash_type", 1);
  if (stash != 1)
    throw Error(n.describe() + ": stash_type " + std::to_string(stash) +
                " is not supported; oxtrain computes layer normalization statistics in float32 "
                "(stash_type 1) or, for a float64 X, in float64");
  return x == DType::f64 ? DType::f64 : DType::f32;
}

Shape stats_shape(const Shape& x, int64_t axis) {
  Shape s(x.begin(), x.begin() + axis);
  s.resize(x.size(), 1);
  return s;
}

void infer_layer_norm(Node& n, const InferContext& ctx) {
  if (n.domain.empty() && ctx.opset < 17)
    throw Error(n.describe() + ": LayerNormalization exists from opset 17; the model imports opset " +
                std::to_string(ctx.opset) + " (export it with opset 17 or later)");
  require_rank(n, 0, 1, "X");
  const Value& x = in(n, 0);
  const Shape& xs = in_shape(n, 0);
  if (!is_float(x.dtype))
    throw Error(n.describe() + ": X '" + x.name + "' is " + dtype_name(x.dtype) + "; LayerNormalization takes floats");
  const int64_t rank = static_cast<int64_t>(xs.size());
  const int64_t axis = norm_axis(n, n.attr_int("axis", -1), rank);
  for (size_t i = 1; i < 3; ++i) {
    const Value* v = n.input(i);
    if (!v) {
      if (i == 1) throw Error(n.describe() + ": input Scale is missing");
      continue;
    }
    const char* role = i == 1 ? "Scale" : "B";
    if (v->dtype != x.dtype)
      throw Error(n.describe() + ": " + role + " '" + v->name + "' is " + dtype_name(v->dtype) + " but X is " +
                  dtype_name(x.dtype));
    const Shape& s = in_shape(n, i);
    if (!unidirectional(s, xs))
      throw Error(n.describe() + ": " + role + " '" + v->name + "' of shape " + dims(s) +
                  " does not broadcast to X " + dims(xs) + "; give it the normalized shape " +
                  dims(Shape(xs.begin() + axis, xs.end())));
  }
  const DType u = stash_dtype(n, x.dtype);
  set_out(n, 0, x.dtype, xs);
  set_out(n, 1, u, stats_shape(xs, axis));
  set_out(n, 2, u, stats_shape(xs, axis));
}

// oxtrain.LayerNormalizationGrad: dY, X, Scale, Mean, InvStdDev (attribute axis, normalised)
// -> dX (X's shape), dScale and dB (X.shape[axis:], summed over the rows; autodiff reduces them
// to Scale's and B's own shapes).
void infer_layer_norm_grad(Node& n, const InferContext&) {
  const Shape& dy = in_shape(n, 0);
  const Shape& x = in_shape(n, 1);
  if (dy != x)
    throw Error(n.describe() + ": dY " + dims(dy) + " and X " + dims(x) + " differ");
  if (in(n, 0).dtype != in(n, 1).dtype || in(n, 2).dtype != in(n, 1).dtype)
    throw Error(n.describe() + ": dY, X and Scale must have one float type");
  if (x.empty()) throw Error(n.describe() + ": X must have at least one dimension");
  const int64_t axis = norm_axis(n, n.attr_int("axis", -1), static_cast<int64_t>(x.size()));
  const Shape stats = stats_shape(x, axis);
  for (size_t i = 3; i < 5; ++i)
    if (graph::shape_numel(in_shape(n, i)) != graph::shape_numel(stats))
      throw Error(n.describe() + ": " + (i == 3 ? "Mean" : "InvStdDev") + " '" + in(n, i).name + "' has shape " +
                  dims(in_shape(n, i)) + ", expected " + dims(stats));
  const DType t = in(n, 1).dtype;
  set_out(n, 0, t, x);
  set_out(n, 1, t, Shape(x.begin() + axis, x.end()));
  set_out(n, 2, t, Shape(x.begin() + axis, x.end()));
}

// ---------------------------------------------------------------------------------------
// ReduceSum: axes an attribute before opset 13, an optional constant input from 13 (with
// noop_with_empty_axes); ReduceMax and ReduceMin likewise from opset 18. Shape inference as
// ReduceMean's.

void infer_reduce(Node& n, const InferContext& ctx, int64_t axes_input_opset) {
  const Shape& x = in_shape(n, 0);
  if (ctx.opset >= axes_input_opset && n.input(1)) {
    const DType at = in(n, 1).dtype;
    if (at != DType::i64)
      throw Error(n.describe() + ": axes '" + in(n, 1).name + "' must be int64, not " + dtype_name(at));
  }
  const std::vector<int64_t> axes = axes_of(n, ctx, axes_input_opset);
  const bool keep = n.attr_int("keepdims", 1) != 0;
  const bool noop = ctx.opset >= axes_input_opset && n.attr_int("noop_with_empty_axes", 0) != 0;
  const int64_t rank = static_cast<int64_t>(x.size());
  std::vector<bool> reduce(x.size(), axes.empty() && !noop);
  for (int64_t a : axes) {
    const int64_t k = norm_axis(n, a, rank);
    if (reduce[k])
      throw Error(n.describe() + ": axes " + dims(axes) + " name axis " + std::to_string(k) + " twice");
    reduce[k] = true;
  }
  Shape out;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!reduce[i]) out.push_back(x[i]);
    else if (keep) out.push_back(1);
  }
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_reduce_sum(Node& n, const InferContext& ctx) { infer_reduce(n, ctx, 13); }
void infer_reduce_extreme(Node& n, const InferContext& ctx) {
  if (in(n, 0).dtype == DType::undefined)
    throw Error(n.describe() + ": data '" + in(n, 0).name + "' has no element type");
  infer_reduce(n, ctx, 18);
}

// oxtrain.ReduceSumGrad: dY (the reduced shape, kept dims or not) -> dX of input_shape, dY
// broadcast along the reduced axes (attribute axes, normalised and sorted; empty: all).
void infer_reduce_sum_grad(Node& n, const InferContext&) {
  if (!n.has_attr("input_shape")) throw Error(n.describe() + ": attribute input_shape is required");
  const Shape x = n.attr_ints("input_shape");
  std::vector<int64_t> axes = n.attr_ints("axes");
  const int64_t rank = static_cast<int64_t>(x.size());
  Shape kept = x;
  if (axes.empty()) std::fill(kept.begin(), kept.end(), 1);
  for (int64_t a : axes) kept[norm_axis(n, a, rank)] = 1;
  if (shape_numel(in_shape(n, 0)) != shape_numel(kept))
    throw Error(n.describe() + ": dY " + dims(in_shape(n, 0)) + " does not fit input_shape " + dims(x) +
                " reduced over axes " + dims(axes));
  set_out(n, 0, in(n, 0).dtype, x);
}

}  // namespace

std::vector<OpSchema> normalization_schemas() {
  return {
      {"", "LayerNormalization", infer_layer_norm, nullptr, {}, false, {.shares_input = {{0, 0}}}},
      // LayerNormalization at any opset: what import makes of the decomposed form
      // (graph::fuse_decomposed_layer_norm).
      {kOxtrainDomain, "LayerNormalization", infer_layer_norm, nullptr, {}, false, {.shares_input = {{0, 0}}}},
      {kOxtrainDomain, "LayerNormalizationGrad", infer_layer_norm_grad, nullptr},
      {"", "ReduceSum", infer_reduce_sum, nullptr, {}, false, {.compile_time = {1}}},
      {kOxtrainDomain, "ReduceSumGrad", infer_reduce_sum_grad, nullptr},
      {"", "ReduceMax", infer_reduce_extreme, nullptr, {}, false, {.compile_time = {1}}},
      {"", "ReduceMin", infer_reduce_extreme, nullptr, {}, false, {.compile_time = {1}}},
  };
}

}  // namespace oxtrain::graph::detail
