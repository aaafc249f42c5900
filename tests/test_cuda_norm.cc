// CUDA batch normalisation against the CPU kernels: BatchNormalization (inference, own
// kernel), oxtrain.BatchNormTraining (Y, running mean and unbiased running variance, saved mean
// and inverse standard deviation; omitted outputs) and oxtrain.BatchNormGrad, on odd shapes,
// both on cuDNN and on the own kernels that run what cuDNN has no engine for (which one runs
// is checked without a GPU); and plan support on an H100 from serialized device properties,
// for the fused batch norms' cuDNN graphs also without a driver (under the toolkit's stub).
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/ops.h"
#include "runtime/kernel.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/cudnn_common.h"
#endif

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using runtime::Precision;
using test::cuda_matches_cpu;
using test::KernelCase;
using test::OutputSpec;
using test::random_tensor;

namespace {

const OutputSpec kNone{DType::undefined, {}};

std::string text(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// The CPU sums in double, cuDNN in float32 over N*S = 715 elements per channel (5x7x11x13):
// random-sign rounding errors of about sqrt(715) * 6e-8 ~ 1.6e-6 relative to the largest
// value, a few times that after the normalisation arithmetic. 2e-5 leaves margin, and still
// catches a biased running variance (off by 0.1 * var / 714 ~ 1.4e-4 of the largest value) or
// a momentum applied the wrong way round (off by O(1)).
constexpr double kForwardTolerance = 2e-5;
// The backward pass sums two products per element over the same 715 elements and subtracts
// terms of similar size for dX; 5e-5 of the largest output covers that rounding, while a
// missing term (the mean of dY or of dY * xhat) is off by O(1).
constexpr double kBackwardTolerance = 5e-5;

struct Inputs {
  Tensor x, scale, bias, mean, var;
};

Inputs inputs(const Shape& shape, uint64_t seed) {
  const int64_t c = shape[1];
  return {random_tensor(DType::f32, shape, seed, -2, 3), random_tensor(DType::f32, {c}, seed + 1, 0.5, 1.5),
          random_tensor(DType::f32, {c}, seed + 2), random_tensor(DType::f32, {c}, seed + 3),
          random_tensor(DType::f32, {c}, seed + 4, 0.5, 2)};
}

// X and Y of type `dt` (float32, or half with float32 statistics).
KernelCase training_case(const Shape& shape, uint64_t seed, bool running, bool saved, DType dt = DType::f32) {
  Inputs in = inputs(shape, seed);
  if (dt != DType::f32) in.x = random_tensor(dt, shape, seed, -2, 3);
  const Shape c{shape[1]};
  KernelCase k("BatchNormTraining", "oxtrain", {in.x, in.scale, in.bias, in.mean, in.var},
               {{dt, shape}, running ? OutputSpec{DType::f32, c} : kNone,
                running ? OutputSpec{DType::f32, c} : kNone, saved ? OutputSpec{DType::f32, c} : kNone,
                saved ? OutputSpec{DType::f32, c} : kNone});
  k.set_attr("epsilon", Attribute{1e-5f});
  k.set_attr("momentum", Attribute{0.9f});
  return k;
}

// dY, X and dX of type `dt`.
KernelCase grad_case(const Shape& shape, uint64_t seed, bool dx, DType dt = DType::f32) {
  const int64_t c = shape[1];
  KernelCase k("BatchNormGrad", "oxtrain",
               {random_tensor(dt, shape, seed), random_tensor(dt, shape, seed + 1, -2, 3),
                random_tensor(DType::f32, {c}, seed + 2, 0.5, 1.5),
                random_tensor(DType::f32, {c}, seed + 3, 0, 1),
                random_tensor(DType::f32, {c}, seed + 4, 0.5, 2)},
               {dx ? OutputSpec{dt, shape} : kNone, {DType::f32, {c}}, {DType::f32, {c}}});
  return k;
}

TEST(CudaNorm, InferenceMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (const Shape& shape : {Shape{5, 7, 11, 13}, Shape{6, 5}, Shape{2, 3, 4, 5, 6}}) {
    Inputs in = inputs(shape, 31);
    KernelCase k("BatchNormalization", "", {in.x, in.scale, in.bias, in.mean, in.var},
                 {{DType::f32, shape}});
    k.set_attr("epsilon", Attribute{1e-3f});
    EXPECT_TRUE(cuda_matches_cpu(k, kForwardTolerance)) << text(shape);
  }
}

// Shapes for both paths: 7 and 5 channels (rows of 28 and 20 bytes) and one element per
// channel ([1, 8, 1, 1]) run on the own kernels; 4 channels with 3 elements each, 8 and 16
// channels on cuDNN.
const std::vector<Shape>& training_shapes() {
  static const std::vector<Shape> shapes = {Shape{5, 7, 11, 13}, Shape{6, 5},  Shape{3, 4, 1, 1},
                                            Shape{1, 8, 1, 1},   Shape{5, 8, 11, 13}, Shape{6, 16},
                                            Shape{2, 16, 3, 4, 5}};
  return shapes;
}

TEST(CudaNorm, TrainingMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  // Y, running mean, running variance (unbiased, momentum on the previous value), saved mean,
  // saved inverse standard deviation.
  for (const Shape& shape : training_shapes()) {
    KernelCase k = training_case(shape, 41, true, true);
    EXPECT_TRUE(cuda_matches_cpu(k, kForwardTolerance)) << text(shape);
  }
  // ONNX's population-variance running update (`oxtrain run`): the own kernel.
  KernelCase population = training_case({5, 8, 11, 13}, 42, true, true);
  population.set_attr("unbiased_running_var", Attribute{int64_t{0}});
  EXPECT_TRUE(cuda_matches_cpu(population, kForwardTolerance));
}

// Half X, Y, dY and dX with float32 statistics, on both paths: the GPU widens, computes in
// float32 and rounds as the CPU's emulation of half does; statistics summed in another order
// move a value by at most a rounding step of the half result.
TEST(CudaNorm, HalfMatchesCpuOnBothPaths) {
  OXTRAIN_REQUIRE_GPU();
  for (DType h : {DType::f16, DType::bf16})
    for (const Shape& shape : {Shape{4, 12, 5, 7}, Shape{4, 16, 5, 7}}) {  // own kernel, cuDNN
      SCOPED_TRACE(std::string(graph::dtype_name(h)) + " " + text(shape));
      const double tolerance = h == DType::f16 ? 2e-3 : 1.6e-2;  // two ulps of the largest value
      KernelCase t = training_case(shape, 43, true, true, h);
      EXPECT_TRUE(cuda_matches_cpu(t, tolerance));
      KernelCase g = grad_case(shape, 45, true, h);
      EXPECT_TRUE(cuda_matches_cpu(g, tolerance));
    }
}

TEST(CudaNorm, TrainingWithOmittedOutputsMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  KernelCase no_running = training_case({5, 7, 11, 13}, 51, false, true);
  EXPECT_TRUE(cuda_matches_cpu(no_running, kForwardTolerance));
  KernelCase only_y = training_case({5, 7, 11, 13}, 52, false, false);
  EXPECT_TRUE(cuda_matches_cpu(only_y, kForwardTolerance));
}

TEST(CudaNorm, GradMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (const Shape& shape : training_shapes()) {
    KernelCase k = grad_case(shape, 61, true);
    EXPECT_TRUE(cuda_matches_cpu(k, kBackwardTolerance)) << text(shape);
  }
  // dX omitted (the gradient of a graph input nobody asked for): only dScale and dBias.
  KernelCase k = grad_case({5, 7, 11, 13}, 71, false);
  EXPECT_TRUE(cuda_matches_cpu(k, kBackwardTolerance));
}

#ifdef OXTRAIN_HAVE_CUDA
// Which nodes run on cuDNN and which on the own kernels, decided without a device: cuDNN
// where each channel's row of X is a multiple of 16 bytes and a channel has more than one
// element, and the running variance is PyTorch's unbiased one.
TEST(CudaNorm, CudnnRunsWhatItHasEnginesFor) {
  struct Case {
    Shape shape;
    DType dtype;
    bool cudnn;
  };
  const Case cases[] = {
      {{5, 64, 56, 56}, DType::f32, true}, {{5, 7, 11, 13}, DType::f32, false}, {{6, 5}, DType::f32, false},
      {{6, 16}, DType::f32, true},         {{1, 8, 1, 1}, DType::f32, false},   {{2, 8, 1, 1}, DType::f32, true},
      {{4, 12, 5, 7}, DType::f32, true},   {{4, 12, 5, 7}, DType::bf16, false}, {{4, 16, 5, 7}, DType::f16, true},
  };
  for (const Case& c : cases) {
    KernelCase t = training_case(c.shape, 1, true, true, c.dtype);
    EXPECT_EQ(runtime::cudnn::batchnorm_uses_cudnn(t.node()), c.cudnn) << "training " << text(c.shape);
    KernelCase g = grad_case(c.shape, 2, true, c.dtype);
    EXPECT_EQ(runtime::cudnn::batchnorm_uses_cudnn(g.node()), c.cudnn) << "grad " << text(c.shape);
  }
  KernelCase population = training_case({5, 64, 56, 56}, 3, true, true);
  population.set_attr("unbiased_running_var", Attribute{int64_t{0}});
  EXPECT_FALSE(runtime::cudnn::batchnorm_uses_cudnn(population.node()));
}

TEST(CudaNorm, RefusesFloat64) {
  const runtime::KernelFactory* factory =
      runtime::KernelRegistry::global().find("oxtrain", "BatchNormTraining", runtime::Device::cuda);
  ASSERT_NE(factory, nullptr);
  const Shape shape{2, 3, 4, 4};
  std::vector<Tensor> ins{random_tensor(DType::f64, shape, 1)};
  for (int i = 0; i < 4; ++i) ins.push_back(random_tensor(DType::f64, {3}, 2 + i, 0.5, 1));
  KernelCase k("BatchNormTraining", "oxtrain", ins, {{DType::f64, shape}, kNone, kNone, kNone, kNone});
  try {
    (*factory)(runtime::KernelInit{k.node(), 17, runtime::Device::cuda, nullptr, Precision::fp32});
    FAIL() << "float64 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("take float32, float16 or bfloat16, got float64"), std::string::npos) << e.what();
  }
}

// Batch-norm engines are compiled at run time (NVRTC), which cuDNN does only with the CUDA
// driver loaded; without it their plans cannot be built even for another device.
bool cuda_driver_present(std::string* why) {
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!driver) {
    *why = "the CUDA driver (libcuda.so.1) is not installed; cuDNN builds its runtime-compiled "
           "batch-norm engines only with it";
    return false;
  }
  dlclose(driver);
  return true;
}

// Runs this test program again, for one test, with the CUDA toolkit's stub driver as
// libcuda.so.1 and OXTRAIN_STUB_DRIVER set: cuDNN lists and compiles engines for another device
// only with a driver loaded, and the stub lets it get as far as loading a compiled kernel.
// Returns false (with `why`) where there is no stub to use.
bool rerun_under_stub_driver(const std::string& test, std::string* output, int* status, std::string* why) {
#ifdef OXTRAIN_CUDA_STUB_DRIVER
  const std::string stub = OXTRAIN_CUDA_STUB_DRIVER;
#else
  const std::string stub;
#endif
  if (stub.empty() || access(stub.c_str(), R_OK) != 0) {
    *why = "no CUDA driver here and no stub driver at '" + stub + "'";
    return false;
  }
  char dir_template[] = "/tmp/oxtrain-stub-XXXXXX";
  const char* dir = mkdtemp(dir_template);
  if (!dir) {
    *why = "cannot make a directory for the stub driver";
    return false;
  }
  const std::string link = std::string(dir) + "/libcuda.so.1";
  struct Cleanup {
    std::string link, dir;
    ~Cleanup() {
      unlink(link.c_str());
      rmdir(dir.c_str());
    }
  } cleanup{link, dir};
  if (symlink(stub.c_str(), link.c_str()) != 0) {
    *why = "cannot link the stub driver into " + std::string(dir);
    return false;
  }
  // The one test, whole: no sharding or report file of the outer run.
  const char* path = std::getenv("LD_LIBRARY_PATH");
  const std::string command = "env -u GTEST_SHARD_INDEX -u GTEST_TOTAL_SHARDS -u GTEST_OUTPUT OXTRAIN_STUB_DRIVER=1 "
                              "LD_LIBRARY_PATH='" + std::string(dir) + (path ? std::string(":") + path : std::string()) +
                              "' /proc/" + std::to_string(getpid()) + "/exe --gtest_filter='" + test + "' 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) {
    *why = "cannot start the test program again";
    return false;
  }
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) output->append(buffer, n);
  *status = pclose(pipe);
  return true;
}

