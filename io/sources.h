// Batches that do not come from files: --synthetic makes one random batch once (as DLPerf's
// and NVIDIA's synthetic mode do) to measure the model alone.
#pragma once

#include <cstdint>
#include <vector>

namespace oxtrain::io {

struct SyntheticBatch {
  int64_t batch_size = 0;
  int image_size = 0;
  std::vector<uint8_t> images;  // uint8 NHWC, uniform random
  std::vector<int64_t> labels;  // uniform in [0, classes)
};

SyntheticBatch make_synthetic_batch(int64_t batch_size, int image_size, int64_t classes,
                                    uint64_t seed);

}  // namespace oxtrain::io
