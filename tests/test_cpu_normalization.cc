// CPU kernels of the normalization family against naive references in double:
// LayerNormalization and oxtrain.LayerNormalizationGrad (closed form), ReduceSum and
// oxtrain.ReduceSumGrad, and the core kernels the family relies on at every axis: ReduceMean
// over every combination of axes, Softmax on every axis, MatMul on the transformer shapes.
// Plus the schema's and kernels' refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::close;
using test::element;
using test::kFloatTypes;
using test::KernelCase;
using test::random_tensor;
using test::tolerance;
using test::values;

namespace {

std::vector<int64_t> coords(int64_t flat, const Shape& s) {
  std::vector<int64_t> c(s.size());
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    c[d] = flat % s[d];
    flat /= s[d];
  }
  return c;
}

// Flat index into `s` (numpy-broadcast, right-aligned, to a shape whose coords are `c`; dims of
// `s` beyond c's rank are 1).
int64_t broadcast_index(const Shape& s, const std::vector<int64_t>& c) {
  int64_t idx = 0;
  const int64_t lead = static_cast<int64_t>(c.size()) - static_cast<int64_t>(s.size());
  for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d)
    idx = idx * s[d] + (s[d] == 1 || lead + d < 0 ? 0 : c[lead + d]);
  return idx;
}

Tensor cast_to(DType dt, const std::vector<double>& v, const Shape& s) {
  Tensor t(dt, s);
  for (int64_t i = 0; i < t.numel(); ++i) test::set_element(t, i, v[static_cast<size_t>(i)]);
  return t;
}

// ---------------------------------------------------------------------------------------
// LayerNormalization in double, straight from ONNX's definition.

struct LnRef {
  std::vector<double> y, mean, inv_std;
};

struct LnCase {
  Shape x;
  int64_t axis;
  Shape scale;
  bool bias;
  Shape bias_shape = {};  // empty: like scale
};

LnRef ln_reference(const Tensor& x, int64_t axis, const Tensor& scale, const Tensor* bias, double eps) {
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  if (axis < 0) axis += rank;
  const Shape normalized(x.shape.begin() + axis, x.shape.end());
  const int64_t d = graph::shape_numel(normalized), rows = x.numel() / std::max<int64_t>(d, 1);
  LnRef r;
  r.y.resize(static_cast<size_t>(x.numel()));
  for (int64_t row = 0; row < rows; ++row) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < d; ++j) m += element(x, row * d + j);
    m /= static_cast<double>(d);
    for (int64_t j = 0; j < d; ++j) v += std::pow(element(x, row * d + j) - m, 2);
    v /= static_cast<double>(d);
    const double inv = 1.0 / std::sqrt(v + eps);
    r.mean.push_back(m);
    r.inv_std.push_back(inv);
    for (int64_t j = 0; j < d; ++j) {
      const auto c = coords(j, normalized);
      const double s = element(scale, broadcast_index(scale.shape, c));
      const double b = bias ? element(*bias, broadcast_index(bias->shape, c)) : 0.0;
      r.y[row * d + j] = (element(x, row * d + j) - m) * inv * s + b;
    }
  }
  return r;
}

Shape stats_shape(const Shape& x, int64_t axis) {
  if (axis < 0) axis += static_cast<int64_t>(x.size());
  Shape s(x.begin(), x.begin() + axis);
  s.resize(x.size(), 1);
  return s;
}

const LnCase kLnCases[] = {
    {{2, 3, 5}, -1, {5}, true},         {{4, 6, 8}, 1, {6, 8}, true},    {{3, 4, 5}, 0, {3, 4, 5}, false},
    {{2, 7, 9}, -1, {9}, false},        {{3, 4, 6}, 1, {6}, true, {4, 1}},  // Scale and B broadcast
    {{2, 3, 4}, 1, {1, 3, 4}, true},    {{5, 1}, -1, {1}, true},          {{6, 768}, -1, {768}, true},
    {{2, 9, 9, 96}, 3, {96}, true},     // ConvNeXt's channels-last norm
};