// Where this process has no CUDA driver, runs `test` again under the stub driver and checks that
// it passed there: kDone. kHere where the caller runs the checks itself (a driver is loaded, or
// this is that rerun); kSkip (with `why`) where neither can be.
enum class DevicelessRun { kHere, kDone, kSkip };
DevicelessRun here_or_under_stub(const std::string& test, std::string* why) {
  if (std::getenv("OXTRAIN_STUB_DRIVER") || cuda_driver_present(why)) return DevicelessRun::kHere;
  std::string output;
  int status = 0;
  if (!rerun_under_stub_driver(test, &output, &status, why)) return DevicelessRun::kSkip;
  EXPECT_EQ(status, 0) << output;
  EXPECT_NE(output.find("[  PASSED  ] 1 test"), std::string::npos) << output;
  EXPECT_EQ(output.find("SKIPPED"), std::string::npos) << output;
  return DevicelessRun::kDone;
}

// cuDNN's heuristics offer the node an engine for an H100 in `precision`, and a plan builds.
// Under the stub driver a plan of an engine compiled at run time cannot finish (loading the
// compiled kernel needs a GPU), so there the first allowed one must build, or compile and fail
// only at that step.
void expect_h100_engine(KernelCase& k, Precision precision) {
  SCOPED_TRACE(k.node().op_type + " " + runtime::precision_name(precision));
  const bool stub = std::getenv("OXTRAIN_STUB_DRIVER") != nullptr;
  const auto support =
      runtime::cudnn::deviceless_support(k.node(), precision, runtime::cudnn::h100_target(), stub ? 1 : -1);
  EXPECT_GE(support.configs, 1) << support.failure;
  if (stub) {
    EXPECT_EQ(support.allowed, 1);
    EXPECT_TRUE(support.supported == 1 || support.failure.find("cuLibraryLoadData") != std::string::npos)
        << support.failure;
  } else {
    EXPECT_GE(support.supported, 1) << support.failure;
  }
}

