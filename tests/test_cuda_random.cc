// CUDA random kernels against their CPU twins. Both call the generator and the conversions of
// runtime/math/random.h, which use only integer operations, exact scalings, correctly rounded
// fma, division and square root: every output must be the same bytes, the normals included
// (a NaN matches any NaN: its bits are each device's own).
// Every test skips where no GPU is at hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::KernelCase;
using test::random_tensor;

namespace {

const Shape kOdd{5, 7, 11, 13};


Tensor step_tensor(int64_t step) { return Tensor::from_int64({step}, {}); }

}  // namespace

TEST(CudaRandom, DropoutTrainingMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  Tensor x = random_tensor(DType::f32, kOdd, 1, -3, 3);
  x.data<float>()[10] = NAN;
  x.data<float>()[11] = -INFINITY;
  x.data<float>()[12] = -0.0f;
  for (float ratio : {0.1f, 0.5f, 0.0f, 1.0f}) {
    for (int64_t step : {int64_t{0}, int64_t{7}, int64_t{1} << 33}) {
      KernelCase kc("DropoutTraining", "oxtrain", {x, step_tensor(step)}, {{DType::f32, kOdd}, {DType::boolean, kOdd}});
      kc.set_attr("ratio", Attribute{ratio});
      kc.set_attr("key", Attribute{int64_t{-1234567890123}});
      EXPECT_TRUE(test::cuda_bitwise_matches_cpu(kc, 17, test::NanBits::any)) << "ratio " << ratio << " step " << step;
    }
  }
  // Without its mask output; and a single element.
  KernelCase no_mask("DropoutTraining", "oxtrain", {x, step_tensor(3)}, {{DType::f32, kOdd}});
  no_mask.set_attr("ratio", Attribute{0.3f});
  no_mask.set_attr("key", Attribute{int64_t{9}});
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(no_mask, 17, test::NanBits::any));
  Tensor one = Tensor::from_float({2.0f}, {1});
  KernelCase single("DropoutTraining", "oxtrain", {one, step_tensor(3)}, {{DType::f32, {1}}, {DType::boolean, {1}}});
  single.set_attr("ratio", Attribute{0.3f});
  single.set_attr("key", Attribute{int64_t{9}});
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(single, 17, test::NanBits::any));
}

TEST(CudaRandom, DropoutGradMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  Tensor dy = random_tensor(DType::f32, kOdd, 2, -3, 3);
  Tensor mask(DType::boolean, kOdd);
  for (int64_t i = 0; i < mask.numel(); ++i) mask.bytes[i] = (i * 2654435761u >> 7) & 1;
  for (float ratio : {0.2f, 0.0f, 1.0f}) {
    KernelCase kc("DropoutGrad", "oxtrain", {dy, mask}, {{DType::f32, kOdd}});
    kc.set_attr("ratio", Attribute{ratio});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(kc, 17, test::NanBits::any)) << ratio;
  }
}

// Dropout in half: the same mask as in float32 (the generator does not see the type), the
// kept values scaled in float32 and rounded once, as the CPU's emulation of half.
TEST(CudaRandom, HalfDropoutMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  for (DType h : {DType::f16, DType::bf16}) {
    KernelCase fwd("DropoutTraining", "oxtrain", {random_tensor(h, kOdd, 3, -3, 3), step_tensor(5)},
                   {{h, kOdd}, {DType::boolean, kOdd}});
    fwd.set_attr("ratio", Attribute{0.1f});
    fwd.set_attr("key", Attribute{int64_t{77}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(fwd)) << graph::dtype_name(h);
    KernelCase f32("DropoutTraining", "oxtrain", {random_tensor(DType::f32, kOdd, 3, -3, 3), step_tensor(5)},
                   {{DType::f32, kOdd}, {DType::boolean, kOdd}});
    f32.set_attr("ratio", Attribute{0.1f});
    f32.set_attr("key", Attribute{int64_t{77}});
    fwd.run(17, runtime::Device::cuda);
    f32.run();
    EXPECT_EQ(fwd.output(1).bytes, f32.output(1).bytes) << graph::dtype_name(h);
    Tensor mask = fwd.output(1);
    KernelCase grad("DropoutGrad", "oxtrain", {random_tensor(h, kOdd, 4, -3, 3), mask}, {{h, kOdd}});
    grad.set_attr("ratio", Attribute{0.1f});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(grad)) << graph::dtype_name(h);
  }
}

TEST(CudaRandom, UniformAndNormalMatchCpu) {
  OXTRAIN_REQUIRE_GPU();
  std::vector<int64_t> shape(kOdd.begin(), kOdd.end());
  for (const char* op : {"RandomUniform", "RandomNormal"}) {
    bool normal = std::string(op) == "RandomNormal";
    for (int64_t step : {0, 12345}) {
      KernelCase kc(op, "oxtrain", {step_tensor(step)}, {{DType::f32, kOdd}});
      kc.set_attr("shape", Attribute{shape});
      kc.set_attr("dtype", Attribute{int64_t{1}});
      kc.set_attr(normal ? "mean" : "low", Attribute{-0.5f});
      kc.set_attr(normal ? "scale" : "high", Attribute{2.5f});
      kc.set_attr("key", Attribute{int64_t{4242}});
      EXPECT_TRUE(test::cuda_bitwise_matches_cpu(kc, 17, test::NanBits::any)) << op << " step " << step;
    }
    // The ONNX forms (step 0), with a Like input of odd size.
    Tensor like(DType::f32, {3, 1, 7});
    KernelCase onnx_like(std::string(op) + "Like", "", {like}, {{DType::f32, like.shape}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(onnx_like, 17, test::NanBits::any)) << op << "Like";
    KernelCase plain(op, "", {}, {{DType::f32, {2, 9}}});
    plain.set_attr("shape", Attribute{std::vector<int64_t>{2, 9}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(plain, 17, test::NanBits::any)) << op;
  }
}

TEST(CudaRandom, InferenceDropoutMatchesCpu) {
  OXTRAIN_REQUIRE_GPU();
  Tensor x = random_tensor(DType::f32, kOdd, 3);
  KernelCase bool_mask("Dropout", "", {x}, {{DType::f32, kOdd}, {DType::boolean, kOdd}});
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(bool_mask, 17, test::NanBits::any));
  KernelCase float_mask("Dropout", "", {x}, {{DType::f32, kOdd}, {DType::f32, kOdd}});  // opset 9
  EXPECT_TRUE(test::cuda_bitwise_matches_cpu(float_mask, 9, test::NanBits::any));
  for (int64_t i = 0; i < float_mask.output(1).numel(); ++i) ASSERT_EQ(float_mask.output(1).data<float>()[i], 1.0f);
}

TEST(CudaRandom, RefusesFloat64) {
  OXTRAIN_REQUIRE_GPU();
  KernelCase kc("DropoutTraining", "oxtrain", {random_tensor(DType::f64, {3}, 4), step_tensor(0)},
                {{DType::f64, {3}}, {DType::boolean, {3}}});
  kc.set_attr("key", Attribute{int64_t{1}});
  try {
    kc.run(17, runtime::Device::cuda);
    FAIL() << "float64 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("takes float32"), std::string::npos) << e.what();
  }
}
