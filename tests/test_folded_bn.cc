// Exporters' rewrites for inference (graph/exporter_rewrites.h). A freshly initialised model
// whose dynamo export folded its batch norms, dropped its zero biases, merged its equal
// parameters and lifted its literals imports as the optimize=False export of the same model:
// the same parameters (names, shapes, values within the rounding of unfolding) and the same
// training steps. Where the file does not record the rewrites exactly (metadata stripped,
// trained statistics folded in, TorchScript's eval-mode folding), the evidence is recorded
// (Graph::folded_batchnorm, Graph::removed_biases) and training starts only after a warning that
// says what happened, why it cannot be undone and how to export the model as defined. Models
// that never had batch norm, or kept it, import without a word. Fixtures:
// tests/fixtures/folded_bn/ (made by scripts/make_folded_bn_fixtures.py) and the export-style
// fixtures of scripts/make_fixtures.py.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "runtime/session.h"
#include "tests/helpers.h"

using namespace oxtrain;

namespace {

std::string fixture(const std::string& file) { return std::string(OXTRAIN_FIXTURES) + "/" + file; }

struct Persistent {
  graph::Role role;
  graph::Shape shape;
  std::vector<float> values;
};

// Parameters and state by name, as float32 values.
std::map<std::string, Persistent> persistent(const graph::Graph& g) {
  std::map<std::string, Persistent> out;
  for (const graph::Value* v : g.initializers()) {
    if (v->role != graph::Role::Parameter && v->role != graph::Role::State) continue;
    const float* data = v->data->data<float>();
    out[v->name] = {v->role, v->shape, std::vector<float>(data, data + v->data->numel())};
  }
  return out;
}

// "" when both graphs hold the same parameters and state with values within `ulps` float32
// rounding steps of each other; otherwise the first difference.
std::string persistent_difference(const graph::Graph& a, const graph::Graph& b, int ulps) {
  auto pa = persistent(a), pb = persistent(b);
  for (const auto& [name, p] : pa) {
    auto it = pb.find(name);
    if (it == pb.end()) return "'" + name + "' only in the first";
    if (it->second.role != p.role) return "'" + name + "' has another role";
    if (it->second.shape != p.shape) return "'" + name + "' has another shape";
    for (size_t i = 0; i < p.values.size(); ++i) {
      float x = p.values[i], y = it->second.values[i];
      float step = std::nextafter(std::fabs(y), INFINITY) - std::fabs(y);
      if (!(std::fabs(x - y) <= ulps * step))
        return "'" + name + "'[" + std::to_string(i) + "]: " + std::to_string(x) + " vs " + std::to_string(y);
    }
  }
  for (const auto& [name, p] : pb)
    if (!pa.count(name)) return "'" + name + "' only in the second";
  return "";
}

// Three SGD steps of a graph with a [2, 3, 8, 8] "input" and 5 classes.
test::TrainingRun three_steps(graph::Graph g) {
  test::TrainingRun run = test::make_training_run(std::move(g), autodiff::TrainingOptions{});
  for (int64_t step = 0; step < 3; ++step) test::run_training_step(run, 40 + step, {1, 4}, 0.1f, step);
  return run;
}

// The largest difference between the two runs' states, relative to the largest value.
double largest_state_difference(const test::TrainingRun& a, const test::TrainingRun& b) {
  double diff = 0, scale = 0;
  for (const std::string& state : a.states) {
    graph::Tensor x = a.session->fetch(state), y = b.session->fetch(state);
    if (x.dtype != graph::DType::f32) continue;
    for (int64_t i = 0; i < x.numel(); ++i) {
      diff = std::max(diff, std::fabs(static_cast<double>(x.data<float>()[i]) - y.data<float>()[i]));
      scale = std::max(scale, std::fabs(static_cast<double>(y.data<float>()[i])));
    }
  }
  return diff / scale;
}

// `oxtrain train` flags for one synthetic step of the fixtures' 8x8, 5-class models.
std::string one_step_args(const std::string& checkpoint_dir) {
  return " --synthetic --image-size 8 --num-classes 5 -b 2 --steps 1 -p 1 --threads 1 --device cpu --checkpoint-dir " +
         checkpoint_dir;
}

graph::Graph as_exported(const std::string& file) {
  graph::ImportOptions options;
  options.restore_exporter_rewrites = false;
  return graph::import_onnx(fixture(file), options);
}

}  // namespace

TEST(FoldedBatchNorm, DynamoRewriteRuleInTheNodeMetadata) {
  // The rule names are kept but not the FX nodes that say what each Conv folded in: the
  // folding is evident and cannot be undone.
  graph::Graph g = graph::import_onnx(fixture("folded_bn/dynamo_folded_stripped.onnx"));
  EXPECT_EQ(g.folded_batchnorm,
            "2 Convs carry batch norm folded in by the dynamo exporter (rewrite rule "
            "FuseBatchNormIntoConv), e.g. 'node_Conv_37'");
  EXPECT_EQ(g.unrestored_reason, "for 'node_Conv_37', the node metadata that records it was stripped");
  EXPECT_EQ(g.restored_rewrites, "");
}

