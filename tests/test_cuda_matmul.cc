// CUDA Gemm and MatMul (cuBLASLt) against their CPU twins, and the shapes the CUDA kernels
// refuse when the graph is compiled.
//
// Tolerances (cuda_matches_cpu measures max |GPU - CPU| over the largest |CPU| value):
// - strict fp32, 1e-5: both sides sum the same float32 products in a different order (blocked,
//   possibly split-K on the GPU; OpenBLAS's own blocking on the CPU); with inputs in [-1, 1],
//   K <= 130 and outputs whose largest magnitude is several units, the difference is a few
//   float32 ulps of the largest output (~1e-7 relative), so 1e-5 leaves a wide margin while
//   still catching any wrong element, transpose or offset (those are off by O(1) relative).
//   MatMul data is in [0, 1), so that single-output cases (a dot product) cannot cancel to a
//   tiny value that would make the relative measure meaningless.
// - TF32, 5e-3: TF32 keeps 10 mantissa bits, so each input is off by at most 2^-10 relative
//   (truncation; 2^-11 when rounded) and each product by at most ~2^-9 ~ 2e-3. The TF32 cases
//   use data in [0, 1), so every output is a sum of non-negative terms (plus a non-negative C)
//   and its relative error is at most ~2e-3 as well, whatever K: 5e-3 bounds it with margin,
//   and a wrong element is still off by O(1).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "runtime/device_runtime.h"
#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

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

constexpr double kStrictTolerance = 1e-5;  // see the file comment
constexpr double kTf32Tolerance = 5e-3;    // see the file comment

// A Gemm case: A is [M,K] (or [K,M] with transA), B [K,N] (or [N,K] with transB).
struct GemmShape {
  int64_t m = 37, k = 53, n = 29;
};

// Data in [lo, 1).
KernelCase gemm_case(const GemmShape& s, bool ta, bool tb, const Shape* c_shape, float alpha, float beta,
                     uint64_t seed, double lo = -1.0) {
  std::vector<Tensor> ins{random_tensor(DType::f32, ta ? Shape{s.k, s.m} : Shape{s.m, s.k}, seed, lo),
                          random_tensor(DType::f32, tb ? Shape{s.n, s.k} : Shape{s.k, s.n}, seed + 1, lo)};
  if (c_shape) ins.push_back(random_tensor(DType::f32, *c_shape, seed + 2, lo));
  KernelCase kc("Gemm", "", ins, {{DType::f32, {s.m, s.n}}});
  kc.set_attr("transA", Attribute{int64_t{ta}});
  kc.set_attr("transB", Attribute{int64_t{tb}});
  kc.set_attr("alpha", Attribute{alpha});
  kc.set_attr("beta", Attribute{beta});
  return kc;
}

// The CUDA factory of `op`, or null in a build without the CUDA runtime.
const runtime::KernelFactory* cuda_factory(const std::string& op) {
  return runtime::KernelRegistry::global().find("", op, runtime::Device::cuda);
}

// Makes the CUDA kernel without a device (as when a graph is only planned); throws what the
// factory throws.
std::unique_ptr<runtime::Kernel> compile_without_device(KernelCase& kc, const std::string& op) {
  return (*cuda_factory(op))(runtime::KernelInit{kc.node(), 17, runtime::Device::cuda, nullptr, Precision::fp32});
}