// ResNet's batch norms (channels-first float32 in both precisions, channels-last bfloat16) have
// H100 engines. Their engines are compiled at run time (NVRTC), which cuDNN does only with a
// driver loaded: without one the test runs again under the toolkit's stub driver.
TEST(CudnnDeviceless, ResnetBatchNormHasH100Plans) {
  // With a GPU the CudaNorm tests build these plans for real.
  if (test::gpu_available()) GTEST_SKIP() << "a GPU is here: CudaNorm.* build the plans on it";
  std::string why;
  const DevicelessRun run = here_or_under_stub("CudnnDeviceless.ResnetBatchNormHasH100Plans", &why);
  if (run == DevicelessRun::kSkip) GTEST_SKIP() << why;
  if (run == DevicelessRun::kDone) return;
  const Shape shape{5, 64, 56, 56};
  KernelCase training = training_case(shape, 1, true, true);
  KernelCase grad = grad_case(shape, 2, true);
  for (KernelCase* k : {&training, &grad})
    for (Precision p : {Precision::fp32, Precision::tf32}) expect_h100_engine(*k, p);
  // Channels-last bfloat16 (the downsample branches' batch norms, not fused with a ReLU).
  const Shape nhwc{5, 56, 56, 64}, c{64};
  KernelCase half_training("BatchNormTraining", "oxtrain",
                           {random_tensor(DType::bf16, nhwc, 3), random_tensor(DType::f32, c, 4, 0.5, 1.5),
                            random_tensor(DType::f32, c, 5), random_tensor(DType::f32, c, 6),
                            random_tensor(DType::f32, c, 7, 0.5, 2)},
                           {{DType::bf16, nhwc}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}});
  half_training.set_attr("epsilon", Attribute{1e-5f});
  half_training.set_attr("momentum", Attribute{0.9f});
  KernelCase half_grad("BatchNormGrad", "oxtrain",
                       {random_tensor(DType::bf16, nhwc, 8), random_tensor(DType::bf16, nhwc, 9),
                        random_tensor(DType::f32, c, 10, 0.5, 1.5), random_tensor(DType::f32, c, 11),
                        random_tensor(DType::f32, c, 12, 0.5, 2)},
                       {{DType::bf16, nhwc}, {DType::f32, c}, {DType::f32, c}});
  for (KernelCase* k : {&half_training, &half_grad}) {
    k->set_attr(graph::kChannelsLast, Attribute{int64_t{1}});
    expect_h100_engine(*k, Precision::tf32);
  }
}
#endif  // OXTRAIN_HAVE_CUDA

}  // namespace

