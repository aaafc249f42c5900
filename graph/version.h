#pragma once

namespace oxtrain {
inline constexpr const char* kVersion = "0.1.0";
}
