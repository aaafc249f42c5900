// Softmax, LogSoftmax, SoftmaxCrossEntropyLoss and their gradients (oxtrain.SoftmaxGrad,
// oxtrain.LogSoftmaxGrad, oxtrain.SoftmaxCrossEntropyLossGrad).
//
// A softmax group is `outer` x `inner` independent vectors of length `d`, the vector's
// elements `inner` apart. Groups are spread over threads; every sum is over one vector in a
// fixed order (in double), and the loss's total over positions is added serially, so results
// are bit-identical from run to run. The per-element math (runtime/math/loss.h) is shared
// with the CUDA kernels. Every kernel writes (=) its outputs.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/loss.h"

namespace oxtrain::runtime {
namespace {

using cpu::dispatch_float;
using cpu::kParallelMin;
using cpu::lane_sum;

// Positions of a block along `inner`.
constexpr int64_t kBlock = 64;

struct Groups {
  int64_t outer = 1, d = 1, inner = 1;
};

// coerce_2d: the input is viewed as [prod(dims[:axis]), prod(dims[axis:])] (Softmax before
// opset 13); otherwise softmax runs along the single axis.
Groups groups_of(const graph::Shape& s, int64_t axis, bool coerce_2d) {
  Groups g;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
    if (i < axis) g.outer *= s[i];
    else if (i == axis || coerce_2d) g.d *= s[i];
    else g.inner *= s[i];
  }
  return g;
}

int64_t normalize_axis(const Node& n, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

DType float_input(const Node& n, size_t i) {
  const graph::Value* v = n.input(i);
  if (!v) throw Error(n.describe() + ": input " + std::to_string(i) + " is missing");
  if (v->dtype != DType::f32 && v->dtype != DType::f64)
    throw Error(n.describe() + ": element type " + graph::dtype_name(v->dtype) +
                " is not supported on the CPU (float32 and float64 are)");
  return v->dtype;
}

// Runs f(o, j0, len) over every (outer index, block of inner positions), in parallel.
template <typename F>
void for_each_block(const Groups& g, F&& f) {
  const int64_t nb = (g.inner + kBlock - 1) / kBlock;
  const int64_t units = g.outer * nb;
#pragma omp parallel for schedule(static) if (g.outer * g.d * g.inner >= kParallelMin && units > 1)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t o = u / nb, j0 = (u % nb) * kBlock;
    f(o, j0, std::min(kBlock, g.inner - j0));
  }
}

// ---------------------------------------------------------------------------------------
// Softmax

// kLog: LogSoftmax. Its output never holds the exp terms, so x is read again at the end.
template <typename T, bool kLog>
void softmax(const T* x, T* y, const Groups& g) {
  for_each_block(g, [&](int64_t o, int64_t j0, int64_t len) {
    const int64_t base = o * g.d * g.inner + j0;
    if (g.inner == 1) {
      const T* xr = x + base;
      T* yr = y + base;
      const T mx = math::row_max(xr, g.d, 1, 0, 1);
      if (kLog) {
        const double log_sum = std::log(lane_sum(g.d, [xr, mx](int64_t c) { return math::softmax_exp(xr[c], mx); }));
        for (int64_t c = 0; c < g.d; ++c) yr[c] = math::log_softmax_element(xr[c], mx, log_sum);
        return;
      }
      for (int64_t c = 0; c < g.d; ++c) yr[c] = math::softmax_exp(xr[c], mx);
      const double inv = 1.0 / lane_sum(g.d, [yr](int64_t c) { return yr[c]; });
      for (int64_t c = 0; c < g.d; ++c) yr[c] = math::softmax_normalize(yr[c], inv);
      return;
    }
    T mx[kBlock];
    double sum[kBlock];
    for (int64_t j = 0; j < len; ++j) {
      mx[j] = math::lowest<T>();
      sum[j] = 0;
    }
    for (int64_t c = 0; c < g.d; ++c)
      for (int64_t j = 0; j < len; ++j) mx[j] = math::max_step(mx[j], x[base + c * g.inner + j]);
    for (int64_t c = 0; c < g.d; ++c)
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = base + c * g.inner + j;
        const T e = math::softmax_exp(x[i], mx[j]);
        if (!kLog) y[i] = e;
        sum[j] += e;
      }
    for (int64_t j = 0; j < len; ++j) sum[j] = kLog ? std::log(sum[j]) : 1.0 / sum[j];
    for (int64_t c = 0; c < g.d; ++c)
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = base + c * g.inner + j;
        y[i] = kLog ? math::log_softmax_element(x[i], mx[j], sum[j]) : math::softmax_normalize(y[i], sum[j]);
      }
  });
}

