// Batch normalisation on the GPU, with the semantics of runtime/cpu/batchnorm.cc; X (and Y,
// dY, dX) float32, float16 or bfloat16 of any rank >= 2 viewed as [N, C, S, 1] (S = the product
// of the spatial dims; on a channels-last node X is stored [N, H, W, C], the same dims with
// channels-last strides), the per-channel tensors float32, arithmetic in float32. Every output
// is written (=).
//  - BatchNormalization (inference): the own kernel of runtime/cuda/batchnorm_own.h (cuDNN's
//    graph API has no engine for it over NCHW tensors).
//  - oxtrain.BatchNormTraining: cuDNN's batchnorm node through its graph API (cudnn-frontend).
//    Its outputs are the CPU kernel's: Y, the running mean and variance, the batch mean and the
//    inverse standard deviation 1/sqrt(var + eps) (cuDNN's "inverse variance" output holds
//    exactly that). cuDNN updates the running statistics as next = (1 - m) * prev + m * batch
//    with the unbiased batch variance, as PyTorch does; ONNX's momentum weighs the previous
//    value, so m = 1 - momentum. The running-stat outputs may share the inputs' buffers (cuDNN
//    reads a channel's statistic before writing it).
//  - oxtrain.BatchNormGrad: cuDNN's batchnorm backward node from the saved mean and inverse
//    standard deviation: dX, dScale = sum(dY * xhat), dBias = sum(dY).
// Where cuDNN has no engine for a training or gradient node (cudnn_takes below) the own
// kernels run it instead. Outputs a cuDNN node omits go to scratch space in its workspace.
#define OXTRAIN_CUDNN_FRONTEND
#include "runtime/cuda/cudnn_common.h"

