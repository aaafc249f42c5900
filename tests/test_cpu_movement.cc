// CPU kernels of the movement family against references computed here with naive loops
// (Slice's by the spec's clamping rules, enumerated index by index), for float32, float64 and
// integer tensors; GatherGrad's sums also bit for bit across thread counts. Then import: shape
// computations still fold, the same ops on run-time values stay and run, and SplitToSequence
// read by SequenceAt becomes Slice.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "runtime/kernel.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::close;
using test::element;
using test::KernelCase;
using test::random_tensor;

namespace {

std::vector<int64_t> coords(int64_t flat, const Shape& s) {
  std::vector<int64_t> c(s.size());
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    c[d] = flat % s[d];
    flat /= s[d];
  }
  return c;
}

int64_t flat_of(const std::vector<int64_t>& c, const Shape& s) {
  int64_t f = 0;
  for (size_t d = 0; d < s.size(); ++d) f = f * s[d] + c[d];
  return f;
}

// Sets the constant data of a KernelCase input (what a compiled graph's constant carries).
void make_constant(KernelCase& kc, size_t i) {
  kc.node().input(i)->data = std::make_shared<Tensor>(kc.input(i));
}

Attribute ints(std::vector<int64_t> v) { return Attribute{std::move(v)}; }

const DType kMoveTypes[] = {DType::f32, DType::f64, DType::i64, DType::i32, DType::u8};

}  // namespace

TEST(CpuMovement, ConcatAndSplit) {
  const std::vector<Shape> parts = {{3, 2, 5}, {3, 4, 5}, {3, 1, 5}, {3, 0, 5}};
  for (DType dt : kMoveTypes) {
    std::vector<Tensor> xs;
    for (size_t k = 0; k < parts.size(); ++k) xs.push_back(random_tensor(dt, parts[k], 10 + k, 0, 100));
    const Shape out{3, 7, 5};
    // Concat on axis 1 (written -2).
    std::vector<double> want;
    for (int64_t i = 0; i < 3; ++i)
      for (size_t k = 0; k < parts.size(); ++k)
        for (int64_t j = 0; j < parts[k][1] * 5; ++j) want.push_back(element(xs[k], i * parts[k][1] * 5 + j));
    KernelCase cat("Concat", "", xs, {{dt, out}});
    cat.set_attr("axis", Attribute{int64_t{-2}});
    cat.run();
    EXPECT_TRUE(close(cat.output(0), want, 0)) << graph::dtype_name(dt);
    // Split undoes it.
    std::vector<test::OutputSpec> specs;
    for (const Shape& s : parts) specs.push_back({dt, s});
    KernelCase split("Split", "", {cat.output(0)}, specs);
    split.set_attr("axis", Attribute{int64_t{1}});
    split.run(18);
    for (size_t k = 0; k < parts.size(); ++k) EXPECT_EQ(split.output(k).bytes, xs[k].bytes) << k;
  }
  // Axis 0 and the last axis, float32.
  Tensor a = random_tensor(DType::f32, {2, 3}, 20), b = random_tensor(DType::f32, {2, 4}, 21);
  KernelCase last("Concat", "", {a, b}, {{DType::f32, {2, 7}}});
  last.set_attr("axis", Attribute{int64_t{1}});
  last.run();
  std::vector<double> want;
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 3; ++j) want.push_back(element(a, i * 3 + j));
    for (int64_t j = 0; j < 4; ++j) want.push_back(element(b, i * 4 + j));
  }
  EXPECT_TRUE(close(last.output(0), want, 0));
  // Shapes that disagree outside the axis are refused when the kernel is made.
  KernelCase bad("Concat", "", {a, random_tensor(DType::f32, {3, 4}, 22)}, {{DType::f32, {2, 7}}});
  bad.set_attr("axis", Attribute{int64_t{1}});
  EXPECT_THROW(bad.run(), Error);
  KernelCase bad_split("Split", "", {a}, {{DType::f32, {2, 1}}, {DType::f32, {2, 1}}});
  bad_split.set_attr("axis", Attribute{int64_t{1}});
  EXPECT_THROW(bad_split.run(), Error);
}

