// TcpStore: the rendezvous store's server (one poll() thread) and client over POSIX sockets;
// the protocol is described in the header.
#include "runtime/dist/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <optional>
#include <thread>
#include <unordered_map>

#include "base/error.h"
#include "base/text.h"

namespace oxtrain::runtime::dist {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kMagic = 0x65726f7473786fULL;  // "oxstore"
constexpr uint32_t kVersion = 1;

enum Op : uint8_t { kHello = 1, kSet = 2, kGet = 3, kAdd = 4, kWait = 5, kCheck = 6 };
enum Status : uint8_t { kOk = 0, kTimedOut = 1, kFailed = 2 };

// The longest frame body either side accepts: a set of the largest key and value, or a wait
// naming many keys, plus the fields around them.
constexpr size_t kMaxFrameBytes = kMaxValueBytes + kMaxKeyBytes + 64;
// Before the hello, only a hello-sized frame is read.
constexpr size_t kMaxHelloBytes = 64;
// A waiting request is answered by the server at the client's timeout; the client gives the
// answer this long to arrive before it stops trusting the connection. Requests that do not wait
// are answered at once and get the same bound (the timeout may be 0 for them).
constexpr std::chrono::milliseconds kReplyGrace{2000};
// Longer timeouts are capped here (a year) so deadlines cannot overflow.
constexpr int64_t kMaxTimeoutMs = 365LL * 24 * 3600 * 1000;

std::string errno_text(int error) { return std::strerror(error); }

std::string seconds_text(int64_t ms) {
  std::string text = std::to_string(ms / 1000);
  int64_t fraction = ms % 1000;
  if (fraction != 0) {
    std::string digits = std::to_string(1000 + fraction).substr(1);  // three digits
    while (!digits.empty() && digits.back() == '0') digits.pop_back();
    text += "." + digits;
  }
  return text + " s";
}

std::string host_port(const std::string& host, int port) {
  // A numeric IPv6 address is bracketed so its port stays readable.
  if (host.find(':') != std::string::npos) return "[" + escape_name(host) + "]:" + std::to_string(port);
  return escape_name(host) + ":" + std::to_string(port);
}

std::string keys_text(const std::vector<std::string>& keys) {
  std::vector<std::string> quoted;
  for (const auto& k : keys) quoted.push_back(quote_name(k, 60));
  return std::string(keys.size() == 1 ? "key " : "keys ") + join_limited(quoted, 160);
}

void check_key(const std::string& key) {
  if (key.size() > kMaxKeyBytes)
    throw Error("store: key of " + std::to_string(key.size()) + " bytes is over the limit of " +
                std::to_string(kMaxKeyBytes) + " bytes");
}

void check_keys(const std::vector<std::string>& keys) {
  if (keys.size() > kMaxStoreKeysPerCall)
    throw Error("store: " + std::to_string(keys.size()) + " keys in one call, over the limit of " +
                std::to_string(kMaxStoreKeysPerCall));
  size_t total = 0;
  for (const auto& k : keys) {
    check_key(k);
    total += k.size() + 4;
  }
  if (total + 32 > kMaxFrameBytes)
    throw Error("store: the keys of one call take " + std::to_string(total) + " bytes, over the limit of " +
                std::to_string(kMaxFrameBytes));
}

// ---- Encoding --------------------------------------------------------------------------------

// A frame under construction: 4 bytes of length, patched by finish(), then the body.
class Writer {
 public:
  Writer() : bytes_(4, 0) {}
  explicit Writer(size_t reserve) : Writer() { bytes_.reserve(4 + reserve); }
  void u8(uint8_t v) { bytes_.push_back(v); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void str(const uint8_t* data, size_t size) {
    u32(static_cast<uint32_t>(size));
    bytes_.insert(bytes_.end(), data, data + size);
  }
  void str(const std::string& s) { str(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }
  std::vector<uint8_t> finish() {
    uint32_t body = static_cast<uint32_t>(bytes_.size() - 4);
    for (int i = 0; i < 4; ++i) bytes_[i] = static_cast<uint8_t>(body >> (8 * i));
    return std::move(bytes_);
  }

 private:
  std::vector<uint8_t> bytes_;
};

struct Malformed {};  // a frame that does not parse: the connection is closed

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t u8() {
    need(1);
    return data_[pos_++];
  }
  uint32_t u32() {
    need(4);
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(data_[pos_++]) << (8 * i);
    return v;
  }
  uint64_t u64() {
    need(8);
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(data_[pos_++]) << (8 * i);
    return v;
  }
  int64_t i64() { return static_cast<int64_t>(u64()); }
  std::string str(size_t max_bytes) {
    size_t n = u32();
    if (n > max_bytes) throw Malformed{};
    need(n);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  Bytes bytes(size_t max_bytes) {
    size_t n = u32();
    if (n > max_bytes) throw Malformed{};
    need(n);
    Bytes b(data_ + pos_, data_ + pos_ + n);
    pos_ += n;
    return b;
  }
  std::vector<std::string> keys() {
    size_t n = u32();
    if (n > kMaxStoreKeysPerCall || n > remaining() / 4) throw Malformed{};
    std::vector<std::string> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back(str(kMaxKeyBytes));
    return out;
  }
  size_t remaining() const { return size_ - pos_; }
  void end() const {
    if (pos_ != size_) throw Malformed{};
  }

 private:
  void need(size_t n) const {
    if (n > size_ - pos_) throw Malformed{};
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

uint32_t decode_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

// ---- Sockets ---------------------------------------------------------------------------------

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = other.release();
    }
    return *this;
  }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

void set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list) freeaddrinfo(list);
  }
};

