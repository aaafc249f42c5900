// ImageFolder scanning with an on-disk index, and DistributedSampler's epoch indices.
//
// Order of samples: as torchvision's make_dataset, which walks each class folder with
// os.walk(followlinks=True), sorts the (dirpath, dirnames, filenames) tuples (so by directory
// path) and then the file names inside each directory. Comparisons are byte-wise, which for
// UTF-8 names is Python's code-point order. Unlike os.walk, a directory reached again through
// a symlink is walked once (a link loop would not end). A class folder without images is an
// error naming it, as in torchvision (ImageFolder raises FileNotFoundError "Found no valid
// file for the classes ...").
//
// The index ("<root>/.oxtrain-index", else "$XDG_CACHE_HOME or $HOME/.cache" +
// "/oxtrain/<hash>.index" when the root is read-only, or "<cache_dir>/<hash>.index") holds the
// sample list and a signature of the tree that is checked without listing any file: the
// class names (one listing of the root) and, for every directory walked below it, its inode,
// mtime and ctime. Adding, removing or renaming a file changes its directory's mtime, so a
// stale index is never used. A directory modified within two seconds of the scan is recorded
// as "racy" (as git does for its index) and forces the next scan to walk again, so a change in
// the same clock tick as the scan is not missed. The index is written atomically
// (write_file_atomic); one that cannot be read or parsed is ignored and rewritten. Nothing in
// it is trusted: every count is bounded by the bytes that follow it before anything is
// reserved, and every path must name an entry of a walked directory inside the root (no
// absolute path, no "..": an index listing ../../etc/passwd is a corrupt one).
#include "io/dataset.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <set>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "base/error.h"
#include "base/files.h"
#include "base/text.h"

namespace oxtrain::io {
namespace {

namespace fs = std::filesystem;

constexpr const char* kIndexVersion = "oxtrain-index 1";
constexpr const char* kIndexName = ".oxtrain-index";
constexpr int64_t kProgressEvery = 1000;
constexpr int64_t kRacyNanoseconds = 2'000'000'000;
// An index of ImageNet's 1.28 M samples is about 80 MB; a larger file is not read.
constexpr uint64_t kMaxIndexBytes = uint64_t(1) << 31;

struct DirStamp {
  std::string rel;  // relative to the root ("" is never recorded: the root itself)
  uint64_t inode = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
};

struct Scanned {
  std::vector<std::string> classes;
  std::vector<std::pair<std::string, int64_t>> samples;  // relative path, label
  std::vector<DirStamp> dirs;
};

int64_t ns(const struct timespec& t) { return int64_t(t.tv_sec) * 1'000'000'000 + t.tv_nsec; }

bool stat_dir(const std::string& path, struct stat& st) {
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);  // follows symlinks
}

// Sub-directory names of `dir` (following symlinks), sorted; files go to `files` when given.
bool list_dir(const std::string& dir, std::vector<std::string>& subdirs,
              std::vector<std::string>* files) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  if (ec) return false;
  for (; it != end; it.increment(ec)) {
    if (ec) break;
    const fs::directory_entry& e = *it;
    std::string name = e.path().filename().string();
    std::error_code ec2;
    if (e.is_directory(ec2))
      subdirs.push_back(std::move(name));
    else if (files)
      files->push_back(std::move(name));  // as os.walk: everything that is not a directory
  }
  std::sort(subdirs.begin(), subdirs.end());
  if (files) std::sort(files->begin(), files->end());
  return true;
}

struct Walker {
  const std::string& root;
  const ScanOptions& options;
  int64_t scan_start_ns;
  Scanned& out;
  int64_t found = 0;

  void stamp(const std::string& rel, const struct stat& st) {
    DirStamp d;
    d.rel = rel;
    d.inode = st.st_ino;
    d.mtime_ns = ns(st.st_mtim);
    d.ctime_ns = ns(st.st_ctim);
    // Racy: changed so recently that a further change may keep the same timestamp. (Only the
    // mtime: every change of the entries sets it; the ctime moves alone on chmod or touch.)
    if (d.mtime_ns >= scan_start_ns - kRacyNanoseconds) d.mtime_ns = d.ctime_ns = -1;
    out.dirs.push_back(std::move(d));
  }

