// CPU kernels of the normalization family: LayerNormalization and oxtrain.LayerNormalizationGrad,
// ReduceSum and oxtrain.ReduceSumGrad, ReduceMax and ReduceMin. (MatMul, Softmax and ReduceMean on any axes are the
// core kernels of runtime/cpu/matmul.cc, loss.cc and elementwise.cc.) Every kernel writes (=)
// its outputs.
//
// LayerNormalization: one row (the dims from axis on) per unit of work, rows spread over
// threads; each row's sums are in double in a fixed order (cpu::lane_sum), so results are
// bit-identical whatever the thread count. A row is read whole (its statistics) before any of
// its outputs is written, and element j is written only after it was read: Y may share X's
// buffer. The gradient's dScale and dB are sums over rows: blocks of columns are spread over
// threads, each adding the rows in order. The per-element math is runtime/math/normalization.h,
// shared with the CUDA kernels.
//
// ReduceSum runs the oxtrain.ReduceSumTo kernel (the reduction behind broadcast gradients) on
// the shape with the reduced dims kept as 1; ReduceSumGrad broadcasts dY back.
#include <algorithm>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/normalization.h"

namespace oxtrain::runtime {

namespace math {

graph::Shape reduce_node_keep_shape(const graph::Node& n, int64_t opset, int64_t axes_input_opset,
                                    const graph::Shape& x) {
  const std::string what = n.describe();
  std::vector<int64_t> axes;
  if (opset < axes_input_opset) {
    axes = n.attr_ints("axes");
  } else if (const graph::Value* a = n.input(1)) {
    if (!a->has_data())
      throw Error(what + ": the axes '" + a->name + "' must be a constant of the graph (read when it is compiled)");
    axes = a->data->to_int64();
  }
  const bool noop = opset >= axes_input_opset && n.attr_int("noop_with_empty_axes", 0) != 0;
  const graph::Shape kept = reduced_keep_shape(x, axes, noop, what);
  const graph::Value* y = n.output(0);
  if (!y || y->numel() != graph::shape_numel(kept))
    throw Error(what + ": the output " + (y ? y->shape_string() : std::string("(missing)")) +
                " does not hold the reduction of " + graph::shape_str(x) + " over axes " + graph::shape_str(axes));
  return kept;
}

}  // namespace math

namespace {

using cpu::dispatch_float;
using cpu::kParallelMin;
using cpu::lane_sum;

const graph::Value& input_value(const Node& n, size_t i, const char* role) {
  const graph::Value* v = n.input(i);
  if (!v) throw Error(n.describe() + ": input " + std::to_string(i) + " (" + role + ") is missing");
  if (!v->rank_known || !graph::shape_known(v->shape))
    throw Error(n.describe() + ": the shape of " + role + " '" + v->name + "' is unknown " + v->shape_string());
  return *v;
}

DType float_of(const Node& n, const graph::Value& v, const char* role) {
  if (v.dtype != DType::f32 && v.dtype != DType::f64)
    throw Error(n.describe() + ": " + role + " '" + v.name + "' is " + graph::dtype_name(v.dtype) +
                "; the CPU kernel handles float32 and float64");
  return v.dtype;
}

void require_dtype(const Node& n, const graph::Value* v, DType want, const char* role) {
  if (v && v->dtype != want)
    throw Error(n.describe() + ": " + role + " '" + v->name + "' is " + graph::dtype_name(v->dtype) + ", expected " +
                graph::dtype_name(want));
}

int64_t axis_of(const Node& n, int64_t rank) {
  const int64_t axis = n.attr_int("axis", -1);
  if (axis < -rank || axis >= rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

// Scale and B offsets of position j (the layout's index; j itself when contiguous).
struct Offsets {
  const math::ScaleIndex* index;
  void operator()(int64_t j, int64_t& s, int64_t& b) const { math::scale_offsets(*index, j, s, b); }
};

// ---------------------------------------------------------------------------------------
// LayerNormalization: X, Scale, B? -> Y, Mean?, InvStdDev? (U = float for float X, double for
// double X).

template <typename T>
void layer_norm(const T* x, const T* scale, const T* bias, T* y, T* mean_out, T* inv_out, double epsilon,
                const math::LayerNormLayout& l) {
  const int64_t d = l.d;
  const Offsets at{&l.scale};
#pragma omp parallel for schedule(static) if (l.rows * d >= kParallelMin && l.rows > 1)
  for (int64_t r = 0; r < l.rows; ++r) {
    const T* xr = x + r * d;
    T* yr = y + r * d;
    const double mean = lane_sum(d, [xr](int64_t j) { return xr[j]; }) / static_cast<double>(d);
    const double var =
        lane_sum(d, [xr, mean](int64_t j) { return math::ln_centered_square(xr[j], mean); }) / static_cast<double>(d);
    const T mu = static_cast<T>(mean), inv = static_cast<T>(math::ln_inv_std(var, epsilon));
    if (mean_out) mean_out[r] = mu;
    if (inv_out) inv_out[r] = inv;
    for (int64_t j = 0; j < d; ++j) {
      int64_t s, b;
      at(j, s, b);
      yr[j] = math::ln_output(xr[j], mu, inv, scale[s], bias ? bias[b] : T(0));
    }
  }
}

KernelFactory layer_norm_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0, "X");
    const DType dt = float_of(n, x, "X");
    const graph::Value& scale = input_value(n, 1, "Scale");
    require_dtype(n, &scale, dt, "Scale");
    const graph::Value* bias = n.input(2);
    if (bias) require_dtype(n, &input_value(n, 2, "B"), dt, "B");
    if (!n.output(0)) throw Error(what + ": output Y is missing");
    if (n.attr_int("stash_type", 1) != 1)
      throw Error(what + ": stash_type " + std::to_string(n.attr_int("stash_type", 1)) + " is not supported (1 is)");
    for (size_t i = 1; i < 3; ++i) require_dtype(n, n.output(i), dt, i == 1 ? "Mean" : "InvStdDev");
    const int64_t axis = axis_of(n, static_cast<int64_t>(x.shape.size()));
    const math::LayerNormLayout layout =
        math::layer_norm_layout(x.shape, axis, scale.shape, bias ? &bias->shape : nullptr, what);
    const double epsilon = n.attr_float("epsilon", 1e-5f);
    const graph::Shape xs = x.shape;
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([=](const KernelArgs& a) {
        if (a.inputs[0].shape != xs)
          throw Error(what + ": X has shape " + graph::shape_str(a.inputs[0].shape) + " at run time, " +
                      graph::shape_str(xs) + " when compiled");
        const T* pb = a.inputs.size() > 2 && a.inputs[2].present() ? a.inputs[2].as<T>() : nullptr;
        T* mean = a.outputs.size() > 1 && a.outputs[1].present() ? a.outputs[1].as<T>() : nullptr;
        T* inv = a.outputs.size() > 2 && a.outputs[2].present() ? a.outputs[2].as<T>() : nullptr;
        layer_norm(a.inputs[0].as<T>(), a.inputs[1].as<T>(), pb, a.outputs[0].as<T>(), mean, inv, epsilon, layout);
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// oxtrain.LayerNormalizationGrad: dY, X, Scale, Mean, InvStdDev -> dX, dScale, dB (the last two
// over the normalized dims, full shape: the layout's Scale index maps each position to its
// Scale element for dX only).

template <typename T>
void layer_norm_grad_input(const T* dy, const T* x, const T* scale, const T* mean, const T* inv, T* dx,
                           const math::LayerNormLayout& l) {
  const int64_t d = l.d;
  const Offsets at{&l.scale};
#pragma omp parallel for schedule(static) if (l.rows * d >= kParallelMin && l.rows > 1)
  for (int64_t r = 0; r < l.rows; ++r) {
    const T* dyr = dy + r * d;
    const T* xr = x + r * d;
    T* dxr = dx + r * d;
    const T mu = mean[r], is = inv[r];
    auto g_of = [&](int64_t j) {
      int64_t s, b;
      at(j, s, b);
      return math::ln_grad_g(dyr[j], scale[s]);
    };
    const double sum_g = lane_sum(d, g_of);
    const double sum_gx = lane_sum(d, [&](int64_t j) { return g_of(j) * math::ln_xhat(xr[j], mu, is); });
    for (int64_t j = 0; j < d; ++j)
      dxr[j] = math::ln_grad_input<T>(g_of(j), math::ln_xhat(xr[j], mu, is), static_cast<double>(is), sum_g, sum_gx,
                                      d);
  }
}

template <typename T>
void layer_norm_grad_params(const T* dy, const T* x, const T* mean, const T* inv, T* dscale, T* dbias,
                            const math::LayerNormLayout& l) {
  constexpr int64_t kBlock = 256;
  const int64_t d = l.d, nb = (d + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (l.rows * d >= kParallelMin && nb > 1)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t j0 = blk * kBlock, len = std::min(kBlock, d - j0);
    double acc_s[kBlock], acc_b[kBlock];
    for (int64_t j = 0; j < len; ++j) acc_s[j] = acc_b[j] = 0;
    for (int64_t r = 0; r < l.rows; ++r) {
      const T* dyr = dy + r * d + j0;
      const T* xr = x + r * d + j0;
      const T mu = mean[r], is = inv[r];
      for (int64_t j = 0; j < len; ++j) {
        acc_s[j] += static_cast<double>(dyr[j]) * math::ln_xhat(xr[j], mu, is);
        acc_b[j] += static_cast<double>(dyr[j]);
      }
    }
    for (int64_t j = 0; j < len; ++j) {
      if (dscale) dscale[j0 + j] = static_cast<T>(acc_s[j]);
      if (dbias) dbias[j0 + j] = static_cast<T>(acc_b[j]);
    }
  }
}

KernelFactory layer_norm_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = input_value(n, 0, "dY");
    const graph::Value& x = input_value(n, 1, "X");
    const graph::Value& scale = input_value(n, 2, "Scale");
    const DType dt = float_of(n, x, "X");
    require_dtype(n, &dy, dt, "dY");
    require_dtype(n, &scale, dt, "Scale");
    if (dy.shape != x.shape)
      throw Error(what + ": dY " + dy.shape_string() + " and X " + x.shape_string() + " differ");
    const int64_t axis = axis_of(n, static_cast<int64_t>(x.shape.size()));
    const math::LayerNormLayout layout = math::layer_norm_layout(x.shape, axis, scale.shape, nullptr, what);
    for (size_t i = 3; i < 5; ++i) {
      const graph::Value& s = input_value(n, i, i == 3 ? "Mean" : "InvStdDev");
      require_dtype(n, &s, dt, i == 3 ? "Mean" : "InvStdDev");
      if (s.numel() != layout.rows)
        throw Error(what + ": " + (i == 3 ? "Mean" : "InvStdDev") + " has " + std::to_string(s.numel()) +
                    " elements, X " + x.shape_string() + " has " + std::to_string(layout.rows) + " rows before axis " +
                    std::to_string(axis));
    }
    const graph::Shape normalized(x.shape.begin() + axis, x.shape.end());
    for (size_t i = 1; i < 3; ++i)
      if (const graph::Value* o = n.output(i); o && o->shape != normalized)
        throw Error(what + ": output " + std::to_string(i) + " has shape " + o->shape_string() + ", expected " +
                    graph::shape_str(normalized));
    const graph::Shape xs = x.shape;
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([=](const KernelArgs& a) {
        if (a.inputs[1].shape != xs)
          throw Error(what + ": X has shape " + graph::shape_str(a.inputs[1].shape) + " at run time, " +
                      graph::shape_str(xs) + " when compiled");
        const T* pdy = a.inputs[0].as<T>();
        const T* px = a.inputs[1].as<T>();
        const T* mean = a.inputs[3].as<T>();
        const T* inv = a.inputs[4].as<T>();
        auto out = [&](size_t i) { return a.outputs.size() > i && a.outputs[i].present() ? a.outputs[i].as<T>() : nullptr; };
        if (out(1) || out(2)) layer_norm_grad_params(pdy, px, mean, inv, out(1), out(2), layout);
        if (out(0)) layer_norm_grad_input(pdy, px, a.inputs[2].as<T>(), mean, inv, out(0), layout);
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// ReduceSum through oxtrain.ReduceSumTo.

class ReduceSumKernel final : public Kernel {
 public:
  ReduceSumKernel(const KernelInit& init, const graph::Shape& x, const graph::Shape& kept, DType dt) : kept_(kept) {
    graph::Value* xv = graph_.add_value("x", dt, x, graph::Role::Input);
    graph::Value* yv = graph_.add_value("y", dt, kept);
    xv->rank_known = yv->rank_known = true;
    graph::Node* n = graph_.add_node("ReduceSumTo", {xv}, {yv}, init.node.name, "oxtrain");
    n->attrs["shape"].value = std::vector<int64_t>(kept);
    const KernelFactory* f = KernelRegistry::global().find("oxtrain", "ReduceSumTo", init.device);
    if (!f) throw Error(init.node.describe() + ": no oxtrain.ReduceSumTo kernel on " + device_name(init.device));
    inner_ = (*f)(KernelInit{*n, 1, init.device, init.context, init.precision});
  }
  size_t workspace_bytes() const override { return inner_->workspace_bytes(); }
  void run(const KernelArgs& args) override {
    KernelArgs a = args;
    a.inputs.resize(1);
    a.outputs.resize(1);
    a.outputs[0].shape = kept_;
    inner_->run(a);
  }

 private:
  graph::Graph graph_;
  graph::Shape kept_;
  std::unique_ptr<Kernel> inner_;
};

KernelFactory reduce_sum_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0, "data");
    const DType dt = float_of(n, x, "data");
    const graph::Shape kept = math::reduce_node_keep_shape(n, init.opset, 13, x.shape);
    return std::make_unique<ReduceSumKernel>(init, x.shape, kept, dt);
  };
}

// ReduceMax / ReduceMin (runtime/math/normalization.h): one output per loop iteration.
template <bool kMax>
KernelFactory reduce_extreme_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = input_value(n, 0, "data");
    const DType dt = x.dtype;
    const graph::Shape kept = math::reduce_node_keep_shape(n, init.opset, 18, x.shape);
    const math::ExtremePlan plan = math::make_extreme_plan(x.shape, kept, what);
    // Numbers of any type, and bools (0 or 1): Max is any, Min is all.
    return cpu::dispatch_number(dt, what, [&](auto tag) {
      using T = decltype(tag);
      const T empty = dt == DType::boolean ? T(kMax ? 0 : 1) : math::extreme_identity<T, kMax>();
      return make_kernel([plan, empty](const KernelArgs& a) {
        const T* x = a.inputs[0].as<T>();
        T* y = a.outputs[0].as<T>();
        switch (plan.kind) {
          case math::ExtremePlan::nothing: return;
          case math::ExtremePlan::fill:
            std::fill(y, y + plan.ny, empty);
            return;
          case math::ExtremePlan::copy:
            if (x != y) std::copy(x, x + plan.ny, y);
            return;
          default: break;
        }
#pragma omp parallel for schedule(static) if (plan.ny * plan.rows * plan.inner >= kParallelMin && plan.ny > 1)
        for (int64_t j = 0; j < plan.ny; ++j) y[j] = math::reduce_extreme_at<T, kMax>(x, plan, j);
      });
    });
  };
}

// oxtrain.ReduceSumGrad: dX = dY broadcast along the reduced axes.
KernelFactory reduce_sum_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = input_value(n, 0, "dY");
    const DType dt = float_of(n, dy, "dY");
    const graph::Shape xs = n.attr_ints("input_shape");
    const std::vector<int64_t> axes = n.attr_ints("axes");
    const graph::Shape kept = math::reduced_keep_shape(xs, axes, false, what);
    if (dy.numel() != graph::shape_numel(kept))
      throw Error(what + ": dY " + dy.shape_string() + " does not fit input_shape " + graph::shape_str(xs) +
                  " reduced over axes " + graph::shape_str(axes));
    if (const graph::Value* o = n.output(0); !o || o->shape != xs)
      throw Error(what + ": the output must have input_shape " + graph::shape_str(xs));
    const math::StridedPlan plan = math::make_broadcast_plan(xs, {kept}, what);
    return dispatch_float(dt, what, [&](auto tag) {
      using T = decltype(tag);
      return make_kernel([plan](const KernelArgs& a) {
        const T* src = a.inputs[0].as<T>();
        T* dst = a.outputs[0].as<T>();
        const int64_t s = plan.inner_stride(0);
        cpu::for_each_segment(plan, [&](int64_t o, const int64_t* off, int64_t len) {
          for (int64_t i = 0; i < len; ++i) dst[o + i] = src[off[0] + i * s];
        });
      });
    });
  };
}

}  // namespace

void register_cpu_normalization_kernels(KernelRegistry& registry) {
  const Device cpu = Device::cpu;
  registry.add("", "LayerNormalization", cpu, layer_norm_factory());
  registry.add("oxtrain", "LayerNormalization", cpu, layer_norm_factory());
  registry.add("oxtrain", "LayerNormalizationGrad", cpu, layer_norm_grad_factory());
  registry.add("", "ReduceSum", cpu, reduce_sum_factory());
  registry.add("oxtrain", "ReduceSumGrad", cpu, reduce_sum_grad_factory());
  registry.add("", "ReduceMax", cpu, reduce_extreme_factory<true>());
  registry.add("", "ReduceMin", cpu, reduce_extreme_factory<false>());
}

}  // namespace oxtrain::runtime
