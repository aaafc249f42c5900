// Pooling on the CPU, float32 and float64: MaxPool, AveragePool, GlobalAveragePool and their
// gradients oxtrain.MaxPoolGrad, oxtrain.AveragePoolGrad, oxtrain.GlobalAveragePoolGrad.
//
// MaxPool and AveragePool are 2-D ([N,C,H,W]). The window of every output row and column is
// resolved once, when the kernel is made, into the range of kernel taps that fall inside the
// input, so padding costs nothing in the loops (for MaxPool it never wins; for AveragePool it
// only enters the divisor, as PyTorch's avg_pool2d does). Work is split over the N*C planes
// with OpenMP; each plane is one task with a fixed loop order, so gradients that accumulate
// (overlapping windows) are deterministic.
//
// A window that holds no input element at all (only possible when the padding is as wide as
// the window) gives MaxPool -inf with index -1 (which MaxPoolGrad skips) and AveragePool 0.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/node_checks.h"

namespace oxtrain::runtime {

namespace {

using cpu::float_dtype;
using cpu::grad_input_shape;
using cpu::join;
using cpu::required;
using cpu::shape_attr;

using graph::DType;

constexpr int64_t kParallelMin = 1 << 14;

// One output coordinate along one axis: taps [k_lo, k_hi) of the kernel land inside the input,
// starting at input coordinate `start` (tap k reads start + k * dilation); `span` counts the
// window's positions within the padded input (the AveragePool divisor with
// count_include_pad=1).
struct Tap {
  int64_t start, k_lo, k_hi, span;
};

std::vector<Tap> axis_taps(int64_t in, int64_t out, int64_t k, int64_t s, int64_t d,
                           int64_t pad_begin, int64_t pad_end) {
  std::vector<Tap> taps(out);
  for (int64_t o = 0; o < out; ++o) {
    int64_t start = o * s - pad_begin;
    int64_t lo = start >= 0 ? 0 : (-start + d - 1) / d;
    int64_t hi = in - start <= 0 ? 0 : (in - start + d - 1) / d;
    lo = std::min(lo, k);
    hi = std::clamp(hi, lo, k);
    // Window positions (dilation 1 for AveragePool) clipped to the padded input.
    int64_t span = std::min(start + k, in + pad_end) - start;
    taps[o] = {start, lo, hi, std::max<int64_t>(span, 0)};
  }
  return taps;
}

struct PoolGeom {
  int64_t N = 0, C = 0, H = 0, W = 0, oH = 0, oW = 0;
  int64_t dH = 1, dW = 1;
  std::vector<Tap> rows, cols;  // per output row / column
};

// Geometry of a 2-D pooling node on input shape `x`; checks `y` (the pooled shape).
PoolGeom pool_geometry(const graph::Node& node, const graph::Shape& x, const graph::Shape& y,
                       bool ceil_mode) {
  if (x.size() != 4)
    throw Error(node.describe() + ": only 2-D pooling is supported on the CPU (input " +
                join(x) + ")");
  for (int64_t d : x)
    if (d < 0) throw Error(node.describe() + ": input shape " + join(x) + " is not known");
  if (!node.has_attr("kernel_shape"))
    throw Error(node.describe() + ": attribute kernel_shape is required");
  std::vector<int64_t> kernel = node.attr_ints("kernel_shape");
  if (kernel.size() != 2)
    throw Error(node.describe() + ": kernel_shape " + join(kernel) + " does not fit input " +
                join(x));
  graph::WindowGeometry wg = graph::window_geometry(node, x, kernel, ceil_mode);
  PoolGeom g;
  g.N = x[0], g.C = x[1], g.H = x[2], g.W = x[3];
  g.oH = wg.output[0], g.oW = wg.output[1];
  g.dH = wg.dilations[0], g.dW = wg.dilations[1];
  graph::Shape expect{g.N, g.C, g.oH, g.oW};
  if (y != expect)
    throw Error(node.describe() + ": pooled shape " + join(y) + " does not match " +
                join(expect) + " computed from input " + join(x));
  g.rows = axis_taps(g.H, g.oH, kernel[0], wg.strides[0], g.dH, wg.pads_begin[0], wg.pads_end[0]);
  g.cols = axis_taps(g.W, g.oW, kernel[1], wg.strides[1], g.dW, wg.pads_begin[1], wg.pads_end[1]);
  return g;
}

bool ceil_mode_of(const KernelInit& init) {
  // ceil_mode exists from opset 10 of ai.onnx; the oxtrain gradient ops copy it as is.
  bool onnx = init.node.domain.empty() || init.node.domain == "ai.onnx";
  return (!onnx || init.opset >= 10) && init.node.attr_int("ceil_mode", 0) != 0;
}

// ---------------------------------------------------------------------------------------
// MaxPool.

template <typename T>
void max_pool(const PoolGeom& g, const T* x, T* y, int64_t* indices) {
  const int64_t planes = g.N * g.C, HW = g.H * g.W, P = g.oH * g.oW;
#pragma omp parallel for schedule(static) if (planes * P * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * HW;
    for (int64_t oh = 0; oh < g.oH; ++oh) {
      const Tap& r = g.rows[oh];
      for (int64_t ow = 0; ow < g.oW; ++ow) {
        const Tap& c = g.cols[ow];
        // Padding never wins: the first real element seeds the maximum. Ties keep the first
        // in row-major order; a NaN beats every number and the first NaN stays. (Written as
        // selects, not branches: random data mispredicts `v > best` a lot.)
        T best = -std::numeric_limits<T>::infinity();
        int64_t at = -1;
        if (r.k_lo < r.k_hi && c.k_lo < c.k_hi) {
          const int64_t h0 = r.start + r.k_lo * g.dH, w0 = c.start + c.k_lo * g.dW;
          at = h0 * g.W + w0;
          best = xp[at];
          bool nan = std::isnan(best);
          for (int64_t kh = r.k_lo; kh < r.k_hi; ++kh) {
            const int64_t h = r.start + kh * g.dH;
            const T* row = xp + h * g.W;
            for (int64_t kw = c.k_lo; kw < c.k_hi; ++kw) {
              const int64_t w = c.start + kw * g.dW;
              const T v = row[w];
              const bool v_nan = std::isnan(v);
              const bool take = (v > best) | (v_nan & !nan);
              best = take ? v : best;
              at = take ? h * g.W + w : at;
              nan |= v_nan;
            }
          }
        }
        const int64_t o = pl * P + oh * g.oW + ow;
        y[o] = best;
        if (indices) indices[o] = at < 0 ? -1 : pl * HW + at;
      }
    }
  }
}

// dx = 0, then dx[indices[i]] += dy[i]. An index of plane p normally lies in plane p, so the
// planes run in parallel; any other (in-range) index is handled afterwards, serially.
template <typename T>
void max_pool_grad(int64_t planes, int64_t HW, int64_t P, const T* dy, const int64_t* indices,
                   T* dx) {
  const int64_t total = planes * HW;
  int64_t strays = 0;
#pragma omp parallel for schedule(static) reduction(+ : strays) if (planes * (HW + P) >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* dxp = dx + pl * HW;
    std::fill(dxp, dxp + HW, T(0));
    const int64_t lo = pl * HW;
    for (int64_t i = pl * P; i < (pl + 1) * P; ++i) {
      const int64_t at = indices[i] - lo;
      if (at >= 0 && at < HW)
        dxp[at] += dy[i];
      else
        ++strays;
    }
  }
  if (strays == 0) return;
  for (int64_t pl = 0; pl < planes; ++pl)
    for (int64_t i = pl * P; i < (pl + 1) * P; ++i) {
      const int64_t at = indices[i];
      if ((at < pl * HW || at >= (pl + 1) * HW) && at >= 0 && at < total) dx[at] += dy[i];
    }
}

