#include "cli/train_data.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "base/text.h"
#include "graph/passes.h"
#include "io/dataset.h"
#include "io/loader.h"
#include "io/sources.h"
#include "runtime/cpu/normalize.h"

namespace fs = std::filesystem;

namespace oxtrain::cli {

namespace {

runtime::NormalizeParams imagenet_params(int64_t batch, int size) {
  runtime::NormalizeParams p;
  p.batch = batch;
  p.height = size;
  p.width = size;
  p.channels = 3;
  p.mean = io::kImageNetMean;
  p.std = io::kImageNetStd;
  return p;
}

class FolderSource : public BatchSource {
 public:
  FolderSource(const std::string& root, const SourceOptions& o) : options_(o) {
    io::ScanOptions scan;
    if (isatty(STDERR_FILENO))
      scan.progress = [root](int64_t files) {
        std::fprintf(stderr, "\rscanning %s: %lld files", root.c_str(), static_cast<long long>(files));
      };
    dataset_ = std::make_unique<io::ImageFolder>(io::ImageFolder::scan(root, scan));
    if (scan.progress) std::fprintf(stderr, "\n");
    if (o.train && dataset_->size() < o.batch_size)
      throw Error("the batch size " + std::to_string(o.batch_size) + " is larger than the " +
                  std::to_string(dataset_->size()) + " images of '" + root +
                  "'; choose -b " + std::to_string(dataset_->size()) + " or less");
    io::LoaderOptions lo;
    lo.batch_size = o.batch_size;
    lo.image_size = o.image_size;
    lo.train = o.train;
    lo.drop_last = o.train;
    lo.workers = o.workers;
    lo.seed = o.seed;
    lo.crop.scale_min = o.min_crop_scale;
    lo.rank = o.rank;
    lo.world = o.world;
    loader_ = std::make_unique<io::Loader>(*dataset_, lo);
    images_.resize(static_cast<size_t>(o.batch_size * 3 * o.image_size * o.image_size));
    labels_.resize(static_cast<size_t>(o.batch_size));
  }
  int64_t batches_per_epoch() const override { return loader_->batches_per_epoch(); }
  int64_t samples_per_epoch() const override { return loader_->samples_per_epoch(); }
  int64_t num_classes() const override { return static_cast<int64_t>(dataset_->classes().size()); }
  void start_epoch(int64_t epoch, int64_t first_batch) override {
    loader_->start_epoch(epoch, first_batch);
  }
  bool next(TrainBatch& batch) override {
    io::Batch b;
    if (!loader_->next(b)) return false;
    // A short last batch is padded with zeros: outputs of padded rows are ignored.
    if (b.size < options_.batch_size) {
      std::fill(images_.begin(), images_.end(), 0.0f);
      std::fill(labels_.begin(), labels_.end(), 0);
    }
    runtime::normalize_u8_nhwc_to_f32_nchw_cpu(images_.data(), b.images,
                                              imagenet_params(b.size, options_.image_size));
    std::copy(b.labels, b.labels + b.size, labels_.begin());
    batch = {b.size, images_.data(), labels_.data()};
    return true;
  }
  int64_t bad_files() const override { return loader_->stats().bad_files; }

 private:
  SourceOptions options_;
  std::unique_ptr<io::ImageFolder> dataset_;
  std::unique_ptr<io::Loader> loader_;
  std::vector<float> images_;
  std::vector<int64_t> labels_;
};

// One batch, the same every step.
class FixedSource : public BatchSource {
 public:
  FixedSource(std::vector<float> images, std::vector<int64_t> labels, int64_t classes,
              int64_t batches)
      : images_(std::move(images)), labels_(std::move(labels)), classes_(classes),
        batches_(batches) {}
  int64_t batches_per_epoch() const override { return batches_; }
  int64_t samples_per_epoch() const override {
    return batches_ * static_cast<int64_t>(labels_.size());
  }
  int64_t num_classes() const override { return classes_; }
  void start_epoch(int64_t, int64_t first_batch) override { position_ = first_batch; }
  bool next(TrainBatch& batch) override {
    if (position_ >= batches_) return false;
    ++position_;
    batch = {static_cast<int64_t>(labels_.size()), images_.data(), labels_.data()};
    return true;
  }

