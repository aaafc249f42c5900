#include "base/checked.h"

#include <cmath>

namespace oxtrain {

std::string dims_text(std::span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ",";
    if (i == 8 && dims.size() > 9) {
      s += "... " + std::to_string(dims.size() - 8) + " more";
      break;
    }
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

int64_t numel_or_throw(std::span<const int64_t> dims, const std::string& what) {
  for (int64_t d : dims)
    if (d < 0) throw Error(what + " has a negative dimension in shape " + dims_text(dims));
  auto n = checked_numel(dims);
  if (!n) throw Error(what + " has shape " + dims_text(dims) + ", whose element count overflows 64 bits");
  return *n;
}

int64_t bytes_or_throw(std::span<const int64_t> dims, size_t element_size, const std::string& what) {
  int64_t n = numel_or_throw(dims, what);
  auto b = checked_mul(n, static_cast<int64_t>(element_size));
  if (!b) throw Error(what + " has shape " + dims_text(dims) + ", whose byte size overflows 64 bits");
  return *b;
}

std::optional<int64_t> double_to_int64(double value) {
  // 2^63 is exactly representable; every double below it converts without overflow.
  if (!std::isfinite(value) || value >= 9223372036854775808.0 || value < -9223372036854775808.0)
    return std::nullopt;
  return static_cast<int64_t>(value);
}

}  // namespace oxtrain
