// `oxtrain train` refuses what would crash it, hang it, or pass silently as something else:
// crafted checkpoints, checkpoints of another model, --input-tensors of the wrong shape, flags
// out of range, outputs that could not be written, stale tmp files of a killed run. Every error
// path runs the real program and must end in one clean line with exit code 2.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "runtime/checkpoint.h"
#include "tests/helpers.h"

using namespace oxtrain;
namespace fs = std::filesystem;

namespace {

// A model of 8x8 images and `classes` outputs (small_convnet's layers), written once per test.
std::string small_model(const std::string& dir, int64_t classes = 5) {
  test::ModelBuilder b = test::small_convnet();
  b.graph().clear_initializer();
  b.initializer("conv.weight", {4, 3, 3, 3}, 0.1f);
  b.initializer("conv.bias", {4}, 0.0f);
  b.initializer("fc.weight", {classes, 4}, 0.2f);
  b.initializer("fc.bias", {classes}, 0.0f);
  std::string path = dir + "/small.onnx";
  b.save(path);
  return path;
}

// A one-step run on a synthetic batch of the small model: about 0.1 s.
std::string tiny_run(const std::string& model, const std::string& dir) {
  return "train --synthetic --model " + model + " --image-size 8 --num-classes 5 -b 2 --epochs 1 "
         "--steps 1 -p 1 --threads 1 --checkpoint-dir " + dir + " ";
}

const int kTimeout = 60;  // seconds; a hang fails the test instead of the suite

test::RunResult run(const std::string& args) { return test::run_oxtrain_limited(args, kTimeout); }

std::string error_line(const test::RunResult& r) {
  std::string e = r.err;
  if (!e.empty() && e.back() == '\n') e.pop_back();
  return e;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A checkpoint file with this JSON header and tensor data, its checksum correct: only the
// header's numbers are wrong.
std::string crafted_checkpoint(const std::string& header, const std::string& data,
                               uint64_t header_len_field = UINT64_MAX) {
  std::string s = "OXTRAIN-CKPT";
  uint32_t version = 1;
  uint64_t len = header_len_field == UINT64_MAX ? header.size() : header_len_field;
  s.append(reinterpret_cast<const char*>(&version), 4);
  s.append(reinterpret_cast<const char*>(&len), 8);
  s += header + data;
  uint32_t crc = runtime::crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  s.append(reinterpret_cast<const char*>(&crc), 4);
  return s;
}

std::string one_tensor_header(const std::string& shape, const std::string& offset,
                              const std::string& bytes) {
  return R"({"meta":{"model":"m"},"tensors":[{"name":"conv.weight","dtype":"float32","shape":)" +
         shape + R"(,"offset":)" + offset + R"(,"bytes":)" + bytes + "}]}";
}

void write_tensor_file(const std::string& path, int data_type, std::vector<int64_t> dims,
                       const std::string& raw) {
  onnx::TensorProto t;
  t.set_data_type(data_type);
  for (int64_t d : dims) t.add_dims(d);
  t.set_raw_data(raw);
  write_bytes(path, t.SerializeAsString());
}

std::string float_bytes(size_t count) { return std::string(count * 4, '\0'); }

std::string int64_bytes(const std::vector<int64_t>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * 8);
}

}  // namespace