namespace {

// The indices a Slice reads on one axis, enumerated as the spec says: negative starts and ends
// count from the end, then clamp to [0, dim] (positive step) or [0, dim-1] and [-1, dim-1]
// (negative step).
std::vector<int64_t> slice_indices(int64_t start, int64_t end, int64_t step, int64_t dim) {
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  std::vector<int64_t> out;
  if (step > 0) {
    start = std::clamp<int64_t>(start, 0, dim);
    end = std::clamp<int64_t>(end, 0, dim);
    for (int64_t i = start; i < end; i += step) out.push_back(i);
  } else {
    start = std::clamp<int64_t>(start, 0, dim - 1);
    end = std::clamp<int64_t>(end, -1, dim - 1);
    for (int64_t i = start; i > end; i += step) out.push_back(i);
  }
  return out;
}

struct SliceCase {
  std::vector<int64_t> starts, ends, axes, steps;
};

}  // namespace

TEST(CpuMovement, SliceAndSliceGrad) {
  const Shape s{5, 7, 11, 3};
  const SliceCase cases[] = {
      {{1, 2}, {4, 11}, {0, 2}, {1, 3}},
      {{-1, 6, 2}, {-1000, -8, 3}, {0, 1, -1}, {-2, -3, 1}},
      {{-100}, {100}, {-2}, {4}},
      {{4}, {2}, {1}, {1}},  // empty
      {{0, 0, 0, 0}, {5, 7, 11, 3}, {0, 1, 2, 3}, {1, 1, 1, 1}},
      {{INT64_MAX}, {INT64_MIN}, {2}, {-1}},
  };
  for (DType dt : {DType::f32, DType::f64, DType::i64, DType::u8}) {
    Tensor x = random_tensor(dt, s, 30, 0, 100);
    for (const SliceCase& c : cases) {
      std::vector<std::vector<int64_t>> pick(s.size());
      for (size_t d = 0; d < s.size(); ++d)
        for (int64_t i = 0; i < s[d]; ++i) pick[d].push_back(i);
      for (size_t k = 0; k < c.axes.size(); ++k) {
        size_t a = static_cast<size_t>(c.axes[k] < 0 ? c.axes[k] + 4 : c.axes[k]);
        pick[a] = slice_indices(c.starts[k], c.ends[k], c.steps[k], s[a]);
      }
      Shape out;
      for (const auto& p : pick) out.push_back(static_cast<int64_t>(p.size()));
      std::vector<double> want;
      std::vector<int64_t> source;
      for (int64_t i = 0; i < graph::shape_numel(out); ++i) {
        auto co = coords(i, out);
        for (size_t d = 0; d < s.size(); ++d) co[d] = pick[d][co[d]];
        source.push_back(flat_of(co, s));
        want.push_back(element(x, source.back()));
      }
      KernelCase kc("Slice", "",
                    {x, Tensor::from_int64(c.starts, {static_cast<int64_t>(c.starts.size())}),
                     Tensor::from_int64(c.ends, {static_cast<int64_t>(c.ends.size())}),
                     Tensor::from_int64(c.axes, {static_cast<int64_t>(c.axes.size())}),
                     Tensor::from_int64(c.steps, {static_cast<int64_t>(c.steps.size())})},
                    {{dt, out}});
      for (size_t i = 1; i < 5; ++i) make_constant(kc, i);
      kc.run(13);
      EXPECT_TRUE(close(kc.output(0), want, 0)) << graph::shape_str(c.starts) << " " << graph::dtype_name(dt);

      // SliceGrad: zeros with dY where the slice read (starts/steps per input axis).
      if (dt != DType::f64 || out.empty()) continue;
      std::vector<int64_t> starts(s.size(), 0), steps(s.size(), 1);
      for (size_t d = 0; d < s.size(); ++d)
        if (pick[d].size() > 1) {
          starts[d] = pick[d][0];
          steps[d] = pick[d][1] - pick[d][0];
        } else if (pick[d].size() == 1) {
          starts[d] = pick[d][0];
        }
      Tensor dy = random_tensor(DType::f64, out, 31);
      std::vector<double> dx(static_cast<size_t>(graph::shape_numel(s)), 0.0);
      for (size_t i = 0; i < source.size(); ++i) dx[source[i]] = element(dy, static_cast<int64_t>(i));
      KernelCase grad("SliceGrad", "oxtrain", {dy}, {{DType::f64, s}});
      grad.set_attr("input_shape", ints(s));
      grad.set_attr("starts", ints(starts));
      grad.set_attr("steps", ints(steps));
      grad.run();
      EXPECT_TRUE(close(grad.output(0), dx, 0)) << graph::shape_str(c.starts);
    }
  }
  // Attributes before opset 10.
  Tensor x = random_tensor(DType::f32, {4, 6}, 32);
  KernelCase old("Slice", "", {x}, {{DType::f32, {2, 6}}});
  old.set_attr("starts", ints({-3}));
  old.set_attr("ends", ints({-1}));
  old.run(9);
  std::vector<double> want;
  for (int64_t i = 6; i < 18; ++i) want.push_back(element(x, i));
  EXPECT_TRUE(close(old.output(0), want, 0));
  // Starts that are not constants, a zero step, an output of the wrong shape: refused.
  KernelCase runtime_starts("Slice", "", {x, Tensor::from_int64({1}, {1}), Tensor::from_int64({3}, {1})},
                            {{DType::f32, {2, 6}}});
  EXPECT_THROW(runtime_starts.run(13), Error);
  KernelCase zero_step("Slice", "",
                       {x, Tensor::from_int64({1}, {1}), Tensor::from_int64({3}, {1}), Tensor::from_int64({0}, {1}),
                        Tensor::from_int64({0}, {1})},
                       {{DType::f32, {2, 6}}});
  for (size_t i = 1; i < 5; ++i) make_constant(zero_step, i);
  EXPECT_THROW(zero_step.run(13), Error);
  KernelCase wrong_out("Slice", "", {x, Tensor::from_int64({1}, {1}), Tensor::from_int64({3}, {1})},
                       {{DType::f32, {3, 6}}});
  make_constant(wrong_out, 1);
  make_constant(wrong_out, 2);
  EXPECT_THROW(wrong_out.run(13), Error);
}

