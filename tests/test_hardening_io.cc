// The data pipeline against bad trees and files: train/ and val/ with different classes, an
// empty class folder, labels out of range, image headers that claim more pixels than they
// hold, index caches that lie about their counts or point outside the root, a FIFO named like
// an image, and make-dataset into a folder that is not empty. Every bad input is made here.
#include <gtest/gtest.h>
#include <png.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "io/dataset.h"
#include "io/decode.h"
#include "io/loader.h"
#include "io/make_dataset.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::io;
namespace fs = std::filesystem;

namespace {

using test::write_bytes;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// A 16x16 JPEG of random pixels.
std::vector<uint8_t> small_jpeg(uint64_t seed) { return encode_jpeg(test::random_image(16, 16, seed)); }

// A JPEG whose baseline frame header (SOF0) claims width x height.
std::vector<uint8_t> jpeg_claiming(std::vector<uint8_t> jpeg, int width, int height) {
  for (size_t i = 0; i + 8 < jpeg.size(); ++i)
    if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0) {
      jpeg[i + 5] = uint8_t(height >> 8);
      jpeg[i + 6] = uint8_t(height);
      jpeg[i + 7] = uint8_t(width >> 8);
      jpeg[i + 8] = uint8_t(width);
      return jpeg;
    }
  ADD_FAILURE() << "no SOF0 marker";
  return jpeg;
}

uint32_t crc32(const uint8_t* data, size_t n) {
  uint32_t crc = ~0u;
  for (size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
  }
  return ~crc;
}

void png_chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  auto be32 = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(uint8_t(v >> s));
  };
  be32(uint32_t(data.size()));
  size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  be32(crc32(out.data() + start, out.size() - start));
}

// A 69-byte PNG claiming width x height RGB pixels: a valid header, a few bytes of data.
std::vector<uint8_t> tiny_png_claiming(uint32_t width, uint32_t height) {
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> ihdr;
  for (uint32_t v : {width, height})
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(uint8_t(v >> s));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});
  png_chunk(png, "IHDR", ihdr);
  png_chunk(png, "IDAT", {0x78, 0x01, 0x00, 0x00, 0x80, 0xFF, 0x7F, 0, 0, 0, 0, 0});
  png_chunk(png, "IEND", {});
  return png;
}

