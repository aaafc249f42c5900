// Pooling arithmetic shared by the CPU kernels (runtime/cpu/pool.cc) and their CUDA twins
// (runtime/cuda/pool.cu): where a window lies, which outputs' windows cover an input element,
// which element of a window is its maximum (ties and NaN), the AveragePool divisor, and the
// per-element gradients. The CPU test suite checks this arithmetic; the GPU runs the same.
//
// Layout: [N, C, H, W], N*C planes of H x W inputs and oH x oW outputs. A window of output
// (oh, ow) starts at input (oh * stride - pad_begin, ow * stride - pad_begin) per axis; tap k
// reads start + k * dilation. Padding is never read: MaxPool's padding never wins, and for
// AveragePool it only enters the divisor (count_include_pad), as PyTorch's avg_pool2d.
//
// The last part of the file (host only, defined in runtime/cpu/pool.cc) reads a pooling node's
// attributes into this geometry, so the CPU and CUDA factories check and resolve a node alike.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "runtime/kernel.h"
#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

// One spatial axis of a pooling window, auto_pad and ceil_mode already resolved.
struct PoolAxis {
  int64_t in = 0, out = 0;  // input and output sizes along the axis
  int64_t kernel = 1, stride = 1, dilation = 1;
  int64_t pad_begin = 0, pad_end = 0;
};

// The geometry of a 2-D pooling: batch * channels planes.
struct Pool2d {
  int64_t batch = 0, channels = 0;
  PoolAxis rows, cols;

  OXTRAIN_HD int64_t planes() const { return batch * channels; }
  OXTRAIN_HD int64_t in_plane() const { return rows.in * cols.in; }
  OXTRAIN_HD int64_t out_plane() const { return rows.out * cols.out; }
};

OXTRAIN_HD int64_t pool_min(int64_t a, int64_t b) { return a < b ? a : b; }
OXTRAIN_HD int64_t pool_max(int64_t a, int64_t b) { return a < b ? b : a; }

template <typename T>
OXTRAIN_HD bool pool_is_nan(T v) {
#if defined(__CUDA_ARCH__)
  return isnan(v);
#else
  return std::isnan(v);
#endif
}

// The window of output `o` along one axis: taps [k_lo, k_hi) fall inside the input, tap k at
// input coordinate start + k * dilation; `span` counts the window's taps within the padded
// input (the AveragePool divisor with count_include_pad=1).
struct PoolTaps {
  int64_t start = 0, k_lo = 0, k_hi = 0, span = 0;
};

OXTRAIN_HD PoolTaps pool_taps(const PoolAxis& a, int64_t o) {
  const int64_t d = a.dilation, k = a.kernel;
  const int64_t start = o * a.stride - a.pad_begin;
  int64_t lo = start >= 0 ? 0 : (-start + d - 1) / d;
  int64_t hi = a.in - start <= 0 ? 0 : (a.in - start + d - 1) / d;
  lo = pool_min(lo, k);
  hi = pool_min(pool_max(hi, lo), k);
  const int64_t reach = a.in + a.pad_end - start;  // padded positions from the window's start on
  const int64_t span = reach <= 0 ? 0 : pool_min(k, (reach + d - 1) / d);
  return {start, lo, hi, span};
}

// The outputs [lo, hi) along one axis whose window reaches input coordinate x (0 <= x < in):
// those with start <= x <= start + (kernel - 1) * dilation. With dilation > 1 a window in the
// range holds x only where pool_tap_lands() says so.
struct PoolRange {
  int64_t lo = 0, hi = 0;
};

OXTRAIN_HD PoolRange pool_cover(const PoolAxis& a, int64_t x) {
  const int64_t last = x + a.pad_begin;  // o * stride <= last: the window starts at or before x
  const int64_t first = last - (a.kernel - 1) * a.dilation;  // ... and its last tap reaches x
  const int64_t lo = first <= 0 ? 0 : (first + a.stride - 1) / a.stride;
  const int64_t hi = pool_min(last / a.stride + 1, a.out);
  return {lo, pool_max(hi, lo)};
}

// Whether a tap of output o's window (o from pool_cover(a, x)) lands on input coordinate x.
OXTRAIN_HD bool pool_tap_lands(const PoolAxis& a, int64_t o, int64_t x) {
  return (x + a.pad_begin - o * a.stride) % a.dilation == 0;
}