TEST(CpuMovement, ExpandSqueezeUnsqueeze) {
  struct Case {
    Shape x, target, out;
  };
  const Case cases[] = {
      {{3, 1}, {2, 3, 4}, {2, 3, 4}},
      {{1, 1, 8}, {5, 1, 8}, {5, 1, 8}},
      {{2, 1, 5}, {3, 1}, {2, 3, 5}},
      {{4}, {1}, {4}},
      {{}, {2, 3}, {2, 3}},
  };
  for (DType dt : {DType::f32, DType::f64, DType::i32}) {
    for (const Case& c : cases) {
      Tensor x = random_tensor(dt, c.x, 40, -50, 50);
      std::vector<double> want;
      for (int64_t i = 0; i < graph::shape_numel(c.out); ++i) {
        auto co = coords(i, c.out);
        int64_t src = 0;
        const size_t lead = c.out.size() - c.x.size();
        for (size_t d = 0; d < c.x.size(); ++d) src = src * c.x[d] + (c.x[d] == 1 ? 0 : co[lead + d]);
        want.push_back(element(x, src));
      }
      KernelCase kc("Expand", "", {x, Tensor::from_int64(c.target, {static_cast<int64_t>(c.target.size())})},
                    {{dt, c.out}});
      make_constant(kc, 1);
      kc.run();
      EXPECT_TRUE(close(kc.output(0), want, 0)) << graph::shape_str(c.x) << " " << graph::dtype_name(dt);
    }
  }
  // Squeeze and Unsqueeze keep the bytes.
  Tensor x = random_tensor(DType::f64, {3, 1, 4}, 41);
  KernelCase sq("Squeeze", "", {x, Tensor::from_int64({1}, {1})}, {{DType::f64, {3, 4}}});
  make_constant(sq, 1);
  sq.run(13);
  EXPECT_EQ(sq.output(0).bytes, x.bytes);
  KernelCase unsq("Unsqueeze", "", {x}, {{DType::f64, {1, 3, 1, 4}}});
  unsq.set_attr("axes", ints({0}));
  unsq.run(11);
  EXPECT_EQ(unsq.output(0).bytes, x.bytes);
  KernelCase wrong("Squeeze", "", {x}, {{DType::f64, {3, 5}}});
  EXPECT_THROW(wrong.run(13), Error);
  // Expand to a shape that does not broadcast.
  KernelCase bad("Expand", "", {random_tensor(DType::f32, {3, 2}, 42), Tensor::from_int64({4, 3}, {2})},
                 {{DType::f32, {4, 3}}});
  make_constant(bad, 1);
  EXPECT_THROW(bad.run(), Error);
}

