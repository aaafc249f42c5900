// Convolution on the CPU (1-D, 2-D and 3-D): Conv, oxtrain.ConvGradData and
// oxtrain.ConvGradFilter, for float32 and float64.
//
// All three are im2col + GEMM (OpenBLAS through cblas). The column matrix holds, for a chunk
// of `nb` samples, one row per (input channel, kd, kh, kw) and one column per (sample, output
// pixel): col[((c*kD + kd)*kH + kh)*kW + kw][j*P + p], P = oD*oH*oW. A 2-D convolution is the
// 3-D one with D = kD = oD = 1 and a 1-D one also has H = kH = oH = 1, so all three run the
// same loops. Rows of group g are the contiguous block [g*K, (g+1)*K), K = C/group*kD*kH*kW,
// so each group is one GEMM:
//   forward      Y_g  [Mg x nb*P] = W_g [Mg x K] * col_g [K x nb*P]
//   grad data    col_g[K x nb*P]  = W_g^T * dY_g, then col2im adds the columns back into dX
//   grad filter  dW_g [Mg x K]   += dY_g [Mg x nb*P] * col_g^T   (chunks in sample order)
// When one sample has few output pixels (late ResNet stages: 7x7 = 49) several samples share
// a chunk so the GEMMs stay large; the chunk's results then go through a small staging
// buffer (GEMM output for the forward, gathered dY for the gradients). A 1x1 stride-1 pad-0
// convolution with one sample per chunk needs no column matrix at all: X itself is col.
//
// im2col and col2im handle padding by index ranges (no per-element bounds checks). Threads:
// see "Scheduling" below; in short, with at least as many samples as threads each OpenMP
// thread takes whole chunks (its own column buffer, single-threaded GEMMs), otherwise the
// chunks run in order with multi-threaded GEMMs. Every sum has a fixed order (col2im: kernel
// taps in order; grad filter: each thread's chunks in sample order, then the per-thread
// partial sums in thread order; OpenBLAS does not split a GEMM's inner sums across threads),
// so results are bit-identical from run to run with the same thread count.
#include <cblas.h>

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <functional>
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

// ---------------------------------------------------------------------------------------
// BLAS.

inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                 double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

// ---------------------------------------------------------------------------------------
// Geometry.

// Columns a chunk aims for: below this a single-threaded OpenBLAS GEMM loses efficiency
// (measured on ResNet-50's 7x7 and 14x14 stages: 49 columns run at ~80% of 392).
constexpr int64_t kTargetColumns = 384;
// Upper bound for the column matrix of one chunk (it is part of the shared workspace).
constexpr int64_t kMaxColumnBytes = int64_t{64} << 20;
// Below this many elements touched, loops run on one thread.
constexpr int64_t kParallelMin = 1 << 14;

struct ConvGeom {
  int64_t N = 0, C = 0, D = 1, H = 0, W = 0;  // input
  int64_t M = 0, G = 1;                       // output channels, groups
  int64_t kD = 1, kH = 1, kW = 1, sD = 1, sH = 1, sW = 1, dD = 1, dH = 1, dW = 1;
  int64_t pF = 0, pT = 0, pL = 0;  // leading pads (trailing ones only shape the output)
  int64_t oD = 1, oH = 0, oW = 0;
  int64_t nb = 1;          // samples per chunk
  bool pointwise = false;  // 1x1, stride 1, no padding: col == X

  int64_t Cg() const { return C / G; }
  int64_t Mg() const { return M / G; }
  int64_t taps() const { return kD * kH * kW; }
  int64_t K() const { return Cg() * taps(); }   // GEMM depth per group
  int64_t rows() const { return C * taps(); }   // column-matrix rows, all groups
  int64_t P() const { return oD * oH * oW; }
  int64_t in_sample() const { return C * D * H * W; }
};

