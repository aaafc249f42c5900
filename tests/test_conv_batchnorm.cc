// The convolution and batch-norm fusion (autodiff::fuse_conv_batchnorm): its CPU kernels
// against the unfused ops they replace, the nodes it makes of a ResNet, and training steps of
// the fused graph against the unfused graph's.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "autodiff/training.h"
#include "base/half.h"
#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "graph/zoo.h"
#include "runtime/math/conv_batchnorm.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

std::map<std::string, int> op_counts(const Graph& g) {
  std::map<std::string, int> c;
  for (const auto& n : g.nodes()) ++c[n->op_type];
  return c;
}

void conv_attrs(test::KernelCase& c) {
  c.set_attr("pads", Attribute{std::vector<int64_t>{1, 0, 1, 2}});
  c.set_attr("strides", Attribute{std::vector<int64_t>{2, 1}});
}

// Relu(x * scale + bias) per channel of x [N, C, H, W], as the kernels compute it in T.
Tensor prologue_of(const Tensor& x, const Tensor& scale, const Tensor& bias) {
  Tensor p(x.dtype, x.shape);
  const int64_t channels = x.shape[1], spatial = x.shape[2] * x.shape[3];
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = (i / spatial) % channels;
    if (x.dtype == DType::f32)
      p.data<float>()[i] = runtime::math::scale_bias_relu(x.data<float>()[i], scale.data<float>()[c], bias.data<float>()[c]);
    else
      p.data<double>()[i] = runtime::math::scale_bias_relu(x.data<double>()[i], scale.data<double>()[c], bias.data<double>()[c]);
  }
  return p;
}

// Each channel's sum and sum of squares of y [N, K, H, W], in double.
std::pair<std::vector<double>, std::vector<double>> channel_sums(const Tensor& y) {
  const int64_t channels = y.shape[1], spatial = y.shape[2] * y.shape[3];
  std::vector<double> sum(channels), sq(channels);
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double v = test::element(y, i);
    sum[(i / spatial) % channels] += v;
    sq[(i / spatial) % channels] += v * v;
  }
  return {sum, sq};
}

}  // namespace

// oxtrain.ConvStats is the CPU's Conv on X (or on the prologue's output) bit for bit, with each
// output channel's sums; odd sizes, a stride and uneven padding.
TEST(ConvStats, IsConvThenChannelSums) {
  for (DType dt : test::kFloatTypes) {
    for (bool with_prologue : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (with_prologue ? " with prologue" : ""));
      const Tensor x = test::random_tensor(dt, {2, 5, 7, 9}, 1, -1.0, 2.0);
      const Tensor w = test::random_tensor(dt, {6, 5, 3, 3}, 2);
      const Tensor scale = test::random_tensor(dt, {5}, 3, 0.5, 1.5);
      const Tensor bias = test::random_tensor(dt, {5}, 4, -0.5, 0.5);
      std::vector<Tensor> inputs = {x, w};
      if (with_prologue) inputs.insert(inputs.end(), {scale, bias});
      test::KernelCase plain("Conv", "", {with_prologue ? prologue_of(x, scale, bias) : x, w}, {{dt, {2, 6, 4, 9}}});
      conv_attrs(plain);
      plain.run();
      test::KernelCase fused("ConvStats", kOxtrainDomain, inputs, {{dt, {2, 6, 4, 9}}, {dt, {6}}, {dt, {6}}});
      conv_attrs(fused);
      fused.run();
      EXPECT_EQ(fused.output(0).bytes, plain.output(0).bytes);
      const auto [sum, sq] = channel_sums(plain.output(0));
      EXPECT_TRUE(test::close(fused.output(1), sum, test::tolerance(dt)));
      EXPECT_TRUE(test::close(fused.output(2), sq, test::tolerance(dt)));
      // The prologue clips: some of its outputs are zero, so a missing ReLU would show.
      if (with_prologue) {
        EXPECT_NE(prologue_of(x, scale, bias).bytes, x.bytes);
      }
    }
  }
}