// Every number of a checkpoint's header is checked against the file before anything
// is read or allocated.
TEST(HardeningTrain, CraftedCheckpointHeadersAreRefused) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  const std::string data(64, '\x01');
  struct Case {
    std::string name, bytes, message;
  };
  const Case cases[] = {
      // 2^64 - 8 + 16 wraps to 8, inside the 64 bytes of data.
      {"wrap.oxt", crafted_checkpoint(one_tensor_header("[4]", "18446744073709551608", "16"), data),
       "tensor 'conv.weight' of checkpoint '%' lies outside the file (offset 18446744073709551608, 16 "
       "bytes, 64 bytes of tensor data); the file is damaged, use an earlier checkpoint"},
      {"negative.oxt", crafted_checkpoint(one_tensor_header("[4]", "-16", "16"), data),
       "the offset of tensor 'conv.weight' of checkpoint '%' is -16, not a byte count"},
      {"size.oxt", crafted_checkpoint(one_tensor_header("[4]", "0", "8"), data),
       "tensor 'conv.weight' of checkpoint '%' claims 8 bytes but float32 [4] takes 16; the file is "
       "damaged, use an earlier checkpoint"},
      {"negdim.oxt", crafted_checkpoint(one_tensor_header("[-4,-4]", "0", "64"), data),
       "tensor 'conv.weight' of checkpoint '%' has a negative dimension in shape [-4,-4]"},
      {"overflow.oxt",
       crafted_checkpoint(one_tensor_header("[4611686018427387904,4]", "0", "0"), data),
       "tensor 'conv.weight' of checkpoint '%' has shape [4611686018427387904,4], whose element count "
       "overflows 64 bits"},
      {"header.oxt", crafted_checkpoint(one_tensor_header("[4]", "0", "16"), data, uint64_t(1) << 40),
       "checkpoint '%' is truncated: its header claims 1099511627776 bytes but the file holds 173 "
       "after the fixed part; use an earlier checkpoint"},
      {"float.oxt", crafted_checkpoint(one_tensor_header("[4.5]", "0", "16"), data),
       "tensor 'conv.weight' of checkpoint '%' has a dimension of 4.5, not an integer"},
  };
  for (const auto& c : cases) {
    std::string path = tmp.path + "/" + c.name;
    write_bytes(path, c.bytes);
    auto r = run(tiny_run(model, tmp.path) + "--resume " + path);
    EXPECT_EQ(test::clean_error_problem(r), "") << c.name;
    std::string expected = "oxtrain: error: " + std::regex_replace(c.message, std::regex("%"), path);
    EXPECT_EQ(error_line(r), expected) << c.name;
  }
}

// A header claiming a 16 GiB tensor is refused before anything that large is
// allocated (the old reader allocated it, then compared).
TEST(HardeningTrain, CheckpointHeaderAllocatesNothingBeforeTheCheck) {
  if (test::running_under_sanitizer()) GTEST_SKIP() << "address-space limits do not apply under ASan";
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  std::string path = tmp.path + "/huge.oxt";
  write_bytes(path, crafted_checkpoint(one_tensor_header("[4294967296]", "0", "17179869184"),
                                       std::string(64, '\0')));
  auto r = test::run_oxtrain_limited(tiny_run(model, tmp.path) + "--resume " + path, kTimeout, 3072);
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("lies outside the file"), std::string::npos) << r.err;
}

// A checkpoint cut to 27 bytes is called truncated, not foreign.
TEST(HardeningTrain, ShortCheckpointSaysTruncated) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  auto first = run(tiny_run(model, tmp.path));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  std::string bytes = test::read_text(tmp.path + "/checkpoint.oxt");
  write_bytes(tmp.path + "/short.oxt", bytes.substr(0, 27));
  auto r = run(tiny_run(model, tmp.path) + "--resume " + tmp.path + "/short.oxt");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_EQ(error_line(r), "oxtrain: error: checkpoint '" + tmp.path +
                               "/short.oxt' is truncated: 27 bytes, shorter than the 28 of an empty "
                               "checkpoint; use an earlier checkpoint");
}

