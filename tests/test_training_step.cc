// A whole training step (forward, loss, backward, Momentum) of a small ResNet on the CPU
// runtime: float32 agrees with the same step in float64 to float32 rounding, and repeated
// runs are bit-identical.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "graph/zoo.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

const std::string kModel = std::string(OXTRAIN_FIXTURES) + "/ts_train_op17_bottleneck.onnx";
const std::string kImages = std::string(OXTRAIN_FIXTURES) + "/ts_train_op17_input.pb";

struct Trainer {
  autodiff::TrainingGraph tg;
  std::unique_ptr<runtime::Session> session;
  std::vector<std::pair<std::string, std::string>> updates;  // (state, new value)
};

// The PyTorch-exported Bottleneck fixture, or (fixture = false) the zoo's resnet18 at 64x64
// with batch 4 and 10 classes: its last stage still sees 2x2 pixels, so every BatchNorm
// averages at least 16 values and float32 rounding stays at rounding level.
Graph model(bool fixture) {
  if (fixture) return import_onnx(kModel);
  return test::zoo_at_batch("resnet18", 4, 64, 10, 3);
}

Trainer make_trainer(DType dtype, bool fixture = true, bool profile = false) {
  Graph g = model(fixture);
  if (dtype == DType::f64) convert_float_dtype(g, DType::f64);
  autodiff::TrainingOptions o;
  o.momentum = 0.9;
  o.weight_decay = 1e-4;
  Trainer t{autodiff::build_training_graph(std::move(g), o), nullptr, {}};
  for (const auto& [s, n] : t.tg.graph.updates) t.updates.push_back({s->name, n->name});
  runtime::SessionOptions so;
  so.profile = profile;
  for (const auto& [v, d] : t.tg.gradients) so.gradients.push_back(d);
  Graph copy_source = std::move(t.tg.graph);
  t.session = std::make_unique<runtime::Session>(std::move(copy_source), so);
  return t;
}

void step(Trainer& t, DType dtype, int64_t index, bool fixture = true) {
  Tensor images = fixture ? read_tensor_file(kImages) : test::random_tensor(DType::f32, {4, 3, 64, 64}, 17);
  if (dtype == DType::f64) {
    Tensor d(DType::f64, images.shape);
    for (int64_t i = 0; i < images.numel(); ++i) d.data<double>()[i] = images.data<float>()[i];
    images = d;
  }
  t.session->feed("input", images);
  t.session->feed(t.tg.labels, fixture ? Tensor::from_int64({3, 7}, {2})
                                        : Tensor::from_int64({3, 7, 0, 9}, {4}));
  t.session->feed(t.tg.learning_rate, Tensor::from_float({0.1f}, {}));
  t.session->feed(t.tg.step, Tensor::from_int64({index}, {}));
  t.session->run();
}

}  // namespace

TEST(TrainingStep, Float32MatchesFloat64) {
  Trainer f32 = make_trainer(DType::f32, false);
  Trainer f64 = make_trainer(DType::f64, false);
  // One step. (Later steps drift apart legitimately: four images are fitted within a few
  // steps, and the gradients of nearly fitted examples are differences of probabilities
  // close to 1, which float32 cannot resolve.)
  step(f32, DType::f32, 0, false);
  step(f64, DType::f64, 0, false);
  double loss32 = test::element(f32.session->fetch(f32.tg.loss), 0);
  double loss64 = test::element(f64.session->fetch(f64.tg.loss), 0);
  EXPECT_NEAR(loss32, loss64, 1e-6 * std::fabs(loss64));
  EXPECT_GT(loss64, 1.5);  // ten classes: about log(10) before training
  // Every parameter, momentum buffer and BN running statistic after the step.
  int compared = 0;
  double worst = 0;
  for (const auto& [state, next] : f32.updates) {
    double err = test::max_relative_difference(f32.session->fetch(state), f64.session->fetch(state));
    EXPECT_LT(err, 2e-5) << state;
    worst = std::max(worst, err);
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(f64.updates.size()));
  EXPECT_GT(compared, 40);
  std::printf("worst relative error float32 vs float64: %.3g over %d tensors\n", worst, compared);
}

TEST(TrainingStep, ParametersMoveAgainstTheGradient) {
  Trainer t = make_trainer(DType::f64);
  Tensor before = t.session->fetch("fc.weight");
  step(t, DType::f64, 0);
  Tensor after = t.session->fetch("fc.weight");
  // First step: momentum buffer = g + wd * w, and w_new = w - lr * buffer.
  Tensor buffer = t.session->fetch("momentum/fc.weight");
  for (int64_t i = 0; i < before.numel(); ++i)
    ASSERT_NEAR(after.data<double>()[i],
                before.data<double>()[i] - static_cast<double>(0.1f) * buffer.data<double>()[i], 1e-15);
  double change = test::max_relative_difference(after, before);
  EXPECT_GT(change, 1e-4);
}

TEST(TrainingStep, RepeatedRunsAreBitIdentical) {
  Trainer a = make_trainer(DType::f32);
  Trainer b = make_trainer(DType::f32);
  for (int64_t s = 0; s < 3; ++s) {
    step(a, DType::f32, s);
    step(b, DType::f32, s);
  }
  for (const auto& [state, next] : a.updates)
    EXPECT_EQ(a.session->fetch(state).bytes, b.session->fetch(state).bytes) << state;
  EXPECT_EQ(a.session->fetch(a.tg.loss).bytes, b.session->fetch(b.tg.loss).bytes);
}

// SessionOptions::profile times every node and changes nothing else.
TEST(TrainingStep, ProfileTimesEveryNodeWithoutChangingResults) {
  Trainer plain = make_trainer(DType::f32);
  Trainer timed = make_trainer(DType::f32, true, true);
  EXPECT_TRUE(plain.session->node_seconds().empty());
  step(plain, DType::f32, 0);
  step(timed, DType::f32, 0);
  const auto& nodes = timed.session->graph().nodes();
  std::vector<double> first = timed.session->node_seconds();
  ASSERT_EQ(first.size(), nodes.size());
  double conv = 0, total = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    EXPECT_GE(first[i], 0.0) << nodes[i]->name;
    total += first[i];
    if (nodes[i]->op_type == "Conv") conv += first[i];
  }
  EXPECT_GT(conv, 0.0);
  EXPECT_LE(conv, total);
  step(timed, DType::f32, 1);
  step(plain, DType::f32, 1);
  const auto& second = timed.session->node_seconds();
  for (size_t i = 0; i < nodes.size(); ++i) EXPECT_GE(second[i], first[i]) << nodes[i]->name;  // summed
  for (const auto& [state, next] : plain.updates)
    EXPECT_EQ(plain.session->fetch(state).bytes, timed.session->fetch(state).bytes) << state;
}