TEST(ConvStats, GradFilterThroughThePrologueIsConvGradFilter) {
  for (DType dt : test::kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor dy = test::random_tensor(dt, {2, 6, 4, 9}, 5);
    const Tensor x = test::random_tensor(dt, {2, 5, 7, 9}, 6, -1.0, 2.0);
    const Tensor scale = test::random_tensor(dt, {5}, 7, 0.5, 1.5);
    const Tensor bias = test::random_tensor(dt, {5}, 8, -0.5, 0.5);
    auto attrs = [](test::KernelCase& c) {
      conv_attrs(c);
      c.set_attr("filter_shape", Attribute{std::vector<int64_t>{6, 5, 3, 3}});
    };
    test::KernelCase plain("ConvGradFilter", kOxtrainDomain, {dy, prologue_of(x, scale, bias)}, {{dt, {6, 5, 3, 3}}});
    attrs(plain);
    plain.run();
    test::KernelCase fused("ConvGradFilterScaleBiasRelu", kOxtrainDomain, {dy, x, scale, bias}, {{dt, {6, 5, 3, 3}}});
    attrs(fused);
    fused.run();
    EXPECT_EQ(fused.output(0).bytes, plain.output(0).bytes);
    test::KernelCase unfused_input("ConvGradFilter", kOxtrainDomain, {dy, x}, {{dt, {6, 5, 3, 3}}});
    attrs(unfused_input);
    unfused_input.run();
    EXPECT_NE(fused.output(0).bytes, unfused_input.output(0).bytes);
  }
}

// The data gradient through the ReLU into batch norm's weight gradients, and batch norm's input
// gradient from those, against ConvGradData, the recomputed output's ReLU mask (ReluGrad) and
// BatchNormGrad: the masked gradient bit for bit, the sums and dX to rounding.
TEST(ConvStats, DataGradientThroughReluIntoBatchNormWeights) {
  for (DType dt : test::kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Shape xs{2, 5, 7, 9}, c{5};
    const Tensor dy = test::random_tensor(dt, {2, 6, 4, 9}, 21);
    const Tensor w = test::random_tensor(dt, {6, 5, 3, 3}, 22);
    const Tensor x = test::random_tensor(dt, xs, 23, -1.0, 2.0);
    const Tensor gamma = test::random_tensor(dt, c, 24, 0.5, 1.5);
    const Tensor beta = test::random_tensor(dt, c, 25, -0.5, 0.5);
    const Tensor mean = test::random_tensor(dt, c, 26, 0.0, 1.0);
    const Tensor inv_std = test::random_tensor(dt, c, 27, 0.5, 2.0);
    auto attrs = [&](test::KernelCase& k) {
      conv_attrs(k);
      k.set_attr("input_shape", Attribute{std::vector<int64_t>(xs.begin(), xs.end())});
    };
    test::KernelCase dgrad("ConvGradData", kOxtrainDomain, {dy, w}, {{dt, xs}});
    attrs(dgrad);
    dgrad.run();
    test::KernelCase z("BatchNormReluApply", kOxtrainDomain, {x, gamma, beta, mean, inv_std}, {{dt, xs}});
    z.run();
    test::KernelCase relu_grad("ReluGrad", kOxtrainDomain, {dgrad.output(0), z.output(0)}, {{dt, xs}});
    relu_grad.run();
    test::KernelCase bn_grad("BatchNormGrad", kOxtrainDomain, {relu_grad.output(0), x, gamma, mean, inv_std},
                             {{dt, xs}, {dt, c}, {dt, c}});
    bn_grad.run();
    test::KernelCase fused("ConvGradDataReluBatchNormWeight", kOxtrainDomain, {dy, w, x, gamma, beta, mean, inv_std},
                           {{dt, xs}, {dt, c}, {dt, c}});
    attrs(fused);
    fused.run();
    EXPECT_EQ(fused.output(0).bytes, relu_grad.output(0).bytes);
    EXPECT_NE(fused.output(0).bytes, dgrad.output(0).bytes);  // the mask did clip
    EXPECT_TRUE(test::close(fused.output(1), test::values(bn_grad.output(1)), test::tolerance(dt)));
    EXPECT_TRUE(test::close(fused.output(2), test::values(bn_grad.output(2)), test::tolerance(dt)));
    test::KernelCase apply("BatchNormGradApply", kOxtrainDomain,
                           {fused.output(0), x, gamma, mean, inv_std, fused.output(1), fused.output(2)}, {{dt, xs}});
    apply.run();
    EXPECT_TRUE(test::close(apply.output(0), test::values(bn_grad.output(0)), test::tolerance(dt)));
  }
}