// A checkpoint without all of the model's persistent values (or with one of another
// shape) is refused, naming the first missing ones and the count.
TEST(HardeningTrain, ResumeNeedsEveryPersistentValue) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  auto first = run(tiny_run(model, tmp.path));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  runtime::Checkpoint full = runtime::load_checkpoint(tmp.path + "/checkpoint.oxt");
  const size_t total = full.tensors.size();
  ASSERT_GE(total, 8u);  // 4 weights, 4 momentum buffers

  runtime::Checkpoint half = full;
  half.tensors.erase(half.tensors.begin(), half.tensors.begin() + static_cast<long>(total / 2));
  runtime::save_checkpoint(half, tmp.path + "/half.oxt");
  auto r = run(tiny_run(model, tmp.path) + "--resume " + tmp.path + "/half.oxt");
  EXPECT_EQ(test::clean_error_problem(r), "");
  std::string prefix = "oxtrain: error: checkpoint '" + tmp.path + "/half.oxt' lacks " +
                       std::to_string(total / 2) + " of " + std::to_string(total) + " values: " +
                       full.tensors[0].first + ", " + full.tensors[1].first;
  EXPECT_EQ(r.err.rfind(prefix, 0), 0u) << r.err;
  EXPECT_NE(r.err.find("; it is incomplete or belongs to another model"), std::string::npos) << r.err;

  runtime::Checkpoint none = full;
  none.tensors.clear();
  runtime::save_checkpoint(none, tmp.path + "/none.oxt");
  r = run(tiny_run(model, tmp.path) + "--resume " + tmp.path + "/none.oxt");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("lacks " + std::to_string(total) + " of " + std::to_string(total) + " values: "),
            std::string::npos)
      << r.err;

  runtime::Checkpoint reshaped = full;
  for (auto& [name, t] : reshaped.tensors)
    if (name == "conv.weight") t = graph::Tensor(graph::DType::f32, {4, 3, 1, 1});
  runtime::save_checkpoint(reshaped, tmp.path + "/reshaped.oxt");
  r = run(tiny_run(model, tmp.path) + "--resume " + tmp.path + "/reshaped.oxt");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_EQ(error_line(r), "oxtrain: error: checkpoint '" + tmp.path +
                               "/reshaped.oxt' holds 'conv.weight' as float32 [4,3,1,1] but the "
                               "model has float32 [4,3,3,3]; it belongs to another model");

  // The whole checkpoint still resumes.
  r = run(tiny_run(model, tmp.path) + "--steps 2 --resume " + tmp.path + "/checkpoint.oxt");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("=> loaded checkpoint"), std::string::npos) << r.out;
}

// A long list is cut to "and N more" unless --verbose asks for all of it.
TEST(HardeningTrain, VerboseShowsTheWholeList) {
  test::ScopedTempDir tmp;
  auto zoo = run("zoo resnet18 --num-classes 5 --image-size 32 -o " + tmp.path + "/r18.onnx");
  ASSERT_EQ(zoo.exit_code, 0) << zoo.err;
  std::string model = tmp.path + "/r18.onnx";
  std::string args = "train --synthetic --model " + model + " --image-size 32 --num-classes 5 -b 2 "
                     "--steps 1 --threads 1 --checkpoint-dir " + tmp.path + " ";
  runtime::Checkpoint none;
  none.meta = {{"model", model}};
  runtime::save_checkpoint(none, tmp.path + "/none.oxt");
  auto r = run(args + "--resume " + tmp.path + "/none.oxt");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_TRUE(std::regex_search(r.err, std::regex("lacks ([0-9]+) of \\1 values: .*, and [0-9]+ more; ")))
      << r.err;
  auto all = run(args + "--verbose --resume " + tmp.path + "/none.oxt");
  EXPECT_EQ(all.exit_code, 2);
  EXPECT_EQ(all.err.find(" more; "), std::string::npos) << all.err;
  EXPECT_NE(all.err.find("layer4.1.bn2.running_var"), std::string::npos) << all.err;
  EXPECT_EQ(all.err.find('\n'), all.err.size() - 1);
}

// The metadata is parsed strictly (the old reader called stoll on it).
TEST(HardeningTrain, CheckpointMetadataIsParsedStrictly) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  auto first = run(tiny_run(model, tmp.path));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  runtime::Checkpoint good = runtime::load_checkpoint(tmp.path + "/checkpoint.oxt");
  struct Case {
    std::string key, value, message;
  };
  const Case cases[] = {
      {"epoch", "abc", "has epoch 'abc', not a whole number >= 0"},
      {"epoch", "99999999999999999999", "has epoch '99999999999999999999', not a whole number >= 0"},
      {"step", "-3", "has step '-3', not a whole number >= 0"},
      {"batch_in_epoch", "1.5", "has batch_in_epoch '1.5', not a whole number >= 0"},
      {"best_acc1", "nan", "has best_acc1 'nan', not a number in [0, 100]"},
      {"best_acc1", "x", "has best_acc1 'x', not a number in [0, 100]"},
  };
  for (const auto& c : cases) {
    runtime::Checkpoint ck = good;
    ck.meta[c.key] = c.value;
    std::string path = tmp.path + "/meta.oxt";
    runtime::save_checkpoint(ck, path);
    auto r = run(tiny_run(model, tmp.path) + "--resume " + path);
    EXPECT_EQ(test::clean_error_problem(r), "") << c.key << "=" << c.value;
    EXPECT_EQ(error_line(r), "oxtrain: error: checkpoint '" + path + "' " + c.message +
                                 "; the file is damaged, use an earlier checkpoint");
  }
}