TEST(CpuMovement, GatherAndGatherND) {
  const Shape s{5, 7, 11, 3};
  for (DType dt : {DType::f32, DType::f64, DType::i64, DType::u8}) {
    Tensor x = random_tensor(dt, s, 50, 0, 100);
    for (int64_t axis : {0, 1, -1, 2}) {
      const int64_t a = axis < 0 ? axis + 4 : axis;
      const std::vector<int64_t> idx = {0, s[a] - 1, -1, 1, -s[a], 1};
      const Shape ishape{2, 3};
      Shape out(s.begin(), s.begin() + a);
      out.insert(out.end(), ishape.begin(), ishape.end());
      out.insert(out.end(), s.begin() + a + 1, s.end());
      std::vector<double> want;
      for (int64_t i = 0; i < graph::shape_numel(out); ++i) {
        auto co = coords(i, out);
        std::vector<int64_t> src(co.begin(), co.begin() + a);
        int64_t v = idx[co[a] * 3 + co[a + 1]];
        src.push_back(v < 0 ? v + s[a] : v);
        src.insert(src.end(), co.begin() + a + 2, co.end());
        want.push_back(element(x, flat_of(src, s)));
      }
      KernelCase kc("Gather", "", {x, Tensor::from_int64(idx, ishape)}, {{dt, out}});
      kc.set_attr("axis", Attribute{axis});
      make_constant(kc, 1);
      kc.run();
      EXPECT_TRUE(close(kc.output(0), want, 0)) << "axis " << axis << " " << graph::dtype_name(dt);
    }
  }
  // int32 indices, a scalar index (ViT's x[:, 0]).
  Tensor x = random_tensor(DType::f32, {2, 5, 4}, 51);
  Tensor i32(DType::i32, {});
  i32.data<int32_t>()[0] = -5;
  KernelCase cls("Gather", "", {x, i32}, {{DType::f32, {2, 4}}});
  cls.set_attr("axis", Attribute{int64_t{1}});
  make_constant(cls, 1);
  cls.run();
  std::vector<double> want;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t d = 0; d < 4; ++d) want.push_back(element(x, n * 20 + d));
  EXPECT_TRUE(close(cls.output(0), want, 0));
  // Out of range, or not a constant: refused when the kernel is made.
  KernelCase far("Gather", "", {x, Tensor::from_int64({5}, {1})}, {{DType::f32, {1, 5, 4}}});
  make_constant(far, 1);
  EXPECT_THROW(far.run(), Error);
  KernelCase unknown("Gather", "", {x, Tensor::from_int64({0}, {1})}, {{DType::f32, {1, 5, 4}}});
  EXPECT_THROW(unknown.run(), Error);

  // GatherND of depth 2 on [6, 4, 3]: googlenet's adaptive pooling reads windows this way.
  Tensor data = random_tensor(DType::f32, {6, 4, 3}, 52);
  const std::vector<int64_t> nd = {0, 0, 5, 3, -1, -4, 2, 1, 2, 1, 0, 3};
  KernelCase g("GatherND", "", {data, Tensor::from_int64(nd, {2, 3, 2})}, {{DType::f32, {2, 3, 3}}});
  make_constant(g, 1);
  g.run();
  want.clear();
  for (size_t j = 0; j < nd.size(); j += 2) {
    int64_t r = nd[j] < 0 ? nd[j] + 6 : nd[j], c = nd[j + 1] < 0 ? nd[j + 1] + 4 : nd[j + 1];
    for (int64_t k = 0; k < 3; ++k) want.push_back(element(data, (r * 4 + c) * 3 + k));
  }
  EXPECT_TRUE(close(g.output(0), want, 0));
  KernelCase deep("GatherND", "", {data, Tensor::from_int64({0, 0, 0, 0}, {1, 4})}, {{DType::f32, {1}}});
  make_constant(deep, 1);
  EXPECT_THROW(deep.run(), Error);
}

