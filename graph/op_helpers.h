// Helpers shared by the op schemas: graph/ops.cc (the core ops) and the op families' files
// (graph/ops_<family>.cc), each of which returns its schemas from one function that
// graph/ops.cc appends to the registry. Internal to graph/; nothing outside includes it.
#pragma once

#include <string>
#include <vector>

#include "graph/ops.h"

namespace oxtrain::graph::detail {

// A double as a message shows it: "nan", "1e+30", "2.5".
std::string number_text(double v);
// Input i of n; throws naming the node when it is missing.
const Value& in(const Node& n, size_t i);
// Input i's shape; throws when it is unknown.
const Shape& in_shape(const Node& n, size_t i);
// Sets output i's dtype and shape (nothing when the output is omitted).
void set_out(Node& n, size_t i, DType dtype, Shape shape);
// axis normalised to [0, rank) ([0, rank] with allow_end); throws naming the node.
int64_t norm_axis(const Node& n, int64_t axis, int64_t rank, bool allow_end = false);
void require_rank(const Node& n, size_t i, size_t min_rank, const char* what);
// Output 0 like input 0.
void same_as_input(Node& n, const InferContext&);
// Numpy broadcasting of every input (all of one dtype) to output 0.
void infer_broadcast(Node& n, const InferContext&);
// Constant folding: output i becomes a constant of this type and shape (refused when larger
// than oxtrain builds from a shape in a file); input i's data (throws when not constant).
Tensor& out_data(Node& n, size_t i, DType dtype, Shape shape);
const Tensor& in_data(const Node& n, size_t i);
std::vector<int64_t> strides_of(const Shape& s);

// Constant folding of the shape ops (graph/ops.cc), reused by the movement family's schemas.
void fold_gather(Node& n, const InferContext& ctx);
void fold_unsqueeze(Node& n, const InferContext& ctx);
void fold_squeeze(Node& n, const InferContext& ctx);
void fold_concat(Node& n, const InferContext& ctx);
void fold_expand(Node& n, const InferContext& ctx);

// Each op family's schemas (graph/ops_<family>.cc). An entry with the domain and op type of a
// core entry in graph/ops.cc replaces it.
std::vector<OpSchema> pointwise_schemas();      // element-wise math, comparisons, Where, Cast
std::vector<OpSchema> movement_schemas();       // Concat, Split, Slice, Gather, Expand, ...
std::vector<OpSchema> normalization_schemas();  // LayerNormalization, reductions, MatMul, Softmax
std::vector<OpSchema> random_schemas();         // Dropout, RandomUniformLike, ...


// Import rewrites of the movement family, run before shapes are inferred: SplitToSequence
// whose sequence is read only by SequenceAt at constant positions becomes one Slice per read.
void rewrite_sequence_splits(Graph& g);

// GatherND with batch_dims b > 0 and constant indices becomes GatherND with batch_dims 0 over
// the same data, each index entry prefixed with its b batch coordinates: the same output, and
// every kernel and gradient is batch_dims 0's. Run by import when it reaches the node (the
// data's shape known); throws naming the node where the indices are not constant.
void lower_gather_nd_batch_dims(Graph& g, Node& n);

}  // namespace oxtrain::graph::detail
