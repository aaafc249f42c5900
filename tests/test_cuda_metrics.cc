// Loss and top-k accuracy accumulated on the device (runtime/cuda/metrics.h) against the CPU
// twin accumulate_metrics_cpu (runtime/math/metrics.h): batches with tied logits (the lower
// class index first), NaN logits (above every number), signed zeros, labels outside
// [0, classes), fewer than 5 classes, and sums that already hold values. The hit counts must
// match exactly. The loss sum may differ by the rounding of one fused multiply-add on the
// host (aarch64 contracts loss * batch + sum), so it is held to 1e-15 relative.
// Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "graph/zoo.h"
#include "runtime/device_runtime.h"
#include "runtime/math/metrics.h"
#include "tests/kernel_helpers.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/context.h"
#include "runtime/cuda/metrics.h"
#endif

using namespace oxtrain;
using runtime::MetricsArgs;

namespace {

struct Batch {
  int64_t batch = 0, classes = 0;
  std::vector<float> logits;
  std::vector<int64_t> labels;
  float loss = 0;
};

// Logits on a grid of eighths in [0, 2] (many ties), the label's logit 3 in every 4th row, a
// NaN in every 9th row, a -0.0/+0.0 pair in every 10th; labels in [0, classes) except every
// 13th row (-1) and every 17th (classes).
[[maybe_unused]] Batch make_batch(int64_t batch, int64_t classes, uint64_t seed) {
  Batch b;
  b.batch = batch;
  b.classes = classes;
  b.loss = 2.302585f + static_cast<float>(seed % 7);
  graph::Rng rng(seed);
  b.logits.resize(static_cast<size_t>(batch * classes));
  for (float& v : b.logits) v = std::round(static_cast<float>(rng.uniform()) * 16.0f) / 8.0f;
  for (int64_t r = 0; r < batch; ++r) {
    float* row = b.logits.data() + r * classes;
    int64_t label = static_cast<int64_t>(rng.uniform() * static_cast<double>(classes));
    if (r % 4 == 0) row[label] = 3.0f;  // above the grid: a top-1 hit unless a NaN is in the row
    if (r % 9 == 4) row[(r * 5) % classes] = std::numeric_limits<float>::quiet_NaN();
    if (r % 10 == 3 && classes >= 2) {
      row[0] = -0.0f;
      row[1] = 0.0f;
      label = 1;  // ties with class 0 at -0.0: class 0 comes first
    }
    if (r % 13 == 6) label = -1;
    if (r % 17 == 8) label = classes;
    b.labels.push_back(label);
  }
  return b;
}

}  // namespace

TEST(CudaMetrics, MatchesCpuTwin) {
  OXTRAIN_REQUIRE_GPU();
#ifdef OXTRAIN_HAVE_CUDA
  std::unique_ptr<runtime::DeviceRuntime> rt =
      runtime::DeviceRuntime::create(runtime::Device::cuda, runtime::Precision::fp32);
  cudaStream_t stream = rt->context().cuda->stream;
  struct Shape2 {
    int64_t batch, classes;
  };
  // Batches smaller and larger than the 32 warps; 1000 classes (31+ per lane); fewer than 5.
  const Shape2 shapes[] = {{257, 1000}, {1, 1}, {37, 3}, {128, 10}, {5, 5}, {33, 1001}};
  uint64_t seed = 1;
  for (const Shape2& s : shapes) {
    const Batch b = make_batch(s.batch, s.classes, seed++);
    const double start[3] = {1.25, 7, 11};  // sums hold earlier steps: the kernel adds
    // Device copies.
    const size_t logit_bytes = b.logits.size() * sizeof(float);
    const size_t label_bytes = b.labels.size() * sizeof(int64_t);
    auto* logits = static_cast<float*>(rt->allocate(static_cast<int64_t>(logit_bytes), "logits"));
    auto* labels = static_cast<int64_t*>(rt->allocate(static_cast<int64_t>(label_bytes), "labels"));
    auto* loss = static_cast<float*>(rt->allocate(sizeof(float), "loss"));
    auto* sums = static_cast<double*>(rt->allocate(3 * sizeof(double), "sums"));
    rt->copy_to_device(logits, b.logits.data(), logit_bytes);
    rt->copy_to_device(labels, b.labels.data(), label_bytes);
    rt->copy_to_device(loss, &b.loss, sizeof(float));
    rt->copy_to_device(sums, start, sizeof start);
    MetricsArgs dev{loss, logits, labels, b.batch, b.classes, sums};
    // Two steps: the second adds to the first.
    ASSERT_EQ(runtime::cuda::accumulate_metrics(dev, stream), cudaSuccess);
    ASSERT_EQ(runtime::cuda::accumulate_metrics(dev, stream), cudaSuccess);
    double got[3];
    rt->copy_to_host(got, sums, sizeof got);

    double want[3] = {start[0], start[1], start[2]};
    MetricsArgs host{&b.loss, b.logits.data(), b.labels.data(), b.batch, b.classes, want};
    runtime::accumulate_metrics_cpu(host);
    runtime::accumulate_metrics_cpu(host);
    const std::string what = std::to_string(s.batch) + " x " + std::to_string(s.classes);
    EXPECT_NEAR(got[0], want[0], 1e-15 * std::fabs(want[0])) << what;
    EXPECT_EQ(got[1], want[1]) << what;
    EXPECT_EQ(got[2], want[2]) << what;
    // Not a vacuous agreement: some rows hit, and (with 5 classes or more) some miss.
    EXPECT_GT(want[1], start[1]) << what;
    if (s.classes > 5) {
      EXPECT_LT(want[2] - start[2], 2.0 * static_cast<double>(s.batch)) << what;
    }
    rt->release(logits);
    rt->release(labels);
    rt->release(loss);
    rt->release(sums);
  }
#endif
}

TEST(CudaMetrics, RefusesBadArguments) {
  OXTRAIN_REQUIRE_GPU();
#ifdef OXTRAIN_HAVE_CUDA
  MetricsArgs a;  // null pointers
  a.batch = 4;
  a.classes = 10;
  EXPECT_EQ(runtime::cuda::accumulate_metrics(a, nullptr), cudaErrorInvalidValue);
  a.batch = -1;
  EXPECT_EQ(runtime::cuda::accumulate_metrics(a, nullptr), cudaErrorInvalidValue);
#endif
}