// Milliseconds left until `deadline`, rounded up; 0 when it has passed.
int ms_until(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

// Waits until `fd` is ready for `events`; false when the deadline passed first.
bool poll_until(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    int left = ms_until(deadline);
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, left);
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return true;  // let the read or write report the error
  }
}

enum class IoResult { kDone, kClosed, kTimedOut, kError };

IoResult send_all(int fd, const uint8_t* data, size_t size, Clock::time_point deadline, int& error) {
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!poll_until(fd, POLLOUT, deadline)) return IoResult::kTimedOut;
      continue;
    }
    error = n < 0 ? errno : 0;
    if (error == EPIPE || error == ECONNRESET || error == 0) return IoResult::kClosed;
    return IoResult::kError;
  }
  return IoResult::kDone;
}

IoResult recv_all(int fd, uint8_t* data, size_t size, Clock::time_point deadline, int& error) {
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::recv(fd, data + got, size - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return IoResult::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!poll_until(fd, POLLIN, deadline)) return IoResult::kTimedOut;
      continue;
    }
    error = errno;
    if (error == ECONNRESET || error == EPIPE) return IoResult::kClosed;
    return IoResult::kError;
  }
  return IoResult::kDone;
}

}  // namespace

// ---- Server ----------------------------------------------------------------------------------

class TcpStoreServer {
 public:
  // Binds and listens; throws the Error the user sees for a port in use, an address that is not
  // this machine's, or a name that does not resolve.
  static std::unique_ptr<TcpStoreServer> listen_on(const std::string& address, int port);
  ~TcpStoreServer();

  int port() const { return port_; }
  // Where this machine's own client connects: the bound address, loopback for a wildcard one.
  const std::string& connect_host() const { return connect_host_; }

 private:
  struct Parked {
    uint8_t op = 0;
    std::vector<std::string> keys;
    Clock::time_point deadline;
  };
  struct Connection {
    Fd fd;
    bool greeted = false;
    uint8_t header[4] = {};
    size_t header_got = 0;
    size_t body_size = 0;
    std::vector<uint8_t> body;
    std::vector<uint8_t> out;
    size_t out_sent = 0;
    std::optional<Parked> parked;
    bool dead = false;
  };

