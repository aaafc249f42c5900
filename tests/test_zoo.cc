#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "graph/onnx_io.h"
#include "graph/stats.h"
#include "graph/zoo.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

TEST(Zoo, ParameterCountsMatchTorchvision) {
  // torchvision's counts (sum of p.numel() over model.parameters()).
  const std::pair<const char*, int64_t> expected[] = {
      {"resnet18", 11689512},  {"resnet34", 21797672},  {"resnet50", 25557032},
      {"resnet101", 44549160}, {"resnet152", 60192808},
  };
  for (const auto& [name, count] : expected) {
    Graph g = make_zoo_model(name);
    EXPECT_EQ(compute_stats(g).parameters, count) << name;
  }
}

TEST(Zoo, Resnet50OpsAndCompute) {
  Graph g = make_zoo_model("resnet50");
  GraphStats s = compute_stats(g);
  const std::map<std::string, int64_t> ops = {
      {"Conv", 53}, {"BatchNormalization", 53}, {"Relu", 49}, {"MaxPool", 1}, {"Add", 16},
      {"GlobalAveragePool", 1}, {"Flatten", 1}, {"Gemm", 1}};
  EXPECT_EQ(s.ops, ops);
  // 4.09 G multiply-adds per 224x224 image: convolutions plus the final Gemm.
  EXPECT_GT(s.multiply_adds, 4'080'000'000);
  EXPECT_LT(s.multiply_adds, 4'100'000'000);
  EXPECT_EQ(s.flops, 2 * s.multiply_adds);
  // BN running mean and variance of every channel: 2 x 26,560.
  EXPECT_EQ(s.state_elements, 53120);
  EXPECT_EQ(g.outputs[0]->shape, (Shape{1, 1000}));
}

TEST(Zoo, ShapesFollowTorchvision) {
  Graph g = make_zoo_model("resnet50");
  EXPECT_EQ(g.value("maxpool")->shape, (Shape{1, 64, 56, 56}));
  EXPECT_EQ(g.value("layer1.2.relu_out")->shape, (Shape{1, 256, 56, 56}));
  // ResNet v1.5: the stride sits on the 3x3 conv of the first block of a stage.
  EXPECT_EQ(g.value("layer2.0.conv1")->shape, (Shape{1, 128, 56, 56}));
  EXPECT_EQ(g.value("layer2.0.conv2")->shape, (Shape{1, 128, 28, 28}));
  EXPECT_EQ(g.value("layer4.2.relu_out")->shape, (Shape{1, 2048, 7, 7}));
  EXPECT_EQ(g.value("fc.weight")->shape, (Shape{1000, 2048}));
}

TEST(Zoo, DeterministicForASeed) {
  ZooOptions a;
  a.seed = 7;
  Graph g1 = make_zoo_model("resnet18", a);
  Graph g2 = make_zoo_model("resnet18", a);
  EXPECT_EQ(test::graph_difference(g1, g2), "");
  a.seed = 8;
  Graph g3 = make_zoo_model("resnet18", a);
  EXPECT_NE(g1.value("conv1.weight")->data->bytes, g3.value("conv1.weight")->data->bytes);
}

TEST(Zoo, InitialisationStatistics) {
  Graph g = make_zoo_model("resnet50");
  auto moments = [](const Tensor& t) {
    double sum = 0, sq = 0, lo = 1e9, hi = -1e9;
    for (int64_t i = 0; i < t.numel(); ++i) {
      double v = t.data<float>()[i];
      sum += v;
      sq += v * v;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    double mean = sum / t.numel();
    return std::array<double, 4>{mean, std::sqrt(sq / t.numel() - mean * mean), lo, hi};
  };
  // Kaiming normal, fan_out: layer3.0.conv2 is 256x256x3x3, std sqrt(2/2304) = 0.02946.
  auto conv = moments(*g.value("layer3.0.conv2.weight")->data);
  EXPECT_NEAR(conv[0], 0.0, 0.0005);
  EXPECT_NEAR(conv[1], std::sqrt(2.0 / (256 * 9)), 0.0005);
  // Linear: uniform in +-1/sqrt(2048) = 0.0221; std of U(-b,b) is b/sqrt(3).
  auto fc = moments(*g.value("fc.weight")->data);
  double bound = 1 / std::sqrt(2048.0);
  EXPECT_LE(fc[3], bound);
  EXPECT_GE(fc[2], -bound);
  EXPECT_NEAR(fc[1], bound / std::sqrt(3.0), 0.0002);
  auto bn_w = moments(*g.value("layer1.0.bn1.weight")->data);
  EXPECT_EQ(bn_w[2], 1.0);
  EXPECT_EQ(bn_w[3], 1.0);
  auto var = moments(*g.value("layer1.0.bn1.running_var")->data);
  EXPECT_EQ(var[2], 1.0);
  EXPECT_EQ(g.value("layer1.0.bn1.running_var")->role, Role::State);
  EXPECT_EQ(g.value("layer1.0.bn1.bias")->role, Role::Parameter);
}

TEST(Zoo, BatchNormInTrainingMode) {
  Graph g = make_zoo_model("resnet18");
  int bn = 0;
  for (const auto& n : g.nodes()) {
    if (n->op_type != "BatchNormalization") continue;
    ++bn;
    EXPECT_EQ(n->attr_int("training_mode", 0), 1) << n->name;
    EXPECT_EQ(n->outputs.size(), 3u) << n->name;
    EXPECT_FLOAT_EQ(n->attr_float("momentum", 0), 0.9f);
  }
  EXPECT_EQ(bn, 20);
}

TEST(Zoo, NumClassesAndImageSize) {
  ZooOptions o;
  o.num_classes = 10;
  o.image_size = 64;
  Graph g = make_zoo_model("resnet18", o);
  EXPECT_EQ(g.outputs[0]->shape, (Shape{1, 10}));
  EXPECT_EQ(compute_stats(g).parameters, 11689512 - 990 * 512 - 990);
  EXPECT_EQ(g.value("layer4.1.relu_out")->shape, (Shape{1, 512, 2, 2}));
}

TEST(Zoo, UnknownNameListsTheZoo) {
  try {
    make_zoo_model("resnet51");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("resnet152"), std::string::npos) << e.what();
  }
}

TEST(Zoo, RoundTripThroughOnnxIsExact) {
  Graph g = make_zoo_model("resnet18");
  std::string path = test::temp_dir() + "/r18.onnx";
  export_onnx(g, path);
  check_with_onnx(g);
  Graph back = import_onnx(path);
  EXPECT_EQ(test::graph_difference(g, back), "");
  // And once more: export of the re-imported graph is byte-identical to the first file.
  std::string path2 = test::temp_dir() + "/r18b.onnx";
  export_onnx(back, path2);
  EXPECT_EQ(test::read_text(path), test::read_text(path2));
  EXPECT_EQ(back.inputs[0]->shape_string(), "[N,3,224,224]");
}

TEST(Zoo, BatchSizeResolvesTheSymbolicDimension) {
  Graph g = make_zoo_model("resnet18");
  std::string path = test::temp_dir() + "/r18.onnx";
  export_onnx(g, path);
  ImportOptions o;
  o.batch_size = 32;
  Graph b = import_onnx(path, o);
  EXPECT_EQ(b.inputs[0]->shape, (Shape{32, 3, 224, 224}));
  EXPECT_EQ(b.value("layer1.0.conv1")->shape, (Shape{32, 64, 56, 56}));
  EXPECT_EQ(b.outputs[0]->shape, (Shape{32, 1000}));
  // Per-sample figures do not depend on the batch.
  EXPECT_EQ(compute_stats(b).multiply_adds, compute_stats(g).multiply_adds);
  EXPECT_EQ(compute_stats(b).activation_bytes, compute_stats(g).activation_bytes);
}
