// Pooling on the CPU, float32 and float64: MaxPool, AveragePool, GlobalAveragePool and their
// gradients oxtrain.MaxPoolGrad (from MaxPool's Indices), oxtrain.MaxPoolGradFromInput (from
// MaxPool's input, each window's maximum found again), oxtrain.AveragePoolGrad,
// oxtrain.GlobalAveragePoolGrad. The gradients write (=) dX.
//
// MaxPool and AveragePool are 2-D ([N,C,H,W]). The window arithmetic (where a window lies,
// which outputs cover an input element, the maximum's ties and NaN, the divisor) lives in
// runtime/math/pool.h and is shared with the CUDA kernels (runtime/cuda/pool.cu). The window of
// every output row and column is resolved once, when the kernel is made, into the range of
// kernel taps that fall inside the input, so padding costs nothing in the loops (for MaxPool it
// never wins; for AveragePool it only enters the divisor, as PyTorch's avg_pool2d does). Work is
// split over the N*C planes with OpenMP; each plane is one task with a fixed loop order, so
// gradients that sum several windows (overlapping windows) are deterministic.
//
// A window that holds no input element at all (only possible when the padding is as wide as
// the window) gives MaxPool -inf with index -1 (which MaxPoolGrad skips) and AveragePool 0.
//
// This file also reads pooling nodes for both devices' factories (the host part of
// runtime/math/pool.h).
#include <algorithm>
#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/math/pool.h"

