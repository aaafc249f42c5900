// The batch-norm fusions (autodiff/fusion.h): which nodes they replace in a ResNet, and that a
// fused training graph computes the unfused graph's numbers bit for bit, in float32 and in
// mixed precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/math/fused.h"
#include "runtime/planner.h"
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

test::TrainingRun make_run(const std::string& arch, bool fuse, DType half, bool recompute = false) {
  autodiff::TrainingOptions o;
  o.fuse_batchnorm_relu = fuse;
  o.recompute_batchnorm_relu = recompute;
  o.half = half;
  return test::make_training_run(resnet(arch, 4, 32), o);
}

void step(test::TrainingRun& r, int64_t index) {
  test::run_training_step(r, 100 + static_cast<uint64_t>(index), {1, 4, 9, 0}, 0.05f, index);
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
    test::TrainingRun plain = make_run("resnet18", false, half);
    test::TrainingRun fused = make_run("resnet18", true, half);
    test::TrainingRun recomputed = make_run("resnet18", true, half, true);
    ASSERT_EQ(plain.states, fused.states);
    ASSERT_EQ(plain.states, recomputed.states);
    EXPECT_EQ(recomputed.tg.recomputed_values, 17);
    for (int64_t s = 0; s < 3; ++s) {
      step(plain, s);
      step(fused, s);
      step(recomputed, s);
      const auto& loss = plain.session->fetch(plain.tg.loss).bytes;
      EXPECT_EQ(loss, fused.session->fetch(fused.tg.loss).bytes) << "step " << s;
      EXPECT_EQ(loss, recomputed.session->fetch(recomputed.tg.loss).bytes) << "step " << s;
    }
    EXPECT_EQ(test::differing_states(plain, fused), 0) << "of " << plain.states.size();
    EXPECT_EQ(test::differing_states(plain, recomputed), 0) << "of " << plain.states.size();
    // In place, the unfused Relu and Add already reuse the batch norm's buffer: the fusion
    // saves passes over memory, not memory. Recomputing the fused outputs saves memory.
    const int64_t plain_bytes = plain.session->plan().activation_arena_bytes;
    EXPECT_EQ(fused.session->plan().activation_arena_bytes, plain_bytes);
    // At 32x32 the weights' half copies and the gradients outweigh the activations: no
    // figure here, only no more memory (RecomputationOfAResNet measures at 224x224).
    EXPECT_LE(recomputed.session->plan().activation_arena_bytes, plain_bytes);
  }
}

// In ResNet-50 every fused output backward reads is recomputed, each from values backward
// keeps anyway: the convolutions' outputs, the saved statistics, the parameters, and the
// recomputed output of the block before (a chain per stage, which starts at the downsample
// path's batch norm, recomputed by BatchNormApply). Each recomputation sits in backward before
// the nodes that read it, and no forward value is read in backward through a Relu output.
TEST(Fusion, RecomputationOfAResNet) {
  autodiff::TrainingOptions o;
  o.fuse_batchnorm_relu = true;
  o.recompute_batchnorm_relu = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(resnet("resnet50", 2, 32), o);
  EXPECT_EQ(tg.recomputed_values, 49);
  const std::map<std::string, int> counts = op_counts(tg.graph);
  EXPECT_EQ(counts.at("BatchNormReluApply"), 49);
  EXPECT_EQ(counts.at("BatchNormApply"), 4);
  std::map<const Node*, size_t> position;
  for (size_t i = 0; i < tg.graph.nodes().size(); ++i) position[tg.graph.nodes()[i].get()] = i;
  const size_t forward = static_cast<size_t>(tg.forward_nodes);
  int fused_outputs_read_in_backward = 0;
  for (const auto& n : tg.graph.nodes()) {
    for (const Value* in : n->inputs) {
      if (in && in->producer) {
        EXPECT_LT(position.at(in->producer), position.at(n.get())) << n->name;
      }
    }
    if (n->op_type == "BatchNormReluApply" || n->op_type == "BatchNormApply") {
      EXPECT_GE(position.at(n.get()), forward) << n->name;
      for (const Value* in : n->inputs) {
        if (in->producer && position.at(in->producer) < forward) {
          EXPECT_TRUE(in->producer->op_type == "Conv" || in->producer->output(0) != in) << n->name << " reads " << in->name;
        }
      }
    }
    if (position.at(n.get()) >= forward && n->op_type != "BatchNormReluApply")
      for (const Value* in : n->inputs)
        fused_outputs_read_in_backward += in && in->producer && in->producer->op_type == "BatchNormReluTraining" &&
                                          in->producer->output(0) == in;
  }
  EXPECT_EQ(fused_outputs_read_in_backward, 0);
  // The memory, planned at 224x224, batch 16: the fused outputs kept are about 40% of the
  // activations, recomputation leaves about a quarter of them alive.
  for (DType half : {DType::undefined, DType::bf16}) {
    o.half = half;
    o.recompute_batchnorm_relu = false;
    const int64_t kept = runtime::plan_memory(autodiff::build_training_graph(resnet("resnet50", 16, 224), o).graph)
                             .activation_arena_bytes;
    o.recompute_batchnorm_relu = true;
    const int64_t recomputed = runtime::plan_memory(autodiff::build_training_graph(resnet("resnet50", 16, 224), o).graph)
                                   .activation_arena_bytes;
    std::printf("resnet50 b16 224x224 %s: activations %.1f MiB kept, %.1f MiB recomputed\n",
                half == DType::undefined ? "float32" : dtype_name(half), kept / 1048576.0, recomputed / 1048576.0);
    EXPECT_LT(recomputed, kept * 7 / 10);
  }
}