TEST(CpuMovement, GatherGradAddsInAFixedOrderWhateverTheThreads) {
  // dX [outer 3, rows 50, inner 700], dY [3, J, 700] with rows read many times.
  const int64_t rows = 50, inner = 700, outer = 3;
  std::vector<int64_t> read;
  for (int64_t j = 0; j < 400; ++j) read.push_back((j * 7 + j / 3) % rows);
  const int64_t J = static_cast<int64_t>(read.size());
  std::vector<int64_t> row_start(rows + 1, 0), order;
  for (int64_t r : read) ++row_start[r + 1];
  std::partial_sum(row_start.begin(), row_start.end(), row_start.begin());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < J; ++j)
      if (read[j] == r) order.push_back(j);
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor dy = random_tensor(dt, {outer, J, inner}, 60);
    std::vector<double> want(static_cast<size_t>(outer * rows * inner), 0.0);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < J; ++j)
        for (int64_t k = 0; k < inner; ++k)
          want[(o * rows + read[j]) * inner + k] += element(dy, (o * J + j) * inner + k);
    std::vector<Tensor> results;
    for (int threads : {1, 3, 8}) {
      runtime::set_cpu_threads(threads);
      KernelCase kc("GatherGrad", "oxtrain",
                    {dy, Tensor::from_int64(order, {J}), Tensor::from_int64(row_start, {rows + 1})},
                    {{dt, {outer, rows, inner}}});
      kc.set_attr("input_shape", ints({outer, rows, inner}));
      kc.set_attr("axis", Attribute{int64_t{1}});
      make_constant(kc, 1);
      make_constant(kc, 2);
      kc.run();
      results.push_back(kc.output(0));
    }
    runtime::set_cpu_threads(0);
    EXPECT_TRUE(close(results[0], want, dt == DType::f32 ? 1e-5 : 1e-12)) << graph::dtype_name(dt);
    EXPECT_EQ(results[1].bytes, results[0].bytes);
    EXPECT_EQ(results[2].bytes, results[0].bytes);
  }
  // order pointing outside dY is refused.
  KernelCase bad("GatherGrad", "oxtrain",
                 {random_tensor(DType::f32, {2, 3}, 61), Tensor::from_int64({0, 5}, {2}),
                  Tensor::from_int64({0, 1, 2}, {3})},
                 {{DType::f32, {2, 3}}});
  bad.set_attr("input_shape", ints({2, 3}));
  bad.set_attr("axis", Attribute{int64_t{0}});
  make_constant(bad, 1);
  make_constant(bad, 2);
  EXPECT_THROW(bad.run(), Error);
}

// ---- import ----

namespace {

graph::Graph import(test::ModelBuilder& b) { return graph::import_onnx_model(b.model, "."); }

size_t count_op(const graph::Graph& g, const std::string& op) {
  return static_cast<size_t>(std::count_if(g.nodes().begin(), g.nodes().end(),
                                           [&](const auto& n) { return n->op_type == op; }));
}

void set_tensor(onnx::NodeProto& n, std::vector<int64_t> values, std::vector<int64_t> dims) {
  auto* a = n.add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  auto* t = a->mutable_t();
  t->set_data_type(onnx::TensorProto::INT64);
  for (int64_t d : dims) t->add_dims(d);
  for (int64_t v : values) t->add_int64_data(v);
}

}  // namespace