namespace oxtrain::runtime {

// ---------------------------------------------------------------------------------------
// Reading pooling nodes (runtime/math/pool.h).

namespace math {

using cpu::join;

const char* on_device(Device device) { return device == Device::cpu ? "the CPU" : "CUDA"; }

bool pool_ceil_mode(const graph::Node& node, int64_t opset) {
  bool onnx = node.domain.empty() || node.domain == "ai.onnx";
  return (!onnx || opset >= 10) && node.attr_int("ceil_mode", 0) != 0;
}

Pool2d pool_window_2d(const graph::Node& node, const graph::Shape& x, bool ceil_mode,
                      Device device) {
  if (x.size() != 4 && x.size() != 3)
    throw Error(node.describe() + (device == Device::cuda
                                       ? ": only 1-D, 2-D and 3-D pooling ([N,C,L], [N,C,H,W] or [N,C,D,H,W] input) "
                                         "is supported on CUDA (input "
                                       : ": only 1-D and 2-D pooling ([N,C,L] or [N,C,H,W] input) is supported on " +
                                             std::string(on_device(device)) + " (input ") +
                join(x) + ")");
  for (int64_t d : x)
    if (d < 0) throw Error(node.describe() + ": input shape " + join(x) + " is not known");
  if (!node.has_attr("kernel_shape"))
    throw Error(node.describe() + ": attribute kernel_shape is required");
  std::vector<int64_t> kernel = node.attr_ints("kernel_shape");
  if (kernel.size() != x.size() - 2)
    throw Error(node.describe() + ": kernel_shape " + join(kernel) + " does not fit input " +
                join(x));
  graph::WindowGeometry wg = graph::window_geometry(node, x, kernel, ceil_mode);
  Pool2d g;
  g.batch = x[0], g.channels = x[1];
  // 1-D pooling is 2-D pooling of one row.
  const size_t first = x.size() == 3 ? 1 : 0;
  g.rows = {1, 1, 1, 1, 1, 0, 0};
  PoolAxis* axes[2] = {&g.rows, &g.cols};
  for (size_t i = first; i < 2; ++i) {
    const size_t k = i - first;
    *axes[i] = {x[k + 2],          wg.output[k],     kernel[k],      wg.strides[k],
                wg.dilations[k], wg.pads_begin[k], wg.pads_end[k]};
  }
  return g;
}

Pool3d pool_geometry_3d(const graph::Node& node, const graph::Shape& x, const graph::Shape& y, bool ceil_mode) {
  if (x.size() != 5) throw Error(node.describe() + ": input " + join(x) + " is not [N, C, D, H, W]");
  for (int64_t d : x)
    if (d < 0) throw Error(node.describe() + ": input shape " + join(x) + " is not known");
  if (!node.has_attr("kernel_shape")) throw Error(node.describe() + ": attribute kernel_shape is required");
  const std::vector<int64_t> kernel = node.attr_ints("kernel_shape");
  if (kernel.size() != 3)
    throw Error(node.describe() + ": kernel_shape " + join(kernel) + " does not fit input " + join(x));
  const graph::WindowGeometry wg = graph::window_geometry(node, x, kernel, ceil_mode);
  Pool3d g;
  g.planes = x[0] * x[1];
  graph::Shape expect{x[0], x[1]};
  for (size_t k = 0; k < 3; ++k) {
    g.axes[k] = {x[k + 2], wg.output[k], kernel[k], wg.strides[k], wg.dilations[k], wg.pads_begin[k], wg.pads_end[k]};
    expect.push_back(wg.output[k]);
  }
  if (y != expect)
    throw Error(node.describe() + ": pooled shape " + join(y) + " does not match " + join(expect) +
                " computed from input " + join(x));
  return g;
}

void check_pooled_shape(const graph::Node& node, const Pool2d& g, const graph::Shape& y) {
  graph::Shape expect{g.batch, g.channels, g.rows.out, g.cols.out};
  if (y.size() == 3) expect.erase(expect.begin() + 2);  // 1-D: the one row is not an axis
  if (y != expect)
    throw Error(node.describe() + ": pooled shape " + join(y) + " does not match " +
                join(expect) + " computed from input " +
                join({g.batch, g.channels, g.rows.in, g.cols.in}));
}

bool check_max_pool_outputs(const graph::Node& node) {
  return check_max_pool_outputs(node, cpu::required(node, 0, true)->shape);
}

bool check_max_pool_outputs(const graph::Node& node, const graph::Shape& y) {
  const int64_t order = node.attr_int("storage_order", 0);
  if (order != 0 && order != 1)
    throw Error(node.describe() + ": storage_order=" + std::to_string(order) + " must be 0 (row-major) or 1 (column-major)");
  if (const graph::Value* idx = node.output(1)) {
    if (idx->dtype != DType::i64)
      throw Error(node.describe() + ": Indices '" + idx->name + "' must be int64, got " +
                  graph::dtype_name(idx->dtype));
    if (idx->shape != y)
      throw Error(node.describe() + ": Indices shape " + join(idx->shape) + " differs from the output's " + join(y));
  }
  return order == 1;
}

graph::Shape check_max_pool_grad(const graph::Node& node) {
  const graph::Value* dy = cpu::required(node, 0);
  const graph::Value* idx = cpu::required(node, 1);
  const graph::Value* dx = cpu::required(node, 0, true);
  graph::Shape x_shape = cpu::grad_input_shape(node, dx);
  if (idx->dtype != DType::i64 || idx->shape != dy->shape)
    throw Error(node.describe() + ": Indices '" + idx->name + "' must be int64 of dY's shape " +
                join(dy->shape) + ", got " + graph::dtype_name(idx->dtype) + " " +
                join(idx->shape));
  if (x_shape.size() < 3 || dy->shape.size() != x_shape.size() || dy->shape[0] != x_shape[0] ||
      dy->shape[1] != x_shape[1])
    throw Error(node.describe() + ": dY " + join(dy->shape) + " does not fit input_shape " +
                join(x_shape));
  for (int64_t d : dy->shape)
    if (d < 0) throw Error(node.describe() + ": dY shape " + join(dy->shape) + " is not known");
  for (int64_t d : x_shape)
    if (d < 0) throw Error(node.describe() + ": input_shape " + join(x_shape) + " is not known");
  return x_shape;
}

void check_max_pool_grad_from_input_values(const graph::Node& node) {
  const graph::Value* dy = cpu::required(node, 0);
  const graph::Value* x = cpu::required(node, 1);
  const graph::Value* dx = cpu::required(node, 0, true);
  if (dy->dtype != x->dtype || dx->dtype != x->dtype || !graph::is_float(x->dtype))
    throw Error(node.describe() + ": dY, X and dX must share one float type, got " + graph::dtype_name(dy->dtype) +
                ", " + graph::dtype_name(x->dtype) + ", " + graph::dtype_name(dx->dtype));
  if (dx->shape != x->shape)
    throw Error(node.describe() + ": dX " + join(dx->shape) + " must have X's shape " + join(x->shape));
}

Pool2d check_max_pool_grad_from_input(const graph::Node& node, int64_t opset, Device device) {
  check_max_pool_grad_from_input_values(node);
  const graph::Value* dy = node.input(0);
  const graph::Value* x = node.input(1);
  Pool2d g = pool_window_2d(node, x->shape, pool_ceil_mode(node, opset), device);
  check_pooled_shape(node, g, dy->shape);
  return g;
}

GlobalPlanes global_pool_planes(const graph::Node& node, const graph::Shape& x,
                                const graph::Shape& pooled, const char* pooled_name) {
  if (x.size() < 3)
    throw Error(node.describe() + ": input " + join(x) + " needs rank 3 or more");
  for (int64_t d : x)
    if (d < 0) throw Error(node.describe() + ": input shape " + join(x) + " is not known");
  graph::Shape expect = x;
  std::fill(expect.begin() + 2, expect.end(), 1);
  if (pooled != expect)
    throw Error(node.describe() + ": " + pooled_name + " " + join(pooled) +
                " does not fit input " + join(x) + " (expected " + join(expect) + ")");
  GlobalPlanes p;
  p.planes = x[0] * x[1];
  p.size = 1;
  for (size_t i = 2; i < x.size(); ++i) p.size *= x[i];
  return p;
}

}  // namespace math

namespace {

using cpu::float_dtype;
using cpu::grad_input_shape;
using cpu::required;

using graph::DType;
using math::Pool2d;
using math::PoolTaps;
using math::PoolWindow;

constexpr int64_t kParallelMin = 1 << 14;

// A 2-D pooling with the taps of every output row and column resolved ahead.
struct PoolPlan {
  Pool2d g;
  std::vector<PoolTaps> rows, cols;
};

PoolPlan pool_plan(const Pool2d& g) {
  PoolPlan p{g, std::vector<PoolTaps>(g.rows.out), std::vector<PoolTaps>(g.cols.out)};
  for (int64_t o = 0; o < g.rows.out; ++o) p.rows[o] = math::pool_taps(g.rows, o);
  for (int64_t o = 0; o < g.cols.out; ++o) p.cols[o] = math::pool_taps(g.cols, o);
  return p;
}

// The geometry of MaxPool / AveragePool / AveragePoolGrad: input `x`, pooled `y`.
Pool2d node_window(const KernelInit& init, const graph::Shape& x, const graph::Shape& y) {
  Pool2d g = math::pool_window_2d(init.node, x, math::pool_ceil_mode(init.node, init.opset),
                                  Device::cpu);
  math::check_pooled_shape(init.node, g, y);
  return g;
}

// ---------------------------------------------------------------------------------------
// MaxPool.

template <typename T>
void max_pool(const PoolPlan& p, int64_t batch, const T* x, T* y, int64_t* indices, bool column_major) {
  const Pool2d& g = p.g;
  const int64_t planes = batch * g.channels, HW = g.in_plane(), P = g.out_plane();
#pragma omp parallel for schedule(static) if (planes * P * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * HW;
    for (int64_t oh = 0; oh < g.rows.out; ++oh)
      for (int64_t ow = 0; ow < g.cols.out; ++ow) {
        const PoolWindow win{p.rows[oh], p.cols[ow], g.rows.dilation, g.cols.dilation};
        const math::MaxPick<T> m = math::max_window(xp, g.cols.in, win);
        const int64_t o = pl * P + oh * g.cols.out + ow;
        y[o] = m.value;
        if (indices) indices[o] = math::max_pool_index(g, pl, m.at, column_major);
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
    strays += math::max_pool_grad_scatter(math::MaxGradPlane{pl * HW, HW, P}, dy + pl * P,
                                          indices + pl * P, dxp);
  }
  if (strays == 0) return;
  for (int64_t pl = 0; pl < planes; ++pl)
    for (int64_t i = pl * P; i < (pl + 1) * P; ++i) {
      const int64_t at = indices[i];
      if ((at < pl * HW || at >= (pl + 1) * HW) && at >= 0 && at < total) dx[at] += dy[i];
    }
}

// MaxPoolGradFromInput: dx = 0, then each output's window finds its maximum in X again and
// adds dY there, outputs in ascending order.
template <typename T>
void max_pool_grad_from_input(const PoolPlan& p, int64_t batch, const T* dy, const T* x, T* dx) {
  const Pool2d& g = p.g;
  const int64_t planes = batch * g.channels, HW = g.in_plane(), P = g.out_plane();
#pragma omp parallel for schedule(static) if (planes * P * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * HW;
    const T* dyp = dy + pl * P;
    T* dxp = dx + pl * HW;
    std::fill(dxp, dxp + HW, T(0));
    for (int64_t oh = 0; oh < g.rows.out; ++oh)
      for (int64_t ow = 0; ow < g.cols.out; ++ow) {
        const PoolWindow win{p.rows[oh], p.cols[ow], g.rows.dilation, g.cols.dilation};
        const int64_t at = math::max_window(xp, g.cols.in, win).at;
        if (at >= 0) dxp[at] += dyp[oh * g.cols.out + ow];
      }
  }
}

// ---------------------------------------------------------------------------------------
// AveragePool.

template <typename T>
void avg_pool(const PoolPlan& p, int64_t batch, bool include_pad, const T* x, T* y) {
  const Pool2d& g = p.g;
  const int64_t planes = batch * g.channels, HW = g.in_plane(), P = g.out_plane();
#pragma omp parallel for schedule(static) if (planes * P * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * HW;
    T* yp = y + pl * P;
    for (int64_t oh = 0; oh < g.rows.out; ++oh)
      for (int64_t ow = 0; ow < g.cols.out; ++ow)
        yp[oh * g.cols.out + ow] =
            math::avg_window(xp, g.cols.in, PoolWindow{p.rows[oh], p.cols[ow], g.rows.dilation, g.cols.dilation},
                             include_pad);
  }
}