// The GPU's single pass for oxtrain.BatchNormReluApply (runtime/cuda/normalization.cu) runs
// math::batchnorm_relu_apply_element per element; here it runs on the host over every element
// and must give the CPU kernel's bits (BatchNormApply, then Relu(Y + R) in a second pass), in
// float32, float16 and bfloat16, with and without the residual. Negative inputs and residuals
// make the ReLU clip, and values near zero give signed zeros.
TEST(Fusion, BatchNormReluApplyInOnePassIsTheCpuKernel) {
  const Shape shape{3, 5, 4, 6};
  const int64_t channels = 5, spatial = 24;
  for (DType dt : {DType::f32, DType::f16, DType::bf16})
    for (bool residual : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (residual ? " with R" : " without R"));
      Tensor x = test::random_tensor(dt, shape, 21, -3, 3);
      Tensor r = test::random_tensor(dt, shape, 22, -2, 2);
      std::vector<Tensor> ins = {x};
      for (uint64_t s = 23; s < 27; ++s) ins.push_back(test::random_tensor(DType::f32, {channels}, s, 0.5, 1.5));
      if (residual) ins.push_back(r);
      test::KernelCase cpu("BatchNormReluApply", "oxtrain", ins, {{dt, shape}});
      cpu.run();
      const float* scale = ins[1].data<float>();
      const float* bias = ins[2].data<float>();
      const float* mean = ins[3].data<float>();
      const float* inv_std = ins[4].data<float>();
      Tensor z(dt, shape);
      int64_t clipped = 0;
      for (int64_t i = 0; i < x.numel(); ++i) {
        const int64_t c = i / spatial % channels;
        const void* rp = residual ? r.bytes.data() : nullptr;
        if (dt == DType::f32)
          runtime::math::batchnorm_relu_apply_element<0>(x.bytes.data(), rp, z.bytes.data(), i, mean[c], inv_std[c],
                                                         scale[c], bias[c]);
        else if (dt == DType::f16)
          runtime::math::batchnorm_relu_apply_element<1>(x.bytes.data(), rp, z.bytes.data(), i, mean[c], inv_std[c],
                                                         scale[c], bias[c]);
        else
          runtime::math::batchnorm_relu_apply_element<2>(x.bytes.data(), rp, z.bytes.data(), i, mean[c], inv_std[c],
                                                         scale[c], bias[c]);
        clipped += test::element(z, i) == 0;
      }
      EXPECT_GT(clipped, x.numel() / 10);
      EXPECT_LT(clipped, x.numel() * 9 / 10);
      EXPECT_EQ(z.bytes, cpu.output(0).bytes);
    }
}
