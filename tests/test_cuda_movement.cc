// CUDA kernels of the movement family against their CPU twins on odd shapes (5x7x11x13).
// They only move data, except GatherGrad, which adds each dX element's terms in the same
// listed order on both devices: every output must be the same bytes. Every test skips where
// no GPU is at hand.
#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::cuda_matches_cpu;
using test::KernelCase;
using test::random_tensor;

namespace {

void make_constant(KernelCase& kc, size_t i) {
  kc.node().input(i)->data = std::make_shared<Tensor>(kc.input(i));
}

Tensor ints(std::vector<int64_t> v) { return Tensor::from_int64(v, {static_cast<int64_t>(v.size())}); }

const Shape kOdd{5, 7, 11, 13};

}  // namespace

TEST(CudaMovement, ConcatAndSplit) {
  OXTRAIN_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::i64, DType::u8}) {
    for (int64_t axis : {0, 1, 3}) {
      std::vector<Tensor> parts;
      std::vector<test::OutputSpec> specs;
      Shape out = kOdd;
      out[axis] = 0;
      for (int64_t size : {2, 5, 0, 3}) {
        Shape s = kOdd;
        s[axis] = size;
        parts.push_back(random_tensor(dt, s, 10 + size, 0, 100));
        specs.push_back({dt, s});
        out[axis] += size;
      }
      KernelCase cat("Concat", "", parts, {{dt, out}});
      cat.set_attr("axis", Attribute{axis - 4});
      EXPECT_TRUE(cuda_matches_cpu(cat, 0)) << "Concat axis " << axis;
      KernelCase split("Split", "", {random_tensor(dt, out, 20, 0, 100)}, specs);
      split.set_attr("axis", Attribute{axis});
      EXPECT_TRUE(cuda_matches_cpu(split, 0, 18)) << "Split axis " << axis;
    }
  }
}

TEST(CudaMovement, SliceAndSliceGrad) {
  OXTRAIN_REQUIRE_GPU();
  struct Case {
    std::vector<int64_t> starts, ends, axes, steps;
    Shape out;
    std::vector<int64_t> first, step;  // per axis, for SliceGrad
  };
  const Case cases[] = {
      {{1, 2}, {4, 11}, {0, 2}, {1, 3}, {3, 7, 3, 13}, {1, 0, 2, 0}, {1, 1, 3, 1}},
      {{-1, 6}, {-1000, -14}, {0, 3}, {-2, -3}, {3, 7, 11, 3}, {4, 0, 0, 6}, {-2, 1, 1, -3}},
      {{0}, {100}, {-1}, {5}, {5, 7, 11, 3}, {0, 0, 0, 0}, {1, 1, 1, 5}},
  };
  for (const Case& c : cases) {
    for (DType dt : {DType::f32, DType::i64}) {
      KernelCase kc("Slice", "",
                    {random_tensor(dt, kOdd, 30, 0, 100), ints(c.starts), ints(c.ends), ints(c.axes), ints(c.steps)},
                    {{dt, c.out}});
      for (size_t i = 1; i < 5; ++i) make_constant(kc, i);
      EXPECT_TRUE(cuda_matches_cpu(kc, 0, 13)) << graph::shape_str(c.starts);
    }
    KernelCase grad("SliceGrad", "oxtrain", {random_tensor(DType::f32, c.out, 31)}, {{DType::f32, kOdd}});
    grad.set_attr("input_shape", Attribute{std::vector<int64_t>(kOdd)});
    grad.set_attr("starts", Attribute{c.first});
    grad.set_attr("steps", Attribute{c.step});
    EXPECT_TRUE(cuda_matches_cpu(grad, 0)) << graph::shape_str(c.starts);
  }
}

