#include "cli/progress.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "base/text.h"
#include "runtime/math/metrics.h"

namespace oxtrain::cli {

namespace {

struct Spec {
  int width = -1;      // -1: none
  int precision = -1;  // -1: the type's default (6, as Python and printf)
  char type = 'f';
};

// ":[width][.precision]type" (or "%..."); anything else is rejected rather than guessed.
Spec parse_spec(const std::string& s) {
  auto bad = [&](const char* why) {
    return std::invalid_argument("format spec '" + s + "': " + why +
                                 " (expected e.g. \":6.3f\" or \":.4e\")");
  };
  Spec spec;
  size_t i = 0;
  if (i < s.size() && (s[i] == ':' || s[i] == '%')) ++i;
  auto read_int = [&](int& out) {
    size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start) return false;
    if (i - start > 3) throw bad("number too large");
    out = static_cast<int>(*parse_int64(std::string_view(s).substr(start, i - start)));  // <= 3 digits
    return true;
  };
  if (i < s.size() && s[i] == '0') throw bad("zero padding is not supported");
  read_int(spec.width);
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (!read_int(spec.precision)) throw bad("missing precision after '.'");
  }
  if (i + 1 != s.size()) throw bad("unsupported spec");
  char t = s[i];
  if (t != 'f' && t != 'F' && t != 'e' && t != 'E' && t != 'g' && t != 'G')
    throw bad("type must be one of f F e E g G");
  spec.type = t;
  return spec;
}

std::string pad_left(std::string text, int width) {
  if (width > 0 && static_cast<int>(text.size()) < width)
    text.insert(0, static_cast<size_t>(width) - text.size(), ' ');
  return text;
}

std::string format_with(const Spec& spec, double value) {
  if (std::isnan(value)) {
    // glibc may print "-nan"; Python always prints "nan" ("NAN" for upper-case types).
    bool upper = spec.type == 'F' || spec.type == 'E' || spec.type == 'G';
    return pad_left(upper ? "NAN" : "nan", spec.width);
  }
  std::string fmt = "%";
  if (spec.width >= 0) fmt += std::to_string(spec.width);
  if (spec.precision >= 0) {
    fmt += '.';
    fmt += std::to_string(spec.precision);
  }
  fmt += spec.type;
  int n = std::snprintf(nullptr, 0, fmt.c_str(), value);
  std::string out(static_cast<size_t>(n), '\0');
  std::snprintf(out.data(), out.size() + 1, fmt.c_str(), value);
  return out;
}

std::string printf_string(const char* fmt, double a, double b) {
  int n = std::snprintf(nullptr, 0, fmt, a, b);
  std::string out(static_cast<size_t>(n), '\0');
  std::snprintf(out.data(), out.size() + 1, fmt, a, b);
  return out;
}

std::string plural(int64_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

}  // namespace

std::string format_number(const std::string& python_spec, double value) {
  return format_with(parse_spec(python_spec), value);
}

AverageMeter::AverageMeter(std::string name, std::string fmt)
    : name_(std::move(name)), fmt_(std::move(fmt)) {
  parse_spec(fmt_);  // fail at construction, not at the first progress line
}

void AverageMeter::reset() {
  val_ = avg_ = sum_ = 0;
  count_ = 0;
}

void AverageMeter::set(double val, double sum, int64_t count) {
  val_ = val;
  sum_ = sum;
  count_ = count;
  avg_ = count > 0 ? sum / static_cast<double>(count) : 0;
}

void AverageMeter::update(double val, int64_t n) {
  val_ = val;
  sum_ += val * static_cast<double>(n);
  count_ += n;
  avg_ = sum_ / static_cast<double>(count_);  // n = 0 first: 0/0 = nan, as Python would fail
}

std::string AverageMeter::str() const {
  Spec spec = parse_spec(fmt_);
  return name_ + " " + format_with(spec, val_) + " (" + format_with(spec, avg_) + ")";
}