#include <cstdio>
#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/cuda/batchnorm_own.h"
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {
namespace cudnn {

namespace {

using cpu::join;

struct NormShapes {
  std::vector<int64_t> x;        // [N, C, S, 1]
  std::vector<int64_t> channel;  // [1, C, 1, 1]
  int64_t channels = 0;
  DType data = DType::f32;       // X's type
  fe::DataType_t type = fe::DataType_t::FLOAT;
  bool channels_last = false;    // X stored [N, H, W, C]: x's dims with channels-last strides
  int64_t data_bytes() const { return tensor_bytes(x, data); }
};

// Checks `x_index` = [N, C, ...] (float32 or half) and that inputs first..last are float32 [C].
NormShapes norm_shapes(const graph::Node& n, size_t x_index, size_t first, size_t last,
                       const char* const names[]) {
  const graph::Value* x = n.input(x_index);
  if (!x) throw Error(n.describe() + ": input " + names[x_index] + " is missing");
  NormShapes s;
  s.data = x->dtype;
  s.type = fe_type(x->dtype, n.describe());
  if (x->shape.size() < 2 || !graph::shape_known(x->shape))
    throw Error(n.describe() + ": input '" + x->name + "' has shape " + x->shape_string() +
                ", expected a known [N, C, ...]");
  s.channels_last = graph::is_channels_last(n) && x->shape.size() == 4;
  const graph::Shape shape = s.channels_last ? graph::to_channels_first_shape(x->shape) : x->shape;
  s.channels = shape[1];
  int64_t spatial = 1;
  for (size_t d = 2; d < shape.size(); ++d) spatial *= shape[d];
  s.x = {x->shape[0], s.channels, spatial, 1};
  s.channel = {1, s.channels, 1, 1};
  if (graph::shape_numel(x->shape) == 0)
    throw Error(n.describe() + ": input '" + x->name + "' " + x->shape_string() + " is empty");
  for (size_t i = first; i <= last; ++i) {
    const graph::Value* v = n.input(i);
    if (!v) throw Error(n.describe() + ": input " + names[i] + " is missing");
    if (v->dtype != DType::f32)
      throw Error(n.describe() + ": the CUDA kernel takes float32, got " +
                  graph::dtype_name(v->dtype) + " " + names[i] + " '" + v->name + "'");
    if (v->shape != graph::Shape{s.channels})
      throw Error(n.describe() + ": " + names[i] + " '" + v->name + "' has shape " +
                  v->shape_string() + " but the input " + x->shape_string() + " has " +
                  std::to_string(s.channels) + " channels");
  }
  return s;
}

void check_output(const graph::Node& n, size_t i, const std::vector<int64_t>& numel_of, DType want) {
  const graph::Value* v = n.output(i);
  if (!v) return;
  if (v->dtype != want)
    throw Error(n.describe() + ": output '" + v->name + "' is " + graph::dtype_name(v->dtype) + ", expected " +
                graph::dtype_name(want));
  if (graph::shape_numel(v->shape) != graph::shape_numel(numel_of))
    throw Error(n.describe() + ": output '" + v->name + "' has shape " + v->shape_string() +
                ", expected " + std::to_string(graph::shape_numel(numel_of)) + " elements");
}

int64_t float_bytes(const std::vector<int64_t>& dims) { return graph::shape_numel(dims) * 4; }

// A float's exact value for a plan-cache key (std::to_string's six decimals would give 1e-5
// and 1.001e-5 one key, and so one graph with the first one's epsilon baked in).
std::string exact_text(float v) {
  char text[32];
  std::snprintf(text, sizeof text, "%a", static_cast<double>(v));
  return text;
}

// Binds output i of the node, or scratch space where the node omits it.
void bind_output(GraphRecipe& r, const graph::Node& n, size_t i, const TensorPtr& t,
                 const std::vector<int64_t>& dims, DType dtype = DType::f32, bool channels_last = false) {
  set_packed(t, dims, fe_type(dtype, n.describe()), channels_last);
  t->set_output(true);
  Binding b{t, true, i, tensor_bytes(dims, dtype)};
  b.scratch = n.output(i) == nullptr;
  r.bindings.push_back(b);
  r.signature += b.scratch ? " -" : " +";
}

// Which batch norms cuDNN's engines take: each channel's row of X a multiple of 16 bytes
// (C * element size; the heuristics of cuDNN 9.19 offer no engine otherwise on sm_80 and
// sm_90), and more than one element per channel (the unbiased variance divides by m - 1).
bool cudnn_takes(const NormShapes& s) {
  return s.channels * static_cast<int64_t>(graph::dtype_size(s.data)) % 16 == 0 && s.x[0] * s.x[2] > 1;
}

cuda::BatchNormView view_of(const NormShapes& s) { return {s.data, s.x[0], s.channels, s.x[2], s.channels_last}; }

NormShapes inference_shapes(const graph::Node& n) {
  int present = 0;
  for (const graph::Value* v : n.outputs) present += v != nullptr;
  if (n.attr_int("training_mode", 0) != 0 || present > 1)
    throw Error(n.describe() +
                ": training-mode BatchNormalization runs as oxtrain.BatchNormTraining inside "
                "a training graph");
  static const char* const names[] = {"X", "scale", "B", "input_mean", "input_var"};
  NormShapes s = norm_shapes(n, 0, 1, 4, names);
  if (!n.output(0)) throw Error(n.describe() + ": output Y is missing");
  check_output(n, 0, s.x, s.data);
  return s;
}

struct TrainingNode {
  NormShapes s;
  float eps = 1e-5f, momentum = 0.9f;
  bool unbiased = true;
};

TrainingNode training_node(const graph::Node& n) {
  static const char* const names[] = {"X", "scale", "B", "running_mean", "running_var"};
  TrainingNode t;
  t.s = norm_shapes(n, 0, 1, 4, names);
  if (!n.output(0)) throw Error(n.describe() + ": output Y is missing");
  check_output(n, 0, t.s.x, t.s.data);
  for (size_t i = 1; i < 5; ++i) check_output(n, i, t.s.channel, DType::f32);
  t.eps = n.attr_float("epsilon", 1e-5f);
  t.momentum = n.attr_float("momentum", 0.9f);
  t.unbiased = n.attr_int("unbiased_running_var", 1) != 0;
  return t;
}

// cuDNN's batchnorm node updates the running variance with the unbiased batch variance only.
bool uses_cudnn(const TrainingNode& t) { return t.unbiased && cudnn_takes(t.s); }

NormShapes grad_shapes(const graph::Node& n) {
  // Inputs: dY, X, scale, saved_mean, saved_inv_std.
  static const char* const names[] = {"dY", "X", "scale", "saved_mean", "saved_inv_std"};
  NormShapes s = norm_shapes(n, 1, 2, 4, names);
  const graph::Value* dy = n.input(0);
  const graph::Value* x = n.input(1);
  if (!dy || dy->dtype != x->dtype || dy->shape != x->shape)
    throw Error(n.describe() + ": dY " + (dy ? dy->shape_string() + " " + graph::dtype_name(dy->dtype) : std::string("(missing)")) +
                " must have X's type and shape, " + graph::dtype_name(x->dtype) + " " + x->shape_string());
  check_output(n, 0, s.x, s.data);
  check_output(n, 1, s.channel, DType::f32);
  check_output(n, 2, s.channel, DType::f32);
  return s;
}

// Batch norm's training graph over the node's inputs 0-4 (X, scale, B, running mean and
// variance) and outputs 0-4 (Y, next running mean and variance, saved mean and inverse std);
// with `relu`, the fused form: ADD R (input 5, where `residual`) and RELU_FWD after batch norm,
// output 0 being Z.
GraphRecipe training_graph(const graph::Node& n, const TrainingNode& t, bool relu, bool residual) {
  const NormShapes& s = t.s;
  GraphRecipe r;
  r.graph = new_float_graph();
  fe::graph::Graph& g = *r.graph;
  TensorPtr X = packed_tensor(g, "X", s.x, s.type, s.channels_last);
  TensorPtr scale = packed_tensor(g, "scale", s.channel);
  TensorPtr bias = packed_tensor(g, "B", s.channel);
  TensorPtr running_mean = packed_tensor(g, "running_mean", s.channel);
  TensorPtr running_var = packed_tensor(g, "running_var", s.channel);
  TensorPtr epsilon = g.tensor(t.eps);
  TensorPtr cudnn_momentum = g.tensor(1.0f - t.momentum);
  auto attributes = fe::graph::Batchnorm_attributes()
                        .set_epsilon(epsilon)
                        .set_previous_running_stats(running_mean, running_var, cudnn_momentum);
  attributes.set_compute_data_type(fe::DataType_t::FLOAT);
  auto [Y, mean, inv_std, next_mean, next_var] = g.batchnorm(X, scale, bias, attributes);
  TensorPtr out = Y;
  if (relu && residual) {
    TensorPtr R = packed_tensor(g, "R", s.x, s.type, s.channels_last);
    out = g.pointwise(out, R,
                      fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::ADD).set_compute_data_type(
                          fe::DataType_t::FLOAT));
    r.bindings.push_back({R, false, 5, s.data_bytes()});
  }
  if (relu)
    out = g.pointwise(
        out, fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::RELU_FWD).set_compute_data_type(
                 fe::DataType_t::FLOAT));
  r.signature = std::string(relu ? "BatchNormReluTraining " : "BatchNormTraining ") + (s.channels_last ? "nhwc " : "") +
                graph::dtype_name(s.data) + " x" + dims_text(s.x) + (residual ? " +R" : "") + " eps " +
                exact_text(t.eps) + " momentum " + exact_text(t.momentum);
  r.bindings.push_back({X, false, 0, s.data_bytes()});
  r.bindings.push_back({scale, false, 1, float_bytes(s.channel)});
  r.bindings.push_back({bias, false, 2, float_bytes(s.channel)});
  r.bindings.push_back({running_mean, false, 3, float_bytes(s.channel)});
  r.bindings.push_back({running_var, false, 4, float_bytes(s.channel)});
  bind_output(r, n, 0, out, s.x, s.data, s.channels_last);
  bind_output(r, n, 1, next_mean, s.channel);
  bind_output(r, n, 2, next_var, s.channel);
  bind_output(r, n, 3, mean, s.channel);
  bind_output(r, n, 4, inv_std, s.channel);
  return r;
}

GraphRecipe training_recipe(const graph::Node& n) {
  const TrainingNode t = training_node(n);
  const NormShapes& s = t.s;
  if (!uses_cudnn(t))
    throw Error(n.describe() + ": cuDNN has no engine for this batch norm (" + std::to_string(s.channels) + " " +
                graph::dtype_name(s.data) + " channels of " + std::to_string(s.x[0] * s.x[2]) + " elements" +
                (t.unbiased ? "" : ", population-variance update") + "); it runs on the own kernel");
  return training_graph(n, t, false, false);
}

// Batch norm's backward from `dy` (a tensor of r's graph) over X, scale, saved mean and inverse
// std (the node's inputs x_index to x_index + 3) to the node's outputs 0-2 (dX, dScale, dB).
void add_batchnorm_backward(GraphRecipe& r, const graph::Node& n, const NormShapes& s, const TensorPtr& dy,
                            size_t x_index) {
  fe::graph::Graph& g = *r.graph;
  TensorPtr X = packed_tensor(g, "X", s.x, s.type, s.channels_last);
  TensorPtr scale = packed_tensor(g, "scale", s.channel);
  TensorPtr mean = packed_tensor(g, "saved_mean", s.channel);
  TensorPtr inv_std = packed_tensor(g, "saved_inv_std", s.channel);
  auto attributes = fe::graph::Batchnorm_backward_attributes().set_saved_mean_and_inv_variance(mean, inv_std);
  attributes.set_compute_data_type(fe::DataType_t::FLOAT);
  auto [DX, dscale, dbias] = g.batchnorm_backward(dy, X, scale, attributes);
  r.bindings.push_back({X, false, x_index, s.data_bytes()});
  r.bindings.push_back({scale, false, x_index + 1, float_bytes(s.channel)});
  r.bindings.push_back({mean, false, x_index + 2, float_bytes(s.channel)});
  r.bindings.push_back({inv_std, false, x_index + 3, float_bytes(s.channel)});
  bind_output(r, n, 0, DX, s.x, s.data, s.channels_last);
  bind_output(r, n, 1, dscale, s.channel);
  bind_output(r, n, 2, dbias, s.channel);
}

GraphRecipe grad_recipe(const graph::Node& n) {
  const NormShapes s = grad_shapes(n);
  if (!cudnn_takes(s))
    throw Error(n.describe() + ": cuDNN has no engine for this batch-norm gradient (" + std::to_string(s.channels) +
                " " + graph::dtype_name(s.data) + " channels); it runs on the own kernel");
  GraphRecipe r;
  r.graph = new_float_graph();
  TensorPtr DY = packed_tensor(*r.graph, "DY", s.x, s.type, s.channels_last);
  r.bindings.push_back({DY, false, 0, s.data_bytes()});
  add_batchnorm_backward(r, n, s, DY, 1);
  r.signature = "BatchNormGrad " + std::string(s.channels_last ? "nhwc " : "") + graph::dtype_name(s.data) + " x" +
                dims_text(s.x) + r.signature;
  return r;
}

// The fused batch norms as one cuDNN graph each, the patterns cuDNN's samples give for ResNet
// blocks:
//  oxtrain.BatchNormReluTraining(X, scale, B, running_mean, running_var[, R]) -> (Z, next mean,
//    next var, saved mean, saved inverse std): batchnorm, then ADD R, then RELU_FWD; batch
//    norm's output Y stays inside the engine (float32), so in half Z is one rounding of
//    Relu(Y + R) where the unfused ops round Y and the sum.
//  oxtrain.BatchNormReluGrad(dZ, Z, X, scale, saved_mean, saved_inv_std) -> (dX, dScale, dBias
//    [, dR]): dS = dZ * (Z > 0) (written out as dR when the node has it), then batchnorm
//    backward from dS.
// Without a GPU (CudnnDeviceless tests), cuDNN 9.19 offers an H100 engines for the first in
// either layout (23 configurations in float32, 30 in bfloat16 and float16) and for the second
// channels-last only (24 in float32, 36 in half; none channels-first), with and without the
// residual. Each saves a pass over the data or two against the composed kernels of
// runtime/fused_batchnorm.h, which run the rest and where cuDNN builds no plan.
bool fused_pattern_candidate(const NormShapes& s, bool backward) {
  return (s.channels_last || !backward) && cudnn_takes(s);
}

// Input i has X's type and shape.
void require_like_x(const graph::Node& n, size_t i, const char* name) {
  const graph::Value* v = n.input(i);
  const graph::Value* x = n.input(n.op_type == "BatchNormReluGrad" ? 2 : 0);
  if (!v || v->dtype != x->dtype || v->shape != x->shape)
    throw Error(n.describe() + ": " + name + " " +
                (v ? graph::dtype_name(v->dtype) + std::string(" ") + v->shape_string() : std::string("(missing)")) +
                " must have X's type and shape, " + graph::dtype_name(x->dtype) + " " + x->shape_string());
}

GraphRecipe fused_training_recipe(const graph::Node& n) {
  const TrainingNode t = training_node(n);
  const bool residual = n.inputs.size() > 5 && n.input(5);
  if (residual) require_like_x(n, 5, "the residual R");
  if (!uses_cudnn(t) || !fused_pattern_candidate(t.s, false))
    throw Error(n.describe() + ": no fused cuDNN pattern for this batch norm; it runs as cuDNN's batch norm and "
                "an element-wise pass");
  return training_graph(n, t, true, residual);
}

NormShapes fused_grad_shapes(const graph::Node& n) {
  static const char* const names[] = {"dZ", "Z", "X", "scale", "saved_mean", "saved_inv_std"};
  NormShapes s = norm_shapes(n, 2, 3, 5, names);
  require_like_x(n, 0, "dZ");
  require_like_x(n, 1, "Z");
  check_output(n, 0, s.x, s.data);
  check_output(n, 1, s.channel, DType::f32);
  check_output(n, 2, s.channel, DType::f32);
  if (n.outputs.size() > 3) check_output(n, 3, s.x, s.data);
  return s;
}

GraphRecipe fused_grad_recipe(const graph::Node& n) {
  const NormShapes s = fused_grad_shapes(n);
  if (!fused_pattern_candidate(s, true))
    throw Error(n.describe() + ": no fused cuDNN pattern for this batch-norm gradient (cuDNN has one for "
                "channels-last only); it runs as an element-wise pass and cuDNN's batch-norm backward");
  const bool to_residual = n.outputs.size() > 3 && n.output(3);
  GraphRecipe r;
  r.graph = new_float_graph();
  fe::graph::Graph& g = *r.graph;
  TensorPtr DZ = packed_tensor(g, "DZ", s.x, s.type, s.channels_last);
  TensorPtr Z = packed_tensor(g, "Z", s.x, s.type, s.channels_last);
  // dS = dZ * (Z > 0), as the sample "DBN Add Relu Graph" masks dY; cuDNN 9.19 offers no engine
  // for the same through RELU_BWD(dZ, Z) (its pattern wants the activation's input virtual).
  // Unlike ReluGrad's select, an infinite dZ where Z <= 0 gives NaN here, not 0.
  TensorPtr mask = g.pointwise(
      Z, g.tensor(0.0f),
      fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::CMP_GT).set_compute_data_type(
          fe::DataType_t::FLOAT));
  mask->set_data_type(fe::DataType_t::BOOLEAN);
  TensorPtr DS = g.pointwise(
      DZ, mask,
      fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::MUL).set_compute_data_type(
          fe::DataType_t::FLOAT));
  DS->set_data_type(s.type);
  r.bindings.push_back({DZ, false, 0, s.data_bytes()});
  r.bindings.push_back({Z, false, 1, s.data_bytes()});
  add_batchnorm_backward(r, n, s, DS, 2);
  if (to_residual) bind_output(r, n, 3, DS, s.x, s.data, s.channels_last);
  r.signature = "BatchNormReluGrad nhwc " + std::string(graph::dtype_name(s.data)) + " x" + dims_text(s.x) +
                (to_residual ? " +dR" : "") + r.signature;
  return r;
}

}  // namespace

