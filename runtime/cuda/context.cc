#include "runtime/cuda/context.h"

#include <algorithm>

namespace oxtrain::runtime::cuda {

void check(cudaError_t status, const char* what, const std::string& where) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call does not report it again
  throw Error(where + ": " + what + " failed: " + cudaGetErrorName(status) + " (" +
              cudaGetErrorString(status) + ")");
}

void check(cudnnStatus_t status, const char* what, const std::string& where) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  char detail[512] = {};
  cudnnGetLastErrorString(detail, sizeof(detail));
  std::string text = cudnnGetErrorString(status);
  if (detail[0]) text += std::string(" (") + detail + ")";
  throw Error(where + ": " + what + " failed: " + text);
}

// cuBLASLt returns cuBLAS's status codes; their names live in libcublas, which oxtrain does
// not otherwise need.
const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "an unknown cuBLAS status";
  }
}

void check(cublasStatus_t status, const char* what, const std::string& where) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error(where + ": " + what + " failed: " + cublas_status_name(status) + " (" +
              std::to_string(static_cast<int>(status)) + ")");
}

const CudaContext& context_of(const KernelArgs& args, const std::string& where) {
  if (!args.context || args.context->device != Device::cuda || !args.context->cuda)
    throw Error(where + ": a CUDA kernel was run without a CUDA context");
  return *args.context->cuda;
}

Launch launch_for(int64_t count, const CudaContext& ctx, unsigned threads) {
  Launch l;
  l.threads = threads;
  int64_t needed = (count + threads - 1) / threads;
  int64_t cap = std::max(1, ctx.multiprocessors) * int64_t{32};
  l.blocks = static_cast<unsigned>(std::clamp<int64_t>(needed, 1, cap));
  return l;
}

}  // namespace oxtrain::runtime::cuda