  TcpStoreServer(Fd listener, int port, std::string connect_host);
  void loop();
  void accept_all();
  void read_from(Connection& c);
  void handle(Connection& c);
  void reply(Connection& c, std::vector<uint8_t> frame);
  void flush(Connection& c);
  void answer_parked(Connection& c, bool timed_out);
  bool all_exist(const std::vector<std::string>& keys) const;
  void keys_changed();
  static void close(Connection& c) {
    c.dead = true;
    c.fd.reset();
  }

  Fd listener_;
  int port_;
  std::string connect_host_;
  Fd wake_read_, wake_write_;
  std::atomic<bool> stop_{false};
  std::list<Connection> connections_;
  std::unordered_map<std::string, Bytes> values_;
  Clock::time_point accept_paused_until_{};
  std::thread thread_;
};

std::unique_ptr<TcpStoreServer> TcpStoreServer::listen_on(const std::string& address, int port) {
  const std::string bind_address = address.empty() ? "0.0.0.0" : address;
  const std::string where = host_port(bind_address, port);
  if (port < 0 || port > 65535)
    throw Error("cannot listen on " + where + ": the port must be in 0..65535 (0: any free port)");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  AddrInfo found;
  int rc = getaddrinfo(bind_address.c_str(), std::to_string(port).c_str(), &hints, &found.list);
  if (rc != 0)
    throw Error("cannot listen on " + where + ": cannot resolve '" + escape_name(bind_address) +
                "': " + gai_strerror(rc));
  int last_error = 0;
  for (addrinfo* a = found.list; a; a = a->ai_next) {
    Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (fd.get() < 0) {
      last_error = errno;
      continue;
    }
    // Lets a restarted job rebind a port whose old connections linger in TIME_WAIT; Linux still
    // refuses the bind while another socket listens there.
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), 1024) != 0) {
      last_error = errno;
      continue;
    }
    sockaddr_storage bound{};
    socklen_t bound_size = sizeof(bound);
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &bound_size) != 0) {
      last_error = errno;
      continue;
    }
    char numeric[NI_MAXHOST] = {};
    char service[NI_MAXSERV] = {};
    if (getnameinfo(reinterpret_cast<sockaddr*>(&bound), bound_size, numeric, sizeof(numeric), service,
                    sizeof(service), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
      last_error = EINVAL;
      continue;
    }
    std::string connect_host = numeric;
    if (connect_host == "0.0.0.0") connect_host = "127.0.0.1";
    if (connect_host == "::") connect_host = "::1";
    set_nonblocking(fd.get());
    return std::unique_ptr<TcpStoreServer>(
        new TcpStoreServer(std::move(fd), std::atoi(service), std::move(connect_host)));
  }
  if (last_error == EADDRINUSE)
    throw Error("cannot listen on " + where +
                ": address in use; is another job running? choose another --dist-url port");
  if (last_error == EADDRNOTAVAIL)
    throw Error("cannot listen on " + where +
                ": the address is not one of this machine's; the process of rank 0 must run on the host "
                "named by --dist-url or MASTER_ADDR");
  if (last_error == EACCES)
    throw Error("cannot listen on " + where + ": permission denied (ports below 1024 need privileges)");
  throw Error("cannot listen on " + where + ": " + errno_text(last_error));
}

TcpStoreServer::TcpStoreServer(Fd listener, int port, std::string connect_host)
    : listener_(std::move(listener)), port_(port), connect_host_(std::move(connect_host)) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0)
    throw Error("rendezvous store: cannot create the server's wake-up pipe: " + errno_text(errno));
  wake_read_ = Fd(pipe_fds[0]);
  wake_write_ = Fd(pipe_fds[1]);
  thread_ = std::thread([this] { loop(); });
}

