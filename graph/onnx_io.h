// ONNX import and export through Debian's libonnx protobuf classes.
//
// import_onnx reads a model file (with external data), checks that every op is supported
// (listing all unsupported ones at once), resolves the symbolic batch dimension, folds
// shape-computing subgraphs into constants, infers every shape and assigns roles.
// export_onnx writes any IR graph back as a valid ONNX model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "graph/ir.h"

namespace onnx {
class ModelProto;
class TensorProto;
}

namespace oxtrain::graph {

struct ImportOptions {
  // Size of the batch dimension (axis 0 of each graph input) when the file leaves it
  // symbolic; also replaces a fixed batch size. Without it a symbolic batch becomes 1.
  std::optional<int64_t> batch_size;
  // Fold constants and infer shapes (prepare()); off only for tests of the raw reader.
  bool prepare = true;
  // External data must resolve inside the model's folder (symlinks resolved) unless this is
  // set (--allow-external-data-anywhere).
  bool allow_external_data_anywhere = false;
  // Put back the batch norms and zero biases an exporter folded away for inference, where the
  // file records them exactly (graph/exporter_rewrites.h); off with --as-exported.
  bool restore_exporter_rewrites = true;
};

Graph import_onnx(const std::string& path, const ImportOptions& options = {});
// `base_dir` resolves external data locations.
Graph import_onnx_model(const onnx::ModelProto& model, const std::string& base_dir,
                        const ImportOptions& options = {});

// A tensor whose data is in the proto (raw_data or the typed field of its type: float16 and
// bfloat16 as 16 bits in int32_data); `what` names it in errors. External data is refused.
Tensor inline_tensor_from_proto(const onnx::TensorProto& t, const std::string& what);

// A tensor's bytes as a TensorProto's raw_data: as they are, except the 4- and 2-bit types,
// which ONNX packs (two or four elements per byte, the first in the lowest bits).
std::string onnx_raw_data(const Tensor& t);

// The warning for a model whose exporter rewrote it for inference (Graph::folded_batchnorm,
// Graph::removed_biases): what happened, why it matters for training and how to export the
// model as defined. "" when nothing was rewritten.
std::string folded_batchnorm_warning(const Graph& graph, const std::string& source);
// The note for a model whose folded batch norms or dropped biases import put back
// (Graph::restored_rewrites): what, and how to train the file as written. "" when none.
std::string restored_rewrites_note(const Graph& graph, const std::string& source);

// Checks ops, resolves the batch, folds constants, infers shapes and assigns roles.
void prepare(Graph& graph, const ImportOptions& options = {});

// The batch dimension the graph was prepared with (axis 0 of the first input), or 1.
int64_t batch_size_of(const Graph& graph);

struct ExportOptions {
  // Write tensors at least this big to `<file>.data` beside the model (0: all inline).
  // Models over 2 GiB need it: protobuf cannot hold more in one message.
  int64_t external_data_threshold = 0;
};

onnx::ModelProto to_onnx(const Graph& graph);
// A copy of `graph` (through its ONNX form, so exactly what export would write), prepared
// with `options` (e.g. another batch size).
Graph copy_graph(const Graph& graph, const ImportOptions& options = {});
void export_onnx(const Graph& graph, const std::string& path, const ExportOptions& options = {});

// Runs libonnx's checker on the exported form of `graph` (standard domains only); throws Error
// with the checker's message.
void check_with_onnx(const Graph& graph);

}  // namespace oxtrain::graph
