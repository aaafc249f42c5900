// Kernels and their registry, keyed by (domain, op type, device).
//
// A kernel is made once per node when a Session compiles a graph (the factory sees the node
// with every input and output shape and dtype already inferred, so it can check them, pick
// an algorithm and report its workspace) and then runs once per step on buffers that the
// memory planner placed. Kernels write (=) their outputs; none accumulates into them.
//
// Buffers may alias: for the ops the planner runs in place (listed in planner.h) an output
// may share its buffer with an input of the same shape, so element-wise kernels must read
// element i before writing element i and nothing else.
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
  void* workspace = nullptr;        // at least workspace_bytes() of the kernel
};

class Kernel {
 public:
  virtual ~Kernel() = default;
  virtual size_t workspace_bytes() const { return 0; }
  virtual void run(const KernelArgs& args) = 0;
};

// What a factory sees at compile time.
struct KernelInit {
  const Node& node;    // attributes; node.inputs/outputs carry shapes and dtypes
  int64_t opset;       // opset of the node's domain in the graph
  Device device;
};

using KernelFactory = std::function<std::unique_ptr<Kernel>(const KernelInit&)>;

class KernelRegistry {
 public:
  void add(const std::string& domain, const std::string& op_type, Device device,
           KernelFactory factory);
  const KernelFactory* find(const std::string& domain, const std::string& op_type,
                            Device device) const;
  // The registry with every kernel built into this binary.
  static const KernelRegistry& global();

 private:
  std::map<std::string, KernelFactory> factories_;
};

// A kernel from a lambda, for kernels without state or workspace.
std::unique_ptr<Kernel> make_kernel(std::function<void(const KernelArgs&)> run,
                                    size_t workspace_bytes = 0);

// Threads the CPU kernels use (OpenMP and BLAS); default: all cores.
void set_cpu_threads(int threads);
int cpu_threads();

}  // namespace oxtrain::runtime
