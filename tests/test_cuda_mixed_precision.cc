// Mixed precision on the GPU against the CPU reference: cuDNN's half convolutions and batch
// norm, the conversion kernels, the device-side half emulation, fp16's loss-scaling kernels and
// the fused batch norm + ReLU kernels. Each skips with a message where no GPU is at hand.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "autodiff/training.h"
#include "graph/ops.h"
#include "graph/passes.h"
#include "runtime/cpu/half_emulation.h"
#include "runtime/device_runtime.h"
#include "runtime/kernel.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/cudnn_common.h"
#include "runtime/cuda/kernels.h"
#endif
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"
#include "tests/parity_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

constexpr DType kHalves[] = {DType::bf16, DType::f16};

// A few units in the last place of the half type, relative to the largest value: cuDNN sums
// in another order than the CPU, and each side rounds its float32 result once.
double half_tolerance(DType dt) { return dt == DType::bf16 ? 2.0 / 128 : 2.0 / 1024; }

}  // namespace

TEST(CudaMixedPrecision, HalfConvolutionsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (DType h : kHalves) {
    SCOPED_TRACE(dtype_name(h));
    Tensor x = test::random_tensor(h, {2, 8, 9, 9}, 1);
    Tensor w = test::random_tensor(h, {16, 8, 3, 3}, 2);
    Tensor b = test::random_tensor(h, {16}, 3);
    Tensor dy = test::random_tensor(h, {2, 16, 9, 9}, 4);
    test::KernelCase fwd("Conv", "", {x, w, b}, {{h, {2, 16, 9, 9}}});
    fwd.set_attr("pads", Attribute{std::vector<int64_t>{1, 1, 1, 1}});
    EXPECT_TRUE(test::cuda_matches_cpu(fwd, half_tolerance(h)));
    test::KernelCase data("ConvGradData", "oxtrain", {dy, w}, {{h, {2, 8, 9, 9}}});
    data.set_attr("pads", Attribute{std::vector<int64_t>{1, 1, 1, 1}});
    data.set_attr("input_shape", Attribute{std::vector<int64_t>{2, 8, 9, 9}});
    EXPECT_TRUE(test::cuda_matches_cpu(data, half_tolerance(h)));
    test::KernelCase filter("ConvGradFilter", "oxtrain", {dy, x}, {{h, {16, 8, 3, 3}}});
    filter.set_attr("pads", Attribute{std::vector<int64_t>{1, 1, 1, 1}});
    filter.set_attr("filter_shape", Attribute{std::vector<int64_t>{16, 8, 3, 3}});
    EXPECT_TRUE(test::cuda_matches_cpu(filter, half_tolerance(h)));
  }
}

TEST(CudaMixedPrecision, HalfBatchNormMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (DType h : kHalves) {
    SCOPED_TRACE(dtype_name(h));
    Tensor x = test::random_tensor(h, {4, 6, 5, 5}, 1);
    Tensor scale = test::random_tensor(DType::f32, {6}, 2, 0.5, 1.5);
    Tensor bias = test::random_tensor(DType::f32, {6}, 3);
    Tensor mean = test::random_tensor(DType::f32, {6}, 4);
    Tensor var = test::random_tensor(DType::f32, {6}, 5, 0.5, 2.0);
    test::KernelCase train("BatchNormTraining", "oxtrain", {x, scale, bias, mean, var},
                           {{h, x.shape}, {DType::f32, {6}}, {DType::f32, {6}}, {DType::f32, {6}}, {DType::f32, {6}}});
    train.set_attr("epsilon", Attribute{1e-5f});
    train.set_attr("momentum", Attribute{0.9f});
    EXPECT_TRUE(test::cuda_matches_cpu(train, half_tolerance(h)));
    train.run();
    Tensor dy = test::random_tensor(h, x.shape, 6);
    test::KernelCase grad("BatchNormGrad", "oxtrain", {dy, x, scale, train.output(3), train.output(4)},
                          {{h, x.shape}, {DType::f32, {6}}, {DType::f32, {6}}});
    EXPECT_TRUE(test::cuda_matches_cpu(grad, half_tolerance(h)));
  }
}

