// The CUDA kernels of the convolution and batch-norm fusion (runtime/cuda/conv_stats.cc) against
// their CPU twins (runtime/cpu/conv_stats.cc): odd shapes, where the composed kernels run (the
// own prologue and sums around cuDNN's plain convolution), and ResNet's float16 channels-last
// shapes, where cuDNN's fused graphs run on a GPU that has them. BatchNormFinalize's own kernel
// gives the CPU's bits. Skipped where no GPU is at hand.
#include <gtest/gtest.h>

#include "autodiff/training.h"
#include "graph/ops.h"
#include "runtime/device_runtime.h"
#include "runtime/session.h"
#include "runtime/kernel.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/cudnn_common.h"
#endif
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using test::KernelCase;
using test::random_tensor;

namespace {

struct ConvCase {
  Shape x, w, y;  // as stored (channels-last: [N, H, W, C], [K, R, S, C], [N, H, W, K])
  int64_t pad, stride;
  DType dt;
  bool channels_last;
};

void window(KernelCase& k, const ConvCase& c) {
  k.set_attr("pads", Attribute{std::vector<int64_t>{c.pad, c.pad, c.pad, c.pad}});
  k.set_attr("strides", Attribute{std::vector<int64_t>{c.stride, c.stride}});
  if (c.channels_last) k.set_attr(kChannelsLast, Attribute{int64_t{1}});
}

int64_t channels(const ConvCase& c) { return c.channels_last ? c.x[3] : c.x[1]; }

KernelCase stats_case(const ConvCase& c, bool prologue) {
  const int64_t k = c.channels_last ? c.y[3] : c.y[1];
  std::vector<Tensor> ins = {random_tensor(c.dt, c.x, 81, -1, 2), random_tensor(c.dt, c.w, 82, -0.3, 0.3)};
  if (prologue)
    ins.insert(ins.end(), {random_tensor(c.dt, {channels(c)}, 83, 0.5, 1.5), random_tensor(c.dt, {channels(c)}, 84, -0.5, 0.5)});
  KernelCase s("ConvStats", kOxtrainDomain, ins, {{c.dt, c.y}, {DType::f32, {k}}, {DType::f32, {k}}});
  window(s, c);
  return s;
}

// Float16 convolutions accumulate in float32 on both devices but round their inputs (and cuDNN
// the prologue's output) to float16: a few units of float16's precision.
double rtol(DType dt) { return dt == DType::f32 ? 1e-5 : 4e-3; }

const ConvCase kCases[] = {
    {{3, 5, 11, 13}, {7, 5, 3, 3}, {3, 7, 6, 7}, 1, 2, DType::f32, false},  // odd: the composed kernels
    {{3, 11, 13, 5}, {7, 3, 3, 5}, {3, 6, 7, 7}, 1, 2, DType::f16, true},
    {{16, 28, 28, 64}, {64, 3, 3, 64}, {16, 28, 28, 64}, 1, 1, DType::f16, true},  // ResNet's: cuDNN's graphs
    {{16, 14, 14, 128}, {256, 1, 1, 128}, {16, 14, 14, 256}, 0, 1, DType::f16, true},
    // Composed again (12 channels in), with enough rows for the sums to run in 16 chunks and
    // 72 channels out: three tiles of channels, the last one partly filled.
    {{16, 32, 32, 12}, {72, 3, 3, 12}, {16, 32, 32, 72}, 1, 1, DType::f16, true},
    // ResNet's stem (3 channels in, 7x7, stride 2), for which cuDNN has no fused engine.
    {{8, 64, 64, 3}, {64, 7, 7, 3}, {8, 32, 32, 64}, 3, 2, DType::f16, true},
};

}  // namespace

TEST(CudaConvStats, MatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (const ConvCase& c : kCases)
    for (bool prologue : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(c.dt)) + " x " + shape_str(c.x) + (prologue ? " with the prologue" : ""));
      KernelCase s = stats_case(c, prologue);
      EXPECT_TRUE(test::cuda_matches_cpu(s, rtol(c.dt)));
    }
}

TEST(CudaConvStats, GradFilterThroughThePrologueMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (const ConvCase& c : kCases) {
    SCOPED_TRACE(std::string(dtype_name(c.dt)) + " x " + shape_str(c.x));
    KernelCase k("ConvGradFilterScaleBiasRelu", kOxtrainDomain,
                 {random_tensor(c.dt, c.y, 85), random_tensor(c.dt, c.x, 86, -1, 2),
                  random_tensor(c.dt, {channels(c)}, 87, 0.5, 1.5), random_tensor(c.dt, {channels(c)}, 88, -0.5, 0.5)},
                 {{c.dt, c.w}});
    window(k, c);
    const int64_t kk = c.w[0], r = c.channels_last ? c.w[1] : c.w[2];
    k.set_attr("filter_shape", Attribute{std::vector<int64_t>{kk, channels(c), r, r}});
    EXPECT_TRUE(test::cuda_matches_cpu(k, rtol(c.dt)));
  }
}

