// Per-element math shared by a CPU kernel and its CUDA twin. Functions marked OXTRAIN_HD
// compile for the host everywhere and for the device under nvcc, so the CPU test suite checks
// the same arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define OXTRAIN_HD __host__ __device__ __forceinline__
#else
#define OXTRAIN_HD inline
#endif