// Conversions, ops with native half kernels, and ops the GPU runs through its half emulation
// (widened copies, the float32 kernel, rounded outputs: 3-D pooling, MaxMinGrad) round exactly
// as the CPU.
TEST(CudaMixedPrecision, CastsAndEmulatedOpsMatchCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  for (DType h : kHalves) {
    SCOPED_TRACE(dtype_name(h));
    // Beyond float16's range (65504) the casts give infinities: compared as bytes.
    Tensor f = test::random_tensor(DType::f32, {1000}, 1, -70000, 70000);
    test::KernelCase down("Cast", "", {f}, {{h, {1000}}});
    down.set_attr("to", Attribute{int64_t{dtype_to_onnx(h)}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(down));
    down.run();
    test::KernelCase up("Cast", "", {down.output(0)}, {{DType::f32, {1000}}});
    up.set_attr("to", Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(up));
    Tensor a = test::random_tensor(h, {2, 3, 8, 8}, 2);
    Tensor b = test::random_tensor(h, {2, 3, 8, 8}, 3);
    test::KernelCase add("Add", "", {a, b}, {{h, a.shape}});
    EXPECT_TRUE(test::cuda_matches_cpu(add, 0));
    test::KernelCase relu("Relu", "", {a}, {{h, a.shape}});
    EXPECT_TRUE(test::cuda_matches_cpu(relu, 0));
    test::KernelCase pool("MaxPool", "", {a}, {{h, {2, 3, 4, 4}}, {DType::i64, {2, 3, 4, 4}}});
    pool.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2, 2}});
    pool.set_attr("strides", Attribute{std::vector<int64_t>{2, 2}});
    EXPECT_TRUE(test::cuda_matches_cpu(pool, 0));
    // 1-D pooling: one row of the 2-D kernel, in half as it is.
    for (const char* op : {"MaxPool", "AveragePool"}) {
      test::KernelCase pool1d(op, "", {test::random_tensor(h, {4, 8, 13}, 4)}, {{h, {4, 8, 6}}});
      pool1d.set_attr("kernel_shape", Attribute{std::vector<int64_t>{3}});
      pool1d.set_attr("strides", Attribute{std::vector<int64_t>{2}});
      EXPECT_EQ(runtime::cuda_emulation(pool1d.node()), "");
      EXPECT_TRUE(test::cuda_bitwise_matches_cpu(pool1d)) << "1-D " << op;
    }
    // Emulated (runtime::cuda_emulation says so), yet the same bits.
    test::KernelCase pool3d("MaxPool", "", {test::random_tensor(h, {2, 3, 4, 6, 6}, 4)}, {{h, {2, 3, 2, 3, 3}}});
    pool3d.set_attr("kernel_shape", Attribute{std::vector<int64_t>{2, 2, 2}});
    pool3d.set_attr("strides", Attribute{std::vector<int64_t>{2, 2, 2}});
    EXPECT_EQ(runtime::cuda_emulation(pool3d.node()), "half widened to float32");
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(pool3d)) << "3-D MaxPool";
    test::KernelCase grad("MaxMinGrad", "oxtrain", {b, a, test::random_tensor(h, a.shape, 5)},
                          {{h, a.shape}, {h, a.shape}});
    EXPECT_EQ(runtime::cuda_emulation(grad.node()), "half widened to float32");
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(grad)) << "MaxMinGrad";
  }
}

