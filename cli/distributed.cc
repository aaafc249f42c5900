#include "cli/distributed.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <thread>

#include "base/error.h"
#include "base/text.h"
#include "runtime/dist/tcp_store.h"

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
      for (auto& p : pids)
        if (p == pid) p = -1;
      --running;
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (code != 0 && result == 0) {
        result = code;
        if (!stopping && running > 0) {
          std::fprintf(stderr, "oxtrain: a worker failed (exit %d); stopping the %zu others\n", code, running);
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
  if (options.backend != "gloo")
    throw Error(who + ": --dist-backend " + escape_name(options.backend) +
                ": only gloo (CPU training) is built so far; use --dist-backend gloo --device cpu");
  CommOptions co;
  co.rank = config.rank;
  co.world_size = config.world_size;
  co.timeout = options.timeout;
  // Loopback jobs stay on loopback; elsewhere Gloo binds the address of this host's name.
  const std::string& h = config.store_host;
  if (h == "localhost" || h.rfind("127.", 0) == 0 || h == "::1") co.interface_address = "127.0.0.1";
  if (const char* a = std::getenv("OXTRAIN_GLOO_ADDRESS")) co.interface_address = a;
  job.comm = make_gloo_communicator(*job.store, co);
  return job;
}

void check_same_job(Job& job, const JobFacts& facts) {
  std::string mine;
  for (const auto& [name, value] : facts) mine += name + "=" + value + "\n";
  job.store->set("job/" + std::to_string(job.config.rank), runtime::dist::Bytes(mine.begin(), mine.end()));
  runtime::dist::Bytes root = job.store->get("job/0");
  std::string theirs(root.begin(), root.end());
  if (theirs != mine) {
    std::map<std::string, std::string> root_facts;
    size_t start = 0;
    while (start < theirs.size()) {
      size_t end = theirs.find('\n', start), eq = theirs.find('=', start);
      if (end == std::string::npos) end = theirs.size();
      if (eq != std::string::npos && eq < end) root_facts[theirs.substr(start, eq - start)] = theirs.substr(eq + 1, end - eq - 1);
      start = end + 1;
    }
    std::vector<std::string> differences;
    for (const auto& [name, value] : facts) {
      auto it = root_facts.find(name);
      std::string other = it == root_facts.end() ? "nothing" : it->second;
      if (other != value) differences.push_back(name + " " + escape_name(value, 40) + " (rank 0: " + escape_name(other, 40) + ")");
    }
    throw Error("rank " + std::to_string(job.config.rank) + " differs from rank 0 in " + join_limited(differences, 160) +
                "; every rank must run the same model, batch and world size");
  }
  job.comm->barrier();
}

void broadcast_persistent(Job& job, runtime::Session& session) {
  for (const graph::Value* v : session.graph().initializers()) {
    if (v->role != graph::Role::Parameter && v->role != graph::Role::State) continue;
    graph::Tensor t = session.fetch(v->name);
    if (!t.bytes.empty()) job.comm->broadcast(t.bytes.data(), t.bytes.size(), 0);
    session.assign(v->name, t);
  }
}

void allreduce_host(Job& job, std::vector<double>& values) {
  // Gloo sums float32; validation counts and sums stay exact in float32 only to 2^24, so
  // each double travels as a high and a low float part.
  std::vector<float> parts;
  for (double v : values) {
    float hi = static_cast<float>(v);
    parts.push_back(hi);
    parts.push_back(static_cast<float>(v - static_cast<double>(hi)));
  }
  job.comm->allreduce_sum(parts.data(), parts.size());
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = static_cast<double>(parts[2 * i]) + static_cast<double>(parts[2 * i + 1]);
}

}  // namespace oxtrain::cli
