// The image normalisation kernel: a hand-computed case on the CPU, and CPU vs CUDA on odd
// shapes where a GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "runtime/cpu/normalize.h"
#include "runtime/device.h"
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