// A real, complete 1-bit grey PNG of width x height black pixels (deflate makes it small).
std::vector<uint8_t> black_png(uint32_t width, uint32_t height) {
  std::vector<uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, size_t n) {
        auto* o = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(p));
        o->insert(o->end(), data, data + n);
      },
      nullptr);
  png_set_IHDR(png, info, width, height, 1, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 9);
  png_write_info(png, info);
  std::vector<uint8_t> row((width + 7) / 8, 0);
  for (uint32_t y = 0; y < height; ++y) png_write_row(png, row.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// Runs fn in a child process with `seconds` of wall time and, when extra_mib > 0, an address
// space of what the process maps now plus extra_mib: a hang or an allocation beyond that
// fails the child, not the test run. Returns fn's result, or 128 + the signal that ended it.
int in_child(const std::function<int()>& fn, int seconds, int64_t extra_mib = 0) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(unsigned(seconds));
    if (extra_mib > 0) {
      std::ifstream statm("/proc/self/statm");
      long pages = 0;
      statm >> pages;
      const rlim_t limit = rlim_t(pages) * rlim_t(::sysconf(_SC_PAGESIZE)) + (rlim_t(extra_mib) << 20);
      struct rlimit rl{limit, limit};
      ::setrlimit(RLIMIT_AS, &rl);
    }
    int rc = 99;
    try {
      rc = fn();
    } catch (const std::bad_alloc&) {
      rc = 98;
    } catch (...) {
      rc = 97;
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

// The message of the DecodeError fn throws, or "(no error)".
template <typename Fn>
std::string decode_error(Fn fn) {
  try {
    fn();
  } catch (const DecodeError& e) {
    return e.what();
  }
  return "(no error)";
}

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The tests date their trees an hour back so that the index cache is trusted (see dataset.cc).
void backdate(const std::string& root) {
  auto old = fs::file_time_type::clock::now() - std::chrono::hours(1);
  for (auto& e : fs::recursive_directory_iterator(root))
    if (e.is_directory()) fs::last_write_time(e.path(), old);
  fs::last_write_time(root, old);
}

// Classes `names` with `per_class` 16x16 JPEGs each under root.
void jpeg_tree(const std::string& root, const std::vector<std::string>& names, int per_class) {
  for (size_t c = 0; c < names.size(); ++c)
    for (int i = 0; i < per_class; ++i)
      write_bytes(root + "/" + names[c] + "/" + std::to_string(i) + ".JPEG", small_jpeg(c * 100 + i));
}

ScanOptions no_cache() {
  ScanOptions o;
  o.use_cache = false;
  return o;
}

// `oxtrain train DATA` of a tiny zoo ResNet, two images a batch, with `limit` ("--steps 1",
// "--epochs 1"); checkpoints go to DATA/ck.
test::RunResult train_briefly(const std::string& data, const std::string& limit) {
  return test::run_oxtrain_limited("train " + data + " -a resnet18 --image-size 32 -j 2 --threads 1 -b 2 " +
                                       limit + " --checkpoint-dir " + data + "/ck",
                                   120);
}

}  // namespace

// ---- labels ----

TEST(HardeningIo, TrainAndValMustHoldTheSameClasses) {
  test::ScopedTempDir t;
  jpeg_tree(t.path + "/train", {"n0001", "n0123"}, 1);
  jpeg_tree(t.path + "/val", {"n0001", "n0123", "n0199"}, 1);
  EXPECT_EQ(error_of([&] { check_same_classes(t.path + "/train", t.path + "/val"); }),
            "val/ has class 'n0199' that train/ lacks; train/ and val/ need the same class "
            "folders, else their labels differ");
  fs::rename(t.path + "/val/n0123", t.path + "/val/n0124");  // renamed in val/
  EXPECT_EQ(error_of([&] { check_same_classes(t.path + "/train", t.path + "/val"); }),
            "val/ has classes 'n0124', 'n0199' that train/ lacks; train/ has 'n0123' that val/ "
            "lacks; train/ and val/ need the same class folders, else their labels differ");
  fs::remove_all(t.path + "/val/n0124");
  fs::remove_all(t.path + "/val/n0199");
  EXPECT_EQ(error_of([&] { check_same_classes(t.path + "/train", t.path + "/val"); }),
            "train/ has 'n0123' that val/ lacks; train/ and val/ need the same class folders, "
            "else their labels differ");
  jpeg_tree(t.path + "/val", {"n0123"}, 1);
  EXPECT_EQ(error_of([&] { check_same_classes(t.path + "/train", t.path + "/val"); }), "(no error)");

  // Through the program: refused before any model is built or image read.
  jpeg_tree(t.path + "/val", {"n0199"}, 1);
  auto r = train_briefly(t.path, "--steps 1");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("val/ has class 'n0199' that train/ lacks"), std::string::npos) << r.err;
}

TEST(HardeningIo, EmptyClassFolderIsRefusedByName) {
  test::ScopedTempDir t;
  jpeg_tree(t.path + "/train", {"a", "c"}, 2);
  fs::create_directories(t.path + "/train/b_empty");
  write_text(t.path + "/train/b_empty/readme.txt", "no images here");
  EXPECT_EQ(error_of([&] { ImageFolder::scan(t.path + "/train"); }),
            "dataset folder '" + t.path + "/train': class folder 'b_empty' holds no images (.jpg "
            ".jpeg .png ...); add its images or remove the folder");
  auto r = train_briefly(t.path, "--steps 1");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("class folder 'b_empty' holds no images"), std::string::npos) << r.err;
}