// Softmax: dX = Y * (dY - sum(dY * Y)); kLog (LogSoftmax): dX = dY - exp(Y) * sum(dY); over
// each softmax vector.
template <typename T, bool kLog>
void softmax_grad(const T* dy, const T* y, T* dx, const Groups& g) {
  auto term = [&](int64_t i) {
    return kLog ? static_cast<double>(dy[i]) : math::softmax_grad_term(dy[i], y[i]);
  };
  for_each_block(g, [&](int64_t o, int64_t j0, int64_t len) {
    const int64_t base = o * g.d * g.inner + j0;
    double dot[kBlock];
    if (g.inner == 1) {
      dot[0] = lane_sum(g.d, [&](int64_t c) { return term(base + c); });
    } else {
      for (int64_t j = 0; j < len; ++j) dot[j] = 0;
      for (int64_t c = 0; c < g.d; ++c)
        for (int64_t j = 0; j < len; ++j) dot[j] += term(base + c * g.inner + j);
    }
    for (int64_t c = 0; c < g.d; ++c)
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = base + c * g.inner + j;
        dx[i] = kLog ? math::log_softmax_grad_element(dy[i], y[i], dot[j])
                     : math::softmax_grad_element(dy[i], y[i], dot[j]);
      }
  });
}

template <bool kLog>
KernelFactory softmax_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = float_input(n, 0);
    const bool coerce = init.opset < 13;
    const int64_t rank = static_cast<int64_t>(n.input(0)->shape.size());
    const int64_t axis = normalize_axis(n, n.attr_int("axis", coerce ? 1 : -1), rank);
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([axis, coerce](const KernelArgs& a) {
        softmax<T, kLog>(a.inputs[0].as<T>(), a.outputs[0].as<T>(),
                groups_of(a.inputs[0].shape, axis, coerce));
      });
    });
  };
}

