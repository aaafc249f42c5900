// make-dataset: the ImageNet layout, decodable JPEGs of the promised sizes, byte-identical
// output for a seed, and clear errors for bad options.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "io/decode.h"
#include "io/make_dataset.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::io;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Every image under `root` (not the marker make-dataset leaves), relative path -> contents.
std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && e.path().filename() != ".oxtrain-make-dataset") files[fs::relative(e.path(), root).string()] = read_bytes(e.path());
  return files;
}

std::vector<std::string> sorted_dirs(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

MakeDatasetOptions tiny(const std::string& output, uint64_t seed) {
  MakeDatasetOptions o;
  o.output = output;
  o.classes = 3;
  o.train_per_class = 4;
  o.val_per_class = 2;
  o.min_side = 48;
  o.max_side = 96;
  o.seed = seed;
  return o;
}

template <typename Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one about " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(IoMakeDataset, WritesATinyImageNetLayout) {
  fs::path root = fs::path(test::temp_dir()) / "data";
  MakeDatasetOptions o = tiny(root.string(), 5);
  int64_t calls = 0, last_done = 0, last_total = 0;
  o.progress = [&](int64_t done, int64_t total) {
    ++calls;
    EXPECT_EQ(done, last_done + 1);
    last_done = done;
    last_total = total;
  };
  MakeDatasetResult r = make_dataset(o);
  EXPECT_EQ(r.train_images, 12);
  EXPECT_EQ(r.val_images, 6);
  EXPECT_EQ(calls, 18);
  EXPECT_EQ(last_done, 18);
  EXPECT_EQ(last_total, 18);

  EXPECT_EQ(sorted_dirs(root), (std::vector<std::string>{"train", "val"}));
  const std::vector<std::string> classes = {"00_circle", "01_square", "02_triangle"};
  EXPECT_EQ(sorted_dirs(root / "train"), classes);
  EXPECT_EQ(sorted_dirs(root / "val"), classes);

  int64_t bytes = 0;
  std::map<std::pair<int, int>, int> sizes;
  for (const char* split : {"train", "val"}) {
    int per_class = std::string(split) == "train" ? 4 : 2;
    for (const auto& cls : classes) {
      fs::path dir = root / split / cls;
      int count = 0;
      for (const auto& e : fs::directory_iterator(dir)) {
        ++count;
        EXPECT_EQ(e.path().extension(), ".JPEG") << e.path();
      }
      EXPECT_EQ(count, per_class) << dir;  // nothing else, no temporary files left
      for (int i = 0; i < per_class; ++i) {
        fs::path file = dir / (cls + "_" + std::to_string(i) + ".JPEG");
        ASSERT_TRUE(fs::exists(file)) << file;
        bytes += static_cast<int64_t>(fs::file_size(file));
        Decoded d = decode_file(file.string());
        EXPECT_GE(d.image.width, 48) << file;
        EXPECT_LE(d.image.width, 96) << file;
        EXPECT_GE(d.image.height, 48) << file;
        EXPECT_LE(d.image.height, 96) << file;
        sizes[{d.image.width, d.image.height}]++;
      }
    }
  }
  EXPECT_EQ(r.bytes, bytes);
  EXPECT_GT(sizes.size(), 5u);  // sizes and aspect ratios vary
}

TEST(IoMakeDataset, SameSeedSameBytes) {
  fs::path a = fs::path(test::temp_dir()) / "a", b = fs::path(test::temp_dir()) / "b",
           c = fs::path(test::temp_dir()) / "c";
  make_dataset(tiny(a.string(), 7));
  make_dataset(tiny(b.string(), 7));
  make_dataset(tiny(c.string(), 8));
  auto sa = snapshot(a), sb = snapshot(b), sc = snapshot(c);
  ASSERT_EQ(sa.size(), 18u);
  EXPECT_TRUE(sa == sb);
  ASSERT_EQ(sc.size(), 18u);
  int differ = 0;
  for (const auto& [name, content] : sa) differ += sc.at(name) != content;
  EXPECT_EQ(differ, 18);
  // Growing a split keeps the pictures already there; the other split is unchanged.
  fs::path d = fs::path(test::temp_dir()) / "d";
  MakeDatasetOptions more = tiny(d.string(), 7);
  more.train_per_class = 6;
  make_dataset(more);
  auto sd = snapshot(d);
  EXPECT_EQ(sd.size(), 24u);
  for (const auto& [name, content] : sa) EXPECT_EQ(sd.at(name), content) << name;
}