 private:
  std::vector<float> images_;
  std::vector<int64_t> labels_;
  int64_t classes_, batches_, position_ = 0;
};

// Synthetic and tensor-file epochs are as long as an ImageNet epoch would be at this batch.
int64_t imagenet_batches(int64_t batch) { return (1281167 + batch - 1) / batch; }

}  // namespace

std::unique_ptr<BatchSource> folder_source(const std::string& root, const SourceOptions& options) {
  return std::make_unique<FolderSource>(root, options);
}

std::unique_ptr<BatchSource> synthetic_source(const SourceOptions& o) {
  io::SyntheticBatch s =
      io::make_synthetic_batch(o.batch_size, o.image_size, o.classes, o.seed + static_cast<uint64_t>(o.rank));
  std::vector<float> images(static_cast<size_t>(o.batch_size * 3 * o.image_size * o.image_size));
  runtime::normalize_u8_nhwc_to_f32_nchw_cpu(images.data(), s.images.data(),
                                            imagenet_params(o.batch_size, o.image_size));
  return std::make_unique<FixedSource>(std::move(images), s.labels, o.classes,
                                       imagenet_batches(o.batch_size));
}

InputTensors read_input_tensors(const std::string& files) {
  auto comma = files.find(',');
  if (comma == std::string::npos)
    throw Error("--input-tensors takes two files, IMAGES.pb,LABELS.pb");
  return {graph::read_tensor_file(files.substr(0, comma)),
          graph::read_tensor_file(files.substr(comma + 1))};
}

void check_input_tensors(const InputTensors& t, const graph::Value& model_input, int64_t batch_size,
                         int64_t classes) {
  // The model's input at this batch: oxtrain feeds float32 [batch, C, H, W].
  graph::Shape expected = model_input.shape;
  if (!expected.empty()) expected[0] = batch_size;
  auto text = [](graph::DType d, const graph::Shape& s) {
    return std::string(graph::dtype_name(d)) + " " + graph::shape_str(s);
  };
  if (t.images.dtype != graph::DType::f32 || t.images.shape != expected)
    throw Error("--input-tensors: the images are " + text(t.images.dtype, t.images.shape) +
                " but model input '" + escape_name(model_input.name) + "' takes " +
                text(graph::DType::f32, expected) + " at -b " + std::to_string(batch_size) +
                "; give images of that shape");
  if (t.labels.dtype != graph::DType::i64 || t.labels.shape != graph::Shape{batch_size})
    throw Error("--input-tensors: the labels are " + text(t.labels.dtype, t.labels.shape) +
                " but a batch of " + std::to_string(batch_size) + " takes int64 [" +
                std::to_string(batch_size) + "]");
  if (classes <= 0) return;
  const int64_t* labels = t.labels.data<int64_t>();
  for (int64_t i = 0; i < batch_size; ++i)
    if (labels[i] < 0 || labels[i] >= classes)
      throw Error("--input-tensors: label " + std::to_string(labels[i]) + " (sample " + std::to_string(i) +
                  ") is outside the model's " + std::to_string(classes) + " classes [0, " +
                  std::to_string(classes) + ")");
}

std::unique_ptr<BatchSource> tensor_source(InputTensors t, const SourceOptions& o) {
  if (t.images.dtype != graph::DType::f32 || t.images.shape.empty() || t.images.shape[0] != o.batch_size)
    throw Error("--input-tensors: the images were not checked against the model");  // a bug
  std::vector<float> pixels(t.images.data<float>(), t.images.data<float>() + t.images.numel());
  return std::make_unique<FixedSource>(std::move(pixels), t.labels.to_int64(), 0,
                                       imagenet_batches(o.batch_size));
}

DataFolders find_data_folders(const std::string& data) {
  std::error_code ec;
  if (!fs::is_directory(data, ec))
    throw Error("data folder '" + data + "' does not exist (expected DATA/train/<class>/*.JPEG)");
  DataFolders f;
  if (fs::is_directory(fs::path(data) / "train", ec)) {
    f.train = (fs::path(data) / "train").string();
    if (fs::is_directory(fs::path(data) / "val", ec)) f.val = (fs::path(data) / "val").string();
    // Labels are class indices: a class more, fewer or renamed in val/ shifts them all.
    if (!f.val.empty()) io::check_same_classes(f.train, f.val);
  } else {
    f.train = data;
  }
  return f;
}

}  // namespace oxtrain::cli
