// The Communicator over NCCL, for GPU buffers (see communicator.h), and what the CUDA
// oxtrain.AllReduce kernel (runtime/cuda/collective.cc) needs from it: the NCCL communicator
// and its communication stream, on which collectives are enqueued without waiting.
//
// Rendezvous: each rank's Nth NCCL communicator made on a store (counted per rank under
// "nccl/communicators/rank<R>", so the ranks agree when they make them in the same order) meets
// under "nccl/<N>/": rank 0 makes the ncclUniqueId and sets it at "nccl/<N>/unique_id", the
// others wait for it, bounded by CommOptions::timeout. The communicator is then made
// non-blocking (ncclConfig_t::blocking = 0), so its initialisation is polled and bounded by the
// same timeout: at the deadline, or on an NCCL error, it is aborted and an Error names this
// rank, the world size and NCCL's own message.
//
// World size 1 is a real NCCL communicator of one rank (NCCL supports it), so a single GPU runs
// exactly the path a job of many runs; its collectives leave the data as it is.
//
// Non-blocking mode: any NCCL call may return ncclInProgress while NCCL's own thread finishes
// it; the next call on the communicator waits (on the host, polling ncclCommGetAsyncError, never
// for the device) until it is done, bounded by the timeout.
//
// allreduce_sum, broadcast and barrier take DEVICE pointers on this communicator's GPU and are
// synchronous: they enqueue on the communication stream and wait for it (polling, so a peer that
// vanished ends in an Error after the timeout rather than a hang). They are ordered after
// nothing else: the caller makes sure the buffers are ready (e.g. DeviceRuntime::synchronize()).
//
// Failures: an Error "nccl <collective> (rank R of W): <NCCL's message>; the job cannot
// continue"; the communicator cannot be used after (every later call throws). A failed
// synchronous call aborts the NCCL communicator at once (ncclCommAbort), so its kernels stop;
// a failure while enqueueing for a kernel (possibly inside a CUDA graph capture) leaves the
// abort to the destructor. The destructor finalises and destroys a healthy communicator
// (ncclCommFinalize, polled within the timeout, then ncclCommDestroy) and aborts a failed one.
//
// Calls on one communicator come from one thread at a time.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "runtime/dist/communicator.h"

namespace oxtrain::runtime::dist {

// A run of float32 elements in device memory, reduced in place.
struct DeviceSpan {
  float* data = nullptr;
  size_t count = 0;
};

class NcclCommunicator : public Communicator {
 public:
  // Use make_nccl_communicator().
  NcclCommunicator(Store& store, const CommOptions& options, int cuda_device);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  const char* backend() const override { return "nccl"; }
  // Synchronous, on device pointers (see the header comment).
  void allreduce_sum(float* data, size_t count) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void barrier() override;

  // The GPU this communicator's rank runs on, and the stream its collectives run on
  // (non-blocking with respect to the legacy default stream, highest priority the device has).
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  ncclComm_t comm() const { return comm_; }

  // For kernels: enqueues, on stream(), an in-place all-reduce of every span (one NCCL call for
  // one span, several in one ncclGroupStart/End), summed or averaged (ncclAvg) over the ranks,
  // and returns once NCCL has enqueued them, without waiting for the device. Capturable in a
  // CUDA graph. `where` names the node in errors.
  void enqueue_allreduce(const std::vector<DeviceSpan>& spans, bool average, const std::string& where);
  // Throws the Error of an earlier failure, or of an asynchronous one NCCL reports now (host
  // only: no CUDA call, so it may run inside a capture).
  void check_usable(const std::string& where);
  // While the host waits for a step whose collectives this communicator enqueued: on an
  // asynchronous NCCL error, or once `waited` reaches the timeout, aborts the communicator
  // (its kernels stop, so the wait ends) and throws the Error of the header comment.
  bool collectives_on_device() const override { return true; }
  void check_while_waiting(std::chrono::steady_clock::duration waited, const std::string& where) override;

 private:
  void connect(Store& store);
  std::string where(const char* collective) const;
  // Waits while `issued` (and then the communicator's state) is ncclInProgress, until
  // `deadline`; returns the final state (ncclInProgress at the deadline).
  ncclResult_t settle(ncclResult_t issued, std::chrono::steady_clock::time_point deadline,
                      std::chrono::microseconds longest_sleep) const;
  // Turns a failed NCCL result into the Error of the header comment, recording the failure.
  [[noreturn]] void fail(const std::string& where, const std::string& what);
  std::string nccl_message(ncclResult_t result) const;
  // Issued call, settled; throws on failure (aborting first when `abort_on_failure`).
  void issue(ncclResult_t issued, const char* call, const std::string& where, bool abort_on_failure);
  // Waits (polling) until the communication stream is idle, within the timeout.
  void wait_stream(const char* collective);
  void abort_now() noexcept;

  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  float* scratch_ = nullptr;  // one float on the device, for barrier()
  std::string failure_;       // non-empty once a call failed
};

// Makes this rank's NCCL communicator on GPU `cuda_device` (see the header comment); throws
// Error naming the rank and world size when the rendezvous or NCCL's initialisation fails or
// takes longer than options.timeout.
std::unique_ptr<NcclCommunicator> make_nccl_communicator(Store& store, const CommOptions& options,
                                                         int cuda_device);

}  // namespace oxtrain::runtime::dist
