// Checkpoints round-trip exactly, and a truncated, corrupt or foreign file is refused with a
// message that says so.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "runtime/checkpoint.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::runtime;

namespace {
Checkpoint sample() {
  Checkpoint ck;
  ck.meta = {{"epoch", "3"}, {"step", "1234"}, {"best_acc1", "71.25"}, {"arch", "resnet50"}};
  ck.tensors.emplace_back("conv1.weight", test::random_tensor(graph::DType::f32, {4, 3, 3, 3}, 1));
  ck.tensors.emplace_back("momentum/conv1.weight", test::random_tensor(graph::DType::f32, {4, 3, 3, 3}, 2));
  ck.tensors.emplace_back("bn1.running_var", test::random_tensor(graph::DType::f64, {4}, 3));
  ck.tensors.emplace_back("step", graph::Tensor::from_int64({7}, {}));
  return ck;
}

void expect_refused(const std::string& path, const std::string& needle) {
  try {
    load_checkpoint(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Checkpoint, RoundTripIsExact) {
  std::string path = test::temp_dir() + "/ck.oxt";
  Checkpoint ck = sample();
  save_checkpoint(ck, path);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  Checkpoint back = load_checkpoint(path);
  EXPECT_EQ(back.meta, ck.meta);
  ASSERT_EQ(back.tensors.size(), ck.tensors.size());
  for (size_t i = 0; i < ck.tensors.size(); ++i) {
    EXPECT_EQ(back.tensors[i].first, ck.tensors[i].first);
    EXPECT_EQ(back.tensors[i].second.dtype, ck.tensors[i].second.dtype);
    EXPECT_EQ(back.tensors[i].second.shape, ck.tensors[i].second.shape);
    EXPECT_EQ(back.tensors[i].second.bytes, ck.tensors[i].second.bytes);
  }
  EXPECT_EQ(back.get("best_acc1"), "71.25");
  ASSERT_NE(back.find("step"), nullptr);
  EXPECT_EQ(back.find("step")->to_int64()[0], 7);
}

TEST(Checkpoint, RefusesDamagedFiles) {
  std::string dir = test::temp_dir();
  save_checkpoint(sample(), dir + "/good.oxt");
  std::string bytes = test::read_text(dir + "/good.oxt");
  std::ofstream(dir + "/short.oxt", std::ios::binary).write(bytes.data(), bytes.size() / 2);
  expect_refused(dir + "/short.oxt", "corrupt or truncated");
  std::string flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x10;
  std::ofstream(dir + "/flipped.oxt", std::ios::binary).write(flipped.data(), flipped.size());
  expect_refused(dir + "/flipped.oxt", "checksum mismatch");
  std::ofstream(dir + "/model.onnx") << "not a checkpoint at all";
  expect_refused(dir + "/model.onnx", "not an oxtrain checkpoint");
  expect_refused(dir + "/missing.oxt", "does not exist");
}

// Every prefix of a checkpoint (a write cut short anywhere, before atomic writes) is refused
// as truncated or corrupt, never as a foreign file and never by reading past its end.
TEST(Checkpoint, EveryTruncationSaysTruncated) {
  std::string dir = test::temp_dir();
  save_checkpoint(sample(), dir + "/good.oxt");
  std::string bytes = test::read_text(dir + "/good.oxt");
  for (size_t n = 1; n < bytes.size(); ++n) {
    std::string path = dir + "/cut.oxt";
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(n));
    try {
      load_checkpoint(path);
      ADD_FAILURE() << "no error for " << n << " bytes";
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_TRUE(m.find("truncated") != std::string::npos) << n << " bytes: " << m;
    }
  }
  std::ofstream(dir + "/empty.oxt");
  expect_refused(dir + "/empty.oxt", "checkpoint '" + dir + "/empty.oxt' is empty");
}

// A FIFO or a folder given as a checkpoint is refused without blocking.
TEST(Checkpoint, RefusesFifoAndFolder) {
  std::string dir = test::temp_dir();
  ASSERT_EQ(::mkfifo((dir + "/fifo.oxt").c_str(), 0600), 0);
  expect_refused(dir + "/fifo.oxt", "is a FIFO, not a regular file");
  expect_refused(dir, "is a folder, not a regular file");
}

// The file is replaced by a rename: a reader holding the old one keeps it whole.
TEST(Checkpoint, SaveReplacesByRename) {
  std::string dir = test::temp_dir();
  std::ofstream(dir + "/ck.oxt") << "old";
  std::filesystem::create_hard_link(dir + "/ck.oxt", dir + "/held.oxt");
  save_checkpoint(sample(), dir + "/ck.oxt");
  EXPECT_EQ(test::read_text(dir + "/held.oxt"), "old");
  EXPECT_EQ(load_checkpoint(dir + "/ck.oxt").get("step"), "1234");
  EXPECT_FALSE(std::filesystem::exists(dir + "/ck.oxt.tmp"));
}

TEST(Checkpoint, Crc32KnownValue) {
  const char* text = "123456789";
  EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>(text), 9), 0xCBF43926u);
}
