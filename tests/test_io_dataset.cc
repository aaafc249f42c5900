// ImageFolder scanning (class and sample order as torchvision's ImageFolder, the index cache)
// and DistributedSampler's epoch indices.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "io/dataset.h"
#include "tests/helpers.h"

namespace oxtrain::io {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed with its contents at the end.
using TempDir = test::ScopedTempDir;

// Sets an environment variable for the life of the object.
struct ScopedEnv {
  std::string name, saved;
  bool had;
  ScopedEnv(const std::string& n, const std::string& value) : name(n) {
    const char* old = std::getenv(n.c_str());
    had = old != nullptr;
    if (had) saved = old;
    ::setenv(n.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had)
      ::setenv(name.c_str(), saved.c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

void touch(const std::string& path, const std::string& content = "x") {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << content;
}

// The index ignores directories changed within two seconds of a scan (a later change could
// keep the same timestamp); tests date their trees an hour back so the index is usable.
void backdate(const std::string& root) {
  auto old = fs::file_time_type::clock::now() - std::chrono::hours(1);
  for (auto& e : fs::recursive_directory_iterator(root))
    if (e.is_directory()) fs::last_write_time(e.path(), old);
  fs::last_write_time(root, old);
}

std::vector<std::string> relative_paths(const ImageFolder& f) {
  std::vector<std::string> out;
  for (const Sample& s : f.samples()) {
    EXPECT_EQ(s.path.rfind(f.root() + "/", 0), 0u) << s.path;
    out.push_back(s.path.substr(f.root().size() + 1));
  }
  return out;
}

std::vector<int64_t> labels(const ImageFolder& f) {
  std::vector<int64_t> out;
  for (const Sample& s : f.samples()) out.push_back(s.label);
  return out;
}

// Three classes given out of order, mixed-case extensions, a non-image, nested folders.
void make_tree(const std::string& root) {
  touch(root + "/b_cats/2.jpg");
  touch(root + "/b_cats/10.jpg");
  touch(root + "/b_cats/1.JPEG");
  touch(root + "/b_cats/notes.txt");
  touch(root + "/a_dogs/z.Png");
  touch(root + "/a_dogs/sub/a.jpeg");
  touch(root + "/a_dogs/sub b/c.bmp");  // "sub" < "sub b" < "sub/deeper" (' ' < '/')
  touch(root + "/a_dogs/sub/deeper/d.webp");
  touch(root + "/a_dogs/README");
  touch(root + "/c_zebra/x.tiff");
  touch(root + "/stray.jpg");  // a file beside the class folders is not a sample
}

const std::vector<std::string> kTreeSamples = {
    // os.walk's directories sorted by path, then the files of each directory sorted
    "a_dogs/z.Png",      "a_dogs/sub/a.jpeg", "a_dogs/sub b/c.bmp", "a_dogs/sub/deeper/d.webp",
    "b_cats/1.JPEG",     "b_cats/10.jpg",      "b_cats/2.jpg",      "c_zebra/x.tiff"};
const std::vector<int64_t> kTreeLabels = {0, 0, 0, 0, 1, 1, 1, 2};

ScanOptions no_cache() {
  ScanOptions o;
  o.use_cache = false;
  return o;
}
const ScanOptions kNoCache = no_cache();

TEST(IoDataset, ClassesAndSamplesInTorchvisionOrder) {
  TempDir t;
  make_tree(t.path);
  ImageFolder f = ImageFolder::scan(t.path);
  EXPECT_EQ(f.classes(), (std::vector<std::string>{"a_dogs", "b_cats", "c_zebra"}));
  EXPECT_EQ(relative_paths(f), kTreeSamples);
  EXPECT_EQ(labels(f), kTreeLabels);
  EXPECT_EQ(f.size(), 8);
  EXPECT_EQ(f.root(), fs::path(t.path).lexically_normal().string());
  EXPECT_FALSE(f.loaded_from_cache());
}

TEST(IoDataset, RelativeRootAndTrailingSlash) {
  TempDir t;
  make_tree(t.path + "/train");
  std::string cwd = fs::current_path().string();
  fs::current_path(t.path);
  ImageFolder f = ImageFolder::scan("train/", kNoCache);
  fs::current_path(cwd);
  EXPECT_EQ(f.root(), t.path + "/train");
  EXPECT_EQ(relative_paths(f), kTreeSamples);
  EXPECT_FALSE(fs::exists(t.path + "/train/.oxtrain-index"));  // use_cache = false
}

TEST(IoDataset, SymlinkedFoldersAreFollowedOnce) {
  TempDir t;
  touch(t.path + "/elsewhere/e.jpg");
  touch(t.path + "/data/a/own.jpg");
  fs::create_directory_symlink(t.path + "/elsewhere", t.path + "/data/a/link");
  fs::create_directory_symlink(t.path + "/data/a", t.path + "/data/a/loop");  // a cycle
  fs::create_directory_symlink(t.path + "/elsewhere", t.path + "/data/b");  // a linked class
  ImageFolder f = ImageFolder::scan(t.path + "/data", kNoCache);
  EXPECT_EQ(f.classes(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(relative_paths(f), (std::vector<std::string>{"a/own.jpg", "a/link/e.jpg", "b/e.jpg"}));
}

TEST(IoDataset, IsImageFile) {
  for (const char* yes : {"a.jpg", "a.JPG", "b.jpeg", "n0/x_1.JPEG", "c.Png", "d.ppm", "e.bmp",
                          "f.pgm", "g.tif", "h.TIFF", "i.webp", ".jpg", "dir.d/a.jpg"})
    EXPECT_TRUE(is_image_file(yes)) << yes;
  for (const char* no : {"notes.txt", "a.gif", "a.jpg.txt", "jpg", "a.jpe", "a_jpg", "", "a.svg",
                         "a.tiff.bak", "README"})
    EXPECT_FALSE(is_image_file(no)) << no;
}

TEST(IoDataset, Errors) {
  TempDir t;
  auto message = [](const std::string& root) -> std::string {
    try {
      ImageFolder::scan(root);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  std::string missing = t.path + "/no_such_dir";
  EXPECT_NE(message(missing).find(missing), std::string::npos) << message(missing);
  EXPECT_NE(message(missing).find("does not exist"), std::string::npos) << message(missing);

  touch(t.path + "/file.jpg");
  EXPECT_NE(message(t.path + "/file.jpg").find("not a directory"), std::string::npos);

  fs::create_directories(t.path + "/empty");
  touch(t.path + "/empty/loose.jpg");
  std::string m = message(t.path + "/empty");
  EXPECT_NE(m.find("no class folders"), std::string::npos) << m;
  EXPECT_NE(m.find("n01440764"), std::string::npos) << m;  // shows the expected layout

  touch(t.path + "/noimages/a/readme.txt");
  fs::create_directories(t.path + "/noimages/b");
  m = message(t.path + "/noimages");
  EXPECT_NE(m.find("no images"), std::string::npos) << m;
  EXPECT_NE(m.find(".JPEG"), std::string::npos) << m;
}

// As torchvision's ImageFolder (FileNotFoundError): a class folder without images would take a
// label no image has and shift the classes after it against the other split.
TEST(IoDataset, EmptyClassFolderIsRefused) {
  TempDir t;
  touch(t.path + "/a/1.jpg");
  touch(t.path + "/b/notes.txt");
  touch(t.path + "/c/1.jpg");
  try {
    ImageFolder::scan(t.path, kNoCache);
    ADD_FAILURE() << "an empty class folder was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "dataset folder '" + t.path + "': class folder 'b' holds no images (.jpg .jpeg .png "
              "...); add its images or remove the folder");
  }
}

TEST(IoDataset, ProgressIsReported) {
  TempDir t;
  for (int c = 0; c < 2; ++c) {  // creating files is slow on some file systems: 1100 of them
    fs::create_directories(t.path + "/c" + std::to_string(c));
    for (int i = 0; i < 550; ++i) {
      std::string f = t.path + "/c" + std::to_string(c) + "/" + std::to_string(i) + ".jpg";
      ::close(::creat(f.c_str(), 0644));
    }
  }
  std::vector<int64_t> calls;
  ScanOptions o;
  o.use_cache = false;
  o.progress = [&](int64_t files) { calls.push_back(files); };
  ImageFolder f = ImageFolder::scan(t.path, o);
  EXPECT_EQ(f.size(), 1100);
  EXPECT_EQ(calls, (std::vector<int64_t>{1000, 1100}));
}

TEST(IoDataset, IndexCacheIsUsedAndInvalidated) {
  TempDir t;
  std::string root = t.path + "/train";
  make_tree(root);
  backdate(root);
  ImageFolder first = ImageFolder::scan(root);
  EXPECT_FALSE(first.loaded_from_cache());
  ASSERT_TRUE(fs::exists(root + "/.oxtrain-index"));

  int64_t reported = -1;
  ScanOptions o;
  o.progress = [&](int64_t files) { reported = files; };
  ImageFolder second = ImageFolder::scan(root, o);
  EXPECT_TRUE(second.loaded_from_cache());
  EXPECT_EQ(second.root(), first.root());
  EXPECT_EQ(second.classes(), first.classes());
  EXPECT_EQ(relative_paths(second), kTreeSamples);
  EXPECT_EQ(labels(second), kTreeLabels);
  EXPECT_EQ(reported, 8);

  // A file added deep down changes only its own directory's mtime.
  touch(root + "/a_dogs/sub/deeper/e.jpg");
  ImageFolder third = ImageFolder::scan(root);
  EXPECT_FALSE(third.loaded_from_cache());
  EXPECT_EQ(third.size(), 9);
  EXPECT_EQ(relative_paths(third)[4], "a_dogs/sub/deeper/e.jpg");
  backdate(root);
  EXPECT_FALSE(ImageFolder::scan(root).loaded_from_cache());  // ctimes moved: walks again
  EXPECT_TRUE(ImageFolder::scan(root).loaded_from_cache());

  // Removing a file is seen even with the folder's old mtime put back (its ctime moved).
  auto mtime = fs::last_write_time(root + "/b_cats");
  fs::remove(root + "/b_cats/10.jpg");
  fs::last_write_time(root + "/b_cats", mtime);
  ImageFolder removed = ImageFolder::scan(root);
  EXPECT_FALSE(removed.loaded_from_cache());
  EXPECT_EQ(removed.size(), 8);
  ASSERT_TRUE(ImageFolder::scan(root).loaded_from_cache());
  // So is a new class folder.
  fs::create_directories(root + "/d_new");
  touch(root + "/d_new/n.jpg");
  ImageFolder added = ImageFolder::scan(root);
  EXPECT_FALSE(added.loaded_from_cache());
  EXPECT_EQ(added.classes().size(), 4u);
  EXPECT_EQ(added.samples().back().label, 3);
}

TEST(IoDataset, RecentChangesAreNotTrusted) {
  TempDir t;
  make_tree(t.path);  // just written: within the racy window
  EXPECT_FALSE(ImageFolder::scan(t.path).loaded_from_cache());
  EXPECT_FALSE(ImageFolder::scan(t.path).loaded_from_cache());
  backdate(t.path);
  EXPECT_FALSE(ImageFolder::scan(t.path).loaded_from_cache());
  EXPECT_TRUE(ImageFolder::scan(t.path).loaded_from_cache());
}

TEST(IoDataset, CorruptIndexIsIgnored) {
  TempDir t;
  make_tree(t.path);
  backdate(t.path);
  ImageFolder::scan(t.path);
  std::string index = t.path + "/.oxtrain-index";
  ASSERT_TRUE(ImageFolder::scan(t.path).loaded_from_cache());
  std::string good;
  {
    std::ifstream in(index, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::vector<std::string> corruptions = {
      "",                                   // empty
      "garbage\n",                          // wrong version line
      good.substr(0, good.size() / 2),      // truncated
      good.substr(0, good.size() - 4),      // missing the end marker
      [&] {                                 // a label out of range
        std::string s = good;
        size_t at = s.find("samples ");
        at = s.find('\n', at) + 1;
        s.replace(at, 1, "7");
        return s;
      }(),
      std::string("\0\xff\n", 3)};
  for (const std::string& bad : corruptions) {
    {
      std::ofstream(index, std::ios::binary | std::ios::trunc) << bad;
    }
    ImageFolder f;
    ASSERT_NO_THROW(f = ImageFolder::scan(t.path)) << bad.size();
    EXPECT_FALSE(f.loaded_from_cache());
    EXPECT_EQ(relative_paths(f), kTreeSamples);
    EXPECT_EQ(labels(f), kTreeLabels);
    EXPECT_TRUE(ImageFolder::scan(t.path).loaded_from_cache());  // rewritten
  }
  // An index that is a directory can be neither read nor replaced (even by root): the index
  // goes to the user's cache folder instead. (The directory is a class folder now.)
  fs::remove(index);
  touch(index + "/x.jpg");
  backdate(t.path);
  TempDir home;
  ScopedEnv xdg("XDG_CACHE_HOME", home.path);
  ImageFolder f;
  ASSERT_NO_THROW(f = ImageFolder::scan(t.path));
  EXPECT_FALSE(f.loaded_from_cache());
  EXPECT_EQ(std::distance(fs::directory_iterator(home.path + "/oxtrain"), {}), 1);
  f = ImageFolder::scan(t.path);
  EXPECT_TRUE(f.loaded_from_cache());
  std::vector<std::string> with_index_class = kTreeSamples;
  with_index_class.insert(with_index_class.begin(), ".oxtrain-index/x.jpg");
  EXPECT_EQ(relative_paths(f), with_index_class);
}

TEST(IoDataset, IndexOfAMovedTreeIsNotUsed) {
  TempDir t;
  make_tree(t.path + "/one");
  backdate(t.path + "/one");
  ImageFolder::scan(t.path + "/one");
  ASSERT_TRUE(ImageFolder::scan(t.path + "/one").loaded_from_cache());
  fs::rename(t.path + "/one", t.path + "/two");
  ImageFolder f = ImageFolder::scan(t.path + "/two");
  EXPECT_FALSE(f.loaded_from_cache());  // the index names the old root
  EXPECT_EQ(f.root(), t.path + "/two");
  EXPECT_EQ(relative_paths(f), kTreeSamples);
}

TEST(IoDataset, CacheDirOverride) {
  TempDir t;
  std::string root = t.path + "/data", cache = t.path + "/cache";
  make_tree(root);
  backdate(root);
  ScanOptions o;
  o.cache_dir = cache;
  EXPECT_FALSE(ImageFolder::scan(root, o).loaded_from_cache());
  EXPECT_FALSE(fs::exists(root + "/.oxtrain-index"));
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(cache)) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);  // no temporary left behind
  EXPECT_EQ(files[0].extension(), ".index");
  ImageFolder f = ImageFolder::scan(root, o);
  EXPECT_TRUE(f.loaded_from_cache());
  EXPECT_EQ(relative_paths(f), kTreeSamples);
  // The default location has no index yet.
  EXPECT_FALSE(ImageFolder::scan(root).loaded_from_cache());
  EXPECT_TRUE(fs::exists(root + "/.oxtrain-index"));
}

// A read-only dataset puts its index under $XDG_CACHE_HOME (or ~/.cache)/oxtrain. Root writes
// to a mode-555 folder anyway, so as root the scans run in a child process as "nobody".
TEST(IoDataset, ReadOnlyRootFallsBackToHomeCache) {
  TempDir t;
  std::string root = t.path + "/data", home_cache = t.path + "/xdg";
  make_tree(root);
  backdate(root);
  const auto r_x = fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                   fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec;
  fs::permissions(t.path, r_x);
  fs::create_directories(home_cache);
  fs::permissions(home_cache, fs::perms::all);
  fs::permissions(root, r_x);
  // 0: as expected; otherwise which check failed.
  auto scans = [&]() -> int {
    if (::access(root.c_str(), W_OK) == 0) return 10;
    ScopedEnv xdg("XDG_CACHE_HOME", home_cache);
    try {
      ImageFolder first = ImageFolder::scan(root);
      ImageFolder second = ImageFolder::scan(root);
      if (first.loaded_from_cache()) return 1;
      if (!second.loaded_from_cache()) return 2;
      if (relative_paths(second) != kTreeSamples) return 3;
      if (fs::exists(root + "/.oxtrain-index")) return 4;
      if (std::distance(fs::directory_iterator(home_cache + "/oxtrain"), {}) != 1) return 5;
    } catch (const std::exception&) {
      return 6;
    }
    return 0;
  };
  int result;
  if (::access(root.c_str(), W_OK) != 0) {
    result = scans();
  } else {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(20);
      ::_exit(scans());
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    result = WEXITSTATUS(status);
    if (result == 20) GTEST_SKIP() << "cannot drop root privileges to test a read-only folder";
  }
  fs::permissions(root, fs::perms::owner_write, fs::perm_options::add);
  EXPECT_EQ(result, 0);
}

// ---- epoch_indices ----

TEST(IoDataset, EpochIndicesCoverAndBalance) {
  for (int64_t n : {1, 7, 10, 1000}) {
    for (int world : {1, 2, 3, 8}) {
      for (bool shuffle : {false, true}) {
        SCOPED_TRACE("n " + std::to_string(n) + " world " + std::to_string(world) +
                     (shuffle ? " shuffled" : ""));
        const int64_t per_rank = (n + world - 1) / world;
        std::vector<int64_t> count(size_t(n), 0);
        for (int rank = 0; rank < world; ++rank) {
          std::vector<int64_t> mine = epoch_indices(n, 3, 42, shuffle, rank, world);
          EXPECT_EQ(int64_t(mine.size()), per_rank);
          for (int64_t i : mine) {
            ASSERT_GE(i, 0);
            ASSERT_LT(i, n);
            ++count[size_t(i)];
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          EXPECT_GE(count[size_t(i)], 1) << i;
          if (n % world == 0) {
            EXPECT_EQ(count[size_t(i)], 1) << i;
          }
        }
        // Padding repeats from the start of the (shuffled) order, as DistributedSampler.
        int64_t extra = 0;
        for (int64_t c : count) extra += c - 1;
        EXPECT_EQ(extra, per_rank * world - n);
      }
    }
  }
}

TEST(IoDataset, EpochIndicesMatchDistributedSampler) {
  // torch: indices = list(range(10)); indices += indices[:2]; rank r takes indices[r::4]
  EXPECT_EQ(epoch_indices(10, 0, 0, false, 0, 4), (std::vector<int64_t>{0, 4, 8}));
  EXPECT_EQ(epoch_indices(10, 0, 0, false, 1, 4), (std::vector<int64_t>{1, 5, 9}));
  EXPECT_EQ(epoch_indices(10, 0, 0, false, 2, 4), (std::vector<int64_t>{2, 6, 0}));
  EXPECT_EQ(epoch_indices(10, 0, 0, false, 3, 4), (std::vector<int64_t>{3, 7, 1}));
  // padding longer than the dataset cycles: n 2, world 8 -> 0 1 0 1 0 1 0 1
  for (int rank = 0; rank < 8; ++rank)
    EXPECT_EQ(epoch_indices(2, 0, 0, false, rank, 8), (std::vector<int64_t>{rank % 2}));
  EXPECT_TRUE(epoch_indices(0, 0, 0, true, 0, 1).empty());
}

TEST(IoDataset, EpochIndicesShuffle) {
  std::vector<int64_t> identity(1000);
  for (int64_t i = 0; i < 1000; ++i) identity[size_t(i)] = i;
  EXPECT_EQ(epoch_indices(1000, 0, 7, false), identity);
  EXPECT_EQ(epoch_indices(1000, 5, 7, false), identity);

  std::vector<int64_t> e0 = epoch_indices(1000, 0, 7, true);
  std::vector<int64_t> e1 = epoch_indices(1000, 1, 7, true);
  EXPECT_EQ(e0, epoch_indices(1000, 0, 7, true));
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, identity);
  EXPECT_NE(e0, epoch_indices(1000, 0, 8, true));
  std::vector<int64_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, identity);  // a permutation
  // The ranks of one epoch share one permutation.
  std::vector<int64_t> r0 = epoch_indices(1000, 1, 7, true, 0, 2);
  std::vector<int64_t> r1 = epoch_indices(1000, 1, 7, true, 1, 2);
  for (size_t k = 0; k < r0.size(); ++k) {
    EXPECT_EQ(r0[k], e1[2 * k]);
    EXPECT_EQ(r1[k], e1[2 * k + 1]);
  }
  // Roughly uniform: each of 10 items lands in position 0 about 1/10 of the time.
  std::vector<int> first(10, 0);
  for (int64_t epoch = 0; epoch < 5000; ++epoch)
    ++first[size_t(epoch_indices(10, epoch, 1, true)[0])];
  for (int c : first) {
    EXPECT_GT(c, 400);
    EXPECT_LT(c, 600);
  }
}

TEST(IoDataset, EpochIndicesErrors) {
  EXPECT_THROW(epoch_indices(10, 0, 0, false, 0, 0), Error);
  EXPECT_THROW(epoch_indices(10, 0, 0, false, -1, 2), Error);
  EXPECT_THROW(epoch_indices(10, 0, 0, false, 2, 2), Error);
  EXPECT_NO_THROW(epoch_indices(10, 0, 0, false, 1, 2));
}

}  // namespace
}  // namespace oxtrain::io
