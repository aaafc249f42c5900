// Builders for well-known models, so nobody needs a download: the ResNet family with
// torchvision's architecture (ResNet v1.5: stride on the 3x3 conv) and initialisation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::graph {

struct ZooOptions {
  int64_t num_classes = 1000;
  uint64_t seed = 0;
  int64_t image_size = 224;   // declared input height and width
  std::string batch_dim = "N";  // symbolic name of the batch dimension
};

std::vector<std::string> zoo_models();  // resnet18, resnet34, resnet50, resnet101, resnet152
// Throws Error for an unknown name, listing the known ones.
Graph make_zoo_model(const std::string& name, const ZooOptions& options = {});

// Deterministic generator used for initialisation: the same seed gives the same bits on
// every platform (std::normal_distribution does not promise that).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  double uniform();  // [0, 1)
  double normal();   // mean 0, std 1 (Box-Muller)

 private:
  uint64_t state_;
};

}  // namespace oxtrain::graph
