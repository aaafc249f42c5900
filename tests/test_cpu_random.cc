// The random family on the CPU: the Philox4x32-10 generator against Random123's known
// answers, the conversions (log, sin/cos, uniform, normal) against the C library, Dropout's
// mask and values against an independent recomputation, its statistics, its independence from
// the thread count, the schemas over opsets and their errors, the training graph's rewrite,
// and whole sessions: the same (seed, step) gives the same mask in two sessions (a resume),
// another step or another node another one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "graph/passes.h"
#include "graph/random.h"
#include "runtime/kernel.h"
#include "runtime/math/random.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
namespace math = oxtrain::runtime::math;
using namespace oxtrain::test;

namespace {

constexpr uint64_t kKey = 0x0123456789ABCDEFull;

Tensor step_tensor(int64_t step) { return Tensor::from_int64({step}, {}); }

// Dropout in training mode on `x` at `step`, on the CPU: (Y, mask).
std::pair<Tensor, Tensor> dropout(const Tensor& x, float ratio, int64_t step, uint64_t key = kKey) {
  KernelCase kc("DropoutTraining", "oxtrain", {x, step_tensor(step)},
                {{x.dtype, x.shape}, {DType::boolean, x.shape}});
  kc.set_attr("ratio", Attribute{ratio});
  kc.set_attr("key", Attribute{static_cast<int64_t>(key)});
  kc.run();
  return {kc.output(0), kc.output(1)};
}

// Element i's 24-bit uniform, recomputed from the generator's words.
uint32_t word_of(uint64_t key, int64_t step, int64_t i) {
  uint32_t w[4];
  math::random_block(key, step, i / 4, w);
  return w[i % 4];
}

// The ONNX `Dropout` node of opset `opset` with constant ratio/training_mode inputs (opset 12+)
// or a ratio attribute; run through the schema.
struct DropoutNode {
  Graph g;
  Node* node = nullptr;
};

std::unique_ptr<DropoutNode> dropout_node(int64_t opset, float ratio, int training, bool runtime_mode = false) {
  auto d = std::make_unique<DropoutNode>();
  Graph& g = d->g;
  g.opsets = {{"", opset}};
  Value* x = g.add_value("x", DType::f32, {2, 3}, Role::Input);
  x->rank_known = true;
  g.inputs.push_back(x);
  std::vector<Value*> ins{x};
  Node* n;
  if (opset >= 12) {
    ins.push_back(g.add_initializer("ratio", Tensor::from_float({ratio}, {}), Role::Constant));
    if (training >= 0) {
      if (runtime_mode) {
        Value* mode = g.add_value("mode", DType::boolean, {}, Role::Input);
        mode->rank_known = true;
        g.inputs.push_back(mode);
        ins.push_back(mode);
      } else {
        Tensor t(DType::boolean, {});
        t.bytes[0] = static_cast<uint8_t>(training);
        ins.push_back(g.add_initializer("mode", t, Role::Constant));
      }
    }
    n = g.add_node("Dropout", ins, {g.add_value("y"), g.add_value("mask")}, "drop");
  } else {
    n = g.add_node("Dropout", ins, {g.add_value("y"), g.add_value("mask")}, "drop");
    n->attrs["ratio"].value = ratio;
    if (training == 0) n->attrs["is_test"].value = int64_t{1};
  }
  d->node = n;
  return d;
}

void infer(Graph& g, Node& n) {
  const OpSchema* s = find_schema(n.domain, n.op_type);
  ASSERT_NE(s, nullptr);
  s->infer(n, InferContext{g, g.opset(n.domain)});
}

std::string infer_error(Graph& g, Node& n) {
  try {
    infer(g, n);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(CpuRandom, PhiloxKnownAnswers) {
  // Random123's kat_vectors for philox4x32_10.
  struct Kat {
    uint32_t c[4], k0, k1, want[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, 0, 0, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, 0xffffffff, 0xffffffff,
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, 0xa4093822, 0x299f31d0,
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    uint32_t out[4];
    math::philox4x32_10(k.c, k.k0, k.k1, out);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], k.want[i]) << std::hex << k.c[0] << " word " << i;
  }
  // The counter layout: block (low, high), step (low, high); key (low, high).
  uint32_t a[4], b[4];
  math::random_block(0x299f31d0a4093822ull, 0x0370734413198a2ell, 0x85a308d3243f6a88ll, a);
  const uint32_t c[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
  math::philox4x32_10(c, 0xa4093822, 0x299f31d0, b);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a[i], b[i]);
}

TEST(CpuRandom, ConversionsAgreeWithTheCLibrary) {
  double worst_log = 0, worst_trig = 0;
  for (int i = 1; i <= 20000; ++i) {
    double u = i / 20001.0;
    if (i % 3 == 0) u = std::ldexp(u, -45);  // the smallest uniforms the generator gives
    worst_log = std::max(worst_log, std::fabs(math::log_unit(u) - std::log(u)) / std::fabs(std::log(u)));
    double t = (i - 1) / 20000.0, s, c;
    math::sincos_turns(t, &s, &c);
    worst_trig = std::max({worst_trig, std::fabs(s - std::sin(2 * M_PI * t)), std::fabs(c - std::cos(2 * M_PI * t))});
  }
  EXPECT_LT(worst_log, 1e-15);
  EXPECT_LT(worst_trig, 4e-15);
  EXPECT_EQ(math::log_unit(1.0), 0.0);
  // Uniforms: exact scalings of the words' bits.
  EXPECT_EQ(math::uniform24(0xffffffffu), 1.0f - std::ldexp(1.0f, -24));
  EXPECT_EQ(math::uniform24(0x000000ffu), 0.0f);
  EXPECT_EQ(math::uniform53(0xffffffffu, 0xffffffffu), 1.0 - std::ldexp(1.0, -53));
  EXPECT_EQ(math::uniform53(0, 0x40u), std::ldexp(1.0, -53));
}

TEST(CpuRandom, DropoutMaskAndValuesAreTheGenerators) {
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, {5, 7, 11, 13}, 3, -4, 4);
    const float ratio = 0.3f;
    auto [y, mask] = dropout(x, ratio, 17);
    const double scale = 1.0 / (1.0 - static_cast<double>(ratio));
    // Independently: dropped where the word's top 24 bits fall below ratio * 2^24.
    const double threshold = static_cast<double>(ratio) * 16777216.0;
    int64_t kept = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      bool keep = static_cast<double>(word_of(kKey, 17, i) >> 8) >= threshold;
      ASSERT_EQ(mask.bytes[i], keep ? 1 : 0) << i;
      double want = keep ? element(x, i) * (dt == DType::f32 ? static_cast<double>(static_cast<float>(scale)) : scale) : 0.0;
      if (dt == DType::f32) want = static_cast<float>(want);
      ASSERT_EQ(element(y, i), want) << i;
      kept += keep;
    }
    EXPECT_GT(kept, 0);
  }
  // Float32 and float64 inputs draw the same mask.
  auto m32 = dropout(random_tensor(DType::f32, {999}, 4), 0.5f, 2).second;
  auto m64 = dropout(random_tensor(DType::f64, {999}, 4), 0.5f, 2).second;
  EXPECT_EQ(m32.bytes, m64.bytes);
}