TcpStoreServer::~TcpStoreServer() {
  stop_ = true;
  uint8_t byte = 1;
  while (::write(wake_write_.get(), &byte, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
}

void TcpStoreServer::loop() {
  std::vector<pollfd> fds;
  std::vector<Connection*> polled;
  while (!stop_) {
    fds.clear();
    polled.clear();
    Clock::time_point now = Clock::now();
    fds.push_back({wake_read_.get(), POLLIN, 0});
    bool accepting = now >= accept_paused_until_;
    if (accepting) fds.push_back({listener_.get(), POLLIN, 0});
    std::optional<Clock::time_point> next_deadline;
    if (!accepting) next_deadline = accept_paused_until_;
    for (auto& c : connections_) {
      short events;
      if (c.out_sent < c.out.size()) {
        events = POLLOUT;
      } else if (c.parked) {
        // Only a peer that goes away matters while its request waits (it sends nothing more).
#ifdef POLLRDHUP
        events = POLLRDHUP;
#else
        events = 0;
#endif
        if (!next_deadline || c.parked->deadline < *next_deadline) next_deadline = c.parked->deadline;
      } else {
        events = POLLIN;
      }
      fds.push_back({c.fd.get(), events, 0});
      polled.push_back(&c);
    }
    int wait_ms = next_deadline ? ms_until(*next_deadline) : -1;
    int n = ::poll(fds.data(), fds.size(), wait_ms);
    if (n < 0 && errno != EINTR) {
      // Nothing sensible is left to do with a poll that fails; back off instead of spinning.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (stop_) break;
    if (n > 0) {
      if (fds[0].revents & POLLIN) {
        uint8_t drain[64];
        while (::read(wake_read_.get(), drain, sizeof(drain)) > 0) {
        }
      }
      size_t first = 1;
      if (accepting) {
        if (fds[1].revents & POLLIN) accept_all();
        first = 2;
      }
      for (size_t i = first; i < fds.size(); ++i) {
        Connection& c = *polled[i - first];
        short revents = fds[i].revents;
        if (revents == 0 || c.dead) continue;
        if (c.out_sent < c.out.size()) {
          flush(c);
        } else if (c.parked) {
          close(c);  // the client went away while it waited
        } else {
          read_from(c);
        }
      }
    }
    now = Clock::now();
    for (auto& c : connections_)
      if (!c.dead && c.parked && c.parked->deadline <= now) answer_parked(c, /*timed_out=*/true);
    connections_.remove_if([](const Connection& c) { return c.dead; });
  }
  connections_.clear();
}

void TcpStoreServer::accept_all() {
  for (;;) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      set_nodelay(fd);
      connections_.emplace_back();
      connections_.back().fd = Fd(fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
      accept_paused_until_ = Clock::now() + std::chrono::milliseconds(100);  // out of descriptors: retry later
    return;  // EAGAIN, or an error to retry on the next poll
  }
}

void TcpStoreServer::read_from(Connection& c) {
  // Reads what has arrived, handling each complete frame, until the socket has nothing more,
  // the client must wait for an answer (parked, or a reply still being sent), or it is closed.
  while (!c.dead && !c.parked && c.out_sent >= c.out.size()) {
    if (c.header_got < 4) {
      ssize_t n = ::recv(c.fd.get(), c.header + c.header_got, 4 - c.header_got, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n <= 0) return close(c);  // closed (mid-message or between messages) or reset
      c.header_got += static_cast<size_t>(n);
      if (c.header_got < 4) continue;
      c.body_size = decode_u32(c.header);
      size_t limit = c.greeted ? kMaxFrameBytes : kMaxHelloBytes;
      if (c.body_size == 0 || c.body_size > limit) return close(c);  // refused before allocating
      c.body.clear();
    }
    if (c.body.size() < c.body_size) {
      // Grow with the bytes that arrive, never to the size announced up front.
      size_t have = c.body.size();
      size_t chunk = std::min<size_t>(c.body_size - have, 64 * 1024);
      if (c.body.capacity() < have + chunk)
        c.body.reserve(std::min(c.body_size, std::max(have + chunk, 2 * c.body.capacity())));
      c.body.resize(have + chunk);
      ssize_t n = ::recv(c.fd.get(), c.body.data() + have, chunk, 0);
      if (n < 0 && errno == EINTR) {
        c.body.resize(have);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c.body.resize(have);
        return;
      }
      if (n <= 0) return close(c);
      c.body.resize(have + static_cast<size_t>(n));
      if (c.body.size() < c.body_size) continue;
    }
    c.header_got = 0;
    handle(c);
    c.body.clear();
    if (c.body.capacity() > 1 << 20) c.body.shrink_to_fit();
  }
}

void TcpStoreServer::handle(Connection& c) {
  try {
    Reader in(c.body.data(), c.body.size());
    uint8_t op = in.u8();
    if (!c.greeted) {
      if (op != kHello || in.u64() != kMagic || in.u32() != kVersion) throw Malformed{};
      in.end();
      c.greeted = true;
      Writer out;
      out.u8(kOk);
      out.u64(kMagic);
      out.u32(kVersion);
      return reply(c, out.finish());
    }
    switch (op) {
      case kSet: {
        std::string key = in.str(kMaxKeyBytes);
        Bytes value = in.bytes(kMaxValueBytes);
        in.end();
        values_[key] = std::move(value);
        Writer out;
        out.u8(kOk);
        reply(c, out.finish());
        return keys_changed();
      }
      case kGet:
      case kWait: {
        int64_t timeout_ms = static_cast<int64_t>(std::min<uint64_t>(in.u64(), kMaxTimeoutMs));
        std::vector<std::string> keys;
        if (op == kGet)
          keys.push_back(in.str(kMaxKeyBytes));
        else
          keys = in.keys();
        in.end();
        c.parked = Parked{op, std::move(keys), Clock::now() + std::chrono::milliseconds(timeout_ms)};
        if (all_exist(c.parked->keys))
          answer_parked(c, false);
        else if (timeout_ms == 0)
          answer_parked(c, true);
        return;
      }
      case kAdd: {
        std::string key = in.str(kMaxKeyBytes);
        int64_t delta = in.i64();
        in.end();
        int64_t now = 0;
        auto it = values_.find(key);
        Writer out;
        if (it != values_.end()) {
          auto parsed = parse_int64(std::string(it->second.begin(), it->second.end()));
          if (!parsed) {
            out.u8(kFailed);
            out.str("key " + quote_name(key, 60) + " does not hold a number");
            return reply(c, out.finish());
          }
          now = *parsed;
        }
        if (__builtin_add_overflow(now, delta, &now)) {
          out.u8(kFailed);
          out.str("adding " + std::to_string(delta) + " to key " + quote_name(key, 60) + " overflows int64");
          return reply(c, out.finish());
        }
        std::string text = std::to_string(now);
        values_[key] = Bytes(text.begin(), text.end());
        out.u8(kOk);
        out.i64(now);
        reply(c, out.finish());
        return keys_changed();
      }
      case kCheck: {
        std::vector<std::string> keys = in.keys();
        in.end();
        Writer out;
        out.u8(kOk);
        out.u8(all_exist(keys) ? 1 : 0);
        return reply(c, out.finish());
      }
      default:
        throw Malformed{};
    }
  } catch (const Malformed&) {
    close(c);
  } catch (const std::bad_alloc&) {
    close(c);  // a value this machine cannot hold: that client goes, the others stay
  }
}

bool TcpStoreServer::all_exist(const std::vector<std::string>& keys) const {
  for (const auto& k : keys)
    if (!values_.count(k)) return false;
  return true;
}

void TcpStoreServer::answer_parked(Connection& c, bool timed_out) {
  Parked parked = std::move(*c.parked);
  c.parked.reset();
  if (timed_out) {
    Writer out;
    out.u8(kTimedOut);
    std::vector<uint32_t> missing;
    for (size_t i = 0; i < parked.keys.size(); ++i)
      if (!values_.count(parked.keys[i])) missing.push_back(static_cast<uint32_t>(i));
    out.u32(static_cast<uint32_t>(missing.size()));
    for (uint32_t i : missing) out.u32(i);
    return reply(c, out.finish());
  }
  if (parked.op == kGet) {
    const Bytes& value = values_.at(parked.keys[0]);
    Writer out(value.size() + 8);
    out.u8(kOk);
    out.str(value.data(), value.size());
    return reply(c, out.finish());
  }
  Writer out;
  out.u8(kOk);
  reply(c, out.finish());
}

void TcpStoreServer::keys_changed() {
  for (auto& c : connections_)
    if (!c.dead && c.parked && all_exist(c.parked->keys)) answer_parked(c, false);
}

void TcpStoreServer::reply(Connection& c, std::vector<uint8_t> frame) {
  c.out = std::move(frame);
  c.out_sent = 0;
  flush(c);
}

void TcpStoreServer::flush(Connection& c) {
  while (!c.dead && c.out_sent < c.out.size()) {
    ssize_t n = ::send(c.fd.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // the rest on POLLOUT
    return close(c);
  }
  if (c.out_sent >= c.out.size()) {
    c.out.clear();
    if (c.out.capacity() > 1 << 20) c.out.shrink_to_fit();
    c.out_sent = 0;
  }
}

// ---- Client ----------------------------------------------------------------------------------

std::unique_ptr<TcpStore> TcpStore::connect(const std::string& host, int port, std::chrono::milliseconds timeout) {
  if (host.empty()) throw Error("rendezvous store: no host given (expected HOST:PORT)");
  if (port < 1 || port > 65535)
    throw Error("rendezvous store at " + host_port(host, port) + ": the port must be in 1..65535");
  auto store = std::unique_ptr<TcpStore>(new TcpStore(host, host, port, timeout, nullptr));
  store->open_connection();
  return store;
}

std::unique_ptr<TcpStore> TcpStore::host(const std::string& address, int port, std::chrono::milliseconds timeout) {
  auto server = TcpStoreServer::listen_on(address, port);
  std::string connect_host = server->connect_host();
  int bound_port = server->port();
  auto store = std::unique_ptr<TcpStore>(
      new TcpStore(address.empty() ? "0.0.0.0" : address, connect_host, bound_port, timeout, std::move(server)));
  store->open_connection();
  return store;
}

TcpStore::TcpStore(std::string host, std::string connect_host, int port, std::chrono::milliseconds timeout,
                   std::unique_ptr<TcpStoreServer> server)
    : host_(std::move(host)),
      connect_host_(std::move(connect_host)),
      port_(port),
      timeout_ms_(std::clamp<int64_t>(timeout.count(), 0, kMaxTimeoutMs)),
      server_(std::move(server)) {}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
  server_.reset();  // after this process's own client has gone
}

std::string TcpStore::where() const { return "rendezvous store at " + host_port(host_, port_); }

std::chrono::milliseconds TcpStore::timeout() const { return std::chrono::milliseconds(timeout_ms_.load()); }

void TcpStore::set_timeout(std::chrono::milliseconds timeout) {
  timeout_ms_ = std::clamp<int64_t>(timeout.count(), 0, kMaxTimeoutMs);
}

void TcpStore::open_connection() {
  const int64_t timeout_ms = timeout_ms_.load();
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string last_problem = "nothing answered";
  auto backoff = std::chrono::milliseconds(10);
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    AddrInfo found;
    int rc = getaddrinfo(connect_host_.c_str(), std::to_string(port_).c_str(), &hints, &found.list);
    if (rc != 0 && rc != EAI_AGAIN)
      throw Error(where() + ": cannot resolve '" + escape_name(connect_host_) + "': " + gai_strerror(rc));
    if (rc == EAI_AGAIN) last_problem = std::string("cannot resolve the host yet: ") + gai_strerror(rc);
    for (addrinfo* a = rc == 0 ? found.list : nullptr; a; a = a->ai_next) {
      Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
      if (fd.get() < 0) {
        last_problem = errno_text(errno);
        continue;
      }
      int r = ::connect(fd.get(), a->ai_addr, a->ai_addrlen);
      if (r != 0 && errno != EINPROGRESS && errno != EINTR) {
        last_problem = errno_text(errno);
        continue;
      }
      if (r != 0) {
        // Each attempt gets a moment even when the timeout is (nearly) spent.
        if (!poll_until(fd.get(), POLLOUT, std::max(deadline, Clock::now() + std::chrono::milliseconds(100)))) {
          last_problem = "the connection attempt did not complete";
          continue;
        }
        int error = 0;
        socklen_t size = sizeof(error);
        if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &size) != 0) error = errno;
        if (error != 0) {
          last_problem = errno_text(error);
          continue;
        }
      }
      set_nodelay(fd.get());
      // The hello: an oxtrain store answers it; anything else (torchrun's own store, another
      // service on the port) does not.
      Writer hello;
      hello.u8(kHello);
      hello.u64(kMagic);
      hello.u32(kVersion);
      std::vector<uint8_t> frame = hello.finish();
      // A listener that accepted must answer promptly; give it at least a second even when the
      // connection took most of the timeout.
      auto hello_deadline = std::max(deadline, Clock::now() + std::chrono::seconds(1));
      int error = 0;
      uint8_t answer[4 + 13];
      IoResult sent = send_all(fd.get(), frame.data(), frame.size(), hello_deadline, error);
      IoResult got = sent == IoResult::kDone ? recv_all(fd.get(), answer, sizeof(answer), hello_deadline, error) : sent;
      if (got == IoResult::kDone) {
        Reader in(answer + 4, sizeof(answer) - 4);
        if (decode_u32(answer) == 13 && in.u8() == kOk && in.u64() == kMagic && in.u32() == kVersion) {
          fd_ = fd.release();
          return;
        }
      }
      throw Error(where() + " accepted the connection but did not answer as an oxtrain rendezvous store (" +
                  (got == IoResult::kDone ? std::string("unexpected reply")
                   : got == IoResult::kClosed ? std::string("it closed the connection")
                   : got == IoResult::kTimedOut ? std::string("no reply")
                                                : errno_text(error)) +
                  "); is another service on that port, such as torchrun's own store? oxtrain's store goes "
                  "on MASTER_PORT + 1 under torchrun");
    }
    auto now = Clock::now();
    if (now >= deadline)
      throw Error("cannot reach the " + where() + " within " + seconds_text(timeout_ms) + ": " + last_problem +
                  "; is rank 0 running, and is this its address?");
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
}

void TcpStore::fail_connection(const std::string& message) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  broken_ = message;
  throw Error(message);
}

