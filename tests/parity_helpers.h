// PyTorch parity from committed fixtures (tests/test_parity_full.cc: full-size ResNets;
// tests/test_parity_models.cc: mobilenet_v2, efficientnet_b0, densenet121, a small ViT).
// The fixtures' design is in scripts/make_parity_full_fixtures.py's docstring: a model
// exported by torch.onnx.export in training mode whose float initializers are external data
// drawn from a seeded counter-based generator (reimplemented here), a batch and labels from
// the same generator, and per-tensor digests (norm, sampled elements, +-1 projections) of
// every parameter, momentum buffer and BN running statistic after SGD step 1 and step 5 of a
// float64 PyTorch run (and step 1 of a float32 one).
#pragma once

#include <cstdint>
#include <string>

#include "graph/ir.h"

namespace oxtrain::test::parity {

// The fixture generator: splitmix64's finaliser over (stream << 40) + i + 1.
uint64_t bits(uint64_t stream, uint64_t i);

// float(center + half * (2u - 1)), u = (bits >> 11) * 2^-53, for i in [0, n).
void fill_uniform(float* out, int64_t n, uint64_t stream, double center, double half);

// Checks the fixture folder `dir` (holding manifest.json): writes the model's generated
// weights next to a copy of it, imports it, trains five float64 steps (the float32 export
// converted after import) and one float32 step, and compares the losses and every digested
// tensor with PyTorch's within the manifest's tolerances. In float32 it compares what the
// manifest's "float32_step1_check" names: "running_stat" (the default: BN running
// statistics, forward-only), "all" (every tensor of the float32 digest file) or "loss".
// A failure names `name` and the stage (import, training graph, session, step) that failed.
void check_model(const std::string& dir, const std::string& name);

// The fixture folder `dir`'s model, imported with its generated weights (float32, as exported).
graph::Graph fixture_model(const std::string& dir);

}  // namespace oxtrain::test::parity
