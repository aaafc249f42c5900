// CUDA Softmax, LogSoftmax, SoftmaxCrossEntropyLoss and their gradients (oxtrain.SoftmaxGrad,
// oxtrain.LogSoftmaxGrad, oxtrain.SoftmaxCrossEntropyLossGrad): twins of runtime/cpu/loss.cc, computing with the same
// per-element math (runtime/math/loss.h). Every kernel writes (=) its outputs. float32 scores,
// int64 labels.
//
// A row is one softmax vector (d elements `inner` apart); one block handles one row at a time
// (blocks stride over the rows), its threads splitting the row and combining their partial
// maxima and sums in a fixed tree (warp shuffles, then one warp over the warps' results), so
// every result is the same from run to run. The loss's total over positions is never summed
// with atomics: the rows write their losses and weights into the workspace and one block adds
// them in a fixed order.
//
// Labels are read on the device only. The CPU kernels refuse a label outside [0, C) that is
// not ignore_index; here such a label makes its position's loss, weight and gradient row NaN
// (so a mean or sum over it is NaN too).
#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>
#include <string>

#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/loss.h"

namespace oxtrain::runtime {
namespace {

// ---------------------------------------------------------------------------------------
// Rows and the block reduction.

// outer x inner rows of d elements: row r = o * inner + j starts at o * d * inner + j, its
// elements `inner` apart.
struct Rows {
  int64_t outer = 1, d = 1, inner = 1;
  __host__ __device__ int64_t count() const { return outer * inner; }
  __host__ __device__ int64_t numel() const { return outer * d * inner; }
};

__device__ __forceinline__ int64_t row_start(const Rows& g, int64_t r) {
  return (r / g.inner) * g.d * g.inner + r % g.inner;
}

struct MaxOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return math::max_step(a, b);
  }
};
struct AddOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a + b;
  }
};

constexpr int kWarp = 32;

// Combines one value per thread of the block (blockDim.x a multiple of 32, at most 1024) in a
// fixed order; every thread gets the result. `shared` holds 33 values. Every thread of the
// block must call it.
template <typename V, typename Op>
__device__ V block_reduce(V v, Op op, V identity, V* shared) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int warps = static_cast<int>(blockDim.x) / kWarp;
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  __syncthreads();  // a previous call's readers are done with `shared`
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : identity;
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
    if (lane == 0) shared[kWarp] = v;
  }
  __syncthreads();
  return shared[kWarp];
}

// Threads per row: a multiple of 32, enough for d without leaving most threads idle.
unsigned row_threads(int64_t d) {
  if (d >= 4096) return 512;
  const int64_t rounded = (std::max<int64_t>(d, 1) + kWarp - 1) / kWarp * kWarp;
  return static_cast<unsigned>(std::min<int64_t>(rounded, 256));
}

// Blocks for `rows` rows: one per row, up to enough to fill the device many times over
// (blocks then stride over the rows).
unsigned row_blocks(int64_t rows, const CudaContext& ctx) {
  const int64_t cap = std::max(1, ctx.multiprocessors) * int64_t{64};
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, cap));
}

constexpr unsigned kReduceThreads = 256;

// ---------------------------------------------------------------------------------------
// Softmax

