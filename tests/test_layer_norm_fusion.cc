// Layer norm as exporters write it before opset 17 (ReduceMean, Sub, Pow, ReduceMean, Add,
// Sqrt, Div, then Mul and Add) trains as one oxtrain.LayerNormalization
// (graph::fuse_decomposed_layer_norm, run by build_training_graph): the same training steps,
// bit for bit, as the model written with LayerNormalization itself. The imported model keeps
// its file's form (what --save-model writes for other runtimes), and nothing is fused where an
// intermediate is used elsewhere.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <map>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "runtime/session.h"
#include "tests/helpers.h"

using namespace oxtrain;

namespace {

void constant(test::ModelBuilder& m, const std::string& name, float value) {
  onnx::NodeProto& n = m.node("Constant", {}, {name}, name + "_node");
  onnx::AttributeProto* a = n.add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  a->mutable_t()->set_data_type(1);
  a->mutable_t()->add_float_data(value);
}

struct Variant {
  bool pow = true;          // d ^ 2, else d * d
  bool affine = true;       // then * scale + bias
  bool leak = false;        // the centred value is also a graph output: nothing to fuse
};

// input [4, 8] -> layer norm over the last axis -> Gemm to 5 classes; decomposed at opset 13,
// or LayerNormalization at opset 17.
graph::Graph model(bool decomposed, const Variant& v = {}) {
  test::ModelBuilder m(decomposed ? 13 : 17);
  m.input("input", {4, 8});
  m.initializer("scale", {8}, 0.9f);
  m.initializer("bias", {8}, 0.05f);
  m.initializer("w", {8, 5}, -0.02f);
  std::string normed = "normed";
  if (decomposed) {
    test::set_ints(m.node("ReduceMean", {"input"}, {"mean"}), "axes", {-1});
    m.node("Sub", {"input", "mean"}, {"d"});
    if (v.pow) {
      constant(m, "two", 2.0f);
      m.node("Pow", {"d", "two"}, {"sq"});
    } else {
      m.node("Mul", {"d", "d"}, {"sq"});
    }
    test::set_ints(m.node("ReduceMean", {"sq"}, {"var"}), "axes", {-1});
    constant(m, "eps", 1e-5f);
    m.node("Add", {"var", "eps"}, {"var_eps"});
    m.node("Sqrt", {"var_eps"}, {"std"});
    m.node("Div", {"d", "std"}, {v.affine ? "unit" : "normed"});
    if (v.affine) {
      m.node("Mul", {"unit", "scale"}, {"scaled"});
      m.node("Add", {"scaled", "bias"}, {"normed"});
    }
  } else {
    onnx::NodeProto& ln = m.node("LayerNormalization", {"input", "scale", "bias"}, {"normed"});
    test::set_int(ln, "axis", -1);
  }
  m.node("Gemm", {normed, "w"}, {"logits"});
  m.output("logits");
  if (v.leak) m.output("d");
  return graph::import_onnx_model(m.model, ".");
}

std::map<std::string, int> op_counts(const graph::Graph& g) {
  std::map<std::string, int> c;
  for (const auto& n : g.nodes()) ++c[(n->domain.empty() ? "" : n->domain + ".") + n->op_type];
  return c;
}

test::TrainingRun two_steps(graph::Graph g) {
  test::TrainingRun run = test::make_training_run(std::move(g), autodiff::TrainingOptions{});
  for (int64_t step = 0; step < 2; ++step) test::run_training_step(run, 70 + step, {1, 4, 0, 2}, 0.2f, step);
  return run;
}

}  // namespace

TEST(LayerNormFusion, DecomposedFormBecomesOneNode) {
  graph::Graph g = model(true);
  EXPECT_EQ(op_counts(g)["ReduceMean"], 2);  // as imported: the file's form
  EXPECT_EQ(graph::fuse_decomposed_layer_norm(g), 1);
  auto ops = op_counts(g);
  EXPECT_EQ(ops["oxtrain.LayerNormalization"], 1);
  for (const char* gone : {"ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div", "Mul"}) EXPECT_EQ(ops[gone], 0) << gone;
  for (const auto& n : g.nodes()) {
    if (n->op_type != "LayerNormalization") continue;
    EXPECT_EQ(n->attr_int("axis", 0), 1);
    EXPECT_FLOAT_EQ(n->attr_float("epsilon", 0), 1e-5f);
    EXPECT_EQ(n->input(1)->name, "scale");
    EXPECT_EQ(n->input(2)->name, "bias");
  }
  EXPECT_EQ(g.value("scale")->role, graph::Role::Parameter);
}

TEST(LayerNormFusion, TrainsAsLayerNormalization) {
  // d * d instead of Pow, and without the affine part, fuse too.
  for (Variant v : {Variant{}, Variant{false, true, false}}) {
    test::TrainingRun fused = two_steps(model(true, v)), reference = two_steps(model(false));
    int fused_nodes = 0;
    for (const auto& n : fused.session->graph().nodes()) fused_nodes += n->op_type == "LayerNormalization";
    EXPECT_EQ(fused_nodes, 1);
    EXPECT_EQ(fused.states, reference.states);
    EXPECT_EQ(test::differing_states(fused, reference), 0) << "pow " << v.pow;
  }
  graph::Graph plain = model(true, Variant{true, false, false});
  EXPECT_EQ(graph::fuse_decomposed_layer_norm(plain), 1);
  auto ops = op_counts(plain);
  EXPECT_EQ(ops["oxtrain.LayerNormalization"], 1);
  EXPECT_EQ(ops["Mul"], 0);
}

TEST(LayerNormFusion, NothingFusedWhereAnIntermediateIsUsedElsewhere) {
  graph::Graph g = model(true, Variant{true, true, true});
  EXPECT_EQ(graph::fuse_decomposed_layer_norm(g), 0);
  auto ops = op_counts(g);
  EXPECT_EQ(ops["oxtrain.LayerNormalization"], 0);
  EXPECT_EQ(ops["ReduceMean"], 2);
  EXPECT_EQ(ops["Sqrt"], 1);
}