TEST(CpuMovement, ShapeComputationsStillFoldAndActivationsRun) {
  // Shape -> Gather -> Unsqueeze -> Concat -> Reshape folds to a constant shape; the Concat
  // of two activations stays and runs.
  test::ModelBuilder b(17);
  b.input("x", {2, 3, 4});
  b.node("Shape", {"x"}, {"shape"}, "shape");
  b.int_initializer("zero", {0});
  b.node("Gather", {"shape", "zero"}, {"batch"}, "gather");
  b.int_initializer("minus_one", {-1});
  test::set_int(b.node("Concat", {"batch", "minus_one"}, {"target"}, "cat_shape"), "axis", 0);
  b.node("Reshape", {"x", "target"}, {"flat"}, "reshape");
  b.node("Relu", {"flat"}, {"r"}, "relu");
  test::set_int(b.node("Concat", {"flat", "r"}, {"y"}, "cat"), "axis", 1);
  b.output("y");
  graph::Graph g = import(b);
  EXPECT_EQ(count_op(g, "Gather"), 0u);
  EXPECT_EQ(count_op(g, "Shape"), 0u);
  EXPECT_EQ(count_op(g, "Concat"), 1u);
  EXPECT_EQ(g.value("y")->shape, (Shape{2, 24}));
  runtime::Session s(std::move(g));
  Tensor x = random_tensor(DType::f32, {2, 3, 4}, 70);
  s.feed("x", x);
  s.run();
  Tensor y = s.fetch("y");
  std::vector<double> want;
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t i = 0; i < 12; ++i) want.push_back(element(x, n * 12 + i));
    for (int64_t i = 0; i < 12; ++i) want.push_back(std::max(0.0, element(x, n * 12 + i)));
  }
  EXPECT_TRUE(close(y, want, 0));
}

TEST(CpuMovement, SplitToSequenceReadAtConstantPositionsBecomesSlice) {
  // shufflenet's channel split: SplitToSequence(x, 3) on axis 1, read at 0 and 2 (the last
  // chunk is smaller); and one without sizes, keepdims=0, read at 1.
  test::ModelBuilder b(18);
  b.input("x", {2, 8, 3});
  set_tensor(b.node("Constant", {}, {"three"}, "three"), {3}, {});
  auto& split = b.node("SplitToSequence", {"x", "three"}, {"seq"}, "split");
  test::set_int(split, "axis", 1);
  set_tensor(b.node("Constant", {}, {"zero"}, "zero"), {0}, {});
  set_tensor(b.node("Constant", {}, {"two"}, "two"), {2}, {});
  b.node("SequenceAt", {"seq", "zero"}, {"first"}, "at0");
  b.node("SequenceAt", {"seq", "two"}, {"last"}, "at2");
  auto& ones = b.node("SplitToSequence", {"x"}, {"seq1"}, "split_ones");
  test::set_int(ones, "axis", -1);
  test::set_int(ones, "keepdims", 0);
  set_tensor(b.node("Constant", {}, {"one"}, "one"), {1}, {});
  b.node("SequenceAt", {"seq1", "one"}, {"middle"}, "at1");
  b.output("first");
  b.output("last");
  b.output("middle");
  graph::Graph g = import(b);
  EXPECT_EQ(count_op(g, "SplitToSequence"), 0u);
  EXPECT_EQ(count_op(g, "SequenceAt"), 0u);
  EXPECT_EQ(g.value("first")->shape, (Shape{2, 3, 3}));
  EXPECT_EQ(g.value("last")->shape, (Shape{2, 2, 3}));
  EXPECT_EQ(g.value("middle")->shape, (Shape{2, 8}));
  runtime::Session s(std::move(g));
  Tensor x = random_tensor(DType::f32, {2, 8, 3}, 71);
  s.feed("x", x);
  s.run();
  std::vector<double> first, last, middle;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t c = 0; c < 8; ++c) {
      for (int64_t k = 0; k < 3; ++k) {
        if (c < 3) first.push_back(element(x, (n * 8 + c) * 3 + k));
        if (c >= 6) last.push_back(element(x, (n * 8 + c) * 3 + k));
      }
      middle.push_back(element(x, (n * 8 + c) * 3 + 1));
    }
  EXPECT_TRUE(close(s.fetch("first"), first, 0));
  EXPECT_TRUE(close(s.fetch("last"), last, 0));
  EXPECT_TRUE(close(s.fetch("middle"), middle, 0));

  // A position computed at run time is not rewritten: the ops are reported as unsupported.
  test::ModelBuilder r(18);
  r.input("x", {2, 8});
  r.input("pos", {}, 7);
  r.node("SplitToSequence", {"x"}, {"seq"}, "split");
  r.node("SequenceAt", {"seq", "pos"}, {"y"}, "at");
  r.output("y");
  try {
    import(r);
    ADD_FAILURE() << "a run-time position was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("SplitToSequence"), std::string::npos) << e.what();
  }
}

