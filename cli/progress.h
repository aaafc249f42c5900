// Progress lines of `oxtrain train`, printed exactly as PyTorch's examples/imagenet/main.py
// (the 2019/2020 version driven by the DLPerf benchmark suite) prints them, so log parsers
// written for that script (DLPerf's extractor, scripts/extract_dlperf.py) read oxtrain logs
// unchanged:
//
//   Epoch: [0][ 5/53]\tTime  0.362 ( 2.620)\tData  0.106 ( 0.075)\tLoss 1.4081e+01 (3.0098e+01)\t
//   Acc@1   1.56 (  1.95)\tAcc@5  14.06 ( 10.42)            (one line; wrapped here)
//   Test: [ 0/40]\tTime  0.201 ( 0.201)\tLoss 6.9064e+00 (6.9064e+00)\tAcc@1   0.00 (  0.00)\t...
//    * Acc@1 0.100 Acc@5 0.500
//
// The training loop of main.py, for reference:
//   batch_time = AverageMeter('Time', ':6.3f'); data_time = AverageMeter('Data', ':6.3f')
//   losses = AverageMeter('Loss', ':.4e'); top1 = AverageMeter('Acc@1', ':6.2f')
//   top5 = AverageMeter('Acc@5', ':6.2f')
//   progress = ProgressMeter(len(train_loader), [batch_time, data_time, losses, top1, top5],
//                            prefix="Epoch: [{}]".format(epoch))
//   ... if i % args.print_freq == 0: progress.display(i)     # i: 0-based batch index
// and validation: ProgressMeter(len(val_loader), [batch_time, losses, top1, top5],
// prefix='Test: '), the same display(i) rule, then test_summary(top1.avg, top5.avg).
//
// Nothing here prints: line()/str() return text without the newline; the caller writes it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace oxtrain::cli {

// Formats one number with a Python format spec of the forms main.py uses: ":6.3f", ":.4e",
// ":6.2f"; generally ":[width][.precision]type" with type one of f F e E g G (a leading '%'
// instead of ':' is accepted too). Output equals Python's str.format for finite values (both
// round half-even on the exact binary value, as snprintf does); NaN prints as "nan" (never
// "-nan", as Python), infinities as "inf"/"-inf", padded to the width. Throws
// std::invalid_argument for any other spec (fill, alignment, sign, grouping, no type).
std::string format_number(const std::string& python_spec, double value);

// main.py's AverageMeter: the latest value and the running mean weighted by n (the batch
// size): update(val, n) sets val, adds val * n to the sum and n to the count. str() is
// '{name} {val<fmt>} ({avg<fmt>})', e.g. "Time  0.362 ( 2.620)". Before any update val and
// avg are 0, as in Python.
class AverageMeter {
 public:
  // fmt: a Python spec as in main.py (":6.3f"); checked here, so str() never throws.
  AverageMeter(std::string name, std::string fmt = ":f");

  void reset();
  void update(double val, int64_t n = 1);
  // Sums kept elsewhere (on the device): the last value, the sum and the count so far.
  void set(double val, double sum, int64_t count);

  const std::string& name() const { return name_; }
  const std::string& fmt() const { return fmt_; }
  double val() const { return val_; }
  double avg() const { return avg_; }
  double sum() const { return sum_; }
  int64_t count() const { return count_; }
  std::string str() const;

 private:
  std::string name_, fmt_;
  double val_ = 0, avg_ = 0, sum_ = 0;
  int64_t count_ = 0;
};

// main.py's ProgressMeter. It reads the meters at line() time, like the Python object holding
// references: the meters must outlive it (they are not copied).
class ProgressMeter {
 public:
  ProgressMeter(int64_t num_batches, std::vector<const AverageMeter*> meters,
                std::string prefix = "");

  // prefix + "[{batch:Nd}/{num_batches}]" then each meter's str(), joined by '\t', where N
  // is the number of characters of num_batches ("[  5/100]"). No trailing newline.
  std::string line(int64_t batch) const;
  // The bracket part alone, e.g. "[ 5/53]".
  std::string batch_field(int64_t batch) const;

  int64_t num_batches() const { return num_batches_; }
  const std::string& prefix() const { return prefix_; }

 private:
  int64_t num_batches_;
  int num_digits_;
  std::vector<const AverageMeter*> meters_;
  std::string prefix_;
};

// "Epoch: [3]": the training prefix.
std::string epoch_prefix(int64_t epoch);
// "Test: ": the validation prefix.
inline constexpr const char* kTestPrefix = "Test: ";
// " * Acc@1 76.130 Acc@5 92.862": printed after validation, with the meters' averages.
std::string test_summary(double top1, double top5);

// main.py's accuracy(output, target, topk): for each k in ks, the percentage of rows whose
// label is among the k highest logits, computed as hits * (100.0 / batch).
// logits: batch x classes, row-major; labels: batch class indices.
// Order (what torch.topk picks on CPU): value descending, then class index ascending among
// equal values (so a tie at the k-th place counts for the lower index only); NaN ranks above
// every number (torch sorts NaN as the largest). +0.0 and -0.0 are equal. The per-row test is
// runtime/math/metrics.h's label_in_topk, which the device metrics share.
// Where main.py would fail, this does not: k larger than classes counts as classes (every
// valid label hits), k <= 0 gives 0, and a label outside [0, classes) never hits (e.g. an
// ignore index). Throws std::invalid_argument when batch <= 0 or classes <= 0.
std::vector<double> accuracy_topk(const float* logits, const int64_t* labels, int64_t batch,
                                  int64_t classes, const std::vector<int>& ks);

// oxtrain's own one-line summary after training; it never contains "Epoch: " (DLPerf's
// extractor keeps only lines that do), and starts with "oxtrain: ".
struct RunSummary {
  int64_t nodes = 1;
  int64_t devices_per_node = 1;
  std::string device = "GPU";         // "GPU" or "CPU" (any word: pluralised with 's')
  int64_t global_batch = 0;           // images per step over all devices
  std::vector<double> step_seconds;   // wall time of every training step, in order
  // Steps left out of img/s and the mean step time. 6 = the steps DLPerf's extractor drops
  // (batch index 0..5); when there are no more steps than this, all steps are used.
  int64_t warmup_steps = 6;
  double peak_memory_bytes = -1;      // < 0: unknown, left out of the line
};

// e.g. "oxtrain: 1 node x 1 GPU, batch 128, 130 steps, 1234.5 img/s over 124 steps after 6
// warm-up, mean step 0.104 s, peak memory 5.7 GiB". With too few steps: "... 3 steps,
// 950.0 img/s over all 3 steps, ..."; with no steps: "... 0 steps, no timed steps".
// Peak memory below 1 GiB is given in MiB.
std::string throughput_summary(const RunSummary& run);

}  // namespace oxtrain::cli
