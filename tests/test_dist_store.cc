// TcpStore: the rendezvous store over TCP, between threads with their own clients and between
// forked processes; blocking gets, exact adds, timeouts naming the missing keys, and a server
// that survives clients sending oversized lengths or vanishing mid-message.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <future>
#include <thread>

#include "base/error.h"
#include "runtime/dist/tcp_store.h"

using namespace oxtrain;
using namespace oxtrain::runtime::dist;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string text_of(const Bytes& b) { return std::string(b.begin(), b.end()); }

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The message of the Error `call` throws ("" and a test failure when it throws none).
template <class F>
std::string error_of(F&& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A raw TCP connection to the store, for sending what no TcpStore client sends.
class RawSocket {
 public:
  explicit RawSocket(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ~RawSocket() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void send(const std::vector<uint8_t>& bytes) {
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  // The hello every client sends first, and reads the server's answer to it.
  void greet() {
    send(hello());
    uint8_t answer[17];
    size_t got = 0;
    while (got < sizeof(answer)) {
      ssize_t n = ::recv(fd_, answer + got, sizeof(answer) - got, 0);
      ASSERT_GT(n, 0);
      got += static_cast<size_t>(n);
    }
  }
  // True when the server closes the connection within `within` (recv returns 0 or a reset).
  bool closed_by_server(std::chrono::milliseconds within) {
    auto deadline = Clock::now() + within;
    for (;;) {
      int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
      if (left <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, left) <= 0) continue;
      uint8_t byte;
      ssize_t n = ::recv(fd_, &byte, 1, 0);
      if (n <= 0) return true;  // closed or reset; any byte would be a reply we did not ask for
      return false;
    }
  }
  static std::vector<uint8_t> u32(uint32_t v) {
    return {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v >> 16),
            static_cast<uint8_t>(v >> 24)};
  }
  static std::vector<uint8_t> hello() {
    // [u32 13][u8 op 1][u64 magic "oxstore"][u32 version 1]
    std::vector<uint8_t> out = u32(13);
    out.push_back(1);
    const uint64_t magic = 0x65726f7473786fULL;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(magic >> (8 * i)));
    auto version = u32(1);
    out.insert(out.end(), version.begin(), version.end());
    return out;
  }

 private:
  int fd_ = -1;
};

// The store still answers: a fresh client sets and gets a key.
void expect_serving(int port, const std::string& key) {
  auto client = TcpStore::connect("127.0.0.1", port, 5s);
  client->set(key, bytes_of("still here"));
  EXPECT_EQ(text_of(client->get(key)), "still here");
}

int64_t resident_mib() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE) / (1 << 20);
}

TEST(DistTcpStore, HostOnPortZeroServesSetGetCheckAcrossClients) {
  auto host = TcpStore::host("127.0.0.1", 0, 10s);
  ASSERT_GT(host->port(), 0);
  EXPECT_TRUE(host->hosts_server());
  EXPECT_EQ(host->host_name(), "127.0.0.1");
  auto client = TcpStore::connect("127.0.0.1", host->port(), 10s);
  EXPECT_FALSE(client->hosts_server());

  // Binary values with zero bytes, an empty value, an overwrite, an empty key.
  Bytes binary = {0, 1, 2, 0, 255, 0};
  client->set("binary", binary);
  EXPECT_EQ(host->get("binary"), binary);
  host->set("empty", {});
  EXPECT_EQ(client->get("empty"), Bytes{});
  client->set("k", bytes_of("first"));
  client->set("k", bytes_of("second"));
  EXPECT_EQ(text_of(host->get("k")), "second");
  host->set("", bytes_of("empty key"));
  EXPECT_EQ(text_of(client->get("")), "empty key");

  EXPECT_TRUE(client->check({"binary", "empty", "k"}));
  EXPECT_FALSE(client->check({"binary", "absent"}));
  EXPECT_TRUE(client->check({}));
  client->wait({"binary", "k"});  // present: returns at once

  // A value at the limit goes through whole.
  Bytes big(kMaxValueBytes);
  for (size_t i = 0; i < big.size(); i += 4093) big[i] = static_cast<uint8_t>(i / 4093);
  big.back() = 0x5a;
  client->set(std::string(kMaxKeyBytes, 'K'), big);
  EXPECT_EQ(host->get(std::string(kMaxKeyBytes, 'K')), big);

  // prefixed() over a TcpStore keeps communicators apart.
  auto a = prefixed(*client, "comm0");
  auto b = prefixed(*host, "comm1");
  a->set("x", bytes_of("0"));
  b->set("x", bytes_of("1"));
  EXPECT_EQ(text_of(host->get("comm0/x")), "0");
  EXPECT_EQ(text_of(client->get("comm1/x")), "1");
}