void run_layer_norm(DType dt, const LnCase& c, uint64_t seed, double eps, int64_t opset) {
  // Rows with an offset, so that the mean matters.
  Tensor x = random_tensor(dt, c.x, seed, 2.0, 4.0);
  Tensor scale = random_tensor(dt, c.scale, seed + 1, 0.5, 1.5);
  Tensor bias = random_tensor(dt, c.bias_shape.empty() ? c.scale : c.bias_shape, seed + 2);
  // The attribute is a float: the reference takes the same epsilon.
  LnRef want = ln_reference(x, c.axis, scale, c.bias ? &bias : nullptr, static_cast<float>(eps));
  std::vector<Tensor> ins{x, scale};
  if (c.bias) ins.push_back(bias);
  const Shape stats = stats_shape(c.x, c.axis);
  KernelCase kc("LayerNormalization", "", ins, {{dt, c.x}, {dt, stats}, {dt, stats}});
  kc.set_attr("axis", Attribute{c.axis});
  kc.set_attr("epsilon", Attribute{static_cast<float>(eps)});
  kc.run(opset);
  const std::string label = graph::shape_str(c.x) + " axis " + std::to_string(c.axis) + " " + graph::dtype_name(dt);
  EXPECT_TRUE(close(kc.output(0), want.y, tolerance(dt))) << label;
  EXPECT_TRUE(close(kc.output(1), want.mean, tolerance(dt))) << label;
  EXPECT_TRUE(close(kc.output(2), want.inv_std, tolerance(dt))) << label;
}

}  // namespace

TEST(CpuNormalization, LayerNormalizationMatchesTheDefinition) {
  for (DType dt : kFloatTypes) {
    uint64_t seed = 1;
    for (const LnCase& c : kLnCases) {
      run_layer_norm(dt, c, seed, 1e-5, 17);
      seed += 3;
    }
    run_layer_norm(dt, kLnCases[0], 100, 1e-6, 18);
    run_layer_norm(dt, kLnCases[1], 101, 0.25, 21);  // a large epsilon shows in the output
  }
}

TEST(CpuNormalization, LayerNormalizationOptionalOutputsAndBias) {
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, {4, 10}, 7);
    Tensor scale = random_tensor(dt, {10}, 8);
    LnRef want = ln_reference(x, -1, scale, nullptr, 1e-5f);
    KernelCase kc("LayerNormalization", "", {x, scale}, {{dt, {4, 10}}});
    kc.run(17);
    EXPECT_TRUE(close(kc.output(0), want.y, tolerance(dt)));
  }
}

TEST(CpuNormalization, LayerNormalizationInPlaceAndDeterministic) {
  for (DType dt : kFloatTypes) {
    // Large enough for threads: 512 rows of 384.
    const Shape s{2, 256, 384};
    Tensor x = random_tensor(dt, s, 21);
    Tensor scale = random_tensor(dt, {384}, 22);
    Tensor bias = random_tensor(dt, {384}, 23);
    KernelCase kc("LayerNormalization", "", {x, scale, bias}, {{dt, s}, {dt, {2, 256, 1}}, {dt, {2, 256, 1}}});
    std::vector<std::vector<uint8_t>> runs;
    for (int threads : {1, 3, 0}) {
      runtime::set_cpu_threads(threads);
      kc.run(17);
      runs.push_back(kc.output(0).bytes);
    }
    runtime::set_cpu_threads(0);
    EXPECT_EQ(runs[0], runs[1]);
    EXPECT_EQ(runs[0], runs[2]);
    // Y in X's buffer.
    graph::Node& n = kc.node();
    auto kernel = (*runtime::KernelRegistry::global().find("", "LayerNormalization", runtime::Device::cpu))(
        runtime::KernelInit{n, 17, runtime::Device::cpu});
    Tensor shared = x, mean(dt, {2, 256, 1}), inv(dt, {2, 256, 1});
    runtime::KernelArgs args;
    args.inputs = {{shared.bytes.data(), dt, s}, {scale.bytes.data(), dt, {384}}, {bias.bytes.data(), dt, {384}}};
    args.outputs = {{shared.bytes.data(), dt, s}, {mean.bytes.data(), dt, mean.shape}, {inv.bytes.data(), dt, inv.shape}};
    kernel->run(args);
    EXPECT_EQ(shared.bytes, runs[0]);
  }
}

