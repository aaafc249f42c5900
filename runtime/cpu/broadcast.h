// Private helpers of the CPU kernels: dtype dispatch and strided (broadcast, transposed)
// iteration over a contiguous output, following a StridedPlan (runtime/math/broadcast.h).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "graph/ir.h"
#include "runtime/kernel.h"
#include "runtime/math/broadcast.h"

namespace oxtrain::runtime::cpu {

// Element counts from which loops are spread over threads.
constexpr int64_t kParallelMin = 1 << 15;
// Output elements per unit of work in strided loops.
constexpr int64_t kSegment = 4096;

// Calls f(T{}) with T = float or double for `dtype`; throws naming `what` for other types.
// Output i of a kernel's arguments, or null where the node omits it.
template <typename T>
T* optional_out(const KernelArgs& a, size_t i) {
  return i < a.outputs.size() && a.outputs[i].present() ? a.outputs[i].as<T>() : nullptr;
}

template <typename F>
auto dispatch_float(graph::DType dtype, const std::string& what, F&& f) {
  if (dtype == graph::DType::f32) return f(float{});
  if (dtype == graph::DType::f64) return f(double{});
  throw Error(what + ": unsupported element type " + graph::dtype_name(dtype) +
              " (the CPU kernels handle float32 and float64)");
}

// Calls f(T{}) for a number type: float, double, 8- to 64-bit signed and unsigned integers
// (uint8_t for bool too); throws naming `what` for others. The arithmetic ops, which ONNX
// defines on integers too.
template <typename F>
auto dispatch_number(graph::DType dt, const std::string& what, F&& f) {
  switch (dt) {
    case graph::DType::f32: return f(float{});
    case graph::DType::f64: return f(double{});
    case graph::DType::i64: return f(int64_t{});
    case graph::DType::i32: return f(int32_t{});
    case graph::DType::i8: return f(int8_t{});
    case graph::DType::i16: return f(int16_t{});
    case graph::DType::u16: return f(uint16_t{});
    case graph::DType::u32: return f(uint32_t{});
    case graph::DType::u64: return f(uint64_t{});
    case graph::DType::u8:
    case graph::DType::boolean: return f(uint8_t{});
    default:
      throw Error(what + ": element type " + graph::dtype_name(dt) + " is not supported on the CPU");
  }
}

// The plans and their index math live in runtime/math/broadcast.h, shared with the CUDA
// kernels.
using math::contiguous_strides;
using math::make_broadcast_plan;
using math::make_strided_plan;
using math::StridedPlan;

// Runs f(out_offset, in_offsets, length) over the output in pieces of at most kSegment
// elements of the innermost dimension, in parallel when the output is large. Input k's
// elements for the piece are at in_offsets[k] + i * plan.inner_stride(k), i < length; the
// output's at out_offset + i.
template <typename F>
void for_each_segment(const StridedPlan& p, F&& f) {
  if (p.numel <= 0) return;
  const int64_t inner = p.inner();
  const int64_t rows = p.numel / inner;
  const int64_t nseg = (inner + kSegment - 1) / kSegment;
  const int64_t units = rows * nseg;
  const size_t nin = p.strides.size();
#pragma omp parallel if (p.numel >= kParallelMin && units > 1)
  {
    std::vector<int64_t> offs(nin);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t row = u / nseg;
      const int64_t begin = (u % nseg) * kSegment;
      const int64_t len = std::min(kSegment, inner - begin);
      const int64_t flat = row * inner + begin;
      for (size_t k = 0; k < nin; ++k) offs[k] = p.offset(k, flat);
      f(flat, offs.data(), len);
    }
  }
}

// Runs f(begin, end) over [0, n) in contiguous chunks, in parallel when n is large.
template <typename F>
void parallel_chunks(int64_t n, F&& f) {
  if (n <= 0) return;
  const int64_t chunks = (n + kSegment * 4 - 1) / (kSegment * 4);
#pragma omp parallel for schedule(static) if (n >= kParallelMin && chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kSegment * 4;
    f(begin, std::min(n, begin + kSegment * 4));
  }
}

// Sum of f(i) for i < n in double, in a fixed order: eight interleaved partial sums (so the
// loop vectorises) combined pairwise. Deterministic for a given n.
template <typename F>
double lane_sum(int64_t n, F&& f) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += static_cast<double>(f(i + j));
  for (int j = 0; i < n; ++i, ++j) a[j] += static_cast<double>(f(i));
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// y[i] = op(x[i]) over n elements, in parallel chunks.
template <typename T, typename Op>
void unary(const T* x, T* y, int64_t n, Op op) {
  parallel_chunks(n, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) y[i] = op(x[i]);
  });
}

// y = op(a, b) with numpy broadcasting; a, b and y may be of different types.
template <typename TA, typename TB, typename TY, typename Op>
void broadcast_binary(const TensorView& a, const TensorView& b, const TensorView& y, Op op,
                      const std::string& what) {
  StridedPlan p = make_broadcast_plan(y.shape, {a.shape, b.shape}, what);
  const TA* pa = a.as<TA>();
  const TB* pb = b.as<TB>();
  TY* py = y.as<TY>();
  const int64_t sa = p.inner_stride(0), sb = p.inner_stride(1);
  for_each_segment(p, [&](int64_t o, const int64_t* off, int64_t len) {
    TY* yo = py + o;
    const TA* ao = pa + off[0];
    const TB* bo = pb + off[1];
    if (sa == 1 && sb == 1) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) yo[i] = op(ao[i], bo[i]);
    } else if (sa == 1 && sb == 0) {
      const TB bv = bo[0];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) yo[i] = op(ao[i], bv);
    } else if (sa == 0 && sb == 1) {
      const TA av = ao[0];
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) yo[i] = op(av, bo[i]);
    } else {
      for (int64_t i = 0; i < len; ++i) yo[i] = op(ao[i * sa], bo[i * sb]);
    }
  });
}

}  // namespace oxtrain::runtime::cpu
