// The batch-norm fusions (autodiff/fusion.h): which nodes they replace in a ResNet, and that a
// fused training graph computes the unfused graph's numbers bit for bit, in float32 and in
// mixed precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

Graph resnet(const std::string& arch, int64_t batch, int64_t image) { return test::zoo_at_batch(arch, batch, image, 10, 5); }

std::map<std::string, int> op_counts(const Graph& g) {
  std::map<std::string, int> c;
  for (const auto& n : g.nodes()) ++c[n->op_type];
  return c;
}

struct Trained {
  autodiff::TrainingGraph tg;
  std::unique_ptr<runtime::Session> session;
  std::vector<std::string> states;
};

Trained make_run(const std::string& arch, bool fuse, DType half) {
  autodiff::TrainingOptions o;
  o.fuse_batchnorm_relu = fuse;
  o.half = half;
  Trained r{autodiff::build_training_graph(resnet(arch, 4, 32), o), nullptr, {}};
  for (const auto& [state, next] : r.tg.graph.updates) r.states.push_back(state->name);
  std::sort(r.states.begin(), r.states.end());  // backward finishes gradients in another order
  runtime::SessionOptions so;
  for (const auto& [v, d] : r.tg.gradients) so.gradients.push_back(d);
  Graph g = std::move(r.tg.graph);
  r.session = std::make_unique<runtime::Session>(std::move(g), so);
  return r;
}

void step(Trained& r, int64_t index) {
  r.session->feed("input", test::random_tensor(DType::f32, {4, 3, 32, 32}, 100 + static_cast<uint64_t>(index)));
  r.session->feed(r.tg.labels, Tensor::from_int64({1, 4, 9, 0}, {4}));
  r.session->feed(r.tg.learning_rate, Tensor::from_float({0.05f}, {}));
  r.session->feed(r.tg.step, Tensor::from_int64({index}, {}));
  r.session->run();
}

}  // namespace

TEST(Fusion, ResNetBlocksBecomeOneNodeEach) {
  autodiff::TrainingOptions o;
  o.fuse_batchnorm_relu = true;
  const std::map<std::string, int> plain = op_counts(autodiff::build_training_graph(resnet("resnet18", 2, 32)).graph);
  const std::map<std::string, int> fused = op_counts(autodiff::build_training_graph(resnet("resnet18", 2, 32), o).graph);
  // resnet18: the stem's bn1 + relu, and in each of 8 basic blocks bn1 + relu and bn2 + add + relu.
  EXPECT_EQ(plain.at("BatchNormTraining"), 20);
  EXPECT_EQ(plain.at("Relu"), 17);
  EXPECT_EQ(fused.at("BatchNormReluTraining"), 17);
  EXPECT_EQ(fused.at("BatchNormReluGrad"), 17);
  EXPECT_EQ(fused.at("BatchNormTraining"), 3);  // the downsample paths' batch norms
  EXPECT_EQ(fused.at("BatchNormGrad"), 3);
  EXPECT_EQ(fused.count("Relu"), 0u);
  EXPECT_EQ(fused.count("ReluGrad"), 0u);
  EXPECT_EQ(fused.count("Add"), 0u);
  // resnet50's bottlenecks: bn1 + relu, bn2 + relu, bn3 + add + relu in 16 blocks, and the stem.
  const std::map<std::string, int> fused50 =
      op_counts(autodiff::build_training_graph(resnet("resnet50", 2, 32), o).graph);
  EXPECT_EQ(fused50.at("BatchNormReluTraining"), 49);
  EXPECT_EQ(fused50.at("BatchNormTraining"), 4);
}

// A value something else reads stays: Relu(BN(x)) whose BN output is also a graph output is
// not fused.
TEST(Fusion, KeepsValuesOthersRead) {
  Graph g = resnet("resnet18", 2, 32);
  g.outputs.push_back(g.value("bn1"));
  autodiff::TrainingOptions o;
  o.fuse_batchnorm_relu = true;
  o.optimizer = false;
  o.loss_output = "";
  const auto counts = op_counts(autodiff::build_training_graph(std::move(g), o).graph);
  EXPECT_EQ(counts.at("BatchNormReluTraining"), 16);
  EXPECT_EQ(counts.at("Relu"), 1);
}

TEST(Fusion, FusedStepsAreBitIdenticalToUnfused) {
  for (DType half : {DType::undefined, DType::bf16, DType::f16}) {
    SCOPED_TRACE(half == DType::undefined ? "float32" : dtype_name(half));
    Trained plain = make_run("resnet18", false, half);
    Trained fused = make_run("resnet18", true, half);
    ASSERT_EQ(plain.states, fused.states);
    for (int64_t s = 0; s < 3; ++s) {
      step(plain, s);
      step(fused, s);
      EXPECT_EQ(plain.session->fetch(plain.tg.loss).bytes, fused.session->fetch(fused.tg.loss).bytes) << "step " << s;
    }
    int differing = 0;
    for (const std::string& state : plain.states)
      differing += plain.session->fetch(state).bytes != fused.session->fetch(state).bytes;
    EXPECT_EQ(differing, 0) << "of " << plain.states.size();
    // In place, the unfused Relu and Add already reuse the batch norm's buffer: the fusion
    // saves passes over memory, not memory.
    EXPECT_EQ(fused.session->plan().activation_arena_bytes, plain.session->plan().activation_arena_bytes);
  }
}
