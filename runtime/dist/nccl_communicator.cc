// nccl_communicator: the Communicator over NCCL for GPU buffers; see its header.
#include "runtime/dist/nccl_communicator.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "base/error.h"
#include "base/text.h"
#include "runtime/cuda/context.h"

namespace oxtrain::runtime::dist {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;
using std::chrono::milliseconds;

// Sleeps between polls: a few spins first (an enqueue on NCCL's thread takes microseconds),
// then sleeps doubling from 20 us up to `longest`.
class Backoff {
 public:
  explicit Backoff(microseconds longest) : longest_(longest) {}
  void pause() {
    if (spins_ < 64) {
      ++spins_;
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    sleep_ = std::min(sleep_ * 2, longest_);
  }

 private:
  microseconds longest_;
  microseconds sleep_{20};
  int spins_ = 0;
};

// Makes `device` this thread's current GPU, and leaves it so: a rank runs on its one GPU.
// (Restoring the device before would make GPU 0 current again in a process that never chose
// it, which creates a context there: hundreds of megabytes on GPU 0 per rank of a node, and
// an error on a GPU in exclusive-process mode.)
void use_device(int device, const std::string& where) {
  int now = -1;
  cuda::check(cudaGetDevice(&now), "cudaGetDevice", where);
  if (now != device) cuda::check(cudaSetDevice(device), "cudaSetDevice", where);
}

std::string ms_text(milliseconds ms) { return std::to_string(ms.count()) + " ms"; }

}  // namespace

NcclCommunicator::NcclCommunicator(Store& store, const CommOptions& options, int cuda_device)
    : Communicator(options), device_(cuda_device) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
    throw Error("nccl: rank " + std::to_string(options.rank) + " of world size " +
                std::to_string(options.world_size) + " is out of range (ranks are 0 to world size - 1)");
  if (options.timeout.count() <= 0)
    throw Error("nccl: the timeout must be positive, got " + ms_text(options.timeout));
  const std::string at = where("init");
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw Error(at + ": no usable GPU (" + cudaGetErrorString(err) + "); NCCL reduces GPU buffers, use --dist-backend gloo with --device cpu");
  }
  if (cuda_device < 0 || cuda_device >= count)
    throw Error(at + ": GPU " + std::to_string(cuda_device) + " does not exist (" + std::to_string(count) +
                " visible); give each rank of a node its own GPU (its local rank)");

  use_device(device_, at);
  try {
    int least = 0, greatest = 0;
    cuda::check(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange", at);
    cuda::check(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest), "cudaStreamCreateWithPriority",
                at);
    cuda::check(cudaMalloc(reinterpret_cast<void**>(&scratch_), sizeof(float)), "cudaMalloc", at);
    cuda::check(cudaMemsetAsync(scratch_, 0, sizeof(float), stream_), "cudaMemsetAsync", at);
    cuda::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize", at);
    connect(store);
  } catch (...) {
    abort_now();
    if (scratch_) cudaFree(scratch_);
    if (stream_) cudaStreamDestroy(stream_);
    scratch_ = nullptr;
    stream_ = nullptr;
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() {
  try {
    use_device(device_, where("destroy"));
    if (comm_ && failure_.empty()) {
      // The documented end of a non-blocking communicator: finalise (flushes what was issued and
      // waits until every rank is quiescent), then destroy the local resources.
      ncclResult_t state = settle(ncclCommFinalize(comm_), Clock::now() + options_.timeout, milliseconds(50));
      if (state == ncclSuccess) {
        ncclCommDestroy(comm_);
        comm_ = nullptr;
      }
    }
    abort_now();  // a failed communicator, or one whose finalisation failed or timed out
    if (scratch_) cudaFree(scratch_);
    if (stream_) cudaStreamDestroy(stream_);
  } catch (...) {
    // Releasing after a failure; nothing left to report.
  }
}

void NcclCommunicator::connect(Store& store) {
  const std::string at = where("init");
  ncclUniqueId id{};
  std::string key_shown;
  try {
    auto nccl_store = prefixed(store, "nccl");
    const int64_t generation = nccl_store->add("communicators/rank" + std::to_string(options_.rank), 1);
    const std::string key = std::to_string(generation) + "/unique_id";
    key_shown = quote_name("nccl/" + key, 60);
    if (options_.rank == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) throw Error(at + ": ncclGetUniqueId failed: " + nccl_message(r));
      const auto* bytes = reinterpret_cast<const uint8_t*>(id.internal);
      nccl_store->set(key, Bytes(bytes, bytes + sizeof(id.internal)));
    } else {
      // Polls check() rather than blocking in get(), whose timeout is the store's own.
      const auto deadline = Clock::now() + options_.timeout;
      auto interval = milliseconds(1);
      while (!nccl_store->check({key})) {
        if (Clock::now() >= deadline)
          throw Error(at + ": timed out after " + ms_text(options_.timeout) +
                      " waiting for rank 0's NCCL unique id (store key " + key_shown +
                      "); check that rank 0 started and reaches the store");
        std::this_thread::sleep_for(interval);
        interval = std::min(interval * 2, milliseconds(50));
      }
      Bytes value = nccl_store->get(key);
      if (value.size() != sizeof(id.internal))
        throw Error(at + ": the NCCL unique id at store key " + key_shown + " has " + std::to_string(value.size()) +
                    " bytes, not " + std::to_string(sizeof(id.internal)) +
                    "; do all ranks run the same oxtrain and NCCL version?");
      std::memcpy(id.internal, value.data(), value.size());
    }
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.rfind(at, 0) == 0) throw;
    throw Error(at + ": " + what);  // the store's own failure (a peer gone, a bad host)
  }

  // Non-blocking, so that a rank that never arrives ends in an Error at the deadline.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const auto deadline = Clock::now() + options_.timeout;
  ncclResult_t issued = ncclCommInitRankConfig(&comm_, options_.world_size, id, options_.rank, &config);
  ncclResult_t state = issued;
  if (comm_ && (issued == ncclSuccess || issued == ncclInProgress)) state = settle(issued, deadline, milliseconds(50));
  if (state == ncclSuccess && comm_) return;
  std::string what;
  if (state == ncclInProgress)
    what = "NCCL's initialisation did not finish within " + ms_text(options_.timeout) + " (store key " + key_shown +
           "); check that all " + std::to_string(options_.world_size) +
           " ranks started, each on its own GPU, and can reach each other";
  else
    what = "ncclCommInitRankConfig failed: " + nccl_message(state);
  abort_now();
  failure_ = what;
  throw Error(at + ": " + what);
}