// NonFinite over many inputs, as ResNet-50's 161 gradients: the kernel checks them in batches
// of inputs per launch; an overflow in any input of any batch is found, and nothing else.
TEST(CudaMixedPrecision, NonFiniteFindsAnOverflowInAnyBatchOfManyInputs) {
  OXTRAIN_REQUIRE_GPU();
  const DType types[] = {DType::f32, DType::f16, DType::bf16};
  std::vector<Tensor> inputs;
  for (int64_t i = 0; i < 200; ++i)
    inputs.push_back(test::random_tensor(types[i % 3], {(i * 37) % 3001 + 1}, 40 + static_cast<uint64_t>(i)));
  auto found_with = [&](int64_t bad_input, float value) {
    std::vector<Tensor> xs = inputs;
    if (bad_input >= 0) {
      Tensor& t = xs[static_cast<size_t>(bad_input)];
      t.data<float>()[t.numel() - 1] = value;  // the last element: the end of the stride
    }
    test::KernelCase k("NonFinite", "oxtrain", std::move(xs), {{DType::f32, {}}});
    EXPECT_TRUE(test::cuda_matches_cpu(k, 0)) << "bad input " << bad_input;
    k.run(17, runtime::Device::cuda);
    return k.output(0).data<float>()[0];
  };
  EXPECT_EQ(found_with(-1, 0.0f), 0.0f);
  EXPECT_EQ(found_with(0, INFINITY), 1.0f);    // the first launch
  EXPECT_EQ(found_with(99, -INFINITY), 1.0f);  // the second
  EXPECT_EQ(found_with(198, NAN), 1.0f);       // the third, its last but one input
}

TEST(CudaMixedPrecision, LossScalingKernelsMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  Tensor g = test::random_tensor(DType::f32, {5000}, 1);
  test::KernelCase clean("NonFinite", "oxtrain", {g, test::random_tensor(DType::f16, {300}, 2)}, {{DType::f32, {}}});
  EXPECT_TRUE(test::cuda_matches_cpu(clean, 0));
  Tensor bad = g;
  bad.data<float>()[4321] = INFINITY;
  test::KernelCase found("NonFinite", "oxtrain", {g, bad}, {{DType::f32, {}}});
  EXPECT_TRUE(test::cuda_matches_cpu(found, 0));
  found.run(17, runtime::Device::cuda);
  EXPECT_EQ(found.output(0).data<float>()[0], 1.0f);
  for (float overflow : {0.0f, 1.0f}) {
    Tensor good(DType::i64, {});
    good.data<int64_t>()[0] = 1999;
    test::KernelCase update("LossScaleUpdate", "oxtrain",
                            {Tensor::from_float({65536.0f}, {}), good, Tensor::from_float({overflow}, {})},
                            {{DType::f32, {}}, {DType::i64, {}}});
    EXPECT_TRUE(test::cuda_matches_cpu(update, 0));
    Tensor t(DType::i64, {});
    t.data<int64_t>()[0] = 3;
    test::KernelCase m("ScaledMomentum", "oxtrain",
                       {Tensor::from_float({0.1f}, {}), t, Tensor::from_float({overflow}, {}),
                        Tensor::from_float({1024.0f}, {}), test::random_tensor(DType::f32, {3000}, 3),
                        test::random_tensor(DType::f32, {3000}, 4, -1000, 1000), test::random_tensor(DType::f32, {3000}, 5)},
                       {{DType::f32, {3000}}, {DType::f32, {3000}}});
    m.set_attr("alpha", Attribute{0.9f});
    m.set_attr("beta", Attribute{1.0f});
    m.set_attr("norm_coefficient", Attribute{1e-4f});
    EXPECT_TRUE(test::cuda_matches_cpu(m, 1e-6));
  }
}