// The window of one output in both axes.
struct PoolWindow {
  PoolTaps row, col;
  int64_t row_dilation = 1, col_dilation = 1;
};

OXTRAIN_HD PoolWindow pool_window(const Pool2d& g, int64_t oh, int64_t ow) {
  return {pool_taps(g.rows, oh), pool_taps(g.cols, ow), g.rows.dilation, g.cols.dilation};
}

// ---------------------------------------------------------------------------------------
// MaxPool.

// What an empty window gives: -inf, or 0 for integers (uint8 images).
template <typename T>
OXTRAIN_HD T pool_lowest() {
  if constexpr (std::is_floating_point_v<T>) return static_cast<T>(-INFINITY);
  else return T(0);
}

// The running maximum of a window: its value, its position in the plane (h * W + w), whether
// a NaN has been seen.
template <typename T>
struct MaxPick {
  T value;
  int64_t at;
  bool nan;
};

// One more element of the window, in row-major window order. Ties keep the first; a NaN beats
// every number and the first NaN stays. (Written as selects, not branches: random data
// mispredicts `v > best` a lot.)
template <typename T>
OXTRAIN_HD void max_pick(MaxPick<T>& m, T v, int64_t at) {
  const bool v_nan = pool_is_nan(v);
  const bool take = (v > m.value) | (v_nan & !m.nan);
  m.value = take ? v : m.value;
  m.at = take ? at : m.at;
  m.nan = m.nan | v_nan;
}

// The maximum of one output's window over `plane` (`width` columns). The first real element
// seeds it; a window that holds no input element (padding as wide as the window) gives -inf
// at position -1.
// `load(at)` gives the plane's element at position at = h * width + w as T (the GPU's
// channels-last and half kernels read through it; max_window below reads a plain plane).
template <typename T, typename Load>
OXTRAIN_HD MaxPick<T> max_window_at(Load&& load, int64_t width, const PoolWindow& win) {
  const PoolTaps& r = win.row;
  const PoolTaps& c = win.col;
  MaxPick<T> m{pool_lowest<T>(), -1, false};
  if (r.k_lo >= r.k_hi || c.k_lo >= c.k_hi) return m;
  const int64_t h0 = r.start + r.k_lo * win.row_dilation;
  const int64_t w0 = c.start + c.k_lo * win.col_dilation;
  m.at = h0 * width + w0;
  m.value = load(m.at);
  m.nan = pool_is_nan(m.value);
  for (int64_t kh = r.k_lo; kh < r.k_hi; ++kh) {
    const int64_t row = (r.start + kh * win.row_dilation) * width;
    for (int64_t kw = c.k_lo; kw < c.k_hi; ++kw) {
      const int64_t at = row + c.start + kw * win.col_dilation;
      max_pick(m, load(at), at);
    }
  }
  return m;
}
template <typename T>
OXTRAIN_HD MaxPick<T> max_window(const T* plane, int64_t width, const PoolWindow& win) {
  return max_window_at<T>([plane](int64_t at) { return plane[at]; }, width, win);
}

// MaxPool's Indices entry for the maximum at `at` (h * W + w) of plane `plane`: the position
// flattened over the whole [N, C, H, W] tensor, the plane's elements in row-major order
// (storage_order 0) or column-major (1: h + w * H, ONNX's reference); -1 for an empty window.
OXTRAIN_HD int64_t max_pool_index(const Pool2d& g, int64_t plane, int64_t at, bool column_major) {
  if (at < 0) return -1;
  const int64_t within = column_major ? at / g.cols.in + (at % g.cols.in) * g.rows.in : at;
  return plane * g.in_plane() + within;
}

// Calls add(oh, ow) for each output whose window holds input (h, w), in ascending output
// order: the order in which the CPU's scatters add, so a gather gives their bits.
template <typename F>
OXTRAIN_HD void for_covering_outputs(const Pool2d& g, int64_t h, int64_t w, F&& add) {
  const PoolRange rr = pool_cover(g.rows, h), cr = pool_cover(g.cols, w);
  for (int64_t oh = rr.lo; oh < rr.hi; ++oh) {
    if (!pool_tap_lands(g.rows, oh, h)) continue;
    for (int64_t ow = cr.lo; ow < cr.hi; ++ow)
      if (pool_tap_lands(g.cols, ow, w)) add(oh, ow);
  }
}