TEST(CpuNormalization, LayerNormalizationGradMatchesTheClosedForm) {
  struct Case {
    Shape x;
    int64_t axis;
    Shape scale;
  };
  const Case cases[] = {{{2, 3, 5}, -1, {5}}, {{4, 6, 8}, 1, {6, 8}}, {{3, 4, 6}, 1, {6}},
                        {{3, 4, 5}, 0, {3, 4, 5}}, {{300, 40}, 1, {40}}, {{2, 9, 9, 96}, 3, {96}}};
  for (DType dt : kFloatTypes) {
    uint64_t seed = 40;
    for (const Case& c : cases) {
      const int64_t rank = static_cast<int64_t>(c.x.size());
      const int64_t axis = c.axis < 0 ? c.axis + rank : c.axis;
      const Shape normalized(c.x.begin() + axis, c.x.end());
      Tensor x = random_tensor(dt, c.x, seed++, -1.0, 3.0);
      Tensor scale = random_tensor(dt, c.scale, seed++, 0.5, 1.5);
      Tensor dy = random_tensor(dt, c.x, seed++);
      LnRef fwd = ln_reference(x, axis, scale, nullptr, 1e-5f);
      const Shape stats = stats_shape(c.x, axis);
      Tensor mean = cast_to(dt, fwd.mean, stats), inv = cast_to(dt, fwd.inv_std, stats);
      const int64_t d = graph::shape_numel(normalized), rows = x.numel() / d;
      // dX = inv / d * (d g - sum(g) - xhat sum(g xhat)), g = dy * scale; dScale = sum(dy xhat); dB = sum(dy).
      std::vector<double> dx(static_cast<size_t>(x.numel())), dscale(static_cast<size_t>(d)), dbias(static_cast<size_t>(d));
      for (int64_t r = 0; r < rows; ++r) {
        // The kernel reads the statistics it is given, in dt.
        const double m = element(mean, r), is = element(inv, r);
        double sg = 0, sgx = 0;
        std::vector<double> g(static_cast<size_t>(d)), xh(static_cast<size_t>(d));
        for (int64_t j = 0; j < d; ++j) {
          const int64_t i = r * d + j;
          xh[j] = (element(x, i) - m) * is;
          g[j] = element(dy, i) * element(scale, broadcast_index(c.scale, coords(j, normalized)));
          sg += g[j];
          sgx += g[j] * xh[j];
          dscale[j] += element(dy, i) * xh[j];
          dbias[j] += element(dy, i);
        }
        for (int64_t j = 0; j < d; ++j)
          dx[r * d + j] = is / static_cast<double>(d) * (static_cast<double>(d) * g[j] - sg - xh[j] * sgx);
      }
      KernelCase kc("LayerNormalizationGrad", "oxtrain", {dy, x, scale, mean, inv},
                    {{dt, c.x}, {dt, normalized}, {dt, normalized}});
      kc.set_attr("axis", Attribute{axis});
      kc.run(17);
      const std::string label = graph::shape_str(c.x) + " axis " + std::to_string(axis) + " " + graph::dtype_name(dt);
      const double tol = tolerance(dt);
      EXPECT_TRUE(close(kc.output(0), dx, tol)) << label;
      EXPECT_TRUE(close(kc.output(1), dscale, tol)) << label;
      EXPECT_TRUE(close(kc.output(2), dbias, tol)) << label;
      // dX alone (the parameters frozen): the same dX.
      KernelCase only_dx("LayerNormalizationGrad", "oxtrain", {dy, x, scale, mean, inv},
                         {{dt, c.x}, {DType::undefined, {}}, {DType::undefined, {}}});
      only_dx.set_attr("axis", Attribute{axis});
      only_dx.run(17);
      EXPECT_EQ(only_dx.output(0).bytes, kc.output(0).bytes) << label;
    }
  }
}

