#include <gtest/gtest.h>

#include "graph/ir.h"

using namespace oxtrain;
using namespace oxtrain::graph;

TEST(Ir, DtypesRoundTripOnnxNumbering) {
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64, DType::i32,
                  DType::i8, DType::u8, DType::boolean})
    EXPECT_EQ(dtype_from_onnx(dtype_to_onnx(d)), d) << dtype_name(d);
  EXPECT_EQ(dtype_from_onnx(1), DType::f32);
  EXPECT_EQ(dtype_from_onnx(7), DType::i64);
  EXPECT_EQ(dtype_from_onnx(8), DType::undefined);  // string
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
}

TEST(Ir, ShapeStrings) {
  EXPECT_EQ(shape_str({2, 3}), "[2,3]");
  EXPECT_EQ(shape_str({-1, 3}, {"N", ""}), "[N,3]");
  EXPECT_EQ(shape_str({-1, 3}), "[?,3]");
  EXPECT_EQ(shape_numel({2, -1}), -1);
  EXPECT_EQ(shape_numel({}), 1);
}

TEST(Ir, LinksAndTopologicalSort) {
  Graph g;
  Value* x = g.add_value("x", DType::f32, {2}, Role::Input);
  g.inputs.push_back(x);
  Value* a = g.add_value("a");
  Value* b = g.add_value("b");
  Value* c = g.add_value("c");
  // Added out of order: c = Add(a, b) first, then b = Relu(a), then a = Relu(x).
  g.add_node("Add", {a, b}, {c}, "add");
  g.add_node("Relu", {a}, {b}, "relu_b");
  g.add_node("Relu", {x}, {a}, "relu_a");
  g.outputs.push_back(c);
  g.topological_sort();
  ASSERT_EQ(g.nodes().size(), 3u);
  EXPECT_EQ(g.nodes()[0]->name, "relu_a");
  EXPECT_EQ(g.nodes()[1]->name, "relu_b");
  EXPECT_EQ(g.nodes()[2]->name, "add");
  EXPECT_EQ(a->consumers.size(), 2u);
  EXPECT_EQ(c->producer->name, "add");
}

TEST(Ir, NodeUsingAValueTwiceSortsOnce) {
  Graph g;
  Value* x = g.add_value("x", DType::f32, {2}, Role::Input);
  g.inputs.push_back(x);
  Value* sq = g.add_value("sq");
  Value* r = g.add_value("r");
  g.add_node("Mul", {r, r}, {sq}, "square");
  g.add_node("Relu", {x}, {r}, "relu");
  g.outputs.push_back(sq);
  g.topological_sort();
  EXPECT_EQ(g.nodes()[0]->name, "relu");
  EXPECT_EQ(g.nodes()[1]->name, "square");
}

TEST(Ir, CycleIsAnError) {
  Graph g;
  Value* a = g.add_value("a");
  Value* b = g.add_value("b");
  g.add_node("Relu", {a}, {b}, "one");
  g.add_node("Relu", {b}, {a}, "two");
  EXPECT_THROW(g.topological_sort(), Error);
}

TEST(Ir, ReplaceUsesAndDeadCode) {
  Graph g;
  Value* x = g.add_value("x", DType::f32, {2}, Role::Input);
  g.inputs.push_back(x);
  Value* a = g.add_value("a");
  Value* unused = g.add_value("unused");
  Value* y = g.add_value("y");
  g.add_node("Identity", {x}, {a}, "id");
  g.add_node("Relu", {x}, {unused}, "dead");
  g.add_node("Relu", {a}, {y}, "relu");
  g.outputs.push_back(y);
  g.replace_uses(a, x);
  g.remove_dead_nodes();
  g.prune_values();
  ASSERT_EQ(g.nodes().size(), 1u);
  EXPECT_EQ(g.nodes()[0]->input(0), x);
  EXPECT_EQ(g.find_value("unused"), nullptr);
  EXPECT_EQ(g.find_value("a"), nullptr);
}

TEST(Ir, DuplicateNamesAndDoubleProducersAreErrors) {
  Graph g;
  Value* x = g.add_value("x", DType::f32, {2}, Role::Input);
  EXPECT_THROW(g.add_value("x"), Error);
  Value* y = g.add_value("y");
  g.add_node("Relu", {x}, {y}, "a");
  EXPECT_THROW(g.add_node("Relu", {x}, {y}, "b"), Error);
  EXPECT_EQ(g.unique_name("y"), "y_1");
}

TEST(Ir, TensorIntegers) {
  Tensor t = Tensor::from_int64({3, -1, 7}, {3});
  EXPECT_EQ(t.to_int64(), (std::vector<int64_t>{3, -1, 7}));
  EXPECT_THROW(Tensor::from_int64({1, 2}, {3}), Error);
  Tensor f(DType::f32, {2, 2});
  EXPECT_EQ(f.bytes.size(), 16u);
}