// ---------------------------------------------------------------------------------------
// AveragePool.

// The divisor of output (oh, ow): the window's size clipped to the padded input with
// count_include_pad, else the number of real elements in it.
inline int64_t avg_divisor(const Tap& r, const Tap& c, bool include_pad) {
  return include_pad ? r.span * c.span : (r.k_hi - r.k_lo) * (c.k_hi - c.k_lo);
}

template <typename T>
void avg_pool(const PoolGeom& g, bool include_pad, const T* x, T* y) {
  const int64_t planes = g.N * g.C, HW = g.H * g.W, P = g.oH * g.oW;
#pragma omp parallel for schedule(static) if (planes * P * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * HW;
    T* yp = y + pl * P;
    for (int64_t oh = 0; oh < g.oH; ++oh) {
      const Tap& r = g.rows[oh];
      for (int64_t ow = 0; ow < g.oW; ++ow) {
        const Tap& c = g.cols[ow];
        T sum = 0;
        for (int64_t h = r.start + r.k_lo; h < r.start + r.k_hi; ++h) {
          const T* row = xp + h * g.W + c.start;
          for (int64_t kw = c.k_lo; kw < c.k_hi; ++kw) sum += row[kw];
        }
        const int64_t div = avg_divisor(r, c, include_pad);
        yp[oh * g.oW + ow] = div > 0 ? sum / static_cast<T>(div) : T(0);
      }
    }
  }
}

