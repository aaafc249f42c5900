// Compile-time checks shared by the CPU kernel factories: required inputs and attributes and
// one float type across a node's tensors, each failing with an Error that names the node.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/ops.h"

namespace oxtrain::runtime::cpu {

inline const graph::Value* required(const graph::Node& node, size_t i, bool output = false) {
  const graph::Value* v = output ? node.output(i) : node.input(i);
  if (!v)
    throw Error(node.describe() + ": " + (output ? "output " : "input ") + std::to_string(i) +
                " is required");
  return v;
}

// Momentum's layout, R, T, X1..Xn, G1..Gn, V1..Vn -> X1_new..Xn_new, V1_new..Vn_new (with
// found_inf and loss_scale after T for oxtrain.ScaledMomentum), with every input and output
// present (CPU and CUDA kernels alike): returns n.
inline size_t momentum_tensor_count(const graph::Node& n) {
  const std::string what = n.describe();
  const size_t lead = graph::momentum_leading_inputs(n);
  if (n.inputs.size() < lead + 3 || (n.inputs.size() - lead) % 3 != 0)
    throw Error(what + ": expects " + (lead == 2 ? "R, T" : "R, T, found_inf, loss_scale") +
                ", then X..., G..., V... (3 groups of equal size)");
  const size_t count = (n.inputs.size() - lead) / 3;
  if (n.outputs.size() != 2 * count) throw Error(what + ": expects " + std::to_string(2 * count) + " outputs");
  for (size_t i = 0; i < n.inputs.size(); ++i)
    if (!n.input(i)) throw Error(what + ": input " + std::to_string(i) + " is missing");
  for (size_t i = 0; i < n.outputs.size(); ++i)
    if (!n.output(i)) throw Error(what + ": output " + std::to_string(i) + " is missing");
  for (size_t i = 2; i < lead; ++i)
    if (n.input(i)->dtype != graph::DType::f32 || n.input(i)->numel() != 1)
      throw Error(what + ": " + (i == 2 ? "found_inf" : "loss_scale") + " must be a float32 scalar, not " +
                  graph::dtype_name(n.input(i)->dtype) + " " + n.input(i)->shape_string());
  return count;
}

// oxtrain.LossScaleUpdate's attributes, checked.
struct LossScaleConfig {
  float growth = 2, backoff = 0.5f;
  int64_t interval = 2000;
};

inline LossScaleConfig loss_scale_config(const graph::Node& n) {
  LossScaleConfig c;
  c.growth = n.attr_float("growth_factor", 2.0f);
  c.backoff = n.attr_float("backoff_factor", 0.5f);
  c.interval = n.attr_int("growth_interval", 2000);
  if (!(c.growth >= 1.0f) || !(c.backoff > 0.0f && c.backoff < 1.0f) || c.interval < 1)
    throw Error(n.describe() + ": growth_factor must be at least 1, backoff_factor in (0, 1) and growth_interval " +
                "at least 1; got " + std::to_string(c.growth) + ", " + std::to_string(c.backoff) + ", " +
                std::to_string(c.interval));
  return c;
}

// The common float type (float32 or float64) of `values` (nullptr entries are skipped).
inline graph::DType float_dtype(const graph::Node& node,
                                std::initializer_list<const graph::Value*> values) {
  graph::DType dt = graph::DType::undefined;
  for (const graph::Value* v : values) {
    if (!v) continue;
    if (dt == graph::DType::undefined) dt = v->dtype;
    if (v->dtype != dt || (dt != graph::DType::f32 && dt != graph::DType::f64))
      throw Error(node.describe() + ": the CPU kernel handles float32 and float64 tensors of "
                  "one type, got " + graph::dtype_name(v->dtype) + " '" + v->name + "'");
  }
  return dt;
}

// "[1,2,3]": a shape or an ints attribute in an error message, numbers as they are.
inline std::string join(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s + "]";
}

inline std::vector<int64_t> shape_attr(const graph::Node& node, const std::string& key) {
  if (!node.has_attr(key)) throw Error(node.describe() + ": attribute " + key + " is required");
  return node.attr_ints(key);
}

// The attribute `input_shape` of a gradient op (ConvGradData, MaxPoolGrad, ...), checked
// against the shape of its output `dx`, the gradient of that input (`dx_shape`: dX's shape
// as the op sees it, e.g. [N, C, H, W] for a channels-last dX stored [N, H, W, C]).
inline graph::Shape grad_input_shape(const graph::Node& node, const graph::Value* dx, const graph::Shape& dx_shape) {
  graph::Shape x_shape = shape_attr(node, "input_shape");
  if (dx_shape != x_shape)
    throw Error(node.describe() + ": output shape " + join(dx->shape) + " differs from input_shape " + join(x_shape));
  return x_shape;
}
inline graph::Shape grad_input_shape(const graph::Node& node, const graph::Value* dx) {
  return grad_input_shape(node, dx, dx->shape);
}

}  // namespace oxtrain::runtime::cpu