// --input-tensors must match the model's input in rank, dtype, channels, height and
// width (the old check looked at the batch only and read past the tensor).
TEST(HardeningTrain, InputTensorsMustMatchTheModel) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);  // takes [N,3,8,8]
  std::string labels = tmp.path + "/labels.pb";
  write_tensor_file(labels, onnx::TensorProto::INT64, {2}, int64_bytes({1, 3}));
  struct Case {
    std::string name;
    int type;
    std::vector<int64_t> dims;
    std::string shown;
  };
  const Case cases[] = {
      {"small", onnx::TensorProto::FLOAT, {2, 3, 4, 4}, "float32 [2,3,4,4]"},
      {"wide", onnx::TensorProto::FLOAT, {2, 3, 8, 16}, "float32 [2,3,8,16]"},
      {"channels", onnx::TensorProto::FLOAT, {2, 1, 8, 8}, "float32 [2,1,8,8]"},
      {"rank", onnx::TensorProto::FLOAT, {2, 192}, "float32 [2,192]"},
      {"scalar", onnx::TensorProto::FLOAT, {}, "float32 []"},
      {"double", onnx::TensorProto::DOUBLE, {2, 3, 8, 8}, "float64 [2,3,8,8]"},
  };
  for (const auto& c : cases) {
    std::string images = tmp.path + "/" + c.name + ".pb";
    int64_t n = 1;
    for (int64_t d : c.dims) n *= d;
    write_tensor_file(images, c.type, c.dims, std::string(static_cast<size_t>(n) * (c.type == onnx::TensorProto::DOUBLE ? 8 : 4), '\0'));
    auto r = run("train --model " + model + " --input-tensors " + images + "," + labels +
                 " -b 2 --steps 1 --threads 1 --checkpoint-dir " + tmp.path);
    EXPECT_EQ(test::clean_error_problem(r), "") << c.name;
    EXPECT_EQ(error_line(r), "oxtrain: error: --input-tensors: the images are " + c.shown +
                                 " but model input 'x' takes float32 [2,3,8,8] at -b 2; give images "
                                 "of that shape")
        << c.name;
    EXPECT_EQ(r.out.find("Epoch:"), std::string::npos) << c.name;
  }
  // Labels outside the model's classes.
  std::string images = tmp.path + "/good.pb";
  write_tensor_file(images, onnx::TensorProto::FLOAT, {2, 3, 8, 8}, float_bytes(2 * 3 * 8 * 8));
  write_tensor_file(tmp.path + "/bad_labels.pb", onnx::TensorProto::INT64, {2}, int64_bytes({1, 5}));
  auto r = run("train --model " + model + " --input-tensors " + images + "," + tmp.path +
               "/bad_labels.pb -b 2 --steps 1 --threads 1 --checkpoint-dir " + tmp.path);
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_EQ(error_line(r), "oxtrain: error: --input-tensors: label 5 (sample 1) is outside the "
                           "model's 5 classes [0, 5)");
  // Tensors of the model's shape train; the model sets their size, not --image-size.
  auto ok = run("train --model " + model + " --input-tensors " + images + "," + labels +
                " -b 2 --steps 1 --threads 1 --checkpoint-dir " + tmp.path);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

