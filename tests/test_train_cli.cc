// `oxtrain train` end to end: it resumes bit-identically from the middle of an epoch, its log
// parses with DLPerf's rule, and bad settings and a diverging loss stop it with clear errors.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "runtime/checkpoint.h"
#include "runtime/device.h"
#include "tests/helpers.h"

using namespace oxtrain;

namespace {

// One small dataset for the whole suite: 10 classes, 40 training and 10 validation images each.
const std::string& dataset() {
  static const std::string dir = [] {
    std::string d = test::temp_dir() + "/data";
    auto r = test::run_oxtrain("make-dataset " + d +
                               " --classes 10 --train-per-class 40 --val-per-class 10 --min-side 48 "
                               "--max-side 96 --seed 1");
    if (r.exit_code != 0) throw std::runtime_error("make-dataset failed: " + r.err);
    return d;
  }();
  return dir;
}

std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.find(needle) != std::string::npos) out.push_back(line);
  return out;
}

const char* kSmall = " -a resnet18 --image-size 32 -j 2 ";

}  // namespace

TEST(TrainCli, ResumeMidEpochIsBitIdentical) {
  std::string dir = test::temp_dir();
  // 400 images at batch 16: 25 steps per epoch; stop at step 7, resume to step 14.
  std::string common = "train " + dataset() + kSmall + "-b 16 --lr 0.05 --epochs 1 -p 100 --seed 4 ";
  auto straight = test::run_oxtrain(common + "--steps 14 --checkpoint-dir " + dir + "/straight");
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  auto first = test::run_oxtrain(common + "--steps 7 --checkpoint-dir " + dir + "/split");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  auto second = test::run_oxtrain(common + "--steps 14 --checkpoint-dir " + dir + "/split --resume " +
                                  dir + "/split/checkpoint.oxt");
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_NE(second.out.find("epoch 0, batch 7, step 7"), std::string::npos) << second.out;
  runtime::Checkpoint a = runtime::load_checkpoint(dir + "/straight/checkpoint.oxt");
  runtime::Checkpoint b = runtime::load_checkpoint(dir + "/split/checkpoint.oxt");
  EXPECT_EQ(a.get("step"), "14");
  EXPECT_EQ(b.get("step"), "14");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  ASSERT_GT(a.tensors.size(), 100u);  // weights, momentum buffers, BN statistics
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].first, b.tensors[i].first);
    EXPECT_EQ(a.tensors[i].second.bytes, b.tensors[i].second.bytes) << a.tensors[i].first;
  }
}

