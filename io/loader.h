// The threaded loader: N worker threads decode and transform samples into reusable batch
// buffers; a bounded queue of ready batches (the prefetch depth) lets the trainer take them
// in order. Output is deterministic for a seed whatever the thread count: each sample draws
// its random numbers from SampleRng(seed, epoch, index).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io/dataset.h"
#include "io/transforms.h"

namespace oxtrain::io {

struct LoaderOptions {
  int64_t batch_size = 32;
  int image_size = 224;
  bool train = true;        // training transform and shuffling; else validation transform
  bool drop_last = true;    // drop the last incomplete batch (training)
  int workers = 4;          // decoding threads; 0 decodes on the caller's thread
  int prefetch = 0;         // batches ready ahead; 0: 3 (all workers fill the oldest batch)
  uint64_t seed = 0;
  RandomResizedCropOptions crop;  // training crop: scale 0.08-1, ratio 3/4-4/3 as ImageNet's
  int rank = 0, world = 1;  // sharding
  // Decoding on the GPU (nvJPEG): a JPEG its hardware decoder takes (io/jpeg_info.h) comes out
  // encoded, with the transform's taps drawn as train_taps/val_taps draw them; any other image
  // is decoded and transformed here, into `images`, as without this option.
  bool encoded = false;
  // Allocates batch buffers (e.g. pinned host memory when CUDA is present); default: new[].
  std::function<uint8_t*(size_t)> allocate;
  std::function<void(uint8_t*)> release;
};

// A sample left for the device to decode (LoaderOptions::encoded).
struct EncodedSample {
  std::vector<uint8_t> bytes;  // the JPEG file; empty: the sample is decoded in Batch::images
  int width = 0, height = 0;   // its frame header's size
  SampleTaps taps;             // the transform, into the image decoded at full size
  const std::string* path = nullptr;  // the file (the dataset's string)
};

// One batch: images uint8 NHWC (size x image x image x 3), labels int64. Returned to the
// loader's pool when the handle is destroyed.
class Batch {
 public:
  int64_t size = 0;             // samples in this batch (the last one may be smaller)
  int64_t index = 0;            // batch number within the epoch
  const uint8_t* images = nullptr;
  const int64_t* labels = nullptr;
  int image_size = 0;
  // With LoaderOptions::encoded: `size` samples, those with bytes still to decode.
  const EncodedSample* encoded = nullptr;
};

struct LoaderStats {
  int64_t samples = 0;
  int64_t bad_files = 0;  // undecodable files, each replaced by another sample
};

class Loader {
 public:
  Loader(const ImageFolder& dataset, const LoaderOptions& options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t batches_per_epoch() const;
  int64_t samples_per_epoch() const;  // this rank's samples, padded as DistributedSampler
  // Starts (or restarts) an epoch; batches come out in order.
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch of the epoch, or false at its end. The batch stays valid until the next
  // call of next() or start_epoch().
  bool next(Batch& batch);
  LoaderStats stats() const;
  // Bytes of all batch buffers: bounded by (prefetch + 1) batches.
  size_t buffer_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ImageNet's normalisation, applied on the device (runtime/cpu/normalize.h and its CUDA twin).
inline constexpr float kImageNetMean[3] = {0.485f, 0.456f, 0.406f};
inline constexpr float kImageNetStd[3] = {0.229f, 0.224f, 0.225f};

}  // namespace oxtrain::io
