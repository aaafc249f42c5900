// Gradient rules of the pointwise family (see autodiff/rule_families.h). Conventions at the
// kinks are PyTorch's (runtime/math/pointwise.h lists them). Rules that need the forward's
// output (Sigmoid, Tanh, Sqrt, Exp, Reciprocal, Div) read it instead of recomputing, as
// PyTorch's formulas do; broadcasting is reduced with GradContext::reduce_to.
//
// No rule: the comparisons, Not/And/Or/Xor, Floor, Ceil and Sign (their inputs are not
// trainable: the gradient through them is zero, and none flows), Where's condition, and Cast
// to or from a non-float type.
#include "autodiff/rule_families.h"
#include "graph/ops.h"

namespace oxtrain::autodiff::detail {
namespace {

using graph::Attribute;
using graph::DType;
using Grads = std::vector<Value*>;
const char* kOx = graph::kOxtrainDomain;

// One gradient for input 0 from a (dY, saved) oxtrain op.
Grads pair_grad(GradContext& c, const char* op, Value* saved,
                std::map<std::string, Attribute> attrs = {}) {
  Grads g(c.node().inputs.size(), nullptr);
  g[0] = c.emit1(op, kOx, {c.dY(), saved}, std::move(attrs));
  return g;
}

Grads sigmoid_rule(GradContext& c) { return pair_grad(c, "SigmoidGrad", c.out(0)); }
Grads tanh_rule(GradContext& c) { return pair_grad(c, "TanhGrad", c.out(0)); }
Grads sqrt_rule(GradContext& c) { return pair_grad(c, "SqrtGrad", c.out(0)); }
Grads erf_rule(GradContext& c) { return pair_grad(c, "ErfGrad", c.in(0)); }
Grads hard_swish_rule(GradContext& c) { return pair_grad(c, "HardSwishGrad", c.in(0)); }

Grads hard_sigmoid_rule(GradContext& c) {
  const Node& n = c.node();
  return pair_grad(c, "HardSigmoidGrad", c.in(0),
                   {{"alpha", Attribute{n.attr_float("alpha", 0.2f)}},
                    {"beta", Attribute{n.attr_float("beta", 0.5f)}}});
}

Grads gelu_rule(GradContext& c) {
  return pair_grad(c, "GeluGrad", c.in(0),
                   {{"approximate", Attribute{c.node().attr_string("approximate", "none")}}});
}

// Clip: dY where min < x < max (torch.clamp with scalar bounds, hardtanh, relu6). The bounds
// travel as ClipGrad's constant inputs: Clip's own from opset 11, made from the attributes
// before.
Grads clip_rule(GradContext& c) {
  const Node& n = c.node();
  Value* lo = nullptr;
  Value* hi = nullptr;
  DType dt = c.in(0)->dtype;
  if (c.opset() < 11) {
    if (n.has_attr("min")) lo = c.constant_scalar(n.attr_float("min", 0), dt);
    if (n.has_attr("max")) hi = c.constant_scalar(n.attr_float("max", 0), dt);
  } else {
    lo = n.input(1);
    hi = n.input(2);
  }
  Grads g(n.inputs.size(), nullptr);
  g[0] = c.emit1("ClipGrad", kOx, {c.dY(), c.in(0), lo, hi});
  return g;
}

Grads exp_rule(GradContext& c) { return {c.emit1("Mul", "", {c.dY(), c.out(0)})}; }
Grads log_rule(GradContext& c) { return {c.emit1("Div", "", {c.dY(), c.in(0)})}; }
Grads neg_rule(GradContext& c) { return {c.emit1("Neg", "", {c.dY()})}; }

// d(1/x) = -dY * y^2, PyTorch's -grad * (result * result).
Grads reciprocal_rule(GradContext& c) {
  Value* y2 = c.emit1("Mul", "", {c.out(0), c.out(0)});
  return {c.emit1("Neg", "", {c.emit1("Mul", "", {c.dY(), y2})})};
}

// dY * sign(x): 0 at 0, as PyTorch's.
Grads abs_rule(GradContext& c) {
  return {c.emit1("Mul", "", {c.dY(), c.emit1("Sign", "", {c.in(0)})})};
}

// A / B: dA = dY / B; dB = -dY * (A / B) / B, PyTorch's -grad * self / (other * other) with
// the forward's quotient.
Grads div_rule(GradContext& c) {
  Grads g(2, nullptr);
  if (c.needs(0)) g[0] = c.reduce_to(c.emit1("Div", "", {c.dY(), c.in(1)}), c.in(0));
  if (c.needs(1)) {
    Value* t = c.emit1("Div", "", {c.emit1("Mul", "", {c.dY(), c.out(0)}), c.in(1)});
    g[1] = c.reduce_to(c.emit1("Neg", "", {t}), c.in(1));
  }
  return g;
}

Grads pow_rule(GradContext& c) {
  Grads g(2, nullptr);
  for (int64_t k = 0; k < 2; ++k)
    if (c.needs(static_cast<size_t>(k)))
      g[k] = c.reduce_to(c.emit1("PowGrad", kOx, {c.dY(), c.in(0), c.in(1)}, {{"wrt", Attribute{k}}}),
                         c.in(static_cast<size_t>(k)));
  return g;
}

// Where(C, X, Y): dY where C for X, where not C for Y (broadcast, then reduced).
Grads where_rule(GradContext& c) {
  Grads g(3, nullptr);
  Value* zero = c.constant_scalar(0.0, c.dY()->dtype);
  if (c.needs(1)) g[1] = c.reduce_to(c.emit1("Where", "", {c.in(0), c.dY(), zero}), c.in(1));
  if (c.needs(2)) g[2] = c.reduce_to(c.emit1("Where", "", {c.in(0), zero, c.dY()}), c.in(2));
  return g;
}

// Float to float: the gradient cast back (other casts take none: graph/ops_pointwise.cc).
Grads cast_rule(GradContext& c) {
  return {c.emit1("Cast", "", {c.dY()},
                  {{"to", Attribute{int64_t{graph::dtype_to_onnx(c.in(0)->dtype)}}}})};
}

// Max/Min: dY to the inputs equal to the result, split evenly between ties.
Grads max_min_rule(GradContext& c, const char* mode) {
  const Node& n = c.node();
  std::vector<Value*> ins{c.dY()};
  for (Value* v : n.inputs) ins.push_back(v);
  auto outs = c.emit("MaxMinGrad", kOx, ins, n.inputs.size(), {{"mode", Attribute{std::string(mode)}}});
  Grads g(n.inputs.size(), nullptr);
  for (size_t i = 0; i < g.size(); ++i)
    if (c.needs(i)) g[i] = c.reduce_to(outs[i], c.in(i));
  return g;
}

// Mod (PyTorch's remainder for fmod = 0, fmod for fmod = 1): dA = dY; dB = -dY * q with q the
// quotient rounded down (fmod = 0) or toward zero (fmod = 1: q - fmod(q, 1)).
Grads mod_rule(GradContext& c) {
  Grads g(2, nullptr);
  if (c.needs(0)) g[0] = c.reduce_to(c.dY(), c.in(0));
  if (c.needs(1)) {
    Value* q = c.emit1("Div", "", {c.in(0), c.in(1)});
    if (c.node().attr_int("fmod", 0) != 0) {
      Value* one = c.constant_scalar(1.0, q->dtype);
      q = c.emit1("Sub", "", {q, c.emit1("Mod", "", {q, one}, {{"fmod", Attribute{int64_t{1}}}})});
    } else {
      q = c.emit1("Floor", "", {q});
    }
    g[1] = c.reduce_to(c.emit1("Neg", "", {c.emit1("Mul", "", {c.dY(), q})}), c.in(1));
  }
  return g;
}

}  // namespace

void add_pointwise_rules(RuleMap& rules) {
  rules["Sigmoid"] = {sigmoid_rule};
  rules["Tanh"] = {tanh_rule};
  rules["Clip"] = {clip_rule};
  rules["HardSigmoid"] = {hard_sigmoid_rule};
  rules["HardSwish"] = {hard_swish_rule};
  rules["Erf"] = {erf_rule};
  rules["Gelu"] = {gelu_rule};
  rules["Sqrt"] = {sqrt_rule};
  rules["Exp"] = {exp_rule};
  rules["Log"] = {log_rule};
  rules["Pow"] = {pow_rule};
  rules["Reciprocal"] = {reciprocal_rule};
  rules["Abs"] = {abs_rule};
  rules["Neg"] = {neg_rule};
  rules["Div"] = {div_rule};
  rules["Where"] = {where_rule};
  rules["Cast"] = {cast_rule};
  rules["Max"] = {[](GradContext& c) { return max_min_rule(c, "max"); }};
  rules["Min"] = {[](GradContext& c) { return max_min_rule(c, "min"); }};
  rules["Mod"] = {mod_rule};
}

}  // namespace oxtrain::autodiff::detail
