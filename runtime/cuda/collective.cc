// oxtrain.AllReduce on CUDA: output i = input i summed over the job's ranks (averaged with
// `average` = 1, NCCL's ncclAvg), through the NcclCommunicator in the execution context. Writes
// (=). float32 only.
//
// Where an output does not share its input's buffer, the input is first copied into it on the
// compute stream (there, because the planner may hand the input's buffer to a later node as soon
// as this one has run). Then the work forks onto the communicator's stream (an event recorded on
// the compute stream, waited for there) and is all-reduced in place: one NCCL call over the
// whole slice when the outputs lie in order, each after the last with less than 256 bytes of
// alignment padding (the planner keeps a bucket's gradients one slice of the gradient arena; the
// padding is zero on every rank, so it stays zero; and as every buffer starts 256-aligned on
// CUDA, such a gap holds no other value), else one call per tensor in one NCCL group.
// A 'done' event is then recorded on the communication stream.
//
// Asynchronous: run() returns once NCCL has enqueued the work; wait() makes the compute stream
// wait for the 'done' event, a device-side join (no host wait). The Session calls it before the
// first node reading the outputs and at the end of the step, so the rest of backward computes
// while the gradients travel. Every call in run() and wait() is capturable in a CUDA graph
// (global mode): no allocation, no host synchronisation; the events are made at compile time.
//
// Without a communicator (this process alone) the kernel is synchronous and copies the inputs
// that do not share their output's buffer: the sum and the average over one rank.
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "graph/ops.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/dist/nccl_communicator.h"

namespace oxtrain::runtime {
namespace {

// The planner's alignment on CUDA: padding between two tensors is shorter, and a gap this long
// could hold another value.
constexpr size_t kAlignment = 256;

class CudaAllReduceKernel : public Kernel {
 public:
  CudaAllReduceKernel(const graph::Node& node, dist::NcclCommunicator* comm, const CudaContext* ctx)
      : where_(node.describe()), average_(node.attr_int("average", 1) != 0), comm_(comm) {
    if (!comm_) return;
    if (!ctx) throw Error(where_ + ": the NCCL all-reduce needs the CUDA context it will run with");
    if (comm_->device() != ctx->device)
      throw Error(where_ + ": the NCCL communicator is on GPU " + std::to_string(comm_->device()) +
                  " but the session runs on GPU " + std::to_string(ctx->device) + "; make both on the same GPU");
    cuda::check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate", where_);
    cuda::check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate", where_);
  }
  ~CudaAllReduceKernel() override {
    if (ready_) cudaEventDestroy(ready_);
    if (done_) cudaEventDestroy(done_);
  }
  CudaAllReduceKernel(const CudaAllReduceKernel&) = delete;
  CudaAllReduceKernel& operator=(const CudaAllReduceKernel&) = delete;

  std::string describe() const override {
    return std::string(comm_ ? "nccl" : "copy (this process alone)") + " allreduce " + (average_ ? "average" : "sum");
  }
  bool asynchronous() const override { return comm_ != nullptr; }

  void wait() override {
    if (!pending_) return;
    pending_ = false;
    cuda::check(cudaStreamWaitEvent(joined_stream_, done_, 0), "cudaStreamWaitEvent (join the all-reduce)", where_);
  }

  void run(const KernelArgs& args) override {
    const CudaContext& ctx = cuda::context_of(args, where_);
    for (size_t i = 0; i < args.inputs.size(); ++i)
      if (args.outputs[i].data != args.inputs[i].data && args.inputs[i].bytes() > 0)
        cuda::check(cudaMemcpyAsync(args.outputs[i].data, args.inputs[i].data, args.inputs[i].bytes(),
                                    cudaMemcpyDeviceToDevice, ctx.stream),
                    "cudaMemcpyAsync D2D", where_);
    if (!comm_) return;
    comm_->check_usable(where_);

    cuda::check(cudaEventRecord(ready_, ctx.stream), "cudaEventRecord (fork to the communication stream)", where_);
    cuda::check(cudaStreamWaitEvent(comm_->stream(), ready_, 0), "cudaStreamWaitEvent (fork to the communication stream)",
                where_);
    try {
      comm_->enqueue_allreduce(spans(args.outputs), average_, where_);
    } catch (...) {
      // Join the forked stream back even so, so that a capture in progress ends cleanly and
      // reports this failure rather than an unjoined stream.
      if (cudaEventRecord(done_, comm_->stream()) == cudaSuccess) cudaStreamWaitEvent(ctx.stream, done_, 0);
      throw;
    }
    cuda::check(cudaEventRecord(done_, comm_->stream()), "cudaEventRecord (all-reduce done)", where_);
    joined_stream_ = ctx.stream;
    pending_ = true;
  }