#ifdef OXTRAIN_HAVE_CUDA
namespace {

// The fused batch norms of a ResNet block in `dt`: channels-last, [N, H, W, C] stored and
// [N, C, H, W] seen; else [N, C, H, W].
KernelCase fused_training_case(const Shape& nhwc, bool residual, DType dt, bool channels_last = true) {
  const Shape c{nhwc[channels_last ? 3 : 1]};
  std::vector<Tensor> ins = {random_tensor(dt, nhwc, 41, -2, 3), random_tensor(DType::f32, c, 42, 0.5, 1.5),
                             random_tensor(DType::f32, c, 43), random_tensor(DType::f32, c, 44),
                             random_tensor(DType::f32, c, 45, 0.5, 2)};
  if (residual) ins.push_back(random_tensor(dt, nhwc, 46));
  KernelCase k("BatchNormReluTraining", "oxtrain", ins,
               {{dt, nhwc}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}, {DType::f32, c}});
  k.set_attr("epsilon", Attribute{1e-5f});
  k.set_attr("momentum", Attribute{0.9f});
  if (channels_last) k.set_attr(graph::kChannelsLast, Attribute{int64_t{1}});
  return k;
}

KernelCase fused_grad_case(const Shape& nhwc, bool to_residual, DType dt) {
  const Shape c{nhwc[3]};
  std::vector<OutputSpec> outs = {{dt, nhwc}, {DType::f32, c}, {DType::f32, c}};
  if (to_residual) outs.push_back({dt, nhwc});
  KernelCase k("BatchNormReluGrad", "oxtrain",
               {random_tensor(dt, nhwc, 51), random_tensor(dt, nhwc, 52, 0, 2), random_tensor(dt, nhwc, 53, -2, 3),
                random_tensor(DType::f32, c, 54, 0.5, 1.5), random_tensor(DType::f32, c, 55),
                random_tensor(DType::f32, c, 56, 0.5, 2)},
               outs);
  k.set_attr(graph::kChannelsLast, Attribute{int64_t{1}});
  return k;
}

}  // namespace

