// oxtrain.AllReduce on the CPU: output i = input i summed over the job's ranks (averaged with
// `average` = 1), through the communicator in the execution context (Gloo). Writes (=).
//
// Asynchronous: run() hands the collective to the communicator's one communication thread
// (first in, first out, so every rank issues the buckets in the same order) and returns; the
// Session waits for it before the optimizer reads the result, so the rest of backward computes
// meanwhile.
//
// The planner keeps each output in its input's buffer, so a bucket's gradients stay one
// contiguous slice of the gradient arena; one collective then covers the whole slice, the
// alignment padding between tensors (under 64 bytes) included (zeros on every rank, so they stay zero). Without
// a communicator (this process alone) the op passes its inputs through: the average over one
// rank.
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/cpu/kernels.h"
#include "graph/ops.h"
#include "runtime/dist/communicator.h"

namespace oxtrain::runtime {
namespace {

// One thread per communicator running its collectives in submission order.
class CommunicationThread {
 public:
  CommunicationThread() : thread_([this] { loop(); }) {}
  ~CommunicationThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    thread_.join();
  }
  std::future<void> submit(std::function<void()> work) {
    std::packaged_task<void()> task(std::move(work));
    std::future<void> done = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
    }
    ready_.notify_one();
    return done;
  }

  // The thread of `comm`, shared by every AllReduce kernel of that communicator.
  static std::shared_ptr<CommunicationThread> of(const dist::Communicator* comm) {
    static std::mutex mutex;
    static std::map<const dist::Communicator*, std::weak_ptr<CommunicationThread>> threads;
    std::lock_guard<std::mutex> lock(mutex);
    std::shared_ptr<CommunicationThread> t = threads[comm].lock();
    if (!t) threads[comm] = t = std::make_shared<CommunicationThread>();
    return t;
  }

 private:
  void loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

class AllReduceKernel : public Kernel {
 public:
  AllReduceKernel(const graph::Node& node, dist::Communicator* comm)
      : where_(node.describe()), average_(node.attr_int("average", 1) != 0) {
    if (comm && comm->world_size() > 1) thread_ = CommunicationThread::of(comm);
    for (const graph::Value* v : node.inputs)
      if (!v || v->dtype != DType::f32)
        throw Error(where_ + ": AllReduce takes float32 gradients, got " +
                    (v ? graph::dtype_name(v->dtype) : std::string("an omitted input")));
  }
  std::string describe() const override { return "allreduce " + std::string(average_ ? "average" : "sum"); }
  bool asynchronous() const override { return thread_ != nullptr; }
  void wait() override {
    if (done_.valid()) done_.get();
  }

  void run(const KernelArgs& args) override {
    for (size_t i = 0; i < args.inputs.size(); ++i)
      if (args.outputs[i].data != args.inputs[i].data)
        std::memcpy(args.outputs[i].data, args.inputs[i].data, args.inputs[i].bytes());
    dist::Communicator* comm = args.context ? args.context->communicator : nullptr;
    if (!comm || comm->world_size() == 1) return;
    // Contiguous outputs in order (less than the CPU plan's 64-byte alignment between, which
    // is padding): one collective.
    bool contiguous = true;
    for (size_t i = 1; i < args.outputs.size() && contiguous; ++i) {
      auto* end = static_cast<uint8_t*>(args.outputs[i - 1].data) + args.outputs[i - 1].bytes();
      auto* next = static_cast<uint8_t*>(args.outputs[i].data);
      contiguous = next >= end && next - end < 64 && (next - end) % sizeof(float) == 0;
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
    auto work = [comm, spans, scale, average = average_] {
      for (auto [data, count] : spans) {
        comm->allreduce_sum(data, count);
        if (average)
          for (size_t k = 0; k < count; ++k) data[k] *= scale;
      }
    };
    if (thread_)
      done_ = thread_->submit(std::move(work));
    else
      work();
  }

 private:
  std::string where_;
  bool average_;
  std::shared_ptr<CommunicationThread> thread_;  // null: this process alone
  std::future<void> done_;
};

}  // namespace

void register_cpu_collective_kernels(KernelRegistry& registry) {
  registry.add(graph::kOxtrainDomain, "AllReduce", Device::cpu,
               [](const KernelInit& init) {
                 return std::make_unique<AllReduceKernel>(
                     init.node, init.context ? init.context->communicator : nullptr);
               });
}

}  // namespace oxtrain::runtime
