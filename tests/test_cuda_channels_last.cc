// Channels-last nodes on the GPU against the CPU, which runs them through the layout emulation
// (runtime/layout_emulation.h): cuDNN's convolutions and batch norms with channels-last
// strides, BatchNormApply's channel index, the fused batch norms passing the attribute on, and
// the emulated pooling. Skips with a message where no GPU is at hand.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "graph/ops.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using runtime::Precision;
using test::KernelCase;
using test::OutputSpec;
using test::random_tensor;

namespace {

// [N, C, H, W] -> stored [N, H, W, C]
Shape nhwc(const Shape& nchw) { return to_channels_last_shape(nchw); }

double tolerance(DType dt) { return dt == DType::f32 ? 2e-5 : dt == DType::bf16 ? 2.0 / 128 : 2.0 / 1024; }

void window(KernelCase& k) {
  k.set_attr("kernel_shape", Attribute{std::vector<int64_t>{3, 3}});
  k.set_attr("strides", Attribute{std::vector<int64_t>{2, 2}});
  k.set_attr("pads", Attribute{std::vector<int64_t>{1, 1, 1, 1}});
}

}  // namespace

TEST(CudaChannelsLast, ConvolutionsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  const Shape x{5, 8, 11, 13}, w{16, 8, 3, 3}, y{5, 16, 6, 7};
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dt));
    // Filters channels-last too: [K, C, R, S] stored [K, R, S, C].
    KernelCase fwd("Conv", "", {random_tensor(dt, nhwc(x), 1), random_tensor(dt, nhwc(w), 2)}, {{dt, nhwc(y)}});
    window(fwd);
    fwd.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_matches_cpu(fwd, tolerance(dt), 13, Precision::fp32));
    KernelCase data("ConvGradData", kOxtrainDomain, {random_tensor(dt, nhwc(y), 3), random_tensor(dt, nhwc(w), 4)},
                    {{dt, nhwc(x)}});
    window(data);
    data.set_attr("input_shape", Attribute{x});
    data.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_matches_cpu(data, tolerance(dt), 13, Precision::fp32));
    KernelCase filter("ConvGradFilter", kOxtrainDomain, {random_tensor(dt, nhwc(y), 5), random_tensor(dt, nhwc(x), 6)},
                      {{dt, nhwc(w)}});
    window(filter);
    filter.set_attr("filter_shape", Attribute{w});
    filter.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_matches_cpu(filter, tolerance(dt) * 5, 13, Precision::fp32));
  }
}

TEST(CudaChannelsLast, BatchNormsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  const Shape x{5, 7, 11, 13};
  const Shape c{7};
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor xs = random_tensor(dt, nhwc(x), 11, -2, 3);
    const Tensor scale = random_tensor(DType::f32, c, 12, 0.5, 1.5), bias = random_tensor(DType::f32, c, 13);
    const Tensor mean = random_tensor(DType::f32, c, 14), var = random_tensor(DType::f32, c, 15, 0.5, 2);
    const std::vector<OutputSpec> stats = {{DType::f32, c}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}};
    std::vector<OutputSpec> outs = {{dt, nhwc(x)}};
    outs.insert(outs.end(), stats.begin(), stats.end());
    KernelCase train("BatchNormTraining", kOxtrainDomain, {xs, scale, bias, mean, var}, outs);
    train.set_attr("epsilon", Attribute{1e-5f});
    train.set_attr("momentum", Attribute{0.9f});
    train.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_matches_cpu(train, tolerance(dt)));
    train.run();
    KernelCase grad("BatchNormGrad", kOxtrainDomain,
                    {random_tensor(dt, nhwc(x), 16), xs, scale, train.output(3), train.output(4)},
                    {{dt, nhwc(x)}, {DType::f32, c}, {DType::f32, c}});
    grad.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_matches_cpu(grad, tolerance(dt) * 2.5));
    // The recomputation kernels: BatchNormApply's channel is the last index here.
    KernelCase apply("BatchNormApply", kOxtrainDomain, {xs, scale, bias, train.output(3), train.output(4)},
                     {{dt, nhwc(x)}});
    apply.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_matches_cpu(apply, 0));
    KernelCase fused("BatchNormReluTraining", kOxtrainDomain,
                     {xs, scale, bias, mean, var, random_tensor(dt, nhwc(x), 17)}, outs);
    fused.set_attr("epsilon", Attribute{1e-5f});
    fused.set_attr("momentum", Attribute{0.9f});
    fused.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_matches_cpu(fused, tolerance(dt)));
  }
}

// Pooling has no channels-last kernel on the GPU yet: the emulation's transposes around the
// channels-first one, exact.
TEST(CudaChannelsLast, EmulatedPoolingMatchesCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  const Shape x{5, 7, 11, 13}, y{5, 7, 6, 7};
  KernelCase pool("MaxPool", "", {random_tensor(DType::f32, nhwc(x), 21)}, {{DType::f32, nhwc(y)}});
  window(pool);
  pool.set_attr(kChannelsLast, Attribute{int64_t{1}});
  EXPECT_TRUE(test::cuda_matches_cpu(pool, 0));
  KernelCase gap("GlobalAveragePool", "", {random_tensor(DType::f32, nhwc(x), 22)},
                 {{DType::f32, Shape{5, 1, 1, 7}}});
  gap.set_attr(kChannelsLast, Attribute{int64_t{1}});
  EXPECT_TRUE(test::cuda_matches_cpu(gap, 1e-6));
}

// A whole ResNet-18 step on the GPU with everything this runtime does to the graph (fused
// batch norms, their recomputation, channels-last), against the plain channels-first graph
// on the CPU, both strict float32: the limits of CudaSession.OneResNetStepMatchesTheCpuInStrictFp32.
TEST(CudaChannelsLast, ResNetStepMatchesThePlainGraphOnTheCpu) {
  OXTRAIN_REQUIRE_GPU();
  autodiff::TrainingOptions plain;
  autodiff::TrainingOptions all = plain;
  all.fuse_batchnorm_relu = all.recompute_batchnorm_relu = all.channels_last = true;
  runtime::SessionOptions gpu;
  gpu.device = runtime::Device::cuda;
  gpu.precision = Precision::fp32;
  test::TrainingRun cpu_run = test::make_training_run(test::zoo_at_batch("resnet18", 4, 64, 10, 3), plain);
  test::TrainingRun gpu_run = test::make_training_run(test::zoo_at_batch("resnet18", 4, 64, 10, 3), all, gpu);
  ASSERT_EQ(cpu_run.states, gpu_run.states);
  for (auto* r : {&cpu_run, &gpu_run}) test::run_training_step(*r, 100, {3, 7, 0, 9}, 0.1f, 0);
  EXPECT_LE(test::max_relative_difference(gpu_run.session->fetch(gpu_run.tg.loss), cpu_run.session->fetch(cpu_run.tg.loss)),
            1e-5);
  for (const std::string& name : cpu_run.states)
    EXPECT_LE(test::max_relative_difference(gpu_run.session->fetch(name), cpu_run.session->fetch(name)), 1e-4) << name;
}
