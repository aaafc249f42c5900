// Bad input gets one clear error (naming the file, op, node or shapes) and never a crash;
// through the CLI it is one line on stderr and exit code 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "graph/onnx_io.h"
#include "graph/ops.h"
#include "graph/opset.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;
using oxtrain::test::ModelBuilder;

namespace {

// Imports `path`, expects an Error whose message holds every string of `needles`.
void expect_import_error(const std::string& path, const std::vector<std::string>& needles) {
  try {
    import_onnx(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
  // Through the CLI: exit code 2 and one line on stderr.
  auto r = test::run_oxtrain("graph '" + path + "'");
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("oxtrain: error: ", 0), 0u) << r.err;
}

std::string save(const ModelBuilder& b, const std::string& name = "model.onnx") {
  std::string path = test::temp_dir() + "/" + name;
  b.save(path);
  return path;
}

void make_external(onnx::TensorProto& t, const std::string& location, int64_t offset,
                   int64_t length) {
  test::set_external_data(t, location, std::to_string(offset), length >= 0 ? std::to_string(length) : "");
}

}  // namespace

TEST(ImportErrors, MissingFile) {
  expect_import_error("/nonexistent/model.onnx", {"/nonexistent/model.onnx", "does not exist"});
}

TEST(ImportErrors, NotOnnx) {
  std::string path = test::temp_dir() + "/notes.onnx";
  std::ofstream(path) << "these are my notes, not a model\n";
  expect_import_error(path, {"notes.onnx", "not a valid ONNX model"});
}

TEST(ImportErrors, TruncatedFile) {
  std::string path = save(test::small_convnet());
  std::string bytes = test::read_text(path);
  for (size_t cut : {bytes.size() / 2, bytes.size() - 3}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), cut);
    expect_import_error(path, {"model.onnx", "truncated"});
  }
}

TEST(ImportErrors, ExternalDataMissingOrShort) {
  std::string dir = test::temp_dir();
  ModelBuilder b = test::small_convnet();
  // conv.weight: 4x3x3x3 floats = 432 bytes, stored in weights.bin at offset 16.
  onnx::TensorProto& w = *b.graph().mutable_initializer(0);
  std::string raw = w.raw_data();
  make_external(w, "weights.bin", 16, static_cast<int64_t>(raw.size()));
  b.save(dir + "/model.onnx");
  expect_import_error(dir + "/model.onnx", {"conv.weight", "weights.bin", "does not exist"});

  // Too short: the file ends 100 bytes before the tensor does.
  std::string short_data(16 + raw.size() - 100, '\0');
  std::ofstream(dir + "/weights.bin", std::ios::binary).write(short_data.data(), short_data.size());
  expect_import_error(dir + "/model.onnx", {"weights.bin", "conv.weight", "truncated"});

  // Right size: imports, and the values are the ones written.
  std::string good = std::string(16, '\0') + raw;
  std::ofstream(dir + "/weights.bin", std::ios::binary | std::ios::trunc)
      .write(good.data(), good.size());
  Graph g = import_onnx(dir + "/model.onnx");
  const Tensor& t = *g.value("conv.weight")->data;
  ASSERT_EQ(t.bytes.size(), raw.size());
  EXPECT_EQ(std::memcmp(t.bytes.data(), raw.data(), raw.size()), 0);
}

TEST(ImportErrors, UnsupportedOpsAreListedAtOnce) {
  ModelBuilder b = test::small_convnet();
  b.node("LRN", {"r"}, {"l1"}, "norm_a");
  b.node("LRN", {"l1"}, {"l2"}, "norm_b");
  b.node("Hardmax", {"l2"}, {"h"}, "act_c");
  b.output("h");
  expect_import_error(save(b), {"unsupported ops: LRN (2 nodes: 'norm_a', 'norm_b'), Hardmax (1 node: 'act_c')"});
}

TEST(ImportErrors, OpsetOutsideTheSupportedRange) {
  ModelBuilder b = test::small_convnet(graph::kMaxOpset + 1);
  expect_import_error(save(b), {"opset " + std::to_string(graph::kMaxOpset + 1), "supports 1 to 28"});
}

TEST(ImportErrors, OpVersionsNotImplementedAreNamed) {
  // At opset 6 Gemm means Gemm-6 (with its `broadcast` attribute), which opsets 7 to 21 never
  // use; Conv-1, Relu-6, GlobalAveragePool-1 and Flatten-1 are what opset 7 means too.
  ModelBuilder b = test::small_convnet(6);
  expect_import_error(save(b), {"imports opset 6", "Gemm ('fc'): it means Gemm-6, oxtrain implements versions 7, 9, 11, 13",
                                "convert_version(model, 21)"});
  // Only Gemm is named: Conv and Relu mean at opset 6 what they mean at opset 7.
  try {
    import_onnx(save(b));
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("Relu ("), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("Conv ("), std::string::npos) << e.what();
  }
}

TEST(OpVersions, ResolveAsOnnxDefinesThem) {
  EXPECT_EQ(graph::onnx_op_version("BatchNormalization", 8), 7);
  EXPECT_EQ(graph::onnx_op_version("BatchNormalization", 6), 6);
  EXPECT_EQ(graph::onnx_op_version("Relu", 7), 6);
  EXPECT_EQ(graph::onnx_op_version("Gelu", 19), 0);  // from opset 20
  EXPECT_EQ(graph::onnx_op_version("Gelu", 28), 20);
  EXPECT_EQ(graph::onnx_op_version("NoSuchOp", 21), 0);
  EXPECT_EQ(graph::implemented_op_versions("Mod"), (std::vector<int64_t>{10, 13, 28}));
  EXPECT_EQ(graph::implemented_op_versions("Not"), (std::vector<int64_t>{1}));
  EXPECT_EQ(graph::implemented_op_versions("Conv"), (std::vector<int64_t>{1, 11, 22}));
  EXPECT_EQ(graph::implemented_op_versions("BatchNormalization"), (std::vector<int64_t>{7, 9, 14, 15}));
  EXPECT_TRUE(graph::implemented_op_versions("LRN").empty());  // no schema in oxtrain
}

