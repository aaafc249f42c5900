// The threaded loader: determinism across thread counts, epochs and batches, bad files,
// bounded memory, restarting an epoch.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "graph/ir.h"
#include "io/dataset.h"
#include "io/decode.h"
#include "io/loader.h"
#include "io/sources.h"
#include "tests/helpers.h"

namespace oxtrain::io {
namespace {

namespace fs = std::filesystem;

using TempDir = test::ScopedTempDir;

using test::write_bytes;

// Class c's images are dominated by channel c (220 against 30) with a +-20 pattern that
// differs from image to image, so crops and flips change the bytes while the colour still
// tells the class.
Image class_image(int cls, int k, int width, int height) {
  Image im;
  im.width = width;
  im.height = height;
  im.rgb.resize(size_t(width) * height * 3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int ch = 0; ch < 3; ++ch) {
        int base = ch == cls ? 220 : 30;
        int pattern = (x * (7 + k) + y * 13 + ch * 5 + k * 31) % 41 - 20;
        im.rgb[(size_t(y) * width + x) * 3 + ch] = uint8_t(std::clamp(base + pattern, 0, 255));
      }
  return im;
}

const char* const kClasses[3] = {"b_red", "a_green", "c_blue"};  // sorted: a_green b_red c_blue
int colour_channel(const std::string& class_name) {
  return class_name == "b_red" ? 0 : class_name == "a_green" ? 1 : 2;
}

// `per_class` images in each of three classes, of varying sizes.
std::string make_dataset(const std::string& root, int per_class) {
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < per_class; ++k) {
      int w = 48 + 8 * (k % 4), h = 40 + 6 * (k % 3);
      char name[32];
      std::snprintf(name, sizeof name, "img_%04d.JPEG", k);
      write_bytes(root + "/" + kClasses[c] + "/" + name,
                 encode_jpeg(class_image(colour_channel(kClasses[c]), k + 50 * c, w, h)));
    }
  return root;
}

ScanOptions no_cache() {
  ScanOptions o;
  o.use_cache = false;
  return o;
}

struct Epoch {
  std::vector<std::vector<uint8_t>> images;
  std::vector<std::vector<int64_t>> labels;
  std::vector<int64_t> sizes;
  int64_t samples() const {
    int64_t s = 0;
    for (int64_t n : sizes) s += n;
    return s;
  }
};

Epoch run_epoch(Loader& loader, int64_t epoch, int64_t max_batches = -1) {
  Epoch e;
  loader.start_epoch(epoch);
  Batch b;
  int64_t expect_index = 0;
  while ((max_batches < 0 || int64_t(e.sizes.size()) < max_batches) && loader.next(b)) {
    EXPECT_EQ(b.index, expect_index++);
    const size_t bytes = size_t(b.size) * b.image_size * b.image_size * 3;
    e.images.emplace_back(b.images, b.images + bytes);
    e.labels.emplace_back(b.labels, b.labels + b.size);
    e.sizes.push_back(b.size);
  }
  return e;
}

LoaderOptions options(int workers, bool train, int64_t batch = 4, int size = 32) {
  LoaderOptions o;
  o.batch_size = batch;
  o.image_size = size;
  o.train = train;
  o.drop_last = train;
  o.workers = workers;
  o.seed = 1234;
  return o;
}

// The class each sample shows: its dominant colour channel over the whole crop.
std::vector<int64_t> colour_classes(const ImageFolder& data, const Epoch& e, int size) {
  std::vector<int64_t> out;
  for (size_t b = 0; b < e.sizes.size(); ++b)
    for (int64_t s = 0; s < e.sizes[b]; ++s) {
      double sum[3] = {0, 0, 0};
      const uint8_t* p = e.images[b].data() + size_t(s) * size * size * 3;
      for (int i = 0; i < size * size; ++i)
        for (int ch = 0; ch < 3; ++ch) sum[ch] += p[i * 3 + ch];
      int channel = int(std::max_element(sum, sum + 3) - sum);
      int64_t cls = -1;
      for (size_t c = 0; c < data.classes().size(); ++c)
        if (colour_channel(data.classes()[c]) == channel) cls = int64_t(c);
      out.push_back(cls);
    }
  return out;
}

std::vector<int64_t> all_labels(const Epoch& e) {
  std::vector<int64_t> out;
  for (const auto& l : e.labels) out.insert(out.end(), l.begin(), l.end());
  return out;
}

class IoLoader : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    data_ = new ImageFolder(ImageFolder::scan(make_dataset(dir_->path + "/train", 10), no_cache()));
  }
  static void TearDownTestSuite() {
    delete data_;
    delete dir_;
  }
  static TempDir* dir_;
  static ImageFolder* data_;
};
TempDir* IoLoader::dir_ = nullptr;
ImageFolder* IoLoader::data_ = nullptr;