TEST(CudaMixedPrecision, FusedBatchNormReluMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dt));
    const double tol = dt == DType::f32 ? 1e-5 : half_tolerance(dt);
    Tensor x = test::random_tensor(dt, {4, 6, 5, 5}, 1);
    Tensor r = test::random_tensor(dt, x.shape, 2);
    Tensor scale = test::random_tensor(DType::f32, {6}, 3, 0.5, 1.5);
    Tensor bias = test::random_tensor(DType::f32, {6}, 4);
    Tensor mean = test::random_tensor(DType::f32, {6}, 5);
    Tensor var = test::random_tensor(DType::f32, {6}, 6, 0.5, 2.0);
    const std::vector<test::OutputSpec> outs = {
        {dt, x.shape}, {DType::f32, {6}}, {DType::f32, {6}}, {DType::f32, {6}}, {DType::f32, {6}}};
    test::KernelCase fwd("BatchNormReluTraining", "oxtrain", {x, scale, bias, mean, var, r}, outs);
    fwd.set_attr("epsilon", Attribute{1e-5f});
    fwd.set_attr("momentum", Attribute{0.9f});
    EXPECT_TRUE(test::cuda_matches_cpu(fwd, tol));
    fwd.run();
    Tensor dz = test::random_tensor(dt, x.shape, 7);
    for (bool residual : {false, true}) {
      std::vector<test::OutputSpec> gouts = {{dt, x.shape}, {DType::f32, {6}}, {DType::f32, {6}}};
      if (residual) gouts.push_back({dt, x.shape});
      test::KernelCase grad("BatchNormReluGrad", "oxtrain", {dz, fwd.output(0), x, scale, fwd.output(3), fwd.output(4)},
                            gouts);
      EXPECT_TRUE(test::cuda_matches_cpu(grad, tol)) << "residual " << residual;
    }
  }
}

#ifdef OXTRAIN_HAVE_CUDA
// The fused batch norms run as one cuDNN graph each (runtime/cuda/batchnorm.cc): batch norm +
// residual + ReLU in either layout, and the ReLU's gradient + batch norm's backward
// channels-last, against the CPU's composed kernels (in half within its rounding: cuDNN keeps Y
// in float32 where the CPU rounds it before the residual). The kernels must be cuDNN's graphs,
// not the composed fallback, which would pass the comparison as well; a channels-first
// gradient is composed.
TEST(CudaMixedPrecision, CudnnFusedBatchNormReluMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  std::unique_ptr<runtime::DeviceRuntime> rt =
      runtime::DeviceRuntime::create(runtime::Device::cuda, runtime::Precision::tf32);
  auto cudnn_graph = [&](test::KernelCase& k) {
    const runtime::KernelFactory* f =
        runtime::KernelRegistry::global().find("oxtrain", k.node().op_type, runtime::Device::cuda);
    std::unique_ptr<runtime::Kernel> kernel =
        (*f)(runtime::KernelInit{k.node(), 1, runtime::Device::cuda, &rt->context(), runtime::Precision::tf32});
    return dynamic_cast<const runtime::cudnn::PlannedKernel*>(kernel.get()) != nullptr;
  };
  for (DType dt : {DType::bf16, DType::f16, DType::f32})
    for (bool channels_last : {true, false})
      for (bool residual : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + (channels_last ? " channels-last" : "") +
                     (residual ? " with the residual" : ""));
        const double tol = dt == DType::f32 ? 1e-5 : half_tolerance(dt);
        const Shape x_shape = channels_last ? Shape{4, 6, 5, 16} : Shape{4, 16, 6, 5};
        const Shape c{16};
        std::vector<Tensor> ins = {test::random_tensor(dt, x_shape, 31, -2, 3),
                                   test::random_tensor(DType::f32, c, 32, 0.5, 1.5),
                                   test::random_tensor(DType::f32, c, 33), test::random_tensor(DType::f32, c, 34),
                                   test::random_tensor(DType::f32, c, 35, 0.5, 2)};
        if (residual) ins.push_back(test::random_tensor(dt, x_shape, 36));
        test::KernelCase fwd("BatchNormReluTraining", "oxtrain", ins,
                             {{dt, x_shape}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}});
        fwd.set_attr("epsilon", Attribute{1e-5f});
        fwd.set_attr("momentum", Attribute{0.9f});
        if (channels_last) fwd.set_attr(kChannelsLast, Attribute{int64_t{1}});
        EXPECT_TRUE(cudnn_graph(fwd));
        EXPECT_TRUE(test::cuda_matches_cpu(fwd, tol, 1, runtime::Precision::tf32));
        fwd.run(1);
        std::vector<test::OutputSpec> outs = {{dt, x_shape}, {DType::f32, c}, {DType::f32, c}};
        if (residual) outs.push_back({dt, x_shape});
        test::KernelCase grad(
            "BatchNormReluGrad", "oxtrain",
            {test::random_tensor(dt, x_shape, 37), fwd.output(0), ins[0], ins[1], fwd.output(3), fwd.output(4)}, outs);
        if (channels_last) grad.set_attr(kChannelsLast, Attribute{int64_t{1}});
        EXPECT_EQ(cudnn_graph(grad), channels_last);
        EXPECT_TRUE(test::cuda_matches_cpu(grad, tol, 1, runtime::Precision::tf32));
      }
}
#endif

