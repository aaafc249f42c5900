// Where `oxtrain train` gets its batches: an ImageNet folder through the threaded loader,
// one synthetic batch made once (--synthetic), or fixed tensors from files (--input-tensors).
// The loader and synthetic data hand out uint8 NHWC pixels, which the graph normalises with
// ImageNet's mean and std (on the GPU, in one kernel with the cast and the layout); tensor
// files hold float NCHW images as the model takes them. Labels are int64.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::io {
struct EncodedSample;
}

namespace oxtrain::cli {

struct TrainBatch {
  int64_t size = 0;            // real samples (a validation batch may be padded after them)
  const float* images = nullptr;    // [batch, 3, H, W] normalised (tensor files), or
  const uint8_t* pixels = nullptr;  // [batch, H, W, 3] as decoded (the loader, synthetic data)
  const int64_t* labels = nullptr;
  // --decode gpu: `size` samples, each a JPEG for the GPU or decoded in `pixels`; rows from
  // `size` on are padding (black).
  const io::EncodedSample* encoded = nullptr;
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t batches_per_epoch() const = 0;
  virtual int64_t samples_per_epoch() const = 0;
  virtual int64_t num_classes() const = 0;  // 0 when unknown (tensor files)
  // Starts an epoch at batch `first_batch` (resuming mid-epoch gives the batches an
  // uninterrupted run would have seen).
  virtual void start_epoch(int64_t epoch, int64_t first_batch) = 0;
  virtual bool next(TrainBatch& batch) = 0;
  virtual int64_t bad_files() const { return 0; }
  // Batches carry uint8 pixels, which the training graph normalises (graph::normalize_images_input).
  virtual bool gives_pixels() const { return true; }
};

// ImageNet's per-channel mean and standard deviation, as the graph's NormalizeImages takes them.
std::vector<float> imagenet_mean();
std::vector<float> imagenet_std();

struct SourceOptions {
  int64_t batch_size = 0;
  int image_size = 224;
  int workers = 4;
  uint64_t seed = 0;
  bool train = true;
  int64_t classes = 1000;  // for synthetic labels
  double min_crop_scale = 0.08;  // RandomResizedCrop's smallest area fraction
  bool gpu_decode = false;       // JPEGs nvJPEG's hardware decoder takes stay encoded (--decode gpu)
  // Data parallel: this rank's share of each epoch (DistributedSampler's), and for synthetic
  // data a batch of its own.
  int rank = 0, world = 1;
};

// DATA/train or DATA/val when they exist (or DATA itself for training), an ImageFolder.
std::unique_ptr<BatchSource> folder_source(const std::string& root, const SourceOptions& options);
std::unique_ptr<BatchSource> synthetic_source(const SourceOptions& options);

// --input-tensors "images.pb,labels.pb": float NCHW images and int64 labels, one batch used
// every step. They are read first, checked against the model once it is loaded, and only then
// become a source.
struct InputTensors {
  graph::Tensor images, labels;
};
InputTensors read_input_tensors(const std::string& files);
// Refuses (one line naming both shapes) images that differ from the model's input
// [batch_size, C, H, W] float32 in rank, dtype, batch, channels, height or width, labels that
// are not int64 [batch_size], and labels outside [0, classes) when classes > 0.
void check_input_tensors(const InputTensors& tensors, const graph::Value& model_input,
                         int64_t batch_size, int64_t classes);
std::unique_ptr<BatchSource> tensor_source(InputTensors tensors, const SourceOptions& options);

// DATA/train and DATA/val if present, else DATA for training and no validation.
struct DataFolders {
  std::string train, val;
};
DataFolders find_data_folders(const std::string& data);

}  // namespace oxtrain::cli