// The adjoint, gathered per input element: every window that holds it adds dY / divisor.
template <typename T>
void avg_pool_grad(const Pool2d& g, int64_t batch, bool include_pad, const T* dy, T* dx) {
  const int64_t planes = batch * g.channels, HW = g.in_plane(), P = g.out_plane();
#pragma omp parallel for schedule(static) if (planes * (HW + 4 * P) >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* dxp = dx + pl * HW;
    const T* dyp = dy + pl * P;
    for (int64_t h = 0; h < g.rows.in; ++h)
      for (int64_t w = 0; w < g.cols.in; ++w)
        dxp[h * g.cols.in + w] = math::avg_pool_grad_at(g, include_pad, dyp, h, w);
  }
}

// ---------------------------------------------------------------------------------------
// GlobalAveragePool: any rank >= 3, the spatial dims flattened.

template <typename T>
void global_avg_pool(int64_t planes, int64_t channels, int64_t size, const T* x, T* y) {
#pragma omp parallel for schedule(static) if (planes * size >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl)
    y[pl] = math::global_mean_output_at<T>(channels, size, false, pl, [x](int64_t j) { return x[j]; });
}

template <typename T>
void global_avg_pool_grad(int64_t planes, int64_t size, const T* dy, T* dx) {
#pragma omp parallel for schedule(static) if (planes * size >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl)
    std::fill(dx + pl * size, dx + (pl + 1) * size, math::global_mean_grad(dy[pl], size));
}

