// The CUDA execution context a kernel runs with, and the checks every CUDA, cuDNN and cuBLAS
// call goes through. A failed call throws oxtrain::Error naming the node and op it served
// ("Conv 'layer1.0.conv1': cudnn execute: CUDNN_STATUS_BAD_PARAM ...").
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <string>
#include <type_traits>

#include "base/error.h"
#include "runtime/kernel.h"

namespace oxtrain::runtime {

struct CudaContext {
  int device = 0;
  cudaStream_t stream = nullptr;  // the compute stream every kernel launches on
  cudnnHandle_t cudnn = nullptr;  // bound to `stream`
  cublasLtHandle_t cublaslt = nullptr;
  Precision precision = Precision::tf32;
  int multiprocessors = 0;
  int compute_major = 0, compute_minor = 0;
};

namespace cuda {

// `what` names the call; `where` the node (Node::describe()) or the runtime's own task.
void check(cudaError_t status, const char* what, const std::string& where);
void check(cudnnStatus_t status, const char* what, const std::string& where);
void check(cublasStatus_t status, const char* what, const std::string& where);

// The context of a kernel's arguments; throws when a CUDA kernel is run without one.
const CudaContext& context_of(const KernelArgs& args, const std::string& where);

// Launch geometry for `count` independent elements: blocks of `threads`, at most enough
// blocks to fill the device several times over (kernels stride over the rest).
struct Launch {
  unsigned blocks = 1;
  unsigned threads = 256;
};
Launch launch_for(int64_t count, const CudaContext& ctx, unsigned threads = 256);

// The element kinds of base/half.h's load_float / store_float, which kernels taking float32
// and half through one body are templated on: 0 float32, 1 float16, 2 bfloat16; -1 otherwise.
inline int float_kind(graph::DType dt) {
  return dt == graph::DType::f32 ? 0 : dt == graph::DType::f16 ? 1 : dt == graph::DType::bf16 ? 2 : -1;
}

// Calls f(std::integral_constant<int, kind>{}) for a kind (0, 1 or 2) known only at run time,
// and returns what f returns.
template <typename F>
decltype(auto) with_float_kind(int kind, F&& f) {
  if (kind == 1) return f(std::integral_constant<int, 1>{});
  if (kind == 2) return f(std::integral_constant<int, 2>{});
  return f(std::integral_constant<int, 0>{});
}

}  // namespace cuda
}  // namespace oxtrain::runtime
