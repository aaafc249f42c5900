// The CUDA DeviceRuntime: one device, one compute stream, cuDNN and cuBLASLt handles bound to
// it. Arenas come from cudaMalloc (one per arena, at allocate time, never during a step).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>

#include "graph/inspect.h"
#include "runtime/cuda/context.h"
#include "runtime/device_runtime.h"
#include "runtime/dist/communicator.h"

namespace oxtrain::runtime {
namespace {

std::string version_text(int v) {  // 13000 -> "13.0"
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

class CudaRuntime : public DeviceRuntime {
 public:
  CudaRuntime(Precision precision, int index) {
    const std::string where = "device cuda";
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    int driver = 0;
    cudaDriverGetVersion(&driver);
    if (err == cudaErrorInsufficientDriver && driver == 0)
      throw Error("device cuda: no NVIDIA driver is installed (no GPU on this machine); use --device cpu");
    if (err == cudaErrorInsufficientDriver) {
      throw Error("device cuda: the NVIDIA driver supports CUDA " + version_text(driver) +
                  " but this build of oxtrain needs CUDA " + version_text(CUDART_VERSION) +
                  "; update the driver, or use --device cpu");
    }
    if (err != cudaSuccess || count == 0)
      throw Error(std::string("device cuda: no GPU is visible (") +
                  (err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device found") +
                  "); use --device cpu");
    if (index < 0 || index >= count)
      throw Error("device cuda: GPU " + std::to_string(index) + " does not exist (" +
                  std::to_string(count) + " visible)");
    size_t cudnn_version = cudnnGetVersion();
    if (cudnn_version < CUDNN_VERSION)
      throw Error("device cuda: cuDNN " + std::to_string(cudnn_version) + " was loaded but oxtrain was built against " +
                  std::to_string(CUDNN_VERSION) + "; put cuDNN " + std::to_string(CUDNN_MAJOR) + "." +
                  std::to_string(CUDNN_MINOR) + " or newer first on LD_LIBRARY_PATH");
    cuda::check(cudaSetDevice(index), "cudaSetDevice", where);
    cudaDeviceProp prop{};
    cuda::check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties", where);
    name_ = prop.name;
    cuda_.device = index;
    cuda_.precision = precision;
    cuda_.multiprocessors = prop.multiProcessorCount;
    cuda_.compute_major = prop.major;
    cuda_.compute_minor = prop.minor;
    cuda::check(cudaStreamCreateWithFlags(&cuda_.stream, cudaStreamNonBlocking), "cudaStreamCreate", where);
    cuda::check(cudnnCreate(&cuda_.cudnn), "cudnnCreate", where);
    cuda::check(cudnnSetStream(cuda_.cudnn, cuda_.stream), "cudnnSetStream", where);
    cuda::check(cublasLtCreate(&cuda_.cublaslt), "cublasLtCreate", where);
    context_.device = Device::cuda;
    context_.cuda = &cuda_;
  }
  ~CudaRuntime() override {
    cudaStreamSynchronize(cuda_.stream);
    if (copy_stream_) cudaStreamSynchronize(copy_stream_);
    if (exec_) cudaGraphExecDestroy(exec_);
    for (auto& [dst, pinned] : pinned_) {
      cudaFreeHost(pinned.data);
      cudaEventDestroy(pinned.copied);
    }
    for (cudaEvent_t e : {staged_, consumed_})
      if (e) cudaEventDestroy(e);
    if (copy_stream_) cudaStreamDestroy(copy_stream_);
    for (auto& [p, size] : sizes_) cudaFree(p);
    if (cuda_.cublaslt) cublasLtDestroy(cuda_.cublaslt);
    if (cuda_.cudnn) cudnnDestroy(cuda_.cudnn);
    if (cuda_.stream) cudaStreamDestroy(cuda_.stream);
  }

  std::string description() const override { return name_ + " (cuda:" + std::to_string(cuda_.device) + ")"; }

  void* allocate(int64_t bytes, const std::string& what) override {
    size_t size = static_cast<size_t>((std::max<int64_t>(bytes, 256) + 255) / 256 * 256);
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw Error("out of GPU memory: " + what + " needs " + graph::human_bytes(static_cast<int64_t>(size)) +
                  " but " + name_ + " has " + graph::human_bytes(free_memory()) + " free of " +
                  graph::human_bytes(total_memory()));
    }
    cuda::check(err, "cudaMalloc", "allocating " + what);
    cuda::check(cudaMemsetAsync(p, 0, size, cuda_.stream), "cudaMemsetAsync", "allocating " + what);
    ++counters_.allocations;
    sizes_[p] = static_cast<int64_t>(size);
    held_ += static_cast<int64_t>(size);
    peak_ = std::max(peak_, held_);
    return p;
  }
  void release(void* data) override {
    auto it = sizes_.find(data);
    if (it == sizes_.end()) return;
    cudaStreamSynchronize(cuda_.stream);
    cudaFree(data);
    held_ -= it->second;
    sizes_.erase(it);
  }
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    // Pageable source: cudaMemcpyAsync returns once the source has been staged.
    cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda_.stream), "cudaMemcpyAsync H2D",
                "copying to the GPU");
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda_.stream), "cudaMemcpyAsync D2H",
                "copying from the GPU");
    synchronize();
  }
  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_.stream), "cudaMemcpyAsync D2D",
                "copying on the GPU");
  }
  void zero(void* dst, size_t bytes) override {
    cuda::check(cudaMemsetAsync(dst, 0, bytes, cuda_.stream), "cudaMemsetAsync", "zero-filling on the GPU");
  }
  void synchronize() override {
    ++counters_.synchronizations;
    dist::Communicator* comm = context_.communicator;
    if (!comm || !comm->collectives_on_device()) {
      cuda::check(cudaStreamSynchronize(cuda_.stream), "cudaStreamSynchronize", "waiting for the GPU");
      return;
    }
    // The step's collectives run on the device: poll, so a failed or stuck one (a peer gone)
    // ends in an Error, not a wait without end. Sleeps stay short: a step takes milliseconds.
    const auto start = std::chrono::steady_clock::now();
    auto sleep = std::chrono::microseconds(2);
    for (;;) {
      cudaError_t err = cudaStreamQuery(cuda_.stream);
      if (err == cudaSuccess) return;
      if (err != cudaErrorNotReady) cuda::check(err, "cudaStreamQuery", "waiting for the GPU");
      comm->check_while_waiting(std::chrono::steady_clock::now() - start, "waiting for the GPU");
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::microseconds(200));
    }
  }
  int64_t free_memory() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
    return static_cast<int64_t>(free);
  }
  int64_t total_memory() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
    return static_cast<int64_t>(total);
  }
  int64_t peak_allocated() const override { return peak_; }

  bool stages_inputs() const override { return true; }
  // The copy stream and its two events, made at the first staged input.
  void open_copy_stream(const std::string& where) {
    if (copy_stream_) return;
    cuda::check(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "cudaStreamCreate", where);
    cuda::check(cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming), "cudaEventCreate", where);
    cuda::check(cudaEventCreateWithFlags(&consumed_, cudaEventDisableTiming), "cudaEventCreate", where);
    cuda::check(cudaEventRecord(consumed_, cuda_.stream), "cudaEventRecord", where);
  }
  void stage_written(void* dst, const std::function<void(void*, void*)>& write) override {
    const std::string where = "staging an input written on the device";
    open_copy_stream(where);
    cuda::check(cudaStreamWaitEvent(copy_stream_, consumed_, 0), "cudaStreamWaitEvent", where);
    write(dst, copy_stream_);
    cuda::check(cudaEventRecord(staged_, copy_stream_), "cudaEventRecord", where);
    staged_pending_ = true;
  }
  void stage_to_device(void* dst, const void* src, size_t bytes) override {
    const std::string where = "staging an input";
    open_copy_stream(where);
    Pinned& pinned = pinned_[dst];
    if (pinned.bytes < bytes) {
      if (pinned.data) {
        cuda::check(cudaEventSynchronize(pinned.copied), "cudaEventSynchronize", where);
        cudaFreeHost(pinned.data);
      } else {
        cuda::check(cudaEventCreateWithFlags(&pinned.copied, cudaEventDisableTiming), "cudaEventCreate", where);
      }
      cuda::check(cudaHostAlloc(&pinned.data, bytes, cudaHostAllocDefault), "cudaHostAlloc", where);
      ++counters_.allocations;
      pinned.bytes = bytes;
      pinned.used = false;
    }
    if (pinned.used) {  // the previous copy out of this pinned buffer must have left it
      ++counters_.synchronizations;
      cuda::check(cudaEventSynchronize(pinned.copied), "cudaEventSynchronize", where);
    }
    std::memcpy(pinned.data, src, bytes);
    cuda::check(cudaStreamWaitEvent(copy_stream_, consumed_, 0), "cudaStreamWaitEvent", where);
    cuda::check(cudaMemcpyAsync(dst, pinned.data, bytes, cudaMemcpyHostToDevice, copy_stream_),
                "cudaMemcpyAsync H2D", where);
    cuda::check(cudaEventRecord(pinned.copied, copy_stream_), "cudaEventRecord", where);
    cuda::check(cudaEventRecord(staged_, copy_stream_), "cudaEventRecord", where);
    pinned.used = true;
    staged_pending_ = true;
  }
  void join_staged() override {
    if (!staged_pending_) return;
    cuda::check(cudaStreamWaitEvent(cuda_.stream, staged_, 0), "cudaStreamWaitEvent", "waiting for staged inputs");
    staged_pending_ = false;
  }
  void staging_consumed() override {
    if (consumed_) cuda::check(cudaEventRecord(consumed_, cuda_.stream), "cudaEventRecord", "releasing staged inputs");
  }

  // Not with CUDA_LAUNCH_BLOCKING=1 (every launch waited for, to find which kernel fails): a
  // capture cannot wait, so such a run goes eagerly, kernel by kernel.
  bool can_capture() const override {
    const char* blocking = std::getenv("CUDA_LAUNCH_BLOCKING");
    return !(blocking && std::strcmp(blocking, "1") == 0);
  }
  // Thread-local capture: an unsafe call (allocation, host wait) from this thread still fails
  // the capture, while NCCL's own thread may set up connections meanwhile (NCCL's guidance
  // for collectives captured with a non-blocking communicator).
  void begin_capture() override {
    if (exec_) throw Error("device cuda: the step was already captured");
    cuda::check(cudaStreamBeginCapture(cuda_.stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture",
                "capturing the step as a CUDA graph");
  }
  void end_capture() override {
    cudaGraph_t graph = nullptr;
    cuda::check(cudaStreamEndCapture(cuda_.stream, &graph), "cudaStreamEndCapture",
                "capturing the step as a CUDA graph (a kernel allocated, synchronised or used another stream)");
    cudaGraphExec_t exec = nullptr;
    cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    cuda::check(err, "cudaGraphInstantiate", "capturing the step as a CUDA graph");
    exec_ = exec;
  }
  void abort_capture() noexcept override {
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(cuda_.stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // an invalidated capture's error is the step's, already thrown
  }
  void replay() override {
    if (!exec_) throw Error("device cuda: no captured step to replay");
    cuda::check(cudaGraphLaunch(exec_, cuda_.stream), "cudaGraphLaunch", "replaying the step");
  }

 private:
  struct Pinned {
    void* data = nullptr;
    size_t bytes = 0;
    cudaEvent_t copied = nullptr;
    bool used = false;
  };
  cudaStream_t copy_stream_ = nullptr;
  cudaEvent_t staged_ = nullptr, consumed_ = nullptr;
  bool staged_pending_ = false;
  std::unordered_map<void*, Pinned> pinned_;
  cudaGraphExec_t exec_ = nullptr;

  CudaContext cuda_;
  std::string name_;
  std::unordered_map<void*, int64_t> sizes_;
  int64_t held_ = 0, peak_ = 0;
};

}  // namespace

std::unique_ptr<DeviceRuntime> make_cuda_runtime(Precision precision, int index) {
  return std::make_unique<CudaRuntime>(precision, index);
}

}  // namespace oxtrain::runtime
