#include "runtime/step_metrics.h"

#include "runtime/math/metrics.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/context.h"
#include "runtime/cuda/metrics.h"
#endif

namespace oxtrain::runtime {

StepMetrics::StepMetrics(Session& session, const std::string& loss, const std::string& logits,
                         const std::string& labels)
    : session_(session) {
  const graph::Graph& g = session.graph();
  const graph::Value* lv = g.value(loss);
  const graph::Value* xv = g.value(logits);
  const graph::Value* yv = g.value(labels);
  if (lv->dtype != graph::DType::f32 || lv->numel() != 1 || xv->dtype != graph::DType::f32 ||
      xv->shape.size() != 2 || yv->dtype != graph::DType::i64 || yv->shape.size() != 1 ||
      yv->shape[0] != xv->shape[0])
    throw Error("step metrics need a float32 scalar loss, float32 logits [batch, classes] and int64 labels "
                "[batch]; got loss " + lv->shape_string() + ", logits " + xv->shape_string() + ", labels " +
                yv->shape_string());
  loss_ = static_cast<const float*>(session.device_address(loss));
  logits_ = static_cast<const float*>(session.device_address(logits));
  labels_ = static_cast<const int64_t*>(session.device_address(labels));
  batch_ = xv->shape[0];
  classes_ = xv->shape[1];
  sums_ = static_cast<double*>(session.device().allocate(6 * sizeof(double), "the step metrics"));
}

StepMetrics::~StepMetrics() { session_.device().release(sums_); }

void StepMetrics::add(double* sums, int64_t rows) {
  MetricsArgs a;
  a.loss = loss_;
  a.logits = logits_;
  a.labels = labels_;
  a.batch = rows;
  a.classes = classes_;
  a.sums = sums;
  DeviceRuntime& device = session_.device();
  if (device.device() == Device::cpu) {
    accumulate_metrics_cpu(a);
    return;
  }
#ifdef OXTRAIN_HAVE_CUDA
  cuda::check(cuda::accumulate_metrics(a, device.context().cuda->stream), "accumulate_metrics", "step metrics");
#endif
}

void StepMetrics::accumulate(int64_t rows) {
  if (rows < 0 || rows > batch_)
    throw Error("step metrics: " + std::to_string(rows) + " rows of a batch of " + std::to_string(batch_));
  session_.device().zero(sums_, 3 * sizeof(double));
  add(sums_, rows);
  add(sums_ + 3, rows);
  last_rows_ = rows;
  total_rows_ += rows;
}

StepMetrics::Sums StepMetrics::last() const {
  double host[3];
  session_.device().copy_to_host(host, sums_, sizeof host);
  return {host[0], host[1], host[2], last_rows_};
}

StepMetrics::Sums StepMetrics::total() const {
  double host[3];
  session_.device().copy_to_host(host, sums_ + 3, sizeof host);
  return {host[0], host[1], host[2], total_rows_};
}

void StepMetrics::reset_total() {
  session_.device().zero(sums_ + 3, 3 * sizeof(double));
  total_rows_ = 0;
}

}  // namespace oxtrain::runtime