// dX of input (h, w) of plane `plane` (deterministic gather, the GPU's MaxPoolGrad): the sum of
// dY over the outputs whose window holds (h, w) and whose Indices name it, added in ascending
// output order starting from 0, which is the order in which max_pool_grad_scatter() adds them.
template <typename T>
OXTRAIN_HD T max_pool_grad_at(const Pool2d& g, const T* dy_plane, const int64_t* indices_plane,
                              int64_t plane, int64_t h, int64_t w) {
  const int64_t target = plane * g.in_plane() + h * g.cols.in + w;
  T sum = 0;
  for_covering_outputs(g, h, w, [&](int64_t oh, int64_t ow) {
    const int64_t o = oh * g.cols.out + ow;
    if (indices_plane[o] == target) sum += dy_plane[o];
  });
  return sum;
}

// dX of input (h, w) of one plane for oxtrain.MaxPoolGradFromInput (the GPU's gather): dY
// summed over the outputs whose window holds (h, w) and whose maximum over X (max_window,
// MaxPool's own pick, ties and NaN alike) lies there, in ascending output order from 0: the
// order of the CPU's scatter (runtime/cpu/pool.cc), so both give the same bits.
// With loaders: x_load(h * W + w) and dy_load(oh * oW + ow) give one plane's elements as T.
template <typename T, typename XLoad, typename DyLoad>
OXTRAIN_HD T max_pool_grad_from_input_with(const Pool2d& g, DyLoad&& dy_load, XLoad&& x_load, int64_t h, int64_t w) {
  const int64_t target = h * g.cols.in + w;
  T sum = 0;
  for_covering_outputs(g, h, w, [&](int64_t oh, int64_t ow) {
    if (max_window_at<T>(x_load, g.cols.in, pool_window(g, oh, ow)).at == target) sum += dy_load(oh * g.cols.out + ow);
  });
  return sum;
}
template <typename T>
OXTRAIN_HD T max_pool_grad_from_input_at(const Pool2d& g, const T* dy_plane, const T* x_plane, int64_t h, int64_t w) {
  return max_pool_grad_from_input_with<T>(
      g, [dy_plane](int64_t o) { return dy_plane[o]; }, [x_plane](int64_t at) { return x_plane[at]; }, h, w);
}

// One plane of MaxPoolGrad as a scatter (the CPU's, and the GPU's where the window is not
// known): dx_plane[indices[i] - first] += dy[i] over the plane's outputs in ascending order,
// for the indices inside the plane ([first, first + in_plane)). Returns how many lie outside
// (MaxPool never makes such indices). dx_plane must hold zeros before.
struct MaxGradPlane {
  int64_t first = 0;     // the flattened index of the plane's first input element
  int64_t in_plane = 0;  // H * W
  int64_t out_plane = 0;
};

template <typename T>
OXTRAIN_HD int64_t max_pool_grad_scatter(const MaxGradPlane& p, const T* dy_plane,
                                         const int64_t* indices_plane, T* dx_plane) {
  int64_t strays = 0;
  for (int64_t i = 0; i < p.out_plane; ++i) {
    const int64_t at = indices_plane[i] - p.first;
    if (at >= 0 && at < p.in_plane)
      dx_plane[at] += dy_plane[i];
    else
      ++strays;
  }
  return strays;
}

// ---------------------------------------------------------------------------------------
// AveragePool.

// The divisor of one output: the window's size clipped to the padded input with
// count_include_pad, else the number of real elements in it.
OXTRAIN_HD int64_t avg_divisor(const PoolTaps& r, const PoolTaps& c, bool include_pad) {
  return include_pad ? r.span * c.span : (r.k_hi - r.k_lo) * (c.k_hi - c.k_lo);
}

