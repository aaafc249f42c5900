// Overflow-safe size arithmetic for every size that comes from a file.
//
// Shapes, byte counts, offsets and lengths read from ONNX files, checkpoints, TensorProto files,
// index caches and image headers are multiplied and added only through these helpers: a
// product or sum that does not fit in int64 (or a negative dimension) yields nullopt, or an
// Error naming what was being sized. Callers then compare the result with what is actually
// there (the file's size) or with a limit before allocating anything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "base/error.h"

namespace oxtrain {

// The largest tensor oxtrain will create from a description in a file without the bytes being
// present (a folded constant, a zero-filled tensor): 4 GiB. Real data (initializers,
// checkpoints) is bounded by the file size instead.
constexpr int64_t kMaxSynthesizedTensorBytes = int64_t(1) << 32;

inline std::optional<int64_t> checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline std::optional<int64_t> checked_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// Unsigned (file offsets): nullopt when a + b wraps.
inline std::optional<uint64_t> checked_add_u64(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// Number of elements of a shape of known, non-negative dimensions; nullopt when a dimension is
// negative or the product overflows int64. An empty shape (a scalar) has one element.
inline std::optional<int64_t> checked_numel(std::span<const int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) return std::nullopt;
    auto next = checked_mul(n, d);
    if (!next) return std::nullopt;
    n = *next;
  }
  return n;
}

// Byte size of a shape of elements of element_size bytes; nullopt as for checked_numel or when
// the byte count overflows int64.
inline std::optional<int64_t> checked_bytes(std::span<const int64_t> dims, size_t element_size) {
  auto n = checked_numel(dims);
  if (!n) return std::nullopt;
  return checked_mul(*n, static_cast<int64_t>(element_size));
}

// The throwing forms: `what` names the thing being sized ("initializer 'conv1.weight' of
// file 'm.onnx'"), the message gives the dimensions.
std::string dims_text(std::span<const int64_t> dims);
int64_t numel_or_throw(std::span<const int64_t> dims, const std::string& what);
int64_t bytes_or_throw(std::span<const int64_t> dims, size_t element_size, const std::string& what);

// Converts a double to int64 when it is finite and in range (NaN, ±inf and out-of-range values
// give nullopt; a plain cast would be undefined behaviour). Truncates toward zero as a C cast.
std::optional<int64_t> double_to_int64(double value);

}  // namespace oxtrain
