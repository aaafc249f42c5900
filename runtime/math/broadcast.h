// Strided (broadcast, transposed) index math shared by the CPU kernels and their CUDA twins.
//
// A StridedPlan describes how an output of some shape, written contiguously in row-major
// order, reads each of its inputs: one stride per input and output dimension (0 where the
// input is broadcast). Dimensions of size 1 are dropped and neighbouring dimensions that every
// input walks contiguously are merged, so [N,C,H,W] + [1,C,1,1] becomes [N, C, H*W] with the
// second input's strides (0, 1, 0), and two same-shape tensors become one flat dimension.
//
// The plans are built on the host (at compile time for CUDA kernels). StridedIndex is a plan
// of at most kMaxRank collapsed dimensions in fixed-size arrays, small enough to pass to a
// CUDA kernel by value; strided_offsets() is the per-element index math both devices run.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "graph/ir.h"
#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

// Most collapsed dimensions a StridedIndex holds.
inline constexpr int kMaxRank = 8;

inline std::vector<int64_t> contiguous_strides(const graph::Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int64_t i = static_cast<int64_t>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

// Offset of element `flat` (row-major over dims[0..rank)) in an operand with `strides`.
template <typename I>
OXTRAIN_HD I strided_offset(I flat, int rank, const I* dims, const I* strides) {
  I off = 0;
  for (int d = rank - 1; d >= 0 && flat > 0; --d) {
    off += (flat % dims[d]) * strides[d];
    flat /= dims[d];
  }
  return off;
}

struct StridedPlan {
  std::vector<int64_t> dims;                  // collapsed output dims; at least one
  std::vector<std::vector<int64_t>> strides;  // [input][dim]
  int64_t numel = 0;

  int rank() const { return static_cast<int>(dims.size()); }
  int64_t inner() const { return dims.back(); }
  int64_t inner_stride(size_t k) const { return strides[k].back(); }
  // Offset into input k of output element `flat` (row-major over dims).
  int64_t offset(size_t k, int64_t flat) const {
    return strided_offset<int64_t>(flat, rank(), dims.data(), strides[k].data());
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

// The strides with which an input of shape `in` is read when numpy-broadcast to `out` (0 on
// broadcast dimensions); throws naming `what` when it does not broadcast.
inline std::vector<int64_t> broadcast_strides(const graph::Shape& out, const graph::Shape& in,
                                              const std::string& what) {
  if (in.size() > out.size())
    throw Error(what + ": input shape " + graph::shape_str(in) + " does not broadcast to " +
                graph::shape_str(out));
  std::vector<int64_t> own = contiguous_strides(in);
  std::vector<int64_t> st(out.size(), 0);
  const size_t lead = out.size() - in.size();
  for (size_t d = 0; d < in.size(); ++d) {
    if (in[d] == out[lead + d]) {
      st[lead + d] = in[d] == 1 ? 0 : own[d];
    } else if (in[d] != 1) {
      throw Error(what + ": input shape " + graph::shape_str(in) + " does not broadcast to " +
                  graph::shape_str(out));
    }
  }
  return st;
}

// Numpy broadcasting of `ins` to `out`; `what` names the node in the error when an input
// does not broadcast.
inline StridedPlan make_broadcast_plan(const graph::Shape& out,
                                       const std::vector<graph::Shape>& ins,
                                       const std::string& what) {
  std::vector<std::vector<int64_t>> strides;
  for (const graph::Shape& s : ins) strides.push_back(broadcast_strides(out, s, what));
  return make_strided_plan(out, std::move(strides));
}

// A plan of K operands in fixed arrays (index type I: uint32_t where every offset fits, else
// int64_t), to pass to a CUDA kernel by value. Dims are stored innermost first, so the loops
// below index the arrays with constants once unrolled (a kernel then reads its parameters in
// place rather than copying them to local memory). Operands past the plan's own count have
// stride 0.
template <int K, typename I>
struct StridedIndex {
  int rank = 0;                 // dims in use; 0: every offset is 0
  I dims[kMaxRank] = {};        // dims[0] is the innermost
  I strides[K][kMaxRank] = {};  // strides[k][e] goes with dims[e]
};

// Offsets of output element `flat` (row-major over the plan's dims) in each of the first
// `count` operands (count <= K); the others' offsets are 0.
template <int K, typename I>
OXTRAIN_HD void strided_offsets(const StridedIndex<K, I>& p, I flat, int count, I (&off)[K]) {
  for (int k = 0; k < K; ++k) off[k] = 0;
  for (int e = 0; e < kMaxRank; ++e) {
    if (e < p.rank) {
      const I q = flat / p.dims[e];
      const I r = flat - q * p.dims[e];
      for (int k = 0; k < K; ++k)
        if (k < count) off[k] += r * p.strides[k][e];
      flat = q;
    }
  }
}

// Whether every offset of `p`'s operands and output fits in 32 bits (so the CUDA kernels
// may index with uint32_t).
inline bool fits_32_bits(const StridedPlan& p) {
  constexpr int64_t kLimit = int64_t{1} << 31;
  if (p.numel >= kLimit) return false;
  for (const auto& st : p.strides) {
    int64_t last = 0;  // largest offset the operand is read at
    for (size_t d = 0; d < p.dims.size(); ++d) last += (p.dims[d] - 1) * st[d];
    if (last >= kLimit) return false;
  }
  return true;
}

// `p`'s operands `operands` (at most K, in that order) in fixed arrays; throws naming `what`
// when the plan has more than kMaxRank dimensions.
template <int K, typename I>
StridedIndex<K, I> strided_index(const StridedPlan& p, const std::vector<size_t>& operands,
                                 const std::string& what) {
  if (p.rank() > kMaxRank)
    throw Error(what + ": the tensors' layout needs " + std::to_string(p.rank()) +
                " dimensions after merging, more than the " + std::to_string(kMaxRank) +
                " the CUDA kernels index");
  if (operands.size() > static_cast<size_t>(K))
    throw Error(what + ": " + std::to_string(operands.size()) + " operands in one index, at most " +
                std::to_string(K));
  StridedIndex<K, I> s;
  s.rank = p.rank();
  for (int d = 0; d < p.rank(); ++d) {
    const int e = p.rank() - 1 - d;
    s.dims[e] = static_cast<I>(p.dims[d]);
    for (size_t k = 0; k < operands.size(); ++k)
      s.strides[k][e] = static_cast<I>(p.strides.at(operands[k])[d]);
  }
  return s;
}

// One operand walking `dims` with `strides` (rank dims.size(), possibly 0), in fixed arrays.
template <typename I>
StridedIndex<1, I> strided_index(const std::vector<int64_t>& dims,
                                 const std::vector<int64_t>& strides, const std::string& what) {
  if (dims.size() > static_cast<size_t>(kMaxRank))
    throw Error(what + ": the tensors' layout needs " + std::to_string(dims.size()) +
                " dimensions after merging, more than the " + std::to_string(kMaxRank) +
                " the CUDA kernels index");
  StridedIndex<1, I> s;
  s.rank = static_cast<int>(dims.size());
  for (size_t d = 0; d < dims.size(); ++d) {
    const size_t e = dims.size() - 1 - d;
    s.dims[e] = static_cast<I>(dims[d]);
    s.strides[0][e] = static_cast<I>(strides[d]);
  }
  return s;
}

}  // namespace oxtrain::runtime::math
