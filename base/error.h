// oxtrain::Error, the one exception type a user sees.
//
// Every user-facing failure (bad file, unsupported op, shapes that disagree, a flag out of
// range) is an Error whose message is one line naming the op, node, file, flag or shapes
// involved and, where there is one, what to do. The CLI prints it after "oxtrain: error: " and
// exits with status 2. Names that come from files go through escape_name() (base/text.h) so a
// name holding newlines or control bytes cannot break the line.
#pragma once

#include <stdexcept>
#include <string>

namespace oxtrain {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace oxtrain