TEST_F(IoLoader, SameBytesWhateverTheThreadCount) {
  ASSERT_EQ(data_->size(), 30);
  Epoch reference;
  for (int workers : {0, 1, 3}) {
    SCOPED_TRACE("workers " + std::to_string(workers));
    Loader loader(*data_, options(workers, true));
    Epoch e = run_epoch(loader, 1);
    ASSERT_EQ(e.sizes.size(), 7u);  // 30 samples, batches of 4, drop_last
    if (workers == 0) {
      reference = e;
      continue;
    }
    for (size_t b = 0; b < e.sizes.size(); ++b) {
      EXPECT_EQ(e.images[b], reference.images[b]) << "batch " << b;
      EXPECT_EQ(e.labels[b], reference.labels[b]) << "batch " << b;
    }
  }
  // The labels follow the images through cropping and flipping.
  EXPECT_EQ(colour_classes(*data_, reference, 32), all_labels(reference));

  // Another seed or another epoch crops (and orders) differently.
  LoaderOptions o = options(2, true);
  o.seed = 99;
  Loader other_seed(*data_, o);
  Epoch s = run_epoch(other_seed, 1);
  Loader same_seed(*data_, options(2, true));
  Epoch e2 = run_epoch(same_seed, 2);
  Epoch e1 = run_epoch(same_seed, 1);
  for (size_t b = 0; b < reference.sizes.size(); ++b) {
    EXPECT_NE(s.images[b], reference.images[b]) << "batch " << b;
    EXPECT_NE(e2.images[b], reference.images[b]) << "batch " << b;
    EXPECT_EQ(e1.images[b], reference.images[b]) << "batch " << b;
  }
  EXPECT_NE(all_labels(e2), all_labels(reference));  // reshuffled
}

TEST_F(IoLoader, SameImageSameCropAcrossBatchSizes) {
  // SampleRng is seeded with the dataset index, so an image's crop in an epoch does not depend
  // on the batch size (the order of the epoch does not either).
  Loader a(*data_, options(2, true, 3));
  Loader b(*data_, options(1, true, 5));
  Epoch ea = run_epoch(a, 4), eb = run_epoch(b, 4);
  std::vector<uint8_t> flat_a, flat_b;
  for (auto& v : ea.images) flat_a.insert(flat_a.end(), v.begin(), v.end());
  for (auto& v : eb.images) flat_b.insert(flat_b.end(), v.begin(), v.end());
  ASSERT_EQ(flat_a.size(), size_t(30) * 32 * 32 * 3);
  ASSERT_EQ(flat_b.size(), size_t(30) * 32 * 32 * 3);
  EXPECT_EQ(flat_a, flat_b);
}

TEST_F(IoLoader, DropLastAndLabels) {
  for (int workers : {0, 2}) {
    SCOPED_TRACE("workers " + std::to_string(workers));
    LoaderOptions o = options(workers, false, 4);
    o.drop_last = false;
    Loader keep(*data_, o);
    EXPECT_EQ(keep.samples_per_epoch(), 30);
    EXPECT_EQ(keep.batches_per_epoch(), 8);
    Epoch e = run_epoch(keep, 0);
    ASSERT_EQ(e.sizes.size(), 8u);
    EXPECT_EQ(e.sizes.back(), 2);
    EXPECT_EQ(e.samples(), 30);
    // Validation: in dataset order, labels as scanned, and each centre pixel is its class's
    // colour.
    std::vector<int64_t> labels = all_labels(e);
    for (int64_t i = 0; i < 30; ++i)
      EXPECT_EQ(labels[size_t(i)], data_->samples()[size_t(i)].label);
    EXPECT_EQ(colour_classes(*data_, e, 32), labels);
    for (size_t b = 0; b < e.sizes.size(); ++b)
      for (int64_t s = 0; s < e.sizes[b]; ++s) {
        const uint8_t* centre = e.images[b].data() + size_t(s) * 32 * 32 * 3 + (16 * 32 + 16) * 3;
        int channel = colour_channel(data_->classes()[size_t(e.labels[b][size_t(s)])]);
        for (int ch = 0; ch < 3; ++ch)
          EXPECT_NEAR(centre[ch], ch == channel ? 220 : 30, 40) << "batch " << b << " sample " << s;
      }
    EXPECT_EQ(keep.stats().samples, 30);

    o.drop_last = true;
    Loader drop(*data_, o);
    EXPECT_EQ(drop.batches_per_epoch(), 7);
    Epoch d = run_epoch(drop, 0);
    EXPECT_EQ(d.sizes, std::vector<int64_t>(7, 4));
    for (size_t b = 0; b < d.sizes.size(); ++b) {
      EXPECT_EQ(d.images[b], e.images[b]);
      EXPECT_EQ(d.labels[b], e.labels[b]);
    }
  }
}

