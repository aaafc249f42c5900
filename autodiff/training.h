// build_training_graph: forward graph -> one training graph
//   forward (BN in training mode) + loss + backward + optimizer update.
//
// The result is an ordinary Graph: the runtime executes it without knowing it trains.
// Inputs: the model's inputs, `labels` (int64 [N]) when the loss is appended, and, with an
// optimizer, `learning_rate` (float scalar) and `step` (int64 scalar: 0 on the first step).
// A graph with random nodes (training-mode Dropout, RandomUniformLike, ...) has the `step`
// input even without an optimizer: its random numbers are a function of (TrainingOptions::
// random_seed, the node, the step, the element), see autodiff/rules_random.cc.
// Graph::updates lists what a step rewrites: parameters, momentum buffers, BN running stats.
#pragma once

#include <string>
#include <vector>

#include "graph/ir.h"
#include "graph/passes.h"

namespace oxtrain::autodiff {

struct TrainingOptions {
  // Use this scalar graph output as the loss. Empty: the model ends in logits [N, C] and a
  // SoftmaxCrossEntropyLoss (mean) against an int64 `labels` input is appended.
  std::string loss_output;
  // Append the optimizer: ONNX Momentum, standard mode, beta 1, which is PyTorch's
  // SGD(momentum, weight_decay) with dampening 0.
  bool optimizer = true;
  double momentum = 0.9;
  double weight_decay = 1e-4;
  bool nesterov = false;
  // Extra values (usually graph inputs) whose gradients are wanted, e.g. by the gradient
  // checker. Parameters always get gradients.
  std::vector<std::string> wrt;
  // Make every gradient of a parameter or `wrt` value a graph output named "grad/<name>".
  bool expose_gradients = false;
  // Data parallel: average the parameters' gradients over the ranks before the optimizer,
  // with one oxtrain.AllReduce node per bucket. Buckets follow the order backward finishes
  // gradients and hold about `bucket_bytes` each (PyTorch DDP's 25 MB), except the last,
  // which holds the gradients finished in the last `last_bucket_bytes` (the first layers), so
  // little is left to reduce after backward ends. Each node sits in the schedule right after
  // its bucket's last gradient is produced, so it can run while backward goes on.
  bool allreduce = false;
  int64_t bucket_bytes = 25'000'000;
  int64_t last_bucket_bytes = 1 << 20;
  // The run's seed for the random nodes (Dropout masks, stochastic depth): the same seed and
  // step give the same numbers in every run, resumed or not, on any thread count or device.
  // Every rank of a data-parallel job draws the same numbers, as PyTorch's main.py does when
  // it seeds every rank alike.
  uint64_t random_seed = 0;
  // Mixed precision: bf16 or f16 computes the model in that type (graph::to_mixed_precision:
  // convolutions, matrix products, activations, pooling and batch norm's data in half), with
  // float32 master weights, momentum, batch-norm statistics and loss. undefined (the default)
  // keeps the model's types. f16 with the optimizer adds dynamic loss scaling, as PyTorch's
  // GradScaler does: backward starts from the float32 state `loss_scale` instead of 1, an
  // oxtrain.NonFinite node checks the gradients, oxtrain.ScaledMomentum divides them by the
  // scale or skips the step on an overflow, and oxtrain.LossScaleUpdate halves the scale on an
  // overflow and doubles it after `loss_scale_interval` good steps, all on the device.
  // (Gradients exposed as outputs are then the scaled ones.)
  graph::DType half = graph::DType::undefined;
  // Fuse batch norm with the ReLU (and the residual Add) after it (autodiff/fusion.h): the
  // same numbers with fewer nodes and passes over memory.
  bool fuse_batchnorm_relu = false;
  // With the fusion: recompute fused batch norms' outputs in backward instead of keeping them
  // from the forward (autodiff::recompute_batchnorm_relu), about a third less activation
  // memory for ResNets at the cost of one element-wise pass per recomputed value.
  bool recompute_batchnorm_relu = false;
  // Store activations channels-last between the ops that have that form (graph::to_channels_last),
  // so cuDNN runs its tensor-core kernels without transposing. Applied to the finished graph.
  bool channels_last = false;
  // Fuse each Cast and Transpose in a row into one oxtrain.CastTranspose
  // (graph::fuse_cast_transpose): with mixed precision and channels-last, a filter's half copy
  // and its gradient each take one pass instead of two. Exact.
  bool fuse_cast_transpose = true;
  // Fuse convolutions with the batch norms after them (autodiff::fuse_conv_batchnorm): the
  // statistics computed with the convolution, and a batch norm's output applied in the next
  // convolution's prologue instead of being written (with recompute_batchnorm_relu). Equal to
  // rounding, not bit for bit. cuDNN runs these as one graph each in float16 channels-last.
  bool fuse_conv_batchnorm = false;
  float initial_loss_scale = 65536.0f;
  float loss_scale_growth = 2.0f;
  float loss_scale_backoff = 0.5f;
  int64_t loss_scale_interval = 2000;
};

// Buckets over gradient sizes in backward order (see TrainingOptions::allreduce): index lists.
std::vector<std::vector<size_t>> plan_buckets(const std::vector<int64_t>& bytes, int64_t bucket_bytes,
                                              int64_t last_bucket_bytes);

struct TrainingGraph {
  graph::Graph graph;
  std::string loss;           // scalar loss value
  std::string logits;         // the model's output, kept as a graph output
  std::string labels;         // "" when the loss came from the model
  std::string learning_rate;  // "" without optimizer
  std::string step;           // "" without optimizer and random nodes
  // (value, its gradient) in the order backward finishes them: the order of gradient buckets.
  std::vector<std::pair<std::string, std::string>> gradients;
  // With TrainingOptions::allreduce: the AllReduce nodes' names, and each bucket's gradient
  // names, in order.
  std::vector<std::string> allreduce_nodes;
  // With float16 loss scaling: the scale (float32 state), the count of good steps since it
  // last changed (int64 state) and this step's overflow flag (float32, 1 = step skipped).
  std::string loss_scale, good_steps, found_inf;
  std::vector<std::vector<std::string>> buckets;
  int64_t forward_nodes = 0, backward_nodes = 0, optimizer_nodes = 0;
  int64_t recomputed_values = 0;  // TrainingOptions::recompute_batchnorm_relu
  graph::ChannelsLastReport channels_last;  // TrainingOptions::channels_last
  int64_t cast_transposes = 0;              // TrainingOptions::fuse_cast_transpose
  int64_t conv_statistics = 0;              // TrainingOptions::fuse_conv_batchnorm: ConvStats nodes
  int64_t conv_prologues = 0;               // and batch-norm outputs applied in a prologue
  int64_t conv_gradients = 0;               // and batch-norm gradients fused with a data gradient
};

TrainingGraph build_training_graph(graph::Graph forward, const TrainingOptions& options = {});

}  // namespace oxtrain::autodiff
