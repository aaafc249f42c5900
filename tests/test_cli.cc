// The `oxtrain` program end to end: zoo, graph (text, --json, --nodes, --dot, --export).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "graph/onnx_io.h"
#include "tests/helpers.h"

using namespace oxtrain;

TEST(Cli, ZooThenGraphJson) {
  std::string dir = test::temp_dir();
  auto z = test::run_oxtrain("zoo resnet50 -o " + dir + "/r50.onnx");
  ASSERT_EQ(z.exit_code, 0) << z.err;
  auto r = test::run_oxtrain("graph " + dir + "/r50.onnx --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["parameters"], 25557032);
  EXPECT_EQ(j["ops"]["Conv"], 53);
  EXPECT_EQ(j["ops"]["BatchNormalization"], 53);
  EXPECT_EQ(j["ops"]["Relu"], 49);
  EXPECT_EQ(j["ops"]["Add"], 16);
  EXPECT_EQ(j["ops"]["MaxPool"], 1);
  EXPECT_EQ(j["ops"]["GlobalAveragePool"], 1);
  EXPECT_EQ(j["ops"]["Flatten"], 1);
  EXPECT_EQ(j["ops"]["Gemm"], 1);
  EXPECT_EQ(j["ops"].size(), 8u);
  double gmacs = j["multiply_adds"].get<double>() / 1e9;
  EXPECT_NEAR(gmacs, 4.09, 0.01);
  EXPECT_EQ(j["flops"].get<int64_t>(), 2 * j["multiply_adds"].get<int64_t>());
  EXPECT_EQ(j["inputs"][0]["shape"], nlohmann::json::parse(R"(["N",3,224,224])"));
  EXPECT_EQ(j["opsets"]["ai.onnx"], 17);

  // The training graph at batch 32: the planned activation arena is at most half the naive sum.
  auto t = test::run_oxtrain("graph " + dir + "/r50.onnx --training --batch-size 32 --json --plot " +
                             dir + "/live.svg");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  auto tj = nlohmann::json::parse(t.out);
  EXPECT_EQ(tj["batch"], 32);
  int64_t arena = tj["activation_arena_bytes"], naive = tj["activation_naive_bytes"];
  EXPECT_GT(arena, 0);
  EXPECT_LE(2 * arena, naive);
  EXPECT_LE(tj["peak_live_bytes"].get<int64_t>(), arena);
  // 175 model nodes and the loss, less the 49 Relus and 16 residual Adds fused into batch norms.
  EXPECT_EQ(tj["forward_nodes"], 111);
  EXPECT_EQ(tj["optimizer_nodes"], 1);
  EXPECT_EQ(tj["largest_values"].size(), 10u);
  // conv1's output at batch 32: 32 x 64 x 112 x 112 floats.
  EXPECT_EQ(tj["largest_values"][0]["bytes"], int64_t{32} * 64 * 112 * 112 * 4);
  std::string svg = test::read_text(dir + "/live.svg");
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
}

TEST(Cli, GraphTextNodesDotAndExport) {
  std::string dir = test::temp_dir();
  ASSERT_EQ(test::run_oxtrain("zoo resnet18 --num-classes 10 --seed 3 -o " + dir + "/m.onnx").exit_code, 0);
  auto r = test::run_oxtrain("graph " + dir + "/m.onnx --nodes --batch-size 4 --dot " + dir +
                             "/m.dot --export " + dir + "/again.onnx");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters   11,181,642"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("batch        4"), std::string::npos) << r.out;
  // --nodes lists each node with its shapes at the chosen batch.
  EXPECT_NE(r.out.find("layer1.0.conv1  [4,64,56,56] [64,64,3,3] -> [4,64,56,56]"),
            std::string::npos)
      << r.out;
  std::string dot = test::read_text(dir + "/m.dot");
  EXPECT_EQ(dot.rfind("digraph", 0), 0u);
  EXPECT_NE(dot.find("\"n:layer1.0.conv1\" -> \"n:layer1.0.bn1\""), std::string::npos);
  graph::Graph a = graph::import_onnx(dir + "/m.onnx");
  graph::Graph b = graph::import_onnx(dir + "/again.onnx");
  EXPECT_EQ(test::graph_difference(a, b), "");
}

TEST(Cli, VersionSaysWhetherCudaIsThere) {
  auto r = test::run_oxtrain("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("oxtrain 0.1.0", 0), 0u) << r.out;
}

// --device compiles the step for that device and reports its plan: five arenas that add up,
// each kernel's workspace a slice of the activation arena, and what the kernels chose.
TEST(Cli, GraphTrainingDevicePlan) {
  std::string dir = test::temp_dir();
  ASSERT_EQ(test::run_oxtrain("zoo resnet18 --num-classes 10 --image-size 32 -o " + dir + "/m.onnx").exit_code, 0);
  auto cpu = test::run_oxtrain("graph " + dir + "/m.onnx --training --batch-size 8 --device cpu --json");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  auto j = nlohmann::json::parse(cpu.out);
  const auto& d = j["device_plan"];
  EXPECT_EQ(d["device"], "cpu");
  EXPECT_EQ(d["arenas"]["parameter"], j["parameter_bytes"]);
  EXPECT_EQ(d["arenas"]["gradient"], j["gradient_bytes"]);
  EXPECT_EQ(d["arenas"]["activation"], j["activation_arena_bytes"]);
  // The CPU convolutions need column buffers: the largest is a slice of the activation arena,
  // and sharing the arena costs less than giving each its own.
  int64_t largest = d["workspace_max_bytes"], naive = d["workspace_naive_bytes"];
  EXPECT_GT(largest, 0);
  EXPECT_LT(largest, j["activation_arena_bytes"].get<int64_t>());
  EXPECT_GT(naive, largest);
  // Planned without the device, the arena holds only the values.
  auto plain = nlohmann::json::parse(test::run_oxtrain("graph " + dir + "/m.onnx --training --batch-size 8 --json").out);
  EXPECT_FALSE(plain.contains("device_plan"));
  EXPECT_GE(j["activation_arena_bytes"].get<int64_t>(), plain["activation_arena_bytes"].get<int64_t>());

  auto bad = test::run_oxtrain("graph " + dir + "/m.onnx --device cuda");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--device needs --training"), std::string::npos) << bad.err;
}

// --world-size shows the allreduce buckets: ResNet-50's 102 MB of gradients in 25 MB buckets
// and a last one under 1 MiB; --simulate adds the predicted scaling table.
TEST(Cli, GraphTrainingBucketsAndScaling) {
  std::string dir = test::temp_dir();
  ASSERT_EQ(test::run_oxtrain("zoo resnet50 -o " + dir + "/r50.onnx").exit_code, 0);
  auto r = test::run_oxtrain("graph " + dir + "/r50.onnx --training -b 2 --world-size 8 --simulate 367 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  std::vector<int64_t> buckets = j["allreduce_bucket_bytes"];
  ASSERT_EQ(buckets.size(), 5u);
  int64_t total = 0;
  for (int64_t b : buckets) total += b;
  EXPECT_EQ(total, int64_t{25'557'032} * 4);  // every parameter's gradient, once
  // A bucket closes once it reaches 25 MB; the one before the small last bucket holds the rest.
  for (size_t i = 0; i + 2 < buckets.size(); ++i) EXPECT_GE(buckets[i], 25'000'000) << i;
  EXPECT_LE(buckets.back(), 1 << 20);
  EXPECT_EQ(j["scaling"]["rows"][0]["config"], "1n1c");
  EXPECT_GT(j["scaling"]["rows"].size(), 3u);
}