TEST(CpuRandom, DropoutKeepFractionWithinStatisticalBounds) {
  const int64_t n = 200003;
  Tensor x(DType::f32, {n});
  for (int64_t i = 0; i < n; ++i) x.data<float>()[i] = 1.0f;
  for (float ratio : {0.1f, 0.5f, 0.8f}) {
    for (int64_t step : {0, 1, 1000000007}) {
      auto [y, mask] = dropout(x, ratio, step);
      int64_t kept = 0;
      for (uint8_t m : mask.bytes) kept += m;
      const double p = 1.0 - ratio, sd = std::sqrt(p * (1 - p) / n);
      EXPECT_NEAR(static_cast<double>(kept) / n, p, 5 * sd) << "ratio " << ratio << " step " << step;
      // Runs of the mask look independent: P(kept after kept) is p too.
      int64_t pairs = 0, both = 0;
      for (int64_t i = 1; i < n; ++i)
        if (mask.bytes[i - 1]) {
          ++pairs;
          both += mask.bytes[i];
        }
      EXPECT_NEAR(static_cast<double>(both) / pairs, p, 6 * std::sqrt(p * (1 - p) / pairs));
    }
  }
}

TEST(CpuRandom, DropoutSameBytesForOneAndTwoThreads) {
  Tensor x = random_tensor(DType::f32, {3, 100003}, 5);  // large enough to split over threads
  int before = runtime::cpu_threads();
  runtime::set_cpu_threads(1);
  auto one = dropout(x, 0.4f, 9);
  runtime::set_cpu_threads(2);
  auto two = dropout(x, 0.4f, 9);
  auto normal = [](int threads) {
    KernelCase kc("RandomNormal", "oxtrain", {step_tensor(9)}, {{DType::f32, {300009}}});
    kc.set_attr("shape", Attribute{std::vector<int64_t>{300009}});
    kc.set_attr("dtype", Attribute{int64_t{1}});
    kc.set_attr("key", Attribute{int64_t{5}});
    runtime::set_cpu_threads(threads);
    kc.run();
    return kc.output(0);
  };
  Tensor n1 = normal(1), n2 = normal(2);
  runtime::set_cpu_threads(before);
  EXPECT_EQ(one.first.bytes, two.first.bytes);
  EXPECT_EQ(one.second.bytes, two.second.bytes);
  EXPECT_EQ(n1.bytes, n2.bytes);
}