GraphRecipe batchnorm_recipe(const graph::Node& node) {
  if (node.op_type == "BatchNormTraining") return training_recipe(node);
  if (node.op_type == "BatchNormGrad") return grad_recipe(node);
  if (node.op_type == "BatchNormReluTraining") return fused_training_recipe(node);
  if (node.op_type == "BatchNormReluGrad") return fused_grad_recipe(node);
  throw Error(node.describe() +
              ": not a cuDNN batch normalisation (BatchNormTraining, BatchNormGrad, BatchNormReluTraining or "
              "BatchNormReluGrad)");
}

std::unique_ptr<Kernel> fused_batchnorm_kernel(const KernelInit& init) {
  const graph::Node& n = init.node;
  const bool forward = n.op_type == "BatchNormReluTraining";
  if (!forward && n.op_type != "BatchNormReluGrad") return nullptr;
  try {
    return make_cudnn_kernel(forward ? fused_training_recipe(n) : fused_grad_recipe(n), init, n.describe());
  } catch (const Error&) {
    // Not a fused pattern cuDNN has, or no plan for it here: the composed kernels run the node
    // (and report what is wrong with it, if anything is).
    return nullptr;
  }
}

bool batchnorm_uses_cudnn(const graph::Node& node) {
  if (node.op_type == "BatchNormTraining") {
    return uses_cudnn(training_node(node));
  }
  if (node.op_type == "BatchNormGrad") return cudnn_takes(grad_shapes(node));
  return false;
}

}  // namespace cudnn

