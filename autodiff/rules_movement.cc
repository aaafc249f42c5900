// Gradient rules of the movement family (see autodiff/rule_families.h): each moves dY back
// to where the forward op read it.
//   Concat     -> Split of dY into the inputs' sizes
//   Split      -> Concat of the output gradients (zeros where an output has none)
//   Slice      -> oxtrain.SliceGrad: zeros with dY written where the slice read
//   Transpose  -> Transpose by the inverse permutation
//   Squeeze, Unsqueeze -> Reshape back
//   Expand     -> ReduceSumTo the input's shape (GradContext::reduce_to)
//   Gather, GatherND -> oxtrain.GatherGrad: dY's rows added into the rows they were read from,
//                 in a fixed order given by two constants made here from the constant indices
#include <algorithm>
#include <numeric>

#include "autodiff/rule_families.h"
#include "graph/ops.h"

namespace oxtrain::autodiff::detail {
namespace {

using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using Grads = std::vector<Value*>;

Attribute ints(std::vector<int64_t> v) { return Attribute{std::move(v)}; }

int64_t norm_axis(const Node& n, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

Grads concat_rule(GradContext& c) {
  const Node& n = c.node();
  const int64_t rank = static_cast<int64_t>(c.out(0)->shape.size());
  const int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < n.inputs.size(); ++i) sizes.push_back(c.in(i)->shape[axis]);
  std::map<std::string, Attribute> attrs{{"axis", Attribute{axis}}};
  std::vector<Value*> inputs{c.dY()};
  if (c.opset() < 13) attrs["split"] = ints(sizes);
  else inputs.push_back(c.constant_ints(sizes));
  std::vector<Value*> parts = c.emit("Split", "", inputs, n.inputs.size(), attrs);
  Grads g(n.inputs.size(), nullptr);
  for (size_t i = 0; i < g.size(); ++i)
    if (c.needs(i)) g[i] = parts[i];
  return g;
}

Grads split_rule(GradContext& c) {
  const Node& n = c.node();
  const int64_t rank = static_cast<int64_t>(c.in(0)->shape.size());
  const int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
  std::vector<Value*> parts;
  for (size_t i = 0; i < n.outputs.size(); ++i) {
    Value* d = c.dY(i);
    if (!d) {
      // An output nothing reads (or that is omitted) contributes zeros.
      Shape s = c.in(0)->shape;
      s[axis] = c.out(i) ? c.out(i)->shape[axis] : 0;
      if (s[axis] == 0) continue;
      d = c.graph().add_initializer(c.graph().unique_name(n.name + "/zeros"), Tensor(c.in(0)->dtype, s),
                                    graph::Role::Constant);
    }
    parts.push_back(d);
  }
  Grads g(n.inputs.size(), nullptr);
  g[0] = c.emit1("Concat", "", parts, {{"axis", Attribute{axis}}});
  return g;
}

Grads slice_rule(GradContext& c) {
  graph::SliceGeometry geo = graph::slice_geometry(c.node(), c.in(0)->shape, c.opset());
  Grads g(c.node().inputs.size(), nullptr);
  g[0] = c.emit1("SliceGrad", graph::kOxtrainDomain, {c.dY()},
                 {{"input_shape", ints(c.in(0)->shape)}, {"starts", ints(geo.starts)}, {"steps", ints(geo.steps)}});
  return g;
}

Grads transpose_rule(GradContext& c) {
  const int64_t rank = static_cast<int64_t>(c.in(0)->shape.size());
  std::vector<int64_t> perm = c.node().attr_ints("perm");
  if (perm.empty())
    for (int64_t d = rank - 1; d >= 0; --d) perm.push_back(d);
  std::vector<int64_t> inverse(perm.size());
  for (size_t d = 0; d < perm.size(); ++d) inverse.at(static_cast<size_t>(perm[d])) = static_cast<int64_t>(d);
  return {c.emit1("Transpose", "", {c.dY()}, {{"perm", ints(inverse)}})};
}

Grads reshape_back_rule(GradContext& c) {
  Grads g(c.node().inputs.size(), nullptr);
  g[0] = c.emit1("Reshape", "", {c.dY(), c.constant_ints(c.in(0)->shape)});
  return g;
}

Grads expand_rule(GradContext& c) { return {c.reduce_to(c.dY(), c.in(0)), nullptr}; }

// dX's rows (the `count` axes from `axis` on, flattened) receive dY's rows: `rows_read[j]` is
// the dX row that dY's row j came from. The constants list, for each dX row r, the dY rows
// order[row_start[r]] .. order[row_start[r+1] - 1] in increasing j: a fixed order of addition.
Value* gather_grad(GradContext& c, const std::vector<int64_t>& rows_read, int64_t axis, int64_t count) {
  const Shape& x = c.in(0)->shape;
  int64_t rows = 1;
  for (int64_t d = axis; d < axis + count; ++d) rows *= x[d];
  std::vector<int64_t> row_start(static_cast<size_t>(rows) + 1, 0);
  for (int64_t r : rows_read) ++row_start[static_cast<size_t>(r) + 1];
  std::partial_sum(row_start.begin(), row_start.end(), row_start.begin());
  std::vector<int64_t> order(rows_read.size());
  std::vector<int64_t> next(row_start.begin(), row_start.end() - 1);
  for (size_t j = 0; j < rows_read.size(); ++j) order[next[rows_read[j]]++] = static_cast<int64_t>(j);
  return c.emit1("GatherGrad", graph::kOxtrainDomain,
                 {c.dY(), c.constant_ints(order), c.constant_ints(row_start)},
                 {{"input_shape", ints(x)}, {"axis", Attribute{axis}}, {"count", Attribute{count}}});
}

const graph::Tensor& constant_indices(GradContext& c) {
  const Value* idx = c.in(1);
  if (!idx || !idx->data)
    throw Error(c.node().describe() + ": the gradient needs constant indices; '" +
                (idx ? idx->name : std::string("indices")) + "' is computed at run time");
  return *idx->data;
}

Grads gather_rule(GradContext& c) {
  const Shape& x = c.in(0)->shape;
  const int64_t axis = norm_axis(c.node(), c.node().attr_int("axis", 0), static_cast<int64_t>(x.size()));
  std::vector<int64_t> rows = constant_indices(c).to_int64();
  for (int64_t& r : rows) r = r < 0 ? r + x[axis] : r;  // in range: checked by the schema
  return {gather_grad(c, rows, axis, 1), nullptr};
}

Grads gather_nd_rule(GradContext& c) {
  const Shape& x = c.in(0)->shape;
  const Tensor& it = constant_indices(c);
  const std::vector<int64_t> idx = it.to_int64();
  const size_t depth = static_cast<size_t>(it.shape.back());
  std::vector<int64_t> rows;
  for (size_t j = 0; j + depth <= idx.size(); j += depth) {
    int64_t row = 0;
    for (size_t t = 0; t < depth; ++t) {
      const int64_t v = idx[j + t];
      row = row * x[t] + (v < 0 ? v + x[t] : v);
    }
    rows.push_back(row);
  }
  return {gather_grad(c, rows, 0, static_cast<int64_t>(depth)), nullptr};
}

}  // namespace

void add_movement_rules(RuleMap& rules) {
  rules["Concat"] = {concat_rule};
  rules["Split"] = {split_rule, true};
  rules["Slice"] = {slice_rule};
  rules["Transpose"] = {transpose_rule};
  rules["Squeeze"] = {reshape_back_rule};
  rules["Unsqueeze"] = {reshape_back_rule};
  rules["Expand"] = {expand_rule};
  rules["Gather"] = {gather_rule};
  rules["GatherND"] = {gather_nd_rule};
}

}  // namespace oxtrain::autodiff::detail
