#include "tests/fuzz/targets.h"

#include <onnx/onnx_pb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <utility>

#include "base/error.h"
#include "base/files.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "io/dataset.h"
#include "io/decode.h"
#include "runtime/checkpoint.h"

namespace oxtrain::fuzz {
namespace {

namespace fs = std::filesystem;

struct Scratch {
  std::string path;
  Scratch() {
    path = (fs::temp_directory_path() / ("oxtrain-fuzz-" + std::to_string(::getpid()))).string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  if (!out) std::abort();  // the harness's own failure, not the reader's
}

// A folder that stays empty: where external data of a fuzzed model resolves.
const std::string& empty_dir() {
  static const std::string dir = [] {
    std::string d = scratch_dir() + "/empty";
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

// The dataset tree the index cache describes: <scratch>/data/{a/x.jpg, b/y.png}. The index is
// read from (and, when refused, rewritten to) <root>/.oxtrain-index; the fallback in the home
// cache is pointed into the scratch folder so the fuzzer never reads or writes the user's.
// Placeholders in the input stand for what differs from one process to the next: "@ROOT@" the
// root, "@A@" and "@B@" the "inode mtime ctime" stamps of the class folders, so an input can
// pass the tree's signature and reach the sample list.
struct Tree {
  std::string root;
  std::vector<std::pair<std::string, std::string>> placeholders;
};

std::string stamp_of(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) std::abort();
  auto ns = [](const timespec& t) { return std::to_string(int64_t(t.tv_sec) * 1'000'000'000 + t.tv_nsec); };
  return std::to_string(st.st_ino) + " " + ns(st.st_mtim) + " " + ns(st.st_ctim);
}

const Tree& dataset_tree() {
  static const Tree tree = [] {
    Tree t;
    t.root = scratch_dir() + "/data";
    fs::create_directories(t.root + "/a");
    fs::create_directories(t.root + "/b");
    std::ofstream(t.root + "/a/x.jpg") << "x";
    std::ofstream(t.root + "/b/y.png") << "y";
    ::setenv("XDG_CACHE_HOME", (scratch_dir() + "/cache").c_str(), 1);
    t.placeholders = {{"@ROOT@", t.root}, {"@A@", stamp_of(t.root + "/a")}, {"@B@", stamp_of(t.root + "/b")}};
    return t;
  }();
  return tree;
}

}  // namespace

const std::string& scratch_dir() {
  static const Scratch scratch;
  return scratch.path;
}

bool onnx_importer(const uint8_t* data, size_t size) {
  onnx::ModelProto model;
  if (!model.ParseFromArray(data, int(size))) return false;
  try {
    graph::ImportOptions options;
    options.prepare = true;
    graph::import_onnx_model(model, empty_dir(), options);
  } catch (const Error&) {
    return false;
  }
  return true;
}

bool checkpoint_reader(const uint8_t* data, size_t size) {
  static const std::string path = scratch_dir() + "/checkpoint.oxt";
  // The last 4 bytes are the CRC-32 of all before them: set it, or nearly every mutation would
  // stop at the checksum and never reach the header and offsets an attacker can forge anyway.
  std::vector<uint8_t> bytes(data, data + size);
  if (size >= 4) {
    uint32_t crc = runtime::crc32(bytes.data(), size - 4);
    std::memcpy(bytes.data() + size - 4, &crc, 4);
  }
  write_bytes(path, bytes.data(), size);
  try {
    runtime::Checkpoint c = runtime::load_checkpoint(path);
    (void)c.get("epoch");
  } catch (const Error&) {
    return false;
  }
  return true;
}

bool tensor_reader(const uint8_t* data, size_t size) {
  static const std::string path = scratch_dir() + "/tensor.pb";
  write_bytes(path, data, size);
  try {
    graph::read_tensor_file(path);
  } catch (const Error&) {
    return false;
  }
  return true;
}

bool index_cache_reader(const uint8_t* data, size_t size) {
  const Tree& tree = dataset_tree();
  const std::string& root = tree.root;
  std::string text(reinterpret_cast<const char*>(data), size);
  for (const auto& [name, value] : tree.placeholders)
    for (size_t at = text.find(name); at != std::string::npos; at = text.find(name, at + value.size()))
      text.replace(at, name.size(), value);
  write_bytes(root + "/.oxtrain-index", reinterpret_cast<const uint8_t*>(text.data()), text.size());
  try {
    io::ScanOptions options;
    io::ImageFolder folder = io::ImageFolder::scan(root, options);
    // What the loader does with the index: every label indexes the class list, every path is a
    // file of the dataset.
    for (const io::Sample& s : folder.samples())
      if (s.label < 0 || s.label >= int64_t(folder.classes().size()) || !path_within(root, s.path))
        std::abort();
    return folder.loaded_from_cache();  // else the index was refused and the tree rescanned
  } catch (const Error&) {
    return false;
  }
}

bool image_decoder(const uint8_t* data, size_t size) {
  try {
    io::ImageHeader header = io::read_header(data, size, "fuzz.img");
    io::DecodeRequest request;
    request.region_width = header.width;
    request.region_height = header.height;
    request.target_width = 64;
    request.target_height = 64;
    io::Decoded d = io::decode_image(data, size, "fuzz.img", request);
    if (d.image.rgb.size() != size_t(d.image.width) * size_t(d.image.height) * 3) std::abort();
  } catch (const io::DecodeError&) {
  } catch (const Error&) {
    return false;
  }
  return true;
}

const std::vector<Target>& targets() {
  static const std::vector<Target> all{
      {"onnx", onnx_importer},           {"checkpoint", checkpoint_reader},
      {"tensor", tensor_reader},         {"index_cache", index_cache_reader},
      {"jpeg", image_decoder},           {"png", image_decoder},
  };
  return all;
}

}  // namespace oxtrain::fuzz
