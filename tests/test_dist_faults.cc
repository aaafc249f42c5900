// Faults of data-parallel training on the CPU (Gloo), through the real oxtrain program: a
// worker killed mid-run (ranks started by hand, and by --multiprocessing-distributed), the
// store's port taken by another process, ranks that disagree on the world size or the model,
// the checkpoint written before a fault still loading afterwards, and two "nodes" in network
// namespaces joined by a veth pair. Every fault must end every rank within seconds with one
// line on stderr; no run may hang (each has a wall limit and is killed beyond it).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "tests/dist_helpers.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
namespace fs = std::filesystem;

namespace {

using test::free_port;
using test::JobFiles;
using test::make_job_files;

using Clock = std::chrono::steady_clock;


std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

// A command run in the background through /bin/sh -c "exec COMMAND" (so `pid` is the command
// itself), in its own process group, stdout and stderr going to files. wait() bounds its wall
// time: beyond it the whole group is killed and the exit code is 124, as timeout(1)'s. The
// destructor kills whatever is still running.
class Background {
 public:
  Background(const std::string& command, const std::string& dir, const std::string& name)
      : out_path_(dir + "/" + name + ".out"), err_path_(dir + "/" + name + ".err") {
    std::string line = "exec " + command + " >" + out_path_ + " 2>" + err_path_;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);
      ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (pid_ > 0) ::setpgid(pid_, pid_);  // either side may win the race; both ask the same
  }
  ~Background() {
    if (!done_ && pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  pid_t pid() const { return pid_; }
  std::string out() const { return read_file(out_path_); }
  std::string err() const { return read_file(err_path_); }

  // True once `text` appears `times` times on stdout; false when the process ended or
  // `seconds` passed first.
  bool wait_for_output(const std::string& text, size_t times, int seconds) {
    auto deadline = Clock::now() + std::chrono::seconds(seconds);
    while (Clock::now() < deadline) {
      if (count_of(out(), text) >= times) return true;
      if (finished()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  test::RunResult wait(int seconds) {
    auto deadline = Clock::now() + std::chrono::seconds(seconds);
    while (!finished() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!finished()) {
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      done_ = true;
      code_ = 124;
    }
    return {code_, out(), err()};
  }

 private:
  bool finished() {
    if (done_) return true;
    if (pid_ < 0) {  // fork failed
      done_ = true;
      code_ = 127;
      return true;
    }
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
    done_ = true;
    code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return true;
  }

  std::string out_path_, err_path_;
  pid_t pid_ = -1;
  bool done_ = false;
  int code_ = -1;
};

// The children of `pid` (every thread's list: a child belongs to the thread that forked it).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& task : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(task.path() / "children");
    for (long child; in >> child;) out.push_back(static_cast<pid_t>(child));
  }
  return out;
}

// A process's environment variable, read from /proc ("" when absent).
std::string environment_of(pid_t pid, const std::string& name) {
  std::string all = read_file("/proc/" + std::to_string(pid) + "/environ");
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    if (all.compare(start, name.size() + 1, name + "=") == 0) return all.substr(start + name.size() + 1, end - start - name.size() - 1);
    start = end + 1;
  }
  return "";
}

bool process_exists(pid_t pid) { return ::kill(pid, 0) == 0 || errno != ESRCH; }


std::string make_dir(const std::string& path) {
  ::mkdir(path.c_str(), 0755);
  return path;
}

// One rank's training on the fixed batch (-b 4 per process), printing every step. --epochs is
// high because each step of --input-tensors is its own epoch.
std::string train_flags(const JobFiles& s, const std::string& out, int steps) {
  return "train --model " + s.model + " --input-tensors " + s.tensors + " -b 4 --epochs 100000 --steps " +
         std::to_string(steps) + " -p 1 --lr 0.05 --device cpu --threads 1 -j 0 --dist-backend gloo " +
         "--checkpoint-dir " + out;
}

std::string url(int port) { return " --dist-url tcp://127.0.0.1:" + std::to_string(port); }

// The checkpoint `path` still loads and trains: one process resumes it for a step.
void expect_checkpoint_resumes(const JobFiles& s, const std::string& path) {
  std::string out = make_dir(s.dir + "/resumed");
  auto r = test::run_oxtrain_limited(train_flags(s, out, 1) + " --resume " + path, 60);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("=> loaded checkpoint"), std::string::npos) << r.out;
}

// Seconds between two points, for the "ends within seconds" checks.
double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

// Rank 1 killed mid-run: rank 0 stops at its next allreduce (Gloo resets the connections) with
// one line naming the collective and itself, in seconds rather than after --dist-timeout (here
// 2 minutes). The checkpoint rank 0 wrote before the fault is intact: one process resumes it.
TEST(DataParallelFaults, AKilledRankStopsTheOtherAndTheCheckpointStillLoads) {
  JobFiles s = make_job_files();
  std::string r0 = make_dir(s.dir + "/r0"), r1 = make_dir(s.dir + "/r1");
  // Two steps that end normally leave rank 0's checkpoint (step 2).
  int port = free_port();
  std::string job = url(port) + " --world-size 2 --dist-timeout 2";
  auto second = std::async(std::launch::async, [&] {
    return test::run_oxtrain_limited(train_flags(s, r1, 2) + job + " --rank 1", 60);
  });
  auto first = test::run_oxtrain_limited(train_flags(s, r0, 2) + job + " --rank 0", 60);
  auto other = second.get();
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_EQ(other.exit_code, 0) << other.err;
  const std::string checkpoint = r0 + "/checkpoint.oxt";
  const std::string written = read_file(checkpoint);
  ASSERT_FALSE(written.empty());

  // The job goes on from it for up to 1000 steps; rank 1 is killed after rank 0's third line.
  job = url(free_port()) + " --world-size 2 --dist-timeout 2 --resume " + checkpoint;
  Background rank0(std::string(OXTRAIN_BINARY) + " " + train_flags(s, r0, 1000) + job + " --rank 0", s.dir, "rank0");
  Background rank1(std::string(OXTRAIN_BINARY) + " " + train_flags(s, r1, 1000) + job + " --rank 1", s.dir, "rank1");
  ASSERT_TRUE(rank0.wait_for_output("Epoch:", 3, 60)) << rank0.out() << rank0.err() << rank1.err();
  ASSERT_EQ(::kill(rank1.pid(), SIGKILL), 0);
  auto killed_at = Clock::now();
  auto r = rank0.wait(60);
  double took = seconds_between(killed_at, Clock::now());
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("gloo allreduce (rank 0 of 2)"), std::string::npos) << r.err;
  EXPECT_LT(took, 20) << "rank 0 waited " << took << " s for a dead peer";
  EXPECT_EQ(rank1.wait(10).exit_code, 128 + SIGKILL);