TEST_F(IoLoader, ShardsSplitTheEpoch) {
  // world 4: ceil(30 / 4) = 8 samples a rank (two padded), two batches of 4.
  std::multiset<int64_t> seen;
  for (int rank = 0; rank < 4; ++rank) {
    LoaderOptions o = options(1, false, 4);
    o.rank = rank;
    o.world = 4;
    Loader l(*data_, o);
    EXPECT_EQ(l.samples_per_epoch(), 8);
    Epoch e = run_epoch(l, 0);
    EXPECT_EQ(e.samples(), 8);
    std::vector<int64_t> want = epoch_indices(30, 0, o.seed, false, rank, 4);
    std::vector<int64_t> labels = all_labels(e);
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(labels[k], data_->samples()[size_t(want[k])].label);
      seen.insert(want[k]);
    }
  }
  EXPECT_EQ(seen.size(), 32u);
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 30u);
}

TEST_F(IoLoader, Errors) {
  LoaderOptions o = options(1, true);
  o.batch_size = 0;
  EXPECT_THROW({ Loader l(*data_, o); }, Error);
  o = options(1, true);
  o.world = 2;
  o.rank = 2;
  EXPECT_THROW({ Loader l(*data_, o); }, Error);
  o = options(-1, true);
  EXPECT_THROW({ Loader l(*data_, o); }, Error);
  o = options(1, true);
  o.allocate = [](size_t n) { return new uint8_t[n]; };
  EXPECT_THROW({ Loader l(*data_, o); }, Error);  // without release
  Loader l(*data_, options(1, true));
  Batch b;
  EXPECT_THROW(l.next(b), Error);  // before start_epoch
}

TEST_F(IoLoader, AllocatorHooks) {
  std::atomic<int> allocated{0}, released{0};
  LoaderOptions o = options(2, true);
  o.prefetch = 3;
  o.allocate = [&](size_t n) {
    ++allocated;
    return new uint8_t[n];
  };
  o.release = [&](uint8_t* p) {
    ++released;
    delete[] p;
  };
  {
    Loader l(*data_, o);
    EXPECT_EQ(allocated, 4);
    EXPECT_EQ(l.buffer_bytes(), 4u * (4 * 32 * 32 * 3 + 4 * 8));
    run_epoch(l, 0);
    run_epoch(l, 1);
    EXPECT_EQ(allocated, 4);
    EXPECT_EQ(released, 0);
  }
  EXPECT_EQ(released, 4);
}

TEST_F(IoLoader, BatchStaysValidUntilNext) {
  // Workers keep filling the other buffers while the consumer holds a batch.
  LoaderOptions o = options(3, true, 2);
  o.prefetch = 1;  // two buffers: the held one and the one being filled
  Loader l(*data_, o);
  Loader reference(*data_, o);
  Epoch want = run_epoch(reference, 0);
  l.start_epoch(0);
  Batch b;
  for (size_t k = 0; k < want.sizes.size(); ++k) {
    ASSERT_TRUE(l.next(b));
    std::this_thread::sleep_for(std::chrono::milliseconds(k < 3 ? 20 : 1));
    std::vector<uint8_t> held(b.images, b.images + want.images[k].size());
    EXPECT_EQ(held, want.images[k]) << "batch " << k;
    EXPECT_EQ(std::vector<int64_t>(b.labels, b.labels + b.size), want.labels[k]);
  }
  EXPECT_FALSE(l.next(b));
}

