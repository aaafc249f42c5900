// oxtrain.AllReduce on the CPU: output i = input i summed over the job's ranks (averaged with
// `average` = 1), through the communicator in the execution context (Gloo). Writes (=).
//
// The planner keeps each output in its input's buffer, so a bucket's gradients stay one
// contiguous slice of the gradient arena; one collective then covers the whole slice, the
// alignment padding between tensors included (zeros on every rank, so they stay zero). Without
// a communicator (this process alone) the op passes its inputs through: the average over one
// rank.
#include <cstring>
#include <string>
#include <vector>

#include "runtime/cpu/kernels.h"
#include "graph/ops.h"
#include "runtime/dist/communicator.h"

namespace oxtrain::runtime {
namespace {

class AllReduceKernel : public Kernel {
 public:
  AllReduceKernel(const graph::Node& node) : where_(node.describe()), average_(node.attr_int("average", 1) != 0) {
    for (const graph::Value* v : node.inputs)
      if (!v || v->dtype != DType::f32)
        throw Error(where_ + ": AllReduce takes float32 gradients, got " +
                    (v ? graph::dtype_name(v->dtype) : std::string("an omitted input")));
  }
  std::string describe() const override { return "allreduce " + std::string(average_ ? "average" : "sum"); }

  void run(const KernelArgs& args) override {
    for (size_t i = 0; i < args.inputs.size(); ++i)
      if (args.outputs[i].data != args.inputs[i].data)
        std::memcpy(args.outputs[i].data, args.inputs[i].data, args.inputs[i].bytes());
    dist::Communicator* comm = args.context ? args.context->communicator : nullptr;
    if (!comm || comm->world_size() == 1) return;
    // Contiguous outputs in order (padding of at most 256 bytes between): one collective.
    bool contiguous = true;
    for (size_t i = 1; i < args.outputs.size() && contiguous; ++i) {
      auto* end = static_cast<uint8_t*>(args.outputs[i - 1].data) + args.outputs[i - 1].bytes();
      auto* next = static_cast<uint8_t*>(args.outputs[i].data);
      contiguous = next >= end && next - end <= 256 && (next - end) % sizeof(float) == 0;
    }
    std::vector<std::pair<float*, size_t>> spans;
    if (contiguous && !args.outputs.empty()) {
      auto* first = args.outputs.front().as<float>();
      auto* end = reinterpret_cast<float*>(static_cast<uint8_t*>(args.outputs.back().data) + args.outputs.back().bytes());
      spans.push_back({first, static_cast<size_t>(end - first)});
    } else {
      for (const TensorView& o : args.outputs) spans.push_back({o.as<float>(), static_cast<size_t>(o.numel())});
    }
    const float scale = average_ ? 1.0f / static_cast<float>(comm->world_size()) : 1.0f;
    for (auto [data, count] : spans) {
      comm->allreduce_sum(data, count);
      if (average_)
        for (size_t k = 0; k < count; ++k) data[k] *= scale;
    }
  }

 private:
  std::string where_;
  bool average_;
};

}  // namespace

void register_cpu_collective_kernels(KernelRegistry& registry) {
  registry.add(graph::kOxtrainDomain, "AllReduce", Device::cpu,
               [](const KernelInit& init) { return std::make_unique<AllReduceKernel>(init.node); });
}

}  // namespace oxtrain::runtime