TEST(CpuRandom, DropoutDiffersByStepAndKey) {
  Tensor x = random_tensor(DType::f32, {4096}, 6);
  auto base = dropout(x, 0.5f, 10).second;
  auto again = dropout(x, 0.5f, 10).second;
  auto next_step = dropout(x, 0.5f, 11).second;
  auto far_step = dropout(x, 0.5f, int64_t{1} << 40).second;
  auto other_key = dropout(x, 0.5f, 10, kKey + 1).second;
  EXPECT_EQ(base.bytes, again.bytes);
  auto agreement = [&](const Tensor& a, const Tensor& b) {
    int64_t same = 0;
    for (size_t i = 0; i < a.bytes.size(); ++i) same += a.bytes[i] == b.bytes[i];
    return static_cast<double>(same) / static_cast<double>(a.bytes.size());
  };
  // Independent masks agree on about half of the elements.
  for (const Tensor* other : {&next_step, &far_step, &other_key}) {
    EXPECT_NEAR(agreement(base, *other), 0.5, 0.05);
  }
}

TEST(CpuRandom, DropoutRatioZeroAndOne) {
  Tensor x = random_tensor(DType::f32, {6, 7}, 7, -3, 3);
  x.data<float>()[3] = NAN;
  x.data<float>()[5] = INFINITY;
  x.data<float>()[8] = -2.5f;
  // Ratio 0 keeps everything unchanged (PyTorch returns the input).
  auto [y0, m0] = dropout(x, 0.0f, 3);
  for (int64_t i = 0; i < x.numel(); ++i) {
    EXPECT_EQ(m0.bytes[i], 1);
    if (i == 3) EXPECT_TRUE(std::isnan(y0.data<float>()[i]));
    else EXPECT_EQ(y0.data<float>()[i], x.data<float>()[i]);
  }
  // Ratio 1 drops everything: X * 0 as PyTorch (zeros, NaN where X is not finite).
  auto [y1, m1] = dropout(x, 1.0f, 3);
  for (int64_t i = 0; i < x.numel(); ++i) {
    EXPECT_EQ(m1.bytes[i], 0);
    float v = y1.data<float>()[i];
    if (i == 3 || i == 5) EXPECT_TRUE(std::isnan(v)) << i;
    else EXPECT_EQ(v, 0.0f) << i;
  }
  EXPECT_TRUE(std::signbit(y1.data<float>()[8]));  // -2.5 * 0 = -0
}