TEST(CpuMovement, SchemaErrorsNameTheNodeAndShapes) {
  auto error_of = [](test::ModelBuilder& b) -> std::string {
    try {
      graph::import_onnx_model(b.model, ".");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  test::ModelBuilder cat(17);
  cat.input("a", {2, 3});
  cat.input("b", {3, 3});
  cat.node("Relu", {"a"}, {"ra"}, "ra");
  test::set_int(cat.node("Concat", {"ra", "b"}, {"y"}, "join"), "axis", 1);
  cat.output("y");
  std::string e = error_of(cat);
  EXPECT_NE(e.find("Concat 'join'"), std::string::npos) << e;
  EXPECT_NE(e.find("[3,3]"), std::string::npos) << e;

  test::ModelBuilder split(13);
  split.input("x", {2, 7});
  split.int_initializer("sizes", {3, 3});
  test::set_int(split.node("Split", {"x", "sizes"}, {"p", "q"}, "halves"), "axis", 1);
  split.output("p");
  split.output("q");
  e = error_of(split);
  EXPECT_NE(e.find("Split 'halves'"), std::string::npos) << e;
  EXPECT_NE(e.find("adds up to 6"), std::string::npos) << e;

  test::ModelBuilder gather(17);
  gather.input("x", {2, 7});
  gather.int_initializer("idx", {7});
  test::set_int(gather.node("Gather", {"x", "idx"}, {"y"}, "pick"), "axis", 1);
  gather.output("y");
  e = error_of(gather);
  EXPECT_NE(e.find("Gather 'pick'"), std::string::npos) << e;
  EXPECT_NE(e.find("index 7 is out of range"), std::string::npos) << e;

  test::ModelBuilder squeeze(13);
  squeeze.input("x", {2, 7});
  squeeze.int_initializer("axes", {1});
  squeeze.node("Squeeze", {"x", "axes"}, {"y"}, "flat");
  squeeze.output("y");
  e = error_of(squeeze);
  EXPECT_NE(e.find("Squeeze 'flat'"), std::string::npos) << e;
  EXPECT_NE(e.find("cannot squeeze axis 1"), std::string::npos) << e;
}

TEST(CpuMovement, ClassTokenPathTrainsTheTokenAndReadsItBack) {
  // ViT's class token: Expand(parameter, shape) -> Concat with the patches -> Gather x[:, 0].
  // The token is a parameter, the shape and the index are constants, and the gathered row is
  // the token itself.
  test::ModelBuilder b(17);
  b.input("x", {2, 3, 4});
  b.initializer("cls", {1, 1, 4}, 0.25f);
  b.int_initializer("shape", {2, 1, 4});
  b.node("Expand", {"cls", "shape"}, {"tokens"}, "expand");
  test::set_int(b.node("Concat", {"tokens", "x"}, {"seq"}, "cat"), "axis", 1);
  auto& zero = b.node("Constant", {}, {"zero"}, "zero");
  set_tensor(zero, {0}, {});
  test::set_int(b.node("Gather", {"seq", "zero"}, {"y"}, "first"), "axis", 1);
  b.output("y");
  graph::Graph g = import(b);
  EXPECT_EQ(g.value("cls")->role, graph::Role::Parameter);
  EXPECT_EQ(g.value("shape")->role, graph::Role::Constant);
  for (const auto& n : g.nodes()) {
    graph::OpFacts f = graph::node_facts(*n);
    if (n->op_type == "Expand" || n->op_type == "Gather") {
      EXPECT_FALSE(f.trainable(1)) << n->op_type;
    }
    if (n->op_type == "Concat") {
      EXPECT_TRUE(f.trainable(0) && f.trainable(1));
    }
  }
  EXPECT_EQ(g.value("y")->shape, (Shape{2, 4}));
  runtime::Session s(std::move(g));
  s.feed("x", random_tensor(DType::f32, {2, 3, 4}, 72));
  s.run();
  // ModelBuilder fills the token with 0.25 + 0.001 * i.
  std::vector<double> want;
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 4; ++i) want.push_back(static_cast<double>(0.25f + 0.001f * static_cast<float>(i)));
  EXPECT_TRUE(close(s.fetch("y"), want, 0));
}