std::vector<uint8_t> TcpStore::request(const std::vector<uint8_t>& frame, std::chrono::milliseconds reply_within,
                                       const std::string& what, const std::vector<std::string>& keys) {
  if (!broken_.empty()) throw Error(where() + " is unusable after an earlier error: " + broken_);
  const auto deadline = Clock::now() + reply_within;
  auto give_up = [&](IoResult result, int error) {
    if (result == IoResult::kClosed)
      fail_connection(where() + " closed the connection during " + what + "; did rank 0 exit?");
    if (result == IoResult::kTimedOut) {
      if (!keys.empty())
        fail_connection(where() + ": timed out after " + seconds_text(timeout_ms_.load()) + " waiting for " +
                        keys_text(keys) + " (the store did not answer)");
      fail_connection(where() + ": no answer to " + what + " within " + seconds_text(reply_within.count()));
    }
    fail_connection(where() + ": " + what + " failed: " + errno_text(error));
  };
  int error = 0;
  IoResult r = send_all(fd_, frame.data(), frame.size(), deadline, error);
  if (r != IoResult::kDone) give_up(r, error);
  uint8_t header[4];
  r = recv_all(fd_, header, 4, deadline, error);
  if (r != IoResult::kDone) give_up(r, error);
  size_t size = decode_u32(header);
  if (size == 0 || size > kMaxValueBytes + 64)
    fail_connection(where() + ": the reply to " + what + " announced " + std::to_string(size) +
                    " bytes, which no oxtrain store sends");
  std::vector<uint8_t> body(size);
  r = recv_all(fd_, body.data(), size, deadline, error);
  if (r != IoResult::kDone) give_up(r, error);
  return body;
}