// With --input-tensors the tensors set the batch and the image size and the model sets the
// classes: leaving the flags out trains; a flag that contradicts them is the error.
TEST(HardeningTrain, InputTensorsSetTheBatchAndTheModelTheClasses) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);  // [N,3,8,8] -> 5 classes
  std::string tensors = tmp.path + "/x.pb," + tmp.path + "/y.pb";
  write_tensor_file(tmp.path + "/x.pb", onnx::TensorProto::FLOAT, {3, 3, 8, 8}, float_bytes(3 * 3 * 8 * 8));
  write_tensor_file(tmp.path + "/y.pb", onnx::TensorProto::INT64, {3}, int64_bytes({1, 4, 0}));
  const std::string base = "train --model " + model + " --input-tensors " + tensors +
                           " --steps 1 -p 1 --threads 1 --device cpu --checkpoint-dir " + tmp.path;
  auto ok = run(base);
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_NE(ok.out.find(", batch 3, 1 step"), std::string::npos) << ok.out;  // not -b's default 256
  struct Case {
    std::string flags, message;
  };
  const Case cases[] = {
      {"-b 2", "--input-tensors: the images hold a batch of 3 but -b is 2; leave -b out (the tensors set the batch)"},
      {"--image-size 16",
       "--input-tensors: the images are 8x8 but --image-size is 16; leave --image-size out (the tensors set it)"},
      {"--num-classes 7", "--num-classes 7 but the model '" + model +
                              "' has 5 classes; leave --num-classes out (the model sets it)"},
  };
  for (const Case& c : cases) {
    auto r = run(base + " " + c.flags);
    EXPECT_EQ(test::clean_error_problem(r), "") << c.flags;
    EXPECT_EQ(error_line(r), "oxtrain: error: " + c.message) << c.flags;
  }
  // Flags that agree are fine.
  auto agree = run(base + " -b 3 --image-size 8 --num-classes 5");
  EXPECT_EQ(agree.exit_code, 0) << agree.err;
}