TEST(CpuNormalization, LayerNormalizationNanAndConstantRows) {
  // A NaN makes its row NaN and leaves the others alone; a constant row normalizes to 0
  // (variance 0, inv_std = 1 / sqrt(epsilon)) and Y = B.
  Tensor x = random_tensor(DType::f32, {3, 6}, 60);
  test::set_element(x, 2, std::numeric_limits<double>::quiet_NaN());
  for (int64_t j = 0; j < 6; ++j) test::set_element(x, 6 + j, 1.5);
  Tensor scale = random_tensor(DType::f32, {6}, 61), bias = random_tensor(DType::f32, {6}, 62);
  KernelCase kc("LayerNormalization", "", {x, scale, bias}, {{DType::f32, {3, 6}}, {DType::f32, {3, 1}}, {DType::f32, {3, 1}}});
  kc.run(17);
  for (int64_t j = 0; j < 6; ++j) {
    EXPECT_TRUE(std::isnan(element(kc.output(0), j)));
    EXPECT_EQ(element(kc.output(0), 6 + j), element(bias, j));
    EXPECT_TRUE(std::isfinite(element(kc.output(0), 12 + j)));
  }
  EXPECT_TRUE(std::isnan(element(kc.output(1), 0)));
  EXPECT_EQ(element(kc.output(1), 1), 1.5);
  EXPECT_NEAR(element(kc.output(2), 1), 1.0 / std::sqrt(1e-5), 1e-2);
}

