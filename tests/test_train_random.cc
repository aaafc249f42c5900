// `oxtrain train` with a model holding training-mode Dropout: the same --seed trains to the
// same bytes, another seed to other weights, and a run stopped and resumed from its checkpoint
// ends with the weights of the run that went straight through (the masks are a function of
// seed, node and step, not of the session).
#include <gtest/gtest.h>

#include "runtime/checkpoint.h"
#include "tests/helpers.h"

using namespace oxtrain;

namespace {

// small_convnet with Dropout(0.5, training) between the pooled features and the classifier,
// and a second one (opset 13 form without a mask output) on the logits' input.
std::string dropout_model_file(const std::string& dir) {
  test::ModelBuilder b(13);
  b.input("x", {-1, 3, 8, 8});
  b.initializer("conv.weight", {6, 3, 3, 3}, 0.1f);
  b.initializer("conv.bias", {6}, 0.0f);
  b.initializer("fc.weight", {5, 6}, 0.2f);
  b.initializer("fc.bias", {5}, 0.0f);
  b.initializer("ratio", {}, 0.5f);
  auto* mode = b.graph().add_initializer();
  mode->set_name("training");
  mode->set_data_type(onnx::TensorProto::BOOL);
  mode->add_int32_data(1);
  auto& conv = b.node("Conv", {"x", "conv.weight", "conv.bias"}, {"c"}, "conv");
  test::set_ints(conv, "pads", {1, 1, 1, 1});
  b.node("Dropout", {"c", "ratio", "training"}, {"cd", "cmask"}, "drop_conv");
  b.node("Relu", {"cd"}, {"r"}, "relu");
  b.node("GlobalAveragePool", {"r"}, {"p"}, "pool");
  b.node("Flatten", {"p"}, {"f"}, "flatten");
  b.node("Dropout", {"f", "ratio", "training"}, {"fd"}, "drop_fc");
  auto& fc = b.node("Gemm", {"fd", "fc.weight", "fc.bias"}, {"y"}, "fc");
  test::set_int(fc, "transB", 1);
  b.output("y");
  std::string path = dir + "/dropout.onnx";
  b.save(path);
  return path;
}

runtime::Checkpoint train(const std::string& model, const std::string& dir, int seed, int steps,
                          const std::string& extra = "") {
  auto r = test::run_oxtrain("train --synthetic --model " + model + " --image-size 8 --num-classes 5 -b 4 "
                             "--epochs 1 -p 1 --lr 0.1 --threads 2 --seed " + std::to_string(seed) +
                             " --steps " + std::to_string(steps) + " --checkpoint-dir " + dir + " " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
  return runtime::load_checkpoint(dir + "/checkpoint.oxt");
}

bool same_tensors(const runtime::Checkpoint& a, const runtime::Checkpoint& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i)
    if (a.tensors[i].first != b.tensors[i].first || a.tensors[i].second.bytes != b.tensors[i].second.bytes)
      return false;
  return true;
}

}  // namespace

TEST(TrainingRandom, CliDropoutSeedsAndResume) {
  std::string dir = test::temp_dir();
  std::string model = dropout_model_file(dir);
  runtime::Checkpoint a = train(model, dir + "/a", 1, 4);
  runtime::Checkpoint b = train(model, dir + "/b", 1, 4);
  runtime::Checkpoint c = train(model, dir + "/c", 2, 4);
  ASSERT_EQ(a.tensors.size(), 8u);  // 4 parameters, 4 momentum buffers
  EXPECT_TRUE(same_tensors(a, b));
  EXPECT_FALSE(same_tensors(a, c));
  // Two steps, then two more from the checkpoint: the straight run's bytes.
  train(model, dir + "/split", 1, 2);
  runtime::Checkpoint resumed = train(model, dir + "/split", 1, 4, "--resume " + dir + "/split/checkpoint.oxt");
  EXPECT_EQ(resumed.get("step"), "4");
  EXPECT_TRUE(same_tensors(a, resumed));
  // Resuming with another seed says so.
  auto r = test::run_oxtrain("train --synthetic --model " + model + " --image-size 8 --num-classes 5 -b 4 --epochs 1 "
                             "--threads 2 --seed 3 --steps 5 --checkpoint-dir " + dir + "/split --resume " + dir +
                             "/split/checkpoint.oxt");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("=> note: the checkpoint was written with --seed 1, this run uses --seed 3"), std::string::npos)
      << r.out;
}