TEST(HardeningIo, ALabelOutsideTheClassesIsAnErrorNamingTheFile) {
  test::ScopedTempDir t;
  jpeg_tree(t.path, {"a", "b"}, 1);
  ImageFolder data = ImageFolder::from_list(
      t.path, {"a", "b"}, {{t.path + "/a/0.JPEG", 0}, {t.path + "/b/0.JPEG", 2}});
  for (int workers : {0, 2}) {
    LoaderOptions o;
    o.batch_size = 2;
    o.image_size = 16;
    o.train = false;
    o.workers = workers;
    Loader loader(data, o);
    loader.start_epoch(0);
    Batch b;
    EXPECT_EQ(error_of([&] { loader.next(b); }),
              "data loader: image '" + t.path + "/b/0.JPEG' has label 2, outside [0, 2) of the "
              "dataset's classes")
        << "workers " << workers;
  }
}

// ---- sizes from headers ----

TEST(HardeningIo, APngClaiming16000x16000IsRefusedFromItsHeader) {
  std::vector<uint8_t> png = tiny_png_claiming(16000, 16000);
  ASSERT_EQ(png.size(), 69u);
  const std::string expected =
      "bomb.png: PNG of 16000x16000 pixels is over the limit of 178956970 (PIL's "
      "decompression-bomb limit)";
  EXPECT_EQ(decode_error([&] { decode_image(png.data(), png.size(), "bomb.png"); }), expected);
  EXPECT_EQ(decode_error([&] { read_header(png.data(), png.size(), "bomb.png"); }), expected);
  // Under the limit, a file far too small for its pixels is refused before they are allocated.
  if (test::running_under_sanitizer()) GTEST_SKIP() << "address-space limits do not work under ASan";
  std::vector<uint8_t> under = tiny_png_claiming(12000, 12000);
  int rc = in_child(
      [&] {
        std::string m = decode_error([&] { decode_image(under.data(), under.size(), "u.png"); });
        return m == "u.png: truncated PNG: 69 bytes cannot hold 12000x12000 pixels" ? 0 : 1;
      },
      30, 256);
  EXPECT_EQ(rc, 0) << "98: the pixels were allocated";
}

TEST(HardeningIo, AJpegClaimingMorePixelsThanItHoldsIsRefused) {
  std::vector<uint8_t> jpeg = jpeg_claiming(encode_jpeg(test::random_image(64, 48, 3)), 16383, 16383);
  ASSERT_LT(jpeg.size(), 12000u);
  EXPECT_EQ(decode_error([&] { decode_image(jpeg.data(), jpeg.size(), "big.JPEG"); }),
            "big.JPEG: JPEG of 16383x16383 pixels is over the limit of 178956970 (PIL's "
            "decompression-bomb limit)");
  // Under the limit, libjpeg fills what the data lacks with grey and only warns: refused.
  std::vector<uint8_t> grey = jpeg_claiming(encode_jpeg(test::random_image(64, 48, 3)), 2000, 1500);
  EXPECT_EQ(decode_error([&] { decode_image(grey.data(), grey.size(), "grey.JPEG"); }),
            "grey.JPEG: truncated JPEG (Corrupt JPEG data: premature end of data segment)");
}

// A file that is valid but whose pixels do not fit in memory: the worker reports it once and
// replaces the sample like any undecodable image, and the epoch goes on.
TEST(HardeningIo, AnyFailureOfAWorkerReplacesTheSample) {
  if (test::running_under_sanitizer()) GTEST_SKIP() << "address-space limits do not work under ASan";
  test::ScopedTempDir t;
  jpeg_tree(t.path, {"a", "b"}, 2);
  std::vector<uint8_t> png = black_png(12000, 12000);  // 432 MB as RGB
  write_bytes(t.path + "/a/1_huge.png", png);
  ImageFolder data = ImageFolder::scan(t.path, no_cache());
  ASSERT_EQ(data.size(), 5);
  int rc = in_child(
      [&] {
        LoaderOptions o;
        o.batch_size = 5;
        o.image_size = 16;
        o.train = false;
        o.drop_last = false;
        o.workers = 2;
        Loader loader(data, o);
        loader.start_epoch(0);
        Batch b;
        if (!loader.next(b) || b.size != 5) return 1;
        return loader.stats().bad_files == 1 ? 0 : 2;
      },
      60, 256);
  EXPECT_EQ(rc, 0) << "97: the worker's failure ended the epoch";
}

// ---- the index cache ----

