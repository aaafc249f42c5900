// Shape inference and constant folding, op by op, on one-node models built in memory.
#include <gtest/gtest.h>

#include <cmath>

#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using oxtrain::test::ModelBuilder;
using oxtrain::test::set_int;
using oxtrain::test::set_ints;

namespace {

Graph import(const ModelBuilder& b, std::optional<int64_t> batch = {}) {
  ImportOptions o;
  o.batch_size = batch;
  return import_onnx_model(b.model, ".", o);
}

void set_string(onnx::NodeProto& n, const std::string& key, const std::string& value) {
  auto* a = n.add_attribute();
  a->set_name(key);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(value);
}

struct ConvCase {
  Shape x, w;
  std::vector<int64_t> strides, pads, dilations;
  int64_t group;
  std::string auto_pad;
  Shape expected;
};

}  // namespace

TEST(ShapeInference, ConvAttributes) {
  const ConvCase cases[] = {
      {{2, 3, 224, 224}, {64, 3, 7, 7}, {2, 2}, {3, 3, 3, 3}, {1, 1}, 1, "", {2, 64, 112, 112}},
      {{5, 7, 11, 13}, {6, 7, 3, 3}, {1, 1}, {0, 0, 0, 0}, {1, 1}, 1, "", {5, 6, 9, 11}},
      {{5, 6, 11, 13}, {9, 2, 3, 2}, {2, 3}, {1, 0, 2, 1}, {1, 1}, 3, "", {5, 9, 6, 5}},
      {{1, 4, 11, 13}, {4, 1, 3, 3}, {1, 1}, {2, 2, 2, 2}, {2, 2}, 4, "", {1, 4, 11, 13}},
      {{1, 2, 11, 13}, {3, 2, 3, 3}, {2, 2}, {}, {}, 1, "SAME_UPPER", {1, 3, 6, 7}},
      {{1, 2, 11, 13}, {3, 2, 3, 3}, {2, 2}, {}, {}, 1, "VALID", {1, 3, 5, 6}},
      {{1, 2, 10}, {3, 2, 4}, {3}, {1, 1}, {2}, 1, "", {1, 3, 2}},  // 1-d
  };
  for (const auto& c : cases) {
    ModelBuilder b;
    b.input("x", c.x);
    b.initializer("w", c.w, 0.1f);
    auto& n = b.node("Conv", {"x", "w"}, {"y"}, "conv");
    if (!c.strides.empty()) set_ints(n, "strides", c.strides);
    if (!c.pads.empty()) set_ints(n, "pads", c.pads);
    if (!c.dilations.empty()) set_ints(n, "dilations", c.dilations);
    set_int(n, "group", c.group);
    if (!c.auto_pad.empty()) set_string(n, "auto_pad", c.auto_pad);
    b.output("y");
    Graph g = import(b);
    EXPECT_EQ(g.outputs[0]->shape, c.expected) << shape_str(c.x) << " " << c.auto_pad;
  }
}

TEST(ShapeInference, PoolingCeilMode) {
  struct Case {
    std::string op;
    int64_t ceil;
    Shape expected;
  };
  // 112 -> kernel 3, stride 2, pad 1: floor gives 56; 7x7 with kernel 2 stride 2: ceil gives 4.
  for (const auto& c : {Case{"MaxPool", 0, {1, 8, 56, 56}}, Case{"AveragePool", 0, {1, 8, 56, 56}}}) {
    ModelBuilder b;
    b.input("x", {1, 8, 112, 112});
    auto& n = b.node(c.op, {"x"}, {"y"}, "pool");
    set_ints(n, "kernel_shape", {3, 3});
    set_ints(n, "strides", {2, 2});
    set_ints(n, "pads", {1, 1, 1, 1});
    set_int(n, "ceil_mode", c.ceil);
    b.output("y");
    EXPECT_EQ(import(b).outputs[0]->shape, c.expected) << c.op;
  }
  for (int64_t ceil : {0, 1}) {
    ModelBuilder b;
    b.input("x", {1, 2, 7, 6});
    auto& n = b.node("MaxPool", {"x"}, {"y", "idx"}, "pool");
    set_ints(n, "kernel_shape", {2, 2});
    set_ints(n, "strides", {2, 2});
    set_int(n, "ceil_mode", ceil);
    b.output("y");
    b.output("idx", 7);
    Graph g = import(b);
    EXPECT_EQ(g.outputs[0]->shape, ceil ? (Shape{1, 2, 4, 3}) : (Shape{1, 2, 3, 3}));
    EXPECT_EQ(g.outputs[1]->dtype, DType::i64);
  }
  // PyTorch's rule: a last window that would start in the right padding is dropped.
  ModelBuilder b;
  b.input("x", {1, 1, 5, 5});
  auto& n = b.node("MaxPool", {"x"}, {"y"}, "pool");
  set_ints(n, "kernel_shape", {2, 2});
  set_ints(n, "strides", {2, 2});
  set_ints(n, "pads", {1, 1, 1, 1});
  set_int(n, "ceil_mode", 1);
  b.output("y");
  EXPECT_EQ(import(b).outputs[0]->shape, (Shape{1, 1, 3, 3}));
}