// Which kernel a fused batch norm gets, as `oxtrain graph --device cuda` reports it through
// Kernel::describe() (without a GPU: compiled, no plan chosen): the forward is one cuDNN graph in
// either layout, the gradient channels-last only; channels-first it is the ReluGrad pass, then
// cuDNN's batch-norm backward.
TEST(CudnnFused, KernelsSayWhichFormTheyRun) {
  auto compiled = [](KernelCase& k) {
    const runtime::KernelFactory* f =
        runtime::KernelRegistry::global().find("oxtrain", k.node().op_type, runtime::Device::cuda);
    return (*f)(runtime::KernelInit{k.node(), 1, runtime::Device::cuda, nullptr, Precision::tf32})->describe();
  };
  const std::string cudnn = "cuDNN: no plan chosen (compiled without a GPU)";
  KernelCase forward_last = fused_training_case({8, 14, 14, 64}, true, DType::bf16);
  KernelCase forward_first = fused_training_case({8, 64, 14, 14}, true, DType::f32, false);
  KernelCase grad_last = fused_grad_case({8, 14, 14, 64}, true, DType::bf16);
  EXPECT_EQ(compiled(forward_last), cudnn);
  EXPECT_EQ(compiled(forward_first), cudnn);
  EXPECT_EQ(compiled(grad_last), cudnn);
  KernelCase grad_nchw("BatchNormReluGrad", "oxtrain",
                       {random_tensor(DType::f32, {8, 64, 14, 14}, 57), random_tensor(DType::f32, {8, 64, 14, 14}, 58, 0, 2),
                        random_tensor(DType::f32, {8, 64, 14, 14}, 59), random_tensor(DType::f32, {64}, 60, 0.5, 1.5),
                        random_tensor(DType::f32, {64}, 61), random_tensor(DType::f32, {64}, 62, 0.5, 2)},
                       {{DType::f32, {8, 64, 14, 14}}, {DType::f32, {64}}, {DType::f32, {64}}});
  EXPECT_EQ(compiled(grad_nchw), "ReluGrad in a pass of its own, then " + cudnn);
}