// BatchNormFinalize from the sums gives BatchNormTraining's statistics and running statistics
// (to the rounding of the sums), and its affine form gives BatchNormTraining's output. The
// data's mean is several standard deviations away from zero, where E[x^2] - E[x]^2 cancels.
TEST(ConvStats, FinalizeIsBatchNormTrainingFromSums) {
  for (DType dt : test::kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Shape shape{4, 6, 5, 3};
    const int64_t count = 4 * 5 * 3;
    Tensor x = test::random_tensor(dt, shape, 9, 2.0, 4.0);
    const Tensor gamma = test::random_tensor(dt, {6}, 10, 0.5, 1.5);
    const Tensor beta = test::random_tensor(dt, {6}, 11);
    const Tensor run_mean = test::random_tensor(dt, {6}, 12);
    const Tensor run_var = test::random_tensor(dt, {6}, 13, 0.5, 1.5);
    test::KernelCase bn("BatchNormTraining", kOxtrainDomain, {x, gamma, beta, run_mean, run_var},
                        {{dt, shape}, {dt, {6}}, {dt, {6}}, {dt, {6}}, {dt, {6}}});
    bn.set_attr("momentum", Attribute{0.8f});
    bn.run();
    const auto [sum, sq] = channel_sums(x);
    Tensor sum_t(dt, {6}), sq_t(dt, {6});
    for (int64_t c = 0; c < 6; ++c) {
      test::set_element(sum_t, c, sum[c]);
      test::set_element(sq_t, c, sq[c]);
    }
    test::KernelCase fin("BatchNormFinalize", kOxtrainDomain, {sum_t, sq_t, gamma, beta, run_mean, run_var},
                         {{dt, {6}}, {dt, {6}}, {dt, {6}}, {dt, {6}}, {dt, {6}}, {dt, {6}}});
    fin.set_attr("momentum", Attribute{0.8f});
    fin.set_attr("count", Attribute{count});
    fin.run();
    // float32 sums hold 7 digits; the variance loses (mean / std)^2 ~ 100 of that.
    const double tol = dt == DType::f32 ? 2e-5 : 1e-12;
    for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(test::close(fin.output(i), test::values(bn.output(i + 1)), tol)) << i;
    std::vector<double> affine(static_cast<size_t>(x.numel()));
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t c = (i / 15) % 6;
      affine[i] = test::element(x, i) * test::element(fin.output(4), c) + test::element(fin.output(5), c);
    }
    EXPECT_TRUE(test::close(bn.output(0), affine, dt == DType::f32 ? 1e-4 : 1e-11));
    // The running variance is the unbiased one: the population variance would be off by 1/59.
    EXPECT_GT(std::abs(test::element(fin.output(1), 0) - 0.8 * test::element(run_var, 0)), 0.0);
  }
}