TEST(FoldedBatchNorm, RestoredAsTheUnoptimizedExportHasIt) {
  graph::Graph restored = graph::import_onnx(fixture("folded_bn/dynamo_folded.onnx"));
  graph::Graph kept = graph::import_onnx(fixture("folded_bn/dynamo_bn_kept.onnx"));
  EXPECT_EQ(restored.folded_batchnorm, "");
  EXPECT_EQ(restored.unrestored_reason, "");
  EXPECT_EQ(restored.restored_rewrites,
            "2 batch norms folded into the Convs (e.g. '1'; scale 1, bias 0, mean 0, variance 1, as the zero "
            "folded biases show a freshly initialised model has)");
  // The same parameters and statistics; the weights within a rounding step of unfolding.
  EXPECT_EQ(persistent_difference(restored, kept, 1), "");
  int batchnorms = 0;
  for (const auto& n : restored.nodes()) {
    if (n->op_type != "BatchNormalization") continue;
    ++batchnorms;
    EXPECT_FLOAT_EQ(n->attr_float("epsilon", 0), 1e-5f);
    EXPECT_FLOAT_EQ(n->attr_float("momentum", 0), 0.9f);
  }
  EXPECT_EQ(batchnorms, 2);

  // It trains as the model with batch norm kept does; the file as written does not.
  test::TrainingRun a = three_steps(std::move(restored)), b = three_steps(std::move(kept));
  EXPECT_LT(largest_state_difference(a, b), 1e-5);
  // As written: no batch norm scale, bias, mean or variance.
  EXPECT_EQ(persistent(as_exported("folded_bn/dynamo_folded.onnx")).size() + 8,
            persistent(graph::import_onnx(fixture("folded_bn/dynamo_bn_kept.onnx"))).size());
}

TEST(FoldedBatchNorm, TrainedStatisticsCannotBeUnfolded) {
  graph::Graph g = graph::import_onnx(fixture("folded_bn/dynamo_pretrained.onnx"));
  EXPECT_EQ(g.restored_rewrites, "");
  EXPECT_EQ(g.folded_batchnorm,
            "2 Convs carry batch norm folded in by the dynamo exporter (rewrite rule "
            "FuseBatchNormIntoConv), e.g. 'node_Conv_36'");
  EXPECT_EQ(g.unrestored_reason,
            "Conv 'node_Conv_36' has a nonzero bias, so its batch norm was not freshly initialised (trained "
            "statistics and scales, which folding mixed into the weights)");
  EXPECT_NE(graph::folded_batchnorm_warning(g, "m.onnx").find(" oxtrain cannot put it back: " + g.unrestored_reason +
                                                              ". To train it, export it with batch norm kept"),
            std::string::npos);
}

TEST(FoldedBatchNorm, MergedParametersDroppedBiasAndLiftedLiteral) {
  graph::Graph restored = graph::import_onnx(fixture("folded_bn/dynamo_rewritten.onnx"));
  graph::Graph noopt = graph::import_onnx(fixture("folded_bn/dynamo_rewritten_noopt.onnx"));
  EXPECT_EQ(restored.restored_rewrites,
            "1 zero bias the optimizer dropped (e.g. 'fc.bias') and 2 parameters or statistics the optimizer "
            "merged with an equal one (e.g. 'ln2.bias')");
  EXPECT_EQ(restored.merged_parameters, "");
  EXPECT_EQ(restored.derived_parameters, "");
  // ln2 has its own weight and bias again, fc its bias; the scalar parameter stays one and
  // the literal 0.75 (lifted into 'val_5') is a constant.
  EXPECT_EQ(persistent_difference(restored, noopt, 0), "");
  EXPECT_EQ(restored.value("temperature")->role, graph::Role::Parameter);
  const graph::Value* literal = restored.find_value("val_5");
  ASSERT_NE(literal, nullptr);
  EXPECT_EQ(literal->role, graph::Role::Constant);
  EXPECT_EQ(literal->data->data<float>()[0], 0.75f);
  test::TrainingRun a = three_steps(std::move(restored)), b = three_steps(std::move(noopt));
  EXPECT_EQ(test::differing_states(a, b), 0);

  // As written: ln1's weight and bias are ln2's too, and fc has no bias.
  graph::Graph written = as_exported("folded_bn/dynamo_rewritten.onnx");
  EXPECT_EQ(written.merged_parameters,
            "2 reads of parameters or statistics take another one that was equal at export (the optimizer "
            "merged them), e.g. 'node_layer_norm_1' reads 'ln1.weight'");
  EXPECT_EQ(persistent(written).size() + 3,
            persistent(graph::import_onnx(fixture("folded_bn/dynamo_rewritten_noopt.onnx"))).size());
}

