// A model whose exporter folded batch normalization into its convolutions imports with the
// evidence recorded (Graph::folded_batchnorm) and trains only after a warning that says what
// happened and how to export it with batch norm kept; so does one whose exporter dropped the
// convolution biases that were zero at export (Graph::removed_biases). Models that never had
// batch norm, or kept it, import without one. Fixtures: tests/fixtures/folded_bn/ (made by
// scripts/make_folded_bn_fixtures.py) and the export-style fixtures of scripts/make_fixtures.py.
#include <gtest/gtest.h>

#include "graph/onnx_io.h"
#include "tests/helpers.h"

using namespace oxtrain;

namespace {

std::string fixture(const std::string& file) { return std::string(OXTRAIN_FIXTURES) + "/" + file; }

}  // namespace

TEST(FoldedBatchNorm, DynamoRewriteRuleInTheNodeMetadata) {
  // Metadata kept (as the exporter writes it by default): the rule that folded each Conv.
  graph::Graph g = graph::import_onnx(fixture("folded_bn/dynamo_folded.onnx"));
  EXPECT_EQ(g.folded_batchnorm,
            "2 Convs carry batch norm folded in by the dynamo exporter (rewrite rule "
            "FuseBatchNormIntoConv), e.g. 'node_Conv_37'");
}

TEST(FoldedBatchNorm, DynamoBiasNamedAfterTheWeight) {
  // Metadata stripped: the folded bias is still named "<weight>_bias".
  graph::Graph g = graph::import_onnx(fixture("dynamo_op18_eval.onnx"));
  EXPECT_EQ(g.folded_batchnorm,
            "20 Convs have a bias named after the weight ('<weight>_bias'), as the dynamo exporter "
            "names the batch norm it folds in, e.g. 'node_Conv_291'");
}

TEST(FoldedBatchNorm, TorchScriptEvalConstantFolding) {
  graph::Graph g = graph::import_onnx(fixture("ts_eval_op13_folded.onnx"));
  EXPECT_EQ(g.folded_batchnorm,
            "20 Convs have anonymous weights and biases ('onnx::Conv_<n>'), as the TorchScript "
            "exporter in eval mode writes the batch norm it folds in, e.g. '/conv1/Conv'");
}

TEST(FoldedBatchNorm, ZeroBiasesDroppedByTheOptimizer) {
  const std::string file = fixture("folded_bn/dynamo_zero_bias.onnx");
  graph::Graph g = graph::import_onnx(file);
  EXPECT_EQ(g.folded_batchnorm, "");
  EXPECT_EQ(g.removed_biases,
            "2 Convs lost their bias, zero when exported (rewrite rule RemoveOptionalBiasFromConv), "
            "e.g. 'node_Conv_7'");
  EXPECT_EQ(graph::folded_batchnorm_warning(g, "m.onnx"),
            "'m.onnx': its exporter rewrote it for inference (" + g.removed_biases +
                "); those biases cannot train. To train the model as defined, export it with "
                "torch.onnx.export(model, x, f, dynamo=True, optimize=False), or "
                "torch.onnx.export(model.train(), x, f, dynamo=False, "
                "training=torch.onnx.TrainingMode.TRAINING)");
}

TEST(FoldedBatchNorm, NothingFoldedNothingSaid) {
  // Batch norm kept (dynamo without optimize, TorchScript in training mode), or never there
  // (convolutions with their own biases, as AlexNet's).
  for (const char* file : {"dynamo_op18_eval_noopt.onnx", "ts_train_op17_bottleneck.onnx",
                           "ts_train_op9_basic.onnx", "folded_bn/dynamo_no_bn.onnx"}) {
    graph::Graph g = graph::import_onnx(fixture(file));
    EXPECT_EQ(g.folded_batchnorm, "") << file;
    EXPECT_EQ(g.removed_biases, "") << file;
    EXPECT_EQ(graph::folded_batchnorm_warning(g, file), "") << file;
  }
}

TEST(FoldedBatchNorm, TrainWarnsThenTrains) {
  test::ScopedTempDir tmp;
  const std::string folded = fixture("folded_bn/dynamo_folded.onnx");
  const std::string common = " --synthetic --image-size 8 --num-classes 5 -b 2 --steps 1 -p 1 --threads 1 --device cpu "
                             "--checkpoint-dir " + tmp.path;
  auto r = test::run_oxtrain_limited("train --model " + folded + common, 60);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("oxtrain: warning: '" + folded + "': its exporter folded batch norm into the "
                       "convolutions (2 Convs carry batch norm folded in by the dynamo exporter"),
            0u)
      << r.err;
  EXPECT_NE(r.err.find("torch.onnx.export(model, x, f, dynamo=True, optimize=False)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("training=torch.onnx.TrainingMode.TRAINING"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("Epoch: [0]"), std::string::npos) << r.out;  // it trains after the warning

  auto clean = test::run_oxtrain_limited("train --model " + fixture("folded_bn/dynamo_no_bn.onnx") + common, 60);
  ASSERT_EQ(clean.exit_code, 0) << clean.err;
  EXPECT_EQ(clean.err.find("warning"), std::string::npos) << clean.err;

  auto shown = test::run_oxtrain_limited("graph " + folded, 60);
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_NE(shown.err.find("oxtrain: warning: '" + folded + "': its exporter folded batch norm"), std::string::npos)
      << shown.err;
}