// kLog: LogSoftmax, whose output never holds the exp terms.
template <bool kLog>
__global__ void softmax_kernel(const float* x, float* y, Rows g) {
  __shared__ float max_shared[kWarp + 1];
  __shared__ double sum_shared[kWarp + 1];
  const int64_t first = threadIdx.x, step = blockDim.x;
  for (int64_t r = blockIdx.x; r < g.count(); r += gridDim.x) {
    const int64_t base = row_start(g, r);
    const float* xr = x + base;
    float* yr = y + base;
    // Every element of the row is read before the reduction's barrier, and written after it
    // by the thread that read it: y may share x's buffer.
    float mx = math::row_max(xr, g.d, g.inner, first, step);
    mx = block_reduce(mx, MaxOp{}, math::lowest<float>(), max_shared);
    double sum = 0;
    for (int64_t c = first; c < g.d; c += step) {
      const float e = math::softmax_exp(xr[c * g.inner], mx);
      if (!kLog) yr[c * g.inner] = e;
      sum += e;
    }
    sum = block_reduce(sum, AddOp{}, 0.0, sum_shared);
    if (kLog) {
      const double log_sum = ::log(sum);
      for (int64_t c = first; c < g.d; c += step)
        yr[c * g.inner] = math::log_softmax_element(xr[c * g.inner], mx, log_sum);
    } else {
      const double inv = 1.0 / sum;
      for (int64_t c = first; c < g.d; c += step)
        yr[c * g.inner] = math::softmax_normalize(yr[c * g.inner], inv);
    }
  }
}

// Softmax: dX = Y * (dY - sum(dY * Y)); kLog (LogSoftmax): dX = dY - exp(Y) * sum(dY); over
// each row.
template <bool kLog>
__global__ void softmax_grad_kernel(const float* dy, const float* y, float* dx, Rows g) {
  __shared__ double sum_shared[kWarp + 1];
  const int64_t first = threadIdx.x, step = blockDim.x;
  for (int64_t r = blockIdx.x; r < g.count(); r += gridDim.x) {
    const int64_t base = row_start(g, r);
    double dot = 0;
    for (int64_t c = first; c < g.d; c += step) {
      const int64_t i = base + c * g.inner;
      dot += kLog ? static_cast<double>(dy[i]) : math::softmax_grad_term(dy[i], y[i]);
    }
    dot = block_reduce(dot, AddOp{}, 0.0, sum_shared);
    for (int64_t c = first; c < g.d; c += step) {
      const int64_t i = base + c * g.inner;
      dx[i] = kLog ? math::log_softmax_grad_element(dy[i], y[i], dot) : math::softmax_grad_element(dy[i], y[i], dot);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Factory checks

int64_t normalize_axis(const Node& n, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

// coerce_2d: [prod(dims[:axis]), prod(dims[axis:])] (Softmax before opset 13).
Rows rows_of(const Shape& s, int64_t axis, bool coerce_2d) {
  Rows g;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
    if (i < axis) g.outer *= s[i];
    else if (i == axis || coerce_2d) g.d *= s[i];
    else g.inner *= s[i];
  }
  return g;
}

const graph::Value& float32_value(const graph::Value* v, const Node& n, const char* role) {
  if (!v) throw Error(n.describe() + ": " + role + " is missing");
  if (v->dtype != DType::f32)
    throw Error(n.describe() + ": the CUDA kernel takes float32 " + role + ", got " +
                graph::dtype_name(v->dtype) + " (run float64 graphs on the CPU)");
  return *v;
}

const graph::Value& int64_labels(const graph::Value* v, const Node& n) {
  if (!v) throw Error(n.describe() + ": labels are missing");
  if (v->dtype != DType::i64)
    throw Error(n.describe() + ": the CUDA kernel takes int64 labels, got " +
                graph::dtype_name(v->dtype) + " (cast the labels to int64)");
  return *v;
}

void require_shape(const graph::Value& v, const Shape& want, const Node& n, const char* role) {
  if (v.shape != want)
    throw Error(n.describe() + ": " + role + " " + v.shape_string() + " should be " +
                graph::shape_str(want));
}

// The shape a kernel was compiled for is the shape it runs with.
void check_run_shape(const TensorView& t, const Shape& compiled, const std::string& what) {
  if (t.shape != compiled)
    throw Error(what + ": compiled for " + graph::shape_str(compiled) + ", run with " +
                graph::shape_str(t.shape));
}

template <bool kLog>
KernelFactory softmax_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& in = float32_value(n.input(0), n, "input");
    require_shape(float32_value(n.output(0), n, "output"), in.shape, n, "output");
    const bool coerce = init.opset < 13;
    const int64_t rank = static_cast<int64_t>(in.shape.size());
    const int64_t axis = normalize_axis(n, n.attr_int("axis", coerce ? 1 : -1), rank);
    const Rows g = rows_of(in.shape, axis, coerce);
    const Shape shape = in.shape;
    return make_kernel([what, g, shape](const KernelArgs& a) {
      check_run_shape(a.inputs[0], shape, what);
      if (g.numel() == 0) return;
      const CudaContext& ctx = cuda::context_of(a, what);
      softmax_kernel<kLog><<<row_blocks(g.count(), ctx), row_threads(g.d), 0, ctx.stream>>>(
          a.inputs[0].as<float>(), a.outputs[0].as<float>(), g);
      cuda::check(cudaGetLastError(), "softmax_kernel launch", what);
    });
  };
}

template <bool kLog>
KernelFactory softmax_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = float32_value(n.input(0), n, "dY");
    require_shape(float32_value(n.input(1), n, "Y"), dy.shape, n, "Y");
    require_shape(float32_value(n.output(0), n, "dX"), dy.shape, n, "dX");
    const bool coerce = n.attr_int("coerce_2d", 0) != 0;
    const int64_t rank = static_cast<int64_t>(dy.shape.size());
    const int64_t axis = normalize_axis(n, n.attr_int("axis", coerce ? 1 : -1), rank);
    const Rows g = rows_of(dy.shape, axis, coerce);
    const Shape shape = dy.shape;
    return make_kernel([what, g, shape](const KernelArgs& a) {
      check_run_shape(a.inputs[0], shape, what);
      if (g.numel() == 0) return;
      const CudaContext& ctx = cuda::context_of(a, what);
      softmax_grad_kernel<kLog><<<row_blocks(g.count(), ctx), row_threads(g.d), 0, ctx.stream>>>(
          a.inputs[0].as<float>(), a.inputs[1].as<float>(), a.outputs[0].as<float>(), g);
      cuda::check(cudaGetLastError(), "softmax_grad_kernel launch", what);
    });
  };
}