std::string NcclCommunicator::where(const char* collective) const {
  return "nccl " + std::string(collective) + " (rank " + std::to_string(options_.rank) + " of " +
         std::to_string(options_.world_size) + ")";
}

ncclResult_t NcclCommunicator::settle(ncclResult_t issued, Clock::time_point deadline,
                                      microseconds longest_sleep) const {
  ncclResult_t state = issued;
  Backoff backoff(longest_sleep);
  while (state == ncclInProgress) {
    if (Clock::now() >= deadline) return ncclInProgress;
    backoff.pause();
    ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) return r;
  }
  return state;
}

std::string NcclCommunicator::nccl_message(ncclResult_t result) const {
  std::string text = ncclGetErrorString(result);
  const char* last = ncclGetLastError(comm_);
  if (last && *last) text += " (" + one_line(last) + ")";
  return text;
}

void NcclCommunicator::fail(const std::string& at, const std::string& what) {
  if (failure_.empty()) failure_ = what;
  throw Error(at + ": " + what + "; the job cannot continue");
}

void NcclCommunicator::issue(ncclResult_t issued, const char* call, const std::string& at, bool abort_on_failure) {
  ncclResult_t state = settle(issued, Clock::now() + options_.timeout, milliseconds(1));
  if (state == ncclSuccess) return;
  std::string what = state == ncclInProgress
                         ? std::string(call) + " was not enqueued within " + ms_text(options_.timeout)
                         : std::string(call) + " failed: " + nccl_message(state);
  if (abort_on_failure) {
    failure_ = what;
    abort_now();
  }
  fail(at, what);
}

void NcclCommunicator::check_usable(const std::string& at) {
  if (!failure_.empty() || !comm_)
    throw Error(at + ": the NCCL communicator failed earlier (" + (failure_.empty() ? "aborted" : failure_) +
                "); the job cannot continue");
  ncclResult_t state = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
  if (r != ncclSuccess) fail(at, "ncclCommGetAsyncError failed: " + nccl_message(r));
  if (state != ncclSuccess && state != ncclInProgress)
    fail(at, "an earlier collective failed: " + nccl_message(state));
}