// ---------------------------------------------------------------------------------------
// Pooling over three or more spatial axes ([N, C, D, H, W], video models), on the CPU only:
// runtime/math/pool.h's per-axis window arithmetic (pool_taps) on every axis, windows read in
// row-major order, so ties, NaN, padding and the divisor behave as in 2-D.

struct PoolNd {
  int64_t in_plane = 1, out_plane = 1;
  std::vector<math::PoolAxis> axes;
  std::vector<std::vector<PoolTaps>> taps;  // per axis, per output coordinate
};

PoolNd pool_nd(const graph::Node& node, int64_t opset, const graph::Shape& x, const graph::Shape& y) {
  for (int64_t d : x)
    if (d < 0) throw Error(node.describe() + ": input shape " + cpu::join(x) + " is not known");
  if (!node.has_attr("kernel_shape")) throw Error(node.describe() + ": attribute kernel_shape is required");
  const std::vector<int64_t> kernel = node.attr_ints("kernel_shape");
  if (kernel.size() != x.size() - 2)
    throw Error(node.describe() + ": kernel_shape " + cpu::join(kernel) + " does not fit input " + cpu::join(x));
  const graph::WindowGeometry wg = graph::window_geometry(node, x, kernel, math::pool_ceil_mode(node, opset));
  PoolNd g;
  graph::Shape expect{x[0], x[1]};
  for (size_t k = 0; k < kernel.size(); ++k) {
    const math::PoolAxis a{x[k + 2], wg.output[k], kernel[k], wg.strides[k], wg.dilations[k], wg.pads_begin[k], wg.pads_end[k]};
    g.axes.push_back(a);
    std::vector<PoolTaps> taps(static_cast<size_t>(a.out));
    for (int64_t o = 0; o < a.out; ++o) taps[o] = math::pool_taps(a, o);
    g.taps.push_back(std::move(taps));
    g.in_plane *= a.in;
    g.out_plane *= a.out;
    expect.push_back(a.out);
  }
  if (y != expect)
    throw Error(node.describe() + ": pooled shape " + cpu::join(y) + " does not match " + cpu::join(expect) +
                " computed from input " + cpu::join(x));
  return g;
}

