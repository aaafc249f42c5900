// The image normalisation: a hand-computed case on the CPU, CPU vs CUDA on odd shapes where a
// GPU is present, and the oxtrain.NormalizeImages node that does it inside the training graph.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "autodiff/training.h"
#include "graph/ops.h"
#include "graph/passes.h"
#include "runtime/cpu/normalize.h"
#include "runtime/device.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/cuda/normalize.h"
#endif

using namespace oxtrain::runtime;

namespace {
const float kMean[3] = {0.485f, 0.456f, 0.406f};
const float kStd[3] = {0.229f, 0.224f, 0.225f};
}  // namespace

TEST(Normalize, CpuHandComputed) {
  // One 1x2 image, NHWC: pixel 0 = (0, 255, 128), pixel 1 = (10, 20, 30).
  const uint8_t in[6] = {0, 255, 128, 10, 20, 30};
  float out[6];
  NormalizeParams p{1, 1, 2, 3, kMean, kStd};
  normalize_u8_nhwc_to_f32_nchw_cpu(out, in, p);
  // NCHW: channel 0 holds pixels 0 and 1, then channel 1, then channel 2.
  const double expect[6] = {(0 / 255.0 - 0.485) / 0.229,   (10 / 255.0 - 0.485) / 0.229,
                            (255 / 255.0 - 0.456) / 0.224, (20 / 255.0 - 0.456) / 0.224,
                            (128 / 255.0 - 0.406) / 0.225, (30 / 255.0 - 0.406) / 0.225};
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(out[i], expect[i], 1e-5) << i;
}

