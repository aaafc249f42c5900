// Training metrics of a batch: the loss times the batch size and the top-1 and top-5 hit
// counts, as PyTorch's examples/imagenet/main.py accumulates them (cli/progress.h). The
// per-row top-k test is shared by cli/progress.cc's accuracy_topk, the CUDA metrics
// (runtime/cuda/metrics.h) and their CPU twin here, accumulate_metrics_cpu.
//
// Top-k order is torch.topk's on the CPU: value descending, then class index ascending among
// equal values (a tie at the k-th place counts for the lower index only); NaN ranks above
// every number; +0.0 and -0.0 are equal. A label outside [0, classes) (an ignore index) never
// hits; k larger than classes counts as classes; k <= 0 never hits.
#pragma once

#include <cstdint>

#include "runtime/math/hd.h"

namespace oxtrain::runtime {

// Where accumulate_metrics (device pointers) and accumulate_metrics_cpu (host pointers) read
// and add. sums[0] += loss * batch, sums[1] += rows whose label is the top-1 class,
// sums[2] += rows whose label is among the top 5.
struct MetricsArgs {
  const float* loss = nullptr;     // the step's mean loss (a scalar)
  const float* logits = nullptr;   // batch x classes, row-major
  const int64_t* labels = nullptr;  // batch class indices
  int64_t batch = 0, classes = 0;
  double* sums = nullptr;  // 3 values, added to (+=)
};

namespace math {

OXTRAIN_HD bool is_nan(float v) { return v != v; }

// a comes before b in torch.topk's order: NaN above every number, then the larger value.
OXTRAIN_HD bool ranks_above(float a, float b) {
  const bool na = is_nan(a), nb = is_nan(b);
  if (na || nb) return na && !nb;
  return a > b;
}
OXTRAIN_HD bool ranks_equal(float a, float b) {
  const bool na = is_nan(a), nb = is_nan(b);
  if (na || nb) return na && nb;
  return a == b;
}

// Whether class j (logit value_j) comes before the label (logit label_value) in its row.
OXTRAIN_HD bool comes_before_label(float value_j, int64_t j, float label_value, int64_t label) {
  return ranks_above(value_j, label_value) || (j < label && ranks_equal(value_j, label_value));
}

OXTRAIN_HD bool label_in_range(int64_t label, int64_t classes) {
  return label >= 0 && label < classes;
}

// How many of the classes first, first + step, ... < classes come before a label in
// [0, classes). Summed over a split of the row (a CUDA warp's lanes), it is the label's rank
// (0 = the top); the CPU counts the whole row (first 0, step 1).
OXTRAIN_HD int64_t classes_before_label(const float* row, int64_t classes, int64_t label,
                                        int64_t first, int64_t step) {
  const float label_value = row[label];
  int64_t before = 0;
  for (int64_t j = first; j < classes; j += step)
    before += comes_before_label(row[j], j, label_value, label) ? 1 : 0;
  return before;
}

// Whether a label with the given rank is among the k first.
OXTRAIN_HD bool rank_within_topk(int64_t rank, int64_t k) { return rank < k; }

// Whether the row's label is among its k highest logits.
OXTRAIN_HD bool label_in_topk(const float* row, int64_t classes, int64_t label, int64_t k) {
  return label_in_range(label, classes) &&
         rank_within_topk(classes_before_label(row, classes, label, 0, 1), k);
}

}  // namespace math

// The CPU twin of accumulate_metrics (runtime/cuda/metrics.h), on host pointers.
inline void accumulate_metrics_cpu(const MetricsArgs& a) {
  int64_t top1 = 0, top5 = 0;
  for (int64_t r = 0; r < a.batch; ++r) {
    const float* row = a.logits + r * a.classes;
    top1 += math::label_in_topk(row, a.classes, a.labels[r], 1) ? 1 : 0;
    top5 += math::label_in_topk(row, a.classes, a.labels[r], 5) ? 1 : 0;
  }
  a.sums[0] += static_cast<double>(a.loss[0]) * static_cast<double>(a.batch);
  a.sums[1] += static_cast<double>(top1);
  a.sums[2] += static_cast<double>(top5);
}

}  // namespace oxtrain::runtime
