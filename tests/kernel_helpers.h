// Running one kernel on host tensors, for the kernel tests: builds a one-node graph whose
// values carry the given shapes, makes the kernel through the global registry (as a Session
// does) and runs it, on the CPU or (copying in and out) on the GPU.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/kernel.h"

namespace oxtrain::test {

struct OutputSpec {
  graph::DType dtype;
  graph::Shape shape;
};

class KernelCase {
 public:
  // An input Tensor with dtype undefined stands for an omitted optional input; an output spec
  // with dtype undefined for an omitted optional output.
  KernelCase(const std::string& op, const std::string& domain, std::vector<graph::Tensor> inputs,
             std::vector<OutputSpec> outputs);
  graph::Node& node() { return *node_; }
  void set_attr(const std::string& key, graph::Attribute value) { node_->attrs[key] = std::move(value); }
  // Makes the kernel and runs it; outputs are then in output(i). Throws what the factory throws.
  // On CUDA the inputs are copied to the GPU, the kernel runs on its stream, the outputs are
  // copied back (outputs start zero-filled on both devices).
  void run(int64_t opset = 17, runtime::Device device = runtime::Device::cpu,
           runtime::Precision precision = runtime::Precision::fp32);
  graph::Tensor& output(size_t i) { return outputs_.at(i); }
  graph::Tensor& input(size_t i) { return inputs_.at(i); }

 private:
  graph::Graph graph_;
  graph::Node* node_ = nullptr;
  std::vector<graph::Tensor> inputs_;
  std::vector<graph::Tensor> outputs_;
};

// Whether a GPU can run CUDA kernels here; otherwise `why` says why not.
bool gpu_available(std::string* why = nullptr);
// In a CUDA test: skips it, with one message, where no GPU is at hand.
#define OXTRAIN_REQUIRE_GPU()                                               \
  do {                                                                      \
    std::string why_no_gpu;                                                 \
    if (!::oxtrain::test::gpu_available(&why_no_gpu))                       \
      GTEST_SKIP() << "CUDA test skipped: " << why_no_gpu;                  \
  } while (0)

// Runs `c` on the CPU and returns its outputs, then runs it on the GPU (whose outputs are then
// c.output(i)). Call after OXTRAIN_REQUIRE_GPU().
std::vector<graph::Tensor> run_cpu_then_cuda(KernelCase& c, int64_t opset = 17,
                                             runtime::Precision precision = runtime::Precision::fp32);

// Runs `c` on the CPU, then on the GPU, and checks every output of the GPU run against the CPU
// run: floats within `rtol` of the largest CPU magnitude (NaN-aware), integers exactly.
// Call after OXTRAIN_REQUIRE_GPU().
::testing::AssertionResult cuda_matches_cpu(KernelCase& c, double rtol, int64_t opset = 17,
                                            runtime::Precision precision = runtime::Precision::fp32);

// What a bitwise comparison makes of NaN: `exact` compares its bits too (ops that only select
// or copy values keep the payload and sign); `any` lets any NaN match any NaN (arithmetic on
// NaN gives the device's own: x86 keeps the operand's payload, NVIDIA GPUs one canonical NaN).
enum class NanBits { exact, any };
// Runs `c` on the CPU, then on the GPU: every output must be the same bytes (the sign of zero
// and infinities included, which cuda_matches_cpu does not look at). Call after
// OXTRAIN_REQUIRE_GPU().
::testing::AssertionResult cuda_bitwise_matches_cpu(KernelCase& c, int64_t opset = 17,
                                                    NanBits nan = NanBits::exact);

// Deterministic test data in [lo, hi).
graph::Tensor random_tensor(graph::DType dtype, graph::Shape shape, uint64_t seed,
                            double lo = -1.0, double hi = 1.0);
inline constexpr graph::DType kFloatTypes[] = {graph::DType::f32, graph::DType::f64};
// Relative tolerance of a kernel against a double reference: float32 or float64 rounding.
inline double tolerance(graph::DType dt) { return dt == graph::DType::f32 ? 1e-5 : 1e-12; }
// NaN-aware: every element within rtol * max(|want|, 1); a NaN anywhere fails.
::testing::AssertionResult close(const graph::Tensor& got, const std::vector<double>& want,
                                 double rtol);
std::vector<double> values(const graph::Tensor& t);  // every element as double

// max |got - want| over the tensor divided by max |want|; infinity where either holds a NaN or
// an infinity (NaN-aware: a NaN never passes a bound).
double max_relative_difference(const graph::Tensor& got, const graph::Tensor& want);

// Element i as double, for any float dtype.
double element(const graph::Tensor& t, int64_t i);
void set_element(graph::Tensor& t, int64_t i, double v);

}  // namespace oxtrain::test
