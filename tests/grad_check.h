// The gradient checker: a one-node graph goes through the real autodiff pass and runs forward
// and backward in float64 on the CPU runtime; every input gradient is compared with central
// differences of L = sum(Y * R) for a fixed random R, element by element (all of a small
// tensor, 48 of a larger one) and along one random direction. Each op's test picks its input
// domain away from its kinks. Used by tests/test_gradients*.cc.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::test {

struct In {
  graph::Tensor value;
  bool needs_grad = true;
  bool constant = false;  // an initializer (shapes, axes, labels) instead of a graph input
};

struct GradCase {
  std::string op;
  std::vector<In> inputs;
  std::map<std::string, graph::Attribute> attrs = {};
  size_t outputs = 1;
  int64_t opset = 17;
  std::string domain = "";  // the op's domain ("" = ai.onnx)
};

// Uniform float64 values in [lo, hi).
graph::Tensor f64(graph::Shape shape, uint64_t seed, double lo = -1, double hi = 1);
// Values in +-[0.1, 1]: away from ReLU's kink at 0.
graph::Tensor away_from_zero(graph::Shape shape, uint64_t seed);
// Distinct values spaced 2/numel apart in [-1, 1), shuffled: no ties (MaxPool).
graph::Tensor distinct(graph::Shape shape, uint64_t seed);
// A 1-D int64 tensor.
graph::Tensor ints(std::vector<int64_t> v);

// Runs the checker with step h and returns every mismatch found (empty: all agree).
std::vector<std::string> gradient_problems(const GradCase& c, double h = 1e-6);
// EXPECTs no mismatch; label names the case in the failure.
void check_gradients(const GradCase& c, const std::string& label, double h = 1e-6);

inline graph::Attribute iv(std::vector<int64_t> v) { return graph::Attribute{v}; }
inline graph::Attribute i1(int64_t v) { return graph::Attribute{v}; }
inline graph::Attribute f1(float v) { return graph::Attribute{v}; }
inline graph::Attribute s1(const char* v) { return graph::Attribute{std::string(v)}; }

}  // namespace oxtrain::test