TEST_F(IoLoader, RestartMidEpoch) {
  Loader fresh(*data_, options(3, true));
  Epoch want = run_epoch(fresh, 2);
  Loader l(*data_, options(3, true, 4));
  for (int64_t stop_after : {0, 1, 3, 6, 7}) {
    SCOPED_TRACE("restart after " + std::to_string(stop_after) + " batches");
    run_epoch(l, 2, stop_after);
    run_epoch(l, 5, stop_after);  // another epoch, abandoned too
    Epoch e = run_epoch(l, 2);
    ASSERT_EQ(e.sizes, want.sizes);
    for (size_t b = 0; b < e.sizes.size(); ++b) {
      EXPECT_EQ(e.images[b], want.images[b]) << "batch " << b;
      EXPECT_EQ(e.labels[b], want.labels[b]) << "batch " << b;
    }
  }
  // Restarting without ever taking a batch, and destroying a loader mid-epoch, do not hang.
  for (int k = 0; k < 20; ++k) l.start_epoch(k);
  {
    Loader gone(*data_, options(3, true));
    gone.start_epoch(0);
    Batch b;
    ASSERT_TRUE(gone.next(b));
  }
  // The end of an epoch stays the end until the next start.
  Batch b;
  l.start_epoch(0);
  while (l.next(b)) {
  }
  EXPECT_FALSE(l.next(b));
}

TEST(IoLoaderFiles, BadFilesAreReplacedAndReportedOnce) {
  TempDir t;
  std::string root = make_dataset(t.path + "/val", 4);
  // A JPEG cut in half and a text file with a JPEG name, both in b_red (label 1).
  std::vector<uint8_t> jpeg = encode_jpeg(class_image(0, 7, 64, 64));
  jpeg.resize(jpeg.size() / 2);
  write_bytes(root + "/b_red/img_0001_truncated.JPEG", jpeg);
  std::string text = "these are notes, not an image\n";
  write_bytes(root + "/b_red/notes.JPEG", std::vector<uint8_t>(text.begin(), text.end()));
  ImageFolder data = ImageFolder::scan(root, no_cache());
  ASSERT_EQ(data.size(), 14);
  std::vector<std::string> bad = {root + "/b_red/img_0001_truncated.JPEG",
                                  root + "/b_red/notes.JPEG"};

  Epoch first;
  for (int workers : {0, 3}) {
    SCOPED_TRACE("workers " + std::to_string(workers));
    LoaderOptions o = options(workers, false, 4);
    o.drop_last = false;
    Loader l(data, o);
    testing::internal::CaptureStderr();
    Epoch e = run_epoch(l, 0);
    Epoch again = run_epoch(l, 1);
    std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(e.samples(), 14);
    EXPECT_EQ(again.samples(), 14);
    EXPECT_EQ(l.stats().bad_files, 2);
    EXPECT_EQ(l.stats().samples, 28);
    for (const std::string& path : bad) {
      std::string line = "oxtrain: warning: skipping unreadable image " + path + ": ";
      size_t at = err.find(line);
      EXPECT_NE(at, std::string::npos) << err;
      EXPECT_EQ(err.find(line, at + 1), std::string::npos) << "reported twice:\n" << err;
    }
    size_t warnings = 0;
    for (size_t at = err.find("oxtrain: warning: "); at != std::string::npos;
         at = err.find("oxtrain: warning: ", at + 1))
      ++warnings;
    EXPECT_EQ(warnings, 2u) << err;
    // Each bad file is replaced by the next sample of the dataset that decodes, with that
    // sample's label: img_0001_truncated.JPEG by b_red/img_0002.JPEG, notes.JPEG (last of
    // b_red) by c_blue/img_0000.JPEG.
    std::vector<int64_t> labels = all_labels(e);
    EXPECT_EQ(colour_classes(data, e, 32), labels);
    auto sample_bytes = [&](int64_t i) {
      const uint8_t* p = e.images[size_t(i / 4)].data() + size_t(i % 4) * 32 * 32 * 3;
      return std::vector<uint8_t>(p, p + 32 * 32 * 3);
    };
    std::vector<std::string> names;
    for (const Sample& s : data.samples()) names.push_back(fs::path(s.path).filename().string());
    for (int64_t i = 0; i < data.size(); ++i) {
      const std::string& path = data.samples()[size_t(i)].path;
      if (std::find(bad.begin(), bad.end(), path) == bad.end()) continue;
      int64_t j = i + 1;
      while (std::find(bad.begin(), bad.end(), data.samples()[size_t(j)].path) != bad.end()) ++j;
      EXPECT_EQ(sample_bytes(i), sample_bytes(j)) << names[size_t(i)] << " -> " << names[size_t(j)];
      EXPECT_EQ(labels[size_t(i)], labels[size_t(j)]);
    }
    if (workers == 0)
      first = e;
    else
      EXPECT_EQ(e.images, first.images);
  }
}

