// Gradient rules of the normalization family (see autodiff/rule_families.h):
// LayerNormalization (oxtrain.LayerNormalizationGrad from the saved statistics), ReduceSum
// (oxtrain.ReduceSumGrad), and MatMul, which replaces the core rule to take 1-D operands and
// to compute the gradient of a matrix shared across a batch with one product.
#include <algorithm>
#include <numeric>

#include "autodiff/rule_families.h"
#include "graph/ops.h"

namespace oxtrain::autodiff::detail {
namespace {

using graph::Attribute;
using graph::Shape;
using Grads = std::vector<Value*>;
const char* kOx = graph::kOxtrainDomain;

Attribute ints(const Shape& s) { return Attribute{std::vector<int64_t>(s)}; }

Value* reshape(GradContext& c, Value* v, const Shape& to) {
  if (v->shape == to) return v;
  return c.emit1("Reshape", "", {v, c.constant_ints(to)});
}

// Sums `grad` to `shape` (which broadcasts to it, numpy-style) when they differ.
Value* sum_to(GradContext& c, Value* grad, const Shape& shape) {
  if (grad->shape == shape) return grad;
  return c.emit1("ReduceSumTo", kOx, {grad}, {{"shape", ints(shape)}});
}

// The forward node, writable: the rule adds its optional outputs.
Node* forward_node(GradContext& c) {
  for (const auto& n : c.graph().nodes())
    if (n.get() == &c.node()) return n.get();
  throw Error(c.node().describe() + ": not found in its graph");
}

// ---------------------------------------------------------------------------------------
// LayerNormalization. The forward node gains its Mean and InvStdDev outputs when it lacks them
// (the statistics the gradient reads instead of recomputing); dScale and dB come back over
// the normalized dims and are summed and reshaped to Scale's and B's own shapes.

// `grad` over the normalized dims `normalized` to `like`'s shape, which broadcasts to them
// (right-aligned, any extra leading dims of size 1).
Value* to_param_shape(GradContext& c, Value* grad, const Value* like, const Shape& normalized) {
  const Shape& s = like->shape;
  Shape aligned(normalized.size(), 1);
  const size_t n = std::min(s.size(), normalized.size());
  for (size_t i = 0; i < s.size(); ++i)
    if (i + normalized.size() < s.size() && s[i] != 1)
      throw Error(c.node().describe() + ": '" + like->name + "' of shape " + like->shape_string() +
                  " varies along the dims before axis; oxtrain cannot train it");
  std::copy(s.end() - static_cast<int64_t>(n), s.end(), aligned.end() - static_cast<int64_t>(n));
  return reshape(c, sum_to(c, grad, aligned), s);
}

Grads layer_norm_rule(GradContext& c) {
  Node* fwd = forward_node(c);
  Graph& g = c.graph();
  if (!fwd->output(1) || !fwd->output(2)) {
    const char* suffix[] = {"", "saved_mean", "saved_inv_std_dev"};
    for (size_t i = 1; i < 3; ++i)
      if (!fwd->output(i)) g.set_output(fwd, i, g.add_value(g.unique_name(fwd->name + "/" + suffix[i])));
    infer_node(g, *fwd);
  }
  const Shape& xs = c.in(0)->shape;
  const int64_t rank = static_cast<int64_t>(xs.size());
  int64_t axis = c.node().attr_int("axis", -1);
  if (axis < 0) axis += rank;
  const Shape normalized(xs.begin() + axis, xs.end());
  auto outs = c.emit("LayerNormalizationGrad", kOx, {c.dY(), c.in(0), c.in(1), fwd->output(1), fwd->output(2)}, 3,
                     {{"axis", Attribute{axis}}});
  Grads grads(c.node().inputs.size(), nullptr);
  if (c.needs(0)) grads[0] = outs[0];
  if (c.needs(1)) grads[1] = to_param_shape(c, outs[1], c.in(1), normalized);
  if (c.needs(2)) grads[2] = to_param_shape(c, outs[2], c.in(2), normalized);
  return grads;
}

// ---------------------------------------------------------------------------------------
// ReduceMax / ReduceMin, as torch.amax / amin: dY goes to the elements equal to the result,
// split evenly among ties: dX = (X == Y) * dY / count(X == Y), Y and dY with the reduced dims
// kept. Made of core ops (Equal, Cast, Div, Mul) and oxtrain.ReduceSumTo.

Grads reduce_extreme_rule(GradContext& c) {
  graph::InferContext ictx{c.graph(), c.opset()};
  const std::vector<int64_t> axes = graph::axes_of(c.node(), ictx, 18);
  const bool noop = c.opset() >= 18 && c.node().attr_int("noop_with_empty_axes", 0) != 0;
  if (axes.empty() && noop) return {c.dY(), nullptr};
  Value* x = c.in(0);
  Shape kept = x->shape;
  const int64_t rank = static_cast<int64_t>(kept.size());
  if (axes.empty()) std::fill(kept.begin(), kept.end(), 1);
  for (int64_t a : axes) kept[a < 0 ? a + rank : a] = 1;
  Value* y = reshape(c, c.out(0), kept);
  Value* dy = reshape(c, c.dY(), kept);
  Value* hit = c.emit1("Cast", "", {c.emit1("Equal", "", {x, y})},
                       {{"to", Attribute{int64_t{graph::dtype_to_onnx(x->dtype)}}}});
  Value* ties = c.emit1("ReduceSumTo", kOx, {hit}, {{"shape", ints(kept)}});
  return {c.emit1("Mul", "", {hit, c.emit1("Div", "", {dy, ties})}), nullptr};
}

// ---------------------------------------------------------------------------------------
// ReduceSum: dX is dY broadcast back along the reduced axes.

Grads reduce_sum_rule(GradContext& c) {
  graph::InferContext ictx{c.graph(), c.opset()};
  std::vector<int64_t> axes = graph::axes_of(c.node(), ictx, 13);
  const int64_t rank = static_cast<int64_t>(c.in(0)->shape.size());
  if (axes.empty()) {
    if (c.opset() >= 13 && c.node().attr_int("noop_with_empty_axes", 0)) return {c.dY(), nullptr};
    axes.resize(static_cast<size_t>(rank));
    std::iota(axes.begin(), axes.end(), 0);
  }
  for (int64_t& a : axes) a = a < 0 ? a + rank : a;
  std::sort(axes.begin(), axes.end());
  return {c.emit1("ReduceSumGrad", kOx, {c.dY()},
                  {{"input_shape", ints(c.in(0)->shape)},
                   {"axes", Attribute{axes}},
                   {"keepdims", Attribute{c.node().attr_int("keepdims", 1)}}}),
          nullptr};
}

// ---------------------------------------------------------------------------------------
// MatMul, numpy semantics: Y = A B with batch dims broadcast; a 1-D A is a row [1, K] and a
// 1-D B a column [K, 1], whose dimension Y drops. Operands are viewed as matrices (at least
// 2-D), dY as their product's shape, and the gradients reshaped back.
//   dA = dY B^T summed over the batch dims A was broadcast along, dB = A^T dY likewise.
// When B is one matrix [K, N] shared by a batched A [..., M, K], dB = A'^T dY' with A' and dY'
// the batch folded into rows ([R, K] and [R, N]): one Gemm instead of a batched product and
// a sum, and dA = dY' B^T likewise.

Grads matmul_rule(GradContext& c) {
  Value *a = c.in(0), *b = c.in(1), *dy = c.dY();
  if (a->shape.empty() || b->shape.empty())
    throw Error(c.node().describe() + ": MatMul takes no scalars, got " + a->shape_string() + " and " +
                b->shape_string());
  Shape as = a->shape, bs = b->shape;
  const bool a1 = as.size() == 1, b1 = bs.size() == 1;
  if (a1) as.insert(as.begin(), 1);
  if (b1) bs.push_back(1);
  // dY as the product of the matrices: the dropped dims back as 1.
  Shape ys = dy->shape;
  if (a1) ys.insert(ys.end() - (b1 ? 0 : 1), 1);
  if (b1) ys.push_back(1);
  Value* dy2 = reshape(c, dy, ys);
  auto swap_last = [&](Value* v) {
    std::vector<int64_t> perm(v->shape.size());
    std::iota(perm.begin(), perm.end(), 0);
    std::swap(perm[perm.size() - 1], perm[perm.size() - 2]);
    return c.emit1("Transpose", "", {v}, {{"perm", Attribute{perm}}});
  };
  Grads g(2, nullptr);
  if (bs.size() == 2 && as.size() > 2) {
    // One B for the whole batch: fold A's batch into its rows.
    const int64_t k = as.back(), n = bs.back();
    const int64_t rows = graph::shape_numel(as) / std::max<int64_t>(k, 1);
    Value* dy_rows = reshape(c, dy2, {rows, n});
    if (c.needs(0)) {
      Value* da = c.emit1("Gemm", "", {dy_rows, reshape(c, b, bs)}, {{"transB", Attribute{int64_t{1}}}});
      g[0] = reshape(c, da, a->shape);
    }
    if (c.needs(1)) {
      Value* db = c.emit1("Gemm", "", {reshape(c, a, {rows, k}), dy_rows}, {{"transA", Attribute{int64_t{1}}}});
      g[1] = reshape(c, db, b->shape);
    }
    return g;
  }
  if (c.needs(0)) {
    Value* da = c.emit1("MatMul", "", {dy2, swap_last(reshape(c, b, bs))});
    g[0] = reshape(c, sum_to(c, da, as), a->shape);
  }
  if (c.needs(1)) {
    Value* db = c.emit1("MatMul", "", {swap_last(reshape(c, a, as)), dy2});
    g[1] = reshape(c, sum_to(c, db, bs), b->shape);
  }
  return g;
}

}  // namespace

void add_normalization_rules(RuleMap& rules) {
  rules["LayerNormalization"] = {layer_norm_rule};
  rules["ReduceMax"] = {reduce_extreme_rule};
  rules["ReduceMin"] = {reduce_extreme_rule};
  rules["oxtrain.LayerNormalization"] = {layer_norm_rule};
  rules["ReduceSum"] = {reduce_sum_rule};
  rules["MatMul"] = {matmul_rule};
}

}  // namespace oxtrain::autodiff::detail