// Calls f(window of output o, as per-axis taps) for each output of a plane in row-major order.
template <typename F>
void for_each_window(const PoolNd& g, F&& f) {
  const size_t rank = g.axes.size();
  std::vector<int64_t> o(rank, 0);
  std::vector<const PoolTaps*> win(rank);
  for (int64_t flat = 0; flat < g.out_plane; ++flat) {
    for (size_t k = 0; k < rank; ++k) win[k] = &g.taps[k][o[k]];
    f(flat, win);
    for (size_t k = rank; k-- > 0;) {
      if (++o[k] < g.axes[k].out) break;
      o[k] = 0;
    }
  }
}

// Calls f(position in the plane) for each real element of a window, in row-major order.
template <typename F>
void for_each_tap(const PoolNd& g, const std::vector<const PoolTaps*>& win, F&& f) {
  const size_t rank = g.axes.size();
  for (size_t k = 0; k < rank; ++k)
    if (win[k]->k_lo >= win[k]->k_hi) return;
  std::vector<int64_t> t(rank);
  for (size_t k = 0; k < rank; ++k) t[k] = win[k]->k_lo;
  while (true) {
    int64_t at = 0;
    for (size_t k = 0; k < rank; ++k) at = at * g.axes[k].in + win[k]->start + t[k] * g.axes[k].dilation;
    f(at);
    size_t k = rank;
    while (k-- > 0) {
      if (++t[k] < win[k]->k_hi) break;
      t[k] = win[k]->k_lo;
    }
    if (k == static_cast<size_t>(-1)) return;
  }
}