TEST(CudaMovement, ExpandSqueezeUnsqueeze) {
  OXTRAIN_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::i32}) {
    KernelCase kc("Expand", "", {random_tensor(dt, {7, 1, 13}, 40, 0, 100), ints({5, 1, 11, 1})},
                  {{dt, kOdd}});
    make_constant(kc, 1);
    EXPECT_TRUE(cuda_matches_cpu(kc, 0));
  }
  KernelCase token("Expand", "", {random_tensor(DType::f32, {1, 1, 13}, 41), ints({5, 1, 13})},
                   {{DType::f32, {5, 1, 13}}});
  make_constant(token, 1);
  EXPECT_TRUE(cuda_matches_cpu(token, 0));
  KernelCase sq("Squeeze", "", {random_tensor(DType::f32, {5, 1, 7}, 42), ints({1})}, {{DType::f32, {5, 7}}});
  make_constant(sq, 1);
  EXPECT_TRUE(cuda_matches_cpu(sq, 0, 13));
  KernelCase unsq("Unsqueeze", "", {random_tensor(DType::f32, kOdd, 43), ints({-1})},
                  {{DType::f32, {5, 7, 11, 13, 1}}});
  make_constant(unsq, 1);
  EXPECT_TRUE(cuda_matches_cpu(unsq, 0, 13));
}

TEST(CudaMovement, GatherGatherNDAndGatherGrad) {
  OXTRAIN_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::i64}) {
    Tensor x = random_tensor(dt, kOdd, 50, 0, 100);
    for (int64_t axis : {0, 1, 3}) {
      const std::vector<int64_t> idx = {0, kOdd[axis] - 1, -1, 1, -kOdd[axis], 1};
      Shape out(kOdd.begin(), kOdd.begin() + axis);
      out.push_back(2);
      out.push_back(3);
      out.insert(out.end(), kOdd.begin() + axis + 1, kOdd.end());
      KernelCase kc("Gather", "", {x, Tensor::from_int64(idx, {2, 3})}, {{dt, out}});
      kc.set_attr("axis", Attribute{axis});
      make_constant(kc, 1);
      EXPECT_TRUE(cuda_matches_cpu(kc, 0)) << "axis " << axis;
    }
  }
  Tensor i32(DType::i32, {});
  i32.data<int32_t>()[0] = 3;
  KernelCase scalar("Gather", "", {random_tensor(DType::f32, kOdd, 51), i32}, {{DType::f32, {5, 11, 13}}});
  scalar.set_attr("axis", Attribute{int64_t{1}});
  make_constant(scalar, 1);
  EXPECT_TRUE(cuda_matches_cpu(scalar, 0));
  KernelCase nd("GatherND", "", {random_tensor(DType::f32, kOdd, 52), Tensor::from_int64({0, 6, 4, -1, 0, 6}, {3, 2})},
                {{DType::f32, {3, 11, 13}}});
  make_constant(nd, 1);
  EXPECT_TRUE(cuda_matches_cpu(nd, 0));

  // GatherGrad: dX [5, 7, 143] from dY [5, 40, 143], rows read unevenly.
  std::vector<int64_t> read;
  for (int64_t j = 0; j < 40; ++j) read.push_back((j * j + 3) % 7);
  std::vector<int64_t> row_start(8, 0), order;
  for (int64_t r : read) ++row_start[r + 1];
  std::partial_sum(row_start.begin(), row_start.end(), row_start.begin());
  for (int64_t r = 0; r < 7; ++r)
    for (int64_t j = 0; j < 40; ++j)
      if (read[j] == r) order.push_back(j);
  // In half too: the terms added in float32, the sum rounded once, as the CPU's emulation.
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    KernelCase grad("GatherGrad", "oxtrain", {random_tensor(dt, {5, 40, 11, 13}, 53), ints(order), ints(row_start)},
                    {{dt, kOdd}});
    grad.set_attr("input_shape", Attribute{std::vector<int64_t>(kOdd)});
    grad.set_attr("axis", Attribute{int64_t{1}});
    make_constant(grad, 1);
    make_constant(grad, 2);
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(grad)) << graph::dtype_name(dt);
  }
  // Moved by element size in half: a gather and a slice as ViT's class token takes them.
  for (DType h : {DType::f16, DType::bf16}) {
    KernelCase take("Gather", "", {random_tensor(h, kOdd, 54), Tensor::from_int64({0}, {})}, {{h, {5, 11, 13}}});
    take.set_attr("axis", Attribute{int64_t{1}});
    make_constant(take, 1);
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(take)) << graph::dtype_name(h);
    KernelCase cat("Concat", "", {random_tensor(h, {5, 2, 11, 13}, 55), random_tensor(h, {5, 5, 11, 13}, 56)},
                   {{h, kOdd}});
    cat.set_attr("axis", Attribute{int64_t{1}});
    EXPECT_TRUE(test::cuda_bitwise_matches_cpu(cat)) << graph::dtype_name(h);
  }
}
