// Which devices this build of oxtrain can run on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace oxtrain::runtime {

struct GpuInfo {
  int index = 0;
  std::string name;
  int64_t memory_bytes = 0;
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
};

// True when this binary contains the CUDA runtime.
bool cuda_compiled();
// The visible GPUs; empty without CUDA, a driver or a GPU, and then `why` says which.
std::vector<GpuInfo> cuda_devices(std::string* why = nullptr);

}  // namespace oxtrain::runtime