TEST(DistTcpStore, GetAndWaitBlockUntilALaterSet) {
  auto host = TcpStore::host("127.0.0.1", 0, 10s);
  auto start = Clock::now();
  auto got = std::async(std::launch::async, [port = host->port()] {
    auto client = TcpStore::connect("127.0.0.1", port, 10s);
    return text_of(client->get("late"));
  });
  auto waited = std::async(std::launch::async, [port = host->port()] {
    auto client = TcpStore::connect("127.0.0.1", port, 10s);
    client->wait({"late", "later"});
  });
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(got.wait_for(0s), std::future_status::timeout) << "get returned before the key existed";
  host->set("late", bytes_of("value"));
  EXPECT_EQ(got.get(), "value");
  EXPECT_GE(seconds_since(start), 0.19);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(waited.wait_for(0s), std::future_status::timeout) << "wait returned with a key missing";
  host->add("later", 1);
  waited.get();
  EXPECT_GE(seconds_since(start), 0.29);
}

TEST(DistTcpStore, AddFromEightConcurrentClientsIsExact) {
  auto host = TcpStore::host("127.0.0.1", 0, 30s);
  constexpr int kClients = 8, kAdds = 200;
  std::vector<std::future<std::vector<int64_t>>> results;
  for (int c = 0; c < kClients; ++c)
    results.push_back(std::async(std::launch::async, [port = host->port()] {
      auto client = TcpStore::connect("127.0.0.1", port, 30s);
      std::vector<int64_t> seen;
      for (int i = 0; i < kAdds; ++i) seen.push_back(client->add("counter", 1));
      client->add("sum", 3);
      return seen;
    }));
  std::vector<int64_t> all;
  for (auto& r : results) {
    auto seen = r.get();
    all.insert(all.end(), seen.begin(), seen.end());
  }
  // Every add saw a distinct running total: exactly 1..1600, each once.
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), size_t{kClients * kAdds});
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], static_cast<int64_t>(i + 1));
  EXPECT_EQ(host->add("counter", 0), kClients * kAdds);
  EXPECT_EQ(text_of(host->get("sum")), std::to_string(3 * kClients));
  EXPECT_EQ(host->add("neg", -5), -5);
  EXPECT_EQ(host->add("neg", 2), -3);

  host->set("text", bytes_of("abc"));
  std::string msg = error_of([&] { host->add("text", 1); });
  EXPECT_TRUE(has(msg, "add 'text'")) << msg;
  EXPECT_TRUE(has(msg, "does not hold a number")) << msg;
  host->set("max", bytes_of(std::to_string(INT64_MAX)));
  msg = error_of([&] { host->add("max", 1); });
  EXPECT_TRUE(has(msg, "overflows int64")) << msg;
  EXPECT_EQ(text_of(host->get("max")), std::to_string(INT64_MAX));  // unchanged
  EXPECT_EQ(host->add("counter", 1), kClients * kAdds + 1);           // the connection still works
}

