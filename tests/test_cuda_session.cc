// The CUDA runtime as a whole, on a small ResNet's training step: strict fp32 against the CPU
// runtime, CUDA-graph replay against eager execution, and steps that neither allocate nor wait
// for the device. Skipped, with one message, where no GPU is at hand.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

// resnet18 at 64x64, batch 4, 10 classes: every kind of node ResNet-50 has (its last stage
// still sees 2x2 pixels, so batch statistics average 16 values and rounding stays small).
struct Trainer {
  autodiff::TrainingGraph tg;
  std::unique_ptr<runtime::Session> session;
};

Trainer make_trainer(runtime::Device device, bool cuda_graph, runtime::Precision precision = runtime::Precision::fp32) {
  Trainer t{autodiff::build_training_graph(test::zoo_at_batch("resnet18", 4, 64, 10, 3)), nullptr};
  runtime::SessionOptions so;
  so.device = device;
  so.precision = precision;
  so.cuda_graph = cuda_graph;
  for (const auto& [v, d] : t.tg.gradients) so.gradients.push_back(d);
  Graph copy = copy_graph(t.tg.graph);
  t.session = std::make_unique<runtime::Session>(std::move(copy), so);
  return t;
}

void feed_step(Trainer& t, int64_t index) {
  t.session->feed("input", test::random_tensor(DType::f32, {4, 3, 64, 64}, 100 + static_cast<uint64_t>(index)));
  t.session->feed(t.tg.labels, Tensor::from_int64({3, 7, 0, 9}, {4}));
  t.session->feed(t.tg.learning_rate, Tensor::from_float({0.1f}, {}));
  t.session->feed(t.tg.step, Tensor::from_int64({index}, {}));
}

std::vector<std::string> updated_values(const Trainer& t) {
  std::vector<std::string> out;
  for (const auto& [state, next] : t.session->graph().updates) out.push_back(state->name);
  return out;
}

}  // namespace

// Strict fp32 on both sides: the GPU sums in other orders than the CPU, so values agree to
// float32 rounding amplified by one step's backward pass (1e-4 relative to each tensor's
// largest value; batch-norm's division by the batch standard deviation is the largest
// amplifier).
TEST(CudaSession, OneResNetStepMatchesTheCpuInStrictFp32) {
  OXTRAIN_REQUIRE_GPU();
  Trainer cpu = make_trainer(runtime::Device::cpu, false);
  Trainer gpu = make_trainer(runtime::Device::cuda, false);
  feed_step(cpu, 0);
  feed_step(gpu, 0);
  cpu.session->run();
  gpu.session->run();
  EXPECT_LE(test::max_relative_difference(gpu.session->fetch(gpu.tg.loss), cpu.session->fetch(cpu.tg.loss)), 1e-5);
  for (const std::string& name : updated_values(cpu)) {
    double d = test::max_relative_difference(gpu.session->fetch(name), cpu.session->fetch(name));
    EXPECT_LE(d, 1e-4) << name;
  }
}

// Replaying the captured step computes exactly what running the kernels one by one computes:
// the same kernels, plans and buffers (cuDNN plans are shared through the plan cache).
TEST(CudaSession, GraphReplayIsBitIdenticalToEagerExecution) {
  OXTRAIN_REQUIRE_GPU();
  Trainer eager = make_trainer(runtime::Device::cuda, false);
  Trainer replay = make_trainer(runtime::Device::cuda, true);
  for (int64_t step = 0; step < 4; ++step) {
    feed_step(eager, step);
    feed_step(replay, step);
    eager.session->run();
    replay.session->run();
  }
  EXPECT_FALSE(eager.session->replaying_graph());
  EXPECT_TRUE(replay.session->replaying_graph());
  for (const std::string& name : updated_values(eager)) {
    Tensor a = eager.session->fetch(name), b = replay.session->fetch(name);
    EXPECT_EQ(a.bytes, b.bytes) << name << " differs after 4 steps";
  }
}

// A value fed since the last step is fetched as fed, on the GPU as on the CPU (it still waits
// in its staging buffer there), and the step then reads the same images.
TEST(CudaSession, FetchAfterFeedGivesTheFedValue) {
  OXTRAIN_REQUIRE_GPU();
  Trainer t = make_trainer(runtime::Device::cuda, true);
  feed_step(t, 0);
  t.session->run();
  feed_step(t, 1);
  const Tensor fed = test::random_tensor(DType::f32, {4, 3, 64, 64}, 101);
  EXPECT_EQ(t.session->fetch("input").bytes, fed.bytes);
  t.session->run();
  EXPECT_EQ(t.session->fetch("input").bytes, fed.bytes);
}

// After warm-up (one eager step, one captured), a step allocates nothing and never waits for
// the device on the host; fetching a value afterwards does wait, and is counted.
TEST(CudaSession, StepsNeitherAllocateNorWaitForTheDevice) {
  OXTRAIN_REQUIRE_GPU();
  Trainer t = make_trainer(runtime::Device::cuda, true);
  for (int64_t step = 0; step < 2; ++step) {
    feed_step(t, step);
    t.session->run();
  }
  ASSERT_TRUE(t.session->replaying_graph());
  const runtime::DeviceCounters& c = t.session->device().counters();
  int64_t allocations = c.allocations;
  for (int64_t step = 2; step < 6; ++step) {
    feed_step(t, step);
    int64_t syncs = c.synchronizations;
    t.session->run();
    EXPECT_EQ(c.synchronizations, syncs) << "step " << step << " waited for the device";
  }
  EXPECT_EQ(c.allocations, allocations) << "steps allocated device or pinned memory";
  int64_t syncs = c.synchronizations;
  Tensor loss = t.session->fetch(t.tg.loss);
  EXPECT_GT(c.synchronizations, syncs);
  EXPECT_TRUE(std::isfinite(loss.data<float>()[0]));
}

// More than the GPU holds: refused before anything is allocated, with what the plan needs,
// what is free and a batch that fits.
TEST(CudaSession, OutOfMemorySaysWhatFits) {
  OXTRAIN_REQUIRE_GPU();
  ZooOptions zo;
  Graph g = make_zoo_model("resnet50", zo);
  ImportOptions io;
  io.batch_size = 16384;
  prepare(g, io);
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g));
  runtime::SessionOptions so;
  so.device = runtime::Device::cuda;
  try {
    runtime::Session s(std::move(tg.graph), so);
    FAIL() << "a ResNet-50 step at batch 16384 should not fit on one GPU";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("out of GPU memory"), std::string::npos) << m;
    EXPECT_NE(m.find("free of"), std::string::npos) << m;
    EXPECT_NE(m.find("lower --batch-size ("), std::string::npos) << m;
  }
}