TEST(CpuRandom, DropoutGradAppliesTheMaskAndScale) {
  for (DType dt : kFloatTypes) {
    Tensor dy = random_tensor(dt, {3, 5, 7}, 8, -2, 2);
    Tensor mask(DType::boolean, dy.shape);
    for (int64_t i = 0; i < mask.numel(); ++i) mask.bytes[i] = (i * 7) % 3 != 0;
    for (float ratio : {0.25f, 0.0f, 1.0f}) {
      KernelCase kc("DropoutGrad", "oxtrain", {dy, mask}, {{dt, dy.shape}});
      kc.set_attr("ratio", Attribute{ratio});
      kc.run();
      std::vector<double> want;
      double scale = ratio < 1 ? 1.0 / (1.0 - ratio) : 0.0;
      for (int64_t i = 0; i < dy.numel(); ++i) want.push_back(mask.bytes[i] ? element(dy, i) * scale : 0.0);
      EXPECT_TRUE(close(kc.output(0), want, tolerance(dt))) << ratio;
    }
  }
}

TEST(CpuRandom, DropoutInPlace) {
  // The planner may give Y the buffer of X: element i is read before it is written.
  Tensor x = random_tensor(DType::f32, {1001}, 9);
  auto [want, mask] = dropout(x, 0.35f, 4);
  const runtime::KernelFactory* f = runtime::KernelRegistry::global().find("oxtrain", "DropoutTraining", runtime::Device::cpu);
  ASSERT_NE(f, nullptr);
  KernelCase kc("DropoutTraining", "oxtrain", {x, step_tensor(4)}, {{DType::f32, x.shape}, {DType::boolean, x.shape}});
  kc.set_attr("ratio", Attribute{0.35f});
  kc.set_attr("key", Attribute{static_cast<int64_t>(kKey)});
  auto kernel = (*f)(runtime::KernelInit{kc.node(), 1, runtime::Device::cpu});
  Tensor buffer = x, step = step_tensor(4), m(DType::boolean, x.shape);
  runtime::KernelArgs args;
  runtime::ExecContext ctx;
  args.context = &ctx;
  args.inputs = {{buffer.bytes.data(), DType::f32, x.shape}, {step.bytes.data(), DType::i64, {}}};
  args.outputs = {{buffer.bytes.data(), DType::f32, x.shape}, {m.bytes.data(), DType::boolean, x.shape}};
  kernel->run(args);
  EXPECT_EQ(buffer.bytes, want.bytes);
  EXPECT_EQ(m.bytes, mask.bytes);
}

TEST(CpuRandom, UniformValuesAndStatistics) {
  for (DType dt : kFloatTypes) {
    const int64_t n = 100001;
    KernelCase kc("RandomUniform", "oxtrain", {step_tensor(5)}, {{dt, {n}}});
    kc.set_attr("shape", Attribute{std::vector<int64_t>{n}});
    kc.set_attr("dtype", Attribute{static_cast<int64_t>(dtype_to_onnx(dt))});
    kc.set_attr("low", Attribute{-2.0f});
    kc.set_attr("high", Attribute{3.0f});
    kc.set_attr("key", Attribute{int64_t{77}});
    kc.run();
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; ++i) {
      double v = element(kc.output(0), i);
      ASSERT_GE(v, -2.0);
      ASSERT_LT(v, 3.0);
      sum += v;
      sq += v * v;
      if (i < 64) {  // independently: the words' bits scaled to [0, 1), then to [low, high)
        uint32_t w[4];
        math::random_block(77, 5, dt == DType::f32 ? i / 4 : i / 2, w);
        double u = dt == DType::f32 ? (w[i % 4] >> 8) / 16777216.0
                                    : ((static_cast<uint64_t>(w[2 * (i % 2)] >> 5) << 26) + (w[2 * (i % 2) + 1] >> 6)) /
                                          9007199254740992.0;
        EXPECT_NEAR(v, -2.0 + 5.0 * u, dt == DType::f32 ? 5e-7 : 1e-15) << i;
      }
    }
    double mean = sum / n, var = sq / n - mean * mean;
    EXPECT_NEAR(mean, 0.5, 5 * std::sqrt(25.0 / 12 / n));
    EXPECT_NEAR(var, 25.0 / 12, 0.03);
  }
}