// Every version a supported ai.onnx op has past kFullOpsetMax is implemented, that is,
// reviewed in graph/opset.cc: an op added to oxtrain, or a newer onnx's table, fails here
// until someone reads what the new versions changed.
TEST(OpVersions, EveryNewerVersionOfASupportedOpIsReviewed) {
  std::vector<std::string> unreviewed;
  int ops = 0;
  for (const std::string& op : graph::supported_ops()) {
    if (op.find('.') != std::string::npos || !graph::find_schema("", op)) continue;  // other domains
    const std::vector<int64_t> all = graph::onnx_op_versions(op), implemented = graph::implemented_op_versions(op);
    if (all.empty()) continue;  // not an ai.onnx op
    ++ops;
    for (int64_t v : all)
      if (v > graph::kFullOpsetMax && std::find(implemented.begin(), implemented.end(), v) == implemented.end())
        unreviewed.push_back(op + "-" + std::to_string(v));
  }
  EXPECT_GT(ops, 70);  // 73 today
  EXPECT_TRUE(unreviewed.empty()) << ::testing::PrintToString(unreviewed);
}

TEST(OpVersions, NewerOpsetsImportWhereEveryVersionIsImplemented) {
  // Conv-22, GlobalAveragePool-22 (bfloat16 added), Flatten-25 and Gemm-13 at opset 28; the
  // same graph as at opset 21.
  Graph g21 = import_onnx(save(test::small_convnet(21)));
  for (int64_t opset : {22, 25, 28}) {
    Graph g = import_onnx(save(test::small_convnet(opset)));
    ASSERT_EQ(g.nodes().size(), g21.nodes().size()) << opset;
    for (size_t i = 0; i < g.nodes().size(); ++i) EXPECT_EQ(g.nodes()[i]->op_type, g21.nodes()[i]->op_type);
    EXPECT_EQ(g.value("y")->shape, g21.value("y")->shape);
  }
}

TEST(ImportErrors, ConvChannelsDisagree) {
  ModelBuilder b = test::small_convnet();
  // Weight expects 5 input channels; the input has 3.
  auto* w = b.graph().mutable_initializer(0);
  w->set_dims(1, 5);
  std::vector<float> values(4 * 5 * 3 * 3, 0.1f);
  w->set_raw_data(values.data(), values.size() * sizeof(float));
  expect_import_error(save(b), {"Conv 'conv'", "input has 3 channels but weight expects 5",
                                "group=1", "[1,3,8,8]", "[4,5,3,3]"});
}

TEST(ImportErrors, GemmInnerDimensionsDisagree) {
  ModelBuilder b = test::small_convnet();
  auto* w = b.graph().mutable_initializer(2);  // fc.weight [5,4] -> [5,6]
  w->set_dims(1, 6);
  std::vector<float> values(30, 0.1f);
  w->set_raw_data(values.data(), values.size() * sizeof(float));
  expect_import_error(save(b), {"Gemm 'fc'", "[1,4]", "[5,6]", "inner dimension"});
}

TEST(ImportErrors, BroadcastMismatch) {
  ModelBuilder b(17);
  b.input("a", {2, 3});
  b.input("b", {4, 3});
  b.node("Add", {"a", "b"}, {"c"}, "plus");
  b.output("c");
  expect_import_error(save(b), {"Add 'plus'", "[2,3]", "[4,3]", "do not broadcast"});
}

TEST(ImportErrors, DeclaredOutputShapeDisagrees) {
  ModelBuilder b = test::small_convnet();
  auto* shape = b.graph().mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  shape->add_dim()->set_dim_param("N");
  shape->add_dim()->set_dim_value(7);
  expect_import_error(save(b), {"output 'y'", "declared as", "[1,5]"});
}

TEST(ImportErrors, SymbolicNonBatchDimension) {
  ModelBuilder b(17);
  b.input("x", {2, -1}, 1, "width");
  b.node("Relu", {"x"}, {"y"}, "relu");
  b.output("y");
  expect_import_error(save(b), {"'x'", "'width'", "axis 1", "only the batch dimension"});
}

TEST(ImportErrors, UndefinedInput) {
  ModelBuilder b(17);
  b.input("x", {2, 3});
  b.node("Add", {"x", "ghost"}, {"y"}, "plus");
  b.output("y");
  expect_import_error(save(b), {"Add 'plus'", "'ghost'", "not produced"});
}

TEST(CliErrors, UsageErrorsExitWithTwo) {
  EXPECT_EQ(test::run_oxtrain("").exit_code, 2);
  EXPECT_EQ(test::run_oxtrain("graph").exit_code, 2);
  EXPECT_EQ(test::run_oxtrain("graph a.onnx --no-such-flag").exit_code, 2);
  EXPECT_EQ(test::run_oxtrain("zoo resnet18").exit_code, 2);  // no -o
  auto r = test::run_oxtrain("zoo resnet51 -o /tmp/never.onnx");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown model 'resnet51'"), std::string::npos) << r.err;
  EXPECT_EQ(test::run_oxtrain("--help").exit_code, 0);
}
