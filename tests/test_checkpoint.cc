// Checkpoints round-trip exactly, and a truncated, corrupt or foreign file is refused with a
// message that says so.
#include <gtest/gtest.h>

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

TEST(Checkpoint, Crc32KnownValue) {
  const char* text = "123456789";
  EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>(text), 9), 0xCBF43926u);
}