TEST(FoldedBatchNorm, ConvBiasesDroppedBeforeTheFoldComeBackFromTheSignature) {
  // VGG's layers: a Conv with a zero bias of its own before each batch norm. The optimizer
  // drops that bias before folding; only the exported program's signature still lists it.
  graph::Graph restored = graph::import_onnx(fixture("folded_bn/dynamo_conv_bias_folded.onnx"));
  graph::Graph noopt = graph::import_onnx(fixture("folded_bn/dynamo_conv_bias_noopt.onnx"));
  EXPECT_EQ(restored.restored_rewrites,
            "2 batch norms folded into the Convs (e.g. '1'; scale 1, bias 0, mean 0, variance 1, as the zero "
            "folded biases show a freshly initialised model has) and 2 zero Conv biases the optimizer dropped "
            "before the fold (e.g. '0.bias', in the exported program's signature)");
  EXPECT_EQ(restored.missing_parameters, "");
  EXPECT_EQ(persistent_difference(restored, noopt, 1), "");
  EXPECT_EQ(restored.value("3.bias")->shape, (graph::Shape{8}));
  test::TrainingRun a = three_steps(std::move(restored)), b = three_steps(std::move(noopt));
  EXPECT_LT(largest_state_difference(a, b), 1e-5);
  // As written: neither the Conv biases nor the batch norms' scales, biases and statistics.
  EXPECT_EQ(persistent(as_exported("folded_bn/dynamo_conv_bias_folded.onnx")).size() + 2 + 8,
            persistent(graph::import_onnx(fixture("folded_bn/dynamo_conv_bias_noopt.onnx"))).size());
}

TEST(FoldedBatchNorm, ExpandedClassTokenAndTransposedWeightsAreParametersAgain) {
  // ViT's class token, expanded to the batch: the optimizer folds the expansion into a
  // constant of the export's batch, which would train its rows apart. A Linear on the tokens:
  // its weight transposed for MatMul into an anonymous initializer.
  graph::Graph restored = graph::import_onnx(fixture("folded_bn/dynamo_class_token.onnx"));
  graph::Graph noopt = graph::import_onnx(fixture("folded_bn/dynamo_class_token_noopt.onnx"));
  EXPECT_EQ(restored.restored_rewrites,
            "the parameter 'class_token' the optimizer expanded into 'expand' and 1 Linear weight the optimizer "
            "transposed into anonymous initializers (e.g. 'mlp.weight' from 'val_10')");
  EXPECT_EQ(restored.derived_parameters, "");
  EXPECT_EQ(restored.missing_parameters, "");
  EXPECT_EQ(persistent_difference(restored, noopt, 0), "");
  const graph::Value* token = restored.value("class_token");
  EXPECT_EQ(token->shape, (graph::Shape{1, 1, 6}));
  EXPECT_EQ(token->role, graph::Role::Parameter);
  ASSERT_EQ(token->consumers.size(), 1u);
  EXPECT_EQ(token->consumers[0]->op_type, "Expand");
  EXPECT_EQ(restored.find_value("expand"), nullptr);
  // The token-wise Linear's weight, [out, in] as PyTorch holds it, behind a Transpose.
  const graph::Value* weight = restored.value("mlp.weight");
  EXPECT_EQ(weight->role, graph::Role::Parameter);
  ASSERT_EQ(weight->consumers.size(), 1u);
  EXPECT_EQ(weight->consumers[0]->op_type, "Transpose");
  EXPECT_EQ(restored.find_value("val_10"), nullptr);
  test::TrainingRun a = three_steps(std::move(restored)), b = three_steps(std::move(noopt));
  EXPECT_LT(largest_state_difference(a, b), 1e-6);

  // As written, the expanded rows are a parameter of their own.
  graph::Graph written = as_exported("folded_bn/dynamo_class_token.onnx");
  EXPECT_EQ(written.derived_parameters,
            "1 tensor the optimizer computed from parameters (e.g. 'expand') trains as a parameter of its own");
}

