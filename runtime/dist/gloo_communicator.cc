// gloo_communicator: the Communicator over Gloo's TCP transport, for CPU buffers (see
// communicator.h).
//
// Rendezvous: each rank's Nth communicator made on a store (counted per rank under
// "gloo/communicators/rank<R>", so the ranks agree when they make them in the same order)
// exchanges its addresses under "gloo/<N>/", through an adapter from our Store to Gloo's.
// Every rendezvous wait is bounded by CommOptions::timeout (Gloo asks for some keys with a
// plain get, which the adapter bounds the same way); a rank that never arrives is named in
// the Error. Collectives are bounded by the same timeout.
//
// Failures: every Gloo exception (and every store Error met while connecting) becomes one
// oxtrain::Error "gloo <collective> (rank R of W): <what Gloo said>; the job cannot continue".
// After a failure this communicator closes its connections, so the peers' pending and next
// collectives fail at once instead of waiting out the timeout, and every later call throws.
//
// World size 1 makes no device and no connection: the collectives are identities. Calls on one
// communicator come from one thread at a time; each call takes the next tag (its Gloo slot).
//
// Gloo writes to sockets with writev(); a write to a peer that vanished would raise SIGPIPE
// and kill the process before Gloo could report it, so making a communicator with peers sets
// SIGPIPE to ignored where it still has its default action (writes then fail with EPIPE).
#include "runtime/dist/communicator.h"

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <signal.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>

#include "base/error.h"
#include "base/text.h"

namespace oxtrain::runtime::dist {
namespace {

// "rank_3" and "3" are the keys Gloo's full-mesh rendezvous publishes for rank 3.
std::string describe_rendezvous_key(const std::string& key) {
  std::string_view digits = key;
  if (digits.substr(0, 5) == "rank_") digits.remove_prefix(5);
  if (auto rank = parse_int64(digits)) return "rank " + std::to_string(*rank);
  return quote_name(key, 60);
}

// Gloo's messages start with "[/path/to/file.cc:123] "; the location says nothing to a user.
std::string gloo_message(const std::exception& e) {
  std::string_view text = e.what();
  while (!text.empty() && text.front() == '[') {
    size_t close = text.find("] ");
    if (close == std::string_view::npos || text.substr(0, close).find(".cc:") == std::string_view::npos) break;
    text.remove_prefix(close + 2);
  }
  return one_line(text);
}

// Gloo's rendezvous store over ours. Every wait, including the one inside get(), ends after
// the communicator's timeout (or the wait's own, where Gloo gives one) with an Error naming
// the ranks whose keys are still missing.
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  // `key_prefix` is where `store` puts its keys, for messages.
  GlooStoreAdapter(dist::Store& store, std::string key_prefix, std::chrono::milliseconds timeout)
      : store_(store), key_prefix_(std::move(key_prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    store_.set(key, Bytes(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    wait({key}, timeout_);
    Bytes value = store_.get(key);
    return std::vector<char>(value.begin(), value.end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    // Polls check() rather than blocking in the store's wait(), whose timeout is the store's
    // own and shared by everything using it. The interval grows to 50 ms: a few round trips
    // a second per rank while peers start.
    const auto limit = timeout.count() > 0 ? std::min(timeout, timeout_) : timeout_;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    auto interval = std::chrono::milliseconds(1);
    while (!store_.check(keys)) {
      if (std::chrono::steady_clock::now() >= deadline) {
        std::vector<std::string> missing, missing_keys;
        for (const auto& key : keys)
          if (!store_.check({key})) {
            missing.push_back(describe_rendezvous_key(key));
            missing_keys.push_back(quote_name(key_prefix_ + key, 60));
          }
        throw Error("timed out after " + std::to_string(limit.count()) + " ms waiting for " +
                    join_limited(missing, 100) + " to join (store " +
                    (missing_keys.size() == 1 ? "key " : "keys ") + join_limited(missing_keys, 100) +
                    "); check that every rank of the job started and reaches the store");
      }
      std::this_thread::sleep_for(interval);
      interval = std::min(interval * 2, std::chrono::milliseconds(50));
    }
  }

 private:
  dist::Store& store_;
  std::string key_prefix_;
  std::chrono::milliseconds timeout_;
};

void ignore_sigpipe_if_default() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      struct sigaction ignore {};
      ignore.sa_handler = SIG_IGN;
      sigemptyset(&ignore.sa_mask);
      sigaction(SIGPIPE, &ignore, nullptr);
    }
  });
}

void sum_floats(void* out, const void* a, const void* b, size_t count) {
  auto* o = static_cast<float*>(out);
  const auto* x = static_cast<const float*>(a);
  const auto* y = static_cast<const float*>(b);
  for (size_t i = 0; i < count; ++i) o[i] = x[i] + y[i];
}

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(dist::Store& store, const CommOptions& options) : Communicator(options) {
    if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
      throw Error("gloo: rank " + std::to_string(options.rank) + " of world size " +
                  std::to_string(options.world_size) + " is out of range (ranks are 0 to world size - 1)");
    if (options.timeout.count() <= 0)
      throw Error("gloo: the timeout must be positive, got " + std::to_string(options.timeout.count()) + " ms");
    if (options.world_size == 1) return;
    ignore_sigpipe_if_default();
    guarded("rendezvous", [&] { connect(store); });
  }