// The fused batch norms' cuDNN graphs (runtime/cuda/batchnorm.cc: batch norm + residual Add +
// ReLU, and ReLU's gradient + batch norm's backward) for an H100, with and without the
// residual: channels-last in bfloat16, float16 and float32, and the forward channels-first
// (cuDNN has no backward pattern there). cuDNN's heuristics must offer engines, and the first
// one's plan must build (under the stub driver: compile, and fail only where it loads the kernel
// on a GPU). A pattern cuDNN has no engine for (RELU_BWD(dZ, Z) instead of dZ * (Z > 0)) fails
// here.
TEST(CudnnDeviceless, FusedBatchNormPatternsHaveH100Engines) {
  if (test::gpu_available()) GTEST_SKIP() << "a GPU is here: the CUDA tests build these plans on it";
  std::string why;
  const DevicelessRun run = here_or_under_stub("CudnnDeviceless.FusedBatchNormPatternsHaveH100Engines", &why);
  if (run == DevicelessRun::kSkip) GTEST_SKIP() << why;
  if (run == DevicelessRun::kDone) return;
  struct Case {
    Shape x;  // as stored
    DType dt;
    bool channels_last;
  };
  const Case cases[] = {{{128, 56, 56, 64}, DType::bf16, true},
                        {{128, 56, 56, 64}, DType::f16, true},
                        {{128, 7, 7, 512}, DType::bf16, true},
                        {{128, 28, 28, 128}, DType::f32, true},
                        {{128, 64, 56, 56}, DType::f32, false},
                        {{128, 256, 14, 14}, DType::bf16, false}};
  for (const Case& c : cases)
    for (bool residual : {false, true}) {
      SCOPED_TRACE(std::string(graph::dtype_name(c.dt)) + " " + graph::shape_str(c.x) +
                   (c.channels_last ? " channels-last" : "") + (residual ? " with the residual" : ""));
      KernelCase forward = fused_training_case(c.x, residual, c.dt, c.channels_last);
      expect_h100_engine(forward, Precision::tf32);
      if (!c.channels_last) continue;
      KernelCase backward = fused_grad_case(c.x, residual, c.dt);
      expect_h100_engine(backward, Precision::tf32);
    }
  // Strict float32 leaves them too.
  KernelCase strict = fused_training_case({128, 64, 56, 56}, true, DType::f32, false);
  expect_h100_engine(strict, Precision::fp32);
}
// The convolution and batch-norm fusion's cuDNN graphs (runtime/cuda/conv.cc) for ResNet-50's
// convolutions at batch 128 on an H100, float16 channels-last: conv + genstats (a block's first
// convolution, which reads the block's input), with the scale-bias-ReLU prologue (the second
// and third), the weight gradient through the prologue, and the data gradient through the ReLU
// into batch norm's weight gradients. Each must have an engine.
TEST(CudnnDeviceless, ConvBatchNormFusionHasH100Engines) {
  if (test::gpu_available()) GTEST_SKIP() << "a GPU is here: CudaConvStats.* build these plans on it";
  std::string why;
  const DevicelessRun run = here_or_under_stub("CudnnDeviceless.ConvBatchNormFusionHasH100Engines", &why);
  if (run == DevicelessRun::kSkip) GTEST_SKIP() << why;
  if (run == DevicelessRun::kDone) return;
  struct Conv {
    int64_t c, k, h, r, stride;
  };
  const DType dt = DType::f16;
  for (const Conv& v : {Conv{64, 64, 56, 1, 1}, Conv{64, 64, 56, 3, 1}, Conv{128, 128, 56, 3, 2}, Conv{512, 2048, 7, 1, 1}}) {
    const int64_t pad = v.r / 2, out = (v.h + 2 * pad - v.r) / v.stride + 1;
    const Shape x{128, v.h, v.h, v.c}, w{v.k, v.r, v.r, v.c}, y{128, out, out, v.k}, c{v.c};
    auto window = [&](KernelCase& k) {
      k.set_attr("pads", Attribute{std::vector<int64_t>{pad, pad, pad, pad}});
      k.set_attr("strides", Attribute{std::vector<int64_t>{v.stride, v.stride}});
      k.set_attr(graph::kChannelsLast, Attribute{int64_t{1}});
    };
    for (bool prologue : {false, true}) {
      SCOPED_TRACE("C " + std::to_string(v.c) + " K " + std::to_string(v.k) + " " + std::to_string(v.r) + "x" +
                   std::to_string(v.r) + (prologue ? " with the prologue" : ""));
      std::vector<Tensor> ins = {random_tensor(dt, x, 71), random_tensor(dt, w, 72)};
      if (prologue) ins.insert(ins.end(), {random_tensor(dt, c, 73), random_tensor(dt, c, 74)});
      KernelCase stats("ConvStats", "oxtrain", ins, {{dt, y}, {DType::f32, {v.k}}, {DType::f32, {v.k}}});
      window(stats);
      expect_h100_engine(stats, Precision::tf32);
      if (!prologue) continue;
      KernelCase wgrad("ConvGradFilterScaleBiasRelu", "oxtrain",
                       {random_tensor(dt, y, 75), random_tensor(dt, x, 76), random_tensor(dt, c, 77),
                        random_tensor(dt, c, 78)},
                       {{dt, w}});
      window(wgrad);
      wgrad.set_attr("filter_shape", Attribute{std::vector<int64_t>{v.k, v.c, v.r, v.r}});
      expect_h100_engine(wgrad, Precision::tf32);
      // The data gradient through the ReLU into batch norm's weight gradients.
      KernelCase dgrad("ConvGradDataReluBatchNormWeight", "oxtrain",
                       {random_tensor(dt, y, 79), random_tensor(dt, w, 80), random_tensor(dt, x, 81),
                        random_tensor(DType::f32, c, 82, 0.5, 1.5), random_tensor(DType::f32, c, 83),
                        random_tensor(DType::f32, c, 84), random_tensor(DType::f32, c, 85, 0.5, 2)},
                       {{dt, x}, {DType::f32, c}, {DType::f32, c}});
      window(dgrad);
      dgrad.set_attr("input_shape", Attribute{std::vector<int64_t>{128, v.c, v.h, v.h}});
      expect_h100_engine(dgrad, Precision::tf32);
    }
  }
}