void NcclCommunicator::check_while_waiting(Clock::duration waited, const std::string& context) {
  const std::string at = context + ": " + where("allreduce");
  std::string what = failure_;
  if (what.empty() && comm_) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress) what = "NCCL reported: " + nccl_message(state);
  }
  if (what.empty() && waited >= options_.timeout)
    what = "the step's all-reduces did not finish within " + ms_text(options_.timeout) +
           "; a peer may have stopped or never reached them";
  if (what.empty()) return;
  failure_ = what;
  abort_now();
  fail(at, what);
}

void NcclCommunicator::enqueue_allreduce(const std::vector<DeviceSpan>& spans, bool average, const std::string& node) {
  const std::string at = node.empty() ? where("allreduce") : node + ": " + where("allreduce");
  check_usable(at);
  std::vector<DeviceSpan> work;
  for (const DeviceSpan& s : spans)
    if (s.count > 0) work.push_back(s);
  if (work.empty()) return;
  const ncclRedOp_t op = average ? ncclAvg : ncclSum;
  if (work.size() == 1) {
    issue(ncclAllReduce(work[0].data, work[0].data, work[0].count, ncclFloat, op, comm_, stream_), "ncclAllReduce", at,
          false);
    return;
  }
  ncclResult_t r = ncclGroupStart();
  if (r != ncclSuccess) fail(at, "ncclGroupStart failed: " + nccl_message(r));
  for (const DeviceSpan& s : work) {
    r = ncclAllReduce(s.data, s.data, s.count, ncclFloat, op, comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress) {
      ncclGroupEnd();  // closes the group; what it returns is the same failure
      fail(at, "ncclAllReduce failed: " + nccl_message(r));
    }
  }
  issue(ncclGroupEnd(), "ncclGroupEnd", at, false);
}

void NcclCommunicator::wait_stream(const char* collective) {
  const std::string at = where(collective);
  const auto deadline = Clock::now() + options_.timeout;
  Backoff backoff(milliseconds(1));
  for (;;) {
    cudaError_t err = cudaStreamQuery(stream_);
    if (err == cudaSuccess) return;
    std::string what;
    if (err != cudaErrorNotReady) {
      cudaGetLastError();
      what = std::string("the communication stream failed: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
             ")";
    } else {
      ncclResult_t state = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) state = r;
      if (state != ncclSuccess && state != ncclInProgress)
        what = "NCCL reported: " + nccl_message(state);
      else if (Clock::now() >= deadline)
        what = "did not finish within " + ms_text(options_.timeout) +
               "; a peer may have stopped or never reached this collective";
    }
    if (!what.empty()) {
      failure_ = what;
      abort_now();
      fail(at, what);
    }
    backoff.pause();
  }
}

void NcclCommunicator::allreduce_sum(float* data, size_t count) {
  const std::string at = where("allreduce");
  check_usable(at);
  if (count == 0) return;
  if (data == nullptr) throw Error(at + ": null buffer of " + std::to_string(count) + " floats");
  issue(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce", at, true);
  wait_stream("allreduce");
}

void NcclCommunicator::broadcast(void* data, size_t bytes, int root) {
  const std::string at = where("broadcast");
  check_usable(at);
  if (root < 0 || root >= options_.world_size)
    throw Error(at + ": root " + std::to_string(root) + " is not a rank (0 to " +
                std::to_string(options_.world_size - 1) + ")");
  if (bytes == 0) return;
  if (data == nullptr) throw Error(at + ": null buffer of " + std::to_string(bytes) + " bytes");
  issue(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast", at, true);
  wait_stream("broadcast");
}

void NcclCommunicator::barrier() {
  // NCCL has no barrier: an all-reduce of one float (zero, so it stays zero) meets every rank.
  const std::string at = where("barrier");
  check_usable(at);
  issue(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce", at, true);
  wait_stream("barrier");
}

void NcclCommunicator::abort_now() noexcept {
  if (!comm_) return;
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

std::unique_ptr<NcclCommunicator> make_nccl_communicator(Store& store, const CommOptions& options, int cuda_device) {
  return std::make_unique<NcclCommunicator>(store, options, cuda_device);
}

}  // namespace oxtrain::runtime::dist