  // The fault wrote nothing over the checkpoint, which still loads.
  EXPECT_EQ(read_file(checkpoint), written) << "the checkpoint changed during the failed run";
  EXPECT_FALSE(fs::exists(checkpoint + ".tmp"));
  expect_checkpoint_resumes(s, checkpoint);
}

// --multiprocessing-distributed: one of the node's workers killed; the launcher stops the other
// and exits non-zero, saying which worker failed and how.
TEST(DataParallelFaults, AKilledWorkerEndsTheLauncherAndItsOtherWorker) {
  JobFiles s = make_job_files();
  std::string out = make_dir(s.dir + "/mp");
  Background launcher(std::string(OXTRAIN_BINARY) + " train --model " + s.model + " --input-tensors " + s.tensors +
                          " -b 8 --epochs 100000 --steps 1000 -p 1 --device cpu --threads 1 -j 0 --dist-backend gloo " +
                          "--multiprocessing-distributed --nproc-per-node 2 --world-size 1 --rank 0 --dist-timeout 2" +
                          url(free_port()) + " --checkpoint-dir " + out,
                      s.dir, "launcher");
  ASSERT_TRUE(launcher.wait_for_output("Epoch:", 3, 60)) << launcher.out() << launcher.err();
  std::vector<pid_t> workers = children_of(launcher.pid());
  ASSERT_EQ(workers.size(), 2u);
  pid_t victim = -1;
  for (pid_t w : workers)
    if (environment_of(w, "OXTRAIN_LOCAL_WORKER") == "1") victim = w;
  ASSERT_NE(victim, -1) << "no worker with OXTRAIN_LOCAL_WORKER=1";
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  auto killed_at = Clock::now();
  auto r = launcher.wait(60);
  double took = seconds_between(killed_at, Clock::now());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 124) << "the launcher did not end";
  EXPECT_LT(took, 20) << "the launcher took " << took << " s to stop";
  for (pid_t w : workers) EXPECT_FALSE(process_exists(w)) << "worker " << w << " still runs";
  EXPECT_NE(r.err.find("worker 1 of 2 was killed by SIGKILL"), std::string::npos) << r.err;
  // Every stderr line is an oxtrain line: the launcher's, or the other worker's own error.
  std::string err = r.err;
  for (size_t start = 0; start < err.size();) {
    size_t end = err.find('\n', start);
    if (end == std::string::npos) end = err.size();
    EXPECT_EQ(err.compare(start, 8, "oxtrain:"), 0) << "stray line in: " << err;
    start = end + 1;
  }
}

