// CUDA (cuDNN) Conv, oxtrain.ConvGradData and oxtrain.ConvGradFilter against their CPU twins
// on odd shapes (strides, asymmetric pads, dilations, groups, bias) in fp32-strict and TF32
// precision; the chosen plan a kernel reports; compile-time refusals; and, without a GPU, plan
// support for ResNet convolutions on an H100 from serialized device properties.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "autodiff/training.h"
#include "graph/ir.h"
#include "graph/ops.h"
#include "runtime/device_runtime.h"
#include "runtime/kernel.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/context.h"
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
using test::random_tensor;

namespace {

struct ConvCase {
  std::string label;
  Shape x, w;
  std::vector<int64_t> strides, pads, dilations;
  int64_t group = 1;
  bool bias = false;
};

int64_t out_dim(int64_t in, int64_t k, int64_t s, int64_t pb, int64_t pe, int64_t d) {
  return (in + pb + pe - d * (k - 1) - 1) / s + 1;
}

// 1, 2 or 3 spatial axes; pads = [begins..., ends...].
Shape out_shape(const ConvCase& c) {
  const size_t r = c.x.size() - 2;
  Shape y{c.x[0], c.w[0]};
  for (size_t i = 0; i < r; ++i)
    y.push_back(out_dim(c.x[i + 2], c.w[i + 2], c.strides[i], c.pads[i], c.pads[i + r], c.dilations[i]));
  return y;
}

const std::vector<ConvCase>& cases() {
  static const std::vector<ConvCase> all = {
      {"3x3 stride 2 pad 1 bias", {5, 7, 11, 13}, {6, 7, 3, 3}, {2, 2}, {1, 1, 1, 1}, {1, 1}, 1, true},
      {"grouped 3x3 asymmetric pads bias", {5, 6, 11, 13}, {9, 2, 3, 3}, {1, 2}, {1, 0, 2, 1}, {1, 1}, 3, true},
      {"depthwise 3x3 dilation 2", {5, 8, 11, 13}, {8, 1, 3, 3}, {1, 1}, {2, 2, 2, 2}, {2, 2}, 8, false},
      {"1x1", {5, 7, 11, 13}, {16, 7, 1, 1}, {1, 1}, {0, 0, 0, 0}, {1, 1}, 1, false},
      {"5x3 stride 3x1 no pad", {3, 4, 17, 9}, {5, 4, 5, 3}, {3, 1}, {0, 0, 0, 0}, {1, 1}, 1, true},
      {"1-D stride 2 group 2 bias", {4, 6, 29}, {8, 3, 5}, {2}, {2, 1}, {1}, 2, true},
      {"3-D 3x3x3 pad 1 bias", {3, 5, 6, 9, 8}, {6, 5, 3, 3, 3}, {1, 1, 1}, {1, 1, 1, 1, 1, 1}, {1, 1, 1}, 1, true},
      {"3-D strides (1,2,2) asymmetric pads group 2", {3, 4, 7, 11, 10}, {6, 2, 3, 1, 3}, {1, 2, 2},
       {1, 0, 1, 0, 0, 2}, {1, 1, 2}, 2, false},
  };
  return all;
}

void set_attrs(KernelCase& k, const ConvCase& c) {
  k.set_attr("strides", Attribute{c.strides});
  k.set_attr("pads", Attribute{c.pads});
  k.set_attr("dilations", Attribute{c.dilations});
  k.set_attr("group", Attribute{c.group});
  k.set_attr("kernel_shape", Attribute{std::vector<int64_t>(c.w.begin() + 2, c.w.end())});
}

KernelCase forward_case(const ConvCase& c, uint64_t seed) {
  std::vector<Tensor> ins{random_tensor(DType::f32, c.x, seed), random_tensor(DType::f32, c.w, seed + 1)};
  if (c.bias) ins.push_back(random_tensor(DType::f32, {c.w[0]}, seed + 2, -3, 3));
  KernelCase k("Conv", "", ins, {{DType::f32, out_shape(c)}});
  set_attrs(k, c);
  return k;
}

KernelCase grad_data_case(const ConvCase& c, uint64_t seed) {
  KernelCase k("ConvGradData", "oxtrain",
               {random_tensor(DType::f32, out_shape(c), seed), random_tensor(DType::f32, c.w, seed + 1)},
               {{DType::f32, c.x}});
  set_attrs(k, c);
  k.set_attr("input_shape", Attribute{std::vector<int64_t>(c.x)});
  return k;
}

KernelCase grad_filter_case(const ConvCase& c, uint64_t seed) {
  KernelCase k("ConvGradFilter", "oxtrain",
               {random_tensor(DType::f32, out_shape(c), seed), random_tensor(DType::f32, c.x, seed + 1)},
               {{DType::f32, c.w}});
  set_attrs(k, c);
  k.set_attr("filter_shape", Attribute{std::vector<int64_t>(c.w)});
  return k;
}

// fp32 strict: both devices sum float32 products exactly rounded, in different orders. The
// longest sums here (ConvGradFilter: N*oH*oW = 5*11*13 = 715 terms) carry random-sign rounding
// errors of about sqrt(715) * 6e-8 ~ 1.6e-6 of the largest partial sum, well below 1e-5 of the
// largest output; a wrong tap, pad or group is off by far more.
constexpr double kStrictTolerance = 1e-5;
// TF32 rounds each input to a 10-bit mantissa (relative error up to 2^-11 ~ 4.9e-4) before the
// products; over tens to hundreds of terms of mixed sign the result stays within 5e-3 of the
// largest output, while an indexing error is off by O(1).
constexpr double kTf32Tolerance = 5e-3;

TEST(CudaConv, ForwardMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const ConvCase& c : cases()) {
    SCOPED_TRACE(c.label);
    KernelCase k = forward_case(c, seed += 10);
    EXPECT_TRUE(cuda_matches_cpu(k, kStrictTolerance, 17, Precision::fp32));
  }
}