// A position of the plane, row-major, as column-major (MaxPool's storage_order=1): the first
// axis innermost, as h + w * H in 2-D.
int64_t column_major_position(const PoolNd& g, int64_t at) {
  const size_t rank = g.axes.size();
  std::vector<int64_t> c(rank);
  for (size_t k = rank; k-- > 0;) {
    c[k] = at % g.axes[k].in;
    at /= g.axes[k].in;
  }
  int64_t out = 0, scale = 1;
  for (size_t k = 0; k < rank; ++k) {
    out += c[k] * scale;
    scale *= g.axes[k].in;
  }
  return out;
}

int64_t avg_divisor_nd(const std::vector<const PoolTaps*>& win, bool include_pad) {
  int64_t d = 1;
  for (const PoolTaps* t : win) d *= include_pad ? t->span : t->k_hi - t->k_lo;
  return d;
}

// A window's maximum and its position, as math::max_window picks in 2-D (the first real
// element seeds it; ties keep the first; NaN wins); -inf at -1 for a window without elements.
template <typename T>
math::MaxPick<T> window_max_nd(const PoolNd& g, const T* plane, const std::vector<const PoolTaps*>& win) {
  math::MaxPick<T> m{math::pool_lowest<T>(), -1, false};
  bool first = true;
  for_each_tap(g, win, [&](int64_t at) {
    if (first) m = {plane[at], at, math::pool_is_nan(plane[at])}, first = false;
    else math::max_pick(m, plane[at], at);
  });
  return m;
}

template <typename T>
void max_pool_nd(const PoolNd& g, int64_t batch_planes, const T* x, T* y, int64_t* indices, bool column_major) {
#pragma omp parallel for schedule(static) if (batch_planes * g.out_plane * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < batch_planes; ++pl) {
    const T* xp = x + pl * g.in_plane;
    for_each_window(g, [&](int64_t o, const std::vector<const PoolTaps*>& win) {
      const math::MaxPick<T> m = window_max_nd(g, xp, win);
      y[pl * g.out_plane + o] = m.value;
      if (indices)
        indices[pl * g.out_plane + o] = m.at < 0 ? -1 : pl * g.in_plane + (column_major ? column_major_position(g, m.at) : m.at);
    });
  }
}

template <typename T>
void avg_pool_nd(const PoolNd& g, int64_t batch_planes, bool include_pad, const T* x, T* y) {
#pragma omp parallel for schedule(static) if (batch_planes * g.out_plane * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < batch_planes; ++pl) {
    const T* xp = x + pl * g.in_plane;
    for_each_window(g, [&](int64_t o, const std::vector<const PoolTaps*>& win) {
      T sum = 0;
      for_each_tap(g, win, [&](int64_t at) { sum += xp[at]; });
      const int64_t div = avg_divisor_nd(win, include_pad);
      y[pl * g.out_plane + o] = div > 0 ? sum / static_cast<T>(div) : T(0);
    });
  }
}

// MaxPoolGradFromInput: dX = 0, then each output's window finds its maximum in X again and
// adds dY there, outputs in ascending order.
template <typename T>
void max_pool_grad_from_input_nd(const PoolNd& g, int64_t batch_planes, const T* dy, const T* x, T* dx) {
#pragma omp parallel for schedule(static) if (batch_planes * g.out_plane * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < batch_planes; ++pl) {
    T* dxp = dx + pl * g.in_plane;
    std::fill(dxp, dxp + g.in_plane, T(0));
    const T* xp = x + pl * g.in_plane;
    for_each_window(g, [&](int64_t o, const std::vector<const PoolTaps*>& win) {
      const math::MaxPick<T> m = window_max_nd(g, xp, win);
      if (m.at >= 0) dxp[m.at] += dy[pl * g.out_plane + o];
    });
  }
}