  // Walks one class folder; os.walk's tuples sorted by dirpath means: the files of a directory,
  // then its sub-directories in the order of their full paths. Sorting the full paths
  // ("a/b c" < "a/b/x" since ' ' < '/') is not the same as sorting names recursively, so the
  // directories are collected first and sorted by path.
  void walk_class(const std::string& class_name, int64_t label) {
    std::vector<std::pair<std::string, std::vector<std::string>>> dirs;  // path, its files
    std::set<std::pair<dev_t, ino_t>> seen;  // symlink loops: each directory once
    std::vector<std::string> stack{class_name};
    while (!stack.empty()) {
      std::string rel = std::move(stack.back());
      stack.pop_back();
      struct stat st;
      if (!stat_dir(root + "/" + rel, st)) continue;
      if (!seen.insert({st.st_dev, st.st_ino}).second) continue;
      stamp(rel, st);
      std::vector<std::string> subdirs, files;
      if (!list_dir(root + "/" + rel, subdirs, &files)) continue;  // os.walk ignores errors
      for (auto& s : subdirs) stack.push_back(rel + "/" + s);
      dirs.emplace_back(std::move(rel), std::move(files));
    }
    std::sort(dirs.begin(), dirs.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [rel, files] : dirs) {
      for (const std::string& f : files) {
        if (!is_image_file(f)) continue;
        out.samples.emplace_back(rel + "/" + f, label);
        if (++found % kProgressEvery == 0 && options.progress) options.progress(found);
      }
    }
  }
};

// ---- the index file ----

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string hashed_name(const std::string& root) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx.index", static_cast<unsigned long long>(fnv1a(root)));
  return buf;
}

std::string home_cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/oxtrain";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/oxtrain";
  return "";
}

// Where the index may be, in the order they are tried.
std::vector<std::string> index_locations(const std::string& root, const ScanOptions& options) {
  if (!options.cache_dir.empty()) return {options.cache_dir + "/" + hashed_name(root)};
  std::vector<std::string> where{root + "/" + kIndexName};
  std::string home = home_cache_dir();
  if (!home.empty()) where.push_back(home + "/" + hashed_name(root));
  return where;
}

bool has_newline(const std::string& s) { return s.find_first_of("\n\r") != std::string::npos; }

std::string serialize(const std::string& root, const Scanned& s) {
  std::string t;
  t.reserve(64 + s.samples.size() * 40);
  t += kIndexVersion;
  t += "\nroot ";
  t += root;
  t += "\nclasses " + std::to_string(s.classes.size()) + "\n";
  for (const auto& c : s.classes) t += c + "\n";
  t += "dirs " + std::to_string(s.dirs.size()) + "\n";
  for (const auto& d : s.dirs)
    t += std::to_string(d.inode) + " " + std::to_string(d.mtime_ns) + " " +
         std::to_string(d.ctime_ns) + " " + d.rel + "\n";
  t += "samples " + std::to_string(s.samples.size()) + "\n";
  for (const auto& [path, label] : s.samples) {
    t += std::to_string(label);
    t += ' ';
    t += path;
    t += '\n';
  }
  t += "end\n";
  return t;
}

// A line-by-line reader that fails softly: any malformed input makes parse() return false.
struct Lines {
  std::string_view text;
  size_t pos = 0;
  bool next(std::string_view& line) {
    if (pos >= text.size()) return false;
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) return false;  // truncated: every line ends in '\n'
    line = text.substr(pos, nl - pos);
    pos = nl + 1;
    return true;
  }
};

bool parse_int(std::string_view s, int64_t& v) {
  if (s.empty() || s.size() > 20) return false;
  bool neg = s[0] == '-';
  if (neg) s.remove_prefix(1);
  if (s.empty()) return false;
  uint64_t r = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    r = r * 10 + uint64_t(c - '0');
  }
  v = neg ? -int64_t(r) : int64_t(r);
  return true;
}

// "<int> <rest>"
bool split_int(std::string_view line, int64_t& v, std::string_view& rest) {
  size_t sp = line.find(' ');
  if (sp == std::string_view::npos || !parse_int(line.substr(0, sp), v)) return false;
  rest = line.substr(sp + 1);
  return true;
}