TEST(HardeningIo, AnIndexCacheThatLiesIsIgnoredAndRebuilt) {
  test::ScopedTempDir t;
  const std::string root = t.path + "/train";
  jpeg_tree(root, {"a", "b"}, 2);
  backdate(root);
  ImageFolder fresh = ImageFolder::scan(root);
  ASSERT_TRUE(ImageFolder::scan(root).loaded_from_cache());
  const std::string index = root + "/.oxtrain-index";
  const std::string good = read_all(index);
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? s : s.replace(at, from.size(), to);
  };
  const std::vector<std::string> lies = {
      replaced("samples 4\n", "samples 549755813887\n"),
      replaced("samples 4\n", "samples 100000000\n"),
      replaced("dirs 2\n", "dirs 4611686018427387904\n"),
      replaced("classes 2\n", "classes 99999999999\n"),
      replaced("1 b/0.JPEG\n", "1 ../../../../etc/passwd\n"),
      replaced("1 b/0.JPEG\n", "1 /etc/passwd\n"),
      replaced("1 b/0.JPEG\n", "1 b/../../x.JPEG\n"),
      replaced("1 b/0.JPEG\n", "0 b/0.JPEG\n"),  // a sample in another class's folder
      replaced("1 b/0.JPEG\n", "1 b/elsewhere/0.JPEG\n"),  // a directory never walked
  };
  for (const std::string& lie : lies) {
    SCOPED_TRACE(lie.substr(lie.find("classes"), 60));
    if (test::running_under_sanitizer()) {
      write_text(index, lie);
      ImageFolder f = ImageFolder::scan(root);
      EXPECT_FALSE(f.loaded_from_cache());
      continue;
    }
    // In a child under 256 MB more address space: a header number must not size anything.
    int rc = in_child(
        [&] {
          write_text(index, lie);
          ImageFolder f = ImageFolder::scan(root);
          if (f.loaded_from_cache()) return 1;
          for (size_t i = 0; i < f.samples().size(); ++i)
            if (f.samples()[i].path != fresh.samples()[i].path ||
                f.samples()[i].label != fresh.samples()[i].label)
              return 2;
          return ImageFolder::scan(root).loaded_from_cache() && read_all(index) == good ? 0 : 3;
        },
        30, 256);
    EXPECT_EQ(rc, 0) << "1: the lie was used; 98: it sized an allocation";
  }
}

// ---- a FIFO named like an image ----

TEST(HardeningIo, AFifoNamedLikeAnImageIsReportedAndSkipped) {
  test::ScopedTempDir t;
  jpeg_tree(t.path, {"a", "b"}, 2);
  const std::string fifo = t.path + "/a/x.JPEG";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ImageFolder data = ImageFolder::scan(t.path, no_cache());
  ASSERT_EQ(data.size(), 5);
  EXPECT_EQ(decode_error([&] { decode_file(fifo); }),
            fifo + ": cannot open: is a FIFO, not a regular file");
  for (int workers : {0, 2}) {
    int rc = in_child(
        [&] {
          LoaderOptions o;
          o.batch_size = 5;
          o.image_size = 16;
          o.train = false;
          o.drop_last = false;
          o.workers = workers;
          Loader loader(data, o);
          loader.start_epoch(0);
          Batch b;
          if (!loader.next(b) || b.size != 5) return 1;
          return loader.stats().bad_files == 1 ? 0 : 2;
        },
        20);
    EXPECT_EQ(rc, 0) << "workers " << workers << (rc == 128 + SIGALRM ? ": hung" : "");
  }
}

