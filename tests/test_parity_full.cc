// Parity with PyTorch on torchvision's full-size resnet18 and resnet50, exported by
// torch.onnx.export in training mode: five SGD steps (momentum 0.9, weight decay 1e-4; resnet18
// batch 8 at main.py's lr 0.1, resnet50 batch 4 at DLPerf's lr = batch / 1000) on a fixed
// batch, as examples/imagenet/main.py trains. Fixtures:
// scripts/make_parity_full_fixtures.py, whose docstring explains the design (the checking code,
// shared with tests/test_parity_models.cc, is in tests/parity_helpers.cc):
//  - Weights, batch and labels come from a seeded counter-based generator reimplemented in C++;
//    the committed model keeps its initializers as external data, which this test writes.
//  - The reference after step 1 and step 5 is a digest of each tensor (every parameter, its
//    momentum buffer, every BN running statistic): its norm, 64 sampled elements and 4 random
//    +-1 projections, each compared relative to the tensor's norm.
//  - The strict comparison runs in float64 on both sides (the float32 export converted after
//    import): in float32 a few ReLU inputs of a full-size ResNet lie within rounding of zero and
//    even PyTorch float32 and float64 disagree after one step. float64 must agree within 1e-9
//    after one step (1e-4 is the requirement; measured ~1e-12) and 1e-3 after five (training on
//    one batch amplifies rounding ~30x per step). In float32 the test checks what is
//    forward-only and so free of that effect: the step-1 loss and BN running statistics, 1e-4.
#include <gtest/gtest.h>

#include <string>

#include "tests/parity_helpers.h"

namespace {

void check_model(const std::string& name) {
  oxtrain::test::parity::check_model(std::string(OXTRAIN_FIXTURES) + "/parity_full/" + name, name);
}

}  // namespace

TEST(ParityFull, Resnet18MatchesPyTorch) { check_model("resnet18"); }
TEST(ParityFull, Resnet50MatchesPyTorch) { check_model("resnet50"); }