// "<key> <count>", where each of the count entries that follow is a line of at least
// min_line_bytes: a count that the rest of the file cannot hold is malformed (the header of
// "samples 549755813887" must not reserve 20 TB).
bool counted(Lines& in, std::string_view key, int64_t min_line_bytes, int64_t& n) {
  std::string_view line;
  if (!in.next(line) || line.substr(0, key.size() + 1) != std::string(key) + " ") return false;
  const int64_t left = int64_t(in.text.size() - in.pos);
  return parse_int(line.substr(key.size() + 1), n) && n >= 0 && n <= left / min_line_bytes;
}

// A path relative to the root that stays inside it: not absolute, no empty, "." or ".."
// component. (Lexical on purpose: symlinks inside the tree are followed by the scan itself,
// and resolving each of 1.28 M paths would cost more than the scan the index saves.)
bool confined(std::string_view rel) {
  if (rel.empty() || rel.front() == '/') return false;
  size_t start = 0;
  for (;;) {
    const size_t slash = rel.find('/', start);
    const std::string_view part =
        rel.substr(start, slash == std::string_view::npos ? rel.npos : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

// The class a relative path starts with ("cls" of "cls/sub/x.jpg").
std::string_view first_component(std::string_view rel) { return rel.substr(0, rel.find('/')); }

// Checks the signature against the tree as it is now: one listing of the root, one stat per
// directory.
bool still_valid(const std::string& root, const Scanned& s) {
  std::vector<std::string> classes;
  if (!list_dir(root, classes, nullptr) || classes != s.classes) return false;
  for (const DirStamp& d : s.dirs) {
    if (d.mtime_ns < 0) return false;  // racy when written
    struct stat st;
    if (!stat_dir(root + "/" + d.rel, st) || st.st_ino != d.inode ||
        ns(st.st_mtim) != d.mtime_ns || ns(st.st_ctim) != d.ctime_ns)
      return false;
  }
  return true;
}

// Reads an index; false when it is malformed or its signature no longer matches the tree.
bool parse(const std::string& text, const std::string& root, Scanned& s) {
  Lines in{text};
  std::string_view line;
  if (!in.next(line) || line != kIndexVersion) return false;
  if (!in.next(line) || line != "root " + root) return false;
  int64_t n;
  if (!counted(in, "classes", 2, n)) return false;
  for (int64_t i = 0; i < n; ++i) {
    if (!in.next(line) || !confined(line) || line.find('/') != std::string_view::npos)
      return false;
    s.classes.emplace_back(line);
  }
  if (!std::is_sorted(s.classes.begin(), s.classes.end())) return false;
  if (!counted(in, "dirs", 8, n)) return false;  // "i m c d\n"
  for (int64_t i = 0; i < n; ++i) {
    DirStamp d;
    int64_t inode;
    std::string_view rest;
    if (!in.next(line) || !split_int(line, inode, rest) || !split_int(rest, d.mtime_ns, rest) ||
        !split_int(rest, d.ctime_ns, rest) || !confined(rest) ||
        !std::binary_search(s.classes.begin(), s.classes.end(), first_component(rest)))
      return false;
    d.inode = uint64_t(inode);
    d.rel = rest;
    s.dirs.push_back(std::move(d));
  }
  // The signature first: a stale index costs one stat per directory, not a parse of its
  // samples.
  if (!still_valid(root, s)) return false;
  if (!counted(in, "samples", 4, n)) return false;  // "l c/f\n" at least
  s.samples.reserve(size_t(n));
  const int64_t classes = int64_t(s.classes.size());
  std::unordered_set<std::string_view> dirs;
  for (const DirStamp& d : s.dirs) dirs.insert(d.rel);
  for (int64_t i = 0; i < n; ++i) {
    int64_t label;
    std::string_view rest;
    if (!in.next(line) || !split_int(line, label, rest) || label < 0 || label >= classes)
      return false;
    // A sample is a file of a walked directory of its own class, inside the root.
    const size_t slash = rest.rfind('/');
    if (slash == std::string_view::npos || !confined(rest) ||
        first_component(rest) != s.classes[size_t(label)] || !dirs.count(rest.substr(0, slash)))
      return false;
    s.samples.emplace_back(std::string(rest), label);
  }
  return in.next(line) && line == "end" && in.pos == text.size() && !s.samples.empty();
}

// The index's text, or false when it is missing, not a regular file (a FIFO planted there
// must not block), larger than any index, or unreadable.
bool read_file(const std::string& path, std::string& text) {
  try {
    text = read_regular_file(path, kMaxIndexBytes, "dataset index");
    return true;
  } catch (const Error&) {
    return false;
  }
}

// Ranks that start together on a shared file system may write the same index at once: a
// mixed file that results fails to parse on the next start, which then rescans.
bool write_index(const std::string& path, const std::string& text) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  try {
    write_file_atomic(path, text);
    return true;
  } catch (const Error&) {
    return false;
  }
}

// torchvision's ImageFolder raises FileNotFoundError for a class folder without a valid file;
// keeping it would give it a label that no image has, and shift every later class against a
// split where it has images.
void check_no_empty_class(const std::string& root_in, const Scanned& s) {
  std::vector<bool> has(s.classes.size(), false);
  for (const auto& sample : s.samples) has[size_t(sample.second)] = true;
  std::vector<std::string> empty;
  for (size_t c = 0; c < s.classes.size(); ++c)
    if (!has[c]) empty.push_back("'" + escape_name(s.classes[c]) + "'");
  if (empty.empty()) return;
  throw Error("dataset folder '" + escape_name(root_in) + "': class folder" +
              (empty.size() > 1 ? "s " : " ") + join_limited(empty, 80) +
              (empty.size() > 1 ? " hold" : " holds") +
              " no images (.jpg .jpeg .png ...); add its images or remove the folder");
}

std::string layout_hint(const std::string& root) {
  return "expected one folder per class holding its images, e.g. " + root +
         "/n01440764/n01440764_10026.JPEG (ImageNet's DATA/train or DATA/val layout; image "
         "extensions: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)";
}

}  // namespace

bool is_image_file(const std::string& path) {
  static const char* const kExtensions[] = {".jpg", ".jpeg", ".png",  ".ppm", ".bmp",
                                            ".pgm", ".tif",  ".tiff", ".webp"};
  for (const char* ext : kExtensions) {
    size_t n = std::strlen(ext);
    if (path.size() < n) continue;
    bool match = true;
    for (size_t i = 0; i < n && match; ++i) {
      char c = path[path.size() - n + i];
      if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
      match = c == ext[i];
    }
    if (match) return true;
  }
  return false;
}

ImageFolder ImageFolder::scan(const std::string& root_in, const ScanOptions& options) {
  if (root_in.empty()) throw Error("dataset folder: empty path");
  std::error_code ec;
  fs::path abs = fs::absolute(fs::path(root_in), ec);
  if (ec) throw Error("dataset folder '" + root_in + "': " + ec.message());
  std::string root = abs.lexically_normal().string();
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  struct stat st;
  if (::stat(root.c_str(), &st) != 0)
    throw Error("dataset folder '" + root_in + "' does not exist (" + std::strerror(errno) + ")");
  if (!S_ISDIR(st.st_mode)) throw Error("dataset folder '" + root_in + "' is not a directory");

  ImageFolder folder;
  folder.root_ = root;
  Scanned s;
  bool cached = false;
  if (options.use_cache) {
    for (const std::string& where : index_locations(root, options)) {
      std::string text;
      Scanned candidate;
      if (read_file(where, text) && parse(text, root, candidate)) {
        s = std::move(candidate);
        cached = true;
        break;
      }
    }
  }

  if (!cached) {
    int64_t start_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    if (!list_dir(root, s.classes, nullptr))
      throw Error("dataset folder '" + root_in + "' cannot be read");
    if (s.classes.empty())
      throw Error("dataset folder '" + root_in + "' has no class folders: " + layout_hint(root));
    Walker w{root, options, start_ns, s};
    for (size_t c = 0; c < s.classes.size(); ++c) w.walk_class(s.classes[c], int64_t(c));
    if (s.samples.empty())
      throw Error("dataset folder '" + root_in + "' has " + std::to_string(s.classes.size()) +
                  " class folders but no images: " + layout_hint(root));
    check_no_empty_class(root_in, s);
    if (options.use_cache) {
      bool writable = !has_newline(root);
      for (const auto& c : s.classes) writable = writable && !has_newline(c);
      for (const auto& d : s.dirs) writable = writable && !has_newline(d.rel);
      for (const auto& p : s.samples) writable = writable && !has_newline(p.first);
      if (writable) {
        std::string text = serialize(root, s);
        for (const std::string& where : index_locations(root, options))
          if (write_index(where, text)) break;
      }
    }
  }

  folder.classes_ = std::move(s.classes);
  folder.samples_.reserve(s.samples.size());
  for (auto& [rel, label] : s.samples) folder.samples_.push_back({root + "/" + rel, label});
  folder.from_cache_ = cached;
  if (options.progress) options.progress(folder.size());
  return folder;
}

ImageFolder ImageFolder::from_list(std::string root, std::vector<std::string> classes,
                                   std::vector<Sample> samples) {
  ImageFolder f;
  f.root_ = std::move(root);
  f.classes_ = std::move(classes);
  f.samples_ = std::move(samples);
  return f;
}

std::vector<std::string> class_folders(const std::string& root) {
  std::vector<std::string> classes;
  if (!list_dir(root, classes, nullptr))
    throw Error("dataset folder '" + escape_name(root) + "' cannot be read");
  return classes;
}

void check_same_classes(const std::string& train_root, const std::string& val_root) {
  const std::vector<std::string> train = class_folders(train_root), val = class_folders(val_root);
  if (train == val) return;
  // Both lists are sorted: their differences in one pass each.
  std::vector<std::string> only_val, only_train;
  std::set_difference(val.begin(), val.end(), train.begin(), train.end(),
                      std::back_inserter(only_val));
  std::set_difference(train.begin(), train.end(), val.begin(), val.end(),
                      std::back_inserter(only_train));
  auto quoted = [](const std::vector<std::string>& names) {
    std::vector<std::string> q;
    for (const auto& n : names) q.push_back("'" + escape_name(n, 40) + "'");
    return join_limited(q, 60);
  };
  std::string why;
  if (!only_val.empty())
    why += "val/ has class" + std::string(only_val.size() > 1 ? "es " : " ") + quoted(only_val) +
           " that train/ lacks";
  if (!only_train.empty())
    why += std::string(why.empty() ? "" : "; ") + "train/ has " + quoted(only_train) +
           " that val/ lacks";
  throw Error(why + "; train/ and val/ need the same class folders, else their labels differ");
}

// ---- epoch_indices ----

namespace {

struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound), bound > 0, without modulo bias (Lemire's method).
  uint64_t below(uint64_t bound) {
    unsigned __int128 m = (unsigned __int128)next() * bound;
    uint64_t low = uint64_t(m);
    if (low < bound) {
      uint64_t threshold = (0 - bound) % bound;
      while (low < threshold) {
        m = (unsigned __int128)next() * bound;
        low = uint64_t(m);
      }
    }
    return uint64_t(m >> 64);
  }
};

}  // namespace

