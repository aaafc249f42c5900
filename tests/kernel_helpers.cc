#include "tests/kernel_helpers.h"

#include "base/half.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "graph/zoo.h"
#include "runtime/device.h"
#include "runtime/device_runtime.h"

namespace oxtrain::test {

using graph::DType;
using graph::Tensor;

KernelCase::KernelCase(const std::string& op, const std::string& domain,
                       std::vector<Tensor> inputs, std::vector<OutputSpec> outputs)
    : inputs_(std::move(inputs)) {
  std::vector<graph::Value*> ins, outs;
  for (size_t i = 0; i < inputs_.size(); ++i) {
    if (inputs_[i].dtype == DType::undefined) {
      ins.push_back(nullptr);
      continue;
    }
    graph::Value* v = graph_.add_value("in" + std::to_string(i), inputs_[i].dtype,
                                       inputs_[i].shape, graph::Role::Input);
    v->rank_known = true;
    ins.push_back(v);
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].dtype == DType::undefined) {
      outs.push_back(nullptr);
      outputs_.emplace_back();
      continue;
    }
    graph::Value* v = graph_.add_value("out" + std::to_string(i), outputs[i].dtype,
                                       outputs[i].shape);
    v->rank_known = true;
    outs.push_back(v);
    outputs_.emplace_back(outputs[i].dtype, outputs[i].shape);
  }
  node_ = graph_.add_node(op, ins, outs, "test_" + op, domain);
}

void KernelCase::run(int64_t opset, runtime::Device device, runtime::Precision precision) {
  using namespace runtime;
  const KernelFactory* factory = KernelRegistry::global().find(node_->domain, node_->op_type, device);
  if (!factory) throw Error(std::string("no ") + device_name(device) + " kernel for " + node_->describe());
  std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(device, precision);
  std::unique_ptr<Kernel> kernel = (*factory)(KernelInit{*node_, opset, device, &rt->context(), precision});
  // Released however run() ends: a kernel that throws (a test of its refusal) leaks nothing.
  struct Buffers {
    DeviceRuntime& rt;
    std::vector<void*> list;
    ~Buffers() {
      for (void* p : list) rt.release(p);
    }
    void push_back(void* p) { list.push_back(p); }
  } buffers{*rt, {}};
  auto place = [&](Tensor& t, bool copy_in) -> void* {
    if (t.dtype == DType::undefined) return nullptr;
    void* p = rt->allocate(static_cast<int64_t>(t.bytes.size()), "a test tensor");
    buffers.push_back(p);
    if (copy_in && !t.bytes.empty()) rt->copy_to_device(p, t.bytes.data(), t.bytes.size());
    return p;
  };
  KernelArgs args;
  for (auto& t : inputs_) args.inputs.push_back(TensorView{place(t, true), t.dtype, t.shape});
  for (auto& t : outputs_) {
    if (t.dtype != DType::undefined) std::fill(t.bytes.begin(), t.bytes.end(), uint8_t{0});
    args.outputs.push_back(TensorView{place(t, false), t.dtype, t.shape});
  }
  args.workspace_bytes = kernel->workspace_bytes();
  args.workspace = rt->allocate(static_cast<int64_t>(args.workspace_bytes), "the test's workspace");
  buffers.push_back(args.workspace);
  args.context = &rt->context();
  kernel->run(args);
  for (size_t i = 0; i < outputs_.size(); ++i)
    if (args.outputs[i].present() && !outputs_[i].bytes.empty())
      rt->copy_to_host(outputs_[i].bytes.data(), args.outputs[i].data, outputs_[i].bytes.size());
  rt->synchronize();
}

bool gpu_available(std::string* why) {
  if (!runtime::cuda_compiled()) {
    if (why) *why = "this build has no CUDA runtime";
    return false;
  }
  std::string reason;
  if (runtime::cuda_devices(&reason).empty()) {
    if (why) *why = reason;
    return false;
  }
  return true;
}

std::vector<Tensor> run_cpu_then_cuda(KernelCase& c, int64_t opset, runtime::Precision precision) {
  c.run(opset, runtime::Device::cpu);
  std::vector<Tensor> want;
  for (size_t i = 0; i < c.node().outputs.size(); ++i) want.push_back(c.output(i));
  c.run(opset, runtime::Device::cuda, precision);
  return want;
}