TEST(ShapeInference, GemmTransposes) {
  for (int ta : {0, 1})
    for (int tb : {0, 1}) {
      ModelBuilder b;
      b.input("a", ta ? Shape{7, 3} : Shape{3, 7});
      b.initializer("w", tb ? Shape{5, 7} : Shape{7, 5}, 0.1f);
      b.initializer("c", {5}, 0.0f);
      auto& n = b.node("Gemm", {"a", "w", "c"}, {"y"}, "fc");
      set_int(n, "transA", ta);
      set_int(n, "transB", tb);
      b.output("y");
      EXPECT_EQ(import(b).outputs[0]->shape, (Shape{3, 5})) << ta << tb;
    }
}

TEST(ShapeInference, MatMulBroadcasts) {
  ModelBuilder b;
  b.input("a", {2, 1, 3, 4});
  b.input("c", {5, 4, 6});
  b.node("MatMul", {"a", "c"}, {"y"}, "mm");
  b.output("y");
  EXPECT_EQ(import(b).outputs[0]->shape, (Shape{2, 5, 3, 6}));
  ModelBuilder v;
  v.input("a", {4});
  v.input("c", {3, 4, 6});
  v.node("MatMul", {"a", "c"}, {"y"}, "mm");
  v.output("y");
  EXPECT_EQ(import(v).outputs[0]->shape, (Shape{3, 6}));
}

TEST(ShapeInference, ReduceMeanAxesAttributeAndInput) {
  // Opset 13: axes attribute; opset 18: axes input (as PyTorch's new exporter writes).
  ModelBuilder a(13);
  a.input("x", {2, 8, 5, 5});
  auto& n = a.node("ReduceMean", {"x"}, {"y"}, "mean");
  set_ints(n, "axes", {-1, -2});
  set_int(n, "keepdims", 1);
  a.output("y");
  EXPECT_EQ(import(a).outputs[0]->shape, (Shape{2, 8, 1, 1}));
  ModelBuilder b(18);
  b.input("x", {2, 8, 5, 5});
  b.int_initializer("axes", {2, 3});
  auto& m = b.node("ReduceMean", {"x", "axes"}, {"y"}, "mean");
  set_int(m, "keepdims", 0);
  b.output("y");
  EXPECT_EQ(import(b).outputs[0]->shape, (Shape{2, 8}));
}

TEST(ShapeInference, FlattenAndReshape) {
  ModelBuilder b;
  b.input("x", {2, 3, 4, 5});
  auto& f = b.node("Flatten", {"x"}, {"f"}, "flat");
  set_int(f, "axis", 2);
  b.int_initializer("shape", {0, -1});
  b.node("Reshape", {"x", "shape"}, {"r"}, "reshape");
  b.output("f");
  b.output("r");
  Graph g = import(b);
  EXPECT_EQ(g.outputs[0]->shape, (Shape{6, 20}));
  EXPECT_EQ(g.outputs[1]->shape, (Shape{2, 60}));
}

TEST(ShapeInference, SoftmaxCrossEntropyLoss) {
  for (std::string reduction : {"mean", "none"}) {
    ModelBuilder b;
    b.input("scores", {6, 10});
    b.input("labels", {6}, 7);
    auto& n = b.node("SoftmaxCrossEntropyLoss", {"scores", "labels"}, {"loss", "logp"}, "loss");
    set_string(n, "reduction", reduction);
    b.output("loss");
    b.output("logp");
    Graph g = import(b);
    EXPECT_EQ(g.outputs[0]->shape, reduction == "mean" ? Shape{} : Shape{6});
    EXPECT_EQ(g.outputs[1]->shape, (Shape{6, 10}));
  }
}

TEST(ConstantFolding, ViewChainBecomesAConstantShape) {
  // x.view(x.size(0), -1) as the TorchScript exporter writes it.
  ModelBuilder b(9);
  b.input("x", {-1, 8, 2, 2});
  b.node("Shape", {"x"}, {"s"}, "shape");
  auto& c = b.node("Constant", {}, {"zero"}, "const0");
  auto* a = c.add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  a->mutable_t()->set_data_type(7);
  a->mutable_t()->add_int64_data(0);
  b.node("Gather", {"s", "zero"}, {"n"}, "gather");
  auto& u = b.node("Unsqueeze", {"n"}, {"n1"}, "unsqueeze");
  set_ints(u, "axes", {0});
  b.int_initializer("minus_one", {-1});
  auto& cat = b.node("Concat", {"n1", "minus_one"}, {"target"}, "concat");
  set_int(cat, "axis", 0);
  b.node("Reshape", {"x", "target"}, {"y"}, "reshape");
  b.output("y");
  Graph g = import(b, 3);
  ASSERT_EQ(g.nodes().size(), 1u);
  EXPECT_EQ(g.nodes()[0]->op_type, "Reshape");
  EXPECT_EQ(g.nodes()[0]->input(1)->data->to_int64(), (std::vector<int64_t>{3, -1}));
  EXPECT_EQ(g.outputs[0]->shape, (Shape{3, 32}));
}