TEST(CudaConv, GradDataMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 200;
  for (const ConvCase& c : cases()) {
    SCOPED_TRACE(c.label);
    KernelCase k = grad_data_case(c, seed += 10);
    EXPECT_TRUE(cuda_matches_cpu(k, kStrictTolerance, 17, Precision::fp32));
  }
}

TEST(CudaConv, GradFilterMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 300;
  for (const ConvCase& c : cases()) {
    SCOPED_TRACE(c.label);
    KernelCase k = grad_filter_case(c, seed += 10);
    EXPECT_TRUE(cuda_matches_cpu(k, kStrictTolerance, 17, Precision::fp32));
  }
}

TEST(CudaConv, Tf32MatchesCpuLoosely) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 400;
  for (const ConvCase& c : cases()) {
    SCOPED_TRACE(c.label);
    KernelCase f = forward_case(c, seed += 10);
    EXPECT_TRUE(cuda_matches_cpu(f, kTf32Tolerance, 17, Precision::tf32));
    KernelCase d = grad_data_case(c, seed += 10);
    EXPECT_TRUE(cuda_matches_cpu(d, kTf32Tolerance, 17, Precision::tf32));
    KernelCase w = grad_filter_case(c, seed += 10);
    EXPECT_TRUE(cuda_matches_cpu(w, kTf32Tolerance, 17, Precision::tf32));
  }
}

// Every output element is written: the GPU output buffer starts as NaN garbage here, not zero.
TEST(CudaConv, OverwritesOutput) {
  OXTRAIN_REQUIRE_GPU();
  const ConvCase& c = cases()[0];
  KernelCase k = forward_case(c, 7);
  auto rt = runtime::DeviceRuntime::create(runtime::Device::cuda, Precision::fp32);
  const runtime::KernelFactory* factory =
      runtime::KernelRegistry::global().find("", "Conv", runtime::Device::cuda);
  ASSERT_NE(factory, nullptr);
  auto kernel = (*factory)(runtime::KernelInit{k.node(), 17, runtime::Device::cuda, &rt->context(), Precision::fp32});
  runtime::KernelArgs args;
  std::vector<void*> buffers;
  for (size_t i = 0; i < 3; ++i) {
    Tensor& t = k.input(i);
    void* p = rt->allocate(static_cast<int64_t>(t.bytes.size()), "input");
    rt->copy_to_device(p, t.bytes.data(), t.bytes.size());
    buffers.push_back(p);
    args.inputs.push_back({p, t.dtype, t.shape});
  }
  Tensor out(DType::f32, out_shape(c));
  std::vector<uint8_t> nan_bytes(out.bytes.size(), 0xff);  // all-ones: NaN floats
  void* y = rt->allocate(static_cast<int64_t>(out.bytes.size()), "output");
  rt->copy_to_device(y, nan_bytes.data(), nan_bytes.size());
  buffers.push_back(y);
  args.outputs.push_back({y, DType::f32, out.shape});
  args.workspace_bytes = kernel->workspace_bytes();
  args.workspace = rt->allocate(static_cast<int64_t>(args.workspace_bytes), "workspace");
  buffers.push_back(args.workspace);
  args.context = &rt->context();
  kernel->run(args);
  rt->copy_to_host(out.bytes.data(), y, out.bytes.size());
  rt->synchronize();
  for (void* p : buffers) rt->release(p);
  k.run();  // CPU
  EXPECT_LE(test::max_relative_difference(out, k.output(0)), kStrictTolerance);
}