// The adjoint: dx = 0, then every window adds dy / divisor to its real elements.
template <typename T>
void avg_pool_grad(const PoolGeom& g, bool include_pad, const T* dy, T* dx) {
  const int64_t planes = g.N * g.C, HW = g.H * g.W, P = g.oH * g.oW;
#pragma omp parallel for schedule(static) if (planes * (HW + 4 * P) >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* dxp = dx + pl * HW;
    const T* dyp = dy + pl * P;
    std::fill(dxp, dxp + HW, T(0));
    for (int64_t oh = 0; oh < g.oH; ++oh) {
      const Tap& r = g.rows[oh];
      for (int64_t ow = 0; ow < g.oW; ++ow) {
        const Tap& c = g.cols[ow];
        const int64_t div = avg_divisor(r, c, include_pad);
        if (div == 0) continue;
        const T v = dyp[oh * g.oW + ow] / static_cast<T>(div);
        for (int64_t h = r.start + r.k_lo; h < r.start + r.k_hi; ++h) {
          T* row = dxp + h * g.W + c.start;
          for (int64_t kw = c.k_lo; kw < c.k_hi; ++kw) row[kw] += v;
        }
      }
    }
  }
}

PoolGeom avg_geometry(const KernelInit& init, const graph::Shape& x, const graph::Shape& y) {
  const graph::Node& n = init.node;
  PoolGeom g = pool_geometry(n, x, y, ceil_mode_of(init));
  if (g.dH != 1 || g.dW != 1)
    throw Error(n.describe() + ": dilations " + join(n.attr_ints("dilations")) +
                " are not supported by the CPU AveragePool");
  return g;
}

// ---------------------------------------------------------------------------------------
// GlobalAveragePool: any rank >= 3, the spatial dims flattened.

template <typename T>
void global_avg_pool(int64_t planes, int64_t size, const T* x, T* y) {
#pragma omp parallel for schedule(static) if (planes * size >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * size;
    double sum = 0;  // double even for float32: the planes can be large
    for (int64_t i = 0; i < size; ++i) sum += xp[i];
    y[pl] = size > 0 ? static_cast<T>(sum / static_cast<double>(size)) : T(0);
  }
}

template <typename T>
void global_avg_pool_grad(int64_t planes, int64_t size, const T* dy, T* dx) {
#pragma omp parallel for schedule(static) if (planes * size >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T v = dy[pl] / static_cast<T>(size);
    std::fill(dx + pl * size, dx + (pl + 1) * size, v);
  }
}

// [N, C, spatial...]: N*C planes of prod(spatial) elements.
void global_split(const graph::Node& n, const graph::Shape& x, int64_t& planes, int64_t& size) {
  if (x.size() < 3)
    throw Error(n.describe() + ": input " + join(x) + " needs rank 3 or more");
  for (int64_t d : x)
    if (d < 0) throw Error(n.describe() + ": input shape " + join(x) + " is not known");
  planes = x[0] * x[1];
  size = 1;
  for (size_t i = 2; i < x.size(); ++i) size *= x[i];
}

graph::Shape global_pooled(graph::Shape x) {
  std::fill(x.begin() + 2, x.end(), 1);
  return x;
}

template <typename F>
std::unique_ptr<Kernel> by_dtype(DType dt, F&& f) {
  if (dt == DType::f64) return f(double{});
  return f(float{});
}

}  // namespace