// The recomputation kernels (autodiff::recompute_batchnorm_relu) are exact twins: the same
// double arithmetic on both devices, without fused multiply-adds, and one rounding.
TEST(CudaMixedPrecision, RecomputedBatchNormMatchesCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor x = test::random_tensor(dt, {5, 7, 11, 13}, 11, -2, 3);
    Tensor r = test::random_tensor(dt, x.shape, 12);
    std::vector<Tensor> per_channel;
    for (uint64_t s = 13; s < 17; ++s) per_channel.push_back(test::random_tensor(DType::f32, {7}, s, 0.5, 1.5));
    const std::vector<Tensor> ins = {x, per_channel[0], per_channel[1], per_channel[2], per_channel[3]};
    test::KernelCase apply("BatchNormApply", "oxtrain", ins, {{dt, x.shape}});
    EXPECT_TRUE(test::cuda_matches_cpu(apply, 0));
    // BatchNormReluApply is one pass on the GPU, two on the CPU (BatchNormApply, then Relu(Y +
    // R) with Y rounded between): the same bits, signed zeros included, with and without the
    // residual, channels-first and channels-last.
    for (bool residual : {false, true})
      for (bool channels_last : {false, true}) {
        SCOPED_TRACE(std::string(residual ? "with R" : "without R") + (channels_last ? ", channels-last" : ""));
        Tensor xl = x, rl = r;
        if (channels_last) {
          xl = test::random_tensor(dt, {5, 11, 13, 7}, 17, -2, 3);
          rl = test::random_tensor(dt, xl.shape, 18);
        }
        std::vector<Tensor> relu_ins = {xl, per_channel[0], per_channel[1], per_channel[2], per_channel[3]};
        if (residual) relu_ins.push_back(rl);
        test::KernelCase relu("BatchNormReluApply", "oxtrain", relu_ins, {{dt, xl.shape}});
        if (channels_last) relu.set_attr(kChannelsLast, Attribute{int64_t{1}});
        EXPECT_TRUE(test::cuda_bitwise_matches_cpu(relu));
      }
  }
}

#ifdef OXTRAIN_HAVE_CUDA
// Without a device: no node of ResNet-50's training step, as `oxtrain train` builds it (uint8
// images normalised in the graph, fused batch norms recomputed in backward), takes the GPU's
// conversion passes (half widened to float32, channels-last transposed around a channels-first
// kernel) in any precision and layout: each kernel takes its node as it is. A graph pass that
// brings in an op without a native form shows up here.
TEST(CudaMixedPrecision, ResNet50RunsEveryNodeNatively) {
  for (DType half : {DType::undefined, DType::bf16, DType::f16})
    for (bool channels_last : {false, true}) {
      // fp16 fuses the convolutions with their batch norms (--conv-bn-fusion auto); in float32
      // the fused ops are checked too.
      const bool conv_bn = half == DType::f16 || half == DType::undefined;
      SCOPED_TRACE(std::string(half == DType::undefined ? "float32" : dtype_name(half)) +
                   (channels_last ? " channels-last" : "") + (conv_bn ? ", convolutions fused with batch norms" : ""));
      Graph forward = test::zoo_at_batch("resnet50", 2, 64, 10, 3);
      normalize_images_input(forward, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f});
      autodiff::TrainingOptions to;
      to.half = half;
      to.fuse_batchnorm_relu = to.recompute_batchnorm_relu = true;
      to.channels_last = channels_last;
      to.fuse_conv_batchnorm = conv_bn;
      autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(forward), to);
      EXPECT_EQ(tg.conv_prologues, conv_bn ? 32 : 0);
      std::map<std::string, int> emulated;
      int half_nodes = 0, channels_last_nodes = 0;
      for (const auto& n : tg.graph.nodes()) {
        const std::string how = runtime::cuda_emulation(*n);
        if (!how.empty()) ++emulated[n->op_type + ": " + how];
        half_nodes += runtime::cpu::has_half_values(*n);
        channels_last_nodes += is_channels_last(*n);
      }
      // The graph does hold what the kernels must take as it is.
      if (half != DType::undefined) {
        EXPECT_GT(half_nodes, conv_bn ? 450 : 500);
      }
      if (channels_last) {
        EXPECT_GT(channels_last_nodes, conv_bn ? 250 : 300);  // the fusion leaves fewer nodes
      }
      EXPECT_EQ(emulated, (std::map<std::string, int>{}));
    }
}