TEST(FoldedBatchNorm, TwoExpandedTokensCannotBeToldApart) {
  // DeiT's class and distillation tokens: two parameters missing, two expanded constants.
  graph::Graph g = graph::import_onnx(fixture("folded_bn/dynamo_two_tokens.onnx"));
  // What is recorded is put back all the same.
  EXPECT_EQ(g.restored_rewrites,
            "1 Linear weight the optimizer transposed into anonymous initializers (e.g. 'mlp.weight' from 'val_15')");
  EXPECT_EQ(g.missing_parameters,
            "2 parameters of the exported program's signature the file holds in no form ('class_token', "
            "'dist_token')");
  std::string warning = graph::folded_batchnorm_warning(g, "m.onnx");
  EXPECT_NE(warning.find(g.missing_parameters), std::string::npos) << warning;
  EXPECT_NE(warning.find("optimize=False"), std::string::npos) << warning;
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
  // Put back, as zeros under the layers' names.
  graph::Graph g = graph::import_onnx(fixture("folded_bn/dynamo_zero_bias.onnx"));
  EXPECT_EQ(g.removed_biases, "");
  EXPECT_EQ(g.restored_rewrites, "2 zero biases the optimizer dropped (e.g. '0.bias')");
  for (const char* bias : {"0.bias", "2.bias"}) {
    const graph::Value* v = g.find_value(bias);
    ASSERT_NE(v, nullptr) << bias;
    EXPECT_EQ(v->role, graph::Role::Parameter);
    EXPECT_EQ(v->shape, (graph::Shape{v == g.find_value("0.bias") ? 4 : 8}));
    for (int64_t i = 0; i < v->numel(); ++i) EXPECT_EQ(v->data->data<float>()[i], 0.0f);
  }
  EXPECT_EQ(graph::restored_rewrites_note(g, "m.onnx"),
            "'m.onnx': its exporter rewrote the model for inference; oxtrain put back " + g.restored_rewrites +
                " as the export's metadata records them, so it trains the model as defined (--as-exported trains the "
                "file as written)");

  // As written (--as-exported): the evidence and the warning.
  graph::Graph written = as_exported("folded_bn/dynamo_zero_bias.onnx");
  EXPECT_EQ(written.removed_biases,
            "2 Convs or Gemms lost their bias, zero when exported (rewrite rule RemoveOptionalBiasFrom<Op>), "
            "e.g. 'node_Conv_7'");
  EXPECT_EQ(graph::folded_batchnorm_warning(written, "m.onnx"),
            "'m.onnx': its exporter rewrote it for inference (" + written.removed_biases +
                "); those parameters cannot train as defined. To train the model as defined, export it with "
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
  const std::string folded = fixture("folded_bn/dynamo_folded_stripped.onnx");
  const std::string common = one_step_args(tmp.path);
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

TEST(FoldedBatchNorm, TrainSaysWhatItPutBack) {
  test::ScopedTempDir tmp;
  const std::string file = fixture("folded_bn/dynamo_folded.onnx");
  const std::string common = one_step_args(tmp.path);
  auto r = test::run_oxtrain_limited("train --model " + file + common, 60);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("oxtrain: note: '" + file + "': its exporter rewrote the model for inference; oxtrain put "
                       "back 2 batch norms folded into the Convs"),
            0u)
      << r.err;
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("Epoch: [0]"), std::string::npos) << r.out;

  // --as-exported trains the file as written, after the warning (with nothing it could not do).
  auto written = test::run_oxtrain_limited("train --as-exported --model " + file + common, 60);
  ASSERT_EQ(written.exit_code, 0) << written.err;
  EXPECT_EQ(written.err.find("oxtrain: warning: '" + file + "': its exporter folded batch norm"), 0u) << written.err;
  EXPECT_EQ(written.err.find("cannot put it back"), std::string::npos) << written.err;

  auto shown = test::run_oxtrain_limited("graph " + file + " --as-exported", 60);
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_NE(shown.err.find("oxtrain: warning: '" + file + "'"), std::string::npos) << shown.err;
  auto restored = test::run_oxtrain_limited("graph " + file, 60);
  ASSERT_EQ(restored.exit_code, 0) << restored.err;
  EXPECT_NE(restored.err.find("oxtrain: note: '" + file + "'"), std::string::npos) << restored.err;

  // graph --json says the same for tools: what was put back, or what was found and left.
  auto json = test::run_oxtrain_limited("graph --json " + file, 60);
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_NE(json.out.find("\"restored\": \"2 batch norms folded into the Convs"), std::string::npos) << json.out;
  auto written_json = test::run_oxtrain_limited("graph --json --as-exported " + file, 60);
  ASSERT_EQ(written_json.exit_code, 0) << written_json.err;
  EXPECT_NE(written_json.out.find("\"folded_batchnorm\": \"2 Convs carry batch norm"), std::string::npos)
      << written_json.out;
  EXPECT_NE(written_json.out.find("\"restored\": \"\""), std::string::npos) << written_json.out;
  auto plain = test::run_oxtrain_limited("graph --json " + fixture("folded_bn/dynamo_no_bn.onnx"), 60);
  EXPECT_EQ(plain.out.find("exporter_rewrites"), std::string::npos) << plain.out;
}
