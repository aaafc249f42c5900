// What an exporter's rewrites for inference left in a model, and putting back what the file
// records exactly.
//
// PyTorch's dynamo exporter optimizes by default (optimize=True), even for a model in training
// mode: it folds BatchNormalization into the preceding Conv (FuseBatchNormIntoConv), drops Conv
// biases that are zero (RemoveOptionalBiasFromConv) and lifts Python constants into
// initializers (stochastic depth's keep probability, attention's scale). Trained as written,
// such a model lacks its normalisations (deep ResNets diverge), loses parameters and trains its
// constants. The TorchScript exporter in eval mode folds batch norm too, without a record.
//
// Each rewritten node keeps the FX node it came from in its metadata
// (pkg.torch.onnx.fx_node, pkg.torch.onnx.name_scopes). Where those say which module and
// which arguments a folded batch norm or a dropped bias had, and the values show the model was
// freshly initialised (folded biases all zero: batch norm with scale 1, bias 0, mean 0 and
// variance 1), import puts them back under PyTorch's names, so the graph is the one
// `dynamo=True, optimize=False` would have written. Otherwise the evidence stays for a warning.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace onnx {
class ModelProto;
}

namespace oxtrain::graph {

struct ExporterRewrites {
  // Evidence, one clause each ("" when none): Graph::folded_batchnorm, Graph::removed_biases,
  // Graph::merged_parameters.
  std::string folded_batchnorm, removed_biases, merged_parameters;

  // A batch norm folded into the Conv that is node `node` of the file, as its metadata
  // records it: the module ("layer1.0.bn1"), PyTorch's momentum and epsilon.
  // `conv_bias`: the Conv's own bias, which RemoveOptionalBiasFromConv dropped before the fold
  // (zero, as the zero folded bias shows), named by the exported program's signature; "" when
  // the Conv had none.
  struct FoldedNorm {
    int node = -1;
    std::string module;
    double momentum = 0.1, epsilon = 1e-5;
    std::string conv_bias;
  };
  // A zero bias dropped from the Conv or Gemm that is node `node`: the parameter's name.
  struct DroppedBias {
    int node = -1;
    std::string name;
  };
  // A read (input `input` of node `node`) of a parameter or statistic the optimizer merged
  // with an equal one; `name` is the one the FX node read.
  struct MergedRead {
    int node = -1, input = -1;
    std::string name;
  };
  // A parameter expanded along its first dimension and folded into the float initializer
  // `initializer` (ViT's class token, expanded to the export's batch): PyTorch's name for it.
  struct ExpandedParameter {
    std::string initializer, name;
  };
  // A Linear's weight ([out, in]) that the optimizer transposed for MatMul and folded into the
  // anonymous initializer `initializer` ([in, out], "val_12"): PyTorch's name for it.
  struct TransposedParameter {
    std::string initializer, name;
  };
  std::vector<FoldedNorm> norms;
  std::vector<DroppedBias> biases;
  std::vector<MergedRead> unmerged;
  std::vector<ExpandedParameter> expanded;
  std::vector<TransposedParameter> transposed;
  // Parameters the exported program's signature (graph metadata
  // pkg.torch.export.ExportedProgram.graph_signature) lists that the file holds in no form: no
  // initializer of that name, no FX node reading it, and no record above to put it back from.
  std::vector<std::string> unaccounted;
  // Why the folded batch norms or dropped biases cannot all be put back from the metadata
  // ("" when they can, or when there is nothing to put back).
  std::string unrecorded;

  // Float initializers that are constants the exporter lifted out of the code (a literal like
  // 0.975, or a scale computed from shapes), not parameters: one element, and no FX node of
  // the export reads them as a parameter placeholder ("%p_<name>").
  std::set<std::string> lifted_constants;
  // Initializers some FX node reads as a parameter or buffer placeholder (empty when the file
  // has no FX metadata).
  std::set<std::string> placeholders;
  // Other initializers that hold a parameter in another form (a folded Conv's weight, a
  // Linear's weight transposed for MatMul): they train as that parameter would.
  std::set<std::string> parameter_forms;
};

// Reads the evidence and the records from the file (producer "pytorch" only).
ExporterRewrites read_exporter_rewrites(const onnx::ModelProto& model);

// On a graph freshly built from the file (nodes in the file's order, before prepare): puts the
// batch norms and biases back when every one is recorded and the values agree with a freshly
// initialised model; sets Graph::restored_rewrites to what was done. Otherwise leaves the
// graph as written and sets Graph::folded_batchnorm and Graph::removed_biases, with the reason
// it could not restore them.
void restore_exporter_rewrites(Graph& graph, const ExporterRewrites& rewrites);

// Records the evidence on the graph without restoring anything (--as-exported), and
// Graph::derived_parameters.
void keep_exporter_rewrites(Graph& graph, const ExporterRewrites& rewrites);

}  // namespace oxtrain::graph