TEST(CpuNormalization, LayerNormalizationRefusals) {
  // Scale varying along a dim before axis: ONNX allows it, the kernels do not.
  KernelCase lead("LayerNormalization", "", {random_tensor(DType::f32, {2, 3, 4}, 1), random_tensor(DType::f32, {2, 1, 4}, 2)},
                  {{DType::f32, {2, 3, 4}}});
  lead.set_attr("axis", Attribute{int64_t{2}});
  try {
    lead.run(17);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("before axis"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("LayerNormalization 'test_LayerNormalization'"), std::string::npos) << e.what();
  }
  // Shape inference: a Scale that does not broadcast, an axis out of range, opset 16, stash_type 16.
  auto infer_error = [](Shape xs, Shape ss, int64_t axis, int64_t opset, int64_t stash) {
    graph::Graph g;
    g.opsets = {{"", opset}};
    graph::Value* x = g.add_value("x", DType::f32, xs, graph::Role::Input);
    graph::Value* s = g.add_value("s", DType::f32, ss, graph::Role::Input);
    x->rank_known = s->rank_known = true;
    graph::Node* n = g.add_node("LayerNormalization", {x, s}, {g.add_value("y")}, "ln");
    n->attrs["axis"].value = axis;
    n->attrs["stash_type"].value = stash;
    try {
      graph::find_schema("", "LayerNormalization")->infer(*n, graph::InferContext{g, opset});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(infer_error({2, 3, 4}, {3}, -1, 17, 1).find("does not broadcast to X [2,3,4]"), std::string::npos);
  EXPECT_NE(infer_error({2, 3, 4}, {4}, 3, 17, 1).find("out of range"), std::string::npos);
  EXPECT_NE(infer_error({2, 3, 4}, {4}, -1, 16, 1).find("from opset 17"), std::string::npos);
  EXPECT_NE(infer_error({2, 3, 4}, {4}, -1, 17, 16).find("stash_type 16"), std::string::npos);
  EXPECT_EQ(infer_error({2, 3, 4}, {3, 1}, 1, 17, 1), "");
}

// ---------------------------------------------------------------------------------------
// ReduceSum, ReduceMean: every combination of axes of a rank-4 tensor, both opset forms.

namespace {

// Sum (times scale) of x over the axes where `kept` is 1 (and x is not).
std::vector<double> reduce_reference(const Tensor& x, const Shape& kept, double scale) {
  std::vector<double> out(static_cast<size_t>(graph::shape_numel(kept)), 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) out[broadcast_index(kept, coords(i, x.shape))] += element(x, i);
  for (double& v : out) v *= scale;
  return out;
}

struct Reduction {
  std::vector<int64_t> axes;
  Shape kept, out;
};

// Every subset of the axes of `x` (the empty subset: all axes), negative axes for odd masks.
std::vector<Reduction> every_reduction(const Shape& x, int64_t keepdims) {
  std::vector<Reduction> all;
  const int64_t rank = static_cast<int64_t>(x.size());
  for (int64_t mask = 0; mask < (int64_t{1} << rank); ++mask) {
    Reduction r;
    r.kept = x;
    for (int64_t d = 0; d < rank; ++d) {
      const bool reduced = mask == 0 || (mask >> d & 1);
      if (mask != 0 && reduced) r.axes.push_back(mask % 2 ? d - rank : d);
      if (reduced) r.kept[d] = 1;
      if (!reduced) r.out.push_back(x[d]);
      else if (keepdims) r.out.push_back(1);
    }
    all.push_back(r);
  }
  return all;
}

KernelCase reduce_case(const char* op, const Tensor& x, const Reduction& r, int64_t keepdims, bool axes_input) {
  std::vector<Tensor> ins{x};
  if (axes_input && !r.axes.empty()) ins.push_back(Tensor::from_int64(r.axes, {static_cast<int64_t>(r.axes.size())}));
  KernelCase kc(op, "", ins, {{x.dtype, r.out}});
  if (axes_input && !r.axes.empty()) kc.node().input(1)->data = std::make_shared<Tensor>(ins[1]);
  if (!axes_input && !r.axes.empty()) kc.set_attr("axes", Attribute{r.axes});
  kc.set_attr("keepdims", Attribute{keepdims});
  return kc;
}

}  // namespace

TEST(CpuNormalization, ReduceSumAndReduceMeanOverEveryAxisCombination) {
  const Shape xs{3, 5, 2, 7};
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, xs, 70);
    for (int64_t keepdims : {0, 1})
      for (const Reduction& r : every_reduction(xs, keepdims)) {
        const auto sum = reduce_reference(x, r.kept, 1.0);
        const auto mean = reduce_reference(x, r.kept, static_cast<double>(graph::shape_numel(r.kept)) / x.numel());
        const std::string label = graph::shape_str(r.axes) + " keepdims " + std::to_string(keepdims);
        for (int64_t opset : {11, 13}) {
          KernelCase kc = reduce_case("ReduceSum", x, r, keepdims, opset >= 13);
          kc.run(opset);
          EXPECT_TRUE(close(kc.output(0), sum, tolerance(dt))) << "ReduceSum opset " << opset << " " << label;
        }
        for (int64_t opset : {13, 18}) {
          KernelCase kc = reduce_case("ReduceMean", x, r, keepdims, opset >= 18);
          kc.run(opset);
          EXPECT_TRUE(close(kc.output(0), mean, tolerance(dt))) << "ReduceMean opset " << opset << " " << label;
        }
      }
  }
}