TEST(CudaConvStats, DataGradientThroughReluIntoBatchNormWeightsMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (const ConvCase& c : kCases) {
    SCOPED_TRACE(std::string(dtype_name(c.dt)) + " x " + shape_str(c.x));
    const Shape ch{channels(c)};
    KernelCase k("ConvGradDataReluBatchNormWeight", kOxtrainDomain,
                 {random_tensor(c.dt, c.y, 95), random_tensor(c.dt, c.w, 96, -0.3, 0.3), random_tensor(c.dt, c.x, 97, -1, 2),
                  random_tensor(DType::f32, ch, 98, 0.5, 1.5), random_tensor(DType::f32, ch, 99, -0.5, 0.5),
                  random_tensor(DType::f32, ch, 100, 0, 1), random_tensor(DType::f32, ch, 101, 0.5, 2)},
                 {{c.dt, c.x}, {DType::f32, ch}, {DType::f32, ch}});
    window(k, c);
    const Shape logical = c.channels_last ? Shape{c.x[0], c.x[3], c.x[1], c.x[2]} : c.x;
    k.set_attr("input_shape", Attribute{std::vector<int64_t>(logical.begin(), logical.end())});
    EXPECT_TRUE(test::cuda_matches_cpu(k, rtol(c.dt)));
    // Batch norm's input gradient from those, bit for bit the CPU's (the same dS fed to both).
    KernelCase apply("BatchNormGradApply", kOxtrainDomain,
                     {random_tensor(c.dt, c.x, 102), random_tensor(c.dt, c.x, 103, -1, 2),
                      random_tensor(DType::f32, ch, 104, 0.5, 1.5), random_tensor(DType::f32, ch, 105, 0, 1),
                      random_tensor(DType::f32, ch, 106, 0.5, 2), random_tensor(DType::f32, ch, 107, -3, 3),
                      random_tensor(DType::f32, ch, 108, -3, 3)},
                     {{c.dt, c.x}});
    if (c.channels_last) apply.set_attr(kChannelsLast, Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(apply));
  }
}

// On a GPU with cuDNN's fused engines (an H100 or H200 with cuDNN 9.19), ResNet's float16
// channels-last convolutions run as one cuDNN graph each (a PlannedKernel), not composed: the
// composed kernels would pass the comparisons above as well.
TEST(CudaConvStats, ResNetShapesRunAsOneCudnnGraph) {
  OXTRAIN_REQUIRE_GPU();
#ifdef OXTRAIN_HAVE_CUDA
  std::unique_ptr<runtime::DeviceRuntime> rt =
      runtime::DeviceRuntime::create(runtime::Device::cuda, runtime::Precision::tf32);
  for (const ConvCase& c : {kCases[2], kCases[3]})
    for (bool prologue : {false, true}) {
      KernelCase s = stats_case(c, prologue);
      const runtime::KernelFactory* f =
          runtime::KernelRegistry::global().find(kOxtrainDomain, "ConvStats", runtime::Device::cuda);
      std::unique_ptr<runtime::Kernel> kernel =
          (*f)(runtime::KernelInit{s.node(), 1, runtime::Device::cuda, &rt->context(), runtime::Precision::tf32});
      std::printf("ConvStats %s%s: %s\n", shape_str(c.x).c_str(), prologue ? " with the prologue" : "",
                  kernel->describe().c_str());
      EXPECT_NE(dynamic_cast<const runtime::cudnn::PlannedKernel*>(kernel.get()), nullptr) << kernel->describe();
    }
#endif
}

