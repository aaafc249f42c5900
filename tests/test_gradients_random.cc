// The gradient checker's cases for the random family (tests/grad_check.h): Dropout in training
// mode over its opset forms and ratios. The checker feeds one fixed step, so the mask is the
// same in every run and central differences see the same function.
#include <gtest/gtest.h>

#include "tests/grad_check.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using namespace oxtrain::test;

namespace {

Tensor f64_scalar(double v) {
  Tensor t(DType::f64, {});
  t.data<double>()[0] = v;
  return t;
}

Tensor bool_scalar(bool v) {
  Tensor t(DType::boolean, {});
  t.bytes[0] = v;
  return t;
}

}  // namespace

TEST(GradientsRandom, DropoutTrainingOpset12Plus) {
  for (int64_t opset : {12, 13, 21}) {
    for (double ratio : {0.3, 0.5, 0.0}) {
      GradCase c{"Dropout",
                 {{f64({4, 5, 3}, 1), true}, {f64_scalar(ratio), false, true}, {bool_scalar(true), false, true}},
                 {{"seed", f1(3.0f)}},
                 2,
                 opset};
      check_gradients(c, "opset " + std::to_string(opset) + ", ratio " + std::to_string(ratio));
    }
  }
  // A float32 ratio, and no mask output.
  GradCase c{"Dropout", {{f64({7, 3}, 2)}, {Tensor::from_float({0.2f}, {}), false, true}, {bool_scalar(true), false, true}}};
  check_gradients(c, "float32 ratio, one output");
}

TEST(GradientsRandom, DropoutTrainingBeforeOpset12) {
  // The ratio is an attribute; training unless is_test=1.
  for (int64_t opset : {7, 10, 11}) {
    GradCase c{"Dropout", {{f64({3, 8}, 3)}}, {{"ratio", f1(0.4f)}}, 2, opset};
    check_gradients(c, "opset " + std::to_string(opset));
  }
  check_gradients({"Dropout", {{f64({3, 8}, 4)}}, {{"is_test", i1(1)}}, 1, 7}, "opset 7, is_test");
}

TEST(GradientsRandom, DropoutInference) {
  check_gradients({"Dropout", {{f64({2, 3, 4}, 5)}, {f64_scalar(0.5), false, true}, {bool_scalar(false), false, true}}},
                  "training_mode false");
  check_gradients({"Dropout", {{f64({2, 3, 4}, 6)}, {f64_scalar(0.5), false, true}}}, "no training_mode");
}
