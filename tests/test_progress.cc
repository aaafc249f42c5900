// Progress lines of `oxtrain train` (cli/progress.h): byte-for-byte the lines of PyTorch's
// examples/imagenet/main.py, and scripts/extract_dlperf.py reading them as DLPerf does.
#include <gtest/gtest.h>
#include <unistd.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/progress.h"
#include "runtime/math/metrics.h"

using namespace oxtrain::cli;
namespace fs = std::filesystem;

namespace {

// The five meters of main.py's train().
struct TrainMeters {
  AverageMeter batch_time{"Time", ":6.3f"};
  AverageMeter data_time{"Data", ":6.3f"};
  AverageMeter losses{"Loss", ":.4e"};
  AverageMeter top1{"Acc@1", ":6.2f"};
  AverageMeter top5{"Acc@5", ":6.2f"};
  ProgressMeter progress(int64_t num_batches, int64_t epoch) const {
    return ProgressMeter(num_batches, {&batch_time, &data_time, &losses, &top1, &top5},
                         epoch_prefix(epoch));
  }
};

fs::path fresh_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::temp_directory_path() /
                 ("oxtrain_progress_" + std::to_string(getpid())) /
                 (std::string(info->test_suite_name()) + "." + info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool have_python3() { return std::system("command -v python3 >/dev/null 2>&1") == 0; }

fs::path extract_script() {
#if defined(OXTRAIN_SOURCE_DIR)
  return fs::path(OXTRAIN_SOURCE_DIR) / "scripts" / "extract_dlperf.py";
#else
  // OXTRAIN_FIXTURES is "<repo>/tests/fixtures".
  return fs::path(OXTRAIN_FIXTURES).parent_path().parent_path() / "scripts" / "extract_dlperf.py";
#endif
}

struct ScriptRun {
  int exit_code;
  std::string out, err;
};

ScriptRun run_extractor(const std::string& args, const fs::path& dir) {
  fs::path out = dir / "stdout", err = dir / "stderr";
  std::string cmd = "python3 '" + extract_script().string() + "' " + args + " >'" + out.string() +
                    "' 2>'" + err.string() + "'";
  int status = std::system(cmd.c_str());
  ScriptRun r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// A training log as `oxtrain train --print-freq 1` writes it, with noise around the progress
// lines; step i takes step_time(i) seconds.
template <typename StepTime>
void write_training_log(const fs::path& path, int64_t steps, StepTime step_time) {
  std::ofstream log(path);
  log << "=> creating model 'resnet50'\n";
  log << "train: synthetic data, 128 images per step\n\n";
  TrainMeters m;
  ProgressMeter progress = m.progress(steps, 0);
  for (int64_t i = 0; i < steps; ++i) {
    m.data_time.update(0.002 + 0.0001 * static_cast<double>(i % 3));
    m.losses.update(6.9 - 0.01 * static_cast<double>(i), 128);
    m.top1.update(0.78125, 128);
    m.top5.update(3.90625, 128);
    m.batch_time.update(step_time(i));
    log << progress.line(i) << "\n";
    if (i % 40 == 39) log << "lr 0.128 momentum 0.9 Data 1.234 Time 9.999 (noise)\n";
  }
  AverageMeter bt("Time", ":6.3f"), loss("Loss", ":.4e"), t1("Acc@1", ":6.2f"),
      t5("Acc@5", ":6.2f");
  ProgressMeter test(3, {&bt, &loss, &t1, &t5}, kTestPrefix);
  for (int64_t i = 0; i < 3; ++i) {
    bt.update(0.05);
    loss.update(6.9, 128);
    t1.update(0.0, 128);
    t5.update(0.78125, 128);
    log << test.line(i) << "\n";
  }
  log << test_summary(t1.avg(), t5.avg()) << "\n";
  RunSummary summary;
  summary.global_batch = 128;
  for (int64_t i = 0; i < steps; ++i) summary.step_seconds.push_back(step_time(i));
  log << throughput_summary(summary) << "\n";
}

}  // namespace

TEST(Progress, ExampleTrainingLine) {
  TrainMeters m;
  // Two updates each, so val is the second value and avg the mean of both (n = batch size
  // for loss and accuracy, 1 for the times, as main.py updates them).
  m.batch_time.update(4.878);
  m.batch_time.update(0.362);
  m.data_time.update(0.044);
  m.data_time.update(0.106);
  m.losses.update(46.115, 64);
  m.losses.update(14.081, 64);
  m.top1.update(2.34375, 64);
  m.top1.update(1.5625, 64);
  m.top5.update(6.78, 64);
  m.top5.update(14.0625, 64);
  EXPECT_DOUBLE_EQ(m.batch_time.avg(), 2.62);
  EXPECT_EQ(m.losses.count(), 128);
  EXPECT_EQ(m.progress(53, 0).line(5),
            "Epoch: [0][ 5/53]\tTime  0.362 ( 2.620)\tData  0.106 ( 0.075)\t"
            "Loss 1.4081e+01 (3.0098e+01)\tAcc@1   1.56 (  1.95)\tAcc@5  14.06 ( 10.42)");
  EXPECT_EQ(m.batch_time.str(), "Time  0.362 ( 2.620)");
  EXPECT_EQ(m.progress(53, 12).line(52).substr(0, 18), "Epoch: [12][52/53]");

  // Before any update, Python's meter shows zeros.
  AverageMeter fresh("Loss", ":.4e");
  EXPECT_EQ(fresh.str(), "Loss 0.0000e+00 (0.0000e+00)");
  // reset() clears the running mean.
  m.batch_time.reset();
  m.batch_time.update(1.0);
  EXPECT_EQ(m.batch_time.str(), "Time  1.000 ( 1.000)");
}

TEST(Progress, BatchFieldPadding) {
  AverageMeter t("Time", ":6.3f");
  // num_digits = len(str(num_batches))
  EXPECT_EQ(ProgressMeter(53, {&t}).batch_field(5), "[ 5/53]");
  EXPECT_EQ(ProgressMeter(100, {&t}).batch_field(5), "[  5/100]");
  EXPECT_EQ(ProgressMeter(1000, {&t}).batch_field(5), "[   5/1000]");
  EXPECT_EQ(ProgressMeter(1000, {&t}).batch_field(999), "[ 999/1000]");
  EXPECT_EQ(ProgressMeter(9, {&t}).batch_field(0), "[0/9]");
  EXPECT_EQ(ProgressMeter(10010, {&t}).batch_field(42), "[   42/10010]");
  // Wider than num_batches: Python widens the field, so does this.
  EXPECT_EQ(ProgressMeter(100, {&t}).batch_field(1234), "[1234/100]");
  // No meters: just the prefix and the bracket.
  EXPECT_EQ(ProgressMeter(100, {}, epoch_prefix(3)).line(7), "Epoch: [3][  7/100]");
  EXPECT_THROW(ProgressMeter(10, {nullptr}), std::invalid_argument);
}

TEST(Progress, ValidationLinesAndSummary) {
  AverageMeter bt("Time", ":6.3f"), loss("Loss", ":.4e"), t1("Acc@1", ":6.2f"),
      t5("Acc@5", ":6.2f");
  ProgressMeter test(391, {&bt, &loss, &t1, &t5}, kTestPrefix);
  bt.update(0.201);
  loss.update(6.9064, 128);
  t1.update(0.0, 128);
  t5.update(0.78125, 128);
  EXPECT_EQ(test.line(0),
            "Test: [  0/391]\tTime  0.201 ( 0.201)\tLoss 6.9064e+00 (6.9064e+00)\t"
            "Acc@1   0.00 (  0.00)\tAcc@5   0.78 (  0.78)");
  EXPECT_EQ(test_summary(76.13, 92.862), " * Acc@1 76.130 Acc@5 92.862");
  EXPECT_EQ(test_summary(0.1, 0.5), " * Acc@1 0.100 Acc@5 0.500");
  EXPECT_EQ(test_summary(100, 100), " * Acc@1 100.000 Acc@5 100.000");
  EXPECT_EQ(epoch_prefix(0), "Epoch: [0]");
}

TEST(Progress, PythonNumberFormats) {
  EXPECT_EQ(format_number(":.4e", 6.9064), "6.9064e+00");
  EXPECT_EQ(format_number(":.4e", 1.2345e-05), "1.2345e-05");
  EXPECT_EQ(format_number(":.4e", 30.098), "3.0098e+01");
  EXPECT_EQ(format_number(":.4e", 1e100), "1.0000e+100");
  EXPECT_EQ(format_number(":.4e", -2.5e-7), "-2.5000e-07");
  EXPECT_EQ(format_number(":.4e", 0.0), "0.0000e+00");
  EXPECT_EQ(format_number(":6.3f", 0.362), " 0.362");
  EXPECT_EQ(format_number(":6.3f", 12.5), "12.500");
  EXPECT_EQ(format_number(":6.3f", 1234.5678), "1234.568");  // wider than 6: not cut
  EXPECT_EQ(format_number(":6.2f", 100.0), "100.00");
  // Round half to even on the exact binary value, as Python: 0.125 and 0.375 are exact,
  // 2.675 is stored just below.
  EXPECT_EQ(format_number(":6.2f", 0.125), "  0.12");
  EXPECT_EQ(format_number(":6.2f", 0.375), "  0.38");
  EXPECT_EQ(format_number(":6.2f", 2.675), "  2.67");
  EXPECT_EQ(format_number(":6.2f", 1.5625), "  1.56");
  // Non-finite values as Python prints them (never "-nan").
  double nan = std::numeric_limits<double>::quiet_NaN();
  double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(format_number(":6.3f", nan), "   nan");
  EXPECT_EQ(format_number(":6.3f", -nan), "   nan");
  EXPECT_EQ(format_number(":.4e", nan), "nan");
  EXPECT_EQ(format_number(":.4e", -inf), "-inf");
  EXPECT_EQ(format_number(":6.2f", inf), "   inf");
  AverageMeter loss("Loss", ":.4e");
  loss.update(nan, 128);
  EXPECT_EQ(loss.str(), "Loss nan (nan)");
  // printf-style spelling is accepted; anything Python-specific beyond width/precision/type is
  // rejected at construction.
  EXPECT_EQ(format_number("%6.3f", 0.362), " 0.362");
  EXPECT_EQ(format_number(":f", 0.5), "0.500000");
  EXPECT_THROW(AverageMeter("x", ":>6.3f"), std::invalid_argument);
  EXPECT_THROW(AverageMeter("x", ":6.3"), std::invalid_argument);
  EXPECT_THROW(AverageMeter("x", ":6d"), std::invalid_argument);
  EXPECT_THROW(AverageMeter("x", ":06.3f"), std::invalid_argument);
  EXPECT_THROW(AverageMeter("x", ":6.f"), std::invalid_argument);
  EXPECT_THROW(AverageMeter("x", ""), std::invalid_argument);
}

TEST(Progress, AccuracyTopkWithTies) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // 5 rows x 5 classes.
  std::vector<float> logits = {
      0.1f, 0.9f, 0.3f, 0.2f, 0.0f,  // label 1: the top -> rank 0
      0.5f, 0.5f, 0.5f, 0.1f, 0.2f,  // label 2: tied with 0 and 1, which come first -> rank 2
      0.5f, 0.5f, 0.5f, 0.1f, 0.2f,  // label 0: the tie goes to the lowest index -> rank 0
      nan,  1.0f, 2.0f, 3.0f, 4.0f,  // label 4: NaN ranks above every number -> rank 1
      0.0f, 0.0f, 0.0f, 0.0f, 0.0f,  // label -1 (an ignore index): never a hit
  };
  std::vector<int64_t> labels = {1, 2, 0, 4, -1};
  auto acc = accuracy_topk(logits.data(), labels.data(), 5, 5, {1, 2, 3, 5, 7, 0});
  ASSERT_EQ(acc.size(), 6u);
  EXPECT_DOUBLE_EQ(acc[0], 40.0);  // rows 0, 2
  EXPECT_DOUBLE_EQ(acc[1], 60.0);  // + row 3
  EXPECT_DOUBLE_EQ(acc[2], 80.0);  // + row 1
  EXPECT_DOUBLE_EQ(acc[3], 80.0);  // every valid label
  EXPECT_DOUBLE_EQ(acc[4], 80.0);  // k > classes counts as classes
  EXPECT_DOUBLE_EQ(acc[5], 0.0);

  // A tie exactly at the k-th place: the lower index takes it. Label 3 ties with 1 and 3 is
  // third in order (2, 1, 3): out of top-2, in top-3.
  std::vector<float> tie = {0.0f, 0.7f, 0.9f, 0.7f};
  int64_t l3 = 3, l1 = 1;
  EXPECT_EQ(accuracy_topk(tie.data(), &l3, 1, 4, {1, 2, 3}), (std::vector<double>{0, 0, 100}));
  EXPECT_EQ(accuracy_topk(tie.data(), &l1, 1, 4, {1, 2, 3}), (std::vector<double>{0, 100, 100}));
  // -0.0 and +0.0 tie.
  std::vector<float> zeros = {0.0f, -0.0f};
  int64_t l0 = 0, lz = 1;
  EXPECT_EQ(accuracy_topk(zeros.data(), &l0, 1, 2, {1}), (std::vector<double>{100}));
  EXPECT_EQ(accuracy_topk(zeros.data(), &lz, 1, 2, {1}), (std::vector<double>{0}));

  // As main.py: hits * (100 / batch), e.g. 1 of 3.
  std::vector<float> three = {1, 0, 1, 0, 0, 1};
  std::vector<int64_t> three_labels = {0, 1, 1};
  auto a3 = accuracy_topk(three.data(), three_labels.data(), 3, 2, {1, 2});
  EXPECT_DOUBLE_EQ(a3[0], 2 * (100.0 / 3));
  EXPECT_DOUBLE_EQ(a3[1], 100.0);

  EXPECT_THROW(accuracy_topk(three.data(), three_labels.data(), 0, 2, {1}), std::invalid_argument);
  EXPECT_THROW(accuracy_topk(three.data(), three_labels.data(), 3, 0, {1}), std::invalid_argument);
}

TEST(Progress, MetricsSumsCountWhatAccuracyTopkCounts) {
  // The CPU twin of the device metrics (runtime/math/metrics.h) on the rows of
  // AccuracyTopkWithTies: top-1 hits rows 0 and 2, top-5 every valid label (4 rows).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> logits = {
      0.1f, 0.9f, 0.3f, 0.2f, 0.0f,  //
      0.5f, 0.5f, 0.5f, 0.1f, 0.2f,  //
      0.5f, 0.5f, 0.5f, 0.1f, 0.2f,  //
      nan,  1.0f, 2.0f, 3.0f, 4.0f,  //
      0.0f, 0.0f, 0.0f, 0.0f, 0.0f,  //
  };
  std::vector<int64_t> labels = {1, 2, 0, 4, -1};
  const float loss = 2.5f;
  double sums[3] = {1, 2, 3};  // earlier steps: the twin adds
  oxtrain::runtime::MetricsArgs a{&loss, logits.data(), labels.data(), 5, 5, sums};
  oxtrain::runtime::accumulate_metrics_cpu(a);
  EXPECT_DOUBLE_EQ(sums[0], 1 + 2.5 * 5);
  EXPECT_DOUBLE_EQ(sums[1], 2 + 2);
  EXPECT_DOUBLE_EQ(sums[2], 3 + 4);
  auto acc = accuracy_topk(logits.data(), labels.data(), 5, 5, {1, 5});
  EXPECT_DOUBLE_EQ(acc[0], 2 * (100.0 / 5));
  EXPECT_DOUBLE_EQ(acc[1], 4 * (100.0 / 5));