TEST(TrainCli, LogOf130StepsParsesWithDlperfsRule) {
  std::string dir = test::temp_dir();
  auto r = test::run_oxtrain("train --synthetic -a resnet18 --image-size 32 --num-classes 10 -b 2 "
                             "--epochs 1 -p 1 --steps 130 --checkpoint-dir " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto epoch_lines = lines_with(r.out, "Epoch: ");
  ASSERT_EQ(epoch_lines.size(), 130u);
  // main.py's format, e.g. "Epoch: [0][  5/640584]\tTime  0.020 ( 0.021)\tData ..."
  std::regex line(R"(^Epoch: \[0\]\[ *\d+/\d+\]\tTime +\d+\.\d{3} \( *\d+\.\d{3}\)\tData +\d+\.\d{3} \( *\d+\.\d{3}\)\tLoss \d\.\d{4}e[+-]\d\d \(\d\.\d{4}e[+-]\d\d\)\tAcc@1 +\d+\.\d\d \( *\d+\.\d\d\)\tAcc@5 +\d+\.\d\d \( *\d+\.\d\d\)$)");
  for (const auto& l : epoch_lines) ASSERT_TRUE(std::regex_match(l, line)) << l;
  if (std::system("python3 --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3 not found";
  std::string log = dir + "/1n1c_real.log";
  std::ofstream(log) << r.out;
  std::string script = std::filesystem::path(OXTRAIN_FIXTURES).parent_path().parent_path() /
                       "scripts" / "extract_dlperf.py";
  std::string out = dir + "/throughput.json";
  int rc = std::system(("python3 " + script + " --batch-size-total 2 " + log + " > " + out).c_str());
  ASSERT_EQ(rc, 0);
  std::string json = test::read_text(out);
  // Independently: lines with index > 5, then lines 21..120 of those; throughput from the sum.
  double sum = 0;
  int counted = 0;
  for (const auto& l : epoch_lines) {
    std::smatch m;
    std::regex_search(l, m, std::regex(R"(\]\[ *(\d+)/)"));
    if (std::stoi(m[1]) <= 5) continue;
    ++counted;
    if (counted <= 20 || counted > 120) continue;
    std::regex_search(l, m, std::regex(R"(Time +(\d+\.\d{3}))"));
    sum += std::stod(m[1]);
  }
  double expected = 2 * 100 / sum;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(json, m, std::regex(R"("median": ([0-9.]+))"))) << json;
  EXPECT_NEAR(std::stod(m[1]), expected, expected * 1e-6) << json;
}

TEST(TrainCli, BadSettingsAreRefusedBeforeTraining) {
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {"-b 0", "--batch-size must be in [1, 65536], got 0"},
      {"-b 8 --lr -0.1", "--lr must be a finite number greater than 0, got -0.1"},
      {"-b 8 --lr 0", "--lr must be a finite number greater than 0, got 0"},
      {"-b 1000", "larger than the 400 images"},
      {"-b 8 --num-classes 7", "the model has 7 classes but the dataset has 10"},
      {"-b 8 --world-size 2", "--rank is required with --world-size 2"},
      {"-b 8 --decode jpeg", "--decode is cpu (the loader's threads) or gpu (nvJPEG), got 'jpeg'"},
      {"-b 8 --decode gpu --device cpu", "--decode gpu needs the GPU, and --device cpu trains on the CPU"},
  };
  for (const auto& c : cases) {
    auto r = test::run_oxtrain("train " + dataset() + kSmall + c.args + " --checkpoint-dir " +
                               test::temp_dir());
    EXPECT_EQ(r.exit_code, 2) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << ": " << r.err;
    EXPECT_EQ(lines_with(r.out, "Epoch: ").size(), 0u) << c.args;
  }
  auto none = test::run_oxtrain("train -a resnet18");
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("exactly one data source"), std::string::npos) << none.err;
  auto synthetic = test::run_oxtrain("train -a resnet18 --synthetic --decode gpu");
  EXPECT_EQ(synthetic.exit_code, 2);
  EXPECT_NE(synthetic.err.find("--synthetic and --input-tensors have nothing to decode"), std::string::npos)
      << synthetic.err;
  if (runtime::cuda_devices().empty()) {  // --device auto trains on the CPU here
    auto r = test::run_oxtrain("train " + dataset() + kSmall + "-b 8 --decode gpu --checkpoint-dir " +
                               test::temp_dir());
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("--decode gpu needs a GPU, and this run trains on the CPU (no GPU is visible)"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(lines_with(r.out, "Epoch: ").size(), 0u);
  }
}

TEST(TrainCli, NonFiniteLossStopsWithTheStepAndLastCheckpoint) {
  std::string dir = test::temp_dir();
  auto r = test::run_oxtrain("train " + dataset() + kSmall +
                             "-b 16 --lr 1e30 --epochs 1 -p 100 --checkpoint-dir " + dir);
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_TRUE(std::regex_search(r.err, std::regex("the loss is (NaN|infinite) at step [0-9]+")))
      << r.err;
  EXPECT_NE(r.err.find("No checkpoint was written yet"), std::string::npos) << r.err;
}

TEST(TrainCli, LearnsTheGeneratedDataset) {
  // 10 classes x 150 training images: a zoo ResNet-18 at 32x32 reaches over 90% validation
  // Acc@1 on two cores in about two minutes (deterministic for the seed and thread count).
  std::string dir = test::temp_dir();
  auto made = test::run_oxtrain("make-dataset " + dir + "/data --classes 10 --train-per-class 150 "
                                "--val-per-class 20 --min-side 48 --max-side 96");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  auto r = test::run_oxtrain("train " + dir + "/data" + kSmall +
                             "--min-crop-scale 0.35 -b 32 --lr 0.1 --lr-schedule cosine --epochs 24 "
                             "-p 1000 --threads 2 --checkpoint-dir " + dir + " --save-model " + dir +
                             "/trained.onnx");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto summaries = lines_with(r.out, " * Acc@1 ");
  ASSERT_EQ(summaries.size(), 24u) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(summaries.back(), m, std::regex(R"(Acc@1 ([0-9.]+))")));
  EXPECT_GE(std::stod(m[1]), 90.0) << r.out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/model_best.oxt"));
  // The saved ONNX model (weights and BN statistics) evaluates to the same accuracy.
  auto e = test::run_oxtrain("train " + dir + "/data --model " + dir +
                             "/trained.onnx --image-size 32 -b 32 -e --threads 2");
  ASSERT_EQ(e.exit_code, 0) << e.err;
  auto eval_summary = lines_with(e.out, " * Acc@1 ");
  ASSERT_EQ(eval_summary.size(), 1u) << e.out;
  EXPECT_EQ(eval_summary[0], summaries.back());
}

