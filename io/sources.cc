// The synthetic batch: uniform random bytes and labels from a splitmix64 stream, so the same
// seed gives the same batch on every machine.
#include "io/sources.h"

#include <cstring>
#include <string>

#include "base/error.h"

namespace oxtrain::io {
namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

SyntheticBatch make_synthetic_batch(int64_t batch_size, int image_size, int64_t classes,
                                    uint64_t seed) {
  if (batch_size < 1)
    throw Error("synthetic batch: batch size " + std::to_string(batch_size) + " < 1");
  if (image_size < 1)
    throw Error("synthetic batch: image size " + std::to_string(image_size) + " < 1");
  if (classes < 1)
    throw Error("synthetic batch: " + std::to_string(classes) + " classes (need at least 1)");
  SyntheticBatch b;
  b.batch_size = batch_size;
  b.image_size = image_size;
  const size_t bytes = size_t(batch_size) * size_t(image_size) * size_t(image_size) * 3;
  b.images.resize(bytes);
  uint64_t state = seed;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t v = splitmix64(state);
    std::memcpy(b.images.data() + i, &v, 8);
  }
  if (i < bytes) {
    uint64_t v = splitmix64(state);
    std::memcpy(b.images.data() + i, &v, bytes - i);
  }
  b.labels.resize(size_t(batch_size));
  for (auto& label : b.labels) {
    // Multiply-shift maps 64 random bits to [0, classes) with negligible bias.
    label = int64_t((unsigned __int128)splitmix64(state) * uint64_t(classes) >> 64);
  }
  return b;
}

}  // namespace oxtrain::io
