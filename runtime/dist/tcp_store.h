// TcpStore: the rendezvous Store over TCP. One process (rank 0) hosts the server, listening on
// exactly the address it is given; every process, the host included, talks to it as a client
// through one connection (the host's own client takes the same code path as everyone else's).
//
// Connecting retries until the store's timeout, so ranks may start in any order. A call that
// waits (get, wait) is answered by the server when the keys exist or when this client's timeout
// has passed; the client then throws an Error naming the store and the keys still missing:
//   "rendezvous store at node01:29500: timed out after 0.2 s waiting for keys 'a', 'b'"
// A server that goes away is an Error naming it:
//   "rendezvous store at node01:29500 closed the connection during get 'x'; did rank 0 exit?"
// After an error on the connection itself (closed, reset, a reply that never came), the client is
// unusable and every later call throws.
//
// Protocol (ours, not PyTorch's TCPStore protocol): frames of [u32 body length, little endian]
// [body]; a body is [u8 op][fields], strings as [u32 length][bytes], integers little endian.
// The first frame from a client is a hello carrying a magic and a version; the server closes
// any connection whose first frame is not that hello, and the client reports a server that
// does not answer with the hello as "not an oxtrain rendezvous store". A frame or key longer
// than the limits (kMaxKeyBytes, kMaxValueBytes, at most kMaxStoreKeysPerCall keys per call) is
// refused before anything is allocated for it and the connection is closed; the server keeps
// serving everyone else. Frame bodies are read as they arrive (memory grows with the bytes
// received, never with the length announced).
//
// Server: one thread, poll() over non-blocking sockets; waiting requests are parked with a
// deadline and answered when a set/add makes their keys exist or the deadline passes. The
// server lives as long as the TcpStore that hosts it: rank 0 must outlive the others' use of
// the store (a barrier before exit), as with PyTorch.
//
// torchrun: with TORCHELASTIC_USE_AGENT_STORE=True, torchrun's agent already hosts a PyTorch
// TCPStore on MASTER_ADDR:MASTER_PORT. We do not speak that protocol, so oxtrain's store goes
// on MASTER_PORT + 1 (launch_env.h decides; TcpStore listens wherever it is told).
//
// Thread safety: calls on one TcpStore are serialised (one connection; a blocking get holds
// it until answered). Threads that must wait independently use separate TcpStores.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/dist/store.h"

namespace oxtrain::runtime::dist {

// The most keys one wait/check names (a frame holding more is refused).
inline constexpr size_t kMaxStoreKeysPerCall = 1u << 16;

class TcpStoreServer;  // tcp_store.cc

class TcpStore : public Store {
 public:
  // A client of the store at host:port (a name or a numeric IPv4/IPv6 address), retrying the
  // connection until `timeout` has passed.
  static std::unique_ptr<TcpStore> connect(const std::string& host, int port, std::chrono::milliseconds timeout);
  // Hosts the store: listens on `address`:`port` (port 0: a free port, see port()) and connects
  // to it as a client. `address` is a name or numeric address of this machine; "" or "0.0.0.0"
  // listens on every IPv4 interface, "::" on every interface. A port in use is an Error:
  // "cannot listen on HOST:PORT: address in use; is another job running? choose another
  // --dist-url port".
  static std::unique_ptr<TcpStore> host(const std::string& address, int port, std::chrono::milliseconds timeout);

  ~TcpStore() override;
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void wait(const std::vector<std::string>& keys) override;
  bool check(const std::vector<std::string>& keys) override;
  std::chrono::milliseconds timeout() const override;
  void set_timeout(std::chrono::milliseconds timeout) override;

  // The server's port (the one chosen when hosting on port 0) and the host this client reached.
  int port() const { return port_; }
  const std::string& host_name() const { return host_; }
  bool hosts_server() const { return server_ != nullptr; }

 private:
  TcpStore(std::string host, std::string connect_host, int port, std::chrono::milliseconds timeout,
           std::unique_ptr<TcpStoreServer> server);
  void open_connection();
  // Sends one request body and returns the reply body; `what` names the call in errors
  // ("get 'x'"), `keys` are the keys it waits for (named on a client-side timeout).
  std::vector<uint8_t> request(const std::vector<uint8_t>& body, std::chrono::milliseconds reply_within,
                               const std::string& what, const std::vector<std::string>& keys);
  [[noreturn]] void fail_connection(const std::string& message);
  std::string where() const;

  std::string host_;          // as given, for messages
  std::string connect_host_;  // where the client connects (the host's own client: the bound address)
  int port_ = 0;
  std::atomic<int64_t> timeout_ms_;
  std::unique_ptr<TcpStoreServer> server_;  // hosting process only
  std::mutex mutex_;                        // one request at a time on fd_
  int fd_ = -1;
  std::string broken_;  // why the connection is unusable (empty: it is fine)
};

}  // namespace oxtrain::runtime::dist