 private:
  // One span over the outputs when they lie in order with less than kAlignment bytes between
  // them, else one span per output (empty outputs are left out either way).
  static std::vector<dist::DeviceSpan> spans(const std::vector<TensorView>& outputs) {
    std::vector<const TensorView*> present;
    for (const TensorView& o : outputs)
      if (o.present() && o.numel() > 0) present.push_back(&o);
    std::vector<dist::DeviceSpan> result;
    if (present.empty()) return result;
    bool contiguous = true;
    for (size_t i = 1; i < present.size() && contiguous; ++i) {
      const auto* end = static_cast<const uint8_t*>(present[i - 1]->data) + present[i - 1]->bytes();
      const auto* next = static_cast<const uint8_t*>(present[i]->data);
      contiguous = next >= end && static_cast<size_t>(next - end) < kAlignment &&
                   static_cast<size_t>(next - end) % sizeof(float) == 0;
    }
    if (contiguous) {
      auto* first = present.front()->as<float>();
      const auto* end = reinterpret_cast<const float*>(static_cast<const uint8_t*>(present.back()->data) +
                                                       present.back()->bytes());
      result.push_back({first, static_cast<size_t>(end - first)});
    } else {
      for (const TensorView* o : present) result.push_back({o->as<float>(), static_cast<size_t>(o->numel())});
    }
    return result;
  }

  std::string where_;
  bool average_;
  dist::NcclCommunicator* comm_;  // null: this process alone
  cudaEvent_t ready_ = nullptr;   // recorded on the compute stream: the inputs are ready
  cudaEvent_t done_ = nullptr;    // recorded on the communication stream: the outputs are reduced
  cudaStream_t joined_stream_ = nullptr;
  bool pending_ = false;  // run() forked and wait() has not joined yet
};

std::unique_ptr<Kernel> make_all_reduce(const KernelInit& init) {
  const graph::Node& node = init.node;
  const std::string where = node.describe();
  // Checked before any CUDA call, so a refusal needs no GPU.
  if (node.inputs.size() != node.outputs.size())
    throw Error(where + ": " + std::to_string(node.inputs.size()) + " inputs but " +
                std::to_string(node.outputs.size()) + " outputs; each input has its output");
  for (size_t i = 0; i < node.inputs.size(); ++i) {
    const graph::Value* in = node.inputs[i];
    const graph::Value* out = node.outputs[i];
    if (!in || !out)
      throw Error(where + ": input and output " + std::to_string(i) + " must both be present");
    if (in->dtype != DType::f32 || out->dtype != DType::f32)
      throw Error(where + ": the CUDA kernel takes float32, got " + graph::dtype_name(in->dtype) + " (input " +
                  std::to_string(i) + ")");
    if (in->shape != out->shape)
      throw Error(where + ": input " + std::to_string(i) + " is " + graph::shape_str(in->shape) + " but its output is " +
                  graph::shape_str(out->shape));
  }
  dist::Communicator* comm = init.context ? init.context->communicator : nullptr;
  dist::NcclCommunicator* nccl = nullptr;
  if (comm) {
    nccl = dynamic_cast<dist::NcclCommunicator*>(comm);
    if (!nccl)
      throw Error(where + ": the CUDA kernel reduces GPU buffers through NCCL, but the job's communicator is " +
                  comm->backend() + "; use --dist-backend nccl with --device cuda");
  }
  return std::make_unique<CudaAllReduceKernel>(node, nccl, init.context ? init.context->cuda : nullptr);
}

}  // namespace

void register_cuda_collective_kernels(KernelRegistry& registry) {
  registry.add(graph::kOxtrainDomain, "AllReduce", Device::cuda, make_all_reduce);
}

}  // namespace oxtrain::runtime