// The average of one output's window, summed in row-major order; 0 for a window without
// elements. `load(at)` gives the plane's element at position at = h * width + w as T.
template <typename T, typename Load>
OXTRAIN_HD T avg_window_at(Load&& load, int64_t width, const PoolWindow& win, bool include_pad) {
  const PoolTaps& r = win.row;
  const PoolTaps& c = win.col;
  T sum = 0;
  for (int64_t kh = r.k_lo; kh < r.k_hi; ++kh) {
    const int64_t row = (r.start + kh * win.row_dilation) * width;
    for (int64_t kw = c.k_lo; kw < c.k_hi; ++kw) sum += load(row + c.start + kw * win.col_dilation);
  }
  const int64_t div = avg_divisor(r, c, include_pad);
  return div > 0 ? sum / static_cast<T>(div) : T(0);
}
template <typename T>
OXTRAIN_HD T avg_window(const T* plane, int64_t width, const PoolWindow& win, bool include_pad) {
  return avg_window_at<T>([plane](int64_t at) { return plane[at]; }, width, win, include_pad);
}

// dX of input (h, w): dY / divisor summed over the outputs whose window holds it, in ascending
// output order from 0. `dy_load(oh * oW + ow)` gives the plane's dY as T.
template <typename T, typename DyLoad>
OXTRAIN_HD T avg_pool_grad_with(const Pool2d& g, bool include_pad, DyLoad&& dy_load, int64_t h, int64_t w) {
  T sum = 0;
  for_covering_outputs(g, h, w, [&](int64_t oh, int64_t ow) {
    const int64_t div = avg_divisor(pool_taps(g.rows, oh), pool_taps(g.cols, ow), include_pad);
    if (div > 0) sum += dy_load(oh * g.cols.out + ow) / static_cast<T>(div);
  });
  return sum;
}
template <typename T>
OXTRAIN_HD T avg_pool_grad_at(const Pool2d& g, bool include_pad, const T* dy_plane, int64_t h,
                              int64_t w) {
  return avg_pool_grad_with<T>(g, include_pad, [dy_plane](int64_t o) { return dy_plane[o]; }, h, w);
}

// ---------------------------------------------------------------------------------------
// GlobalAveragePool: planes of `size` elements, summed in double even for float32 (the planes
// can be large).

template <typename T>
OXTRAIN_HD T global_mean(double sum, int64_t size) {
  return size > 0 ? static_cast<T>(sum / static_cast<double>(size)) : T(0);
}

template <typename T>
OXTRAIN_HD T global_mean_grad(T dy, int64_t size) {
  return dy / static_cast<T>(size);
}

// ---------------------------------------------------------------------------------------
// 2-D pooling one element at a time, in either layout: the bodies of the GPU's kernels, which
// take channels-first [N, C, H, W] and channels-last [N, H, W, C] tensors as they are stored.
// `load(j)` reads element j of the tensor as stored (the GPU widens half there); the CPU suite
// runs these on the host against the CPU's kernels (which see channels-last through
// transposes), so their index arithmetic is checked without a GPU.

// Element i of a tensor of C channels and H x W planes: its (n, c, h, w).
struct PoolElement {
  int64_t n, c, h, w;
};
OXTRAIN_HD PoolElement pool_element(int64_t i, bool nhwc, int64_t C, int64_t H, int64_t W) {
  if (nhwc) {
    const int64_t pixel = i / C;
    return {pixel / W / H, i % C, pixel / W % H, pixel % W};
  }
  const int64_t rest = i / W;
  return {rest / H / C, rest / H % C, rest % H, i % W};
}

// Where plane (n, c) of a tensor with `plane` elements per channel lies: its element at
// (h * W + w) is element base + at * step of the tensor.
struct PlaneAccess {
  int64_t base, step;
  OXTRAIN_HD int64_t operator()(int64_t at) const { return base + at * step; }
};
OXTRAIN_HD PlaneAccess plane_access(bool nhwc, int64_t n, int64_t c, int64_t C, int64_t plane) {
  return nhwc ? PlaneAccess{n * plane * C + c, C} : PlaneAccess{(n * C + c) * plane, 1};
}

// MaxPool's output i ([N, C, oH, oW] or [N, oH, oW, C]): its window's maximum over x, and the
// element it is (`at` in its plane; Indices come from max_pool_index with plane n * C + c).
template <typename T, typename Load>
OXTRAIN_HD MaxPick<T> max_pool_output_at(const Pool2d& g, bool nhwc, int64_t i, Load&& x, PoolElement& e) {
  e = pool_element(i, nhwc, g.channels, g.rows.out, g.cols.out);
  const PlaneAccess p = plane_access(nhwc, e.n, e.c, g.channels, g.in_plane());
  return max_window_at<T>([&](int64_t at) { return x(p(at)); }, g.cols.in, pool_window(g, e.h, e.w));
}

