// Channels-last nodes on the GPU against the CPU, which runs them through the layout emulation
// (runtime/layout_emulation.h): cuDNN's convolutions and batch norms with channels-last
// strides, BatchNormApply's channel index, the fused batch norms passing the attribute on, and
// the pooling kernels' own channels-last forms. Skips with a message where no GPU is at hand.
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

// 2-D pooling runs channels-last and in half natively on the GPU (MaxPool, AveragePool, global
// average pooling and their gradients), the CPU through its emulations (transposes; half
// widened, computed in float32, rounded): the same bits, ties and NaN included. Only
// channels-first global average pooling sums a plane in another order (a warp's lanes, in
// double), so its means may round one unit apart.
TEST(CudaChannelsLast, PoolingMatchesCpuExactlyInEveryLayoutAndType) {
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
        auto layout = [&](KernelCase& k) {
          if (channels_last) k.set_attr(kChannelsLast, Attribute{int64_t{1}});
        };
        auto window_of = [&](KernelCase& k) {
          k.set_attr("kernel_shape", Attribute{c.kernel});
          k.set_attr("strides", Attribute{c.strides});
          k.set_attr("pads", Attribute{c.pads});
          k.set_attr("dilations", Attribute{c.dilations});
          k.set_attr("ceil_mode", Attribute{c.ceil_mode});
          layout(k);
        };
        KernelCase pool("MaxPool", "", {xt}, {{dt, ys}});
        window_of(pool);
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(pool)) << "MaxPool";
        // With Indices: they stay channels-first ([N, C, oH, oW]) in either layout.
        KernelCase indexed("MaxPool", "", {xt}, {{dt, ys}, {DType::i64, c.y}});
        window_of(indexed);
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(indexed)) << "MaxPool with Indices";
        const Tensor dy = random_tensor(dt, ys, ++seed);
        KernelCase grad("MaxPoolGradFromInput", "oxtrain", {dy, xt}, {{dt, xs}});
        window_of(grad);
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(grad)) << "MaxPoolGradFromInput";

        const Tensor smooth = random_tensor(dt, xs, ++seed);
        for (int64_t include_pad : {0, 1}) {
          KernelCase avg("AveragePool", "", {smooth}, {{dt, ys}});
          window_of(avg);
          avg.set_attr("count_include_pad", Attribute{include_pad});
          EXPECT_TRUE(test::cuda_bitwise_matches_cpu(avg)) << "AveragePool, count_include_pad " << include_pad;
          KernelCase avg_grad("AveragePoolGrad", "oxtrain", {dy}, {{dt, xs}});
          window_of(avg_grad);
          avg_grad.set_attr("count_include_pad", Attribute{include_pad});
          avg_grad.set_attr("input_shape", Attribute{std::vector<int64_t>(c.x)});
          EXPECT_TRUE(test::cuda_bitwise_matches_cpu(avg_grad)) << "AveragePoolGrad, count_include_pad " << include_pad;
        }

        const Shape pooled{c.x[0], c.x[1], 1, 1};
        const Shape gs = channels_last ? nhwc(pooled) : pooled;
        KernelCase gap("GlobalAveragePool", "", {smooth}, {{dt, gs}});
        layout(gap);
        if (channels_last) EXPECT_TRUE(test::cuda_bitwise_matches_cpu(gap)) << "GlobalAveragePool";
        else EXPECT_TRUE(test::cuda_matches_cpu(gap, tolerance(dt))) << "GlobalAveragePool";
        KernelCase gap_grad("GlobalAveragePoolGrad", "oxtrain", {random_tensor(dt, gs, ++seed)}, {{dt, xs}});
        layout(gap_grad);
        gap_grad.set_attr("input_shape", Attribute{std::vector<int64_t>(c.x)});
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(gap_grad)) << "GlobalAveragePoolGrad";
      }
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
// Without a device: 1-D and 2-D pooling in half and channels-last reaches the pooling kernels as
// it is (no workspace: nothing transposed or widened around them), while forms they lack (3-D
// in half, a pooling whose input and output types differ) still go through the emulations.
TEST(CudaChannelsLast, PoolingIsNativeInHalfAndChannelsLast) {
  auto workspace = [](KernelCase& k) {
    const runtime::KernelFactory* f = runtime::KernelRegistry::global().find(
        k.node().domain, k.node().op_type, runtime::Device::cuda);
    EXPECT_NE(f, nullptr);
    return (*f)(runtime::KernelInit{k.node(), 17, runtime::Device::cuda, nullptr, Precision::tf32})->workspace_bytes();
  };
  auto pool_window = [](KernelCase& k, bool channels_last, std::vector<int64_t> kernel) {
    k.set_attr("kernel_shape", Attribute{kernel});
    k.set_attr("strides", Attribute{kernel});
    if (channels_last) k.set_attr(kChannelsLast, Attribute{int64_t{1}});
  };
  const Shape x{4, 8, 10, 12}, y{4, 8, 5, 6}, pooled{4, 8, 1, 1};
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (bool channels_last : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (channels_last ? " channels-last" : ""));
      const Shape xs = channels_last ? nhwc(x) : x, ys = channels_last ? nhwc(y) : y;
      const Shape gs = channels_last ? nhwc(pooled) : pooled;
      for (const char* op : {"MaxPool", "AveragePool"}) {
        KernelCase pool(op, "", {random_tensor(dt, xs, 1)}, {{dt, ys}});
        pool_window(pool, channels_last, {2, 2});
        EXPECT_EQ(workspace(pool), 0u) << op;
      }
      KernelCase max_grad("MaxPoolGradFromInput", "oxtrain", {random_tensor(dt, ys, 2), random_tensor(dt, xs, 3)},
                          {{dt, xs}});
      pool_window(max_grad, channels_last, {2, 2});
      EXPECT_EQ(workspace(max_grad), 0u) << "MaxPoolGradFromInput";
      KernelCase avg_grad("AveragePoolGrad", "oxtrain", {random_tensor(dt, ys, 4)}, {{dt, xs}});
      pool_window(avg_grad, channels_last, {2, 2});
      avg_grad.set_attr("input_shape", Attribute{std::vector<int64_t>(x)});
      EXPECT_EQ(workspace(avg_grad), 0u) << "AveragePoolGrad";
      KernelCase gap("GlobalAveragePool", "", {random_tensor(dt, xs, 5)}, {{dt, gs}});
      if (channels_last) gap.set_attr(kChannelsLast, Attribute{int64_t{1}});
      EXPECT_EQ(workspace(gap), 0u) << "GlobalAveragePool";
      KernelCase gap_grad("GlobalAveragePoolGrad", "oxtrain", {random_tensor(dt, gs, 6)}, {{dt, xs}});
      if (channels_last) gap_grad.set_attr(kChannelsLast, Attribute{int64_t{1}});
      gap_grad.set_attr("input_shape", Attribute{std::vector<int64_t>(x)});
      EXPECT_EQ(workspace(gap_grad), 0u) << "GlobalAveragePoolGrad";
    }
  for (const char* op : {"MaxPool", "AveragePool"}) {
    KernelCase one_d(op, "", {random_tensor(DType::bf16, {4, 8, 12}, 4)}, {{DType::bf16, {4, 8, 6}}});
    pool_window(one_d, false, {2});
    EXPECT_EQ(workspace(one_d), 0u) << op << " 1-D: one row of the 2-D kernel";
    KernelCase three_d(op, "", {random_tensor(DType::bf16, {2, 3, 4, 6, 6}, 4)}, {{DType::bf16, {2, 3, 2, 3, 3}}});
    pool_window(three_d, false, {2, 2, 2});
    EXPECT_GT(workspace(three_d), 0u) << op << " 3-D: widened to float32 and back";
  }
  // Global average pooling at rank 3 in half is native; with a float32 output it is not.
  KernelCase rank3("GlobalAveragePool", "", {random_tensor(DType::f16, {4, 8, 12}, 7)}, {{DType::f16, {4, 8, 1}}});
  EXPECT_EQ(workspace(rank3), 0u);
  KernelCase mixed("GlobalAveragePool", "", {random_tensor(DType::f16, {4, 8, 12}, 7)}, {{DType::f32, {4, 8, 1}}});
  EXPECT_GT(workspace(mixed), 0u);
}
#endif  // OXTRAIN_HAVE_CUDA
