// Every input the fuzzers (tests/fuzz, scripts/fuzz.sh) ever crashed on, replayed through the
// same entry points as the harnesses: tests/fixtures/fuzz/<target>/* must each be read or
// refused with oxtrain::Error (io::DecodeError for images), with no other exception, no crash,
// no sanitizer report, and no allocation beyond 1 GiB over what the test program already holds
// (an address-space limit outside sanitizer builds; a bad_alloc under it fails the test).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <new>
#include <string>
#include <vector>

#include "io/decode.h"
#include "runtime/checkpoint.h"
#include "tests/fuzz/targets.h"
#include "tests/helpers.h"

namespace {

namespace fs = std::filesystem;

constexpr uint64_t kAllocationBound = uint64_t(1) << 30;

// The process's current address space (/proc/self/statm, pages), 0 when unknown.
uint64_t address_space_bytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t pages = 0;
  statm >> pages;
  return pages * uint64_t(::sysconf(_SC_PAGESIZE));
}

// Lowers RLIMIT_AS to what the process holds plus kAllocationBound while it lives.
class AddressSpaceBound {
 public:
  AddressSpaceBound() {
    if (oxtrain::test::running_under_sanitizer() || ::getrlimit(RLIMIT_AS, &old_) != 0) return;
    uint64_t now = address_space_bytes();
    if (now == 0) return;
    rlimit bound = old_;
    bound.rlim_cur = std::min<rlim_t>(old_.rlim_max, rlim_t(now + kAllocationBound));
    active_ = ::setrlimit(RLIMIT_AS, &bound) == 0;
  }
  ~AddressSpaceBound() {
    if (active_) ::setrlimit(RLIMIT_AS, &old_);
  }

 private:
  rlimit old_{};
  bool active_ = false;
};

std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<fs::path> fixtures_of(const std::string& target) {
  std::vector<fs::path> files;
  fs::path dir = fs::path(OXTRAIN_FIXTURES) / "fuzz" / target;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

class FuzzRegressions : public ::testing::TestWithParam<oxtrain::fuzz::Target> {};

TEST_P(FuzzRegressions, EveryFindingIsReadOrRefusedCleanly) {
  const oxtrain::fuzz::Target& target = GetParam();
  std::vector<fs::path> files = fixtures_of(target.name);
  if (files.empty()) GTEST_SKIP() << "no findings of fuzz_" << target.name << " in tests/fixtures/fuzz/";
  for (const fs::path& file : files) {
    SCOPED_TRACE(file.string());
    std::vector<uint8_t> bytes = read_bytes(file);
    AddressSpaceBound bound;
    try {
      target.run(bytes.data(), bytes.size());
    } catch (const std::bad_alloc&) {
      ADD_FAILURE() << "allocates more than 1 GiB (std::bad_alloc under the address-space bound)";
    } catch (const std::exception& e) {
      ADD_FAILURE() << "escapes as " << typeid(e).name() << ": " << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzRegressions, ::testing::ValuesIn(oxtrain::fuzz::targets()),
                         [](const auto& info) { return info.param.name; });

// The entry points themselves: a valid input of each target is read (not refused), so a target
// that refused everything would not pass the replay above unseen.
std::vector<uint8_t> valid_input(const std::string& target) {
  namespace t = oxtrain::test;
  if (target == "onnx") return read_bytes(fs::path(OXTRAIN_FIXTURES) / "ts_train_op9_basic.onnx");
  if (target == "tensor") return read_bytes(fs::path(OXTRAIN_FIXTURES) / "ts_train_op17_eval_output.pb");
  if (target == "checkpoint") {
    oxtrain::runtime::Checkpoint c;
    c.meta.emplace("epoch", std::to_string(3));
    oxtrain::graph::Tensor w(oxtrain::graph::DType::f32, {2, 3});
    c.tensors.emplace_back("w", std::move(w));
    t::ScopedTempDir dir;
    oxtrain::runtime::save_checkpoint(c, dir.path + "/c.oxt");
    return read_bytes(dir.path + "/c.oxt");
  }
  if (target == "index_cache") {
    std::string text =
        "oxtrain-index 1\nroot @ROOT@\nclasses 2\na\nb\ndirs 2\n@A@ a\n@B@ b\nsamples 2\n"
        "0 a/x.jpg\n1 b/y.png\nend\n";
    return {text.begin(), text.end()};
  }
  if (target == "jpeg") return oxtrain::io::encode_jpeg(t::random_image(20, 12, 1));
  if (target == "png")  // 2x1 RGB, 8 bits
    return {
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d,
        0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01,
        0x08, 0x02, 0x00, 0x00, 0x00, 0x7b, 0x40, 0xe8, 0xdd, 0x00, 0x00, 0x00,
        0x0f, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
        0xf0, 0x9f, 0x01, 0x00, 0x07, 0xff, 0x01, 0xff, 0x01, 0x7f, 0x89, 0xa7,
        0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
  return {};
}

TEST(FuzzTargets, ValidInputsAreRead) {
  for (const oxtrain::fuzz::Target& target : oxtrain::fuzz::targets()) {
    SCOPED_TRACE(target.name);
    std::vector<uint8_t> bytes = valid_input(target.name);
    ASSERT_FALSE(bytes.empty());
    EXPECT_TRUE(target.run(bytes.data(), bytes.size()));
  }
}

}  // namespace
