// The services a Session needs from a device: arenas, copies, the execution context its
// kernels run with. The CPU's is plain memory; CUDA's (runtime/cuda/device_runtime.cc) owns the
// compute stream and the cuDNN and cuBLASLt handles.
//
// Every allocation and every wait for the device goes through here and is counted, so a test
// can check that a training step neither allocates nor synchronises with the host.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "runtime/kernel.h"

namespace oxtrain::runtime {

struct DeviceCounters {
  int64_t allocations = 0;     // arenas and any other device allocation
  int64_t synchronizations = 0;  // host waits for the device (copies to the host included)
};

class DeviceRuntime {
 public:
  virtual ~DeviceRuntime() = default;
  // For CUDA: device `index`; throws Error with one line saying why there is no usable GPU
  // (no GPU, driver too old for this build, cuDNN older than the one built against).
  static std::unique_ptr<DeviceRuntime> create(Device device, Precision precision, int index = 0);

  Device device() const { return context_.device; }
  const ExecContext& context() const { return context_; }
  // The communicator collective kernels use (null: this process alone); set before compiling.
  void set_communicator(dist::Communicator* communicator) { context_.communicator = communicator; }
  // ExecContext::measure_plans; set before compiling.
  void set_measure_plans(bool measure) { context_.measure_plans = measure; }
  const DeviceCounters& counters() const { return counters_; }
  // "cpu" or "NVIDIA H200 (cuda:0)".
  virtual std::string description() const = 0;

  // A zero-filled buffer of `bytes` (at least 256-byte aligned); `what` names it in the error
  // when memory is short.
  virtual void* allocate(int64_t bytes, const std::string& what) = 0;
  virtual void release(void* data) = 0;
  // Host to device, ordered on the compute stream; `src` may be reused when the call returns.
  virtual void copy_to_device(void* dst, const void* src, size_t bytes) = 0;
  // Device to host: waits for the stream first (counted as a synchronisation).
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  // Device to device, ordered on the compute stream.
  virtual void copy_on_device(void* dst, const void* src, size_t bytes) = 0;
  // Zero-fills device memory, ordered on the compute stream.
  virtual void zero(void* dst, size_t bytes) = 0;
  // Waits until the compute stream has finished (counted). With a communicator whose
  // collectives run on the device (NCCL), the wait is bounded: a collective that failed, or
  // one that has not finished within the communicator's timeout (a peer gone), ends it with an
  // Error after stopping the collectives, instead of a hang.
  virtual void synchronize() = 0;
  // Device memory free now and in all, for out-of-memory messages; 0 when unknown.
  virtual int64_t free_memory() const = 0;
  virtual int64_t total_memory() const = 0;
  // Most device memory this runtime has held at once (arenas and library workspaces).
  virtual int64_t peak_allocated() const = 0;

  // Staged input copies, so the next batch travels while the current step computes:
  // stage_to_device copies host memory through a pinned buffer, on a copy stream, into `dst`
  // (a staging buffer the step does not read), after the previous staged copies were consumed;
  // join_staged() makes the compute stream wait for them (a device-side wait, not the host's);
  // staging_consumed() marks, on the compute stream, that the staging buffers may be
  // overwritten. The CPU copies at once.
  virtual void stage_to_device(void* dst, const void* src, size_t bytes) { copy_to_device(dst, src, bytes); }
  // The same for an input the device writes itself (decoded on the GPU): `write(dst, stream)`
  // enqueues that work on the copy stream (a cudaStream_t; null on the CPU, where `dst` is
  // host memory and `write` fills it at once).
  virtual void stage_written(void* dst, const std::function<void(void*, void*)>& write) {
    write(dst, nullptr);
  }
  virtual void join_staged() {}
  virtual void staging_consumed() {}
  // Whether work queued on the compute stream goes to a staging buffer first (CUDA).
  virtual bool stages_inputs() const { return false; }

  // CUDA graphs: what is queued on the compute stream between begin_capture() and
  // end_capture() is recorded, not run (an allocation or a host wait in between, from the
  // capturing thread, fails loudly; other threads, such as NCCL's, may go on); replay() runs
  // the recording. abort_capture() ends a capture whose step failed and drops the recording,
  // so nothing half-recorded is ever replayed.
  virtual bool can_capture() const { return false; }
  virtual void begin_capture() {}
  virtual void end_capture() {}
  virtual void abort_capture() noexcept {}
  virtual void replay() {}

 protected:
  ExecContext context_;
  DeviceCounters counters_;
};

}  // namespace oxtrain::runtime