// The store's port is taken by another process: rank 0 says so in one line and what to do.
TEST(DataParallelFaults, TheStoresPortInUseIsOneLineSayingWhatToDo) {
  JobFiles s = make_job_files();
  std::string out = make_dir(s.dir + "/r0");
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  auto r = test::run_oxtrain_limited(train_flags(s, out, 3) + url(port) + " --world-size 2 --rank 0 --dist-timeout 0.5", 60);
  ::close(fd);
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("in use"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--dist-url"), std::string::npos) << r.err;
}

// Rank 1 believes in a world of 3, rank 0 in a world of 2: both stop before any collective,
// in far less than --dist-timeout (1 minute), each with one line naming the world sizes.
TEST(DataParallelFaults, MismatchedWorldSizesStopEveryRankNamingThem) {
  JobFiles s = make_job_files();
  std::string r0 = make_dir(s.dir + "/r0"), r1 = make_dir(s.dir + "/r1");
  int port = free_port();
  auto start = Clock::now();
  auto second = std::async(std::launch::async, [&] {
    return test::run_oxtrain_limited(train_flags(s, r1, 3) + url(port) + " --world-size 3 --rank 1 --dist-timeout 1", 90);
  });
  auto first = test::run_oxtrain_limited(train_flags(s, r0, 3) + url(port) + " --world-size 2 --rank 0 --dist-timeout 1", 90);
  auto other = second.get();
  double took = seconds_between(start, Clock::now());
  EXPECT_EQ(test::clean_error_problem(other), "");
  EXPECT_EQ(test::clean_error_problem(first), "");
  EXPECT_NE(other.err.find("world size 3 (rank 0: 2)"), std::string::npos) << other.err;
  EXPECT_NE(first.err.find("rank 1"), std::string::npos) << first.err;
  EXPECT_NE(first.err.find("world size 3"), std::string::npos) << first.err;
  EXPECT_LT(took, 45) << "the ranks waited " << took << " s";
}

// Two ranks building zoo models of 10 and 12 classes (same architecture, other parameter
// counts): both stop; the one that differs names the parameter counts, rank 0 names rank 1.
TEST(DataParallelFaults, MismatchedModelsStopEveryRankNamingWhatDiffers) {
  JobFiles s = make_job_files();
  std::string r0 = make_dir(s.dir + "/r0"), r1 = make_dir(s.dir + "/r1");
  std::string common = " --input-tensors " + s.tensors + " -b 4 --steps 3 --device cpu --threads 1 -j 0 " +
                       "--dist-backend gloo --image-size 32 --world-size 2 --dist-timeout 1" + url(free_port());
  auto second = std::async(std::launch::async, [&] {
    return test::run_oxtrain_limited("train -a resnet18 --num-classes 12 --checkpoint-dir " + r1 + common + " --rank 1", 90);
  });
  auto first = test::run_oxtrain_limited("train -a resnet18 --num-classes 10 --checkpoint-dir " + r0 + common + " --rank 0", 90);
  auto other = second.get();
  EXPECT_EQ(test::clean_error_problem(other), "");
  EXPECT_EQ(test::clean_error_problem(first), "");
  // resnet18's fc is 512 x classes + classes: 2 classes more is 1026 parameters more.
  EXPECT_NE(other.err.find("rank 1 differs from rank 0 in parameters 11182668 (rank 0: 11181642)"), std::string::npos)
      << other.err;
  EXPECT_NE(first.err.find("rank 1"), std::string::npos) << first.err;
  EXPECT_NE(first.err.find("parameters"), std::string::npos) << first.err;
}

// Two "nodes": network namespaces joined by a veth pair (10.77.0.1/24, 10.77.0.2/24), each
// running --multiprocessing-distributed with 2 workers (4 ranks). Every rank trains on the
// same batch, so the average of the 4 equal gradients is that gradient exactly (x+x, 2x+x and
// 3x+x round back to 4x in float32; the division by 4 is exact), and rank 0's model is bit
// for bit the one a single process trains. Needs root (ip netns); skips otherwise.
TEST(DataParallelFaults, TwoNodesInNetworkNamespacesTrainLikeOneProcess) {
  JobFiles s = make_job_files();
  const std::string tag = std::to_string(::getpid() % 100000);
  const std::string ns0 = "oxt" + tag + "a", ns1 = "oxt" + tag + "b";
  const std::string veth0 = "oxv" + tag + "a", veth1 = "oxv" + tag + "b";
  auto sh = [](const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()); };
  if (sh("ip netns add " + ns0) != 0) GTEST_SKIP() << "cannot make a network namespace (needs root and ip netns)";
  struct Cleanup {
    std::function<int(const std::string&)> sh;
    std::string ns0, ns1;
    ~Cleanup() {
      sh("ip netns del " + ns0);  // deleting a namespace deletes the veth end inside it, and its peer
      sh("ip netns del " + ns1);
    }
  } cleanup{sh, ns0, ns1};
  ASSERT_EQ(sh("ip netns add " + ns1), 0);
  ASSERT_EQ(sh("ip link add " + veth0 + " netns " + ns0 + " type veth peer name " + veth1 + " netns " + ns1), 0);
  for (const auto& [ns, dev, addr] : {std::tuple{ns0, veth0, "10.77.0.1/24"}, std::tuple{ns1, veth1, "10.77.0.2/24"}}) {
    ASSERT_EQ(sh("ip -n " + ns + " addr add " + addr + " dev " + dev), 0);
    ASSERT_EQ(sh("ip -n " + ns + " link set " + dev + " up"), 0);
    ASSERT_EQ(sh("ip -n " + ns + " link set lo up"), 0);
  }

  std::string single = make_dir(s.dir + "/single"), n0 = make_dir(s.dir + "/n0"), n1 = make_dir(s.dir + "/n1");
  auto flags = [&](const std::string& out) {
    return "train --model " + s.model + " --input-tensors " + s.tensors + " --steps 2 -p 1 --lr 0.05 --device cpu " +
           "--threads 1 -j 0 --checkpoint-dir " + out + " --save-model " + out + "/m.onnx";
  };
  auto one = test::run_oxtrain_limited(flags(single) + " -b 4", 60);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const std::string job = " -b 8 --dist-backend gloo --multiprocessing-distributed --nproc-per-node 2 --world-size 2 "
                          "--dist-timeout 1 --dist-url tcp://10.77.0.1:29533";
  // Gloo must bind each namespace's own address (the host name resolves to 127.0.0.1 here,
  // which no peer can reach): node 0 names it with OXTRAIN_GLOO_ADDRESS, node 1 relies on the
  // default, the address of the interface that routes to the store.
  auto node = [&](const std::string& ns, const std::string& environment, const std::string& out, int rank) {
    return "ip netns exec " + ns + " env " + environment + " " + OXTRAIN_BINARY + " " + flags(out) + job +
           " --rank " + std::to_string(rank);
  };
  Background node0(node(ns0, "OXTRAIN_GLOO_ADDRESS=10.77.0.1", n0, 0), s.dir, "node0");
  Background node1(node(ns1, "-u OXTRAIN_GLOO_ADDRESS", n1, 1), s.dir, "node1");
  auto r1 = node1.wait(90), r0 = node0.wait(90);
  ASSERT_EQ(r0.exit_code, 0) << r0.err;
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  EXPECT_NE(r0.out.find("2 nodes x 2 CPUs, batch 16, 2 steps"), std::string::npos) << r0.out;
  EXPECT_FALSE(fs::exists(n1 + "/m.onnx")) << "node 1 wrote the model";
  graph::Graph a = graph::import_onnx(single + "/m.onnx"), b = graph::import_onnx(n0 + "/m.onnx");
  EXPECT_EQ(test::graph_difference(a, b), "");
}
