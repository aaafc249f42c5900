#include "cli/distributed.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <thread>

#include "base/error.h"
#include "base/text.h"
#include "runtime/dist/tcp_store.h"
#ifdef OXTRAIN_HAVE_CUDA
#include "runtime/dist/nccl_communicator.h"
#endif

namespace oxtrain::cli {

namespace {

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string current;
  for (char c : all) {
    if (c == '\0') {
      args.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) args.push_back(current);
  return args;
}

// "was killed by SIGKILL" / "exited with code 2": how a worker ended, for the launcher's line.
std::string how_it_ended(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (!WIFSIGNALED(status)) return "ended (status " + std::to_string(status) + ")";
  int sig = WTERMSIG(status);
  static const std::pair<int, const char*> names[] = {
      {SIGKILL, "SIGKILL"}, {SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"}, {SIGSEGV, "SIGSEGV"}, {SIGABRT, "SIGABRT"},
      {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGILL, "SIGILL"}, {SIGHUP, "SIGHUP"},   {SIGPIPE, "SIGPIPE"}};
  for (const auto& [number, name] : names)
    if (number == sig)
      return std::string("was killed by ") + name + (sig == SIGKILL ? " (by a user, or the out-of-memory killer)" : "");
  return "was killed by signal " + std::to_string(sig);
}

// The address of this host's interface that routes to `host` (a UDP socket "connected" there
// sends nothing); "" when it cannot be found. Ranks reach each other the way they reach the
// store, so Gloo binds that address rather than whatever the host name resolves to (in a
// container or a network namespace, often an address no peer can reach).
std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || !found) return "";
  std::string address;
  for (addrinfo* ai = found; ai && address.empty(); ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    char text[INET6_ADDRSTRLEN] = {};
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      const void* bytes = local.ss_family == AF_INET
                              ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
                              : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
      if (::inet_ntop(local.ss_family, bytes, text, sizeof text)) address = text;
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return address;
}

std::string seconds_text(std::chrono::milliseconds ms) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g s", static_cast<double>(ms.count()) / 1000.0);
  return buffer;
}

// Before any collective, the ranks agree on the world size through the store: a rank given
// another --world-size (or another --nproc-per-node on its node) would otherwise wait in Gloo's
// rendezvous for ranks that never come, or pair with the wrong ones. Rank 0 publishes its world
// size under "join/0" and waits for "join/1".."join/<W-1>"; every other rank reads rank 0's
// first and publishes its own only when they agree (so rank 0 cannot stop, taking the store
// with it, before the rank has read it). A rank that differs says so under "join/failed",
// which rank 0 watches while it waits, so it stops at once rather than after the timeout.
void agree_on_world_size(runtime::dist::Store& store, const runtime::dist::DistConfig& config,
                         std::chrono::milliseconds timeout, const std::string& who) {
  using runtime::dist::Bytes;
  const std::string mine = std::to_string(config.world_size);
  const std::string fix = "; give every rank the same --world-size (and, with --multiprocessing-distributed, every "
                          "node the same --nproc-per-node)";
  auto text = [&](const std::string& key) {
    Bytes b = store.get(key);
    return std::string(b.begin(), b.end());
  };
  std::vector<std::string> keys;
  if (config.rank == 0) {
    store.set("join/0", Bytes(mine.begin(), mine.end()));
    for (int r = 1; r < config.world_size; ++r) keys.push_back("join/" + std::to_string(r));
  } else {
    keys.push_back("join/0");
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto interval = std::chrono::milliseconds(1);
  while (!store.check(keys)) {
    if (config.rank == 0 && store.check({"join/failed"})) throw Error(who + ": " + text("join/failed") + fix);
    if (std::chrono::steady_clock::now() >= deadline) {
      std::vector<std::string> missing;
      for (const auto& key : keys)
        if (!store.check({key})) missing.push_back(key.substr(5));
      throw Error(who + ": timed out after " + seconds_text(timeout) + " waiting for " +
                  (missing.size() == 1 ? "rank " : "ranks ") + join_limited(missing, 100) + " to join at " +
                  escape_name(config.store_host) + ":" + std::to_string(config.store_port) +
                  "; check that every rank of the job started with the same --dist-url (--dist-timeout sets the wait)");
    }
    std::this_thread::sleep_for(interval);
    interval = std::min(interval * 2, std::chrono::milliseconds(50));
  }
  if (config.rank == 0) {
    for (const auto& key : keys) {
      std::string theirs = text(key);
      if (theirs != mine)
        throw Error(who + ": rank " + key.substr(5) + " was started with world size " + escape_name(theirs, 20) +
                    ", rank 0 with " + mine + fix);
    }
    return;
  }
  std::string root = text("join/0");
  if (root != mine) {
    const std::string told = "rank " + std::to_string(config.rank) + " was started with world size " + mine +
                             ", rank 0 with " + escape_name(root, 20);
    try {
      store.set("join/failed", Bytes(told.begin(), told.end()));
    } catch (const Error&) {
      // Rank 0 is gone already; this rank's own line says what differs.
    }
    throw Error(who + " differs from rank 0 in world size " + mine + " (rank 0: " + escape_name(root, 20) + ")" + fix);
  }
  store.set("join/" + std::to_string(config.rank), Bytes(mine.begin(), mine.end()));
}

}  // namespace

std::optional<std::pair<int, int>> spawned_worker() {
  const char* local = std::getenv(kLocalWorkerVariable);
  const char* count = std::getenv(kWorkersPerNodeVariable);
  if (!local || !count) return std::nullopt;
  auto l = parse_int64(local), c = parse_int64(count);
  if (!l || !c || *c < 1 || *l < 0 || *l >= *c)
    throw Error(std::string(kLocalWorkerVariable) + "=" + escape_name(local) + " and " + kWorkersPerNodeVariable +
                "=" + escape_name(count) + " do not describe a worker");
  return std::make_pair(static_cast<int>(*l), static_cast<int>(*c));
}

std::optional<int> run_local_workers(int workers, int grace_seconds) {
  if (spawned_worker()) return std::nullopt;
  if (workers < 1) throw Error("--multiprocessing-distributed needs at least one worker per node");
  std::vector<std::string> args = own_command_line();
  if (args.empty()) throw Error("cannot read this process's command line to start its workers");
  std::vector<pid_t> pids;
  for (int i = 0; i < workers; ++i) {
    pid_t pid = ::fork();
    if (pid < 0) throw Error("cannot start worker " + std::to_string(i) + ": " + std::strerror(errno));
    if (pid == 0) {
      ::setenv(kLocalWorkerVariable, std::to_string(i).c_str(), 1);
      ::setenv(kWorkersPerNodeVariable, std::to_string(workers).c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "oxtrain: error: cannot start worker %d: %s\n", i, std::strerror(errno));
      ::_exit(2);
    }
    pids.push_back(pid);
  }
  // Wait for all; the first failure stops the rest.
  int result = 0;
  size_t running = pids.size();
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int index = -1;
      for (size_t i = 0; i < pids.size(); ++i)
        if (pids[i] == pid) pids[i] = -1, index = static_cast<int>(i);
      if (index < 0) continue;  // not one of the workers
      --running;
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (code != 0 && result == 0) {
        result = code;
        // A worker killed by a signal printed nothing itself: this line is all the user sees of it.
        std::string others = !stopping && running > 0
                                 ? "; stopping the " + std::to_string(running) + (running == 1 ? " other" : " others")
                                 : "";
        std::fprintf(stderr, "oxtrain: worker %d of %d %s%s\n", index, workers, how_it_ended(status).c_str(),
                     others.c_str());
        if (!stopping && running > 0) {
          for (pid_t p : pids)
            if (p > 0) ::kill(p, SIGTERM);
          stopping = true;
          stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace_seconds);
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

Job join_job(const runtime::dist::DistConfig& config, const JoinOptions& options) {
  using namespace runtime::dist;
  Job job;
  job.config = config;
  std::string who = "rank " + std::to_string(config.rank) + " of " + std::to_string(config.world_size);
  try {
    if (config.host_store)
      job.store = TcpStore::host(config.store_host, config.store_port, options.timeout);
    else
      job.store = TcpStore::connect(config.store_host, config.store_port, options.timeout);
  } catch (const Error& e) {
    throw Error(who + ": " + e.what());
  }
  if (options.backend != "gloo" && options.backend != "nccl")
    throw Error(who + ": --dist-backend is gloo (CPU) or nccl (GPU), got '" + escape_name(options.backend) + "'");
#ifndef OXTRAIN_HAVE_CUDA
  if (options.backend == "nccl")
    throw Error(who + ": --dist-backend nccl needs the CUDA runtime, which this build lacks; use --dist-backend gloo "
                      "--device cpu");
#endif
  CommOptions co;
  co.rank = config.rank;
  co.world_size = config.world_size;
  co.timeout = options.timeout;
  // Loopback jobs stay on loopback; elsewhere Gloo binds the address of the interface that
  // reaches the store (the host name's address when there is no route to it).
  const std::string& h = config.store_host;
  if (h == "localhost" || h.rfind("127.", 0) == 0 || h == "::1")
    co.interface_address = "127.0.0.1";
  else
    co.interface_address = local_address_towards(h, config.store_port);
  if (const char* a = std::getenv("OXTRAIN_GLOO_ADDRESS")) co.interface_address = a;
  try {
    agree_on_world_size(*job.store, config, options.timeout, who);
  } catch (const Error& e) {
    std::string what = e.what();
    throw Error(what.rfind(who, 0) == 0 ? what : who + ": " + what);  // a store's Error lacks the rank
  }
#ifdef OXTRAIN_HAVE_CUDA
  if (options.backend == "nccl") {
    // One GPU per process: the local rank's.
    job.comm = make_nccl_communicator(*job.store, co, config.local_rank);
    return job;
  }
#endif
  job.comm = make_gloo_communicator(*job.store, co);
  return job;
}

namespace {

std::map<std::string, std::string> parse_facts(const std::string& text) {
  std::map<std::string, std::string> facts;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start), eq = text.find('=', start);
    if (end == std::string::npos) end = text.size();
    if (eq != std::string::npos && eq < end) facts[text.substr(start, eq - start)] = text.substr(eq + 1, end - eq - 1);
    start = end + 1;
  }
  return facts;
}

// "batch per rank 2 (rank 0: 4)" for each fact of `rank_facts` that rank 0's lack or differ.
std::vector<std::string> differences_from_root(const JobFacts& rank_facts, const std::map<std::string, std::string>& root) {
  std::vector<std::string> differences;
  for (const auto& [name, value] : rank_facts) {
    auto it = root.find(name);
    std::string other = it == root.end() ? "nothing" : it->second;
    if (other != value) differences.push_back(name + " " + escape_name(value, 40) + " (rank 0: " + escape_name(other, 40) + ")");
  }
  return differences;
}

}  // namespace

void check_same_job(Job& job, const JobFacts& facts) {
  const std::string fix = "; every rank must run the same model, batch and world size";
  std::string mine;
  for (const auto& [name, value] : facts) mine += name + "=" + value + "\n";
  job.store->set("job/" + std::to_string(job.config.rank), runtime::dist::Bytes(mine.begin(), mine.end()));
  auto facts_of = [&](int rank) {
    runtime::dist::Bytes b = job.store->get("job/" + std::to_string(rank));
    return std::string(b.begin(), b.end());
  };
  // Rank 0's facts are read before the barrier: rank 0 may stop (and take the store with it)
  // as soon as the barrier is passed. After the barrier every rank's facts are in the store,
  // so rank 0's reads do not wait; a rank that failed before publishing makes the barrier fail
  // at once (its connections close).
  std::string root_text = job.is_root() ? mine : facts_of(0);
  job.comm->barrier();
  if (!job.is_root()) {
    const std::string& theirs = root_text;
    if (theirs != mine)
      throw Error("rank " + std::to_string(job.config.rank) + " differs from rank 0 in " +
                  join_limited(differences_from_root(facts, parse_facts(theirs)), 160) + fix);
    return;
  }
  // Rank 0 names the first rank that differs, so both ends of a mismatch say what it is.
  std::map<std::string, std::string> root = parse_facts(mine);
  for (int r = 1; r < job.config.world_size; ++r) {
    std::string theirs = facts_of(r);
    if (theirs == mine) continue;
    JobFacts other;
    for (const auto& [name, value] : parse_facts(theirs)) other.emplace_back(name, value);
    std::vector<std::string> differences = differences_from_root(other, root);
    if (differences.empty()) differences.push_back("the facts it reports");
    throw Error("rank " + std::to_string(r) + " differs from rank 0 in " + join_limited(differences, 160) + fix);
  }
}

void broadcast_persistent(Job& job, runtime::Session& session) {
  // In place where the values live: host memory for Gloo, GPU memory for NCCL.
  session.device().synchronize();
  for (const graph::Value* v : session.graph().initializers()) {
    if (v->role != graph::Role::Parameter && v->role != graph::Role::State) continue;
    if (v->bytes() > 0)
      job.comm->broadcast(const_cast<void*>(session.device_address(v->name)), static_cast<size_t>(v->bytes()), 0);
  }
}

void allreduce_host(Job& job, std::vector<double>& values) {
  // A few numbers: through the store, whatever the backend (NCCL takes only GPU buffers).
  // Each rank publishes its values for this round, then adds everyone's in rank order, so
  // every rank gets the same sums.
  static int64_t round = 0;
  std::string prefix = "sums/" + std::to_string(round++) + "/";
  std::string mine;
  for (double v : values) {
    char text[40];
    std::snprintf(text, sizeof text, "%.17g\n", v);
    mine += text;
  }
  job.store->set(prefix + std::to_string(job.config.rank), runtime::dist::Bytes(mine.begin(), mine.end()));
  std::vector<double> total(values.size(), 0.0);
  for (int r = 0; r < job.config.world_size; ++r) {
    runtime::dist::Bytes b = job.store->get(prefix + std::to_string(r));
    std::string text(b.begin(), b.end());
    size_t start = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) throw Error("rank " + std::to_string(r) + " sent too few sums");
      total[i] += parse_double(text.substr(start, end - start)).value_or(NAN);
      start = end + 1;
    }
  }
  values = total;
}

}  // namespace oxtrain::cli
