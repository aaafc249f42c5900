// The rendezvous store: a small key-value store every rank of a job reaches, hosted by rank 0
// (TcpStore, at --dist-url tcp://HOST:PORT or MASTER_ADDR:MASTER_PORT). Gloo's rendezvous and
// NCCL's unique id go through it, and ranks use it to agree on what they run (world size,
// model, batch) before the first step.
//
// Every call that waits takes the store's timeout (default 30 minutes, as PyTorch's) and then
// throws oxtrain::Error naming the keys still missing; a peer that vanished is an Error too.
// Keys and values are bounded (kMaxKeyBytes, kMaxValueBytes), so a stray client cannot make
// the host allocate without limit.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace oxtrain::runtime::dist {

inline constexpr size_t kMaxKeyBytes = 4096;
inline constexpr size_t kMaxValueBytes = 64u << 20;  // 64 MiB

using Bytes = std::vector<uint8_t>;

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const Bytes& value) = 0;
  // Blocks until the key exists (or the timeout passes), then returns its value.
  virtual Bytes get(const std::string& key) = 0;
  // Adds `delta` to the integer stored at `key` (absent: 0) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Blocks until every key exists (or the timeout passes).
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual bool check(const std::vector<std::string>& keys) = 0;  // all exist now, no waiting
  virtual std::chrono::milliseconds timeout() const = 0;
  virtual void set_timeout(std::chrono::milliseconds timeout) = 0;
};

// A store whose keys all carry `prefix` (one per communicator, so two never mix).
std::unique_ptr<Store> prefixed(Store& base, const std::string& prefix);

// A store in this process's memory, shared by threads (tests, and single-process runs).
std::shared_ptr<Store> make_memory_store(std::chrono::milliseconds timeout = std::chrono::minutes(30));

}  // namespace oxtrain::runtime::dist