void TcpStore::set(const std::string& key, const Bytes& value) {
  check_key(key);
  if (value.size() > kMaxValueBytes)
    throw Error("store: value of " + std::to_string(value.size()) + " bytes for key " + quote_name(key, 60) +
                " is over the limit of " + std::to_string(kMaxValueBytes) + " bytes");
  Writer out(key.size() + value.size() + 16);
  out.u8(kSet);
  out.str(key);
  out.str(value.data(), value.size());
  std::lock_guard<std::mutex> lock(mutex_);
  auto body = request(out.finish(), timeout() + kReplyGrace, "set " + quote_name(key, 60), {});
  if (body.size() != 1 || body[0] != kOk) fail_connection(where() + ": unexpected reply to set " + quote_name(key, 60));
}

Bytes TcpStore::get(const std::string& key) {
  check_key(key);
  Writer out(key.size() + 16);
  out.u8(kGet);
  out.u64(static_cast<uint64_t>(timeout_ms_.load()));
  out.str(key);
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string what = "get " + quote_name(key, 60);
  auto body = request(out.finish(), timeout() + kReplyGrace, what, {key});
  try {
    Reader in(body.data(), body.size());
    uint8_t status = in.u8();
    if (status == kTimedOut)
      throw Error(where() + ": timed out after " + seconds_text(timeout_ms_.load()) + " waiting for " +
                  keys_text({key}));
    if (status != kOk) throw Malformed{};
    Bytes value = in.bytes(kMaxValueBytes);
    in.end();
    return value;
  } catch (const Malformed&) {
    fail_connection(where() + ": unexpected reply to " + what);
  }
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  check_key(key);
  Writer out(key.size() + 16);
  out.u8(kAdd);
  out.str(key);
  out.i64(delta);
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string what = "add " + quote_name(key, 60);
  auto body = request(out.finish(), timeout() + kReplyGrace, what, {});
  try {
    Reader in(body.data(), body.size());
    uint8_t status = in.u8();
    if (status == kFailed) throw Error(where() + ": " + what + ": " + escape_name(in.str(1024), 200));
    if (status != kOk) throw Malformed{};
    int64_t now = in.i64();
    in.end();
    return now;
  } catch (const Malformed&) {
    fail_connection(where() + ": unexpected reply to " + what);
  }
}