// Fixed tensors may be any [batch, ...] the model takes: video clips [N, 3, T, H, W] train a
// 3-D convolutional model. Without them the model must take RGB images, and the error says so.
TEST(HardeningTrain, InputTensorsMayBeClips) {
  test::ScopedTempDir tmp;
  test::ModelBuilder b;
  b.input("clips", {-1, 3, 4, 6, 6});
  b.initializer("conv.weight", {4, 3, 3, 3, 3}, 0.05f);
  b.initializer("conv.bias", {4}, 0.0f);
  b.initializer("fc.weight", {5, 4}, 0.2f);
  b.initializer("fc.bias", {5}, 0.0f);
  auto& conv = b.node("Conv", {"clips", "conv.weight", "conv.bias"}, {"c"}, "conv3d");
  test::set_ints(conv, "pads", {1, 1, 1, 1, 1, 1});
  b.node("Relu", {"c"}, {"r"}, "relu");
  b.node("GlobalAveragePool", {"r"}, {"p"}, "pool");
  b.node("Flatten", {"p"}, {"f"}, "flatten");
  auto& fc = b.node("Gemm", {"f", "fc.weight", "fc.bias"}, {"y"}, "fc");
  test::set_int(fc, "transB", 1);
  b.output("y");
  const std::string model = tmp.path + "/clips.onnx";
  b.save(model);
  std::string x(2 * 3 * 4 * 6 * 6 * 4, '\0');
  auto* xf = reinterpret_cast<float*>(x.data());
  for (size_t i = 0; i < x.size() / 4; ++i) xf[i] = static_cast<float>((i * 37) % 11) / 11.0f - 0.5f;
  write_tensor_file(tmp.path + "/x.pb", onnx::TensorProto::FLOAT, {2, 3, 4, 6, 6}, x);
  write_tensor_file(tmp.path + "/y.pb", onnx::TensorProto::INT64, {2}, int64_bytes({1, 3}));
  auto r = run("train --model " + model + " --input-tensors " + tmp.path + "/x.pb," + tmp.path +
               "/y.pb --steps 2 -p 1 --threads 1 --device cpu --checkpoint-dir " + tmp.path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(", batch 2, 2 steps"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("nan"), std::string::npos) << r.out;

  auto refused = run("train --model " + model + " --synthetic --steps 1 --threads 1 --checkpoint-dir " + tmp.path);
  EXPECT_EQ(test::clean_error_problem(refused), "");
  EXPECT_EQ(error_line(refused), "oxtrain: error: model input 'clips' has shape [N,3,4,6,6]; oxtrain train "
                                 "feeds RGB images [batch, 3, H, W]; other inputs come with --input-tensors");
}

// Every flag is checked before any work, naming the flag and its range.
TEST(HardeningTrain, FlagsAreCheckedUpFront) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  std::ofstream(tmp.path + "/file") << "x";
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {"--lr 1e400", "--lr must be a finite number greater than 0, got inf"},
      {"--lr inf", "--lr must be a finite number greater than 0, got inf"},
      {"--lr nan", "--lr must be a finite number greater than 0, got nan"},
      {"--lr 0", "--lr must be a finite number greater than 0, got 0"},
      {"--momentum nan", "--momentum must be in [0, 1), got nan"},
      {"--momentum -0.5", "--momentum must be in [0, 1), got -0.5"},
      {"--momentum 1", "--momentum must be in [0, 1), got 1"},
      {"--wd nan", "--wd must be a finite number of at least 0, got nan"},
      {"--wd -1e-4", "--wd must be a finite number of at least 0, got -0.0001"},
      {"--steps -1", "--steps must be in [0, 9223372036854775807] (0: no limit), got -1"},
      {"--seed -1", "--seed must be in [0, 9223372036854775807], got -1"},
      {"--num-classes -1", "--num-classes must be in [1, 1048576], got -1"},
      {"--num-classes 0", "--num-classes must be in [1, 1048576], got 0"},
      {"--epochs 0", "--epochs must be in [1, 1048576], got 0"},
      {"--start-epoch 2", "--start-epoch must be in [0, 1] (0 to --epochs), got 2"},
      {"-p 0", "--print-freq must be in [1, 9223372036854775807], got 0"},
      {"--image-size 0", "--image-size must be in [8, 4096], got 0"},
      {"--image-size 100000", "--image-size must be in [8, 4096], got 100000"},
      {"-b 0", "--batch-size must be in [1, 65536], got 0"},
      {"-b -5", "--batch-size must be in [1, 65536], got -5"},
      {"--metrics-json /missing/m.json",
       "--metrics-json '/missing/m.json': folder '/missing' does not exist; create it first"},
      {"--metrics-json " + tmp.path, "--metrics-json '" + tmp.path + "' is a folder; give a file name"},
      {"--save-model /missing/m.onnx",
       "--save-model '/missing/m.onnx': folder '/missing' does not exist; create it first"},
      {"--checkpoint-dir " + tmp.path + "/file/ck",
       "--checkpoint-dir '" + tmp.path + "/file/ck' cannot be created: Not a directory"},
  };
  for (const auto& c : cases) {
    auto r = run(tiny_run(model, tmp.path) + c.args);
    EXPECT_EQ(test::clean_error_problem(r), "") << c.args;
    EXPECT_EQ(error_line(r), "oxtrain: error: " + c.message) << c.args;
    EXPECT_EQ(r.out.find("Epoch:"), std::string::npos) << c.args;
  }
}

// Thread counts that would hang OpenBLAS or exhaust the process table are refused
// before any thread starts (the test fails by timeout if one hangs).
TEST(HardeningTrain, ThreadCountsAreBounded) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  for (std::string args : {"--threads 100000", "--threads -1", "-j 10000", "--workers -2"}) {
    auto r = run(tiny_run(model, tmp.path) + args);
    EXPECT_EQ(test::clean_error_problem(r), "") << args;
    std::string flag = args.find("threads") != std::string::npos ? "--threads" : "--workers";
    std::string value = args.substr(args.find(' ') + 1);
    EXPECT_TRUE(std::regex_match(error_line(r), std::regex("oxtrain: error: " + flag +
                                                           " must be in \\[0, [0-9]+\\] \\(0: [a-z ]+\\), got " +
                                                           value)))
        << r.err;
  }
}