TEST(CpuRandom, NormalStatistics) {
  for (DType dt : kFloatTypes) {
    const int64_t n = 200002;
    KernelCase kc("RandomNormal", "oxtrain", {step_tensor(6)}, {{dt, {n}}});
    kc.set_attr("shape", Attribute{std::vector<int64_t>{n}});
    kc.set_attr("dtype", Attribute{static_cast<int64_t>(dtype_to_onnx(dt))});
    kc.set_attr("mean", Attribute{1.5f});
    kc.set_attr("scale", Attribute{0.5f});
    kc.set_attr("key", Attribute{int64_t{78}});
    kc.run();
    double sum = 0, sq = 0, fourth = 0;
    int64_t beyond2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      double z = (element(kc.output(0), i) - 1.5) / 0.5;
      ASSERT_TRUE(std::isfinite(z));
      sum += z;
      sq += z * z;
      fourth += z * z * z * z;
      beyond2 += std::fabs(z) > 2;
    }
    EXPECT_NEAR(sum / n, 0.0, 5 / std::sqrt(n));
    EXPECT_NEAR(sq / n, 1.0, 5 * std::sqrt(2.0 / n));
    EXPECT_NEAR(fourth / n, 3.0, 0.1);
    EXPECT_NEAR(static_cast<double>(beyond2) / n, 0.0455, 0.003);  // P(|z| > 2)
    // Lanes 0 and 1 of a float32 block are the cosine and sine of one Box-Muller pair.
    if (dt == DType::f32) {
      uint32_t w[4];
      math::random_block(78, 6, 0, w);
      double u1 = (w[0] >> 8) / 16777216.0 + 1.0 / 16777216.0, u2 = (w[1] >> 8) / 16777216.0;
      double r = std::sqrt(-2 * std::log(u1));
      EXPECT_NEAR(element(kc.output(0), 0), 1.5 + 0.5 * r * std::cos(2 * M_PI * u2), 1e-6);
      EXPECT_NEAR(element(kc.output(0), 1), 1.5 + 0.5 * r * std::sin(2 * M_PI * u2), 1e-6);
    }
  }
}

TEST(CpuRandom, OnnxRandomOpsRunAtStepZero) {
  // Outside a training graph the ONNX ops draw at step 0 with the key of run seed 0.
  Tensor like(DType::f32, {3, 5});
  KernelCase kc("RandomUniformLike", "", {like}, {{DType::f32, {3, 5}}});
  kc.set_attr("low", Attribute{1.0f});
  kc.set_attr("high", Attribute{2.0f});
  kc.run();
  KernelCase ox("RandomUniform", "oxtrain", {step_tensor(0)}, {{DType::f32, {3, 5}}});
  ox.set_attr("shape", Attribute{std::vector<int64_t>{3, 5}});
  ox.set_attr("dtype", Attribute{int64_t{1}});
  ox.set_attr("low", Attribute{1.0f});
  ox.set_attr("high", Attribute{2.0f});
  ox.set_attr("key", Attribute{static_cast<int64_t>(random_node_key(0, kc.node()))});
  ox.run();
  EXPECT_EQ(kc.output(0).bytes, ox.output(0).bytes);
  for (int64_t i = 0; i < 15; ++i) {
    EXPECT_GE(kc.output(0).data<float>()[i], 1.0f);
    EXPECT_LT(kc.output(0).data<float>()[i], 2.0f);
  }
  auto normal = [] {
    KernelCase kc("RandomNormal", "", {}, {{DType::f64, {4, 4}}});
    kc.set_attr("shape", Attribute{std::vector<int64_t>{4, 4}});
    kc.set_attr("dtype", Attribute{int64_t{11}});
    kc.run();
    return kc.output(0);
  };
  Tensor first = normal();
  EXPECT_EQ(first.bytes, normal().bytes);
  EXPECT_NE(first.data<double>()[0], first.data<double>()[1]);
}

TEST(CpuRandom, InferenceDropoutMasks) {
  // Before opset 10 the mask has the input's type: all ones.
  Tensor x = random_tensor(DType::f64, {3, 4}, 10);
  KernelCase kc("Dropout", "", {x}, {{DType::f64, x.shape}, {DType::f64, x.shape}});
  kc.run(9);
  EXPECT_EQ(kc.output(0).bytes, x.bytes);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(kc.output(1).data<double>()[i], 1.0);
}

