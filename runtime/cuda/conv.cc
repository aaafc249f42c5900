// Convolution on the GPU through cuDNN's graph API (cudnn-frontend), 1-D, 2-D and 3-D: Conv (with its bias
// added by a pointwise node fused into the same cuDNN graph), oxtrain.ConvGradData (cuDNN's
// dgrad) and oxtrain.ConvGradFilter (wgrad). NCHW activations, or NHWC on a channels-last node
// (graph::to_channels_last: the same dims, channels-last strides, filters KRSC), any group, pads (asymmetric too),
// strides and dilations; float32, or float16/bfloat16 with float32 arithmetic (mixed
// precision); the semantics of runtime/cpu/conv.cc. All three write (=) their
// output. Plans are chosen by measurement at compile time and shared between identical
// convolutions (runtime/cuda/cudnn_common.h).
#define OXTRAIN_CUDNN_FRONTEND
#include "runtime/cuda/cudnn_common.h"

#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {
namespace cudnn {

namespace {

using cpu::join;

struct ConvShapes {
  graph::Shape x, w, y;  // input, filter, output
  std::vector<int64_t> strides, dilations, pads_begin, pads_end;
  int64_t group = 1;
};

// The one type of the convolution's tensors (float32, float16 or bfloat16).
DType common_type(const graph::Node& node, std::initializer_list<const graph::Value*> values) {
  DType dt = DType::undefined;
  for (const graph::Value* v : values) {
    if (!v) continue;
    fe_type(v->dtype, node.describe());
    if (dt == DType::undefined) dt = v->dtype;
    if (v->dtype != dt)
      throw Error(node.describe() + ": the CUDA kernel takes tensors of one type, got " + graph::dtype_name(dt) +
                  " and " + graph::dtype_name(v->dtype) + " '" + v->name + "'");
  }
  return dt;
}

// Checks x = [N,C,(D,)(H,)W], w = [M,C/group,(kD,)(kH,)kW] and y against the node's
// attributes, as the CPU kernel does. cuDNN convolves 2-D and 3-D tensors; a 1-D convolution
// is given to it as the 2-D one of a single row (the same bytes).
ConvShapes conv_shapes(const graph::Node& node, const graph::Shape& x, const graph::Shape& w,
                       const graph::Shape& y) {
  if (x.size() != w.size() || x.size() < 3 || x.size() > 5)
    throw Error(node.describe() + ": only 1-D, 2-D and 3-D convolution is supported on CUDA (input " +
                join(x) + ", weight " + join(w) + ")");
  for (int64_t d : x)
    if (d <= 0) throw Error(node.describe() + ": input shape " + join(x) + " is not known or empty");
  ConvShapes s;
  s.x = x, s.w = w, s.y = y;
  s.group = node.attr_int("group", 1);
  if (s.group < 1 || x[1] != w[1] * s.group || w[0] % s.group != 0)
    throw Error(node.describe() + ": input " + join(x) + " and weight " + join(w) +
                " do not fit group=" + std::to_string(s.group));
  std::vector<int64_t> kernel(w.begin() + 2, w.end());
  if (node.has_attr("kernel_shape") && node.attr_ints("kernel_shape") != kernel)
    throw Error(node.describe() + ": kernel_shape " + join(node.attr_ints("kernel_shape")) +
                " disagrees with weight shape " + join(w));
  graph::WindowGeometry wg = graph::window_geometry(node, x, kernel, false);
  s.strides = wg.strides, s.dilations = wg.dilations;
  s.pads_begin = wg.pads_begin, s.pads_end = wg.pads_end;
  graph::Shape expect{x[0], w[0]};
  expect.insert(expect.end(), wg.output.begin(), wg.output.end());
  if (y != expect)
    throw Error(node.describe() + ": output shape " + join(y) + " does not match " +
                join(expect) + " computed from input " + join(x) + " and weight " + join(w));
  for (int64_t d : y)
    if (d <= 0) throw Error(node.describe() + ": empty output " + join(y));
  if (x.size() == 3) {  // one row: H = kH = oH = 1, no window on that axis
    for (graph::Shape* dims : {&s.x, &s.w, &s.y}) dims->insert(dims->begin() + 2, 1);
    for (auto* v : {&s.strides, &s.dilations}) v->insert(v->begin(), 1);
    for (auto* v : {&s.pads_begin, &s.pads_end}) v->insert(v->begin(), 0);
  }
  return s;
}

// An activation's [N, C, H, W] dims: its shape, or, on a channels-last node, its shape read as
// [N, H, W, C] (graph::to_channels_last).
graph::Shape logical(const graph::Node& n, const graph::Shape& shape) {
  return graph::is_channels_last(n) && shape.size() == 4 ? graph::to_channels_first_shape(shape) : shape;
}

std::string signature(const std::string& op, const ConvShapes& s, bool bias, DType dt, bool channels_last) {
  return op + (channels_last ? " nhwc " : " ") + graph::dtype_name(dt) + " x" + dims_text(s.x) + " w" + dims_text(s.w) + " y" + dims_text(s.y) + " s" +
         dims_text(s.strides) + " d" + dims_text(s.dilations) + " p" + dims_text(s.pads_begin) +
         "/" + dims_text(s.pads_end) + (bias ? " bias" : "");
}

template <typename Attributes>
Attributes window_attributes(const ConvShapes& s) {
  Attributes a;
  a.set_pre_padding(s.pads_begin)
      .set_post_padding(s.pads_end)
      .set_stride(s.strides)
      .set_dilation(s.dilations);
  a.set_compute_data_type(fe::DataType_t::FLOAT);
  return a;
}

GraphRecipe forward_recipe(const graph::Node& n) {
  const graph::Value* x = cpu::required(n, 0);
  const graph::Value* w = cpu::required(n, 1);
  const graph::Value* b = n.input(2);
  const graph::Value* y = cpu::required(n, 0, true);
  const DType dt = common_type(n, {x, w, b, y});
  const fe::DataType_t type = fe_type(dt, n.describe());
  auto bytes = [dt](const graph::Shape& dims) { return tensor_bytes(dims, dt); };
  const bool nhwc = graph::is_channels_last(n);
  ConvShapes s = conv_shapes(n, logical(n, x->shape), logical(n, w->shape), logical(n, y->shape));
  if (b && b->shape != graph::Shape{s.w[0]})
    throw Error(n.describe() + ": bias '" + b->name + "' has shape " + join(b->shape) +
                ", expected [" + std::to_string(s.w[0]) + "]");
  GraphRecipe r;
  r.graph = new_float_graph();
  fe::graph::Graph& g = *r.graph;
  TensorPtr X = packed_tensor(g, "X", s.x, type, nhwc);
  TensorPtr W = packed_tensor(g, "W", s.w, type, nhwc);
  TensorPtr Y = g.conv_fprop(X, W, window_attributes<fe::graph::Conv_fprop_attributes>(s));
  set_packed(Y, s.y, b ? fe::DataType_t::FLOAT : type, nhwc);  // with a bias, the sum is the output
  r.bindings.push_back({X, false, 0, bytes(s.x)});
  r.bindings.push_back({W, false, 1, bytes(s.w)});
  if (b) {
    // Y = conv + B, B broadcast as [1, M, 1, ...]: one fused cuDNN graph.
    std::vector<int64_t> bias_dims(s.y.size(), 1);
    bias_dims[1] = s.w[0];
    TensorPtr B = packed_tensor(g, "B", bias_dims, type);
    TensorPtr sum = g.pointwise(
        Y, B,
        fe::graph::Pointwise_attributes().set_mode(fe::PointwiseMode_t::ADD).set_compute_data_type(
            fe::DataType_t::FLOAT));
    set_packed(sum, s.y, type, nhwc);
    r.bindings.push_back({B, false, 2, bytes(b->shape)});
    Y = sum;
  }
  Y->set_output(true);
  r.bindings.push_back({Y, true, 0, bytes(s.y)});
  r.signature = signature("Conv", s, b != nullptr, dt, nhwc);
  return r;
}

GraphRecipe grad_data_recipe(const graph::Node& n) {
  const graph::Value* dy = cpu::required(n, 0);
  const graph::Value* w = cpu::required(n, 1);
  const graph::Value* dx = cpu::required(n, 0, true);
  const DType dt = common_type(n, {dy, w, dx});
  const fe::DataType_t type = fe_type(dt, n.describe());
  auto bytes = [dt](const graph::Shape& dims) { return tensor_bytes(dims, dt); };
  const bool nhwc = graph::is_channels_last(n);
  const graph::Shape x_shape = cpu::shape_attr(n, "input_shape");
  if (logical(n, dx->shape) != x_shape)
    throw Error(n.describe() + ": output shape " + join(dx->shape) + " differs from input_shape " + join(x_shape) +
                (nhwc ? " (channels-last)" : ""));
  ConvShapes s = conv_shapes(n, x_shape, logical(n, w->shape), logical(n, dy->shape));
  GraphRecipe r;
  r.graph = new_float_graph();
  fe::graph::Graph& g = *r.graph;
  TensorPtr DY = packed_tensor(g, "DY", s.y, type, nhwc);
  TensorPtr W = packed_tensor(g, "W", s.w, type, nhwc);
  TensorPtr DX = g.conv_dgrad(DY, W, window_attributes<fe::graph::Conv_dgrad_attributes>(s));
  set_packed(DX, s.x, type, nhwc);
  DX->set_output(true);
  r.bindings.push_back({DY, false, 0, bytes(s.y)});
  r.bindings.push_back({W, false, 1, bytes(s.w)});
  r.bindings.push_back({DX, true, 0, bytes(s.x)});
  r.signature = signature("ConvGradData", s, false, dt, nhwc);
  return r;
}

// The prologue Relu(X * scale + bias) over X (dims [N, C, ...]) in the graph, scale and bias
// [1, C, 1, 1] of X's type bound to the node's inputs `first` and `first + 1`; float32 inside.
TensorPtr add_prologue(GraphRecipe& r, const graph::Node& n, const TensorPtr& x, const std::vector<int64_t>& x_dims,
                       size_t first, DType dt, bool nhwc) {
  fe::graph::Graph& g = *r.graph;
  const fe::DataType_t type = fe_type(dt, n.describe());
  std::vector<int64_t> channel(x_dims.size(), 1);
  channel[1] = x_dims[1];
  for (size_t i = first; i < first + 2; ++i)
    if (!n.input(i) || n.input(i)->shape != graph::Shape{x_dims[1]})
      throw Error(n.describe() + ": the prologue's input " + std::to_string(i) + " must be [" +
                  std::to_string(x_dims[1]) + "]");
  TensorPtr S = packed_tensor(g, "S", channel, type, nhwc);
  TensorPtr B = packed_tensor(g, "B", channel, type, nhwc);
  auto op = [](fe::PointwiseMode_t mode) {
    return fe::graph::Pointwise_attributes().set_mode(mode).set_compute_data_type(fe::DataType_t::FLOAT);
  };
  TensorPtr scaled = g.pointwise(x, S, op(fe::PointwiseMode_t::MUL));
  TensorPtr shifted = g.pointwise(scaled, B, op(fe::PointwiseMode_t::ADD));
  TensorPtr p = g.pointwise(shifted, op(fe::PointwiseMode_t::RELU_FWD));
  r.bindings.push_back({S, false, first, tensor_bytes(channel, dt)});
  r.bindings.push_back({B, false, first + 1, tensor_bytes(channel, dt)});
  return p;
}

// ConvGradFilter, and oxtrain.ConvGradFilterScaleBiasRelu: X through the scale-bias-ReLU
// prologue first (cuDNN's "scale-bias-relu-wgrad" graph).
GraphRecipe grad_filter_recipe(const graph::Node& n) {
  const bool prologue = n.op_type == "ConvGradFilterScaleBiasRelu";
  const graph::Value* dy = cpu::required(n, 0);
  const graph::Value* x = cpu::required(n, 1);
  const graph::Value* dw = cpu::required(n, 0, true);
  const DType dt = common_type(n, {dy, x, dw, n.input(2), n.input(3)});
  const fe::DataType_t type = fe_type(dt, n.describe());
  auto bytes = [dt](const graph::Shape& dims) { return tensor_bytes(dims, dt); };
  graph::Shape w_shape = cpu::shape_attr(n, "filter_shape");
  if (logical(n, dw->shape) != w_shape)
    throw Error(n.describe() + ": output shape " + join(dw->shape) + " differs from filter_shape " + join(w_shape) +
                (graph::is_channels_last(n) ? " (channels-last)" : ""));
  const bool nhwc = graph::is_channels_last(n);
  ConvShapes s = conv_shapes(n, logical(n, x->shape), w_shape, logical(n, dy->shape));
  GraphRecipe r;
  r.graph = new_float_graph();
  fe::graph::Graph& g = *r.graph;
  TensorPtr DY = packed_tensor(g, "DY", s.y, type, nhwc);
  TensorPtr X = packed_tensor(g, "X", s.x, type, nhwc);
  r.bindings.push_back({DY, false, 0, bytes(s.y)});
  r.bindings.push_back({X, false, 1, bytes(s.x)});
  TensorPtr in = prologue ? add_prologue(r, n, X, s.x, 2, dt, nhwc) : X;
  TensorPtr DW = g.conv_wgrad(DY, in, window_attributes<fe::graph::Conv_wgrad_attributes>(s));
  set_packed(DW, s.w, type, nhwc);
  DW->set_output(true);
  r.bindings.push_back({DW, true, 0, bytes(s.w)});
  r.signature = signature(prologue ? "ScaleBiasReluConvGradFilter" : "ConvGradFilter", s, false, dt, nhwc);
  return r;
}

// oxtrain.ConvStats as cuDNN's "conv + genstats" graph, with the scale-bias-ReLU prologue
// when the node has one ("SBRCS" in cuDNN's samples).
GraphRecipe conv_stats_recipe(const graph::Node& n) {
  const graph::Value* x = cpu::required(n, 0);
  const graph::Value* w = cpu::required(n, 1);
  const graph::Value* y = cpu::required(n, 0, true);
  const bool prologue = n.input(2) != nullptr;
  const DType dt = common_type(n, {x, w, y, n.input(2), n.input(3)});
  for (size_t i = 1; i < 3; ++i)
    if (!n.output(i) || n.output(i)->dtype != DType::f32)
      throw Error(n.describe() + ": the cuDNN graph writes both float32 sums");
  const fe::DataType_t type = fe_type(dt, n.describe());
  const bool nhwc = graph::is_channels_last(n);
  ConvShapes s = conv_shapes(n, logical(n, x->shape), logical(n, w->shape), logical(n, y->shape));
  if (s.group != 1) throw Error(n.describe() + ": cuDNN's conv + genstats graph takes group 1 only");
  GraphRecipe r;
  r.graph = new_float_graph();
  fe::graph::Graph& g = *r.graph;
  TensorPtr X = packed_tensor(g, "X", s.x, type, nhwc);
  r.bindings.push_back({X, false, 0, tensor_bytes(s.x, dt)});
  TensorPtr in = prologue ? add_prologue(r, n, X, s.x, 2, dt, nhwc) : X;
  TensorPtr W = packed_tensor(g, "W", s.w, type, nhwc);
  r.bindings.push_back({W, false, 1, tensor_bytes(s.w, dt)});
  TensorPtr Y = g.conv_fprop(in, W, window_attributes<fe::graph::Conv_fprop_attributes>(s));
  set_packed(Y, s.y, type, nhwc);
  Y->set_output(true);
  r.bindings.push_back({Y, true, 0, tensor_bytes(s.y, dt)});
  auto [SUM, SUM_SQ] = g.genstats(Y, fe::graph::Genstats_attributes().set_compute_data_type(fe::DataType_t::FLOAT));
  std::vector<int64_t> channel(s.y.size(), 1);
  channel[1] = s.y[1];
  for (const TensorPtr& t : {SUM, SUM_SQ}) {
    set_packed(t, channel, fe::DataType_t::FLOAT, nhwc);
    t->set_output(true);
  }
  r.bindings.push_back({SUM, true, 1, tensor_bytes(channel, DType::f32)});
  r.bindings.push_back({SUM_SQ, true, 2, tensor_bytes(channel, DType::f32)});
  r.signature = signature(prologue ? "ScaleBiasReluConvStats" : "ConvStats", s, false, dt, nhwc);
  return r;
}

// oxtrain.ConvGradDataReluBatchNormWeight as cuDNN's "Dgrad Drelu DBNweight" graph: the data
// gradient, the ReLU's gradient against batch norm's output recomputed from X and the float32
// statistics, then batch norm's weight gradients (dbn_weight). Its equivalent-scale outputs
// (BatchNormGradApply computes those itself) go to scratch.
GraphRecipe grad_data_relu_bn_recipe(const graph::Node& n) {
  const graph::Value* dy = cpu::required(n, 0);
  const graph::Value* w = cpu::required(n, 1);
  const graph::Value* x = cpu::required(n, 2);
  const graph::Value* ds = cpu::required(n, 0, true);
  const DType dt = common_type(n, {dy, w, x, ds});
  const fe::DataType_t type = fe_type(dt, n.describe());
  const bool nhwc = graph::is_channels_last(n);
  const graph::Shape x_shape = cpu::shape_attr(n, "input_shape");
  if (logical(n, ds->shape) != x_shape || logical(n, x->shape) != x_shape)
    throw Error(n.describe() + ": dS and X must be input_shape " + join(x_shape));
  ConvShapes s = conv_shapes(n, x_shape, logical(n, w->shape), logical(n, dy->shape));
  std::vector<int64_t> channel(s.x.size(), 1);
  channel[1] = s.x[1];
  for (size_t i = 3; i < 7; ++i)
    if (!n.input(i) || n.input(i)->dtype != DType::f32 || n.input(i)->shape != graph::Shape{s.x[1]})
      throw Error(n.describe() + ": input " + std::to_string(i) + " must be float32 [" + std::to_string(s.x[1]) + "]");
  for (size_t i = 1; i < 3; ++i)
    if (!n.output(i) || n.output(i)->dtype != DType::f32)
      throw Error(n.describe() + ": the cuDNN graph writes both float32 weight gradients");
  GraphRecipe r;
  r.graph = new_float_graph();
  fe::graph::Graph& g = *r.graph;
  TensorPtr DY = packed_tensor(g, "DY", s.y, type, nhwc);
  TensorPtr W = packed_tensor(g, "W", s.w, type, nhwc);
  TensorPtr X = packed_tensor(g, "X", s.x, type, nhwc);
  r.bindings.push_back({DY, false, 0, tensor_bytes(s.y, dt)});
  r.bindings.push_back({W, false, 1, tensor_bytes(s.w, dt)});
  r.bindings.push_back({X, false, 2, tensor_bytes(s.x, dt)});
  const char* names[] = {"", "", "", "scale", "B", "mean", "inv_std"};
  TensorPtr per_channel[7];
  for (size_t i = 3; i < 7; ++i) {
    per_channel[i] = packed_tensor(g, names[i], channel, fe::DataType_t::FLOAT, nhwc);
    r.bindings.push_back({per_channel[i], false, i, tensor_bytes(channel, DType::f32)});
  }
  TensorPtr dgrad = g.conv_dgrad(DY, W, window_attributes<fe::graph::Conv_dgrad_attributes>(s));
  dgrad->set_dim(s.x);
  auto op = [](fe::PointwiseMode_t mode) {
    return fe::graph::Pointwise_attributes().set_mode(mode).set_compute_data_type(fe::DataType_t::FLOAT);
  };
  TensorPtr bn = g.pointwise(X, per_channel[5], op(fe::PointwiseMode_t::SUB));
  bn = g.pointwise(bn, per_channel[6], op(fe::PointwiseMode_t::MUL));
  bn = g.pointwise(bn, per_channel[3], op(fe::PointwiseMode_t::MUL));
  bn = g.pointwise(bn, per_channel[4], op(fe::PointwiseMode_t::ADD));
  TensorPtr DS = g.pointwise(dgrad, bn, op(fe::PointwiseMode_t::RELU_BWD));
  set_packed(DS, s.x, type, nhwc);
  DS->set_output(true);
  r.bindings.push_back({DS, true, 0, tensor_bytes(s.x, dt)});
  auto [dscale, dbias, eq_dy, eq_x, eq_bias] =
      g.dbn_weight(DS, X, per_channel[5], per_channel[6], per_channel[3], fe::graph::DBN_weight_attributes());
  size_t slot = 1;
  for (const TensorPtr& t : {dscale, dbias, eq_dy, eq_x, eq_bias}) {
    set_packed(t, channel, fe::DataType_t::FLOAT, nhwc);
    t->set_output(true);
    Binding b{t, true, slot, tensor_bytes(channel, DType::f32)};
    b.scratch = slot > 2;
    r.bindings.push_back(b);
    ++slot;
  }
  r.signature = signature("ConvGradDataReluBatchNormWeight", s, false, dt, nhwc);
  return r;
}

}  // namespace

GraphRecipe conv_recipe(const graph::Node& node) {
  if (node.op_type == "Conv") return forward_recipe(node);
  if (node.op_type == "ConvGradData") return grad_data_recipe(node);
  if (node.op_type == "ConvGradFilter") return grad_filter_recipe(node);
  if (node.op_type == "ConvStats") return conv_stats_recipe(node);
  if (node.op_type == "ConvGradFilterScaleBiasRelu") return grad_filter_recipe(node);
  if (node.op_type == "ConvGradDataReluBatchNormWeight") return grad_data_relu_bn_recipe(node);
  throw Error(node.describe() + ": not a convolution");
}

}  // namespace cudnn

void register_cuda_conv_kernels(KernelRegistry& registry) {
  auto factory = [](const KernelInit& init) {
    const std::string where = init.node.describe();
    return cudnn::make_cudnn_kernel(cudnn::conv_recipe(init.node), init, where);
  };
  registry.add("", "Conv", Device::cuda, factory);
  registry.add(graph::kOxtrainDomain, "ConvGradData", Device::cuda, factory);
  registry.add(graph::kOxtrainDomain, "ConvGradFilter", Device::cuda, factory);
}

}  // namespace oxtrain::runtime