void register_cuda_norm_kernels(KernelRegistry& registry) {
  registry.add("", "BatchNormalization", Device::cuda, [](const KernelInit& init) {
    const std::string where = init.node.describe();
    const cuda::BatchNormView v = cudnn::view_of(cudnn::inference_shapes(init.node));
    const double eps = init.node.attr_float("epsilon", 1e-5f);
    return make_kernel([v, eps, where](const KernelArgs& a) {
      cuda::batchnorm_inference(v, a, eps, cuda::context_of(a, where), where);
    });
  });
  // A node cuDNN should take but for which this cuDNN builds no plan on this GPU (another
  // version or architecture than the rule was measured on) runs on the own kernel too.
  registry.add("oxtrain", "BatchNormTraining", Device::cuda, [](const KernelInit& init) {
    const std::string where = init.node.describe();
    const cudnn::TrainingNode t = cudnn::training_node(init.node);
    if (cudnn::uses_cudnn(t)) try {
        return cudnn::make_cudnn_kernel(cudnn::training_recipe(init.node), init, where);
      } catch (const Error&) {
      }
    const cuda::BatchNormView v = cudnn::view_of(t.s);
    const double eps = t.eps, momentum = t.momentum;
    const bool unbiased = t.unbiased;
    return make_kernel([v, eps, momentum, unbiased, where](const KernelArgs& a) {
      cuda::batchnorm_training(v, a, eps, momentum, unbiased, cuda::context_of(a, where), where);
    });
  });
  registry.add("oxtrain", "BatchNormGrad", Device::cuda, [](const KernelInit& init) {
    const std::string where = init.node.describe();
    const cudnn::NormShapes s = cudnn::grad_shapes(init.node);
    if (cudnn::cudnn_takes(s)) try {
        return cudnn::make_cudnn_kernel(cudnn::grad_recipe(init.node), init, where);
      } catch (const Error&) {
      }
    const cuda::BatchNormView v = cudnn::view_of(s);
    return make_kernel([v, where](const KernelArgs& a) { cuda::batchnorm_grad(v, a, cuda::context_of(a, where), where); });
  });
}

}  // namespace oxtrain::runtime