// ---------------------------------------------------------------------------------------
// SoftmaxCrossEntropyLoss. Scores [N, C, d...]: rows with outer = N, d = C, inner = prod(d...);
// labels and per-position losses are [N, d...], position r = row r.

enum class Reduction { mean, sum, none };

struct LossConfig {
  Reduction reduction = Reduction::mean;
  math::LabelRule labels;  // classes filled in from the scores' shape
  Rows rows;
  Shape scores;  // the compiled shape of the scores (log_prob for the gradient)
  std::string what;
};

LossConfig loss_config(const Node& n, const graph::Value& scores) {
  LossConfig cfg;
  cfg.what = n.describe();
  const std::string r = n.attr_string("reduction", "mean");
  if (r == "mean") cfg.reduction = Reduction::mean;
  else if (r == "sum") cfg.reduction = Reduction::sum;
  else if (r == "none") cfg.reduction = Reduction::none;
  else throw Error(cfg.what + ": unknown reduction '" + r + "' (mean, sum or none)");
  if (scores.shape.size() < 2)
    throw Error(cfg.what + ": scores " + scores.shape_string() + " must be [N, C, ...]");
  cfg.scores = scores.shape;
  cfg.rows.outer = scores.shape[0];
  cfg.rows.d = scores.shape[1];
  for (size_t i = 2; i < scores.shape.size(); ++i) cfg.rows.inner *= scores.shape[i];
  cfg.labels.classes = cfg.rows.d;
  cfg.labels.has_ignore = n.has_attr("ignore_index");
  cfg.labels.ignore_index = n.attr_int("ignore_index", 0);
  return cfg;
}

// [N, d...]: the scores' shape without the class dimension.
Shape position_shape(const Shape& scores) {
  Shape s{scores[0]};
  s.insert(s.end(), scores.begin() + 2, scores.end());
  return s;
}

