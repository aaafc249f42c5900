// Channels-last nodes on the GPU against the CPU, which runs them through the layout emulation
// (runtime/layout_emulation.h): cuDNN's convolutions and batch norms with channels-last
// strides, BatchNormApply's channel index, the fused batch norms passing the attribute on, and
// the emulated pooling. Skips with a message where no GPU is at hand.
#include <gtest/gtest.h>

#include <cmath>
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

// 2-D max pooling runs channels-last and in half natively on the GPU (MaxPool and its gradient
// from the input), the CPU through its emulation (transposes; half widened, computed in
// float32, rounded): the same bits, ties and NaN included. Global average pooling is still
// emulated on the GPU.
TEST(CudaChannelsLast, MaxPoolingMatchesCpuExactlyInEveryLayoutAndType) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    const char* label;
    Shape x, y;
    std::vector<int64_t> kernel, strides, pads, dilations;
    int64_t ceil_mode;
  };
  const Case cases[] = {
      {"stem 3x3 stride 2 pad 1", {5, 7, 11, 13}, {5, 7, 6, 7}, {3, 3}, {2, 2}, {1, 1, 1, 1}, {1, 1}, 0},
      {"2x2 dilation 2 ceil", {2, 9, 10, 9}, {2, 9, 5, 5}, {2, 2}, {2, 2}, {0, 1, 0, 0}, {2, 2}, 1},
  };
  uint64_t seed = 70;
  for (const Case& c : cases)
    for (DType dt : {DType::f32, DType::f16, DType::bf16})
      for (bool channels_last : {false, true}) {
        SCOPED_TRACE(std::string(c.label) + " " + dtype_name(dt) + (channels_last ? " channels-last" : ""));
        const Shape xs = channels_last ? nhwc(c.x) : c.x, ys = channels_last ? nhwc(c.y) : c.y;
        // Ties (whole numbers) and a few NaN: the first maximum and the first NaN win.
        Tensor x = random_tensor(DType::f32, xs, ++seed, -3, 3);
        for (int64_t i = 0; i < x.numel(); ++i) test::set_element(x, i, std::floor(test::element(x, i)));
        for (int64_t i = 5; i < x.numel(); i += 53) test::set_element(x, i, std::nan(""));
        Tensor xt = dt == DType::f32 ? x : test::random_tensor(dt, xs, seed, -3, 3);
        for (int64_t i = 0; i < xt.numel(); ++i) test::set_element(xt, i, test::element(x, i));
        auto window_of = [&](KernelCase& k) {
          k.set_attr("kernel_shape", Attribute{c.kernel});
          k.set_attr("strides", Attribute{c.strides});
          k.set_attr("pads", Attribute{c.pads});
          k.set_attr("dilations", Attribute{c.dilations});
          k.set_attr("ceil_mode", Attribute{c.ceil_mode});
          if (channels_last) k.set_attr(kChannelsLast, Attribute{int64_t{1}});
        };
        KernelCase pool("MaxPool", "", {xt}, {{dt, ys}});
        window_of(pool);
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(pool)) << "MaxPool";
        // With Indices: they stay channels-first ([N, C, oH, oW]) in either layout.
        KernelCase indexed("MaxPool", "", {xt}, {{dt, ys}, {DType::i64, c.y}});
        window_of(indexed);
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(indexed)) << "MaxPool with Indices";
        KernelCase grad("MaxPoolGradFromInput", "oxtrain", {random_tensor(dt, ys, ++seed), xt}, {{dt, xs}});
        window_of(grad);
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(grad)) << "MaxPoolGradFromInput";
      }
}

// MaxPool takes channels-last as it is on the GPU; global average pooling has no channels-last
// kernel there yet: the emulation's transposes around the channels-first one. Both exact.
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

#ifdef OXTRAIN_HAVE_CUDA
// Without a device: 2-D max pooling in half and channels-last reaches the pooling kernels as it
// is (no workspace: nothing transposed or widened around them), while forms they lack (1-D in
// half, global average pooling channels-last) still go through the emulations.
TEST(CudaChannelsLast, MaxPoolingIsNativeInHalfAndChannelsLast) {
  auto workspace = [](KernelCase& k) {
    const runtime::KernelFactory* f = runtime::KernelRegistry::global().find(
        k.node().domain, k.node().op_type, runtime::Device::cuda);
    EXPECT_NE(f, nullptr);
    return (*f)(runtime::KernelInit{k.node(), 17, runtime::Device::cuda, nullptr, Precision::tf32})->workspace_bytes();
  };
  const Shape x{4, 8, 10, 12}, y{4, 8, 5, 6};
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (bool channels_last : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (channels_last ? " channels-last" : ""));
      const Shape xs = channels_last ? nhwc(x) : x, ys = channels_last ? nhwc(y) : y;
      KernelCase pool("MaxPool", "", {random_tensor(dt, xs, 1)}, {{dt, ys}});
      pool.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2, 2}});
      pool.set_attr("strides", Attribute{std::vector<int64_t>{2, 2}});
      if (channels_last) pool.set_attr(kChannelsLast, Attribute{int64_t{1}});
      EXPECT_EQ(workspace(pool), 0u);
      KernelCase grad("MaxPoolGradFromInput", "oxtrain", {random_tensor(dt, ys, 2), random_tensor(dt, xs, 3)}, {{dt, xs}});
      grad.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2, 2}});
      grad.set_attr("strides", Attribute{std::vector<int64_t>{2, 2}});
      if (channels_last) grad.set_attr(kChannelsLast, Attribute{int64_t{1}});
      EXPECT_EQ(workspace(grad), 0u);
    }
  KernelCase one_d("MaxPool", "", {random_tensor(DType::bf16, {4, 8, 12}, 4)}, {{DType::bf16, {4, 8, 6}}});
  one_d.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2}});
  one_d.set_attr("strides", Attribute{std::vector<int64_t>{2}});
  EXPECT_GT(workspace(one_d), 0u);  // widened to float32 and back
  KernelCase gap("GlobalAveragePool", "", {random_tensor(DType::f32, nhwc(x), 5)}, {{DType::f32, Shape{4, 1, 1, 8}}});
  gap.set_attr(kChannelsLast, Attribute{int64_t{1}});
  EXPECT_GT(workspace(gap), 0u);  // transposed around the channels-first kernel
}
#endif  // OXTRAIN_HAVE_CUDA
