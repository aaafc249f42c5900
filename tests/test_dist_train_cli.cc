// oxtrain train as ranks of a data-parallel job on loopback (Gloo on the CPU), through the real
// program: ranks launched by hand with --dist-url, and by --multiprocessing-distributed.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/stat.h>

#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "tests/dist_helpers.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;

namespace {

using test::free_port;
using test::JobFiles;
using test::make_job_files;


// " --dist-url tcp://127.0.0.1:PORT" on a free loopback port.
std::string loopback_url() { return std::string(" --dist-url tcp://127.0.0.1:") += std::to_string(free_port()); }


std::string train_flags(const JobFiles& s, const std::string& out) {
  return "train --model " + s.model + " --input-tensors " + s.tensors + " -b 4 --steps 3 -p 1 --lr 0.05 " +
         "--device cpu --threads 1 --dist-backend gloo --checkpoint-dir " + out + " --save-model " + out + "/m.onnx";
}

}  // namespace

// Two ranks each given the same batch average two equal gradients, which is that gradient
// exactly: the job's model is bit for bit the model one process trains on that batch. Only
// rank 0 logs and writes files; the summary counts the job's images.
TEST(DataParallelCli, TwoRanksOnTheSameBatchTrainLikeOneProcess) {
  JobFiles s = make_job_files();
  std::string single = s.dir + "/single", r0 = s.dir + "/r0", r1 = s.dir + "/r1";
  for (const auto& d : {single, r0, r1}) ::mkdir(d.c_str(), 0755);
  auto one = test::run_oxtrain_limited(train_flags(s, single), 120);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  std::string url = loopback_url() + " --world-size 2";
  auto second = std::async(std::launch::async, [&] {
    return test::run_oxtrain_limited(train_flags(s, r1) + url + " --rank 1", 120);
  });
  auto first = test::run_oxtrain_limited(train_flags(s, r0) + url + " --rank 0", 120);
  auto other = second.get();
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_EQ(other.exit_code, 0) << other.err;
  EXPECT_NE(first.out.find("2 nodes x 1 CPU, batch 8, 3 steps"), std::string::npos) << first.out;
  EXPECT_EQ(other.out.find("Epoch:"), std::string::npos) << "rank 1 logged:\n" << other.out;
  EXPECT_FALSE(std::ifstream(r1 + "/m.onnx").good()) << "rank 1 wrote the model";
  graph::Graph a = graph::import_onnx(single + "/m.onnx"), b = graph::import_onnx(r0 + "/m.onnx");
  EXPECT_EQ(test::graph_difference(a, b), "");
}

// --multiprocessing-distributed --nproc-per-node 2 starts the node's two workers itself; -b is
// the node's batch, so each worker takes 4 of -b 8.
TEST(DataParallelCli, MultiprocessingDistributedStartsTheNodesWorkers) {
  JobFiles s = make_job_files();
  std::string out = s.dir + "/mp";
  ::mkdir(out.c_str(), 0755);
  auto r = test::run_oxtrain_limited(
      "train --model " + s.model + " --input-tensors " + s.tensors + " -b 8 --steps 2 -p 1 --device cpu --threads 1 " +
          "--dist-backend gloo --multiprocessing-distributed --nproc-per-node 2 --world-size 1 --rank 0 " +
          loopback_url() + " --checkpoint-dir " + out,
      120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("rank 0 of 2 (local 0 of 2)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 node x 2 CPUs, batch 8, 2 steps"), std::string::npos) << r.out;
}

// As main.py (DDP on one GPU): --multiprocessing-distributed with one worker is a job of one
// rank, its gradients reduced through the communicator; summed over one rank and divided by a
// world of one, they are the gradients, so the model is bit for bit the one process's.
TEST(DataParallelCli, AJobOfOneWorkerReducesAndTrainsLikeOneProcess) {
  JobFiles s = make_job_files();
  std::string single = s.dir + "/single", mp = s.dir + "/mp1";
  for (const auto& d : {single, mp}) ::mkdir(d.c_str(), 0755);
  auto one = test::run_oxtrain_limited(train_flags(s, single), 120);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(one.out.find("rank 0 of 1"), std::string::npos) << one.out;
  auto job = test::run_oxtrain_limited(
      train_flags(s, mp) + " --multiprocessing-distributed --nproc-per-node 1 --world-size 1 --rank 0" + loopback_url(),
      120);
  ASSERT_EQ(job.exit_code, 0) << job.err;
  EXPECT_NE(job.out.find("rank 0 of 1 (local 0 of 1)"), std::string::npos) << job.out;
  EXPECT_NE(job.out.find("1 node x 1 CPU, batch 4, 3 steps"), std::string::npos) << job.out;
  graph::Graph a = graph::import_onnx(single + "/m.onnx"), b = graph::import_onnx(mp + "/m.onnx");
  EXPECT_EQ(test::graph_difference(a, b), "");
}

// A rank that never comes: the others stop within the timeout with one line naming it.
TEST(DataParallelCli, AMissingRankEndsTheJobWithinTheTimeout) {
  JobFiles s = make_job_files();
  std::string out = s.dir + "/alone";
  ::mkdir(out.c_str(), 0755);
  auto r = test::run_oxtrain_limited(train_flags(s, out) + " --dist-url tcp://127.0.0.1:" +
                                         std::to_string(free_port()) + " --world-size 2 --rank 0 --dist-timeout 0.05",
                                     60);
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("rank 1"), std::string::npos) << r.err;
}

// Ranks that disagree on the batch stop before training, each naming what differs.
TEST(DataParallelCli, RanksMustRunTheSameJob) {
  JobFiles s = make_job_files();
  std::string r0 = s.dir + "/r0", r1 = s.dir + "/r1";
  for (const auto& d : {r0, r1}) ::mkdir(d.c_str(), 0755);
  std::string url = loopback_url() + " --world-size 2 --dist-timeout 0.5";
  graph::write_tensor_file(test::random_tensor(graph::DType::f32, {2, 3, 32, 32}, 9), s.dir + "/x2.pb");
  graph::write_tensor_file(graph::Tensor::from_int64({3, 1}, {2}), s.dir + "/y2.pb");
  std::string other_batch = "train --model " + s.model + " --input-tensors " + s.dir + "/x2.pb," + s.dir +
                            "/y2.pb -b 2 --steps 3 --device cpu --threads 1 --dist-backend gloo --checkpoint-dir " + r1;
  auto second = std::async(std::launch::async, [&] { return test::run_oxtrain_limited(other_batch + url + " --rank 1", 60); });
  auto first = test::run_oxtrain_limited(train_flags(s, r0) + url + " --rank 0", 60);
  auto other = second.get();
  EXPECT_EQ(test::clean_error_problem(other), "");
  EXPECT_NE(other.err.find("batch per rank 2 (rank 0: 4)"), std::string::npos) << other.err;
  EXPECT_NE(first.exit_code, 0);
}