// A half form the device's library has no algorithm for (KernelUnsupported, as cuBLASLt's
// heuristic may answer) falls back to the float32 kernel on widened copies instead of failing
// the run; any other error from the factory still ends the compile.
TEST(CudaMixedPrecision, AHalfFormTheLibraryLacksFallsBackToWidenedCopies) {
  int float_kernels = 0;
  runtime::KernelFactory lacks_half = [&](const runtime::KernelInit& init) -> std::unique_ptr<runtime::Kernel> {
    if (runtime::cpu::has_half_values(init.node)) throw runtime::KernelUnsupported("no algorithm for half");
    ++float_kernels;
    return runtime::make_kernel([](const runtime::KernelArgs&) {});
  };
  test::KernelCase gemm("Gemm", "", {Tensor(DType::bf16, {2, 3}), Tensor(DType::bf16, {3, 4})},
                        {{DType::bf16, {2, 4}}});
  const runtime::KernelInit init{gemm.node(), 17, runtime::Device::cuda, nullptr, runtime::Precision::tf32};
  auto kernel = runtime::cuda::with_half_emulation("", "Gemm", lacks_half)(init);
  EXPECT_EQ(float_kernels, 1);  // the float32 twin was made
  EXPECT_NE(kernel->describe().find("float32 kernel on widened half values"), std::string::npos) << kernel->describe();
  EXPECT_GE(kernel->workspace_bytes(), size_t{(2 * 3 + 3 * 4 + 2 * 4) * 4});  // the widened copies
  runtime::KernelFactory broken = [](const runtime::KernelInit&) -> std::unique_ptr<runtime::Kernel> {
    throw Error("a wrong node");
  };
  EXPECT_THROW(runtime::cuda::with_half_emulation("", "Gemm", broken)(init), Error);
}

// The same for the other families' fixture models in bf16 channels-last: MobileNetV2's ReLU6
// as Clip, EfficientNet's Sigmoid and Dropout, DenseNet's Concat, a ViT's Gather, MatMul,
// Softmax and LayerNorm.
TEST(CudaMixedPrecision, FixtureModelsRunEveryNodeNatively) {
  for (const char* name : {"mobilenet_v2", "efficientnet_b0", "densenet121", "vit"}) {
    SCOPED_TRACE(name);
    Graph forward = test::parity::fixture_model(std::string(OXTRAIN_FIXTURES) + "/parity_models/" + name);
    autodiff::TrainingOptions to;
    to.half = DType::bf16;
    to.fuse_batchnorm_relu = to.recompute_batchnorm_relu = true;
    to.channels_last = true;
    autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(forward), to);
    int half_nodes = 0;
    std::map<std::string, int> emulated;
    for (const auto& n : tg.graph.nodes()) {
      half_nodes += runtime::cpu::has_half_values(*n);
      const std::string how = runtime::cuda_emulation(*n);
      if (!how.empty()) ++emulated[n->op_type + ": " + how];
    }
    EXPECT_GT(half_nodes, 20);
    EXPECT_EQ(emulated, (std::map<std::string, int>{}));
  }
}
#endif  // OXTRAIN_HAVE_CUDA