template <bool kLog>
KernelFactory softmax_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    DType dt = float_input(n, 0);
    if (float_input(n, 1) != dt || n.input(0)->shape != n.input(1)->shape)
      throw Error(n.describe() + ": dY " + n.input(0)->shape_string() + " and Y " +
                  n.input(1)->shape_string() + " differ in type or shape");
    const bool coerce = n.attr_int("coerce_2d", 0) != 0;
    const int64_t rank = static_cast<int64_t>(n.input(0)->shape.size());
    const int64_t axis = normalize_axis(n, n.attr_int("axis", coerce ? 1 : -1), rank);
    return dispatch_float(dt, n.describe(), [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([axis, coerce](const KernelArgs& a) {
        softmax_grad<T, kLog>(a.inputs[0].as<T>(), a.inputs[1].as<T>(), a.outputs[0].as<T>(),
                     groups_of(a.inputs[0].shape, axis, coerce));
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// SoftmaxCrossEntropyLoss. Scores [N, C, d...] are groups with outer = N, d = C,
// inner = prod(d...); labels and per-position losses are [N, d...] (position o*inner + j).

struct LossConfig {
  enum class Reduction { mean, sum, none } reduction = Reduction::mean;
  bool has_ignore = false;
  int64_t ignore_index = 0;
  std::string what;

  math::LabelRule label_rule(int64_t classes) const { return {classes, has_ignore, ignore_index}; }
};

LossConfig loss_config(const Node& n) {
  LossConfig cfg;
  cfg.what = n.describe();
  std::string r = n.attr_string("reduction", "mean");
  if (r == "mean") cfg.reduction = LossConfig::Reduction::mean;
  else if (r == "sum") cfg.reduction = LossConfig::Reduction::sum;
  else if (r == "none") cfg.reduction = LossConfig::Reduction::none;
  else throw Error(cfg.what + ": unknown reduction '" + r + "'");
  cfg.has_ignore = n.has_attr("ignore_index");
  cfg.ignore_index = n.attr_int("ignore_index", 0);
  return cfg;
}

void check_labels_type(const Node& n, size_t i) {
  const graph::Value* v = n.input(i);
  if (!v) throw Error(n.describe() + ": labels are missing");
  if (v->dtype != DType::i64 && v->dtype != DType::i32)
    throw Error(n.describe() + ": labels must be int64 or int32, not " +
                graph::dtype_name(v->dtype));
}

// Labels as int64, checked: each is in [0, classes) or the ignore index.
template <typename L>
void read_labels(const L* labels, int64_t count, int64_t classes, const LossConfig& cfg,
                 int64_t* out) {
  const math::LabelRule rule = cfg.label_rule(classes);
  for (int64_t p = 0; p < count; ++p) {
    const int64_t y = static_cast<int64_t>(labels[p]);
    if (math::label_kind(y, rule) == math::LabelKind::out_of_range)
      throw Error(cfg.what + ": label " + std::to_string(y) + " (at position " +
                  std::to_string(p) + ") is outside [0, " + std::to_string(classes) + ")" +
                  (cfg.has_ignore ? " and is not ignore_index " + std::to_string(cfg.ignore_index)
                                  : std::string()));
    out[p] = y;
  }
}

std::vector<int64_t> labels_of(const TensorView& t, int64_t classes, const LossConfig& cfg) {
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::i32)
    read_labels(t.as<int32_t>(), t.numel(), classes, cfg, out.data());
  else
    read_labels(t.as<int64_t>(), t.numel(), classes, cfg, out.data());
  return out;
}

Groups loss_groups(const graph::Shape& scores) {
  Groups g;
  g.outer = scores[0];
  g.d = scores[1];
  for (size_t i = 2; i < scores.size(); ++i) g.inner *= scores[i];
  return g;
}

template <typename T>
void sce_loss(const KernelArgs& a, const LossConfig& cfg, double* ws) {
  const Groups g = loss_groups(a.inputs[0].shape);
  const T* x = a.inputs[0].as<T>();
  const T* w = a.inputs.size() > 2 && a.inputs[2].present() ? a.inputs[2].as<T>() : nullptr;
  const std::vector<int64_t> labels = labels_of(a.inputs[1], g.d, cfg);
  T* loss_out = a.outputs[0].as<T>();
  T* log_prob = a.outputs.size() > 1 && a.outputs[1].present() ? a.outputs[1].as<T>() : nullptr;
  const int64_t positions = g.outer * g.inner;
  const bool none = cfg.reduction == LossConfig::Reduction::none;
  const math::LabelRule rule = cfg.label_rule(g.d);
  double* pos_loss = ws;               // [positions]
  double* pos_weight = ws + positions;  // [positions]
  for_each_block(g, [&](int64_t o, int64_t j0, int64_t len) {
    const int64_t base = o * g.d * g.inner + j0;
    double mx[kBlock], lse[kBlock];
    for (int64_t j = 0; j < len; ++j) {
      mx[j] = math::lowest<double>();
      lse[j] = 0;
    }
    for (int64_t c = 0; c < g.d; ++c)
      for (int64_t j = 0; j < len; ++j)
        mx[j] = math::max_step(mx[j], static_cast<double>(x[base + c * g.inner + j]));
    for (int64_t c = 0; c < g.d; ++c)
      for (int64_t j = 0; j < len; ++j) lse[j] += math::lse_term(x[base + c * g.inner + j], mx[j]);
    for (int64_t j = 0; j < len; ++j) lse[j] = math::log_sum_exp(mx[j], lse[j]);
    if (log_prob)
      for (int64_t c = 0; c < g.d; ++c)
        for (int64_t j = 0; j < len; ++j) {
          const int64_t i = base + c * g.inner + j;
          log_prob[i] = math::log_prob_of(x[i], lse[j]);
        }
    for (int64_t j = 0; j < len; ++j) {
      const int64_t p = o * g.inner + j0 + j;
      const int64_t y = labels[p];  // checked by labels_of: valid or ignored
      double l = 0, wt = 0;
      if (math::label_kind(y, rule) == math::LabelKind::valid) {
        wt = math::label_weight(w, y);
        l = math::position_loss(x[base + y * g.inner + j], lse[j], wt);
      }
      if (none) {
        loss_out[p] = static_cast<T>(l);
      } else {
        pos_loss[p] = l;
        pos_weight[p] = wt;
      }
    }
  });
  if (none) return;
  const double total = lane_sum(positions, [pos_loss](int64_t p) { return pos_loss[p]; });
  if (cfg.reduction == LossConfig::Reduction::sum) {
    loss_out[0] = static_cast<T>(total);
  } else {
    const double denom = lane_sum(positions, [pos_weight](int64_t p) { return pos_weight[p]; });
    loss_out[0] = static_cast<T>(total / denom);  // NaN when every position is ignored
  }
}

KernelFactory sce_loss_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    LossConfig cfg = loss_config(n);
    DType dt = float_input(n, 0);
    const graph::Shape& scores = n.input(0)->shape;
    if (scores.size() < 2)
      throw Error(cfg.what + ": scores " + n.input(0)->shape_string() + " must be [N, C, ...]");
    check_labels_type(n, 1);
    if (n.input(2) && float_input(n, 2) != dt)
      throw Error(cfg.what + ": weights and scores have different element types");
    if (n.output(1) && n.output(1)->dtype != dt)
      throw Error(cfg.what + ": log_prob must have the scores' element type");
    int64_t positions = 1;
    for (size_t i = 0; i < scores.size(); ++i)
      if (i != 1) positions *= std::max<int64_t>(scores[i], 0);
    const size_t ws = static_cast<size_t>(positions) * 2 * sizeof(double);
    return dispatch_float(dt, cfg.what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel(
          [cfg, positions](const KernelArgs& a) {
            const Groups g = loss_groups(a.inputs[0].shape);
            if (g.outer * g.inner <= positions) {
              sce_loss<T>(a, cfg, static_cast<double*>(a.workspace));
            } else {
              std::vector<double> buffer(static_cast<size_t>(g.outer * g.inner) * 2);
              sce_loss<T>(a, cfg, buffer.data());
            }
          },
          ws);
    });
  };
}

