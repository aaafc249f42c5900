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

namespace fs = std::filesystem;

namespace oxtrain::cli {

namespace {

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
    lo.encoded = o.gpu_decode;
    loader_ = std::make_unique<io::Loader>(*dataset_, lo);
    pixels_.resize(static_cast<size_t>(o.batch_size * 3 * o.image_size * o.image_size));
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
    // A full batch is fed from the loader's buffer (valid until the next call). A short last
    // batch is padded with black images: outputs of padded rows are ignored.
    const uint8_t* pixels = b.images;
    if (b.size < options_.batch_size && !b.encoded) {
      std::fill(pixels_.begin(), pixels_.end(), uint8_t{0});
      std::copy(b.images, b.images + b.size * 3 * options_.image_size * options_.image_size, pixels_.begin());
      pixels = pixels_.data();
    }
    std::copy(b.labels, b.labels + b.size, labels_.begin());
    if (b.size < options_.batch_size) std::fill(labels_.begin() + b.size, labels_.end(), 0);
    batch = {b.size, nullptr, pixels, labels_.data(), b.encoded};
    return true;
  }
  int64_t bad_files() const override { return loader_->stats().bad_files; }

 private:
  SourceOptions options_;
  std::unique_ptr<io::ImageFolder> dataset_;
  std::unique_ptr<io::Loader> loader_;
  std::vector<uint8_t> pixels_;
  std::vector<int64_t> labels_;
};

// One batch, the same every step: uint8 pixels (synthetic) or float images (tensor files).
class FixedSource : public BatchSource {
 public:
  FixedSource(std::vector<float> images, std::vector<uint8_t> pixels, std::vector<int64_t> labels, int64_t classes,
              int64_t batches)
      : images_(std::move(images)), pixels_(std::move(pixels)), labels_(std::move(labels)), classes_(classes),
        batches_(batches) {}
  bool gives_pixels() const override { return !pixels_.empty(); }
  int64_t batches_per_epoch() const override { return batches_; }
  int64_t samples_per_epoch() const override {
    return batches_ * static_cast<int64_t>(labels_.size());
  }
  int64_t num_classes() const override { return classes_; }
  void start_epoch(int64_t, int64_t first_batch) override { position_ = first_batch; }
  bool next(TrainBatch& batch) override {
    if (position_ >= batches_) return false;
    ++position_;
    batch = {static_cast<int64_t>(labels_.size()), images_.empty() ? nullptr : images_.data(),
             pixels_.empty() ? nullptr : pixels_.data(), labels_.data()};
    return true;
  }

 private:
  std::vector<float> images_;
  std::vector<uint8_t> pixels_;
  std::vector<int64_t> labels_;
  int64_t classes_, batches_, position_ = 0;
};

// Synthetic and tensor-file epochs are as long as an ImageNet epoch would be at this batch.
int64_t imagenet_batches(int64_t batch) { return (1281167 + batch - 1) / batch; }

}  // namespace

std::vector<float> imagenet_mean() { return {io::kImageNetMean, io::kImageNetMean + 3}; }
std::vector<float> imagenet_std() { return {io::kImageNetStd, io::kImageNetStd + 3}; }

std::unique_ptr<BatchSource> folder_source(const std::string& root, const SourceOptions& options) {
  return std::make_unique<FolderSource>(root, options);
}

std::unique_ptr<BatchSource> synthetic_source(const SourceOptions& o) {
  io::SyntheticBatch s =
      io::make_synthetic_batch(o.batch_size, o.image_size, o.classes, o.seed + static_cast<uint64_t>(o.rank));
  return std::make_unique<FixedSource>(std::vector<float>{}, std::move(s.images), s.labels, o.classes,
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
  std::vector<float> images(t.images.data<float>(), t.images.data<float>() + t.images.numel());
  return std::make_unique<FixedSource>(std::move(images), std::vector<uint8_t>{}, t.labels.to_int64(), 0,
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