TEST(OpsRandom, DropoutSchemaOverOpsets) {
  for (int64_t opset : {7, 9, 10, 11, 12, 13, 21}) {
    auto d = dropout_node(opset, 0.25f, 1);
    infer(d->g, *d->node);
    EXPECT_EQ(d->g.value("y")->shape, (Shape{2, 3})) << opset;
    EXPECT_EQ(d->g.value("mask")->dtype, opset >= 10 ? DType::boolean : DType::f32) << opset;
    DropoutMode m = dropout_mode(*d->node, opset);
    EXPECT_TRUE(m.training) << opset;
    EXPECT_EQ(m.ratio, 0.25f) << opset;
  }
  // Inference: is_test=1 before opset 12, training_mode false or absent from 12.
  EXPECT_FALSE(dropout_mode(*dropout_node(11, 0.25f, 0)->node, 11).training);
  EXPECT_FALSE(dropout_mode(*dropout_node(13, 0.25f, 0)->node, 13).training);
  EXPECT_FALSE(dropout_mode(*dropout_node(13, 0.25f, -1)->node, 13).training);
}

TEST(OpsRandom, DropoutSchemaErrors) {
  auto runtime_mode = dropout_node(13, 0.5f, 1, true);
  std::string e = infer_error(runtime_mode->g, *runtime_mode->node);
  EXPECT_NE(e.find("Dropout 'drop'"), std::string::npos) << e;
  EXPECT_NE(e.find("training_mode input 'mode' is computed at run time"), std::string::npos) << e;
  for (float bad : {-0.1f, 1.5f, NAN}) {
    auto d = dropout_node(13, bad, 1);
    e = infer_error(d->g, *d->node);
    EXPECT_NE(e.find("Dropout 'drop': ratio"), std::string::npos) << e;
    EXPECT_NE(e.find("outside [0, 1]"), std::string::npos) << e;
    auto old = dropout_node(10, bad, 1);
    EXPECT_NE(infer_error(old->g, *old->node).find("outside [0, 1]"), std::string::npos);
  }
  // Integer data.
  auto d = dropout_node(13, 0.5f, 1);
  d->g.value("x")->dtype = DType::i64;
  EXPECT_NE(infer_error(d->g, *d->node).find("makes floating-point values"), std::string::npos);
}

TEST(OpsRandom, RandomSchemas) {
  Graph g;
  g.opsets = {{"", 17}};
  Value* x = g.add_value("x", DType::f64, {2, 1, 3}, Role::Input);
  x->rank_known = true;
  Node* like = g.add_node("RandomNormalLike", {x}, {g.add_value("a")}, "like");
  infer(g, *like);
  EXPECT_EQ(g.value("a")->dtype, DType::f64);
  EXPECT_EQ(g.value("a")->shape, (Shape{2, 1, 3}));
  like->attrs["dtype"].value = int64_t{1};
  infer(g, *like);
  EXPECT_EQ(g.value("a")->dtype, DType::f32);
  Node* uni = g.add_node("RandomUniform", {}, {g.add_value("b")}, "uni");
  uni->attrs["shape"].value = std::vector<int64_t>{4, 0, 2};
  infer(g, *uni);
  EXPECT_EQ(g.value("b")->dtype, DType::f32);
  EXPECT_EQ(g.value("b")->shape, (Shape{4, 0, 2}));
  EXPECT_FALSE(node_facts(*like).trainable(0));
  // Errors name the node and say what is wrong.
  like->attrs["dtype"].value = int64_t{7};
  EXPECT_NE(infer_error(g, *like).find("RandomNormalLike 'like': its dtype attribute is int64"), std::string::npos);
  like->attrs["dtype"].value = int64_t{1};
  like->attrs["scale"].value = -1.0f;
  EXPECT_NE(infer_error(g, *like).find("RandomNormalLike 'like': mean 0 and scale -1"), std::string::npos);
  uni->attrs["low"].value = 2.0f;
  uni->attrs["high"].value = 1.0f;
  EXPECT_NE(infer_error(g, *uni).find("low <= high"), std::string::npos);
  uni->attrs.erase("low");
  uni->attrs.erase("high");
  uni->attrs.erase("shape");
  EXPECT_NE(infer_error(g, *uni).find("RandomUniform 'uni': attribute shape is required"), std::string::npos);
  uni->attrs["shape"].value = std::vector<int64_t>{2, -3};
  EXPECT_NE(infer_error(g, *uni).find("negative dimension"), std::string::npos);
}