TEST(Normalize, CudaMatchesCpu) {
  std::string why;
  if (cuda_devices(&why).empty()) GTEST_SKIP() << "no GPU to compare with: " << why;
#ifdef OXTRAIN_HAVE_CUDA
  NormalizeParams p{5, 7, 11, 3, kMean, kStd};
  size_t count = 5 * 7 * 11 * 3;
  std::vector<uint8_t> in(count);
  for (size_t i = 0; i < count; ++i) in[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  std::vector<float> cpu(count), gpu(count);
  normalize_u8_nhwc_to_f32_nchw_cpu(cpu.data(), in.data(), p);
  uint8_t* d_in = nullptr;
  float* d_out = nullptr;
  ASSERT_EQ(cudaMalloc(&d_in, count), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_out, count * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_in, in.data(), count, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cuda::normalize_u8_nhwc_to_f32_nchw(d_out, d_in, p, nullptr), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(gpu.data(), d_out, count * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  cudaFree(d_in);
  cudaFree(d_out);
  for (size_t i = 0; i < count; ++i) {
    ASSERT_FALSE(std::isnan(gpu[i])) << i;
    ASSERT_NEAR(gpu[i], cpu[i], 1e-6f * std::max(1.0f, std::fabs(cpu[i]))) << i;
  }
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

// ---------------------------------------------------------------------------------------
// oxtrain.NormalizeImages: the loader's pixels normalised inside the training graph.

namespace {

using oxtrain::graph::Attribute;
using oxtrain::graph::DType;
using oxtrain::graph::Tensor;

Tensor pixels(oxtrain::graph::Shape shape, uint64_t seed) {
  Tensor t(DType::u8, std::move(shape));
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    t.data<uint8_t>()[i] = static_cast<uint8_t>(state >> 56);
  }
  return t;
}

oxtrain::test::KernelCase normalize_case(const Tensor& px, DType to, bool channels_last) {
  const auto& s = px.shape;
  oxtrain::graph::Shape out{s[0], s[3], s[1], s[2]};
  if (channels_last) out = oxtrain::graph::to_channels_last_shape(out);
  oxtrain::test::KernelCase k("NormalizeImages", oxtrain::graph::kOxtrainDomain, {px}, {{to, out}});
  k.set_attr("mean", Attribute{std::vector<float>(kMean, kMean + 3)});
  k.set_attr("std", Attribute{std::vector<float>(kStd, kStd + 3)});
  k.set_attr("to", Attribute{int64_t{oxtrain::graph::dtype_to_onnx(to)}});
  if (channels_last) k.set_attr(oxtrain::graph::kChannelsLast, Attribute{int64_t{1}});
  return k;
}

}  // namespace

// The node computes the loader's function, bit for bit.
TEST(Normalize, NodeIsTheLoadersFunction) {
  const Tensor px = pixels({5, 7, 11, 3}, 1);
  oxtrain::test::KernelCase k = normalize_case(px, DType::f32, false);
  k.run();
  std::vector<float> want(static_cast<size_t>(px.numel()));
  normalize_u8_nhwc_to_f32_nchw_cpu(want.data(), px.data<uint8_t>(), NormalizeParams{5, 7, 11, 3, kMean, kStd});
  EXPECT_EQ(0, std::memcmp(k.output(0).data<float>(), want.data(), want.size() * sizeof(float)));
}

// In a bf16 channels-last training graph the pixels become bf16 NHWC images in one node: the
// mixed-precision cast folds into it and no Transpose is left for the images. A step fed
// pixels gives the bits of a step fed the host-normalised images.
TEST(Normalize, TrainingGraphNormalisesPixelsInOneNode) {
  using namespace oxtrain;
  for (bool channels_last : {false, true}) {
    SCOPED_TRACE(channels_last ? "channels-last" : "channels-first");
    autodiff::TrainingOptions o;
    o.half = DType::bf16;
    o.fuse_batchnorm_relu = o.recompute_batchnorm_relu = true;
    o.channels_last = channels_last;
    graph::Graph g = test::zoo_at_batch("resnet18", 4, 32, 10, 5);
    const std::string input = graph::normalize_images_input(g, std::vector<float>(kMean, kMean + 3),
                                                            std::vector<float>(kStd, kStd + 3));
    autodiff::TrainingGraph with = autodiff::build_training_graph(std::move(g), o);
    const graph::Node* norm = nullptr;
    for (const auto& n : with.graph.nodes())
      if (n->op_type == "NormalizeImages") norm = n.get();
    ASSERT_NE(norm, nullptr);
    EXPECT_EQ(norm->output(0)->dtype, DType::bf16);
    EXPECT_EQ(norm->output(0)->consumers.size(), 2u);  // conv1 and its filter gradient, no Cast
    EXPECT_EQ(graph::is_channels_last(*norm), channels_last);
    if (channels_last) {
      EXPECT_EQ(with.channels_last.transposes, 2 + 20 + 19 + 20);  // pooled features, filters
    }
    autodiff::TrainingGraph without = autodiff::build_training_graph(test::zoo_at_batch("resnet18", 4, 32, 10, 5), o);
    runtime::Session a(std::move(with.graph)), b(std::move(without.graph));
    const Tensor px = pixels({4, 32, 32, 3}, 2);
    Tensor images(DType::f32, {4, 3, 32, 32});
    normalize_u8_nhwc_to_f32_nchw_cpu(images.data<float>(), px.data<uint8_t>(), NormalizeParams{4, 32, 32, 3, kMean, kStd});
    a.feed(input, px);
    b.feed("input", images);
    for (auto* s : {&a, &b}) {
      const auto& tg = s == &a ? with : without;
      s->feed(tg.labels, Tensor::from_int64({1, 2, 3, 4}, {4}));
      s->feed(tg.learning_rate, Tensor::from_float({0.1f}, {}));
      s->feed(tg.step, Tensor::from_int64({0}, {}));
      s->run();
    }
    EXPECT_EQ(a.fetch(with.loss).bytes, b.fetch(without.loss).bytes);
  }
}

TEST(Normalize, NodeOnCudaMatchesCpuExactly) {
  OXTRAIN_REQUIRE_GPU();
  for (DType to : {DType::f32, DType::bf16, DType::f16})
    for (bool channels_last : {false, true}) {
      SCOPED_TRACE(std::string(oxtrain::graph::dtype_name(to)) + (channels_last ? " channels-last" : ""));
      oxtrain::test::KernelCase k = normalize_case(pixels({5, 7, 11, 3}, 3), to, channels_last);
      EXPECT_TRUE(oxtrain::test::cuda_matches_cpu(k, 0));
    }
}