// MaxPoolGradFromInput's dX element i.
template <typename T, typename DyLoad, typename XLoad>
OXTRAIN_HD T max_pool_grad_from_input_element(const Pool2d& g, bool nhwc, int64_t i, DyLoad&& dy, XLoad&& x) {
  const PoolElement e = pool_element(i, nhwc, g.channels, g.rows.in, g.cols.in);
  const PlaneAccess px = plane_access(nhwc, e.n, e.c, g.channels, g.in_plane());
  const PlaneAccess pdy = plane_access(nhwc, e.n, e.c, g.channels, g.out_plane());
  return max_pool_grad_from_input_with<T>(
      g, [&](int64_t o) { return dy(pdy(o)); }, [&](int64_t at) { return x(px(at)); }, e.h, e.w);
}

// AveragePool's output i.
template <typename T, typename Load>
OXTRAIN_HD T avg_pool_output_at(const Pool2d& g, bool include_pad, bool nhwc, int64_t i, Load&& x) {
  const PoolElement e = pool_element(i, nhwc, g.channels, g.rows.out, g.cols.out);
  const PlaneAccess p = plane_access(nhwc, e.n, e.c, g.channels, g.in_plane());
  return avg_window_at<T>([&](int64_t at) { return x(p(at)); }, g.cols.in, pool_window(g, e.h, e.w), include_pad);
}

// AveragePoolGrad's dX element i.
template <typename T, typename Load>
OXTRAIN_HD T avg_pool_grad_element(const Pool2d& g, bool include_pad, bool nhwc, int64_t i, Load&& dy) {
  const PoolElement e = pool_element(i, nhwc, g.channels, g.rows.in, g.cols.in);
  const PlaneAccess p = plane_access(nhwc, e.n, e.c, g.channels, g.out_plane());
  return avg_pool_grad_with<T>(g, include_pad, [&](int64_t o) { return dy(p(o)); }, e.h, e.w);
}

// GlobalAveragePool's output o (of [N, C], as both layouts store it) over planes of `size`:
// summed in double in the plane's order, as the CPU kernel does, so the means are its bits.
template <typename T, typename Load>
OXTRAIN_HD T global_mean_output_at(int64_t channels, int64_t size, bool nhwc, int64_t o, Load&& x) {
  const PlaneAccess p = plane_access(nhwc, o / channels, o % channels, channels, size);
  double sum = 0;
  for (int64_t j = 0; j < size; ++j) sum += static_cast<double>(x(p(j)));
  return global_mean<T>(sum, size);
}

// The dY element (of [N, C]) that GlobalAveragePoolGrad's dX element i takes.
OXTRAIN_HD int64_t global_mean_grad_source(int64_t channels, int64_t size, bool nhwc, int64_t i) {
  return nhwc ? i / (size * channels) * channels + i % channels : i / size;
}

// ---------------------------------------------------------------------------------------
// 3-D pooling ([N, C, D, H, W], video models) one output or one input element at a time, for
// the GPU's kernels: the arithmetic of the CPU's N-D kernels (runtime/cpu/pool.cc) with three
// axes. Windows are read in row-major order (the first real element seeds a maximum, ties keep
// the first, NaN wins; sums in that order), gradients add in ascending output order from 0,
// so both devices give the same bits; tests/test_cpu_pool.cc checks these functions against
// the CPU's kernels.

struct Pool3d {
  int64_t planes = 0;  // batch * channels
  PoolAxis axes[3];    // depth, height, width

  OXTRAIN_HD int64_t in_plane() const { return axes[0].in * axes[1].in * axes[2].in; }
  OXTRAIN_HD int64_t out_plane() const { return axes[0].out * axes[1].out * axes[2].out; }
};

// The window of output (o0, o1, o2): f(position in the plane) for each real element, in
// row-major order; `count` is the AveragePool divisor.
struct Window3d {
  PoolTaps t[3];
};

