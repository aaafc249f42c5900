// A forward run of an ONNX model on given tensors: what `oxtrain run` does, and what the suite
// runs ONNX's own operator tests (tests/fixtures/onnx_node/) through.
//
// The model is imported without its inputs' symbolic dimensions resolved; each graph input is
// bound to a TensorProto file (in the order of the graph's inputs, or by NAME=PATH), its
// dtype and fixed dimensions checked against the file, and its symbolic dimensions (the batch
// or any other) taken from the file. Inputs that an op reads when the graph is compiled
// (Reshape's shape, a reduction's axes: OpFacts::compile_time) become constants holding the
// file's values, since the whole run is known in advance. Then the graph is prepared as any
// import prepares it (unsupported ops listed all at once), compiled into a runtime::Session
// on the chosen device, run once, and every graph output fetched.
#pragma once

#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/kernel.h"

namespace oxtrain::cli {

struct RunModelOptions {
  runtime::Device device = runtime::Device::cpu;
  int threads = 0;  // CPU threads; 0: all cores
  bool allow_external_data_anywhere = false;
};

struct NamedTensor {
  std::string name;
  graph::Tensor tensor;
};

// Runs `model_path` once. Each of `input_specs` is "PATH" (the next graph input without a
// NAME=PATH of its own, in the graph's order) or "NAME=PATH" (NAME a graph input). Returns the
// graph outputs in the graph's order. Throws Error naming the input, the file and the shapes.
std::vector<NamedTensor> run_model(const std::string& model_path, const std::vector<std::string>& input_specs,
                                   const RunModelOptions& options = {});

// Writes outputs[i] to DIR/output_<i>.pb as a TensorProto named outputs[i].name (the layout of
// ONNX's test data); creates DIR when missing. Returns the paths written.
std::vector<std::string> write_outputs(const std::vector<NamedTensor>& outputs, const std::string& dir);

// A TensorProto file with its name (read_tensor_file() reads the data alone).
NamedTensor read_named_tensor(const std::string& path);

// What this build can do with each op that has a schema.
struct OpSupport {
  std::string domain;   // "" = ai.onnx
  std::string op_type;
  bool cpu = false;     // a CPU kernel
  bool cuda = false;    // a CUDA kernel (in a CUDA build)
  bool fold_only = false;  // evaluated only on constant inputs, at import
};
std::vector<OpSupport> supported_op_list();

}  // namespace oxtrain::cli