TEST(ConstantFolding, CastAndSliceOnShapes) {
  ModelBuilder b(11);
  b.input("x", {1, 6, 2});
  b.node("Shape", {"x"}, {"s"}, "shape");
  auto& cast = b.node("Cast", {"s"}, {"sf"}, "cast");
  set_int(cast, "to", 1);  // float
  auto& back = b.node("Cast", {"sf"}, {"si"}, "cast_back");
  set_int(back, "to", 7);
  b.int_initializer("starts", {1});
  b.int_initializer("ends", {3});
  b.node("Slice", {"si", "starts", "ends"}, {"tail"}, "slice");
  b.node("Reshape", {"x", "tail"}, {"y"}, "reshape");
  b.output("y");
  Graph g = import(b);
  // shape [1,6,2] -> float -> int64 -> [6,2]
  EXPECT_EQ(g.outputs[0]->shape, (Shape{6, 2}));
  EXPECT_EQ(g.nodes().size(), 1u);
}

TEST(ConstantFolding, CastToHalfRoundsOnceFromFloat64) {
  // 1 + 2^-11 + 2^-40 lies just above the midpoint of float16's 1 and 1 + 2^-10: it rounds up.
  // Through float32 by nearest it would lose the 2^-40 and round the tie to even, down to 1.
  const double values[] = {1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40), 1.0 + std::ldexp(1.0, -11), 65520.0,
                           -0.0, 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)};
  for (int to : {10, 16}) {  // FLOAT16, BFLOAT16
    ModelBuilder b(17);
    b.input("x", {5}, to);
    onnx::AttributeProto* value = b.node("Constant", {}, {"c"}, "constant").add_attribute();
    value->set_name("value");
    value->set_type(onnx::AttributeProto::TENSOR);
    value->mutable_t()->set_data_type(11);  // DOUBLE
    value->mutable_t()->add_dims(5);
    value->mutable_t()->set_raw_data(values, sizeof(values));
    auto& cast = b.node("Cast", {"c"}, {"h"}, "cast");  // of a constant: folded at import
    set_int(cast, "to", to);
    b.node("Add", {"x", "h"}, {"y"}, "add");
    b.output("y", to);
    Graph g = import(b);
    ASSERT_EQ(g.nodes().size(), 1u);
    const Value* h = g.nodes()[0]->input(1);
    ASSERT_TRUE(h->has_data());
    ASSERT_EQ(h->data->dtype, to == 10 ? DType::f16 : DType::bf16) << h->name;
    ASSERT_EQ(h->data->numel(), 5) << h->name;
    const uint16_t* bits = h->data->data<uint16_t>();
    if (to == 10) {
      EXPECT_EQ(bits[0], 0x3c01);  // up
      EXPECT_EQ(bits[1], 0x3c00);  // the tie itself: to even
      EXPECT_EQ(bits[2], 0x7c00);  // beyond float16's largest finite value: infinity
      EXPECT_EQ(bits[3], 0x8000);
    } else {
      EXPECT_EQ(bits[0], 0x3f80);  // well below bfloat16's half step
      EXPECT_EQ(bits[4], 0x3f81);  // 1 + 2^-8 + 2^-40: above the midpoint, up
    }
  }
}

TEST(ConstantFolding, IdentityOfAnInitializerAliasesIt) {
  ModelBuilder b;
  b.input("x", {2, 4});
  b.initializer("w", {3, 4}, 0.5f);
  b.node("Identity", {"w"}, {"w_copy"}, "id");
  auto& g1 = b.node("Gemm", {"x", "w_copy"}, {"y"}, "fc");
  set_int(g1, "transB", 1);
  b.output("y");
  Graph g = import(b);
  ASSERT_EQ(g.nodes().size(), 1u);
  EXPECT_EQ(g.nodes()[0]->input(1)->name, "w");
  EXPECT_EQ(g.value("w")->role, Role::Parameter);
}

TEST(Roles, ParametersStateAndConstants) {
  ModelBuilder b(15);
  b.input("x", {2, 3, 4, 4});
  for (const char* n : {"s", "bias", "mean", "var"}) b.initializer(n, {3}, 1.0f);
  auto& bn = b.node("BatchNormalization", {"x", "s", "bias", "mean", "var"}, {"y", "rm", "rv"}, "bn");
  set_int(bn, "training_mode", 1);
  b.int_initializer("shape", {2, -1});
  b.node("Reshape", {"y", "shape"}, {"z"}, "reshape");
  b.output("z");
  Graph g = import(b);
  EXPECT_EQ(g.value("s")->role, Role::Parameter);
  EXPECT_EQ(g.value("bias")->role, Role::Parameter);
  EXPECT_EQ(g.value("mean")->role, Role::State);
  EXPECT_EQ(g.value("var")->role, Role::State);
  EXPECT_EQ(g.value("shape")->role, Role::Constant);
  EXPECT_EQ(g.value("rm")->shape, (Shape{3}));
}