// dScores = (exp(log_prob) - onehot(label)) * w[label] * dLoss / denominator; 0 where the
// label is ignored.
template <typename T>
void sce_loss_grad(const KernelArgs& a, const LossConfig& cfg) {
  const Groups g = loss_groups(a.inputs[1].shape);
  const T* dloss = a.inputs[0].as<T>();
  const T* lp = a.inputs[1].as<T>();
  const T* w = a.inputs.size() > 3 && a.inputs[3].present() ? a.inputs[3].as<T>() : nullptr;
  const std::vector<int64_t> labels = labels_of(a.inputs[2], g.d, cfg);
  T* dx = a.outputs[0].as<T>();
  const bool none = cfg.reduction == LossConfig::Reduction::none;
  const math::LabelRule rule = cfg.label_rule(g.d);
  // labels_of checked every label: valid or ignored.
  auto ignored = [&](int64_t y) { return math::label_kind(y, rule) != math::LabelKind::valid; };
  double scale = 1.0;  // dLoss / denominator for mean and sum
  if (!none) {
    scale = static_cast<double>(dloss[0]);
    if (cfg.reduction == LossConfig::Reduction::mean) {
      const int64_t positions = static_cast<int64_t>(labels.size());
      const double denom = lane_sum(positions, [&](int64_t p) {
        const int64_t y = labels[p];
        return ignored(y) ? 0.0 : math::label_weight(w, y);
      });
      scale /= denom;
    }
  }
  for_each_block(g, [&](int64_t o, int64_t j0, int64_t len) {
    const int64_t base = o * g.d * g.inner + j0;
    double k[kBlock];
    int64_t yb[kBlock];
    for (int64_t j = 0; j < len; ++j) {
      const int64_t p = o * g.inner + j0 + j;
      const int64_t y = labels[p];
      yb[j] = y;
      if (ignored(y)) {
        k[j] = 0;
        yb[j] = -1;
      } else {
        k[j] = math::label_weight(w, y) * (none ? static_cast<double>(dloss[p]) : scale);
      }
    }
    for (int64_t c = 0; c < g.d; ++c)
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = base + c * g.inner + j;
        dx[i] = yb[j] < 0 ? T(0) : math::sce_grad_element(lp[i], c == yb[j], k[j]);
      }
  });
}

KernelFactory sce_loss_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    LossConfig cfg = loss_config(n);
    DType dt = float_input(n, 1);
    if (float_input(n, 0) != dt)
      throw Error(cfg.what + ": dLoss and log_prob have different element types");
    if (n.input(1)->shape.size() < 2)
      throw Error(cfg.what + ": log_prob " + n.input(1)->shape_string() +
                  " must be [N, C, ...]");
    check_labels_type(n, 2);
    if (n.input(3) && float_input(n, 3) != dt)
      throw Error(cfg.what + ": weights and log_prob have different element types");
    return dispatch_float(dt, cfg.what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([cfg](const KernelArgs& a) { sce_loss_grad<T>(a, cfg); });
    });
  };
}

}  // namespace

void register_cpu_loss_kernels(KernelRegistry& registry) {
  registry.add("", "Softmax", Device::cpu, softmax_factory<false>());
  registry.add("oxtrain", "SoftmaxGrad", Device::cpu, softmax_grad_factory<false>());
  registry.add("", "LogSoftmax", Device::cpu, softmax_factory<true>());
  registry.add("oxtrain", "LogSoftmaxGrad", Device::cpu, softmax_grad_factory<true>());
  registry.add("", "SoftmaxCrossEntropyLoss", Device::cpu, sce_loss_factory());
  registry.add("oxtrain", "SoftmaxCrossEntropyLossGrad", Device::cpu, sce_loss_grad_factory());
}

}  // namespace oxtrain::runtime