// --decode gpu's whole path on the CPU (the loader leaving JPEGs encoded with their taps, the
// feeding through Session::feed_written, the short validation batch's padding), with the GPU
// decoder's CPU twin in nvJPEG's place: the same checkpoint, bit for bit, as --decode cpu
// where the images are small enough (under twice the crop) that the loader decodes at full
// size too.
TEST(TrainCli, DecodeGpuPathTrainsAsDecodeCpu) {
  std::string dir = test::temp_dir();
  auto made = test::run_oxtrain("make-dataset " + dir + "/data --classes 4 --train-per-class 12 "
                                "--val-per-class 5 --min-side 33 --max-side 63 --seed 3");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  // 48 training images at -b 16: 3 steps; 20 validation images: 16, then 4 and 12 padding.
  const std::string common = "train " + dir + "/data" + kSmall +
                             "-b 16 --lr 0.05 --epochs 1 -p 1 --seed 4 --device cpu --checkpoint-dir " + dir;
  auto cpu = test::run_oxtrain(common + "/cpu --decode cpu");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  setenv("OXTRAIN_DECODE_ON_HOST", "1", 1);
  auto twin = test::run_oxtrain(common + "/twin --decode gpu");
  unsetenv("OXTRAIN_DECODE_ON_HOST");
  ASSERT_EQ(twin.exit_code, 0) << twin.err;
  EXPECT_NE(twin.out.find("=> decoding JPEGs with the GPU decoder's CPU twin"), std::string::npos) << twin.out;
  EXPECT_NE(twin.out.find("oxtrain: nvJPEG decoded 68 images; 0 it refused"), std::string::npos) << twin.out;
  // The losses and accuracies of every step and of validation, as printed.
  auto metrics = [](const std::string& out) {
    std::vector<std::string> kept;
    for (const std::string& l : lines_with(out, "Loss ")) kept.push_back(l.substr(l.find("Loss ")));
    for (const std::string& l : lines_with(out, " * Acc@1 ")) kept.push_back(l);
    return kept;
  };
  const std::vector<std::string> want = metrics(cpu.out), got = metrics(twin.out);
  ASSERT_EQ(want.size(), 3u + 2u + 1u) << cpu.out;  // 3 steps, 2 validation batches, the summary
  EXPECT_EQ(got, want);
  runtime::Checkpoint a = runtime::load_checkpoint(dir + "/cpu/checkpoint.oxt");
  runtime::Checkpoint b = runtime::load_checkpoint(dir + "/twin/checkpoint.oxt");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i)
    EXPECT_EQ(a.tensors[i].second.bytes, b.tensors[i].second.bytes) << a.tensors[i].first;
}
