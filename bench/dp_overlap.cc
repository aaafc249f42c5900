// How much of the gradient allreduce data parallelism hides behind backward, on the CPU with
// Gloo: ranks as processes of one machine on loopback, ResNet-18, one fixed batch each. Three
// configurations in one run, each the median step time over --iters:
//   alone     one rank, no communication (the compute the others add to)
//   serial    the ranks, each bucket's allreduce waited for at once (nothing hidden)
//   overlap   the ranks, allreduces running while backward goes on (oxtrain's default)
// Allreduce time = serial - alone; exposed = overlap - alone; the JSON line gives
// exposed / allreduce, the share of the communication left after backward (goal: under 0.2).
//
//   oxtrain_dp_overlap --ranks 2 --arch resnet18 --image-size 64 --batch-size 8 --iters 10
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/dist/communicator.h"
#include "runtime/dist/tcp_store.h"
#include "runtime/session.h"

using namespace oxtrain;

namespace {

struct Args {
  int ranks = 2;
  std::string arch = "resnet18";
  int64_t image_size = 64, batch = 8;
  int iters = 10, warmup = 3, threads = 1, port = 29631;
  double bucket_mb = 25;
};

// Median step seconds of one rank; world 1 means no communication at all.
double run_rank(const Args& a, int rank, int world, bool overlap, int port) {
  graph::ZooOptions zo;
  zo.image_size = a.image_size;
  zo.num_classes = 100;
  graph::Graph g = graph::make_zoo_model(a.arch, zo);
  graph::ImportOptions io;
  io.batch_size = a.batch;
  graph::prepare(g, io);
  autodiff::TrainingOptions to;
  to.allreduce = world > 1;
  to.bucket_bytes = static_cast<int64_t>(a.bucket_mb * 1e6);
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), to);
  std::unique_ptr<runtime::dist::TcpStore> store;
  std::unique_ptr<runtime::dist::Communicator> comm;
  runtime::SessionOptions so;
  so.threads = a.threads;
  so.overlap = overlap;
  if (world > 1) {
    auto timeout = std::chrono::seconds(120);
    store = rank == 0 ? runtime::dist::TcpStore::host("127.0.0.1", port, timeout)
                      : runtime::dist::TcpStore::connect("127.0.0.1", port, timeout);
    runtime::dist::CommOptions co;
    co.rank = rank;
    co.world_size = world;
    co.interface_address = "127.0.0.1";
    comm = runtime::dist::make_gloo_communicator(*store, co);
    so.communicator = comm.get();
  }
  for (const auto& [v, d] : tg.gradients) so.gradients.push_back(d);
  std::string input = tg.graph.inputs.at(0)->name;
  runtime::Session s(std::move(tg.graph), so);
  graph::Tensor images(graph::DType::f32, {a.batch, 3, a.image_size, a.image_size});
  graph::Rng rng(7 + static_cast<uint64_t>(rank));
  for (int64_t i = 0; i < images.numel(); ++i) images.data<float>()[i] = static_cast<float>(rng.normal());
  std::vector<int64_t> labels(static_cast<size_t>(a.batch));
  for (int64_t i = 0; i < a.batch; ++i) labels[static_cast<size_t>(i)] = i % 100;
  s.feed(input, images);
  s.feed(tg.labels, graph::Tensor::from_int64(labels, {a.batch}));
  s.feed(tg.learning_rate, graph::Tensor::from_float({0.01f}, {}));
  std::vector<double> times;
  for (int i = 0; i < a.warmup + a.iters; ++i) {
    s.feed(tg.step, graph::Tensor::from_int64({i}, {}));
    if (comm) comm->barrier();  // ranks start each step together
    auto start = std::chrono::steady_clock::now();
    s.run();
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i >= a.warmup) times.push_back(t);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Runs `ranks` ranks, each as a process (a job of one rank: alone, without communication);
// returns rank 0's median step seconds. Every measurement runs in forked children, never in
// this process: libgomp's thread pool does not survive fork(), so a child forked after this
// process had run a parallel region would wait forever for workers it does not have.
double run_job(const Args& a, int ranks, bool overlap, int port) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return -1;
  std::vector<pid_t> pids;
  for (int rank = 0; rank < ranks; ++rank) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(pipe_fds[0]);
      double t = -1;
      try {
        t = run_rank(a, rank, ranks, overlap, port);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
        ::_exit(2);
      }
      if (rank == 0 && ::write(pipe_fds[1], &t, sizeof t) != sizeof t) ::_exit(3);
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  ::close(pipe_fds[1]);
  double t = -1;
  if (::read(pipe_fds[0], &t, sizeof t) != sizeof t) t = -1;
  ::close(pipe_fds[0]);
  for (pid_t p : pids) ::waitpid(p, nullptr, 0);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"oxtrain: how much allreduce data parallelism hides behind backward (CPU, Gloo)"};
  Args a;
  app.add_option("--ranks", a.ranks, "processes")->capture_default_str();
  app.add_option("--arch", a.arch, "zoo model")->capture_default_str();
  app.add_option("--image-size", a.image_size, "input size")->capture_default_str();
  app.add_option("--batch-size", a.batch, "batch per rank")->capture_default_str();
  app.add_option("--iters", a.iters, "timed steps")->capture_default_str();
  app.add_option("--warmup", a.warmup, "untimed steps first")->capture_default_str();
  app.add_option("--threads", a.threads, "compute threads per rank")->capture_default_str();
  app.add_option("--bucket-mb", a.bucket_mb, "bucket size")->capture_default_str();
  app.add_option("--port", a.port, "first loopback port for the store")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  double alone = run_job(a, 1, true, 0);
  double serial = run_job(a, a.ranks, false, a.port);
  double overlap = run_job(a, a.ranks, true, a.port + 1);
  if (alone < 0 || serial < 0 || overlap < 0) {
    std::fprintf(stderr, "oxtrain_dp_overlap: a rank failed\n");
    return 1;
  }
  double allreduce = serial - alone, exposed = overlap - alone;
  std::printf(
      "{\"arch\": \"%s\", \"ranks\": %d, \"batch_per_rank\": %lld, \"alone_ms\": %.1f, \"serial_ms\": %.1f, "
      "\"overlap_ms\": %.1f, \"allreduce_ms\": %.1f, \"exposed_ms\": %.1f, \"exposed_share\": %.3f}\n",
      a.arch.c_str(), a.ranks, static_cast<long long>(a.batch), 1e3 * alone, 1e3 * serial, 1e3 * overlap,
      1e3 * allreduce, 1e3 * exposed, allreduce > 0 ? exposed / allreduce : 0.0);
  return 0;
}