TEST(DistTcpStore, TimeoutNamesTheMissingKeysAndTheStore) {
  auto host = TcpStore::host("127.0.0.1", 0, 200ms);
  const std::string where = "127.0.0.1:" + std::to_string(host->port());
  auto client = TcpStore::connect("127.0.0.1", host->port(), 200ms);
  client->set("present", bytes_of("1"));

  auto start = Clock::now();
  std::string msg = error_of([&] { client->wait({"present", "missing1", "missing2"}); });
  double took = seconds_since(start);
  EXPECT_TRUE(has(msg, "rendezvous store at " + where)) << msg;
  EXPECT_TRUE(has(msg, "timed out after 0.2 s waiting for keys 'missing1', 'missing2'")) << msg;
  EXPECT_FALSE(has(msg, "'present'")) << msg;
  // The server answers at the client's timeout: not before, and well within the client's grace.
  EXPECT_GE(took, 0.19);
  EXPECT_LT(took, 1.5);

  start = Clock::now();
  msg = error_of([&] { client->get("nope"); });
  EXPECT_TRUE(has(msg, "timed out after 0.2 s waiting for key 'nope'")) << msg;
  EXPECT_GE(seconds_since(start), 0.19);

  // A timeout is an answer: the connection goes on working, with a new timeout.
  client->set_timeout(5s);
  EXPECT_EQ(client->timeout(), 5s);
  EXPECT_EQ(text_of(client->get("present")), "1");
  client->set_timeout(0ms);
  msg = error_of([&] { client->get("nope"); });
  EXPECT_TRUE(has(msg, "timed out after 0 s")) << msg;
}

TEST(DistTcpStore, OversizedLengthsAreRefusedWithoutAllocating) {
  auto host = TcpStore::host("127.0.0.1", 0, 10s);
  const int port = host->port();

  // Before the hello, a length beyond a hello's is refused.
  RawSocket first(port);
  first.send(RawSocket::u32(0xffffffffu));
  EXPECT_TRUE(first.closed_by_server(2s));
  // After it, a frame longer than any key and value.
  RawSocket second(port);
  second.greet();
  second.send(RawSocket::u32(0x7fffffffu));
  EXPECT_TRUE(second.closed_by_server(2s));
  // A frame of acceptable size naming a key longer than kMaxKeyBytes.
  RawSocket third(port);
  third.greet();
  std::vector<uint8_t> set_frame = RawSocket::u32(64);
  set_frame.push_back(2);  // set
  auto key_length = RawSocket::u32(static_cast<uint32_t>(kMaxKeyBytes + 1));
  set_frame.insert(set_frame.end(), key_length.begin(), key_length.end());
  set_frame.resize(4 + 64, 'x');
  third.send(set_frame);
  EXPECT_TRUE(third.closed_by_server(2s));
  // A first frame that is not the hello.
  RawSocket fourth(port);
  fourth.send({5, 0, 0, 0, 3, 0, 0, 0, 0});
  EXPECT_TRUE(fourth.closed_by_server(2s));
  expect_serving(port, "after oversized");

  // Frames announcing the largest allowed size, of which only a few bytes come: the server's
  // memory grows with what arrives, not with what is announced (4 x 64 MiB would show).
  int64_t before = resident_mib();
  std::vector<std::unique_ptr<RawSocket>> slow;
  for (int i = 0; i < 4; ++i) {
    slow.push_back(std::make_unique<RawSocket>(port));
    slow.back()->greet();
    std::vector<uint8_t> frame = RawSocket::u32(static_cast<uint32_t>(kMaxValueBytes + 16));
    frame.push_back(2);
    frame.resize(frame.size() + 100, 'v');
    slow.back()->send(frame);
  }
  expect_serving(port, "during slow frames");
  std::this_thread::sleep_for(50ms);
  EXPECT_LT(resident_mib() - before, 64) << "the server allocated what was announced";
  // Client side: the same limits, refused before anything is sent.
  auto client = TcpStore::connect("127.0.0.1", port, 5s);
  std::string msg = error_of([&] { client->set(std::string(kMaxKeyBytes + 1, 'k'), {}); });
  EXPECT_TRUE(has(msg, "key of 4097 bytes is over the limit")) << msg;
  msg = error_of([&] { client->set("v", Bytes(kMaxValueBytes + 1)); });
  EXPECT_TRUE(has(msg, "is over the limit")) << msg;
  msg = error_of([&] { client->get(std::string(kMaxKeyBytes + 1, 'k')); });
  EXPECT_TRUE(has(msg, "over the limit")) << msg;
  EXPECT_EQ(text_of(client->get("during slow frames")), "still here");
}