// ReduceMax and ReduceMin over every axis combination, against the extremes found directly;
// NaN wins and an empty reduction gives -inf / +inf.
TEST(CpuNormalization, ReduceMaxAndReduceMinOverEveryAxisCombination) {
  const Shape xs{3, 5, 2, 7};
  for (DType dt : kFloatTypes) {
    Tensor x = random_tensor(dt, xs, 71);
    for (int64_t keepdims : {0, 1})
      for (const Reduction& r : every_reduction(xs, keepdims)) {
        const int64_t ny = graph::shape_numel(r.kept);
        std::vector<double> mx(static_cast<size_t>(ny), -INFINITY), mn(static_cast<size_t>(ny), INFINITY);
        for (int64_t i = 0; i < x.numel(); ++i) {
          const int64_t j = broadcast_index(r.kept, coords(i, x.shape));
          mx[j] = std::max(mx[j], element(x, i));
          mn[j] = std::min(mn[j], element(x, i));
        }
        const std::string label = graph::shape_str(r.axes) + " keepdims " + std::to_string(keepdims);
        for (int64_t opset : {13, 18}) {
          KernelCase kmax = reduce_case("ReduceMax", x, r, keepdims, opset >= 18);
          kmax.run(opset);
          EXPECT_TRUE(close(kmax.output(0), mx, 0)) << "ReduceMax opset " << opset << " " << label;
          KernelCase kmin = reduce_case("ReduceMin", x, r, keepdims, opset >= 18);
          kmin.run(opset);
          EXPECT_TRUE(close(kmin.output(0), mn, 0)) << "ReduceMin opset " << opset << " " << label;
        }
      }
  }
  // A NaN makes its row NaN wherever it stands; an empty reduction gives the identity.
  Tensor x = Tensor::from_float({1, NAN, 3, -2, 5, 4}, {2, 3});
  for (const char* op : {"ReduceMax", "ReduceMin"}) {
    KernelCase kc(op, "", {x}, {{DType::f32, {2, 1}}});
    kc.set_attr("axes", Attribute{std::vector<int64_t>{1}});
    kc.run(13);
    EXPECT_TRUE(std::isnan(element(kc.output(0), 0))) << op;
    EXPECT_EQ(element(kc.output(0), 1), std::string(op) == "ReduceMax" ? 5.0 : -2.0) << op;
    KernelCase empty(op, "", {Tensor(DType::f32, {2, 0})}, {{DType::f32, {2, 1}}});
    empty.set_attr("axes", Attribute{std::vector<int64_t>{1}});
    empty.run(13);
    EXPECT_EQ(element(empty.output(0), 0), std::string(op) == "ReduceMax" ? -INFINITY : INFINITY) << op;
  }
}

// Integers reduce exactly, an empty reduction giving the type's lowest or highest value; bools
// reduce as any (Max) and all (Min), an empty one giving false and true.
TEST(CpuNormalization, ReduceMaxAndReduceMinOfIntegersAndBools) {
  Tensor x = Tensor::from_int64({5, -9, 7, INT64_MIN, 3, 2}, {2, 3});
  for (const char* op : {"ReduceMax", "ReduceMin"}) {
    const bool max = std::string(op) == "ReduceMax";
    KernelCase kc(op, "", {x}, {{DType::i64, {2, 1}}});
    kc.set_attr("axes", Attribute{std::vector<int64_t>{1}});
    kc.run(13);
    EXPECT_EQ(kc.output(0).data<int64_t>()[0], max ? 7 : -9) << op;
    EXPECT_EQ(kc.output(0).data<int64_t>()[1], max ? 3 : INT64_MIN) << op;
    KernelCase empty(op, "", {Tensor(DType::u16, {2, 0})}, {{DType::u16, {2, 1}}});
    empty.set_attr("axes", Attribute{std::vector<int64_t>{1}});
    empty.run(13);
    EXPECT_EQ(empty.output(0).data<uint16_t>()[0], max ? 0 : UINT16_MAX) << op;

    Tensor b(DType::boolean, {3, 2});
    const uint8_t bits[] = {1, 1, 0, 1, 0, 0};
    std::copy(bits, bits + 6, b.data<uint8_t>());
    KernelCase kb(op, "", {b}, {{DType::boolean, {3, 1}}});
    kb.set_attr("axes", Attribute{std::vector<int64_t>{1}});
    kb.run(13);
    const std::vector<uint8_t> want = max ? std::vector<uint8_t>{1, 1, 0} : std::vector<uint8_t>{1, 0, 0};
    EXPECT_EQ(std::vector<uint8_t>(kb.output(0).data<uint8_t>(), kb.output(0).data<uint8_t>() + 3), want) << op;
    KernelCase nothing(op, "", {Tensor(DType::boolean, {2, 0})}, {{DType::boolean, {2, 1}}});
    nothing.set_attr("axes", Attribute{std::vector<int64_t>{1}});
    nothing.run(13);
    EXPECT_EQ(nothing.output(0).data<uint8_t>()[1], max ? 0 : 1) << op;
  }
}