std::vector<int64_t> epoch_indices(int64_t dataset_size, int64_t epoch, uint64_t seed,
                                   bool shuffle, int rank, int world) {
  if (world < 1) throw Error("data sharding: world size " + std::to_string(world) + " < 1");
  if (rank < 0 || rank >= world)
    throw Error("data sharding: rank " + std::to_string(rank) + " outside [0, " +
                std::to_string(world) + ")");
  if (dataset_size < 0) throw Error("data sharding: negative dataset size");
  const int64_t n = dataset_size;
  if (n == 0) return {};
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  if (shuffle) {
    // torch: g.manual_seed(seed + epoch); randperm(n, generator=g). Same seeding rule, own bits.
    SplitMix64 g{seed + uint64_t(epoch)};
    g.next();  // decorrelate neighbouring seeds a little more
    for (int64_t i = n - 1; i > 0; --i) {
      int64_t j = int64_t(g.below(uint64_t(i) + 1));
      std::swap(order[size_t(i)], order[size_t(j)]);
    }
  }
  const int64_t per_rank = (n + world - 1) / world;  // ceil(n / world)
  std::vector<int64_t> mine;
  mine.reserve(size_t(per_rank));
  // total = per_rank * world; padding repeats from the start (cycling when needed):
  // padded[k] = order[k % n]; this rank takes padded[rank::world].
  for (int64_t k = rank; k < per_rank * world; k += world) mine.push_back(order[size_t(k % n)]);
  return mine;
}

}  // namespace oxtrain::io