// The adjoint: dX = 0, then each output adds dY / divisor to its window's elements, outputs in
// ascending order.
template <typename T>
void avg_pool_grad_nd(const PoolNd& g, int64_t batch_planes, bool include_pad, const T* dy, T* dx) {
#pragma omp parallel for schedule(static) if (batch_planes * g.out_plane * 4 >= kParallelMin)
  for (int64_t pl = 0; pl < batch_planes; ++pl) {
    T* dxp = dx + pl * g.in_plane;
    std::fill(dxp, dxp + g.in_plane, T(0));
    for_each_window(g, [&](int64_t o, const std::vector<const PoolTaps*>& win) {
      const int64_t div = avg_divisor_nd(win, include_pad);
      if (div <= 0) return;
      const T share = dy[pl * g.out_plane + o] / static_cast<T>(div);
      for_each_tap(g, win, [&](int64_t at) { dxp[at] += share; });
    });
  }
}

template <typename F>
std::unique_ptr<Kernel> by_dtype(DType dt, F&& f) {
  if (dt == DType::f64) return f(double{});
  if (dt == DType::u8) return f(uint8_t{});
  if (dt == DType::i8) return f(int8_t{});
  return f(float{});
}

}  // namespace

void register_cpu_pool_kernels(KernelRegistry& registry) {
  registry.add("", "MaxPool", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    // 8-bit images too (nothing to train there): the largest value wins, as for floats.
    const bool bytes = (x->dtype == DType::u8 || x->dtype == DType::i8) && y->dtype == x->dtype;
    DType dt = bytes ? x->dtype : float_dtype(n, {x, y});
    const bool column_major = math::check_max_pool_outputs(n);
    if (x->shape.size() > 4) {
      const PoolNd g = pool_nd(n, init.opset, x->shape, y->shape);
      return by_dtype(dt, [g, column_major](auto zero) {
        using T = decltype(zero);
        return make_kernel([g, column_major](const KernelArgs& a) {
          int64_t* idx = a.outputs.size() > 1 && a.outputs[1].present() ? a.outputs[1].as<int64_t>() : nullptr;
          const graph::Shape& s = a.inputs[0].shape;
          max_pool_nd<T>(g, s[0] * s[1], a.inputs[0].as<T>(), a.outputs[0].as<T>(), idx, column_major);
        });
      });
    }
    PoolPlan plan = pool_plan(node_window(init, x->shape, y->shape));
    return by_dtype(dt, [plan, column_major](auto zero) {
      using T = decltype(zero);
      return make_kernel([plan, column_major](const KernelArgs& a) {
        int64_t* idx = a.outputs.size() > 1 && a.outputs[1].present()
                           ? a.outputs[1].as<int64_t>()
                           : nullptr;
        max_pool<T>(plan, a.inputs[0].shape[0], a.inputs[0].as<T>(), a.outputs[0].as<T>(), idx, column_major);
      });
    });
  });

  registry.add(graph::kOxtrainDomain, "MaxPoolGrad", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    DType dt = float_dtype(n, {required(n, 0), required(n, 0, true)});
    graph::Shape x_shape = math::check_max_pool_grad(n);
    const graph::Shape& dy_shape = n.input(0)->shape;
    int64_t HW = 1, P = 1;
    for (size_t i = 2; i < x_shape.size(); ++i) HW *= x_shape[i], P *= dy_shape[i];
    return by_dtype(dt, [HW, P](auto zero) {
      using T = decltype(zero);
      return make_kernel([HW, P](const KernelArgs& a) {
        const graph::Shape& s = a.inputs[0].shape;
        max_pool_grad<T>(s[0] * s[1], HW, P, a.inputs[0].as<T>(), a.inputs[1].as<int64_t>(),
                         a.outputs[0].as<T>());
      });
    });
  });

  registry.add(graph::kOxtrainDomain, "MaxPoolGradFromInput", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    if (required(n, 1)->shape.size() > 4) {
      math::check_max_pool_grad_from_input_values(n);
      const PoolNd g = pool_nd(n, init.opset, n.input(1)->shape, n.input(0)->shape);
      return by_dtype(n.input(1)->dtype, [g](auto zero) {
        using T = decltype(zero);
        return make_kernel([g](const KernelArgs& a) {
          const graph::Shape& s = a.inputs[1].shape;
          max_pool_grad_from_input_nd<T>(g, s[0] * s[1], a.inputs[0].as<T>(), a.inputs[1].as<T>(), a.outputs[0].as<T>());
        });
      });
    }
    const PoolPlan plan = pool_plan(math::check_max_pool_grad_from_input(n, init.opset, Device::cpu));
    return by_dtype(n.input(1)->dtype, [plan](auto zero) {
      using T = decltype(zero);
      return make_kernel([plan](const KernelArgs& a) {
        max_pool_grad_from_input<T>(plan, a.inputs[1].shape[0], a.inputs[0].as<T>(), a.inputs[1].as<T>(),
                                    a.outputs[0].as<T>());
      });
    });
  });

  registry.add("", "AveragePool", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    DType dt = float_dtype(n, {x, y});
    bool include_pad = n.attr_int("count_include_pad", 0) != 0;
    if (x->shape.size() > 4) {
      const PoolNd g = pool_nd(n, init.opset, x->shape, y->shape);
      return by_dtype(dt, [g, include_pad](auto zero) {
        using T = decltype(zero);
        return make_kernel([g, include_pad](const KernelArgs& a) {
          const graph::Shape& s = a.inputs[0].shape;
          avg_pool_nd<T>(g, s[0] * s[1], include_pad, a.inputs[0].as<T>(), a.outputs[0].as<T>());
        });
      });
    }
    Pool2d g = node_window(init, x->shape, y->shape);
    PoolPlan plan = pool_plan(g);
    return by_dtype(dt, [plan, include_pad](auto zero) {
      using T = decltype(zero);
      return make_kernel([plan, include_pad](const KernelArgs& a) {
        avg_pool<T>(plan, a.inputs[0].shape[0], include_pad, a.inputs[0].as<T>(),
                    a.outputs[0].as<T>());
      });
    });
  });

  registry.add(graph::kOxtrainDomain, "AveragePoolGrad", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* dy = required(n, 0);
    const graph::Value* dx = required(n, 0, true);
    DType dt = float_dtype(n, {dy, dx});
    graph::Shape x_shape = grad_input_shape(n, dx);
    bool include_pad = n.attr_int("count_include_pad", 0) != 0;
    if (x_shape.size() > 4) {
      const PoolNd g = pool_nd(n, init.opset, x_shape, dy->shape);
      return by_dtype(dt, [g, include_pad](auto zero) {
        using T = decltype(zero);
        return make_kernel([g, include_pad](const KernelArgs& a) {
          const graph::Shape& s = a.inputs[0].shape;
          avg_pool_grad_nd<T>(g, s[0] * s[1], include_pad, a.inputs[0].as<T>(), a.outputs[0].as<T>());
        });
      });
    }
    Pool2d g = node_window(init, x_shape, dy->shape);
    return by_dtype(dt, [g, include_pad](auto zero) {
      using T = decltype(zero);
      return make_kernel([g, include_pad](const KernelArgs& a) {
        avg_pool_grad<T>(g, a.inputs[0].shape[0], include_pad, a.inputs[0].as<T>(),
                         a.outputs[0].as<T>());
      });
    });
  });

  registry.add("", "GlobalAveragePool", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* y = required(n, 0, true);
    DType dt = float_dtype(n, {x, y});
    const int64_t size = math::global_pool_planes(n, x->shape, y->shape, "output shape").size;
    return by_dtype(dt, [size](auto zero) {
      using T = decltype(zero);
      return make_kernel([size](const KernelArgs& a) {
        const graph::Shape& s = a.inputs[0].shape;
        global_avg_pool<T>(s[0] * s[1], s[1], size, a.inputs[0].as<T>(), a.outputs[0].as<T>());
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
                 const int64_t size = math::global_pool_planes(n, x_shape, dy->shape, "dY").size;
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
