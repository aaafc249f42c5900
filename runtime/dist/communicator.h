// Collectives between the ranks of a job, behind one interface: Gloo on CPU buffers, NCCL on
// GPU buffers. A communicator is made once per process from the rendezvous store and lives
// for the run.
//
// Calls on one communicator are issued in the same order on every rank (the training graph's
// bucket order guarantees it). A failure (a peer gone, a timeout) throws oxtrain::Error naming
// the collective, this rank and, where known, the peer; the communicator cannot be used after.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/dist/store.h"

namespace oxtrain::runtime::dist {

struct CommOptions {
  int rank = 0;
  int world_size = 1;
  // Gloo: the address of this host's interface to bind (empty: the hostname's address).
  std::string interface_address;
  std::chrono::milliseconds timeout{30 * 60 * 1000};
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  // "gloo" or "nccl".
  virtual const char* backend() const = 0;
  // In place: data[i] = sum over ranks of data[i]. float32.
  virtual void allreduce_sum(float* data, size_t count) = 0;
  // In place: every rank gets rank `root`'s bytes.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;

  // Whether collectives may still be running on the device after the call that issued them
  // returned (NCCL's, enqueued by kernels into the step), so a host wait for the device must
  // watch them: check_while_waiting(), called between polls, throws (after stopping them)
  // when one failed or the wait has lasted `waited` beyond the timeout. Gloo's collectives
  // are done when their calls return.
  virtual bool collectives_on_device() const { return false; }
  virtual void check_while_waiting(std::chrono::steady_clock::duration waited, const std::string& where) {
    (void)waited;
    (void)where;
  }

 protected:
  explicit Communicator(const CommOptions& options) : options_(options) {}
  CommOptions options_;
};

// Gloo over TCP (CPU buffers); rendezvous through `store` (prefixed by the communicator).
std::unique_ptr<Communicator> make_gloo_communicator(Store& store, const CommOptions& options);

}  // namespace oxtrain::runtime::dist
