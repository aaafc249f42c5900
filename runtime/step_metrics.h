// Loss and top-1/top-5 hits of training steps, summed where the step ran (in device memory on
// a GPU) and read only when a progress line is printed, so a step never waits for the device
// to hand its logits to the host.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/session.h"

namespace oxtrain::runtime {

class StepMetrics {
 public:
  struct Sums {
    double loss = 0;  // sum over rows of the step's mean loss
    double top1 = 0, top5 = 0;  // rows whose label is the top class, or among the top 5
    int64_t rows = 0;
  };
  // `loss` is a scalar, `logits` [batch, classes], `labels` int64 [batch]: values of the
  // session's graph that outlive the step (graph outputs or inputs).
  StepMetrics(Session& session, const std::string& loss, const std::string& logits, const std::string& labels);
  ~StepMetrics();
  StepMetrics(const StepMetrics&) = delete;
  StepMetrics& operator=(const StepMetrics&) = delete;

  // Queues after the step: the first `rows` rows of the batch count (a short last batch is
  // padded). Adds to the running sums and replaces the last step's.
  void accumulate(int64_t rows);
  // These wait for the device.
  Sums last() const;
  Sums total() const;
  void reset_total();

 private:
  void add(double* sums, int64_t rows);
  Session& session_;
  const float* loss_;
  const float* logits_;
  const int64_t* labels_;
  int64_t batch_ = 0, classes_ = 0;
  double* sums_ = nullptr;  // device: last step's 3 sums, then the running 3
  int64_t last_rows_ = 0, total_rows_ = 0;
};

}  // namespace oxtrain::runtime