#ifdef OXTRAIN_HAVE_CUDA
// The CUDA Conv kernel of `k`, compiled in strict fp32 on `rt`'s context.
std::unique_ptr<runtime::Kernel> cuda_conv_kernel(KernelCase& k, runtime::DeviceRuntime& rt) {
  return (*runtime::KernelRegistry::global().find("", "Conv", runtime::Device::cuda))(
      runtime::KernelInit{k.node(), 17, runtime::Device::cuda, &rt.context(), Precision::fp32});
}

// The kernel reports the plan it measured and the workspace that plan needs.
TEST(CudaConv, ReportsChosenPlan) {
  OXTRAIN_REQUIRE_GPU();
  KernelCase k = forward_case(cases()[0], 9);
  auto rt = runtime::DeviceRuntime::create(runtime::Device::cuda, Precision::fp32);
  auto kernel = cuda_conv_kernel(k, *rt);
  auto* planned = dynamic_cast<runtime::cudnn::PlannedKernel*>(kernel.get());
  ASSERT_NE(planned, nullptr);
  const runtime::cudnn::ChosenPlan& plan = planned->chosen_plan();
  EXPECT_FALSE(plan.engine.empty());
  EXPECT_GE(plan.measured, 1);
  EXPECT_GT(plan.ms, 0.0);
  // The kernel's workspace is cuDNN's rounded up to the 256-byte alignment of its slices.
  EXPECT_EQ(static_cast<int64_t>(kernel->workspace_bytes()), (plan.workspace + 255) / 256 * 256);
  EXPECT_NE(planned->describe().find(plan.engine), std::string::npos) << planned->describe();
}

// Unmeasured (a seeded run: ExecContext::measure_plans off), the kernel keeps the heuristics'
// first plan that runs and times nothing.
TEST(CudaConv, UnmeasuredPlanIsTheHeuristicsFirstThatRuns) {
  OXTRAIN_REQUIRE_GPU();
  KernelCase k = forward_case(cases()[1], 13);
  auto rt = runtime::DeviceRuntime::create(runtime::Device::cuda, Precision::fp32);
  rt->set_measure_plans(false);
  EXPECT_FALSE(rt->context().measure_plans);
  auto kernel = cuda_conv_kernel(k, *rt);
  auto* planned = dynamic_cast<runtime::cudnn::PlannedKernel*>(kernel.get());
  ASSERT_NE(planned, nullptr);
  const runtime::cudnn::ChosenPlan& plan = planned->chosen_plan();
  EXPECT_FALSE(plan.engine.empty());
  EXPECT_EQ(plan.measured, 0);
  EXPECT_EQ(plan.ms, 0.0);
  EXPECT_NE(planned->describe().find("the heuristics' first that runs"), std::string::npos) << planned->describe();
  rt->set_measure_plans(true);  // the same node measured is compiled apart from the unmeasured one
  auto timed = cuda_conv_kernel(k, *rt);
  auto* timed_plan = dynamic_cast<runtime::cudnn::PlannedKernel*>(timed.get());
  ASSERT_NE(timed_plan, nullptr);
  EXPECT_GE(timed_plan->chosen_plan().measured, 1);
}

// Without a device (planning only) the factory still makes a kernel; it has no plan, reports
// no workspace and refuses to run.
TEST(CudaConv, WithoutDeviceHasNoPlanAndRefusesToRun) {
  const runtime::KernelFactory* factory =
      runtime::KernelRegistry::global().find("", "Conv", runtime::Device::cuda);
  ASSERT_NE(factory, nullptr);
  KernelCase k = forward_case(cases()[0], 11);
  auto kernel = (*factory)(runtime::KernelInit{k.node(), 17, runtime::Device::cuda, nullptr, Precision::fp32});
  EXPECT_EQ(kernel->workspace_bytes(), 0u);
  auto* planned = dynamic_cast<runtime::cudnn::PlannedKernel*>(kernel.get());
  ASSERT_NE(planned, nullptr);
  EXPECT_TRUE(planned->chosen_plan().engine.empty());
  runtime::CudaContext cuda_ctx;
  runtime::ExecContext ctx{runtime::Device::cuda, &cuda_ctx};
  runtime::KernelArgs args;
  args.context = &ctx;
  try {
    kernel->run(args);
    FAIL() << "a kernel without a plan ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without a GPU"), std::string::npos) << e.what();
  }
}