ProgressMeter::ProgressMeter(int64_t num_batches, std::vector<const AverageMeter*> meters,
                             std::string prefix)
    : num_batches_(num_batches),
      num_digits_(static_cast<int>(std::to_string(num_batches).size())),
      meters_(std::move(meters)),
      prefix_(std::move(prefix)) {
  for (const auto* m : meters_)
    if (!m) throw std::invalid_argument("ProgressMeter: null meter");
}

std::string ProgressMeter::batch_field(int64_t batch) const {
  // '[' + '{:Nd}' + '/' + '{:Nd}'.format(num_batches) + ']'
  char buf[64];
  std::snprintf(buf, sizeof buf, "[%*lld/%*lld]", num_digits_, static_cast<long long>(batch),
                num_digits_, static_cast<long long>(num_batches_));
  return buf;
}

std::string ProgressMeter::line(int64_t batch) const {
  std::string out = prefix_ + batch_field(batch);
  for (const auto* m : meters_) {
    out += '\t';
    out += m->str();
  }
  return out;
}

std::string epoch_prefix(int64_t epoch) { return "Epoch: [" + std::to_string(epoch) + "]"; }

std::string test_summary(double top1, double top5) {
  return printf_string(" * Acc@1 %.3f Acc@5 %.3f", top1, top5);
}

std::vector<double> accuracy_topk(const float* logits, const int64_t* labels, int64_t batch,
                                  int64_t classes, const std::vector<int>& ks) {
  if (batch <= 0 || classes <= 0)
    throw std::invalid_argument("accuracy_topk: batch (" + std::to_string(batch) +
                                ") and classes (" + std::to_string(classes) +
                                ") must be positive");
  // The per-row test is the one the device metrics run (runtime/math/metrics.h).
  std::vector<int64_t> hits(ks.size(), 0);
  for (int64_t r = 0; r < batch; ++r)
    for (size_t i = 0; i < ks.size(); ++i)
      if (runtime::math::label_in_topk(logits + r * classes, classes, labels[r], ks[i])) ++hits[i];
  std::vector<double> out(ks.size());
  for (size_t i = 0; i < ks.size(); ++i)
    out[i] = static_cast<double>(hits[i]) * (100.0 / static_cast<double>(batch));
  return out;
}

std::string throughput_summary(const RunSummary& run) {
  std::string s = "oxtrain: " + plural(run.nodes, "node") + " x " +
                  plural(run.devices_per_node, run.device) + ", batch " +
                  std::to_string(run.global_batch) + ", " +
                  plural(static_cast<int64_t>(run.step_seconds.size()), "step");
  const auto total = static_cast<int64_t>(run.step_seconds.size());
  if (total == 0) {
    s += ", no timed steps";
  } else {
    int64_t skip = run.warmup_steps > 0 && total > run.warmup_steps ? run.warmup_steps : 0;
    double seconds = 0;
    for (int64_t i = skip; i < total; ++i) seconds += run.step_seconds[static_cast<size_t>(i)];
    int64_t measured = total - skip;
    char buf[160];
    double rate = seconds > 0 ? static_cast<double>(run.global_batch * measured) / seconds : 0;
    if (skip > 0)
      std::snprintf(buf, sizeof buf, ", %.1f img/s over %lld steps after %lld warm-up", rate,
                    static_cast<long long>(measured), static_cast<long long>(skip));
    else
      std::snprintf(buf, sizeof buf, ", %.1f img/s over all %s", rate,
                    plural(measured, "step").c_str());
    s += buf;
    std::snprintf(buf, sizeof buf, ", mean step %.3f s", seconds / static_cast<double>(measured));
    s += buf;
  }
  if (run.peak_memory_bytes >= 0) {
    constexpr double kMiB = 1024.0 * 1024.0, kGiB = kMiB * 1024.0;
    char buf[64];
    if (run.peak_memory_bytes >= kGiB)
      std::snprintf(buf, sizeof buf, ", peak memory %.1f GiB", run.peak_memory_bytes / kGiB);
    else
      std::snprintf(buf, sizeof buf, ", peak memory %.1f MiB", run.peak_memory_bytes / kMiB);
    s += buf;
  }
  return s;
}

}  // namespace oxtrain::cli
