// build_training_graph: forward graph -> one training graph
//   forward (BN in training mode) + loss + backward + optimizer update.
//
// The result is an ordinary Graph: the runtime executes it without knowing it trains.
// Inputs: the model's inputs, `labels` (int64 [N]) when the loss is appended, and, with an
// optimizer, `learning_rate` (float scalar) and `step` (int64 scalar: 0 on the first step).
// Graph::updates lists what a step rewrites: parameters, momentum buffers, BN running stats.
#pragma once

#include <string>
#include <vector>

#include "graph/ir.h"

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
};

struct TrainingGraph {
  graph::Graph graph;
  std::string loss;           // scalar loss value
  std::string logits;         // the model's output, kept as a graph output
  std::string labels;         // "" when the loss came from the model
  std::string learning_rate;  // "" without optimizer
  std::string step;
  // (value, its gradient) in the order backward finishes them: the order of gradient buckets.
  std::vector<std::pair<std::string, std::string>> gradients;
  int64_t forward_nodes = 0, backward_nodes = 0, optimizer_nodes = 0;
};

TrainingGraph build_training_graph(graph::Graph forward, const TrainingOptions& options = {});

}  // namespace oxtrain::autodiff