// Shapes: x = [N,C,(D,)(H,)W], w = [M,C/group,(kD,)(kH,)kW] with 1, 2 or 3 spatial axes; y
// (the conv output) is checked against the geometry. The missing leading spatial axes are
// size 1 with no window, so a 1-D convolution is the 2-D one of a single row and a 2-D one the
// 3-D one of a single plane.
ConvGeom conv_geometry(const graph::Node& node, const graph::Shape& x, const graph::Shape& w,
                       const graph::Shape& y, size_t elem_size) {
  if (x.size() != w.size() || x.size() < 3 || x.size() > 5)
    throw Error(node.describe() + ": only 1-D, 2-D and 3-D convolution is supported on the CPU "
                "(input " + join(x) + ", weight " + join(w) + ")");
  for (int64_t d : x)
    if (d < 0) throw Error(node.describe() + ": input shape " + join(x) + " is not known");
  const size_t missing = 5 - x.size();  // leading spatial axes to add
  graph::Shape x3 = x, w3 = w;
  x3.insert(x3.begin() + 2, missing, 1);
  w3.insert(w3.begin() + 2, missing, 1);
  ConvGeom g;
  g.N = x3[0], g.C = x3[1], g.D = x3[2], g.H = x3[3], g.W = x3[4];
  g.M = w3[0], g.kD = w3[2], g.kH = w3[3], g.kW = w3[4];
  g.G = node.attr_int("group", 1);
  if (g.G < 1 || g.C != w[1] * g.G || g.M % g.G != 0)
    throw Error(node.describe() + ": input " + join(x) + " and weight " + join(w) +
                " do not fit group=" + std::to_string(g.G));
  std::vector<int64_t> kernel(w.begin() + 2, w.end());
  if (node.has_attr("kernel_shape") && node.attr_ints("kernel_shape") != kernel)
    throw Error(node.describe() + ": kernel_shape " + join(node.attr_ints("kernel_shape")) +
                " disagrees with weight shape " + join(w));
  graph::WindowGeometry wg = graph::window_geometry(node, x, kernel, false);
  for (auto* v : {&wg.strides, &wg.dilations, &wg.output}) v->insert(v->begin(), missing, 1);
  for (auto* v : {&wg.pads_begin, &wg.pads_end}) v->insert(v->begin(), missing, 0);
  g.sD = wg.strides[0], g.sH = wg.strides[1], g.sW = wg.strides[2];
  g.dD = wg.dilations[0], g.dH = wg.dilations[1], g.dW = wg.dilations[2];
  g.pF = wg.pads_begin[0], g.pT = wg.pads_begin[1], g.pL = wg.pads_begin[2];
  g.oD = wg.output[0], g.oH = wg.output[1], g.oW = wg.output[2];
  graph::Shape expect{g.N, g.M};
  expect.insert(expect.end(), wg.output.begin() + static_cast<std::ptrdiff_t>(missing),
                wg.output.end());
  if (y != expect)
    throw Error(node.describe() + ": output shape " + join(y) + " does not match " +
                join(expect) + " computed from input " + join(x) + " and weight " + join(w));
  g.pointwise = g.taps() == 1 && g.sD == 1 && g.sH == 1 && g.sW == 1 &&
                std::all_of(wg.pads_begin.begin(), wg.pads_begin.end(),
                            [](int64_t p) { return p == 0; }) &&
                std::all_of(wg.pads_end.begin(), wg.pads_end.end(),
                            [](int64_t p) { return p == 0; });
  int64_t P = g.P();
  g.nb = P > 0 ? std::clamp<int64_t>((kTargetColumns + P - 1) / P, 1, std::max<int64_t>(g.N, 1))
               : 1;
  while (g.nb > 1 && g.rows() * g.nb * P * static_cast<int64_t>(elem_size) > kMaxColumnBytes)
    --g.nb;
  // BLAS takes 32-bit sizes.
  int64_t big = std::max({g.rows() * g.nb * P, g.M * g.nb * P, g.M * g.K(), g.in_sample()});
  if (big > std::numeric_limits<int32_t>::max())
    throw Error(node.describe() + ": tensors too large for the CPU convolution");
  return g;
}

// Ranges of output coordinates whose input coordinate o*s + off lies in [0, n): [lo, hi).
struct Range {
  int64_t lo, hi;
};
inline Range valid_range(int64_t off, int64_t s, int64_t n, int64_t out) {
  int64_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
  int64_t hi = n - off <= 0 ? 0 : (n - off + s - 1) / s;
  lo = std::min(lo, out);
  hi = std::clamp(hi, lo, out);
  return {lo, hi};
}