namespace {

// A small classifier with two training-mode Dropouts (opset 13) and a stochastic-depth-like
// RandomUniformLike: x [4, 6] -> Dropout -> Gemm -> Dropout -> + RandomUniformLike -> logits.
Graph dropout_model(float ratio = 0.5f) {
  ModelBuilder b(13);
  b.input("x", {4, 6});
  b.initializer("w1", {8, 6}, 0.1f);
  b.initializer("w2", {3, 8}, 0.2f);
  b.initializer("ratio", {}, ratio);
  auto* mode = b.graph().add_initializer();
  mode->set_name("mode");
  mode->set_data_type(onnx::TensorProto::BOOL);
  mode->add_int32_data(1);
  b.node("Dropout", {"x", "ratio", "mode"}, {"d1", "m1"}, "drop1");
  auto& g1 = b.node("Gemm", {"d1", "w1"}, {"h"}, "fc1");
  set_int(g1, "transB", 1);
  b.node("Dropout", {"h", "ratio", "mode"}, {"d2"}, "drop2");
  auto& g2 = b.node("Gemm", {"d2", "w2"}, {"z"}, "fc2");
  set_int(g2, "transB", 1);
  b.node("RandomUniformLike", {"z"}, {"noise"}, "noise");
  b.node("Add", {"z", "noise"}, {"y"}, "add");
  b.output("y");
  return import_onnx_model(b.model, ".", {});
}

struct TrainRun {
  autodiff::TrainingGraph tg;
  std::unique_ptr<runtime::Session> session;
};

TrainRun training_session(uint64_t seed, bool optimizer = true) {
  autodiff::TrainingOptions o;
  o.random_seed = seed;
  o.optimizer = optimizer;
  TrainRun r{autodiff::build_training_graph(dropout_model(), o), nullptr};
  runtime::SessionOptions so;
  so.keep_all_values = true;
  r.session = std::make_unique<runtime::Session>(std::move(r.tg.graph), so);
  return r;
}

// Runs step `step` and returns (mask 1, mask 2, noise).
std::vector<Tensor> run_step(TrainRun& r, int64_t step) {
  runtime::Session& s = *r.session;
  s.feed("x", random_tensor(DType::f32, {4, 6}, 31));
  s.feed(r.tg.labels, Tensor::from_int64({0, 2, 1, 2}, {4}));
  if (!r.tg.learning_rate.empty()) s.feed(r.tg.learning_rate, Tensor::from_float({0.0f}, {}));
  s.feed(r.tg.step, step_tensor(step));
  s.run();
  const graph::Graph& g = s.graph();
  std::vector<Tensor> out;
  for (const char* name : {"drop1", "drop2"})
    for (const auto& n : g.nodes())
      if (n->name == name) out.push_back(s.fetch(n->output(1)->name));
  out.push_back(s.fetch("noise"));
  return out;
}

}  // namespace

TEST(TrainingRandom, RewriteReadsTheStep) {
  autodiff::TrainingOptions o;
  o.random_seed = 5;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(dropout_model(), o);
  ASSERT_FALSE(tg.step.empty());
  const Value* step = tg.graph.value(tg.step);
  int dropouts = 0, uniforms = 0, grads = 0;
  std::set<int64_t> keys;
  for (const auto& n : tg.graph.nodes()) {
    EXPECT_FALSE(n->domain.empty() && (n->op_type == "Dropout" || n->op_type == "RandomUniformLike")) << n->name;
    if (n->domain != "oxtrain") continue;
    if (n->op_type == "DropoutTraining") {
      ++dropouts;
      EXPECT_EQ(n->input(1), step);
      EXPECT_EQ(n->attr_float("ratio", 0), 0.5f);
      keys.insert(n->attr_int("key", 0));
      ASSERT_NE(n->output(1), nullptr);  // drop2's mask is added: backward reads it
      EXPECT_EQ(n->output(1)->dtype, DType::boolean);
    }
    if (n->op_type == "RandomUniform") {
      ++uniforms;
      EXPECT_EQ(n->input(0), step);
      EXPECT_EQ(n->attr_ints("shape"), (std::vector<int64_t>{4, 3}));
      keys.insert(n->attr_int("key", 0));
    }
    grads += n->op_type == "DropoutGrad";
  }
  EXPECT_EQ(dropouts, 2);
  EXPECT_EQ(uniforms, 1);
  EXPECT_EQ(grads, 1);  // drop1 reads the model's input, which takes no gradient
  EXPECT_EQ(keys.size(), 3u);  // one key per node
  // The step input exists without an optimizer too.
  autodiff::TrainingOptions no_opt;
  no_opt.optimizer = false;
  autodiff::TrainingGraph g2 = autodiff::build_training_graph(dropout_model(), no_opt);
  EXPECT_FALSE(g2.step.empty());
  EXPECT_NE(std::find(g2.graph.inputs.begin(), g2.graph.inputs.end(), g2.graph.value(g2.step)), g2.graph.inputs.end());
}