  // The shared per-row test: label 2 of row 1 has rank 2 (classes 0 and 1 tie before it).
  using oxtrain::runtime::math::label_in_topk;
  EXPECT_FALSE(label_in_topk(logits.data() + 5, 5, 2, 2));
  EXPECT_TRUE(label_in_topk(logits.data() + 5, 5, 2, 3));
  EXPECT_FALSE(label_in_topk(logits.data() + 5, 5, 5, 100));  // outside [0, classes)
  EXPECT_FALSE(label_in_topk(logits.data() + 5, 5, 0, 0));    // k <= 0
  EXPECT_TRUE(label_in_topk(logits.data() + 15, 5, 0, 1));    // NaN is the top
}

TEST(Progress, ThroughputSummary) {
  RunSummary r;
  r.global_batch = 128;
  r.step_seconds.assign(10, 0.1);
  r.peak_memory_bytes = 5.7 * 1024 * 1024 * 1024;
  std::string s = throughput_summary(r);
  EXPECT_EQ(s,
            "oxtrain: 1 node x 1 GPU, batch 128, 10 steps, 1280.0 img/s over 4 steps after 6 "
            "warm-up, mean step 0.100 s, peak memory 5.7 GiB");
  EXPECT_EQ(s.find("Epoch: "), std::string::npos);
  EXPECT_EQ(s.find('\n'), std::string::npos);

  RunSummary cpu;
  cpu.device = "CPU";
  cpu.global_batch = 32;
  cpu.step_seconds = {0.1, 0.1, 0.1};
  cpu.peak_memory_bytes = 512.0 * 1024 * 1024;
  EXPECT_EQ(throughput_summary(cpu),
            "oxtrain: 1 node x 1 CPU, batch 32, 3 steps, 320.0 img/s over all 3 steps, mean step "
            "0.100 s, peak memory 512.0 MiB");

  RunSummary multi;
  multi.nodes = 2;
  multi.devices_per_node = 8;
  multi.global_batch = 2048;
  multi.warmup_steps = 1;
  multi.step_seconds = {5.0, 0.2, 0.3};
  EXPECT_EQ(throughput_summary(multi),
            "oxtrain: 2 nodes x 8 GPUs, batch 2048, 3 steps, 8192.0 img/s over 2 steps after 1 "
            "warm-up, mean step 0.250 s");

  RunSummary none;
  none.global_batch = 1;
  EXPECT_EQ(throughput_summary(none), "oxtrain: 1 node x 1 GPU, batch 1, 0 steps, no timed steps");
}