// ---------------------------------------------------------------------------------------
// im2col / col2im and the staging copies, for one chunk of samples, on the calling thread.

// x: the chunk's first sample; col: rows() x ld; fills the columns of `count` samples.
template <typename T>
void im2col(const ConvGeom& g, const T* x, int64_t count, T* col, int64_t ld) {
  const int64_t P = g.P(), HW = g.H * g.W, S = g.oH * g.oW;  // S: one output plane
  for (int64_t j = 0; j < count; ++j)
    for (int64_t c = 0; c < g.C; ++c) {
      const T* xc = x + (j * g.C + c) * g.D * HW;
      for (int64_t kd = 0; kd < g.kD; ++kd) {
        const Range rd = valid_range(kd * g.dD - g.pF, g.sD, g.D, g.oD);
        for (int64_t kh = 0; kh < g.kH; ++kh) {
          const Range rh = valid_range(kh * g.dH - g.pT, g.sH, g.H, g.oH);
          for (int64_t kw = 0; kw < g.kW; ++kw) {
            T* row = col + (((c * g.kD + kd) * g.kH + kh) * g.kW + kw) * ld + j * P;
            const int64_t offw = kw * g.dW - g.pL;
            const Range rw = valid_range(offw, g.sW, g.W, g.oW);
            std::fill(row, row + rd.lo * S, T(0));
            for (int64_t od = rd.lo; od < rd.hi; ++od) {
              T* plane = row + od * S;
              const T* xd = xc + (od * g.sD + kd * g.dD - g.pF) * HW;
              std::fill(plane, plane + rh.lo * g.oW, T(0));
              for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
                T* dst = plane + oh * g.oW;
                const T* src = xd + (oh * g.sH + kh * g.dH - g.pT) * g.W + offw;
                std::fill(dst, dst + rw.lo, T(0));
                if (g.sW == 1) {
                  std::memcpy(dst + rw.lo, src + rw.lo, (rw.hi - rw.lo) * sizeof(T));
                } else {
                  const int64_t s = g.sW;
                  for (int64_t ow = rw.lo; ow < rw.hi; ++ow) dst[ow] = src[ow * s];
                }
                std::fill(dst + rw.hi, dst + g.oW, T(0));
              }
              std::fill(plane + rh.hi * g.oW, plane + S, T(0));
            }
            std::fill(row + rd.hi * S, row + P, T(0));
          }
        }
      }
    }
}

// dx: the chunk's first sample, written (=) for `count` samples from col (rows() x ld). Each
// input pixel sums its kernel taps in (kd, kh, kw, od, oh, ow) order.
template <typename T>
void col2im(const ConvGeom& g, const T* col, int64_t ld, int64_t count, T* dx) {
  const int64_t P = g.P(), HW = g.H * g.W, S = g.oH * g.oW;
  for (int64_t j = 0; j < count; ++j)
    for (int64_t c = 0; c < g.C; ++c) {
      T* xc = dx + (j * g.C + c) * g.D * HW;
      std::fill(xc, xc + g.D * HW, T(0));
      for (int64_t kd = 0; kd < g.kD; ++kd) {
        const Range rd = valid_range(kd * g.dD - g.pF, g.sD, g.D, g.oD);
        for (int64_t kh = 0; kh < g.kH; ++kh) {
          const Range rh = valid_range(kh * g.dH - g.pT, g.sH, g.H, g.oH);
          for (int64_t kw = 0; kw < g.kW; ++kw) {
            const T* row = col + (((c * g.kD + kd) * g.kH + kh) * g.kW + kw) * ld + j * P;
            const int64_t offw = kw * g.dW - g.pL;
            const Range rw = valid_range(offw, g.sW, g.W, g.oW);
            for (int64_t od = rd.lo; od < rd.hi; ++od) {
              const T* plane = row + od * S;
              T* xd = xc + (od * g.sD + kd * g.dD - g.pF) * HW;
              for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
                const T* src = plane + oh * g.oW;
                T* dst = xd + (oh * g.sH + kh * g.dH - g.pT) * g.W + offw;
                if (g.sW == 1) {
                  for (int64_t ow = rw.lo; ow < rw.hi; ++ow) dst[ow] += src[ow];
                } else {
                  const int64_t s = g.sW;
                  for (int64_t ow = rw.lo; ow < rw.hi; ++ow) dst[ow * s] += src[ow];
                }
              }
            }
          }
        }
      }
    }
}