// The message of the Error that compiling `kc` throws, or "" when it compiles.
std::string refusal(KernelCase& kc, const std::string& op) {
  try {
    compile_without_device(kc, op);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(CudaMatmul, GemmTransposesAndCShapes) {
  OXTRAIN_REQUIRE_GPU();
  const GemmShape s;
  const Shape bias{s.n}, bias_row{1, s.n}, full{s.m, s.n}, column{s.m, 1};
  struct CCase {
    const Shape* shape;
    float alpha, beta;
    const char* what;
  };
  const CCase c_cases[] = {
      {nullptr, 1.0f, 1.0f, "no C"},
      {nullptr, -0.75f, 3.0f, "no C, alpha -0.75 (beta unused)"},
      {&bias, 1.0f, 1.0f, "bias [N]: epilogue"},
      {&bias_row, 0.5f, 1.0f, "bias [1,N]: epilogue, alpha 0.5"},
      {&full, 0.5f, 2.0f, "full C, alpha 0.5, beta 2"},
      {&full, 1.0f, -1.0f, "full C, beta -1"},
      {&column, 1.5f, 0.0f, "C [M,1] ignored with beta 0"},
  };
  uint64_t seed = 100;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (const CCase& c : c_cases) {
        KernelCase kc = gemm_case(s, ta, tb, c.shape, c.alpha, c.beta, seed);
        seed += 3;
        EXPECT_TRUE(cuda_matches_cpu(kc, kStrictTolerance))
            << "transA " << ta << " transB " << tb << ", " << c.what;
      }
}

TEST(CudaMatmul, GemmLinearLayerShapes) {
  OXTRAIN_REQUIRE_GPU();
  // A torch Linear: X [batch, in] * W^T + b, transB = 1, defaults alpha = beta = 1; odd sizes,
  // one output row, one output column, and a single-element inner dimension.
  const GemmShape shapes[] = {{33, 130, 17}, {1, 53, 29}, {37, 53, 1}, {5, 1, 7}};
  uint64_t seed = 200;
  for (const GemmShape& s : shapes) {
    const Shape bias{s.n};
    std::vector<Tensor> ins{random_tensor(DType::f32, {s.m, s.k}, seed), random_tensor(DType::f32, {s.n, s.k}, seed + 1),
                            random_tensor(DType::f32, bias, seed + 2)};
    seed += 3;
    KernelCase kc("Gemm", "", ins, {{DType::f32, {s.m, s.n}}});
    kc.set_attr("transB", Attribute{int64_t{1}});
    EXPECT_TRUE(cuda_matches_cpu(kc, kStrictTolerance)) << "M " << s.m << " K " << s.k << " N " << s.n;
  }
}

TEST(CudaMatmul, StrictFp32IsNotTf32) {
  OXTRAIN_REQUIRE_GPU();
  // Every product is (1 + 2^-15) * 1: exact in float32, but TF32 (10 mantissa bits) rounds the
  // input to 1. Every partial sum j * (1 + 2^-15), j <= 53, needs 21 significant bits, so strict
  // fp32 gets 53 * (1 + 2^-15) exactly in any summation order, while TF32 would be off by 2^-15
  // ~ 3.1e-5 relative: the 1e-6 bound passes only if Precision::fp32 really is strict.
  const int64_t m = 37, k = 53, n = 29;
  Tensor a(DType::f32, {m, k}), b(DType::f32, {n, k});
  for (int64_t i = 0; i < a.numel(); ++i) a.data<float>()[i] = 1.0f + std::ldexp(1.0f, -15);
  for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = 1.0f;
  KernelCase gemm("Gemm", "", {a, b}, {{DType::f32, {m, n}}});
  gemm.set_attr("transB", Attribute{int64_t{1}});
  EXPECT_TRUE(cuda_matches_cpu(gemm, 1e-6, 17, Precision::fp32));
  EXPECT_FLOAT_EQ(gemm.output(0).data<float>()[0], 53.0f * (1.0f + std::ldexp(1.0f, -15)));

  Tensor bm(DType::f32, {3, k, n});
  for (int64_t i = 0; i < bm.numel(); ++i) bm.data<float>()[i] = 1.0f;
  KernelCase matmul("MatMul", "", {a, bm}, {{DType::f32, {3, m, n}}});
  EXPECT_TRUE(cuda_matches_cpu(matmul, 1e-6, 17, Precision::fp32));
}

namespace {

struct MatMulShapes {
  Shape a, b, y;
  const char* what;
};

const MatMulShapes kMatMulCases[] = {
    {{5, 7, 11}, {11, 13}, {5, 7, 13}, "batched A, shared B: folded into A's rows"},
    {{5, 1, 7, 11}, {3, 11, 13}, {5, 3, 7, 13}, "both broadcast: strided batch over B, loop over A"},
    {{7, 11}, {3, 11, 13}, {3, 7, 13}, "shared A: batch stride 0"},
    {{4, 7, 11}, {4, 11, 13}, {4, 7, 13}, "same batch"},
    {{2, 1, 3, 7, 11}, {1, 5, 1, 11, 13}, {2, 5, 3, 7, 13}, "fold, batch and loop at once"},
    {{2, 3, 7, 11}, {2, 1, 11, 13}, {2, 3, 7, 13}, "B shared over the inner batch only"},
    {{11}, {11}, {}, "1-D by 1-D: a dot product"},
    {{11}, {11, 13}, {13}, "1-D A"},
    {{7, 11}, {11}, {7}, "1-D B"},
    {{5, 7, 11}, {11}, {5, 7}, "batched A, 1-D B"},
    {{11}, {3, 11, 13}, {3, 13}, "1-D A, batched B"},
    {{1, 1}, {1, 1}, {1, 1}, "1x1"},
};

}  // namespace

TEST(CudaMatmul, MatMulBatchesAndBroadcasts) {
  OXTRAIN_REQUIRE_GPU();
  uint64_t seed = 300;
  for (const MatMulShapes& c : kMatMulCases) {
    KernelCase kc("MatMul", "", {random_tensor(DType::f32, c.a, seed, 0.0), random_tensor(DType::f32, c.b, seed + 1, 0.0)},
                  {{DType::f32, c.y}});
    seed += 2;
    EXPECT_TRUE(cuda_matches_cpu(kc, kStrictTolerance))
        << graph::shape_str(c.a) << " x " << graph::shape_str(c.b) << ": " << c.what;
  }
}

TEST(CudaMatmul, Tf32WithinItsPrecision) {
  OXTRAIN_REQUIRE_GPU();
  const GemmShape s;
  const Shape bias{s.n}, full{s.m, s.n};
  KernelCase linear = gemm_case(s, false, true, &bias, 1.0f, 1.0f, 400, 0.0);
  EXPECT_TRUE(cuda_matches_cpu(linear, kTf32Tolerance, 17, Precision::tf32)) << "Gemm, transB, bias";
  KernelCase scaled = gemm_case(s, true, false, &full, 0.5f, 2.0f, 410, 0.0);
  EXPECT_TRUE(cuda_matches_cpu(scaled, kTf32Tolerance, 17, Precision::tf32)) << "Gemm, transA, full C";
  uint64_t seed = 420;
  for (const MatMulShapes& c : kMatMulCases) {
    KernelCase kc("MatMul", "", {random_tensor(DType::f32, c.a, seed, 0.0), random_tensor(DType::f32, c.b, seed + 1, 0.0)},
                  {{DType::f32, c.y}});
    seed += 2;
    EXPECT_TRUE(cuda_matches_cpu(kc, kTf32Tolerance, 17, Precision::tf32))
        << graph::shape_str(c.a) << " x " << graph::shape_str(c.b) << ": " << c.what;
  }
}

// float16 and bfloat16 operands: cuBLASLt multiplies them exactly in float32 and sums in
// float32, as the CPU's emulation of half does on widened copies, each in its own order, and
// both round the sum once to half. Outputs (non-negative data in [0, 1)) may then round one
// unit of the half type apart, 2^-8 (bfloat16) or 2^-11 (float16) of the largest; the bound
// allows two. A wrong transpose, bias or batch offset is off by O(1).
TEST(CudaMatmul, HalfOperandsSumInFloat32) {
  OXTRAIN_REQUIRE_GPU();
  for (DType h : {DType::bf16, DType::f16}) {
    SCOPED_TRACE(graph::dtype_name(h));
    const double tolerance = h == DType::bf16 ? 2.0 / 256 : 2.0 / 2048;
    const GemmShape s;
    uint64_t seed = 500;
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int c = 0; c < 3; ++c) {  // no C, a bias [N] (the epilogue), a full C with beta 2
          const Shape cs = c == 1 ? Shape{s.n} : Shape{s.m, s.n};
          std::vector<Tensor> ins{random_tensor(h, ta ? Shape{s.k, s.m} : Shape{s.m, s.k}, ++seed, 0.0),
                                  random_tensor(h, tb ? Shape{s.n, s.k} : Shape{s.k, s.n}, ++seed, 0.0)};
          if (c > 0) ins.push_back(random_tensor(h, cs, ++seed, 0.0));
          KernelCase kc("Gemm", "", ins, {{h, {s.m, s.n}}});
          kc.set_attr("transA", Attribute{int64_t{ta}});
          kc.set_attr("transB", Attribute{int64_t{tb}});
          kc.set_attr("beta", Attribute{c == 2 ? 2.0f : 1.0f});
          EXPECT_TRUE(cuda_matches_cpu(kc, tolerance, 17, Precision::tf32))
              << "transA " << ta << " transB " << tb << " C " << c;
        }
    for (const MatMulShapes& c : kMatMulCases) {
      KernelCase kc("MatMul", "", {random_tensor(h, c.a, ++seed, 0.0), random_tensor(h, c.b, ++seed, 0.0)},
                    {{h, c.y}});
      EXPECT_TRUE(cuda_matches_cpu(kc, tolerance, 17, Precision::tf32))
          << graph::shape_str(c.a) << " x " << graph::shape_str(c.b) << ": " << c.what;
    }
    // And it is cuBLASLt's half form that ran, not the fallback to float32 on widened copies
    // (which would pass the comparisons above as well).
    KernelCase linear("Gemm", "",
                      {random_tensor(h, {s.m, s.k}, 1), random_tensor(h, {s.n, s.k}, 2), random_tensor(h, {s.n}, 3)},
                      {{h, {s.m, s.n}}});
    linear.set_attr("transB", Attribute{int64_t{1}});
    std::unique_ptr<runtime::DeviceRuntime> rt = runtime::DeviceRuntime::create(runtime::Device::cuda, Precision::tf32);
    const std::string chosen = (*cuda_factory("Gemm"))(runtime::KernelInit{linear.node(), 17, runtime::Device::cuda,
                                                                          &rt->context(), Precision::tf32})
                                   ->describe();
    EXPECT_NE(chosen.find("summed in float32"), std::string::npos) << chosen;
    EXPECT_EQ(chosen.find("widened"), std::string::npos) << chosen;
  }
}

// Compile-time checks: these need the CUDA factories but no GPU (a graph planned without a
// device compiles its kernels with a null context), so they run wherever CUDA is built.
TEST(CudaMatmulCompile, RefusesWhatCublasLtCannotDo) {
  if (!cuda_factory("Gemm")) GTEST_SKIP() << "this build has no CUDA runtime";
  const GemmShape s;
  const Shape column{s.m, 1}, scalar{}, bias{s.n};
  {
    KernelCase kc = gemm_case(s, false, true, &column, 1.0f, 1.0f, 1);
    std::string msg = refusal(kc, "Gemm");
    EXPECT_NE(msg.find("Gemm 'test_Gemm'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("C [37,1]"), std::string::npos) << msg;
  }
  {
    KernelCase kc = gemm_case(s, false, false, &scalar, 1.0f, 1.0f, 2);
    EXPECT_NE(refusal(kc, "Gemm").find("got C []"), std::string::npos) << refusal(kc, "Gemm");
  }
  {
    // A bias vector is added unscaled by the epilogue: beta must be 1.
    KernelCase kc = gemm_case(s, false, false, &bias, 1.0f, 2.0f, 3);
    EXPECT_NE(refusal(kc, "Gemm").find("beta = 1"), std::string::npos) << refusal(kc, "Gemm");
  }
  {
    // beta = 0 ignores C, whatever its shape.
    KernelCase kc = gemm_case(s, false, false, &column, 1.0f, 0.0f, 4);
    EXPECT_EQ(refusal(kc, "Gemm"), "");
  }
  {
    KernelCase kc("Gemm", "", {Tensor(DType::f64, {2, 3}), Tensor(DType::f64, {3, 4})}, {{DType::f64, {2, 4}}});
    EXPECT_NE(refusal(kc, "Gemm").find("takes float32, float16 or bfloat16, got float64"), std::string::npos)
        << refusal(kc, "Gemm");
  }
  {
    KernelCase kc("MatMul", "", {Tensor(DType::f64, {2, 3}), Tensor(DType::f64, {3, 4})}, {{DType::f64, {2, 4}}});
    EXPECT_NE(refusal(kc, "MatMul").find("takes float32, float16 or bfloat16, got float64"), std::string::npos)
        << refusal(kc, "MatMul");
  }
  {
    // cuBLASLt takes half operands of one type; a float32 bias beside bfloat16 A and B (the
    // graph's mixed-precision pass casts it) goes to the half emulation instead, and compiles.
    KernelCase kc("Gemm", "", {Tensor(DType::bf16, {2, 3}), Tensor(DType::bf16, {3, 4}), Tensor(DType::f32, {4})},
                  {{DType::bf16, {2, 4}}});
    EXPECT_EQ(refusal(kc, "Gemm"), "");
    EXPECT_EQ(runtime::cuda_emulation(kc.node()), "half widened to float32");
    KernelCase native("Gemm", "", {Tensor(DType::bf16, {2, 3}), Tensor(DType::bf16, {3, 4}), Tensor(DType::bf16, {4})},
                      {{DType::bf16, {2, 4}}});
    EXPECT_EQ(refusal(native, "Gemm"), "");
    EXPECT_EQ(runtime::cuda_emulation(native.node()), "");
  }
  {
    KernelCase kc("MatMul", "", {Tensor(DType::f32, {2, 3}), Tensor(DType::f32, {4, 5})}, {{DType::f32, {2, 5}}});
    EXPECT_NE(refusal(kc, "MatMul").find("inner dimension"), std::string::npos) << refusal(kc, "MatMul");
  }
  {
    KernelCase kc("MatMul", "", {Tensor(DType::f32, {2, 5, 3}), Tensor(DType::f32, {4, 3, 5})},
                  {{DType::f32, {4, 5, 5}}});
    EXPECT_NE(refusal(kc, "MatMul").find("do not broadcast"), std::string::npos) << refusal(kc, "MatMul");
  }
}

TEST(CudaMatmulCompile, WorkspaceWithoutDevice) {
  if (!cuda_factory("Gemm")) GTEST_SKIP() << "this build has no CUDA runtime";
  // Planned without a device, a product reserves the largest workspace an algorithm may ask
  // for (32 MiB) and refuses to run; products with nothing to multiply need none.
  const GemmShape s;
  const Shape bias{s.n};
  KernelCase gemm = gemm_case(s, false, true, &bias, 1.0f, 1.0f, 5);
  auto kernel = compile_without_device(gemm, "Gemm");
  EXPECT_EQ(kernel->workspace_bytes(), size_t{32} << 20);
  runtime::KernelArgs args;  // no context: a CUDA kernel refuses to run
  EXPECT_THROW(kernel->run(args), Error);

  KernelCase empty_k("MatMul", "", {Tensor(DType::f32, {5, 0}), Tensor(DType::f32, {0, 3})}, {{DType::f32, {5, 3}}});
  EXPECT_EQ(compile_without_device(empty_k, "MatMul")->workspace_bytes(), 0u);
  KernelCase empty_y("MatMul", "", {Tensor(DType::f32, {0, 4}), Tensor(DType::f32, {4, 3})}, {{DType::f32, {0, 3}}});
  EXPECT_EQ(compile_without_device(empty_y, "MatMul")->workspace_bytes(), 0u);
}
