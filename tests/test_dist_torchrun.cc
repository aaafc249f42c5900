// A real torchrun (PyTorch's launcher, where it is installed; the suite does not need it)
// starts oxtrain as 2 nodes x 2 workers on loopback with --no-python: the workers take their
// rank, world size and store from torchrun's environment (its agent hosts a store on
// MASTER_PORT, oxtrain's rank 0 hosts its own beside it) and, each given the same batch,
// train the model one process trains on that batch (within float32 rounding of the order in
// which four equal gradients are summed: 1e-5 relative).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <future>
#include <string>

#include "graph/onnx_io.h"
#include "tests/dist_helpers.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;

TEST(Torchrun, TwoNodesOfTwoWorkersTrainLikeOneProcess) {
  if (test::run_shell("command -v torchrun").exit_code != 0)
    GTEST_SKIP() << "torchrun is not installed (pip install torch to run this test)";
  test::JobFiles s = test::make_job_files();
  const std::string flags = " train --model " + s.model + " --input-tensors " + s.tensors +
                            " --steps 3 -p 1 --lr 0.05 --device cpu --threads 1 -j 0 --dist-backend gloo";
  std::string single = s.dir + "/single", n0 = s.dir + "/n0", n1 = s.dir + "/n1";
  for (const auto& d : {single, n0, n1}) ::mkdir(d.c_str(), 0755);
  auto one = test::run_oxtrain_limited(flags + " --checkpoint-dir " + single + " --save-model " + single + "/m.onnx", 120);
  ASSERT_EQ(one.exit_code, 0) << one.err;

  const std::string port = std::to_string(test::free_port());
  auto node = [&](int rank, const std::string& out) {
    return test::run_shell("timeout -k 5 180 torchrun --nnodes 2 --node-rank " + std::to_string(rank) +
                           " --nproc-per-node 2 --master-addr 127.0.0.1 --master-port " + port + " --no-python " +
                           std::string(OXTRAIN_BINARY) + flags + " --checkpoint-dir " + out + " --save-model " +
                           out + "/m.onnx");
  };
  auto second = std::async(std::launch::async, [&] { return node(1, n1); });
  auto first = node(0, n0);
  auto other = second.get();
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;
  ASSERT_EQ(other.exit_code, 0) << other.out << other.err;
  EXPECT_NE(first.out.find("=> rank 0 of 4 (local 0 of 2) from torchrun"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("2 nodes x 2 CPUs, batch 16, 3 steps"), std::string::npos) << first.out;
  graph::Graph a = graph::import_onnx(single + "/m.onnx"), b = graph::import_onnx(n0 + "/m.onnx");
  int compared = 0;
  for (const graph::Value* v : a.initializers()) {
    if (v->role == graph::Role::Constant) continue;
    const graph::Value* w = b.find_value(v->name);
    ASSERT_TRUE(w && w->has_data()) << v->name;
    EXPECT_LE(test::max_relative_difference(*w->data, *v->data), 1e-5) << v->name;
    ++compared;
  }
  EXPECT_GT(compared, 60);  // resnet18's weights and BN statistics
  EXPECT_FALSE(std::ifstream(n1 + "/m.onnx").good()) << "only rank 0 writes the model";
}