// Checks labels [N, d...] and the optional weights [C]; returns whether weights are given.
bool check_labels_and_weights(const Node& n, const LossConfig& cfg, size_t labels_at,
                              size_t weights_at) {
  require_shape(int64_labels(n.input(labels_at), n), position_shape(cfg.scores), n, "labels");
  if (!n.input(weights_at)) return false;
  require_shape(float32_value(n.input(weights_at), n, "weights"), Shape{cfg.rows.d}, n, "weights");
  return true;
}

struct LossRowsParams {
  const float* x = nullptr;
  const int64_t* labels = nullptr;
  const float* weights = nullptr;  // null: every class weighs 1
  float* log_prob = nullptr;       // null: not wanted
  float* loss_none = nullptr;      // reduction none: the per-position losses (output 0)
  double* position_loss = nullptr;    // otherwise: per-position losses and weights, into
  double* position_weight = nullptr;  // the workspace
  Rows rows;
  math::LabelRule rule;
};

__global__ void loss_rows_kernel(LossRowsParams p) {
  __shared__ double max_shared[kWarp + 1];
  __shared__ double sum_shared[kWarp + 1];
  const Rows& g = p.rows;
  const int64_t first = threadIdx.x, step = blockDim.x;
  for (int64_t r = blockIdx.x; r < g.count(); r += gridDim.x) {
    const int64_t base = row_start(g, r);
    const float* xr = p.x + base;
    // Thread 0 reads the label's score before any log_prob is written.
    int64_t label = 0;
    math::LabelKind kind = math::LabelKind::ignored;
    float x_label = 0;
    if (threadIdx.x == 0) {
      label = p.labels[r];
      kind = math::label_kind(label, p.rule);
      if (kind == math::LabelKind::valid) x_label = xr[label * g.inner];
    }
    double mx = math::row_max_double(xr, g.d, g.inner, first, step);
    mx = block_reduce(mx, MaxOp{}, math::lowest<double>(), max_shared);
    double sum = 0;
    for (int64_t c = first; c < g.d; c += step) sum += math::lse_term(xr[c * g.inner], mx);
    sum = block_reduce(sum, AddOp{}, 0.0, sum_shared);
    const double lse = math::log_sum_exp(mx, sum);
    if (p.log_prob)
      for (int64_t c = first; c < g.d; c += step)
        p.log_prob[base + c * g.inner] = math::log_prob_of(xr[c * g.inner], lse);
    if (threadIdx.x == 0) {
      double loss = 0, weight = 0;
      if (kind == math::LabelKind::valid) {
        weight = math::label_weight(p.weights, label);
        loss = math::position_loss(x_label, lse, weight);
      } else if (kind == math::LabelKind::out_of_range) {
        loss = weight = CUDART_NAN;
      }
      if (p.loss_none) {
        p.loss_none[r] = static_cast<float>(loss);
      } else {
        p.position_loss[r] = loss;
        p.position_weight[r] = weight;
      }
    }
  }
}

// One block: out = sum(position_loss) (sum) or sum(position_loss) / sum(position_weight)
// (mean; NaN when every position is ignored, as on the CPU).
__global__ void loss_total_kernel(const double* position_loss, const double* position_weight,
                                  int64_t positions, bool mean, float* out) {
  __shared__ double shared[kWarp + 1];
  double total = 0, weight = 0;
  for (int64_t q = threadIdx.x; q < positions; q += blockDim.x) {
    total += position_loss[q];
    weight += position_weight[q];
  }
  total = block_reduce(total, AddOp{}, 0.0, shared);
  if (mean) weight = block_reduce(weight, AddOp{}, 0.0, shared);
  if (threadIdx.x == 0) out[0] = static_cast<float>(mean ? total / weight : total);
}

