// Every committed fixture (ResNets exported by PyTorch in each style users hold, see
// scripts/make_fixtures.py and tests/fixtures/manifest.json) imports with PyTorch's parameter
// count, the exporter's compute ops and output shape, and survives export -> import exactly.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "graph/onnx_io.h"
#include "graph/stats.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using nlohmann::json;

namespace {

json manifest() {
  std::ifstream in(std::string(OXTRAIN_FIXTURES) + "/manifest.json");
  return json::parse(in);
}

std::string fixture(const std::string& file) { return std::string(OXTRAIN_FIXTURES) + "/" + file; }

// Ops that only compute shapes or alias values: folded away at import.
const std::set<std::string> kFolded = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat",
                                       "Constant", "Cast", "CastLike", "Expand", "Identity",
                                       "Slice", "ConstantOfShape"};

class Fixture : public ::testing::TestWithParam<std::string> {};

std::vector<std::string> fixture_files() {
  std::vector<std::string> files;
  json m = manifest();
  for (const auto& f : m["fixtures"]) files.push_back(f["file"]);
  return files;
}

json entry(const std::string& file) {
  json m = manifest();
  for (const auto& f : m["fixtures"])
    if (f["file"] == file) return f;
  return {};
}

}  // namespace

TEST_P(Fixture, ImportsWithPyTorchsParameterCount) {
  json e = entry(GetParam());
  Graph g = import_onnx(fixture(GetParam()));
  GraphStats s = compute_stats(g);
  EXPECT_EQ(s.parameters, e["parameters"].get<int64_t>()) << e["style"];
  EXPECT_EQ(g.opset(), e["opset"].get<int64_t>());
  // Compute ops survive import one for one; shape arithmetic is folded away.
  for (const auto& [op, count] : e["op_histogram"].items()) {
    if (kFolded.count(op) || op == "Reshape") continue;
    EXPECT_EQ(s.ops[op], count.get<int64_t>()) << op << " in " << GetParam();
  }
  for (const auto& [op, count] : s.ops) {
    EXPECT_FALSE(kFolded.count(op)) << op << " left in " << GetParam();
  }
  // Output shape as PyTorch declared it; a symbolic batch becomes 1 by default.
  ASSERT_EQ(g.outputs.size(), 1u);
  Shape expected;
  for (const auto& d : e["output_shape"]) expected.push_back(d.is_string() ? 1 : d.get<int64_t>());
  EXPECT_EQ(g.outputs[0]->shape, expected);
  EXPECT_GT(s.multiply_adds, 0);
}

TEST_P(Fixture, RoundTripIsExact) {
  Graph g = import_onnx(fixture(GetParam()));
  std::string path = test::temp_dir() + "/again.onnx";
  export_onnx(g, path);
  Graph back = import_onnx(path);
  EXPECT_EQ(test::graph_difference(g, back), "") << GetParam();
  // libonnx 1.12's checker knows opsets up to 17 and IR versions up to 8.
  if (g.opset() <= 17 && g.ir_version <= 8) {
    EXPECT_NO_THROW(check_with_onnx(g)) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Exports, Fixture, ::testing::ValuesIn(fixture_files()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

TEST(Fixtures, CoverEveryExporterStyle) {
  std::set<int64_t> opsets;
  std::set<int64_t> ir;
  json m = manifest();
  for (const auto& f : m["fixtures"]) {
    opsets.insert(f["opset"].get<int64_t>());
    ir.insert(f["ir_version"].get<int64_t>());
  }
  for (int64_t o : {7, 8, 9, 12, 13, 17, 18}) EXPECT_TRUE(opsets.count(o)) << "opset " << o;
  EXPECT_TRUE(ir.count(10));
}

TEST(Fixtures, SymbolicBatchTakesBatchSize) {
  for (const char* file : {"symbolic_batch_N.onnx", "symbolic_batch_batch_size.onnx"}) {
    ImportOptions o;
    o.batch_size = 5;
    Graph g = import_onnx(fixture(file), o);
    EXPECT_EQ(g.inputs[0]->shape, (Shape{5, 3, 32, 32})) << file;
    EXPECT_EQ(g.outputs[0]->shape, (Shape{5, 10})) << file;
  }
  Graph g = import_onnx(fixture("symbolic_batch_batch_size.onnx"));
  EXPECT_EQ(g.inputs[0]->shape_string(), "[batch_size,3,32,32]");
}

TEST(Fixtures, OldZooViewChainFoldsForAnyBatch) {
  // Opset 7/8 model-zoo style: x.view(x.size(0), -1) through Shape/Gather/Unsqueeze/Concat
  // (with Casts added by the version converter) must fold for the batch given.
  for (const char* file : {"zoo_op7_view.onnx", "zoo_op8_view.onnx"}) {
    ImportOptions o;
    o.batch_size = 3;
    Graph g = import_onnx(fixture(file), o);
    EXPECT_EQ(g.outputs[0]->shape, (Shape{3, 10})) << file;
    int reshapes = 0;
    for (const auto& n : g.nodes())
      if (n->op_type == "Reshape") {
        ++reshapes;
        EXPECT_EQ(n->input(1)->data->to_int64(), (std::vector<int64_t>{3, -1})) << file;
      }
    EXPECT_EQ(reshapes, 1) << file;
  }
}

TEST(Fixtures, ExternalDataMatchesInlineWeights) {
  Graph inline_g = import_onnx(fixture("symbolic_batch_N.onnx"));
  for (const char* file :
       {"external_one/external_one_file.onnx", "external_many/external_many_files.onnx"}) {
    Graph g = import_onnx(fixture(file));
    EXPECT_EQ(compute_stats(g).parameters, compute_stats(inline_g).parameters) << file;
    const Tensor& a = *g.value("fc.weight")->data;
    const Tensor& b = *inline_g.value("fc.weight")->data;
    EXPECT_EQ(a.bytes, b.bytes) << file;
  }
}

TEST(Fixtures, TrainingModeBatchNormOutputs) {
  // Opset 9/12: five outputs (Y, running mean, running var, saved mean, saved var);
  // opset 17: training_mode=1 with three.
  struct Case {
    const char* file;
    size_t outputs;
  };
  for (const Case& c : {Case{"ts_train_op9_basic.onnx", 5}, Case{"ts_train_op12_bottleneck.onnx", 5},
                        Case{"ts_train_op17_bottleneck.onnx", 3}}) {
    Graph g = import_onnx(fixture(c.file));
    for (const auto& n : g.nodes()) {
      if (n->op_type != "BatchNormalization") continue;
      EXPECT_EQ(n->outputs.size(), c.outputs) << c.file << " " << n->name;
      EXPECT_EQ(n->input(3)->role, Role::State);
      EXPECT_EQ(n->output(1)->shape, n->input(3)->shape);
    }
  }
}