::testing::AssertionResult cuda_matches_cpu(KernelCase& c, double rtol, int64_t opset,
                                            runtime::Precision precision) {
  const std::vector<Tensor> want = run_cpu_then_cuda(c, opset, precision);
  for (size_t i = 0; i < want.size(); ++i) {
    const Tensor& got = c.output(i);
    if (want[i].dtype == DType::undefined) continue;
    if (graph::is_float(want[i].dtype)) {
      double d = max_relative_difference(got, want[i]);
      if (!(d <= rtol))
        return ::testing::AssertionFailure() << c.node().describe() << " output " << i << ": CUDA differs from CPU by "
                                             << d << " (relative to the largest value), bound " << rtol;
    } else if (got.bytes != want[i].bytes) {
      return ::testing::AssertionFailure() << c.node().describe() << " output " << i << ": CUDA and CPU differ";
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult cuda_bitwise_matches_cpu(KernelCase& c, int64_t opset, NanBits nan) {
  const std::vector<Tensor> want = run_cpu_then_cuda(c, opset);
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i].dtype == DType::undefined) continue;
    const Tensor& got = c.output(i);
    if (got.bytes.size() != want[i].bytes.size())
      return ::testing::AssertionFailure() << c.node().describe() << " output " << i << ": sizes differ";
    const size_t elem = graph::dtype_size(want[i].dtype);
    for (size_t b = 0; b < got.bytes.size(); b += elem) {
      if (std::memcmp(got.bytes.data() + b, want[i].bytes.data() + b, elem) == 0) continue;
      const auto at = static_cast<int64_t>(b / elem);
      if (nan == NanBits::any && std::isnan(element(got, at)) && std::isnan(element(want[i], at))) continue;
      return ::testing::AssertionFailure() << c.node().describe() << " output " << i << ": element " << at
                                           << " is " << element(got, at) << " on CUDA, " << element(want[i], at)
                                           << " on the CPU";
    }
  }
  return ::testing::AssertionSuccess();
}

Tensor random_tensor(DType dtype, graph::Shape shape, uint64_t seed, double lo, double hi) {
  Tensor t(dtype, std::move(shape));
  graph::Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) set_element(t, i, lo + (hi - lo) * rng.uniform());
  return t;
}

::testing::AssertionResult close(const Tensor& got, const std::vector<double>& want, double rtol) {
  if (got.numel() != static_cast<int64_t>(want.size()))
    return ::testing::AssertionFailure() << "got " << got.numel() << " elements, want " << want.size();
  for (size_t i = 0; i < want.size(); ++i) {
    double g = element(got, static_cast<int64_t>(i)), w = want[i];
    if (!(std::fabs(g - w) <= rtol * std::max(std::fabs(w), 1.0)))
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", want " << w;
  }
  return ::testing::AssertionSuccess();
}

std::vector<double> values(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = element(t, static_cast<int64_t>(i));
  return v;
}

double element(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32: return t.data<float>()[i];
    case DType::f64: return t.data<double>()[i];
    case DType::f16: return fp16_to_float(t.data<uint16_t>()[i]);
    case DType::bf16: return bf16_to_float(t.data<uint16_t>()[i]);
    case DType::i64: return static_cast<double>(t.data<int64_t>()[i]);
    case DType::i32: return t.data<int32_t>()[i];
    case DType::u8:
    case DType::boolean: return t.data<uint8_t>()[i];
    default: throw Error("element(): unsupported dtype");
  }
}

void set_element(Tensor& t, int64_t i, double v) {
  switch (t.dtype) {
    case DType::f32: t.data<float>()[i] = static_cast<float>(v); break;
    case DType::f64: t.data<double>()[i] = v; break;
    case DType::f16: t.data<uint16_t>()[i] = float_to_fp16(static_cast<float>(v)); break;
    case DType::bf16: t.data<uint16_t>()[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::i64: t.data<int64_t>()[i] = static_cast<int64_t>(v); break;
    case DType::i32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::u8:
    case DType::boolean: t.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
    default: throw Error("set_element(): unsupported dtype");
  }
}

double max_relative_difference(const Tensor& got, const Tensor& want) {
  if (got.numel() != want.numel()) return INFINITY;
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    double a = element(got, i), b = element(want, i);
    if (!std::isfinite(a) || !std::isfinite(b)) return INFINITY;
    diff = std::max(diff, std::fabs(a - b));
    scale = std::max(scale, std::fabs(b));
  }
  return diff / std::max(scale, 1e-30);
}

}  // namespace oxtrain::test
