// Decoded images and the per-sample random numbers of the data pipeline.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace oxtrain::io {

// 8-bit RGB, rows top to bottom, pixels interleaved (HWC).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3
};

// A file that cannot be decoded. The loader counts it, reports it once with its path, and
// replaces the sample; it never stops a run.
class DecodeError : public std::runtime_error {
 public:
  DecodeError(const std::string& path, const std::string& why)
      : std::runtime_error(path + ": " + why), path_(path) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Counter-based random numbers: the stream for (seed, epoch, sample) is the same whichever
// thread draws it, so a loader's output does not depend on its thread count.
class SampleRng {
 public:
  SampleRng(uint64_t seed, int64_t epoch, int64_t sample);
  uint64_t next_u64();
  double uniform();                          // [0, 1)
  double uniform(double lo, double hi);      // [lo, hi)
  int64_t integer(int64_t lo, int64_t hi);   // [lo, hi], inclusive as torch.randint(lo, hi+1)

 private:
  uint64_t state_;
};

}  // namespace oxtrain::io