TEST(CudaConvStats, ResNetGradientsRunAsOneCudnnGraph) {
  OXTRAIN_REQUIRE_GPU();
#ifdef OXTRAIN_HAVE_CUDA
  std::unique_ptr<runtime::DeviceRuntime> rt =
      runtime::DeviceRuntime::create(runtime::Device::cuda, runtime::Precision::tf32);
  const ConvCase& c = kCases[2];
  const Shape ch{channels(c)};
  KernelCase wgrad("ConvGradFilterScaleBiasRelu", kOxtrainDomain,
                   {random_tensor(c.dt, c.y, 109), random_tensor(c.dt, c.x, 110), random_tensor(c.dt, ch, 111),
                    random_tensor(c.dt, ch, 112)},
                   {{c.dt, c.w}});
  window(wgrad, c);
  wgrad.set_attr("filter_shape", Attribute{std::vector<int64_t>{c.w[0], ch[0], c.w[1], c.w[2]}});
  KernelCase dgrad("ConvGradDataReluBatchNormWeight", kOxtrainDomain,
                   {random_tensor(c.dt, c.y, 113), random_tensor(c.dt, c.w, 114), random_tensor(c.dt, c.x, 115),
                    random_tensor(DType::f32, ch, 116), random_tensor(DType::f32, ch, 117),
                    random_tensor(DType::f32, ch, 118), random_tensor(DType::f32, ch, 119, 0.5, 2)},
                   {{c.dt, c.x}, {DType::f32, ch}, {DType::f32, ch}});
  window(dgrad, c);
  dgrad.set_attr("input_shape", Attribute{std::vector<int64_t>{c.x[0], ch[0], c.x[1], c.x[2]}});
  for (KernelCase* k : {&wgrad, &dgrad}) {
    const runtime::KernelFactory* f =
        runtime::KernelRegistry::global().find(kOxtrainDomain, k->node().op_type, runtime::Device::cuda);
    std::unique_ptr<runtime::Kernel> kernel =
        (*f)(runtime::KernelInit{k->node(), 1, runtime::Device::cuda, &rt->context(), runtime::Precision::tf32});
    std::printf("%s: %s\n", k->node().op_type.c_str(), kernel->describe().c_str());
    EXPECT_NE(dynamic_cast<const runtime::cudnn::PlannedKernel*>(kernel.get()), nullptr) << kernel->describe();
  }
#endif
}

TEST(CudaConvStats, FinalizeIsTheCpuKernelBitForBit) {
  OXTRAIN_REQUIRE_GPU();
  for (DType affine : {DType::f32, DType::f16, DType::bf16}) {
    SCOPED_TRACE(dtype_name(affine));
    const Shape c{37};
    KernelCase k("BatchNormFinalize", kOxtrainDomain,
                 {random_tensor(DType::f32, c, 89, 50, 100), random_tensor(DType::f32, c, 90, 3000, 4000),
                  random_tensor(DType::f32, c, 91, 0.5, 1.5), random_tensor(DType::f32, c, 92),
                  random_tensor(DType::f32, c, 93), random_tensor(DType::f32, c, 94, 0.5, 1.5)},
                 {{DType::f32, c}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}, {affine, c}, {affine, c}});
    k.set_attr("count", Attribute{int64_t{1000}});
    k.set_attr("momentum", Attribute{0.9f});
    k.set_attr("to", Attribute{int64_t{dtype_to_onnx(affine)}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(k));
  }
}

// A ResNet-18 step with the fusion on the GPU against the same graph on the CPU: strict float32
// channels-first within CudaSession.OneResNetStepMatchesTheCpuInStrictFp32's limits, and float16
// channels-last (cuDNN's fused graphs where the GPU has them) to float16 rounding of the loss.
TEST(CudaConvStats, ResNetStepWithTheFusionMatchesTheCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (DType half : {DType::undefined, DType::f16}) {
    SCOPED_TRACE(half == DType::undefined ? "float32" : "float16 channels-last");
    autodiff::TrainingOptions o;
    o.fuse_batchnorm_relu = o.recompute_batchnorm_relu = o.fuse_conv_batchnorm = true;
    o.half = half;
    o.channels_last = half != DType::undefined;
    runtime::SessionOptions gpu;
    gpu.device = runtime::Device::cuda;
    gpu.precision = half == DType::undefined ? runtime::Precision::fp32 : runtime::Precision::tf32;
    test::TrainingRun cpu_run = test::make_training_run(test::zoo_at_batch("resnet18", 4, 64, 10, 3), o);
    test::TrainingRun gpu_run = test::make_training_run(test::zoo_at_batch("resnet18", 4, 64, 10, 3), o, gpu);
    EXPECT_EQ(gpu_run.tg.conv_gradients, 8);
    for (auto* r : {&cpu_run, &gpu_run}) test::run_training_step(*r, 100, {3, 7, 0, 9}, 0.1f, 0);
    const double loss = test::max_relative_difference(gpu_run.session->fetch(gpu_run.tg.loss),
                                                      cpu_run.session->fetch(cpu_run.tg.loss));
    EXPECT_LE(loss, half == DType::undefined ? 1e-5 : 1e-2);
    if (half != DType::undefined) continue;
    for (const std::string& name : cpu_run.states)
      EXPECT_LE(test::max_relative_difference(gpu_run.session->fetch(name), cpu_run.session->fetch(name)), 1e-4) << name;
  }
}
