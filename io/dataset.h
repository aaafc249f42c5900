// Datasets in ImageNet's folder layout: DATA/train/<class>/<image>, DATA/val/<class>/<image>
// (or a class folder root given directly). Classes are the sorted folder names and their
// index is the label, as torchvision.datasets.ImageFolder does; files with the extensions
// torchvision accepts (case-insensitive) are samples, sorted by path within a class. A class
// folder without images is refused, as ImageFolder refuses it (FileNotFoundError): it would
// shift the labels of every class after it against a split that has images for it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace oxtrain::io {

struct Sample {
  std::string path;
  int64_t label = 0;
};

struct ScanOptions {
  // Where the index of a scanned folder is cached, so a second start over 1.28 M files does
  // not rescan: "" puts it beside the data (DATA/train/.oxtrain-index) and falls back to
  // ~/.cache/oxtrain/ when the data is read-only.
  std::string cache_dir;
  bool use_cache = true;
  // Called now and then while scanning (files found so far); nullptr: quiet.
  std::function<void(int64_t files)> progress;
};

class ImageFolder {
 public:
  // Throws oxtrain::Error (base/error.h) when the folder is missing, holds no images, or has
  // a class folder without images.
  static ImageFolder scan(const std::string& root, const ScanOptions& options = {});
  // A dataset from a list made elsewhere (tests, other indexes). Nothing is checked here: the
  // loader range-checks every label it reads.
  static ImageFolder from_list(std::string root, std::vector<std::string> classes,
                               std::vector<Sample> samples);

  const std::string& root() const { return root_; }
  const std::vector<std::string>& classes() const { return classes_; }
  const std::vector<Sample>& samples() const { return samples_; }
  int64_t size() const { return static_cast<int64_t>(samples_.size()); }
  bool loaded_from_cache() const { return from_cache_; }

 private:
  std::string root_;
  std::vector<std::string> classes_;
  std::vector<Sample> samples_;
  bool from_cache_ = false;
};

// torchvision's IMG_EXTENSIONS, lower case with the dot.
bool is_image_file(const std::string& path);

// The class folders of a dataset root, as scan() names them (sorted; symlinks followed).
std::vector<std::string> class_folders(const std::string& root);

// Training and validation must hold the same classes, else the same label means two classes.
// Throws Error naming the difference: "val/ has class 'n0199' that train/ lacks; train/ has
// 'n0123' that val/ lacks".
void check_same_classes(const std::string& train_root, const std::string& val_root);

// The indices a rank reads in one epoch, as PyTorch's DistributedSampler gives them: a
// permutation seeded by (seed, epoch) when shuffling, padded by repeating from the start to a
// multiple of `world`, then every world-th index from `rank`. With world 1 and no shuffle:
// 0..n-1.
std::vector<int64_t> epoch_indices(int64_t dataset_size, int64_t epoch, uint64_t seed,
                                   bool shuffle, int rank = 0, int world = 1);

}  // namespace oxtrain::io