void TcpStore::wait(const std::vector<std::string>& keys) {
  check_keys(keys);
  size_t bytes = 16;
  for (const auto& k : keys) bytes += k.size() + 4;
  Writer out(bytes);
  out.u8(kWait);
  out.u64(static_cast<uint64_t>(timeout_ms_.load()));
  out.u32(static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) out.str(k);
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string what = "wait for " + keys_text(keys);
  auto body = request(out.finish(), timeout() + kReplyGrace, what, keys);
  try {
    Reader in(body.data(), body.size());
    uint8_t status = in.u8();
    if (status == kOk) return in.end();
    if (status != kTimedOut) throw Malformed{};
    uint32_t count = in.u32();
    if (count > keys.size()) throw Malformed{};
    std::vector<std::string> missing;
    for (uint32_t i = 0; i < count; ++i) {
      uint32_t index = in.u32();
      if (index >= keys.size()) throw Malformed{};
      missing.push_back(keys[index]);
    }
    in.end();
    if (missing.empty()) missing = keys;
    throw Error(where() + ": timed out after " + seconds_text(timeout_ms_.load()) + " waiting for " +
                keys_text(missing));
  } catch (const Malformed&) {
    fail_connection(where() + ": unexpected reply to " + what);
  }
}

bool TcpStore::check(const std::vector<std::string>& keys) {
  check_keys(keys);
  size_t bytes = 16;
  for (const auto& k : keys) bytes += k.size() + 4;
  Writer out(bytes);
  out.u8(kCheck);
  out.u32(static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) out.str(k);
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string what = "check of " + keys_text(keys);
  auto body = request(out.finish(), timeout() + kReplyGrace, what, {});
  if (body.size() != 2 || body[0] != kOk || body[1] > 1) fail_connection(where() + ": unexpected reply to " + what);
  return body[1] == 1;
}

}  // namespace oxtrain::runtime::dist