TEST(DistTcpStore, ClientsVanishingMidMessageLeaveTheServerServing) {
  auto host = TcpStore::host("127.0.0.1", 0, 10s);
  const int port = host->port();
  {
    RawSocket half_hello(port);
    auto hello = RawSocket::hello();
    half_hello.send(std::vector<uint8_t>(hello.begin(), hello.begin() + 7));
  }
  {
    RawSocket half_header(port);
    half_header.greet();
    half_header.send({20, 0});  // 2 of a header's 4 bytes
  }
  {
    RawSocket half_body(port);
    half_body.greet();
    std::vector<uint8_t> frame = RawSocket::u32(1000);
    frame.push_back(2);
    frame.resize(frame.size() + 300, 'z');
    half_body.send(frame);
  }
  {
    // A client that goes away while its get waits on the server.
    RawSocket waiting(port);
    waiting.greet();
    std::vector<uint8_t> frame = RawSocket::u32(1 + 8 + 4 + 5);
    frame.push_back(3);  // get
    for (uint8_t b : {0x10, 0x27, 0, 0, 0, 0, 0, 0}) frame.push_back(b);  // 10 s timeout (0x2710 ms)
    auto length = RawSocket::u32(5);
    frame.insert(frame.end(), length.begin(), length.end());
    for (char ch : std::string("ghost")) frame.push_back(static_cast<uint8_t>(ch));
    waiting.send(frame);
    std::this_thread::sleep_for(50ms);
  }
  std::this_thread::sleep_for(50ms);
  expect_serving(port, "after vanished clients");
  host->set("ghost", bytes_of("nobody waits"));  // the vanished waiter is not answered
  EXPECT_EQ(text_of(host->get("ghost")), "nobody waits");
}

TEST(DistTcpStore, ServerGoneIsAnErrorNamingIt) {
  auto host = TcpStore::host("127.0.0.1", 0, 10s);
  const int port = host->port();
  const std::string where = "rendezvous store at 127.0.0.1:" + std::to_string(port);
  auto idle = TcpStore::connect("127.0.0.1", port, 10s);
  auto blocked = std::async(std::launch::async, [port] {
    auto client = TcpStore::connect("127.0.0.1", port, 10s);
    client->set("ready", {});
    return error_of([&] { client->get("never"); });
  });
  host->wait({"ready"});
  std::this_thread::sleep_for(50ms);  // the get is parked on the server
  auto start = Clock::now();
  host.reset();
  std::string msg = blocked.get();
  EXPECT_LT(seconds_since(start), 2.0) << "waited for the timeout instead of seeing the close";
  EXPECT_TRUE(has(msg, where + " closed the connection during get 'never'")) << msg;

  msg = error_of([&] { idle->set("x", bytes_of("y")); });
  EXPECT_TRUE(has(msg, where + " closed the connection during set 'x'")) << msg;
  msg = error_of([&] { idle->check({"x"}); });
  EXPECT_TRUE(has(msg, where + " is unusable after an earlier error")) << msg;

  // Nothing listening: the client retries until its timeout, then names the address.
  start = Clock::now();
  msg = error_of([&] { TcpStore::connect("127.0.0.1", port, 300ms); });
  double took = seconds_since(start);
  EXPECT_TRUE(has(msg, "cannot reach the " + where + " within 0.3 s")) << msg;
  EXPECT_GE(took, 0.29);
  EXPECT_LT(took, 2.0);
}