// Compile-time refusals name the node and what is wrong; they need no device.
TEST(CudaConv, RefusesFloat64AndBadShapes) {
  const runtime::KernelFactory* factory =
      runtime::KernelRegistry::global().find("", "Conv", runtime::Device::cuda);
  ASSERT_NE(factory, nullptr);
  {
    KernelCase k("Conv", "", {random_tensor(DType::f64, {1, 2, 5, 5}, 1), random_tensor(DType::f64, {3, 2, 3, 3}, 2)},
                 {{DType::f64, {1, 3, 3, 3}}});
    try {
      (*factory)(runtime::KernelInit{k.node(), 17, runtime::Device::cuda, nullptr, Precision::fp32});
      FAIL() << "float64 accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("take float32, float16 or bfloat16, got float64"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("test_Conv"), std::string::npos) << e.what();
    }
  }
  {
    KernelCase k("Conv", "", {random_tensor(DType::f32, {1, 2, 5, 5}, 1), random_tensor(DType::f32, {3, 2, 3, 3}, 2)},
                 {{DType::f32, {1, 3, 4, 4}}});
    try {
      (*factory)(runtime::KernelInit{k.node(), 17, runtime::Device::cuda, nullptr, Precision::fp32});
      FAIL() << "wrong output shape accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("does not match [1,3,3,3]"), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------
// Without a GPU: cuDNN builds plans for an H100 from its serialized device properties.

struct ResnetConv {
  std::string label;
  Shape x, w;
  std::vector<int64_t> pads;
};

void expect_supported(KernelCase& k, const std::string& what) {
  const auto target = runtime::cudnn::h100_target();
  const auto strict = runtime::cudnn::deviceless_support(k.node(), Precision::fp32, target);
  const auto tf32 = runtime::cudnn::deviceless_support(k.node(), Precision::tf32, target);
  EXPECT_GE(strict.supported, 1) << what << " fp32: " << strict.failure;
  EXPECT_GE(tf32.supported, 1) << what << " tf32: " << tf32.failure;
  // TF32 tensor-core engines exist for these convolutions on sm_90: strict mode must drop them.
  EXPECT_LT(strict.allowed, tf32.allowed) << what;
  EXPECT_LE(tf32.allowed, tf32.configs) << what;  // nondeterministic engines are left out
}

TEST(CudnnDeviceless, ResnetConvolutionsHaveH100Plans) {
  const std::vector<ResnetConv> convs = {
      {"64->64 3x3", {5, 64, 56, 56}, {64, 64, 3, 3}, {1, 1, 1, 1}},
      {"64->64 1x1", {5, 64, 56, 56}, {64, 64, 1, 1}, {0, 0, 0, 0}},
  };
  for (const ResnetConv& r : convs) {
    ConvCase c{r.label, r.x, r.w, {1, 1}, r.pads, {1, 1}, 1, false};
    KernelCase f = forward_case(c, 1);
    expect_supported(f, r.label + " Conv");
    c.bias = true;
    KernelCase fb = forward_case(c, 1);
    expect_supported(fb, r.label + " Conv with bias");
    KernelCase d = grad_data_case(c, 2);
    expect_supported(d, r.label + " ConvGradData");
    KernelCase w = grad_filter_case(c, 3);
    expect_supported(w, r.label + " ConvGradFilter");
  }
}
// The odd shapes the GPU tests run have fp32-strict plans on sm_90 too (else those tests
// would fail at compile time on an H100 rather than compare numbers).
TEST(CudnnDeviceless, TestShapesHaveStrictH100Plans) {
  const auto target = runtime::cudnn::h100_target();
  uint64_t seed = 500;
  for (const ConvCase& c : cases()) {
    KernelCase f = forward_case(c, seed += 10);
    KernelCase d = grad_data_case(c, seed += 10);
    KernelCase w = grad_filter_case(c, seed += 10);
    for (KernelCase* k : {&f, &d, &w}) {
      const auto support = runtime::cudnn::deviceless_support(k->node(), Precision::fp32, target);
      EXPECT_GE(support.supported, 1) << c.label << " " << k->node().op_type << ": " << support.failure;
    }
  }
}

// Every convolution of ResNet-50's training graph at batch 128 (forward, data and filter
// gradients), as `train` builds it in each precision, has a plan on an H100: fp32 strict and
// TF32 over NCHW, bf16 and fp16 channels-last (the stem's 3-channel NHWC input included, and
// KRSC filters). A shape without one would stop training there at compile time.
TEST(CudnnDeviceless, ResNet50TrainingConvolutionsHaveH100Plans) {
  const auto target = runtime::cudnn::h100_target();
  struct Config {
    const char* name;
    DType half;
    bool channels_last;
    Precision precision;
  };
  const Config configs[] = {{"fp32", DType::undefined, false, Precision::fp32},
                            {"tf32", DType::undefined, false, Precision::tf32},
                            {"bf16 channels-last", DType::bf16, true, Precision::tf32},
                            {"fp16 channels-last", DType::f16, true, Precision::tf32}};
  for (const Config& c : configs) {
    autodiff::TrainingOptions o;
    o.half = c.half;
    o.fuse_batchnorm_relu = true;
    o.recompute_batchnorm_relu = true;
    o.channels_last = c.channels_last;
    autodiff::TrainingGraph tg = autodiff::build_training_graph(test::zoo_at_batch("resnet50", 128, 224, 1000, 1), o);
    std::set<std::string> seen;
    for (const auto& n : tg.graph.nodes()) {
      if (n->op_type != "Conv" && n->op_type != "ConvGradData" && n->op_type != "ConvGradFilter") continue;
      std::string key = n->op_type;
      for (const graph::Value* v : n->inputs) key += v ? " " + v->shape_string() + graph::dtype_name(v->dtype) : " -";
      for (const char* a : {"strides", "pads", "dilations"})
        if (n->has_attr(a))
          for (int64_t v : n->attr_ints(a)) key += std::string(" ") + a + std::to_string(v);
      key += " group" + std::to_string(n->attr_int("group", 1)) + " nhwc" + std::to_string(n->attr_int(graph::kChannelsLast, 0));
      if (!seen.insert(key).second) continue;
      const auto support = runtime::cudnn::deviceless_support(*n, c.precision, target);
      EXPECT_GE(support.supported, 1) << c.name << ": " << n->describe() << " (" << key << "): " << support.failure;
    }
    EXPECT_GT(seen.size(), 30u) << c.name;  // ResNet-50 has 20 distinct convolutions, each with its gradients
  }
}

// The on-disk plan cache on the GPU: the first kernel builds and times its plan and writes it;
// with the process's plans forgotten, the next one loads it (the file is not written again) and
// computes the same bits; a damaged file is ignored and the plan is built again.
TEST(CudaConv, PlanCacheLoadsThePlanItWrote) {
  OXTRAIN_REQUIRE_GPU();
  namespace fs = std::filesystem;
  const std::string dir = test::temp_dir() + "/plans";
  setenv("OXTRAIN_PLAN_CACHE", dir.c_str(), 1);
  struct Unset {  // however the test ends, the rest of the suite runs without the cache
    ~Unset() {
      unsetenv("OXTRAIN_PLAN_CACHE");
      runtime::cudnn::forget_plans();
    }
  } unset;
  const ConvCase c{"3x3 pad 1", {4, 16, 19, 17}, {24, 16, 3, 3}, {1, 1}, {1, 1, 1, 1}, {1, 1}, 1, false};
  runtime::cudnn::forget_plans();
  KernelCase built = forward_case(c, 11);
  built.run(17, runtime::Device::cuda, runtime::Precision::tf32);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().string());
  ASSERT_EQ(files.size(), 1u) << "one plan file for one graph";
  runtime::cudnn::forget_plans();
  const auto written = fs::last_write_time(files[0]);
  KernelCase loaded = forward_case(c, 11);
  loaded.run(17, runtime::Device::cuda, runtime::Precision::tf32);
  EXPECT_EQ(fs::last_write_time(files[0]), written) << "loaded, not built and written again";
  EXPECT_EQ(loaded.output(0).bytes, built.output(0).bytes) << "the same plan gives the same bits";
  // A damaged file: built again, the same bits, the file rewritten whole.
  std::ofstream(files[0], std::ios::binary | std::ios::trunc) << "oxtrain cuDNN plan 1\n";
  runtime::cudnn::forget_plans();
  KernelCase rebuilt = forward_case(c, 11);
  rebuilt.run(17, runtime::Device::cuda, runtime::Precision::tf32);
  EXPECT_EQ(rebuilt.output(0).bytes, built.output(0).bytes);
  EXPECT_GT(fs::file_size(files[0]), 100u);
}
#endif  // OXTRAIN_HAVE_CUDA

}  // namespace
