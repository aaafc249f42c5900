// Private helpers of the CPU kernels: dtype dispatch and strided (broadcast, transposed)
// iteration over a contiguous output.
//
// A StridedPlan describes how an output of some shape, written contiguously in row-major
// order, reads each of its inputs: one stride per input and output dimension (0 where the
// input is broadcast). Dimensions of size 1 are dropped and neighbouring dimensions that every
// input walks contiguously are merged, so [N,C,H,W] + [1,C,1,1] becomes [N, C, H*W] with the
// second input's strides (0, 1, 0), and two same-shape tensors become one flat dimension.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::runtime::cpu {

// Element counts from which loops are spread over threads.
constexpr int64_t kParallelMin = 1 << 15;
// Output elements per unit of work in strided loops.
constexpr int64_t kSegment = 4096;

// Calls f(T{}) with T = float or double for `dtype`; throws naming `what` for other types.
template <typename F>
auto dispatch_float(graph::DType dtype, const std::string& what, F&& f) {
  if (dtype == graph::DType::f32) return f(float{});
  if (dtype == graph::DType::f64) return f(double{});
  throw Error(what + ": unsupported element type " + graph::dtype_name(dtype) +
              " (the CPU kernels handle float32 and float64)");
}

inline std::vector<int64_t> contiguous_strides(const graph::Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int64_t i = static_cast<int64_t>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

struct StridedPlan {
  std::vector<int64_t> dims;                  // collapsed output dims; at least one
  std::vector<std::vector<int64_t>> strides;  // [input][dim]
  int64_t numel = 0;

  int64_t inner() const { return dims.back(); }
  int64_t inner_stride(size_t k) const { return strides[k].back(); }
  // Offset into input k of output element `flat` (row-major over dims).
  int64_t offset(size_t k, int64_t flat) const {
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(dims.size()) - 1; d >= 0 && flat > 0; --d) {
      off += (flat % dims[d]) * strides[k][d];
      flat /= dims[d];
    }
    return off;
  }
};

// A plan from explicit per-input strides over `out` (one stride vector per input, each of
// out.size() entries).
inline StridedPlan make_strided_plan(const graph::Shape& out,
                                     std::vector<std::vector<int64_t>> strides) {
  StridedPlan p;
  p.numel = graph::shape_numel(out);
  p.strides.resize(strides.size());
  for (size_t d = 0; d < out.size(); ++d) {
    if (out[d] == 1) continue;
    bool merge = !p.dims.empty();
    for (size_t k = 0; merge && k < strides.size(); ++k)
      merge = p.strides[k].back() == strides[k][d] * out[d];
    if (merge) {
      p.dims.back() *= out[d];
      for (size_t k = 0; k < strides.size(); ++k) p.strides[k].back() = strides[k][d];
    } else {
      p.dims.push_back(out[d]);
      for (size_t k = 0; k < strides.size(); ++k) p.strides[k].push_back(strides[k][d]);
    }
  }
  if (p.dims.empty()) {
    p.dims.push_back(1);
    for (auto& s : p.strides) s.push_back(0);
  }
  return p;
}

// Numpy broadcasting of `ins` to `out`; `what` names the node in the error when an input
// does not broadcast.
inline StridedPlan make_broadcast_plan(const graph::Shape& out,
                                       const std::vector<graph::Shape>& ins,
                                       const std::string& what) {
  std::vector<std::vector<int64_t>> strides;
  for (const graph::Shape& s : ins) {
    if (s.size() > out.size())
      throw Error(what + ": input shape " + graph::shape_str(s) + " does not broadcast to " +
                  graph::shape_str(out));
    std::vector<int64_t> own = contiguous_strides(s);
    std::vector<int64_t> st(out.size(), 0);
    size_t lead = out.size() - s.size();
    for (size_t d = 0; d < s.size(); ++d) {
      if (s[d] == out[lead + d]) {
        st[lead + d] = s[d] == 1 ? 0 : own[d];
      } else if (s[d] != 1) {
        throw Error(what + ": input shape " + graph::shape_str(s) + " does not broadcast to " +
                    graph::shape_str(out));
      }
    }
    strides.push_back(std::move(st));
  }
  return make_strided_plan(out, std::move(strides));
}

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

}  // namespace oxtrain::runtime::cpu