// The on-disk plan cache (OXTRAIN_PLAN_CACHE): a convolution's plan for an H100 is serialized,
// written, read back and deserialized with the same workspace, and a second recipe of the node
// binds the same tensor uids (the variant pack of a loaded plan is made from them). Precompiled
// engines build fully under the stub driver.
TEST(CudnnDeviceless, PlanCacheRoundTripsAConvolutionPlan) {
  std::string why;
  const DevicelessRun run = here_or_under_stub("CudnnDeviceless.PlanCacheRoundTripsAConvolutionPlan", &why);
  if (run == DevicelessRun::kSkip) GTEST_SKIP() << why;
  if (run == DevicelessRun::kDone) return;
  KernelCase conv("Conv", "", {random_tensor(DType::f32, {8, 64, 28, 28}, 1), random_tensor(DType::f32, {64, 64, 3, 3}, 2)},
                  {{DType::f32, {8, 64, 28, 28}}});
  conv.set_attr("pads", Attribute{std::vector<int64_t>{1, 1, 1, 1}});
  const std::string dir = test::temp_dir();
  const std::string path = runtime::cudnn::plan_file_path(dir, "a key");
  const auto trip = runtime::cudnn::deviceless_plan_round_trip(conv.node(), Precision::tf32,
                                                               runtime::cudnn::h100_target(), path);
  ASSERT_TRUE(trip.failure.empty()) << trip.failure;
  EXPECT_FALSE(trip.engine.empty());
  EXPECT_GT(trip.plan_bytes, 100u);
  EXPECT_GE(trip.built_workspace, 0);
  EXPECT_EQ(trip.loaded_workspace, trip.built_workspace);
  EXPECT_EQ(trip.plan_uids, 3u);  // X, W, Y
  EXPECT_TRUE(trip.same_uids);
  EXPECT_TRUE(trip.same_graph_hash);
}
#endif