OXTRAIN_HD Window3d pool_window_3d(const Pool3d& g, int64_t o0, int64_t o1, int64_t o2) {
  return {{pool_taps(g.axes[0], o0), pool_taps(g.axes[1], o1), pool_taps(g.axes[2], o2)}};
}

template <typename F>
OXTRAIN_HD void for_window_3d(const Pool3d& g, const Window3d& w, F&& f) {
  for (int64_t k0 = w.t[0].k_lo; k0 < w.t[0].k_hi; ++k0) {
    const int64_t p0 = w.t[0].start + k0 * g.axes[0].dilation;
    for (int64_t k1 = w.t[1].k_lo; k1 < w.t[1].k_hi; ++k1) {
      const int64_t p1 = p0 * g.axes[1].in + w.t[1].start + k1 * g.axes[1].dilation;
      for (int64_t k2 = w.t[2].k_lo; k2 < w.t[2].k_hi; ++k2)
        f(p1 * g.axes[2].in + w.t[2].start + k2 * g.axes[2].dilation);
    }
  }
}

template <typename T>
OXTRAIN_HD MaxPick<T> max_window_3d(const Pool3d& g, const T* plane, const Window3d& w) {
  MaxPick<T> m{pool_lowest<T>(), -1, false};
  bool first = true;
  for_window_3d(g, w, [&](int64_t at) {
    if (first) {
      m = {plane[at], at, pool_is_nan(plane[at])};
      first = false;
    } else {
      max_pick(m, plane[at], at);
    }
  });
  return m;
}

OXTRAIN_HD int64_t avg_divisor_3d(const Window3d& w, bool include_pad) {
  int64_t d = 1;
  for (int k = 0; k < 3; ++k) d *= include_pad ? w.t[k].span : w.t[k].k_hi - w.t[k].k_lo;
  return d;
}

template <typename T>
OXTRAIN_HD T avg_window_3d(const Pool3d& g, const T* plane, const Window3d& w, bool include_pad) {
  T sum = 0;
  for_window_3d(g, w, [&](int64_t at) { sum += plane[at]; });
  const int64_t div = avg_divisor_3d(w, include_pad);
  return div > 0 ? sum / static_cast<T>(div) : T(0);
}

// MaxPool's Indices entry for the maximum at `at` (row-major in the plane) of plane `plane`:
// flattened over the whole tensor, row-major or column-major (the first axis innermost);
// -1 for an empty window.
OXTRAIN_HD int64_t max_pool_index_3d(const Pool3d& g, int64_t plane, int64_t at, bool column_major) {
  if (at < 0) return -1;
  int64_t within = at;
  if (column_major) {
    const int64_t c2 = at % g.axes[2].in, rest = at / g.axes[2].in;
    const int64_t c1 = rest % g.axes[1].in, c0 = rest / g.axes[1].in;
    within = c0 + (c1 + c2 * g.axes[1].in) * g.axes[0].in;
  }
  return plane * g.in_plane() + within;
}

// Calls add(o0, o1, o2) for each output whose window holds input (x0, x1, x2), in ascending
// output order.
template <typename F>
OXTRAIN_HD void for_covering_outputs_3d(const Pool3d& g, int64_t x0, int64_t x1, int64_t x2, F&& add) {
  const PoolRange r0 = pool_cover(g.axes[0], x0), r1 = pool_cover(g.axes[1], x1), r2 = pool_cover(g.axes[2], x2);
  for (int64_t o0 = r0.lo; o0 < r0.hi; ++o0) {
    if (!pool_tap_lands(g.axes[0], o0, x0)) continue;
    for (int64_t o1 = r1.lo; o1 < r1.hi; ++o1) {
      if (!pool_tap_lands(g.axes[1], o1, x1)) continue;
      for (int64_t o2 = r2.lo; o2 < r2.hi; ++o2)
        if (pool_tap_lands(g.axes[2], o2, x2)) add(o0, o1, o2);
    }
  }
}

