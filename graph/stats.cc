#include "graph/stats.h"

#include "base/checked.h"
#include "graph/onnx_io.h"

namespace oxtrain::graph {

namespace {
// Shapes come from files: a figure too large for 64 bits is refused, not wrapped.
int64_t must(std::optional<int64_t> v) {
  if (!v) throw Error("the model's size figures overflow 64 bits; its shapes are too large");
  return *v;
}
}  // namespace

int64_t node_multiply_adds(const Node& n) {
  const Value* out = n.output(0);
  if (!out || !out->rank_known) return 0;
  int64_t out_elems = shape_numel(out->shape);
  if (out_elems < 0) return 0;
  if (n.op_type == "Conv") {
    const Shape& w = n.input(1)->shape;  // [M, C/group, k...]
    int64_t per_output = 1;
    for (size_t i = 1; i < w.size(); ++i) per_output = must(checked_mul(per_output, w[i]));
    return must(checked_mul(out_elems, per_output));
  }
  if (n.op_type == "Gemm") {
    const Shape& a = n.input(0)->shape;
    int64_t k = n.attr_int("transA", 0) ? a[0] : a[1];
    return must(checked_mul(out_elems, k));
  }
  if (n.op_type == "MatMul") {
    const Shape& a = n.input(0)->shape;
    return must(checked_mul(out_elems, a.back()));
  }
  return 0;
}

GraphStats compute_stats(const Graph& graph) {
  GraphStats s;
  s.batch = batch_size_of(graph);
  for (const Value* v : graph.initializers()) {
    int64_t bytes = v->bytes();
    switch (v->role) {
      case Role::Parameter:
        s.parameters = must(checked_add(s.parameters, v->numel()));
        s.parameter_bytes = must(checked_add(s.parameter_bytes, bytes));
        break;
      case Role::State:
        s.state_elements = must(checked_add(s.state_elements, v->numel()));
        s.state_bytes = must(checked_add(s.state_bytes, bytes));
        break;
      default:
        s.constant_bytes = must(checked_add(s.constant_bytes, bytes));
        break;
    }
  }
  int64_t macs = 0, activation = 0;
  for (const auto& n : graph.nodes()) {
    ++s.nodes;
    ++s.ops[n->domain.empty() ? n->op_type : n->domain + "." + n->op_type];
    macs = must(checked_add(macs, node_multiply_adds(*n)));
    // Per-sample tensors only (batch-major); BN's running-statistic outputs are state.
    for (const Value* out : n->outputs)
      if (out && out->bytes() > 0 && !out->shape.empty() && out->shape[0] == s.batch)
        activation = must(checked_add(activation, out->bytes()));
  }
  s.multiply_adds = macs / s.batch;
  s.flops = must(checked_mul(2, s.multiply_adds));
  s.activation_bytes = activation / s.batch;
  return s;
}

}  // namespace oxtrain::graph