#ifdef OXTRAIN_HAVE_CUDA
// The cache's files: read back as written, and refused when damaged or another key's.
TEST(CudnnPlanCache, FilesReadBackOnlyWhenWhole) {
  namespace cd = runtime::cudnn;
  const std::string dir = test::temp_dir() + "/plans";
  cd::PlanFile f;
  f.key = "Conv|8x64x28x28|tf32|fastest|NVIDIA H100|cudnn 91900";
  f.engine = "eng0_k2=1";
  f.ms = 0.125;
  f.measured = 7;
  for (int i = 0; i < 1000; ++i) f.plan.push_back(uint8_t(i * 37));
  const std::string path = cd::plan_file_path(dir, f.key);
  EXPECT_NE(path, cd::plan_file_path(dir, f.key + " "));
  ASSERT_TRUE(cd::write_plan_file(path, f));
  cd::PlanFile back;
  ASSERT_TRUE(cd::read_plan_file(path, f.key, &back));
  EXPECT_EQ(back.engine, f.engine);
  EXPECT_EQ(back.ms, f.ms);
  EXPECT_EQ(back.measured, f.measured);
  EXPECT_EQ(back.plan, f.plan);
  EXPECT_FALSE(cd::read_plan_file(path, f.key + "|other", &back));
  EXPECT_FALSE(cd::read_plan_file(dir + "/absent.plan", f.key, &back));
  // Cut short, or longer than its header says.
  const std::string text = test::read_text(path);
  for (size_t keep : {size_t{5}, text.size() / 2, text.size() - 1}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text.substr(0, keep);
    EXPECT_FALSE(cd::read_plan_file(path, f.key, &back)) << keep;
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text << "x";
  EXPECT_FALSE(cd::read_plan_file(path, f.key, &back));
  setenv("OXTRAIN_PLAN_CACHE", dir.c_str(), 1);
  EXPECT_EQ(cd::plan_cache_dir(), dir);
  unsetenv("OXTRAIN_PLAN_CACHE");
  EXPECT_EQ(cd::plan_cache_dir(), "");
}
#endif