// dX of input element `at` (row-major in its plane) for oxtrain.MaxPoolGradFromInput: dY over
// the covering outputs whose window's maximum over X lies there.
template <typename T>
OXTRAIN_HD T max_pool_grad_from_input_at_3d(const Pool3d& g, const T* dy_plane, const T* x_plane, int64_t at) {
  const int64_t x2 = at % g.axes[2].in, rest = at / g.axes[2].in;
  const int64_t x1 = rest % g.axes[1].in, x0 = rest / g.axes[1].in;
  T sum = 0;
  for_covering_outputs_3d(g, x0, x1, x2, [&](int64_t o0, int64_t o1, int64_t o2) {
    if (max_window_3d(g, x_plane, pool_window_3d(g, o0, o1, o2)).at == at)
      sum += dy_plane[(o0 * g.axes[1].out + o1) * g.axes[2].out + o2];
  });
  return sum;
}

// dX of input element `at` for oxtrain.AveragePoolGrad: dY / divisor over the covering outputs.
template <typename T>
OXTRAIN_HD T avg_pool_grad_at_3d(const Pool3d& g, bool include_pad, const T* dy_plane, int64_t at) {
  const int64_t x2 = at % g.axes[2].in, rest = at / g.axes[2].in;
  const int64_t x1 = rest % g.axes[1].in, x0 = rest / g.axes[1].in;
  T sum = 0;
  for_covering_outputs_3d(g, x0, x1, x2, [&](int64_t o0, int64_t o1, int64_t o2) {
    const int64_t div = avg_divisor_3d(pool_window_3d(g, o0, o1, o2), include_pad);
    if (div > 0) sum += dy_plane[(o0 * g.axes[1].out + o1) * g.axes[2].out + o2] / static_cast<T>(div);
  });
  return sum;
}

// ---------------------------------------------------------------------------------------
// Host side: reading a pooling node (defined in runtime/cpu/pool.cc). Errors name the node and
// what `device`'s kernels lack.

// ceil_mode of a pooling node: ai.onnx has it from opset 10; the oxtrain gradient ops copy it.
bool pool_ceil_mode(const graph::Node& node, int64_t opset);

// The window of a 2-D pooling `node` (kernel_shape, strides, pads, dilations, auto_pad) over
// input shape `x` ([N, C, H, W], known); of a 1-D one over [N, C, L] as one row (H = 1).
Pool2d pool_window_2d(const graph::Node& node, const graph::Shape& x, bool ceil_mode,
                      Device device);

// Throws unless `y` is the pooled shape [N, C, oH, oW] of `g` ([N, C, oW] for 1-D).
void check_pooled_shape(const graph::Node& node, const Pool2d& g, const graph::Shape& y);

// The window of a 3-D pooling `node` over `x` ([N, C, D, H, W], known), checked to pool it to
// `y`.
Pool3d pool_geometry_3d(const graph::Node& node, const graph::Shape& x, const graph::Shape& y, bool ceil_mode);

// MaxPool: storage_order 0 or 1 and, where present, Indices int64 of Y's shape. Returns whether
// the Indices are column-major (storage_order 1).
bool check_max_pool_outputs(const graph::Node& node);
// The same, Indices checked against `y` (Y's [N, C, oH, oW] shape where it is stored
// channels-last: Indices stay channels-first).
bool check_max_pool_outputs(const graph::Node& node, const graph::Shape& y);

// MaxPoolGrad (dY, Indices) -> dX: Indices int64 of dY's shape, dX of input_shape, dY of rank
// and batch and channels that fit it. Returns input_shape.
graph::Shape check_max_pool_grad(const graph::Node& node);

// MaxPoolGradFromInput (dY, X) -> dX: X [N, C, H, W] known, dY and dX float of X's type, dX
// of X's shape; returns X's window (the node carries MaxPool's attributes) after checking that
// it pools X to dY's shape.
Pool2d check_max_pool_grad_from_input(const graph::Node& node, int64_t opset, Device device);
// Its types and dX's shape only (the CPU's pooling over three or more axes has its own window).
void check_max_pool_grad_from_input_values(const graph::Node& node);

// GlobalAveragePool and its gradient: `x` [N, C, spatial...] (rank 3 or more) and the pooled
// [N, C, 1, ...] = `pooled`; the planes and the elements of each.
struct GlobalPlanes {
  int64_t planes = 0, size = 0;
};
GlobalPlanes global_pool_planes(const graph::Node& node, const graph::Shape& x,
                                const graph::Shape& pooled, const char* pooled_name);

}  // namespace oxtrain::runtime::math