// In float16 the affine form is rounded to float16 (attribute `to`), from the float32 values.
TEST(ConvStats, FinalizeRoundsTheAffineFormToTheActivationType) {
  const Tensor sum = test::random_tensor(DType::f32, {3}, 14, 10.0, 20.0);
  const Tensor sq = test::random_tensor(DType::f32, {3}, 15, 400.0, 500.0);
  const Tensor gamma = test::random_tensor(DType::f32, {3}, 16, 0.5, 1.5);
  const Tensor beta = test::random_tensor(DType::f32, {3}, 17);
  const Tensor stats = test::random_tensor(DType::f32, {3}, 18, 0.5, 1.5);
  auto run = [&](DType to) {
    test::KernelCase fin("BatchNormFinalize", kOxtrainDomain, {sum, sq, gamma, beta, stats, stats},
                         {{DType::f32, {3}}, {DType::f32, {3}}, {DType::f32, {3}}, {DType::f32, {3}}, {to, {3}}, {to, {3}}});
    fin.set_attr("count", Attribute{int64_t{1}});
    fin.set_attr("to", Attribute{int64_t{dtype_to_onnx(to)}});
    fin.run();
    return std::vector<Tensor>{fin.output(4), fin.output(5)};
  };
  const auto full = run(DType::f32), half = run(DType::f16);
  for (size_t k = 0; k < 2; ++k)
    for (int64_t c = 0; c < 3; ++c) {
      const float want = test::element(full[k], c);
      EXPECT_EQ(test::element(half[k], c), static_cast<double>(oxtrain::half_to_float(oxtrain::float_to_half(want, false), false)));
    }
}

// In a ResNet-50 every convolution computes its batch norm's statistics (53: 49 fused with a
// ReLU, 4 on the downsample paths), and the 32 batch norms whose output only the next
// convolution reads (bn1 and bn2 of each bottleneck) are applied in that convolution's
// prologue, forward and in the weight gradient; their gradients come with the data gradient
// before them, so their outputs are neither written nor recomputed. Without recomputation
// backward reads those outputs, so none is applied in a prologue.
TEST(ConvBatchNormFusion, ResNet50Nodes) {
  autodiff::TrainingOptions o;
  o.fuse_batchnorm_relu = true;
  o.recompute_batchnorm_relu = true;
  o.fuse_conv_batchnorm = true;
  o.half = DType::f16;
  o.channels_last = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(test::zoo_at_batch("resnet50", 2, 32, 10, 5), o);
  EXPECT_EQ(tg.conv_statistics, 53);
  EXPECT_EQ(tg.conv_prologues, 32);
  EXPECT_EQ(tg.conv_gradients, 32);
  EXPECT_EQ(tg.recomputed_values, 49 - 32);
  auto counts = op_counts(tg.graph);
  EXPECT_EQ(counts["ConvStats"], 53);
  EXPECT_EQ(counts["BatchNormFinalize"], 53);
  EXPECT_EQ(counts["ConvGradFilterScaleBiasRelu"], 32);
  EXPECT_EQ(counts["ConvGradFilter"], 21);
  EXPECT_EQ(counts["Conv"], 0);
  EXPECT_EQ(counts["BatchNormReluTraining"], 0);
  EXPECT_EQ(counts["BatchNormTraining"], 0);
  EXPECT_EQ(counts["ConvGradDataReluBatchNormWeight"], 32);
  EXPECT_EQ(counts["BatchNormGradApply"], 32);
  EXPECT_EQ(counts["BatchNormReluGrad"], 17);  // the residual joins' and the stem's
  EXPECT_EQ(counts["ConvGradData"], 52 - 32);
  int prologues = 0, forward_applies = 0;
  for (const auto& n : tg.graph.nodes()) {
    if (n->op_type == "ConvStats" && n->input(2)) {
      ++prologues;
      // The prologue's scale and bias: the finalize's affine form, in the activations' type.
      EXPECT_EQ(n->input(2)->producer->op_type, "BatchNormFinalize");
      EXPECT_EQ(n->input(2)->dtype, DType::f16);
      EXPECT_EQ(n->input(0)->producer->op_type, "ConvStats");
    }
    forward_applies += (n->op_type == "BatchNormReluApply" || n->op_type == "BatchNormApply") &&
                       n->name.find("/apply") != std::string::npos;
  }
  EXPECT_EQ(prologues, 32);
  EXPECT_EQ(forward_applies, 53 - 32);
  o.recompute_batchnorm_relu = false;
  tg = autodiff::build_training_graph(test::zoo_at_batch("resnet50", 2, 32, 10, 5), o);
  EXPECT_EQ(tg.conv_statistics, 53);
  EXPECT_EQ(tg.conv_prologues, 0);
  EXPECT_EQ(tg.conv_gradients, 32);
}