// Every kind of picture, and the textures point the way their names say.
TEST(IoMakeDataset, EveryClassIsDrawn) {
  ASSERT_GE(max_dataset_classes(), 10);
  fs::path root = fs::path(test::temp_dir()) / "all";
  MakeDatasetOptions o;
  o.output = root.string();
  o.classes = max_dataset_classes();
  o.train_per_class = 3;
  o.val_per_class = 1;
  o.min_side = 64;
  o.max_side = 128;
  MakeDatasetResult r = make_dataset(o);
  EXPECT_EQ(r.train_images, 3 * o.classes);
  std::vector<std::string> classes = sorted_dirs(root / "train");
  ASSERT_EQ(static_cast<int>(classes.size()), o.classes);
  for (int i = 0; i < o.classes; ++i) {
    std::string prefix = std::string(i < 10 ? "0" : "") + std::to_string(i) + "_";
    EXPECT_EQ(classes[i].rfind(prefix, 0), 0u) << classes[i];
  }
  // Mean absolute difference of neighbours along x and along y (green channel).
  auto gradients = [](const Decoded& d, double* gx, double* gy) {
    const Image& im = d.image;
    double sx = 0, sy = 0;
    for (int y = 0; y + 1 < im.height; ++y)
      for (int x = 0; x + 1 < im.width; ++x) {
        int v = im.rgb[(size_t(y) * im.width + x) * 3 + 1];
        sx += std::abs(v - im.rgb[(size_t(y) * im.width + x + 1) * 3 + 1]);
        sy += std::abs(v - im.rgb[(size_t(y + 1) * im.width + x) * 3 + 1]);
      }
    *gx = sx;
    *gy = sy;
  };
  for (const std::string& cls : classes) {
    for (int i = 0; i < 3; ++i) {
      Decoded d =
          decode_file((root / "train" / cls / (cls + "_" + std::to_string(i) + ".JPEG")).string());
      double gx = 0, gy = 0;
      gradients(d, &gx, &gy);
      if (cls == "03_hstripes") {
        EXPECT_GT(gy, 2 * gx) << cls << " " << i;
      }
      if (cls == "04_vstripes") {
        EXPECT_GT(gx, 2 * gy) << cls << " " << i;
      }
    }
  }
}

TEST(IoMakeDataset, BadOptionsAreErrors) {
  std::string dir = test::temp_dir();
  auto with = [&](auto change) {
    MakeDatasetOptions o = tiny(dir + "/x", 0);
    change(o);
    return o;
  };
  expect_error([&] { make_dataset(with([](auto& o) { o.classes = 1; })); }, "classes");
  expect_error([&] { make_dataset(with([](auto& o) { o.classes = max_dataset_classes() + 1; })); },
               "classes");
  expect_error([&] { make_dataset(with([](auto& o) { o.train_per_class = 0; })); }, "image");
  expect_error([&] { make_dataset(with([](auto& o) { o.val_per_class = 0; })); }, "image");
  expect_error(
      [&] {
        make_dataset(with([](auto& o) {
          o.min_side = 200;
          o.max_side = 100;
        }));
      },
      "sides");
  expect_error([&] { make_dataset(with([](auto& o) { o.quality = 0; })); }, "quality");
  expect_error([&] { make_dataset(with([](auto& o) { o.output = ""; })); }, "output");
  EXPECT_FALSE(fs::exists(dir + "/x"));  // nothing written for bad options
  // A regular file where a folder must go: not writable.
  { std::ofstream(dir + "/file") << "x"; }
  expect_error([&] { make_dataset(with([&](auto& o) { o.output = dir + "/file/sub"; })); },
               "cannot create");
}