// Running out of memory is one line that says what to change.
TEST(HardeningTrain, OutOfMemoryIsOneLine) {
  if (test::running_under_sanitizer()) GTEST_SKIP() << "address-space limits do not apply under ASan";
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  // 65536 images of 3x1024x1024 floats: 768 GiB, far beyond the 3 GiB allowed.
  auto r = test::run_oxtrain_limited("train --synthetic -a resnet18 --image-size 1024 -b 65536 "
                                     "--steps 1 --checkpoint-dir " + tmp.path, kTimeout, 3072);
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_EQ(error_line(r), "oxtrain: error: out of memory while loading the data; lower --batch-size "
                           "or free memory");
}

// A thread that cannot be started (here: 64 loader stacks do not fit the
// address space allowed) is one line naming the flags to lower, not "Resource temporarily
// unavailable".
TEST(HardeningTrain, ThreadCreationFailureIsOneLine) {
  if (test::running_under_sanitizer()) GTEST_SKIP() << "address-space limits do not apply under ASan";
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path, 2);
  auto made = run("make-dataset " + tmp.path + "/data --classes 2 --train-per-class 2 "
                  "--val-per-class 1 --min-side 8 --max-side 12 --seed 1");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  // OpenBLAS sizes its start-up buffers by its thread count: one keeps the program small.
  ::setenv("OPENBLAS_NUM_THREADS", "1", 1);
  std::string args = "train " + tmp.path + "/data --model " + model + " --image-size 8 -b 2 --steps 1 "
                     "--threads 1 --checkpoint-dir " + tmp.path + " -j ";
  // 320 MiB beyond the program's libraries: room for one loader thread and the step, not for
  // the 64 threads' stacks (8 MiB each).
  auto one = test::run_oxtrain_limited(args + "1", kTimeout, 320);
  auto many = test::run_oxtrain_limited(args + "64", kTimeout, 320);
  ::unsetenv("OPENBLAS_NUM_THREADS");
  EXPECT_EQ(one.exit_code, 0) << one.err;  // the limit leaves room for the program itself
  EXPECT_EQ(test::clean_error_problem(many), "");
  EXPECT_EQ(error_line(many), "oxtrain: error: the system refused to start another thread while "
                              "loading the data; lower -j/--workers or --threads");
}

// A parse error is one line with the prefix; --help still works.
TEST(HardeningTrain, ParseErrorsAreOneLine) {
  auto r = run("train --synthetic --bogus");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_EQ(error_line(r), "oxtrain: error: The following argument was not expected: --bogus; see "
                           "oxtrain train --help");
  r = run("train --synthetic -b x");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_EQ(error_line(r), "oxtrain: error: Could not convert: --batch-size = x; see oxtrain train --help");
  r = run("");
  EXPECT_EQ(test::clean_error_problem(r), "");
  auto help = run("train --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--allow-external-data-anywhere"), std::string::npos);
  EXPECT_NE(help.out.find("--resume"), std::string::npos);
}

// A model given where the data goes gets a hint.
TEST(HardeningTrain, ModelGivenAsDataGetsAHint) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  for (std::string extra : {"", " --synthetic"}) {
    auto r = run("train " + model + extra + " --checkpoint-dir " + tmp.path);
    EXPECT_EQ(test::clean_error_problem(r), "") << extra;
    EXPECT_EQ(error_line(r), "oxtrain: error: DATA '" + model +
                                 "' looks like a model; use --model FILE (DATA is an ImageNet folder)");
  }
}

// The tmp files a killed run left are removed at the next start, with one line each.
TEST(HardeningTrain, StaleTmpFilesAreRemoved) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  std::string ck = tmp.path + "/ck";
  fs::create_directories(ck);
  std::vector<std::string> stale{ck + "/checkpoint.oxt.tmp", ck + "/model_best.oxt.tmp",
                                 tmp.path + "/m.json.tmp"};
  for (const auto& s : stale) std::ofstream(s) << "partial";
  auto r = run(tiny_run(model, ck) + "--metrics-json " + tmp.path + "/m.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& s : stale) {
    EXPECT_FALSE(fs::exists(s)) << s;
    EXPECT_NE(r.out.find("oxtrain: removed '" + s + "', left by an interrupted run\n"), std::string::npos)
        << r.out;
  }
  EXPECT_TRUE(fs::exists(tmp.path + "/m.json"));
  EXPECT_TRUE(fs::exists(ck + "/checkpoint.oxt"));
}