namespace {

test::TrainingRun resnet18_run(bool fuse, DType half, bool channels_last, int64_t image) {
  autodiff::TrainingOptions o;
  o.fuse_batchnorm_relu = true;
  o.recompute_batchnorm_relu = true;
  o.fuse_conv_batchnorm = fuse;
  o.half = half;
  o.channels_last = channels_last;
  return test::make_training_run(test::zoo_at_batch("resnet18", 4, image, 10, 5), o);
}

// The largest difference of a state between two runs, relative to the state's largest value.
double state_difference(const test::TrainingRun& a, const test::TrainingRun& b, std::string* worst) {
  double most = 0;
  for (const std::string& s : a.states) {
    const Tensor& ta = a.session->fetch(s);
    if (!is_float(ta.dtype)) continue;
    const double d = test::max_relative_difference(b.session->fetch(s), ta);
    if (!(d <= most)) {
      most = d;
      *worst = s;
    }
  }
  return most;
}

}  // namespace

// Training steps of a ResNet-18 with the fusion against without. After one step the weights,
// momentum and running statistics agree to float32 rounding in float32 (the statistics come
// from sums, the prologue from the affine form) and to float16 rounding in float16
// channels-last. Later steps are compared by their loss only: at this size a perturbation of
// the learning rate by 2e-6 moves some weight gradients of the second step by 20% in the
// unfused graph alone (a ReLU or max-pool tie flips), so states cannot be held closer than that.
TEST(ConvBatchNormFusion, TrainsAsTheUnfusedGraph) {
  struct Case {
    DType half;
    bool channels_last;
    int64_t image;
    double loss_tol, state_tol;
  };
  // float32 at 64x64: at 32x32 the last stage's batch norms see 4 values per channel, where the
  // variance from sums is ill-conditioned enough to move the gradients by 1e-4.
  for (const Case& c : {Case{DType::undefined, false, 64, 1e-5, 2e-5}, Case{DType::f16, true, 32, 2e-3, 1e-2}}) {
    SCOPED_TRACE(c.half == DType::undefined ? "float32" : "float16 channels-last");
    test::TrainingRun plain = resnet18_run(false, c.half, c.channels_last, c.image);
    test::TrainingRun fused = resnet18_run(true, c.half, c.channels_last, c.image);
    EXPECT_EQ(fused.tg.conv_statistics, 20);
    EXPECT_EQ(fused.tg.conv_prologues, 8);  // bn1 of each basic block
    EXPECT_EQ(fused.tg.conv_gradients, 8);
    ASSERT_EQ(plain.states, fused.states);
    for (int64_t s = 0; s < 3; ++s) {
      test::run_training_step(plain, 100 + s, {1, 4, 9, 0}, 0.05f, s);
      test::run_training_step(fused, 100 + s, {1, 4, 9, 0}, 0.05f, s);
      const double a = test::element(plain.session->fetch(plain.tg.loss), 0);
      const double b = test::element(fused.session->fetch(fused.tg.loss), 0);
      EXPECT_TRUE(std::isfinite(a));
      EXPECT_NEAR(b, a, (s == 0 ? c.loss_tol : 1e-2) * std::abs(a)) << "step " << s;
      if (s > 0) continue;
      std::string worst;
      const double d = state_difference(plain, fused, &worst);
      std::printf("%s: largest state difference after a step %.3g (%s)\n",
                  c.half == DType::undefined ? "float32" : "float16", d, worst.c_str());
      EXPECT_LT(d, c.state_tol) << worst;
      // The runs do differ: the fused graph is not the unfused one under another name.
      EXPECT_GT(test::differing_states(plain, fused), 0);
    }
  }
}