// stage [M x ld] (column j*P + p) <- t [count, M, P] (a chunk of a NCHW tensor).
template <typename T>
void gather_chunk(const ConvGeom& g, const T* t, int64_t count, T* stage, int64_t ld) {
  const int64_t P = g.P();
  for (int64_t j = 0; j < count; ++j)
    for (int64_t m = 0; m < g.M; ++m)
      std::memcpy(stage + m * ld + j * P, t + (j * g.M + m) * P, P * sizeof(T));
}

// y [count, M, P] = stage (+ bias).
template <typename T>
void scatter_chunk(const ConvGeom& g, const T* stage, int64_t ld, const T* bias, int64_t count,
                   T* y) {
  const int64_t P = g.P();
  for (int64_t j = 0; j < count; ++j)
    for (int64_t m = 0; m < g.M; ++m) {
      const T* src = stage + m * ld + j * P;
      T* dst = y + (j * g.M + m) * P;
      if (bias) {
        const T b = bias[m];
        for (int64_t p = 0; p < P; ++p) dst[p] = src[p] + b;
      } else {
        std::memcpy(dst, src, P * sizeof(T));
      }
    }
}

// ---------------------------------------------------------------------------------------
// Scheduling.
//
// Mixing OpenMP loops (im2col) with OpenBLAS's own thread pool between them makes the two
// pools fight over the cores (OpenBLAS's workers spin for a while after each call), which
// measured 2-4x slower than either alone. So a kernel uses one of them at a time:
//  - across chunks: when there are at least as many chunks as threads, an OpenMP team takes
//    chunks round-robin (thread t: chunks t, t+T, ...), each thread with its own buffers and
//    OpenBLAS limited to one thread for the duration;
//  - within chunks: otherwise (small batches) chunks run in order on the calling thread, with
//    the copies serial and each GEMM on all of OpenBLAS's threads.
// The assignment of chunks to threads depends only on the shapes and the thread count, so
// results are reproducible run to run.

size_t align_up(size_t n) { return (n + 63) / 64 * 64; }

// OpenBLAS on one thread while alive.
class BlasSingleThread {
 public:
  BlasSingleThread() : saved_(openblas_get_num_threads()) {
    if (saved_ != 1) openblas_set_num_threads(1);
  }
  ~BlasSingleThread() {
    if (saved_ != 1) openblas_set_num_threads(saved_);
  }
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  int saved_;
};

// The plan of one kernel: its geometry (nb for the batch it was made for), the thread count
// and the chunk size used when chunks are spread over threads.
struct ConvPlan {
  ConvGeom g;
  int threads = 1;
  bool filter = false;  // ConvGradFilter: partial sums of dW for threads 1..T-1

  // Chunk size and whether chunks go to threads, for a batch of n samples; never more
  // workspace than the batch the kernel was made for needs.
  std::pair<int64_t, bool> schedule(int64_t n) const {
    auto [nb, spread] = schedule_for(n);
    auto [nb_made, spread_made] = schedule_for(g.N);
    return {std::min(nb, nb_made), spread && spread_made};
  }
  std::pair<int64_t, bool> schedule_for(int64_t n) const {
    int64_t nb = std::min(g.nb, std::max<int64_t>(n, 1));
    if (threads > 1 && n >= threads) return {std::min(nb, n / threads), true};
    return {nb, false};
  }
  int64_t col_elems(int64_t nb) const {
    return g.pointwise && nb == 1 ? 0 : g.rows() * nb * g.P();
  }
  int64_t stage_elems(int64_t nb) const { return nb > 1 ? g.M * nb * g.P() : 0; }
  // Workspace: one slot (column matrix + staging) per thread, then the partial dWs.
  size_t slot_bytes(size_t elem) const {
    int64_t nb = schedule_for(g.N).first;
    return align_up(col_elems(nb) * elem) + align_up(stage_elems(nb) * elem);
  }
  size_t partial_bytes(size_t elem) const { return align_up(g.M * g.K() * elem); }
  size_t workspace_bytes(size_t elem) const {
    if (!schedule_for(g.N).second) return slot_bytes(elem);
    return slot_bytes(elem) * threads + (filter ? partial_bytes(elem) * (threads - 1) : 0);
  }
};