  ~GlooCommunicator() override {
    try {
      context_.reset();
      device_.reset();
    } catch (...) {
      // Closing sockets of a context that already failed; nothing left to report.
    }
  }

  const char* backend() const override { return "gloo"; }

  void allreduce_sum(float* data, size_t count) override {
    usable("allreduce");
    if (count == 0 || options_.world_size == 1) return;
    if (data == nullptr) throw Error(where("allreduce") + ": null buffer of " + std::to_string(count) + " floats");
    guarded("allreduce", [&] {
      gloo::AllreduceOptions opts(context_);
      opts.setOutput(data, count);
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      opts.setReduceFunction(&sum_floats);
      opts.setTag(next_tag());
      gloo::allreduce(opts);
    });
  }

  void broadcast(void* data, size_t bytes, int root) override {
    usable("broadcast");
    if (root < 0 || root >= options_.world_size)
      throw Error(where("broadcast") + ": root " + std::to_string(root) + " is not a rank (0 to " +
                  std::to_string(options_.world_size - 1) + ")");
    if (bytes == 0 || options_.world_size == 1) return;
    if (data == nullptr) throw Error(where("broadcast") + ": null buffer of " + std::to_string(bytes) + " bytes");
    guarded("broadcast", [&] {
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      opts.setRoot(root);
      opts.setTag(next_tag());
      gloo::broadcast(opts);
    });
  }

  void barrier() override {
    usable("barrier");
    if (options_.world_size == 1) return;
    guarded("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag());
      gloo::barrier(opts);
    });
  }

 private:
  void connect(dist::Store& store) {
    auto gloo_store = prefixed(store, "gloo");
    const int64_t generation = gloo_store->add("communicators/rank" + std::to_string(options_.rank), 1);
    auto own_store = prefixed(*gloo_store, std::to_string(generation));
    GlooStoreAdapter adapter(*own_store, "gloo/" + std::to_string(generation) + "/", options_.timeout);

    gloo::transport::tcp::attr attr;
    if (!options_.interface_address.empty()) attr.hostname = options_.interface_address;
    device_ = gloo::transport::tcp::CreateDevice(attr);

    auto context = std::make_shared<gloo::rendezvous::Context>(options_.rank, options_.world_size);
    context->setTimeout(options_.timeout);
    context->connectFullMesh(adapter, device_);
    context_ = std::move(context);
  }

  std::string where(const char* collective) const {
    return "gloo " + std::string(collective) + " (rank " + std::to_string(options_.rank) + " of " +
           std::to_string(options_.world_size) + ")";
  }

  void usable(const char* collective) const {
    if (!failure_.empty())
      throw Error(where(collective) + ": the communicator failed earlier (" + failure_ + "); the job cannot continue");
  }

  uint32_t next_tag() { return tag_++; }

  // Runs one Gloo call; any exception becomes the Error described in the header comment.
  template <typename Call>
  void guarded(const char* collective, Call&& call) {
    std::string what;
    try {
      call();
      return;
    } catch (const std::exception& e) {  // gloo::Exception, gloo::EnforceNotMet, a store's Error
      what = gloo_message(e);
    }
    failure_ = std::string(collective) + ": " + what;
    close_connections();
    throw Error(where(collective) + ": " + what + "; the job cannot continue");
  }

  // Resets every connection so the peers fail now rather than after the timeout.
  void close_connections() noexcept {
    if (!context_) return;
    try {
      context_->closeConnections();
    } catch (...) {
      // A pair already in error; the peers see the reset or their own timeout.
    }
  }

  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
  uint32_t tag_ = 0;
  std::string failure_;
};

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(Store& store, const CommOptions& options) {
  return std::make_unique<GlooCommunicator>(store, options);
}

}  // namespace oxtrain::runtime::dist