TEST(DistTcpStore, ClientsMayStartBeforeTheServer) {
  int port;
  {
    auto probe = TcpStore::host("127.0.0.1", 0, 1s);
    port = probe->port();
  }
  auto early = std::async(std::launch::async, [port] {
    auto client = TcpStore::connect("127.0.0.1", port, 10s);
    return text_of(client->get("from host"));
  });
  std::this_thread::sleep_for(300ms);
  auto host = TcpStore::host("127.0.0.1", port, 10s);
  host->set("from host", bytes_of("hi"));
  EXPECT_EQ(early.get(), "hi");
}

TEST(DistTcpStore, PortInUseSaysSo) {
  auto host = TcpStore::host("127.0.0.1", 0, 1s);
  std::string msg = error_of([&] { TcpStore::host("127.0.0.1", host->port(), 1s); });
  EXPECT_TRUE(has(msg, "cannot listen on 127.0.0.1:" + std::to_string(host->port()) +
                           ": address in use; is another job running? choose another --dist-url port"))
      << msg;
  expect_serving(host->port(), "after a refused second host");
  msg = error_of([&] { TcpStore::host("127.0.0.1", 70000, 1s); });
  EXPECT_TRUE(has(msg, "cannot listen on 127.0.0.1:70000")) << msg;
  msg = error_of([&] { TcpStore::connect("127.0.0.1", 0, 1s); });
  EXPECT_TRUE(has(msg, "the port must be in 1..65535")) << msg;
}

TEST(DistTcpStore, WildcardAddressIsReachedThroughLoopback) {
  auto host = TcpStore::host("0.0.0.0", 0, 5s);
  host->set("k", bytes_of("v"));
  auto client = TcpStore::connect("localhost", host->port(), 5s);
  EXPECT_EQ(text_of(client->get("k")), "v");
}

TEST(DistTcpStore, AServiceThatIsNotAStoreIsNamed) {
  // A listener that accepts and closes at once (as PyTorch's TCPStore does on a wrong magic).
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  socklen_t size = sizeof(addr);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &size), 0);
  int port = ntohs(addr.sin_port);
  std::thread closer([listener] {
    int fd = ::accept(listener, nullptr, nullptr);
    if (fd >= 0) ::close(fd);
  });
  std::string msg = error_of([&] { TcpStore::connect("127.0.0.1", port, 3s); });
  closer.join();
  ::close(listener);
  EXPECT_TRUE(has(msg, "did not answer as an oxtrain rendezvous store")) << msg;
  EXPECT_TRUE(has(msg, "torchrun")) << msg;
}

TEST(DistTcpStore, ForkedProcessesRendezvous) {
  auto host = TcpStore::host("127.0.0.1", 0, 20s);
  const int port = host->port();
  constexpr int kChildren = 4;
  std::vector<pid_t> children;
  for (int rank = 1; rank <= kChildren; ++rank) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // The child: no gtest macros, its verdict in the exit status.
      int status = 0;
      try {
        auto store = TcpStore::connect("127.0.0.1", port, 15s);
        store->set("rank/" + std::to_string(rank), bytes_of("value of " + std::to_string(rank)));
        store->add("arrived", 1);
        std::vector<std::string> keys;
        for (int r = 1; r <= kChildren; ++r) keys.push_back("rank/" + std::to_string(r));
        store->wait(keys);
        for (int r = 1; r <= kChildren; ++r)
          if (text_of(store->get("rank/" + std::to_string(r))) != "value of " + std::to_string(r)) status = 3;
        if (text_of(store->get("go")) != "go") status = 4;
      } catch (...) {
        status = 2;
      }
      _exit(status);
    }
    children.push_back(pid);
  }
  // Rank 0: waits for every child to arrive, then lets them finish.
  host->wait({"rank/1", "rank/2", "rank/3", "rank/4"});
  for (;;) {
    if (text_of(host->get("arrived")) == std::to_string(kChildren)) break;
    std::this_thread::sleep_for(5ms);
  }
  host->set("go", bytes_of("go"));
  for (pid_t pid : children) {
    int status = -1;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "child " << pid;
  }
}

}  // namespace
