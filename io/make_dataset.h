// A small ImageNet-layout dataset of real JPEGs that a network can learn: each class is a
// kind of procedurally drawn picture (shapes, stripes, textures) with random colours,
// positions, sizes and photo-like aspect ratios and sizes. For demos and tests.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace oxtrain::io {

struct MakeDatasetOptions {
  std::string output;          // writes OUTPUT/train/<class>/*.JPEG and OUTPUT/val/<class>/*.JPEG
  int classes = 10;            // at most the number of kinds the generator draws
  int train_per_class = 100;
  int val_per_class = 20;
  int min_side = 96, max_side = 320;  // image sizes vary like photos (aspect 3:4 to 4:3 and more)
  int quality = 90;
  uint64_t seed = 0;
  std::function<void(int64_t done, int64_t total)> progress;  // nullptr: quiet
};

struct MakeDatasetResult {
  int64_t train_images = 0, val_images = 0, bytes = 0;
};

// Deterministic for a seed. Throws oxtrain::Error on bad options or unwritable output.
MakeDatasetResult make_dataset(const MakeDatasetOptions& options);
int max_dataset_classes();

}  // namespace oxtrain::io