TEST(CpuNormalization, ReduceSumNoopAndErrors) {
  Tensor x = random_tensor(DType::f64, {3, 4}, 80);
  KernelCase noop("ReduceSum", "", {x}, {{DType::f64, {3, 4}}});
  noop.set_attr("noop_with_empty_axes", Attribute{int64_t{1}});
  noop.run(13);
  EXPECT_TRUE(close(noop.output(0), values(x), 0));
  // Before opset 13 the attribute does not exist: no axes means every axis.
  KernelCase old("ReduceSum", "", {x}, {{DType::f64, {1, 1}}});
  old.set_attr("noop_with_empty_axes", Attribute{int64_t{1}});
  old.run(11);
  EXPECT_TRUE(close(old.output(0), reduce_reference(x, {1, 1}, 1.0), 1e-12));
  // Axes computed at run time cannot be read when the graph is compiled.
  KernelCase fed("ReduceSum", "", {x, Tensor::from_int64({0}, {1})}, {{DType::f64, {1, 4}}});
  try {
    fed.run(13);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("constant"), std::string::npos) << e.what();
  }
  // Shape inference: an axis named twice, axes of another type than int64.
  auto infer_error = [&](std::vector<int64_t> axes, DType axes_type) {
    graph::Graph g;
    g.opsets = {{"", 13}};
    graph::Value* in = g.add_value("x", DType::f64, {3, 4}, graph::Role::Input);
    in->rank_known = true;
    Tensor a = axes_type == DType::i64 ? Tensor::from_int64(axes, {static_cast<int64_t>(axes.size())})
                                       : Tensor(axes_type, {static_cast<int64_t>(axes.size())});
    graph::Value* av = g.add_initializer("axes", a, graph::Role::Constant);
    graph::Node* n = g.add_node("ReduceSum", {in, av}, {g.add_value("y")}, "sum");
    try {
      graph::find_schema("", "ReduceSum")->infer(*n, graph::InferContext{g, 13});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(infer_error({1, -1}, DType::i64).find("twice"), std::string::npos);
  EXPECT_NE(infer_error({1}, DType::f32).find("must be int64"), std::string::npos);
  EXPECT_EQ(infer_error({0, 1}, DType::i64), "");
  KernelCase out_of_range("ReduceSum", "", {x}, {{DType::f64, {3, 1}}});
  out_of_range.set_attr("axes", Attribute{std::vector<int64_t>{2}});
  EXPECT_THROW(out_of_range.run(11), Error);
}

TEST(CpuNormalization, ReduceSumGradBroadcastsBack) {
  for (DType dt : kFloatTypes) {
    const Shape xs{3, 5, 2, 7};
    for (const Reduction& r : every_reduction(xs, 0)) {
      std::vector<int64_t> axes;
      for (int64_t a : r.axes) axes.push_back(a < 0 ? a + 4 : a);
      std::sort(axes.begin(), axes.end());
      Tensor dy = random_tensor(dt, r.out, 90);
      std::vector<double> want;
      for (int64_t i = 0; i < graph::shape_numel(xs); ++i) want.push_back(element(dy, broadcast_index(r.kept, coords(i, xs))));
      KernelCase kc("ReduceSumGrad", "oxtrain", {dy}, {{dt, xs}});
      kc.set_attr("input_shape", Attribute{std::vector<int64_t>(xs)});
      kc.set_attr("axes", Attribute{axes});
      kc.set_attr("keepdims", Attribute{int64_t{0}});
      kc.run(17);
      EXPECT_TRUE(close(kc.output(0), want, 0)) << graph::shape_str(axes);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Softmax on every axis, MatMul on the transformer shapes.

TEST(CpuNormalization, SoftmaxOnEveryAxis) {
  const Shape xs{3, 4, 2, 5};
  for (DType dt : kFloatTypes)
    for (int64_t opset : {11, 13})
      for (int64_t axis = -4; axis < 4; ++axis) {
        Tensor x = random_tensor(dt, xs, 100 + static_cast<uint64_t>(axis + 4), -3.0, 3.0);
        const int64_t a = axis < 0 ? axis + 4 : axis;
        // Groups: before 13 the dims from axis on form one vector.
        int64_t outer = 1, d = 1, inner = 1;
        for (int64_t k = 0; k < 4; ++k) {
          if (k < a) outer *= xs[k];
          else if (k == a || opset < 13) d *= xs[k];
          else inner *= xs[k];
        }
        std::vector<double> want(static_cast<size_t>(x.numel()));
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t j = 0; j < inner; ++j) {
            double s = 0;
            for (int64_t c = 0; c < d; ++c) s += std::exp(element(x, (o * d + c) * inner + j));
            for (int64_t c = 0; c < d; ++c) want[(o * d + c) * inner + j] = std::exp(element(x, (o * d + c) * inner + j)) / s;
          }
        KernelCase kc("Softmax", "", {x}, {{dt, xs}});
        kc.set_attr("axis", Attribute{axis});
        kc.run(opset);
        EXPECT_TRUE(close(kc.output(0), want, tolerance(dt))) << "opset " << opset << " axis " << axis;
      }
}

TEST(CpuNormalization, MatMulOnTransformerShapes) {
  struct Case {
    Shape a, b, y;
  };
  // ViT attention scores and context, ConvNeXt's channels-last MLP, 1-D operands.
  const Case cases[] = {{{2, 3, 7, 4}, {2, 3, 4, 7}, {2, 3, 7, 7}},
                        {{2, 3, 7, 7}, {2, 3, 7, 4}, {2, 3, 7, 4}},
                        {{2, 5, 5, 8}, {8, 32}, {2, 5, 5, 32}},
                        {{2, 5, 5, 32}, {32, 8}, {2, 5, 5, 8}},
                        {{8}, {2, 8, 3}, {2, 3}},
                        {{2, 3, 8}, {8}, {2, 3}}};
  for (DType dt : kFloatTypes) {
    uint64_t seed = 120;
    for (const Case& c : cases) {
      Tensor a = random_tensor(dt, c.a, seed++), b = random_tensor(dt, c.b, seed++);
      Shape as = c.a, bs = c.b;
      if (as.size() == 1) as.insert(as.begin(), 1);
      if (bs.size() == 1) bs.push_back(1);
      const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
      const Shape yb(c.y.begin(), c.y.end() - ((c.a.size() > 1) + (c.b.size() > 1)));
      const Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
      std::vector<double> want;
      for (int64_t bi = 0; bi < std::max<int64_t>(graph::shape_numel(yb), 1); ++bi) {
        const auto bc = coords(bi, yb);
        const int64_t ia = ab.empty() ? 0 : broadcast_index(ab, bc), ib = bb.empty() ? 0 : broadcast_index(bb, bc);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double s = 0;
            for (int64_t p = 0; p < k; ++p) s += element(a, (ia * m + i) * k + p) * element(b, (ib * k + p) * n + j);
            want.push_back(s);
          }
      }
      KernelCase kc("MatMul", "", {a, b}, {{dt, c.y}});
      kc.run(17);
      EXPECT_TRUE(close(kc.output(0), want, tolerance(dt))) << graph::shape_str(c.a) << " x " << graph::shape_str(c.b);
    }
  }
}