namespace {

// input -> Conv -> BN -> Add(input) -> Relu -> Conv -> BN -> Relu -> pool -> Gemm: the first
// batch norm has a residual, the graph's input, which takes no gradient, so its gradient node
// has no dR output although its ReLU's mask depends on the residual. Random convolution and
// Gemm weights; batch norms as PyTorch initialises them.
Graph residual_from_input_model() {
  test::ModelBuilder b(13);
  b.input("input", {4, 8, 8, 8});
  b.initializer("w1", {8, 8, 3, 3}, 0);
  b.initializer("w2", {8, 8, 3, 3}, 0);
  b.initializer("fc.w", {10, 8}, 0);
  b.initializer("fc.b", {10}, 0);
  for (const char* bn : {"bn1", "bn2"}) {
    b.initializer(std::string(bn) + ".g", {8}, 1);
    b.initializer(std::string(bn) + ".b", {8}, 0);
    b.initializer(std::string(bn) + ".m", {8}, 0);
    b.initializer(std::string(bn) + ".v", {8}, 1);
  }
  uint64_t seed = 5;
  for (auto& t : *b.graph().mutable_initializer()) {
    if (t.name().find(".w") == std::string::npos && t.name()[0] != 'w') continue;
    const Tensor r = test::random_tensor(DType::f32, {static_cast<int64_t>(t.raw_data().size() / 4)}, ++seed, -0.3, 0.3);
    t.set_raw_data(std::string(reinterpret_cast<const char*>(r.bytes.data()), r.bytes.size()));
  }
  auto& c1 = b.node("Conv", {"input", "w1"}, {"y1"}, "conv1");
  test::set_ints(c1, "pads", {1, 1, 1, 1});
  b.node("BatchNormalization", {"y1", "bn1.g", "bn1.b", "bn1.m", "bn1.v"}, {"n1"}, "bn1");
  b.node("Add", {"n1", "input"}, {"s1"}, "join");
  b.node("Relu", {"s1"}, {"z1"}, "relu1");
  auto& c2 = b.node("Conv", {"z1", "w2"}, {"y2"}, "conv2");
  test::set_ints(c2, "pads", {1, 1, 1, 1});
  b.node("BatchNormalization", {"y2", "bn2.g", "bn2.b", "bn2.m", "bn2.v"}, {"n2"}, "bn2");
  b.node("Relu", {"n2"}, {"z2"}, "relu2");
  b.node("GlobalAveragePool", {"z2"}, {"p"}, "pool");
  b.node("Flatten", {"p"}, {"f"}, "flatten");
  auto& fc = b.node("Gemm", {"f", "fc.w", "fc.b"}, {"y"}, "fc");
  test::set_int(fc, "transB", 1);
  b.output("y");
  return graph::import_onnx_model(b.model, ".", {});
}

}  // namespace

// A batch norm whose residual takes no gradient keeps its own gradient node: the ReLU's mask
// there is BN(Y) + R > 0, which the fused data gradient (BN(Y) > 0) does not compute. Its
// statistics still come with the convolution, and the step matches the unfused graph's.
TEST(ConvBatchNormFusion, KeepsTheGradientOfAResidualThatTakesNoGradient) {
  std::vector<test::TrainingRun> runs;
  for (bool fuse : {false, true}) {
    autodiff::TrainingOptions o;
    o.fuse_batchnorm_relu = o.recompute_batchnorm_relu = true;
    o.fuse_conv_batchnorm = fuse;
    runs.push_back(test::make_training_run(residual_from_input_model(), o));
    test::run_training_step(runs.back(), 7, {1, 4, 9, 0}, 0.1f, 0);
  }
  EXPECT_EQ(runs[1].tg.conv_statistics, 2);
  EXPECT_EQ(runs[1].tg.conv_gradients, 0);
  EXPECT_EQ(op_counts(runs[1].session->graph())["BatchNormReluGrad"], 2);
  std::string worst;
  EXPECT_LT(state_difference(runs[0], runs[1], &worst), 1e-5) << worst;
}
