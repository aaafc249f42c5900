// Parity with PyTorch: a torchvision-style ResNet exported by torch.onnx.export in training
// mode, trained one and five SGD steps (momentum 0.9, weight decay 1e-4, lr 0.1) on a fixed
// batch, as examples/imagenet/main.py trains. oxtrain on the CPU must give the same losses,
// weights, momentum buffers and BatchNorm running statistics (PyTorch's unbiased running
// variance included): within 1e-4 relative after one step and 1e-3 after five (max |a - b|
// over a tensor divided by max |b|). Fixtures: scripts/make_parity_fixtures.py.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "runtime/session.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

const std::string kDir = std::string(OXTRAIN_FIXTURES) + "/parity/";

}  // namespace

TEST(Parity, SgdStepsMatchPyTorch) {
  nlohmann::json manifest = nlohmann::json::parse(std::ifstream(kDir + "manifest.json"));
  autodiff::TrainingOptions o;
  o.momentum = manifest["training"]["momentum"];
  o.weight_decay = manifest["training"]["weight_decay"];
  autodiff::TrainingGraph tg = autodiff::build_training_graph(import_onnx(kDir + "parity_bottleneck.onnx"), o);
  runtime::SessionOptions so;
  for (const auto& [v, d] : tg.gradients) so.gradients.push_back(d);
  std::string loss = tg.loss, labels = tg.labels, lr = tg.learning_rate, step = tg.step;
  runtime::Session s(std::move(tg.graph), so);
  s.feed("input", read_tensor_file(kDir + "input.pb"));
  s.feed(labels, read_tensor_file(kDir + "labels.pb"));
  s.feed(lr, Tensor::from_float({static_cast<float>(manifest["training"]["lr"].get<double>())}, {}));
  Tensor losses = read_tensor_file(kDir + "losses.pb");
  ASSERT_EQ(losses.numel(), 5);
  for (int64_t k = 0; k < 5; ++k) {
    s.feed(step, Tensor::from_int64({k}, {}));
    s.run();
    double got = test::element(s.fetch(loss), 0), want = test::element(losses, k);
    EXPECT_NEAR(got, want, (k == 0 ? 1e-5 : 1e-4) * std::fabs(want)) << "loss of step " << k + 1;
    if (k != 0 && k != 4) continue;
    const char* name = k == 0 ? "step1" : "step5";
    double tolerance = manifest["suggested_tolerance"][name];
    int compared = 0;
    double worst = 0;
    for (const auto& t : manifest["steps"][name]["tensors"]) {
      Tensor want_t = read_tensor_file(kDir + t["file"].get<std::string>());
      double rel = test::max_relative_difference(s.fetch(t["name"]), want_t);
      EXPECT_LE(rel, tolerance) << name << " " << t["name"];
      worst = std::max(worst, rel);
      ++compared;
    }
    EXPECT_EQ(compared, 140) << name;  // 53 parameters, 53 momentum buffers, 34 BN statistics
    std::printf("%s: worst relative difference to PyTorch %.3g over %d tensors\n", name, worst, compared);
  }
}