template <typename T>
struct Slot {
  T* col;
  T* stage;
  T* partial;  // slots 1.. of a spread ConvGradFilter; nullptr for slot 0
};

template <typename T>
Slot<T> slot(const ConvPlan& plan, void* workspace, int index, int64_t nb) {
  auto* base = static_cast<uint8_t*>(workspace);
  uint8_t* mine = base + plan.slot_bytes(sizeof(T)) * index;
  size_t col = align_up(plan.col_elems(nb) * sizeof(T));
  T* partial = nullptr;
  if (plan.filter && index > 0)
    partial = reinterpret_cast<T*>(base + plan.slot_bytes(sizeof(T)) * plan.threads +
                                   plan.partial_bytes(sizeof(T)) * (index - 1));
  return {reinterpret_cast<T*>(mine), reinterpret_cast<T*>(mine + col), partial};
}

// Runs fn(n0, count, nb, slot, first) over the chunks of a batch of n samples; `first` tells
// whether this is the first chunk its slot sees. Then after(slots used, nb).
template <typename T, typename Fn>
void for_chunks(const ConvPlan& plan, int64_t n, void* workspace, Fn&& fn,
                std::function<void(int slots, int64_t nb)> after = nullptr) {
  auto [nb0, spread] = plan.schedule(n);  // clang 14 cannot share a structured binding with omp
  const int64_t nb = nb0, chunks = (n + nb - 1) / nb;
  if (!spread) {
    Slot<T> s = slot<T>(plan, workspace, 0, nb);
    for (int64_t c = 0; c < chunks; ++c)
      fn(c * nb, std::min(nb, n - c * nb), nb, s, c == 0);
    if (after) after(1, nb);
    return;
  }
  BlasSingleThread single;
  int team_size = 1;
#pragma omp parallel num_threads(plan.threads)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
#pragma omp single
    team_size = team;
    Slot<T> s = slot<T>(plan, workspace, tid, nb);
    for (int64_t c = tid; c < chunks; c += team)
      fn(c * nb, std::min(nb, n - c * nb), nb, s, c == tid);
  }
  if (after) after(static_cast<int>(std::min<int64_t>(team_size, chunks)), nb);
}

// ---------------------------------------------------------------------------------------
// Kernels.

template <typename T>
class ConvKernel : public Kernel {
 public:
  explicit ConvKernel(const ConvPlan& plan) : plan_(plan) {}
  size_t workspace_bytes() const override { return plan_.workspace_bytes(sizeof(T)); }

  void run(const KernelArgs& args) override {
    const ConvGeom& g = plan_.g;
    const int64_t N = args.inputs[0].shape[0];
    const T* x = args.inputs[0].as<T>();
    const T* w = args.inputs[1].as<T>();
    const T* bias =
        args.inputs.size() > 2 && args.inputs[2].present() ? args.inputs[2].as<T>() : nullptr;
    T* y = args.outputs[0].as<T>();
    const int64_t P = g.P(), Mg = g.Mg(), Cg = g.Cg(), K = g.K();
    const int64_t in_sample = g.in_sample(), out_sample = g.M * P;
    if (N == 0 || P == 0 || g.M == 0) return;
    if (K == 0) {  // no input channels: the bias alone
      fill_bias(y, bias, N);
      return;
    }
    for_chunks<T>(plan_, N, args.workspace,
                  [&](int64_t n0, int64_t count, int64_t nb, Slot<T> s, bool) {
      T* yn = y + n0 * out_sample;
      if (nb == 1) {
        // Straight into Y: with a 1x1 stride-1 unpadded kernel X itself is the column matrix.
        const T* b = x + n0 * in_sample;
        int64_t ldb = P;
        if (!g.pointwise) {
          im2col(g, x + n0 * in_sample, 1, s.col, P);
          b = s.col;
        }
        if (bias) fill_bias(yn, bias, 1);
        for (int64_t gi = 0; gi < g.G; ++gi)
          gemm(false, false, Mg, P, K, T(1), w + gi * Mg * K, K, b + gi * K * ldb, ldb,
               bias ? T(1) : T(0), yn + gi * Mg * P, P);
        (void)Cg;
        return;
      }
      const int64_t ld = count * P;
      im2col(g, x + n0 * in_sample, count, s.col, ld);
      for (int64_t gi = 0; gi < g.G; ++gi)
        gemm(false, false, Mg, ld, K, T(1), w + gi * Mg * K, K, s.col + gi * K * ld, ld, T(0),
             s.stage + gi * Mg * ld, ld);
      scatter_chunk(g, s.stage, ld, bias, count, yn);
    });
  }