KernelFactory loss_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& scores = float32_value(n.input(0), n, "scores");
    const LossConfig cfg = loss_config(n, scores);
    const bool has_weights = check_labels_and_weights(n, cfg, 1, 2);
    const Shape loss_shape =
        cfg.reduction == Reduction::none ? position_shape(cfg.scores) : Shape{};
    require_shape(float32_value(n.output(0), n, "loss"), loss_shape, n, "loss");
    const bool has_log_prob = n.output(1) != nullptr;
    if (has_log_prob)
      require_shape(float32_value(n.output(1), n, "log_prob"), cfg.scores, n, "log_prob");
    const int64_t positions = cfg.rows.count();
    const size_t workspace =
        cfg.reduction == Reduction::none ? 0 : static_cast<size_t>(positions) * 2 * sizeof(double);
    return make_kernel(
        [cfg, has_weights, has_log_prob, positions](const KernelArgs& a) {
          check_run_shape(a.inputs[0], cfg.scores, cfg.what);
          const CudaContext& ctx = cuda::context_of(a, cfg.what);
          LossRowsParams p;
          p.x = a.inputs[0].as<float>();
          p.labels = a.inputs[1].as<int64_t>();
          p.weights = has_weights ? a.inputs[2].as<float>() : nullptr;
          p.log_prob = has_log_prob ? a.outputs[1].as<float>() : nullptr;
          p.rows = cfg.rows;
          p.rule = cfg.labels;
          const bool none = cfg.reduction == Reduction::none;
          if (none) {
            p.loss_none = a.outputs[0].as<float>();
          } else {
            p.position_loss = static_cast<double*>(a.workspace);
            p.position_weight = p.position_loss + positions;
          }
          if (positions > 0) {
            loss_rows_kernel<<<row_blocks(positions, ctx), row_threads(cfg.rows.d), 0,
                               ctx.stream>>>(p);
            cuda::check(cudaGetLastError(), "loss_rows_kernel launch", cfg.what);
          }
          if (none) return;
          loss_total_kernel<<<1, kReduceThreads, 0, ctx.stream>>>(
              p.position_loss, p.position_weight, positions, cfg.reduction == Reduction::mean,
              a.outputs[0].as<float>());
          cuda::check(cudaGetLastError(), "loss_total_kernel launch", cfg.what);
        },
        workspace);
  };
}

// ---------------------------------------------------------------------------------------
// SoftmaxCrossEntropyLossGrad: inputs dLoss, log_prob, labels, optional weights.

// One block, for reduction mean: scale = dLoss / (sum of the weights of the positions not
// ignored), as double into the workspace.
__global__ void mean_scale_kernel(const float* dloss, const int64_t* labels, const float* weights,
                                  int64_t positions, math::LabelRule rule, double* scale) {
  __shared__ double shared[kWarp + 1];
  double weight = 0;
  for (int64_t q = threadIdx.x; q < positions; q += blockDim.x) {
    const int64_t label = labels[q];
    const math::LabelKind kind = math::label_kind(label, rule);
    if (kind == math::LabelKind::valid) weight += math::label_weight(weights, label);
    else if (kind == math::LabelKind::out_of_range) weight += CUDART_NAN;
  }
  weight = block_reduce(weight, AddOp{}, 0.0, shared);
  if (threadIdx.x == 0) scale[0] = static_cast<double>(dloss[0]) / weight;
}

struct GradRowsParams {
  const float* dloss = nullptr;  // [N, d...] (none) or a scalar (sum)
  const double* mean_scale = nullptr;  // mean: dLoss / denominator, from mean_scale_kernel
  const float* log_prob = nullptr;
  const int64_t* labels = nullptr;
  const float* weights = nullptr;
  float* dx = nullptr;
  Reduction reduction = Reduction::mean;
  Rows rows;
  math::LabelRule rule;
};