TEST(IoLoaderFiles, AFileThatDisappearsIsABadFile) {
  TempDir t;
  std::string root = make_dataset(t.path + "/d", 2);
  ImageFolder data = ImageFolder::scan(root, no_cache());
  fs::remove(data.samples()[0].path);
  Loader l(data, options(1, false, 2));
  testing::internal::CaptureStderr();
  Epoch e = run_epoch(l, 0);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(e.samples(), 6);
  EXPECT_EQ(l.stats().bad_files, 1);
  EXPECT_NE(err.find(data.samples()[0].path), std::string::npos) << err;
}

TEST(IoLoaderFiles, NothingDecodesIsAnError) {
  TempDir t;
  std::string text = "no image";
  write_bytes(t.path + "/a/1.jpg", std::vector<uint8_t>(text.begin(), text.end()));
  write_bytes(t.path + "/b/2.jpg", std::vector<uint8_t>(text.begin(), text.end()));
  ImageFolder data = ImageFolder::scan(t.path, no_cache());
  for (int workers : {0, 2}) {
    Loader l(data, options(workers, true, 1));
    l.start_epoch(0);
    Batch b;
    testing::internal::CaptureStderr();
    EXPECT_THROW(l.next(b), Error);
    testing::internal::GetCapturedStderr();
  }
}

TEST(IoLoaderSynthetic, DeterministicForASeed) {
  SyntheticBatch a = make_synthetic_batch(8, 16, 10, 3);
  SyntheticBatch b = make_synthetic_batch(8, 16, 10, 3);
  SyntheticBatch c = make_synthetic_batch(8, 16, 10, 4);
  EXPECT_EQ(a.batch_size, 8);
  EXPECT_EQ(a.image_size, 16);
  ASSERT_EQ(a.images.size(), size_t(8 * 16 * 16 * 3));
  ASSERT_EQ(a.labels.size(), 8u);
  EXPECT_EQ(a.images, b.images);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.images, c.images);
  for (int64_t l : a.labels) {
    EXPECT_GE(l, 0);
    EXPECT_LT(l, 10);
  }
  // Uniform bytes: every value turns up, the mean is near 127.5.
  SyntheticBatch big = make_synthetic_batch(4, 64, 1000, 0);
  std::vector<int> seen(256, 0);
  double sum = 0;
  for (uint8_t v : big.images) {
    ++seen[v];
    sum += v;
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 0), 0);
  EXPECT_NEAR(sum / double(big.images.size()), 127.5, 2.0);
  EXPECT_THROW(make_synthetic_batch(0, 16, 10, 0), Error);
  EXPECT_THROW(make_synthetic_batch(1, 16, 0, 0), Error);
}

// ---- memory ----

int64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::strlen(key)));
  return -1;
}