 private:
  // y[n] = bias broadcast over pixels (zero without bias), for `count` samples.
  void fill_bias(T* y, const T* bias, int64_t count) const {
    const int64_t P = plan_.g.P(), M = plan_.g.M;
    for (int64_t i = 0; i < count * M; ++i)
      std::fill(y + i * P, y + (i + 1) * P, bias ? bias[i % M] : T(0));
  }

  ConvPlan plan_;
};

template <typename T>
class ConvGradDataKernel : public Kernel {
 public:
  explicit ConvGradDataKernel(const ConvPlan& plan) : plan_(plan) {}
  size_t workspace_bytes() const override { return plan_.workspace_bytes(sizeof(T)); }

  void run(const KernelArgs& args) override {
    const ConvGeom& g = plan_.g;
    const int64_t N = args.inputs[0].shape[0];
    const T* dy = args.inputs[0].as<T>();
    const T* w = args.inputs[1].as<T>();
    T* dx = args.outputs[0].as<T>();
    const int64_t P = g.P(), Mg = g.Mg(), Cg = g.Cg(), K = g.K();
    const int64_t in_sample = g.in_sample(), out_sample = g.M * P;
    if (P == 0 || g.M == 0 || K == 0) {
      std::fill(dx, dx + N * in_sample, T(0));
      return;
    }
    for_chunks<T>(plan_, N, args.workspace,
                  [&](int64_t n0, int64_t count, int64_t nb, Slot<T> s, bool) {
      const T* dyn = dy + n0 * out_sample;
      T* dxn = dx + n0 * in_sample;
      if (nb == 1 && g.pointwise) {
        for (int64_t gi = 0; gi < g.G; ++gi)
          gemm(true, false, Cg, P, Mg, T(1), w + gi * Mg * K, K, dyn + gi * Mg * P, P, T(0),
               dxn + gi * Cg * P, P);
        return;
      }
      const int64_t ld = count * P;
      const T* a = dyn;
      if (nb > 1) {
        gather_chunk(g, dyn, count, s.stage, ld);
        a = s.stage;
      }
      for (int64_t gi = 0; gi < g.G; ++gi)
        gemm(true, false, K, ld, Mg, T(1), w + gi * Mg * K, K, a + gi * Mg * ld, ld, T(0),
             s.col + gi * K * ld, ld);
      col2im(g, s.col, ld, count, dxn);
    });
  }

 private:
  ConvPlan plan_;
};

template <typename T>
class ConvGradFilterKernel : public Kernel {
 public:
  explicit ConvGradFilterKernel(const ConvPlan& plan) : plan_(plan) {}
  size_t workspace_bytes() const override { return plan_.workspace_bytes(sizeof(T)); }