void register_cpu_pool_kernels(KernelRegistry& registry) {
  registry.add("", "MaxPool", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    DType dt = float_dtype(n, {x, y});
    if (n.attr_int("storage_order", 0) != 0)
      throw Error(n.describe() + ": storage_order=" +
                  std::to_string(n.attr_int("storage_order", 0)) +
                  " (column-major indices) is not supported on the CPU");
    if (const graph::Value* idx = n.output(1)) {
      if (idx->dtype != DType::i64)
        throw Error(n.describe() + ": Indices '" + idx->name + "' must be int64, got " +
                    graph::dtype_name(idx->dtype));
      if (idx->shape != y->shape)
        throw Error(n.describe() + ": Indices shape " + join(idx->shape) +
                    " differs from the output's " + join(y->shape));
    }
    PoolGeom g = pool_geometry(n, x->shape, y->shape, ceil_mode_of(init));
    return by_dtype(dt, [g](auto zero) {
      using T = decltype(zero);
      return make_kernel([g](const KernelArgs& a) {
        PoolGeom run = g;
        run.N = a.inputs[0].shape[0];
        int64_t* idx = a.outputs.size() > 1 && a.outputs[1].present()
                           ? a.outputs[1].as<int64_t>()
                           : nullptr;
        max_pool<T>(run, a.inputs[0].as<T>(), a.outputs[0].as<T>(), idx);
      });
    });
  });

  registry.add(graph::kOxtrainDomain, "MaxPoolGrad", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* dy = required(n, 0);
    const graph::Value* idx = required(n, 1);
    const graph::Value* dx = required(n, 0, true);
    DType dt = float_dtype(n, {dy, dx});
    graph::Shape x_shape = grad_input_shape(n, dx);
    if (idx->dtype != DType::i64 || idx->shape != dy->shape)
      throw Error(n.describe() + ": Indices '" + idx->name + "' must be int64 of dY's shape " +
                  join(dy->shape) + ", got " + graph::dtype_name(idx->dtype) + " " +
                  join(idx->shape));
    if (x_shape.size() < 3 || dy->shape.size() != x_shape.size() || dy->shape[0] != x_shape[0] ||
        dy->shape[1] != x_shape[1])
      throw Error(n.describe() + ": dY " + join(dy->shape) + " does not fit input_shape " +
                  join(x_shape));
    int64_t HW = 1, P = 1;
    for (size_t i = 2; i < x_shape.size(); ++i) HW *= x_shape[i], P *= dy->shape[i];
    return by_dtype(dt, [HW, P](auto zero) {
      using T = decltype(zero);
      return make_kernel([HW, P](const KernelArgs& a) {
        const graph::Shape& s = a.inputs[0].shape;
        max_pool_grad<T>(s[0] * s[1], HW, P, a.inputs[0].as<T>(), a.inputs[1].as<int64_t>(),
                         a.outputs[0].as<T>());
      });
    });
  });

  registry.add("", "AveragePool", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    DType dt = float_dtype(n, {x, y});
    PoolGeom g = avg_geometry(init, x->shape, y->shape);
    bool include_pad = n.attr_int("count_include_pad", 0) != 0;
    return by_dtype(dt, [g, include_pad](auto zero) {
      using T = decltype(zero);
      return make_kernel([g, include_pad](const KernelArgs& a) {
        PoolGeom run = g;
        run.N = a.inputs[0].shape[0];
        avg_pool<T>(run, include_pad, a.inputs[0].as<T>(), a.outputs[0].as<T>());
      });
    });
  });

  registry.add(graph::kOxtrainDomain, "AveragePoolGrad", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* dy = required(n, 0);
    const graph::Value* dx = required(n, 0, true);
    DType dt = float_dtype(n, {dy, dx});
    graph::Shape x_shape = grad_input_shape(n, dx);
    PoolGeom g = avg_geometry(init, x_shape, dy->shape);
    bool include_pad = n.attr_int("count_include_pad", 0) != 0;
    return by_dtype(dt, [g, include_pad](auto zero) {
      using T = decltype(zero);
      return make_kernel([g, include_pad](const KernelArgs& a) {
        PoolGeom run = g;
        run.N = a.inputs[0].shape[0];
        avg_pool_grad<T>(run, include_pad, a.inputs[0].as<T>(), a.outputs[0].as<T>());
      });
    });
  });

  registry.add("", "GlobalAveragePool", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    DType dt = float_dtype(n, {x, y});
    int64_t planes, size;
    global_split(n, x->shape, planes, size);
    if (y->shape != global_pooled(x->shape))
      throw Error(n.describe() + ": output shape " + join(y->shape) + " does not match input " +
                  join(x->shape));
    return by_dtype(dt, [size](auto zero) {
      using T = decltype(zero);
      return make_kernel([size](const KernelArgs& a) {
        const graph::Shape& s = a.inputs[0].shape;
        global_avg_pool<T>(s[0] * s[1], size, a.inputs[0].as<T>(), a.outputs[0].as<T>());
      });
    });
  });

  registry.add(graph::kOxtrainDomain, "GlobalAveragePoolGrad", Device::cpu,
               [](const KernelInit& init) {
                 const graph::Node& n = init.node;
                 const graph::Value* dy = required(n, 0);
                 const graph::Value* dx = required(n, 0, true);
                 DType dt = float_dtype(n, {dy, dx});
                 graph::Shape x_shape = grad_input_shape(n, dx);
                 int64_t planes, size;
                 global_split(n, x_shape, planes, size);
                 if (dy->shape != global_pooled(x_shape))
                   throw Error(n.describe() + ": dY " + join(dy->shape) +
                               " does not fit input_shape " + join(x_shape));
                 return by_dtype(dt, [size](auto zero) {
                   using T = decltype(zero);
                   return make_kernel([size](const KernelArgs& a) {
                     const graph::Shape& s = a.inputs[0].shape;
                     global_avg_pool_grad<T>(s[0] * s[1], size, a.inputs[0].as<T>(),
                                             a.outputs[0].as<T>());
                   });
                 });
               });
}

}  // namespace oxtrain::runtime