// dX = (exp(log_prob) - onehot(label)) * k per row; 0 where the label is ignored. Each element
// reads log_prob[i] only: dX may share log_prob's buffer.
__global__ void loss_grad_rows_kernel(GradRowsParams p) {
  const Rows& g = p.rows;
  const int64_t first = threadIdx.x, step = blockDim.x;
  for (int64_t r = blockIdx.x; r < g.count(); r += gridDim.x) {
    const int64_t base = row_start(g, r);
    const int64_t label = p.labels[r];
    const math::LabelKind kind = math::label_kind(label, p.rule);
    if (kind != math::LabelKind::valid) {
      const float fill = kind == math::LabelKind::ignored ? 0.0f : CUDART_NAN_F;
      for (int64_t c = first; c < g.d; c += step) p.dx[base + c * g.inner] = fill;
      continue;
    }
    double per = 0;
    switch (p.reduction) {
      case Reduction::none: per = static_cast<double>(p.dloss[r]); break;
      case Reduction::sum: per = static_cast<double>(p.dloss[0]); break;
      case Reduction::mean: per = p.mean_scale[0]; break;
    }
    const double k = math::label_weight(p.weights, label) * per;
    for (int64_t c = first; c < g.d; c += step) {
      const int64_t i = base + c * g.inner;
      p.dx[i] = math::sce_grad_element(p.log_prob[i], c == label, k);
    }
  }
}

KernelFactory loss_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& log_prob = float32_value(n.input(1), n, "log_prob");
    const LossConfig cfg = loss_config(n, log_prob);
    const bool has_weights = check_labels_and_weights(n, cfg, 2, 3);
    const Shape dloss_shape =
        cfg.reduction == Reduction::none ? position_shape(cfg.scores) : Shape{};
    require_shape(float32_value(n.input(0), n, "dLoss"), dloss_shape, n, "dLoss");
    require_shape(float32_value(n.output(0), n, "dScores"), cfg.scores, n, "dScores");
    const int64_t positions = cfg.rows.count();
    const size_t workspace = cfg.reduction == Reduction::mean ? sizeof(double) : 0;
    return make_kernel(
        [cfg, has_weights, positions](const KernelArgs& a) {
          check_run_shape(a.inputs[1], cfg.scores, cfg.what);
          if (cfg.rows.numel() == 0) return;
          const CudaContext& ctx = cuda::context_of(a, cfg.what);
          GradRowsParams p;
          p.dloss = a.inputs[0].as<float>();
          p.log_prob = a.inputs[1].as<float>();
          p.labels = a.inputs[2].as<int64_t>();
          p.weights = has_weights ? a.inputs[3].as<float>() : nullptr;
          p.dx = a.outputs[0].as<float>();
          p.reduction = cfg.reduction;
          p.rows = cfg.rows;
          p.rule = cfg.labels;
          if (cfg.reduction == Reduction::mean) {
            double* scale = static_cast<double*>(a.workspace);
            mean_scale_kernel<<<1, kReduceThreads, 0, ctx.stream>>>(
                p.dloss, p.labels, p.weights, positions, cfg.labels, scale);
            cuda::check(cudaGetLastError(), "mean_scale_kernel launch", cfg.what);
            p.mean_scale = scale;
          }
          loss_grad_rows_kernel<<<row_blocks(positions, ctx), row_threads(cfg.rows.d), 0,
                                  ctx.stream>>>(p);
          cuda::check(cudaGetLastError(), "loss_grad_rows_kernel launch", cfg.what);
        },
        workspace);
  };
}

}  // namespace

void register_cuda_loss_kernels(KernelRegistry& registry) {
  registry.add("", "Softmax", Device::cuda, softmax_factory<false>());
  registry.add("oxtrain", "SoftmaxGrad", Device::cuda, softmax_grad_factory<false>());
  registry.add("", "LogSoftmax", Device::cuda, softmax_factory<true>());
  registry.add("oxtrain", "LogSoftmaxGrad", Device::cuda, softmax_grad_factory<true>());
  registry.add("", "SoftmaxCrossEntropyLoss", Device::cuda, loss_factory());
  registry.add("oxtrain", "SoftmaxCrossEntropyLossGrad", Device::cuda, loss_grad_factory());
}

}  // namespace oxtrain::runtime
