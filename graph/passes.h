// Graph passes that change what a graph computes in a controlled way.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::graph {

// Layer norm as older exporters write it (ONNX before opset 17 has no LayerNormalization):
//   mean = ReduceMean(x), d = x - mean, var = ReduceMean(d ^ 2 or d * d), y = d / Sqrt(var + eps),
//   then optionally * scale + bias, over the trailing axes with keepdims
// becomes one oxtrain.LayerNormalization (LayerNormalization at any opset): one kernel, and its
// gradient keeps two statistics per row instead of every intermediate. Matches only where the
// intermediates feed nothing else. Returns how many were fused. Run on the training graph
// (autodiff::build_training_graph); the imported model keeps its file's form, so evaluation
// and --save-model write what other runtimes read.
int fuse_decomposed_layer_norm(Graph& graph);

// Every float value (inputs, initializers, activations) becomes `to` (float32 or float64);
// initializer data is converted. Used to run a model in float64 as a reference.
void convert_float_dtype(Graph& graph, DType to);

// Mixed precision (--precision bf16|fp16): each op computes in `half` (float16 or bfloat16)
// or float32 as its schema's HalfPolicy says. Parameters stay float32 (the master weights) and
// reach half ops through Cast nodes, whose gradient brings their gradients back to float32;
// float constants are converted; the model's outputs are cast back to float32. Batch norm
// keeps its scale, bias and statistics in float32.
void to_mixed_precision(Graph& graph, DType half);

// Channels-last (--channels-last): the [N, C, H, W] activations between ops that have a
// channels-last form (convolutions, batch norms, pooling, their gradients; OpSchema::layout)
// are stored [N, H, W, C], those nodes get channels_last=1, and element-wise ops between them
// follow. Convolution filters in those nodes are [K, R, S, C]. Where a value crosses to an op
// without that form (a graph input, a parameter, Flatten, the loss) a Transpose node converts
// it. Run on the whole training graph (forward, backward, optimizer); parameters, graph
// outputs and the values named in `keep_channels_first` (the parameters' gradients) keep their
// layout.
struct ChannelsLastReport {
  int64_t nodes = 0;       // nodes in channels-last form
  int64_t values = 0;      // activations stored channels-last
  int64_t transposes = 0;  // Transpose nodes added at the borders
};
ChannelsLastReport to_channels_last(Graph& graph, const std::set<std::string>& keep_channels_first = {});

// A Cast and a Transpose in a row, either way round, with float32, float16 or bfloat16 on both
// sides and nothing else reading the value between them, become one oxtrain.CastTranspose:
// one pass over the elements instead of two, with the same result bit for bit (a transpose
// only moves elements). Under mixed precision and channels-last these are each filter's half
// [K, R, S, C] copy and its gradient's way back to float32 [K, C, R, S]. Returns how many
// pairs were fused.
int fuse_cast_transpose(Graph& graph);

// The model's first input, float32 images [N, C, H, W], fed instead as the loader's uint8
// pixels [N, H, W, C] through an oxtrain.NormalizeImages node ((x / 255 - mean) / std per
// channel) at the head of the schedule: a quarter of the bytes to copy, and on the GPU the
// normalisation (with mixed precision's cast and channels-last's layout) is one kernel.
// Returns the new input's name.
std::string normalize_images_input(Graph& graph, const std::vector<float>& mean, const std::vector<float>& std);

// BatchNormalization in inference form everywhere (running statistics, one output), as a
// model runs for validation; the training-mode outputs disappear with the nodes that used
// only them.
void batchnorm_to_inference(Graph& graph);

// Reads one ONNX TensorProto file (as onnx.numpy_helper.from_array(...).SerializeToString()
// writes), e.g. a batch of images or labels.
Tensor read_tensor_file(const std::string& path);
void write_tensor_file(const Tensor& tensor, const std::string& path);

}  // namespace oxtrain::graph
