#include "runtime/device.h"

#ifdef OXTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace oxtrain::runtime {

bool cuda_compiled() {
#ifdef OXTRAIN_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

std::vector<GpuInfo> cuda_devices(std::string* why) {
  std::vector<GpuInfo> out;
#ifdef OXTRAIN_HAVE_CUDA
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    int driver = 0;
    cudaDriverGetVersion(&driver);
    if (why) {
      if (err == cudaErrorInsufficientDriver && driver == 0)
        *why = "no NVIDIA driver is installed (no GPU on this machine)";
      else if (err == cudaErrorInsufficientDriver)
        *why = "the NVIDIA driver supports CUDA " + std::to_string(driver / 1000) + "." +
               std::to_string(driver % 1000 / 10) + ", older than this build's CUDA " +
               std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
               "; update the driver";
      else
        *why = std::string("CUDA reports: ") + cudaGetErrorString(err);
    }
    cudaGetLastError();  // clear the sticky error
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    GpuInfo g;
    g.index = i;
    g.name = prop.name;
    g.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    g.compute_major = prop.major;
    g.compute_minor = prop.minor;
    g.multiprocessors = prop.multiProcessorCount;
    out.push_back(g);
  }
  if (out.empty() && why) *why = "no GPU is visible";
#else
  if (why) *why = "this build has no CUDA runtime (configured without a CUDA toolkit)";
#endif
  return out;
}

}  // namespace oxtrain::runtime