TEST(TrainingRandom, InferenceDropoutIsNotRewritten) {
  auto d = dropout_node(13, 0.5f, 0);
  Graph& g = d->g;
  Value* w = g.add_initializer("w", random_tensor(DType::f32, {3, 2}, 1), Role::Parameter);
  Value* z = g.add_value("z");
  g.add_node("MatMul", {g.value("y"), w}, {z}, "mm");
  g.outputs.push_back(z);
  prepare(g);
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), {});
  for (const auto& n : tg.graph.nodes()) EXPECT_NE(n->op_type, "DropoutTraining");
}

TEST(TrainingRandom, SameSeedAndStepGiveTheSameMasksInAnotherSession) {
  TrainRun first = training_session(42);
  std::vector<Tensor> s0 = run_step(first, 0), s1 = run_step(first, 1), s7 = run_step(first, 7);
  // A second session (a resumed run) at step 7, then 1: the same masks.
  TrainRun resumed = training_session(42);
  std::vector<Tensor> r7 = run_step(resumed, 7), r1 = run_step(resumed, 1);
  for (size_t i = 0; i < s7.size(); ++i) {
    EXPECT_EQ(s7[i].bytes, r7[i].bytes) << i;
    EXPECT_EQ(s1[i].bytes, r1[i].bytes) << i;
    EXPECT_NE(s0[i].bytes, s1[i].bytes) << i;  // another step
  }
  // Two nodes of one step differ (the masks have different shapes: compare the first bytes).
  ASSERT_EQ(s0[0].numel(), 24);
  ASSERT_EQ(s0[1].numel(), 32);
  EXPECT_NE(std::vector<uint8_t>(s0[0].bytes.begin(), s0[0].bytes.begin() + 24),
            std::vector<uint8_t>(s0[1].bytes.begin(), s0[1].bytes.begin() + 24));
  // Another seed, other masks.
  TrainRun other = training_session(43);
  std::vector<Tensor> o0 = run_step(other, 0);
  for (size_t i = 0; i < o0.size(); ++i) EXPECT_NE(o0[i].bytes, s0[i].bytes) << i;
}

TEST(TrainingRandom, SeedDecidesTheTrainedWeights) {
  // The same data every step; only the random ops' seed differs between the runs.
  auto train = [](uint64_t seed) {
    TrainRun r = training_session(seed);
    for (int64_t step = 0; step < 3; ++step) {
      runtime::Session& s = *r.session;
      s.feed("x", random_tensor(DType::f32, {4, 6}, 31));
      s.feed(r.tg.labels, Tensor::from_int64({0, 2, 1, 2}, {4}));
      s.feed(r.tg.learning_rate, Tensor::from_float({0.1f}, {}));
      s.feed(r.tg.step, step_tensor(step));
      s.run();
    }
    std::vector<Tensor> weights;
    for (const char* w : {"w1", "w2"}) weights.push_back(r.session->fetch(w));
    return weights;
  };
  std::vector<Tensor> a = train(42), b = train(42), c = train(43);
  Tensor start = dropout_model().value("w1")->data ? *dropout_model().value("w1")->data : Tensor();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].bytes, b[i].bytes) << i;
    EXPECT_NE(a[i].bytes, c[i].bytes) << i;
  }
  EXPECT_NE(a[0].bytes, start.bytes);  // it trained
}