TEST(IoLoaderFiles, MemoryIsBounded) {
  if (oxtrain::test::running_under_sanitizer())
    GTEST_SKIP() << "bounds RSS, which ASan's quarantine and shadow memory inflate";
  TempDir t;
  std::string root = t.path + "/big";
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 100; ++k)
      write_bytes(root + "/" + kClasses[c] + "/" + std::to_string(k) + ".jpg",
                 encode_jpeg(class_image(colour_channel(kClasses[c]), k, 320 + 16 * (k % 5),
                                         240 + 8 * (k % 7))));
  ImageFolder data = ImageFolder::scan(root, no_cache());
  ASSERT_EQ(data.size(), 300);

  LoaderOptions o = options(2, true, 16, 64);
  o.prefetch = 2;
  const size_t batch_bytes = 16 * 64 * 64 * 3 + 16 * 8;  // images (a multiple of 64) + labels
  // VmHWM restarts from the current RSS after "5" is written to clear_refs (Linux >= 4.0).
  bool peak_reset = bool(std::ofstream("/proc/self/clear_refs") << "5");
  const int64_t before = status_kib("VmRSS:");
  int64_t max_rss = before;
  std::vector<int64_t> after_epoch;
  {
    Loader l(data, o);
    EXPECT_EQ(l.buffer_bytes(), 3 * batch_bytes);
    for (int epoch = 0; epoch < 3; ++epoch) {
      l.start_epoch(epoch);
      Batch b;
      int64_t n = 0;
      while (l.next(b)) {
        n += b.size;
        max_rss = std::max(max_rss, status_kib("VmRSS:"));
      }
      EXPECT_EQ(n, 288);  // 300 // 16 batches of 16
      EXPECT_EQ(l.buffer_bytes(), 3 * batch_bytes);
      after_epoch.push_back(status_kib("VmRSS:"));
    }
  }
  const int64_t peak = peak_reset ? std::max(max_rss, status_kib("VmHWM:")) : max_rss;
  const int64_t growth_kib = peak - before;
  const int64_t bound_kib = int64_t(3 * batch_bytes / 1024) + 8 * 1024;
  std::printf("[ memory   ] 300 images 320-384 x 240-288 -> 64 x 64, batch 16, 2 workers, "
              "prefetch 2: buffers %zu KiB, RSS before %lld KiB, peak growth %lld KiB "
              "(VmHWM reset: %s), after epochs 1/2/3 %lld/%lld/%lld KiB, bound %lld KiB\n",
              3 * batch_bytes / 1024, (long long)before, (long long)growth_kib,
              peak_reset ? "yes" : "no", (long long)after_epoch[0], (long long)after_epoch[1],
              (long long)after_epoch[2], (long long)bound_kib);
  RecordProperty("peak_rss_growth_kib", std::to_string(growth_kib));
  EXPECT_LT(growth_kib, bound_kib);
  // No growth from epoch to epoch beyond allocator noise.
  EXPECT_LT(after_epoch[2] - after_epoch[0], 1024);

  // workers 0 decodes into a single buffer.
  o.workers = 0;
  Loader single(data, o);
  EXPECT_EQ(single.buffer_bytes(), batch_bytes);
}

}  // namespace
}  // namespace oxtrain::io

// Resuming mid-epoch: starting at batch k gives exactly batches k... of an uninterrupted epoch.
namespace oxtrain::io {
TEST(IoLoaderResume, StartsMidEpoch) {
  std::string root = std::filesystem::temp_directory_path() / "oxtrain-resume";
  std::filesystem::remove_all(root);
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 9; ++k) {
      Image im; im.width = 40 + k; im.height = 36; im.rgb.resize(size_t(im.width) * 36 * 3);
      for (size_t i = 0; i < im.rgb.size(); ++i) im.rgb[i] = uint8_t((i * (k + 3) + c * 80) % 251);
      auto bytes = encode_jpeg(im);
      std::filesystem::create_directories(root + "/c" + std::to_string(c));
      std::ofstream(root + "/c" + std::to_string(c) + "/" + std::to_string(k) + ".jpg", std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
  ScanOptions so; so.use_cache = false;
  ImageFolder data = ImageFolder::scan(root, so);
  for (int workers : {0, 3}) for (bool train : {true, false}) {
    LoaderOptions o; o.batch_size = 4; o.image_size = 24; o.workers = workers; o.train = train;
    o.drop_last = train; o.seed = 5;
    Loader full(data, o), part(data, o);
    std::vector<std::vector<uint8_t>> want; std::vector<int64_t> idx;
    full.start_epoch(3); Batch b;
    while (full.next(b)) want.emplace_back(b.images, b.images + b.size * 24 * 24 * 3 + 0);
    for (int64_t first : {int64_t(0), int64_t(2), int64_t(5), full.batches_per_epoch()}) {
      part.start_epoch(1);  part.next(b);  // something in flight
      part.start_epoch(3, first);
      int64_t k = first;
      while (part.next(b)) {
        EXPECT_EQ(b.index, k);
        EXPECT_EQ(std::vector<uint8_t>(b.images, b.images + b.size * 24 * 24 * 3), want[size_t(k)]);
        ++k;
      }
      EXPECT_EQ(k, full.batches_per_epoch());
    }
    EXPECT_THROW(part.start_epoch(3, full.batches_per_epoch() + 1), Error);
    EXPECT_THROW(part.start_epoch(3, -1), Error);
  }
  std::filesystem::remove_all(root);
}
}
