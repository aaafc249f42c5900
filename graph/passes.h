// Graph passes that change what a graph computes in a controlled way.
#pragma once

#include <string>

#include "graph/ir.h"

namespace oxtrain::graph {

// Every float value (inputs, initializers, activations) becomes `to` (float32 or float64);
// initializer data is converted. Used to run a model in float64 as a reference.
void convert_float_dtype(Graph& graph, DType to);

// BatchNormalization in inference form everywhere (running statistics, one output), as a
// model runs for validation; the training-mode outputs disappear with the nodes that used
// only them.
void batchnorm_to_inference(Graph& graph);

// Reads one ONNX TensorProto file (as onnx.numpy_helper.from_array(...).SerializeToString()
// writes), e.g. a batch of images or labels.
Tensor read_tensor_file(const std::string& path);
void write_tensor_file(const Tensor& tensor, const std::string& path);

}  // namespace oxtrain::graph