TEST(Progress, DlperfExtractorReadsOurLog) {
  if (!have_python3()) GTEST_SKIP() << "python3 is not on PATH; scripts/extract_dlperf.py not run";
  ASSERT_TRUE(fs::exists(extract_script())) << extract_script();
  fs::path dir = fresh_dir();
  auto step_time = [](int64_t i) { return 0.1 + 0.001 * static_cast<double>(i % 7); };
  write_training_log(dir / "run1.log", 130, step_time);

  // Independently: lines with batch index i > 5 are i = 6..129; the 21st..120th of those are
  // i = 26..125. The log prints each time with 3 decimals, which these values already have.
  double sum = 0;
  for (int64_t i = 26; i <= 125; ++i) sum += std::round(step_time(i) * 1000) / 1000;
  double expected = 128.0 * 100.0 / sum;

  ScriptRun r = run_extractor("--batch-size-total 128 '" + (dir / "run1.log").string() + "'", dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["throughput"].get<double>(), expected, expected * 1e-12);
  EXPECT_NEAR(j["median"].get<double>(), expected, expected * 1e-12);
  ASSERT_EQ(j["runs"].size(), 1u);
  EXPECT_NEAR(j["runs"][0]["time_sum"].get<double>(), sum, 1e-9);
  EXPECT_EQ(j["runs"][0]["counted_lines"], 120);

  // Two more runs, twice and three times as slow: the median is the middle one; with two
  // runs, the mean of both (as DLPerf).
  write_training_log(dir / "run2.log", 130, [&](int64_t i) { return 2 * step_time(i); });
  write_training_log(dir / "run3.log", 130, [&](int64_t i) { return 3 * step_time(i); });
  r = run_extractor("--batch-size-total 128 '" + (dir / "run1.log").string() + "' '" +
                        (dir / "run3.log").string() + "' '" + (dir / "run2.log").string() + "'",
                    dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["median"].get<double>(), expected / 2, expected * 1e-9);
  EXPECT_EQ(j["runs"].size(), 3u);
  r = run_extractor("--batch-size-total 128 '" + (dir / "run1.log").string() + "' '" +
                        (dir / "run3.log").string() + "'",
                    dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(j["median"].get<double>(), (expected + expected / 3) / 2, expected * 1e-9);

  // 125 steps give only 119 counted lines: a clear error, not a number.
  write_training_log(dir / "short.log", 125, step_time);
  r = run_extractor("--batch-size-total 128 '" + (dir / "short.log").string() + "'", dir);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("only 119 progress lines"), std::string::npos) << r.err;
  // 126 steps are just enough.
  write_training_log(dir / "exact.log", 126, step_time);
  r = run_extractor("--batch-size-total 128 '" + (dir / "exact.log").string() + "'", dir);
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // A missing file is an error too.
  r = run_extractor("--batch-size-total 128 '" + (dir / "missing.log").string() + "'", dir);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("cannot read"), std::string::npos) << r.err;
}
