// Index math of the movement kernels (runtime/cpu/movement.cc and runtime/cuda/movement.cu):
// Gather and GatherND read whole rows of their data, GatherGrad adds them back. Functions
// marked OXTRAIN_HD run on both devices, so the CPU suite checks the GPU's arithmetic.
//
// Both gathers see the data as [outer, rows, inner]: Gather on `axis` has outer = the dims
// before it, rows = its size, inner = the dims after; GatherND (batch_dims 0) with indices of
// depth k has outer = 1, rows = the first k dims flattened, inner = the rest. The output is
// [outer, J, inner] for J index entries (of `depth` values each).
#pragma once

#include <cstdint>

#include "runtime/math/broadcast.h"
#include "runtime/math/hd.h"

namespace oxtrain::runtime::math {

struct GatherLayout {
  int64_t outer = 1, rows = 1, inner = 1;
  int64_t entries = 0;               // J
  int depth = 1;                     // index values per entry
  int64_t dims[kMaxRank] = {};       // the sizes of the dims an entry addresses
};

// The data row that index entry j reads; negative values count from the end of their dim.
template <typename Index>
OXTRAIN_HD int64_t gathered_row(const Index* indices, int64_t j, const GatherLayout& g) {
  int64_t row = 0;
  for (int t = 0; t < kMaxRank; ++t) {
    if (t < g.depth) {
      int64_t v = static_cast<int64_t>(indices[j * g.depth + t]);
      if (v < 0) v += g.dims[t];
      row = row * g.dims[t] + v;
    }
  }
  return row;
}

// Offset in the data of output element `flat` ([outer, J, inner] row-major).
template <typename Index>
OXTRAIN_HD int64_t gather_source(const Index* indices, int64_t flat, const GatherLayout& g) {
  const int64_t k = flat % g.inner;
  const int64_t rest = flat / g.inner;
  const int64_t j = rest % g.entries;
  const int64_t o = rest / g.entries;
  return (o * g.rows + gathered_row(indices, j, g)) * g.inner + k;
}

// dX element `flat` of GatherGrad ([outer, rows, inner]): the sum of the dY elements
// ([outer, J, inner]) gathered from it, added in the order `order[row_start[r]..row_start[r+1])`
// starting from 0. One IEEE addition at a time, the same on both devices. `dy(j)` gives dY's
// element j as T.
template <typename T, typename DyLoad>
OXTRAIN_HD T gather_grad_element_with(DyLoad&& dy, const int64_t* order, const int64_t* row_start, int64_t flat,
                                      const GatherLayout& g) {
  const int64_t k = flat % g.inner;
  const int64_t rest = flat / g.inner;
  const int64_t r = rest % g.rows;
  const int64_t o = rest / g.rows;
  T acc = T(0);
  const int64_t base = o * g.entries * g.inner + k;
  for (int64_t t = row_start[r]; t < row_start[r + 1]; ++t) acc = acc + dy(base + order[t] * g.inner);
  return acc;
}
template <typename T>
OXTRAIN_HD T gather_grad_element(const T* dy, const int64_t* order, const int64_t* row_start,
                                 int64_t flat, const GatherLayout& g) {
  return gather_grad_element_with<T>([dy](int64_t j) { return dy[j]; }, order, row_start, flat, g);
}

}  // namespace oxtrain::runtime::math