// Checkpoint.oxt, model_best.oxt and the metrics are replaced by a rename, never
// rewritten in place: a reader holding the old file (here a hard link) keeps it whole.
TEST(HardeningTrain, OutputsAreReplacedAtomically) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path, 2);
  auto made = run("make-dataset " + tmp.path + "/data --classes 2 --train-per-class 4 "
                  "--val-per-class 4 --min-side 8 --max-side 12 --seed 1");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  std::string ck = tmp.path + "/ck";
  fs::create_directories(ck);
  const std::vector<std::string> outputs{ck + "/checkpoint.oxt", ck + "/model_best.oxt", tmp.path + "/m.json"};
  for (const auto& o : outputs) {
    std::ofstream(o) << "old";
    fs::create_hard_link(o, o + ".held");
  }
  auto r = run("train " + tmp.path + "/data --model " + model + " --image-size 8 -b 2 --epochs 1 "
               "-j 0 --threads 1 --checkpoint-dir " + ck + " --metrics-json " + tmp.path + "/m.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& o : outputs) {
    EXPECT_EQ(test::read_text(o + ".held"), "old") << o;
    EXPECT_NE(test::read_text(o), "old") << o;
    EXPECT_FALSE(fs::exists(o + ".tmp")) << o;
  }
  EXPECT_EQ(test::read_text(ck + "/model_best.oxt"), test::read_text(ck + "/checkpoint.oxt"));
  EXPECT_NO_THROW(nlohmann::json::parse(test::read_text(tmp.path + "/m.json")));
}

TEST(HardeningTrain, AllowExternalDataAnywhereIsAFlag) {
  test::ScopedTempDir tmp;
  std::string model = small_model(tmp.path);
  auto r = run(tiny_run(model, tmp.path) + "--allow-external-data-anywhere");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// No stoll/stod/stoi in the command line's code or the checkpoint reader: a bad
// number there must be a message, not std::invalid_argument.
TEST(HardeningTrain, NoUncheckedNumberParsing) {
  fs::path root = fs::path(OXTRAIN_FIXTURES).parent_path().parent_path();
  std::vector<fs::path> files{root / "runtime" / "checkpoint.cc"};
  for (const auto& e : fs::directory_iterator(root / "cli")) files.push_back(e.path());
  for (const auto& f : files) {
    std::string text = test::read_text(f.string());
    EXPECT_FALSE(std::regex_search(text, std::regex(R"(\bsto(i|l|ll|ul|ull|f|d|ld)\s*\()"))) << f;
  }
}

// `oxtrain zoo` checks its flags too (--seed -1 was wrapped to 2^64-1, a huge
// --num-classes ended in std::bad_alloc).
TEST(HardeningTrain, ZooFlagsAreChecked) {
  test::ScopedTempDir tmp;
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {"--num-classes 0", "--num-classes must be in [1, 1048576], got 0"},
      {"--num-classes 100000000", "--num-classes must be in [1, 1048576], got 100000000"},
      {"--image-size 100000", "--image-size must be in [32, 4096], got 100000"},
      {"--seed -1", "--seed must be in [0, 9223372036854775807], got -1"},
      {"-o /missing/z.onnx", "-o '/missing/z.onnx': folder '/missing' does not exist; create it first"},
  };
  for (const auto& c : cases) {
    auto r = run("zoo resnet18 -o " + tmp.path + "/z.onnx " + c.args);
    EXPECT_EQ(test::clean_error_problem(r), "") << c.args;
    EXPECT_EQ(error_line(r), "oxtrain: error: " + c.message) << c.args;
  }
  // --verbose belongs to the program and may come before or after the subcommand.
  EXPECT_EQ(run("--verbose zoo --list").exit_code, 0);
  EXPECT_EQ(run("zoo --list --verbose").exit_code, 0);
}
