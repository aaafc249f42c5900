// Kernels and their registry, keyed by (domain, op type, device).
//
// A kernel is made once per node when a Session compiles a graph (the factory sees the node
// with every input and output shape and dtype already inferred, so it can check them, pick
// an algorithm and report its workspace) and then runs once per step on buffers that the
// memory planner placed. Kernels write (=) their outputs; none accumulates into them.
//
// Buffers may alias: where an op's registry entry says an output may share an input's buffer
// (graph::NodeFacts::shares_input), the planner may give them one buffer, so such kernels
// must read element i before writing element i and nothing else.
//
// Kernels run with an execution context: the device, and on CUDA the stream and library
// handles (runtime/cuda/context.h). They never read tensor values on the host during a step:
// whatever must be known ahead is read at compile time from constant inputs; per-step scalars
// (learning rate, step count) are read on the device.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::runtime {

using graph::DType;
using graph::Node;
using graph::Shape;

enum class Device { cpu, cuda };
const char* device_name(Device device);

// Float32 arithmetic of convolutions and matrix products: strict fp32, or TF32 tensor cores
// (PyTorch's default for cuDNN convolutions). The CPU runtime is always strict.
enum class Precision { fp32, tf32 };
const char* precision_name(Precision precision);

struct CudaContext;  // runtime/cuda/context.h, in CUDA builds
namespace dist {
class Communicator;  // runtime/dist/communicator.h
}

// Where a kernel runs: the device and, on CUDA, the stream and library handles; with data
// parallelism, the communicator of the job's ranks (null: this process alone).
struct ExecContext {
  Device device = Device::cpu;
  CudaContext* cuda = nullptr;
  dist::Communicator* communicator = nullptr;
  // How kernels with library plans (cuDNN) choose one at compile time: true times the
  // candidates and keeps the fastest, which timing noise may make another plan in the next
  // run; false takes the heuristics' first that runs, the same plan every run, so a seeded run
  // repeats bit for bit (PyTorch's cudnn.benchmark = False).
  bool measure_plans = true;
};

// A typed view of a buffer the runtime owns.
struct TensorView {
  void* data = nullptr;  // nullptr for an omitted optional input or output
  DType dtype = DType::undefined;
  Shape shape;

  bool present() const { return data != nullptr; }
  int64_t numel() const { return graph::shape_numel(shape); }
  size_t bytes() const { return static_cast<size_t>(numel()) * graph::dtype_size(dtype); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

struct KernelArgs {
  std::vector<TensorView> inputs;   // in the node's input order
  std::vector<TensorView> outputs;  // in the node's output order, preallocated
  void* workspace = nullptr;        // this kernel's own slice, workspace_bytes() long
  size_t workspace_bytes = 0;
  const ExecContext* context = nullptr;  // never null when a Session runs the kernel
};

class Kernel {
 public:
  virtual ~Kernel() = default;
  virtual size_t workspace_bytes() const { return 0; }
  virtual void run(const KernelArgs& args) = 0;
  // What was chosen at compile time (engine, algorithm, workspace), for `oxtrain graph`;
  // empty when there is nothing to say.
  virtual std::string describe() const { return {}; }
  // A kernel that finishes in the background (a collective on a communication thread) returns
  // from run() at once; wait() blocks until its work is done and rethrows its failure. The
  // Session waits before the first node that reads its outputs and at the end of the step, so
  // later nodes compute while it runs.
  virtual bool asynchronous() const { return false; }
  virtual void wait() {}
};

// Thrown by a factory whose device library has no way to compute the node as it is (no
// algorithm for its types, shapes and alignment), as opposed to a node that is wrong: a
// wrapper may then fall back to another form (runtime/cuda/half_emulation.cu does).
class KernelUnsupported : public Error {
 public:
  using Error::Error;
};

// What a factory sees at compile time.
struct KernelInit {
  const Node& node;    // attributes; node.inputs/outputs carry shapes and dtypes
  int64_t opset;       // opset of the node's domain in the graph
  Device device;
  // The context the kernel will run with: CUDA kernels build and measure their library plans
  // on it at compile time. Null where a graph is only planned (no device at hand).
  const ExecContext* context = nullptr;
  Precision precision = Precision::tf32;
};

using KernelFactory = std::function<std::unique_ptr<Kernel>(const KernelInit&)>;

class KernelRegistry {
 public:
  void add(const std::string& domain, const std::string& op_type, Device device,
           KernelFactory factory);
  const KernelFactory* find(const std::string& domain, const std::string& op_type,
                            Device device) const;
  // Replaces every factory of `device` by wrap(domain, op_type, factory).
  using Wrapper = std::function<KernelFactory(const std::string& domain, const std::string& op_type, KernelFactory)>;
  void wrap(Device device, const Wrapper& wrap);
  // The registry with every kernel built into this binary.
  static const KernelRegistry& global();

 private:
  std::map<std::string, KernelFactory> factories_;
};

// How the CUDA kernel of `node` takes it where not as it is: "half widened to float32"
// (runtime/cuda/half_emulation.cu), "channels-first between transposes"
// (runtime/layout_emulation.h), both, or empty (also in builds without CUDA). Such nodes cost
// conversion passes and workspace; `oxtrain graph --training --device cuda` lists them.
std::string cuda_emulation(const graph::Node& node);

// A kernel from a lambda, for kernels without state or workspace.
std::unique_ptr<Kernel> make_kernel(std::function<void(const KernelArgs&)> run,
                                    size_t workspace_bytes = 0);

// Threads the CPU kernels use (OpenMP and BLAS); default: all cores.
void set_cpu_threads(int threads);
int cpu_threads();

}  // namespace oxtrain::runtime