  void run(const KernelArgs& args) override {
    const ConvGeom& g = plan_.g;
    const int64_t N = args.inputs[1].shape[0];
    const T* dy = args.inputs[0].as<T>();
    const T* x = args.inputs[1].as<T>();
    T* dw = args.outputs[0].as<T>();
    const int64_t P = g.P(), Mg = g.Mg(), K = g.K();
    const int64_t in_sample = g.in_sample(), out_sample = g.M * P, size = g.M * K;
    if (N == 0 || P == 0 || g.M == 0 || K == 0) {
      std::fill(dw, dw + size, T(0));
      return;
    }
    // Each slot sums its chunks (in sample order) into its accumulator (slot 0: dW itself,
    // the others a partial dW); the partials are then added in slot order.
    for_chunks<T>(
        plan_, N, args.workspace,
        [&](int64_t n0, int64_t count, int64_t nb, Slot<T> s, bool first) {
          T* acc = s.partial ? s.partial : dw;
          const T beta = first ? T(0) : T(1);
          const T* dyn = dy + n0 * out_sample;
          if (nb == 1 && g.pointwise) {
            for (int64_t gi = 0; gi < g.G; ++gi)
              gemm(false, true, Mg, K, P, T(1), dyn + gi * Mg * P, P,
                   x + n0 * in_sample + gi * K * P, P, beta, acc + gi * Mg * K, K);
            return;
          }
          const int64_t ld = count * P;
          im2col(g, x + n0 * in_sample, count, s.col, ld);
          const T* a = dyn;
          if (nb > 1) {
            gather_chunk(g, dyn, count, s.stage, ld);
            a = s.stage;
          }
          for (int64_t gi = 0; gi < g.G; ++gi)
            gemm(false, true, Mg, K, ld, T(1), a + gi * Mg * ld, ld, s.col + gi * K * ld, ld,
                 beta, acc + gi * Mg * K, K);
        },
        [&](int slots, int64_t nb) {
          std::vector<const T*> parts;
          for (int t = 1; t < slots; ++t) parts.push_back(slot<T>(plan_, args.workspace, t, nb).partial);
          if (parts.empty()) return;
#pragma omp parallel for schedule(static) num_threads(plan_.threads) if (size >= kParallelMin)
          for (int64_t i = 0; i < size; ++i) {
            T v = dw[i];
            for (const T* part : parts) v += part[i];
            dw[i] = v;
          }
        });
  }

 private:
  ConvPlan plan_;
};

template <template <typename> class K>
std::unique_ptr<Kernel> make_typed(DType dt, const ConvGeom& g, bool filter = false) {
  ConvPlan plan;
  plan.g = g;
  plan.threads = std::max(1, cpu_threads());
  plan.filter = filter;
  if (dt == DType::f64) return std::make_unique<K<double>>(plan);
  return std::make_unique<K<float>>(plan);
}

}  // namespace

void register_cpu_conv_kernels(KernelRegistry& registry) {
  registry.add("", "Conv", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* x = required(n, 0);
    const graph::Value* w = required(n, 1);
    const graph::Value* y = required(n, 0, true);
    DType dt = float_dtype(n, {x, w, n.input(2), y});
    ConvGeom g = conv_geometry(n, x->shape, w->shape, y->shape, graph::dtype_size(dt));
    if (const graph::Value* b = n.input(2); b && b->shape != graph::Shape{g.M})
      throw Error(n.describe() + ": bias '" + b->name + "' has shape " + join(b->shape) +
                  ", expected [" + std::to_string(g.M) + "]");
    return make_typed<ConvKernel>(dt, g);
  });
  registry.add(graph::kOxtrainDomain, "ConvGradData", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* dy = required(n, 0);
    const graph::Value* w = required(n, 1);
    const graph::Value* dx = required(n, 0, true);
    DType dt = float_dtype(n, {dy, w, dx});
    graph::Shape x_shape = grad_input_shape(n, dx);
    ConvGeom g = conv_geometry(n, x_shape, w->shape, dy->shape, graph::dtype_size(dt));
    return make_typed<ConvGradDataKernel>(dt, g);
  });
  registry.add(graph::kOxtrainDomain, "ConvGradFilter", Device::cpu, [](const KernelInit& init) {
    const graph::Node& n = init.node;
    const graph::Value* dy = required(n, 0);
    const graph::Value* x = required(n, 1);
    const graph::Value* dw = required(n, 0, true);
    DType dt = float_dtype(n, {dy, x, dw});
    graph::Shape w_shape = shape_attr(n, "filter_shape");
    if (dw->shape != w_shape)
      throw Error(n.describe() + ": output shape " + join(dw->shape) +
                  " differs from filter_shape " + join(w_shape));
    ConvGeom g = conv_geometry(n, x->shape, w_shape, dy->shape, graph::dtype_size(dt));
    return make_typed<ConvGradFilterKernel>(dt, g, true);
  });
}

}  // namespace oxtrain::runtime