// Through the program: a FIFO and a decompression bomb in train/ and an index cache whose
// header claims 2^39 samples; training runs, names each bad file once, rebuilds the index.
TEST(HardeningIo, TrainingSkipsAFifoAndABombAndRebuildsALyingIndex) {
  test::ScopedTempDir t;
  const std::string root = t.path + "/train";
  jpeg_tree(root, {"a", "b"}, 2);
  write_bytes(root + "/b/bomb.png", tiny_png_claiming(16000, 16000));
  ASSERT_EQ(::mkfifo((root + "/a/x.JPEG").c_str(), 0644), 0);
  backdate(root);
  ImageFolder::scan(root);  // writes the index
  const std::string index = root + "/.oxtrain-index";
  std::string text = read_all(index);
  size_t at = text.find("samples 6\n");
  ASSERT_NE(at, std::string::npos) << text;
  write_text(index, text.replace(at, 10, "samples 549755813887\n"));
  auto r = train_briefly(t.path, "--epochs 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const std::string& bad :
       {root + "/a/x.JPEG: cannot open: is a FIFO, not a regular file",
        root + "/b/bomb.png: PNG of 16000x16000 pixels is over the limit of 178956970"}) {
    const std::string line = "oxtrain: warning: skipping unreadable image " + bad;
    size_t first = r.err.find(line);
    EXPECT_NE(first, std::string::npos) << r.err;
    EXPECT_EQ(r.err.find(line, first + 1), std::string::npos) << "reported twice: " << r.err;
  }
  for (const char* bare : {"std::", "bad_alloc"}) EXPECT_EQ(r.err.find(bare), std::string::npos) << r.err;
  EXPECT_NE(read_all(index).find("samples 6\n"), std::string::npos);  // rebuilt
}

// ---- make-dataset into a folder that is not empty ----

TEST(HardeningIo, MakeDatasetRefusesAFolderThatIsNotEmpty) {
  test::ScopedTempDir t;
  const std::string out = t.path + "/out";
  const std::string args = " --classes 2 --train-per-class 2 --val-per-class 1 --min-side 16 "
                           "--max-side 16";
  fs::create_directories(out + "/train/00_circle");
  write_text(out + "/train/00_circle/mine.JPEG", "someone's file");
  auto r = test::run_oxtrain_limited("make-dataset " + out + args, 60);
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_EQ(r.err, "oxtrain: error: make-dataset: output folder '" + out +
                       "' is not empty; give an empty or new folder (only a make-dataset output "
                       "with the same options is written over)\n");
  EXPECT_EQ(read_all(out + "/train/00_circle/mine.JPEG"), "someone's file");
  EXPECT_FALSE(fs::exists(out + "/val"));

  // A new folder, then the same command again (a rerun, or after a kill): its own output.
  fs::remove_all(out);
  ASSERT_EQ(test::run_oxtrain_limited("make-dataset " + out + args, 60).exit_code, 0);
  ImageFolder::scan(out + "/train");  // training leaves an index beside the images
  auto again = test::run_oxtrain_limited("make-dataset " + out + args, 60);
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("2 classes, 4 training and 2 validation images"), std::string::npos)
      << again.out;
  // Other options, or a file added, and it is not the same output any more.
  auto other = test::run_oxtrain_limited("make-dataset " + out + args + " --seed 3", 60);
  EXPECT_EQ(test::clean_error_problem(other), "");
  write_text(out + "/val/01_square/extra.JPEG", "x");
  auto added = test::run_oxtrain_limited("make-dataset " + out + args, 60);
  EXPECT_EQ(test::clean_error_problem(added), "");
  // A file where the folder should be.
  write_text(t.path + "/file", "x");
  auto file = test::run_oxtrain_limited("make-dataset " + t.path + "/file" + args, 60);
  EXPECT_EQ(test::clean_error_problem(file), "");
  EXPECT_NE(file.err.find("exists and is not a folder"), std::string::npos) << file.err;
}

// Images and the marker go through atomic writes: nothing but the images is left.
TEST(HardeningIo, MakeDatasetLeavesNoTemporaryFiles) {
  test::ScopedTempDir t;
  MakeDatasetOptions o;
  o.output = t.path + "/d";
  o.classes = 2;
  o.train_per_class = 3;
  o.val_per_class = 1;
  o.min_side = 16;
  o.max_side = 16;
  MakeDatasetResult r = make_dataset(o);
  int64_t images = 0;
  for (const auto& e : fs::recursive_directory_iterator(o.output)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == ".oxtrain-make-dataset") continue;
    EXPECT_EQ(e.path().extension(), ".JPEG") << e.path();
    ++images;
  }
  EXPECT_EQ(images, r.train_images + r.val_images);
  EXPECT_EQ(images, 8);
}
